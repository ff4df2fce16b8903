//! MQTT over WebSocket with python paho-mqtt (`transport="websockets"`), plain and TLS.

use std::sync::Arc;

use broker::{
    listener::{ReloadableTls, Scheme, TlsSettings},
    password_file::AnonymousAuth,
};

use crate::interop::{Pki, Proc, TestBroker, py_script, s};

#[tokio::test]
async fn paho_round_trips_over_ws_and_wss() {
    let pki = Pki::new();
    let (cert, key) = pki.issue("server", "broker", true);
    let tls = ReloadableTls::load(TlsSettings {
        cert,
        key,
        client_ca: None,
        require_client_cert: false,
    })
    .unwrap();
    let broker = TestBroker::start(
        &["ws://127.0.0.1:0", "wss://127.0.0.1:0/mqtt"],
        Arc::new(AnonymousAuth),
        Some(tls),
    )
    .await;
    let script = py_script("paho_roundtrip.py");
    let ws_port = broker.port(Scheme::Ws).to_string();
    let wss_port = broker.port(Scheme::Wss).to_string();
    let ca = pki.path("ca.pem");

    for v5 in [false, true] {
        let mut args = vec![s(&script), "--port", &ws_port, "--transport", "websockets"];
        if v5 {
            args.push("--v5");
        }
        let mut ws = Proc::spawn("python3", &args);
        ws.expect("round trip over ws://", |l| {
            l == "ROUNDTRIP OK hello over websockets"
        })
        .await;
        ws.success().await;
    }

    // `/` is accepted as well as `/mqtt`.
    let mut ws_root = Proc::spawn(
        "python3",
        &[
            s(&script),
            "--port",
            &ws_port,
            "--transport",
            "websockets",
            "--path",
            "/",
        ],
    );
    ws_root
        .expect("round trip on /", |l| l.starts_with("ROUNDTRIP OK"))
        .await;
    ws_root.success().await;

    let mut wss = Proc::spawn(
        "python3",
        &[
            s(&script),
            "--port",
            &wss_port,
            "--transport",
            "websockets",
            "--cafile",
            s(&ca),
            "--host",
            "localhost",
            "--v5",
        ],
    );
    wss.expect("round trip over wss://", |l| {
        l == "ROUNDTRIP OK hello over websockets tls"
    })
    .await;
    wss.success().await;

    // Another path is refused at the HTTP upgrade.
    let (status, out) = Proc::spawn(
        "python3",
        &[
            s(&script),
            "--port",
            &ws_port,
            "--transport",
            "websockets",
            "--path",
            "/nope",
        ],
    )
    .finish()
    .await;
    assert!(!status.success(), "{}", out.join("\n"));
    broker.stop().await;
}
