//! Per-address backoff, and the TLS connect rate with client certificates.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::harness::{self, connect_v5, mqtt_connect};

const BAD_CREDENTIALS: u8 = 0x86;
const BANNED: u8 = 0x8A;

/// Connects from `source` (an address of this machine) to `server`.
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_ban_one_address_and_not_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = harness::test_options(dir.path());
    options.config.auth.failures_before_backoff = 3;
    harness::install_crypto();
    let server = server::Server::start(options).await.unwrap();
    let token = harness::add_token_device(&server, "sensor1").await;
    let mqtt = server.mqtt_addr().unwrap();
    let threshold = server.ctx.config.auth.failures_before_backoff;

    // 127.0.0.2 guesses tokens.
    for attempt in 1..=threshold {
        let mut tcp = connect_from("127.0.0.2", mqtt).await;
        let code = mqtt_connect(
            &mut tcp,
            &connect_v5("sensor1", Some("sensor1"), Some(b"guess")),
        )
        .await
        .unwrap();
        assert_eq!(code, BAD_CREDENTIALS, "attempt {attempt}");
    }
    // Now it is refused even with the right token...
    let mut tcp = connect_from("127.0.0.2", mqtt).await;
    let code = mqtt_connect(
        &mut tcp,
        &connect_v5("sensor1", Some("sensor1"), Some(token.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(code, BANNED);
    assert!(
        server
            .ctx
            .registry
            .banned_for("127.0.0.2".parse().unwrap(), None)
            .is_some()
    );

    // ...while 127.0.0.1 is not slowed down at all.
    let started = Instant::now();
    let mut tcp = connect_from("127.0.0.1", mqtt).await;
    let code = mqtt_connect(
        &mut tcp,
        &connect_v5("sensor1", Some("sensor1"), Some(token.as_bytes())),
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert!(
        server
            .ctx
            .registry
            .banned_for("127.0.0.1".parse().unwrap(), Some("sensor1"))
            .is_none()
    );
    drop(tcp);
    server.shutdown().await;
}

/// Full TLS handshakes with a client certificate plus MQTT CONNECT/CONNACK, 8 at a time.
/// Prints the rate; timing is not asserted (shared CI machines vary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connects_per_second_with_client_certificates() {
    const TOTAL: usize = 500;
    const CONCURRENCY: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    let device = harness::add_cert_device(&server, dir.path(), "bench").await;
    let config = harness::tls_client_config(&harness::ca_file(&server), Some(&device));
    let addr = server.mqtts_addr().unwrap();
    let connector = TlsConnector::from(config);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (connector, next) = (connector.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < TOTAL {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let mut tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .unwrap();
                // Empty client id: the broker assigns one, so the workers do not take over each other.
                let code = mqtt_connect(&mut tls, &connect_v5("", None, None))
                    .await
                    .unwrap();
                assert_eq!(code, 0);
                ok += 1;
            }
            ok
        }));
    }
    let mut done = 0;
    for w in workers {
        done += w.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(done, TOTAL);
    let rate = TOTAL as f64 / elapsed.as_secs_f64();
    eprintln!(
        "TLS connects with client certificates: {TOTAL} in {elapsed:.2?} ({rate:.0}/s, {CONCURRENCY} concurrent, {} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    server.shutdown().await;
}
