//! TLS with client certificates: mosquitto_pub/mosquitto_sub with `--cafile --cert --key`
//! against an mqtts:// listener that requires a certificate signed by our test CA.

use std::sync::Arc;

use broker::{
    listener::{ReloadableTls, Scheme, TlsSettings},
    password_file::{PasswordFile, PasswordFileAuth},
};

use crate::interop::{Pki, Proc, TestBroker, s};

#[tokio::test]
async fn client_certificates_are_required_and_identify_the_client() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", "broker", true);
    let (client_cert, client_key) = pki.issue("kitchen", "kitchen", false);
    let tls = ReloadableTls::load(TlsSettings {
        cert,
        key,
        client_ca: Some(pki.path("ca.pem")),
        require_client_cert: true,
    })
    .unwrap();
    let auth = Arc::new(PasswordFileAuth::new(PasswordFile::default()).accept_client_certs(true));
    let broker = TestBroker::start(&["mqtts://127.0.0.1:0"], auth, Some(tls)).await;
    let port = broker.port(Scheme::Mqtts).to_string();
    let ca = pki.path("ca.pem");
    let tls_args = [
        "--cafile",
        s(&ca),
        "--cert",
        s(&client_cert),
        "--key",
        s(&client_key),
    ];

    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("interop/tls/{version}");
        let mut args = crate::interop::mosq_args(
            &port,
            version,
            &["-F", crate::interop::FORMAT, "-t", &topic, "-C", "1"],
        );
        args.extend_from_slice(&tls_args);
        let mut subscriber = Proc::spawn("mosquitto_sub", &args);
        subscriber.subscribed().await;

        let mut args =
            crate::interop::mosq_args(&port, version, &["-t", &topic, "-m", "over tls", "-q", "1"]);
        args.extend_from_slice(&tls_args);
        Proc::spawn("mosquitto_pub", &args).success().await;
        assert_eq!(subscriber.message().await.payload, "over tls");
        subscriber.success().await;

        // No client certificate: the handshake is refused.
        let args = crate::interop::mosq_args(
            &port,
            version,
            &["--cafile", s(&ca), "-t", &topic, "-m", "x"],
        );
        let (status, out) = Proc::spawn("mosquitto_pub", &args).finish().await;
        assert!(
            !status.success(),
            "a client without certificate got in:\n{}",
            out.join("\n")
        );
        assert!(
            !out.iter().any(|l| l.contains("received CONNACK")),
            "{}",
            out.join("\n")
        );
    }

    // A certificate from another CA is refused too.
    let other = Pki::new();
    let (rogue_cert, rogue_key) = other.issue("rogue", "kitchen", false);
    let args = crate::interop::mosq_args(
        &port,
        "mqttv5",
        &[
            "--cafile",
            s(&ca),
            "--cert",
            s(&rogue_cert),
            "--key",
            s(&rogue_key),
            "-t",
            "t",
            "-m",
            "x",
        ],
    );
    let (status, out) = Proc::spawn("mosquitto_pub", &args).finish().await;
    assert!(
        !status.success() && !out.iter().any(|l| l.contains("received CONNACK")),
        "{}",
        out.join("\n")
    );
    broker.stop().await;
}
