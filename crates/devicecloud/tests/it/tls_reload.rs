//! `devicecloud broker` with TLS: a renewed certificate is picked up without a restart
//! (SIGHUP, or the file watcher), for new connections only; existing ones keep going.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

use crate::support::{Proc, mosq, spawn_mosq};

/// A CA that issues a `localhost`/127.0.0.1 server certificate into `dir`.
fn issue_server_cert(dir: &Path, ca_name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "broker");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join(format!("{ca_name}.pem")),
        dir.join(format!("server-{ca_name}.pem")),
        dir.join(format!("server-{ca_name}.key")),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

#[tokio::test]
async fn renewed_certificate_is_used_for_new_connections_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, old_cert, old_key) = issue_server_cert(dir.path(), "old-ca");
    let (new_ca, new_cert, new_key) = issue_server_cert(dir.path(), "new-ca");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::copy(&old_cert, &cert).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    let mut broker = Proc::devicecloud(&[
        "broker",
        "--listen",
        "mqtts://127.0.0.1:0",
        "--tls-cert",
        &s(&cert),
        "--tls-key",
        &s(&key),
    ]);
    let port = broker.listening_port("mqtts").await;
    let publish = |ca: &Path, payload: &str| {
        spawn_mosq(
            "mosquitto_pub",
            &mosq(
                port,
                "mqttv5",
                &[
                    "--cafile",
                    &s(ca),
                    "-t",
                    "e2e/tls",
                    "-q",
                    "1",
                    "-m",
                    payload,
                ],
            ),
        )
    };

    // A subscriber connected with the old certificate stays connected across the reload.
    let mut old_sub = spawn_mosq(
        "mosquitto_sub",
        &mosq(
            port,
            "mqttv5",
            &[
                "--cafile",
                &s(&old_ca),
                "-t",
                "e2e/tls",
                "-q",
                "1",
                "-C",
                "1",
                "-F",
                "MSG %p",
            ],
        ),
    );
    old_sub
        .expect("SUBACK", |l| l.contains("received SUBACK"))
        .await;
    let (status, out) = publish(&new_ca, "too early").finish().await;
    assert!(
        !status.success(),
        "the new CA must not verify the old certificate:\n{}",
        out.join("\n")
    );

    // Renew: replace the files the broker was started with, then SIGHUP.
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    broker.signal("HUP");
    broker
        .expect("TLS reload", |l| l.contains("reloaded TLS certificate"))
        .await;

    publish(&new_ca, "after renewal").success().await;
    let out = old_sub.success().await;
    assert!(
        out.iter().any(|l| l == "MSG after renewal"),
        "{}",
        out.join("\n")
    );
    let (status, _) = publish(&old_ca, "old trust").finish().await;
    assert!(
        !status.success(),
        "new connections must get the new certificate"
    );

    // A broken file is reported and the current certificate kept.
    std::fs::write(&cert, "not a certificate").unwrap();
    broker.signal("HUP");
    broker
        .expect("reload error", |l| {
            l.contains("TLS reload failed") && l.contains("server.pem")
        })
        .await;
    publish(&new_ca, "still serving").success().await;

    broker.signal("TERM");
    broker.success().await;
}
