//! First start, restart, and replacing the server certificate under running connections.

use std::{sync::Arc, time::Duration};

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::harness::{self, Sub, mosq_tls, mosquitto_pub};

fn s(v: &str) -> String {
    v.to_owned()
}

/// SHA-256 of the certificate a fresh TLS connection to `addr` is shown.
async fn served_fingerprint(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    pki::sha256_hex(&cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_everything_and_restart_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    assert!(server.first_start);
    let password = server
        .initial_admin_password
        .clone()
        .expect("admin password on first start");
    assert!(password.len() >= 16);
    let ca_fingerprint = server.ca_fingerprint();
    let kitchen = harness::add_cert_device(&server, dir.path(), "kitchen").await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca/ca.key", "tls/server.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
    }
    let server_cert = std::fs::read(dir.path().join("tls/server.crt")).unwrap();
    server.shutdown().await;

    let server = harness::start(dir.path()).await;
    assert!(!server.first_start);
    assert!(
        server.initial_admin_password.is_none(),
        "the admin password is created once"
    );
    assert_eq!(server.ca_fingerprint(), ca_fingerprint);
    assert_eq!(
        std::fs::read(dir.path().join("tls/server.crt")).unwrap(),
        server_cert,
        "server certificate reused"
    );
    assert!(
        server
            .ctx
            .store
            .devices()
            .get("kitchen")
            .await
            .unwrap()
            .is_some()
    );
    // The device still connects with the credentials issued before the restart; admin's password still works.
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-i"),
        s("kitchen"),
        s("-q"),
        s("1"),
        s("-t"),
        s("devices/kitchen/status"),
        s("-m"),
        s("online"),
    ]);
    let out = mosquitto_pub(args).await;
    assert_eq!(out.code, Some(0), "{}", out.text);
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-u"),
        s("admin"),
        s("-P"),
        password,
        s("-t"),
        s("devices/kitchen/set/led"),
        s("-m"),
        s("true"),
    ]);
    assert_eq!(mosquitto_pub(args).await.code, Some(0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_added_before_first_start_suppress_the_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open_data_dir(dir.path()).await.unwrap();
    store
        .users()
        .add(
            "alice",
            store::Role::Admin,
            &store::secret::hash_password("alice-password").unwrap(),
        )
        .await
        .unwrap();
    store.close().await;
    let server = harness::start(dir.path()).await;
    assert!(server.initial_admin_password.is_none());
    assert!(
        server
            .ctx
            .store
            .users()
            .get("admin")
            .await
            .unwrap()
            .is_none()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_server_certificate_serves_new_connections_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    let mqtts = server.mqtts_addr().unwrap();
    let https = server.https_addr().unwrap();
    let client = harness::tls_client_config(&harness::ca_file(&server), None);
    let before = served_fingerprint(mqtts, client.clone()).await;
    assert_eq!(before, served_fingerprint(https, client.clone()).await);

    // An established MQTT connection...
    let password = server.initial_admin_password.clone().unwrap();
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-u"),
        s("admin"),
        s("-P"),
        password.clone(),
        s("-i"),
        s("old"),
        s("-t"),
        s("devices/#"),
    ]);
    let mut old = Sub::start(args).await;

    // ...then the certificate on disk is replaced (what renewal does).
    let spec_names = vec!["localhost".to_string()];
    let issued = server
        .ctx
        .ca
        .issue_server_cert(
            &spec_names,
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(86400),
        )
        .unwrap();
    pki::write_private_file(
        &dir.path().join("tls/server.key"),
        issued.key_pem.as_bytes(),
    )
    .unwrap();
    pki::write_public_file(
        &dir.path().join("tls/server.crt"),
        issued.cert_pem.as_bytes(),
    )
    .unwrap();
    let want = issued.info.fingerprint_sha256.clone();
    assert_ne!(want, before);

    // New connections see the new certificate once the file watcher reloaded it.
    let seen = harness::eventually(Duration::from_secs(10), async || {
        served_fingerprint(mqtts, client.clone()).await == want
    })
    .await;
    assert!(seen, "mqtts listener still serves the old certificate");
    let seen = harness::eventually(Duration::from_secs(10), async || {
        served_fingerprint(https, client.clone()).await == want
    })
    .await;
    assert!(seen, "https listener still serves the old certificate");

    // The old connection is still there and still receives messages.
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-u"),
        s("admin"),
        s("-P"),
        password,
        s("-q"),
        s("1"),
        s("-t"),
        s("devices/x/state/y"),
        s("-m"),
        s("after"),
    ]);
    assert_eq!(mosquitto_pub(args).await.code, Some(0));
    old.expect_message("devices/x/state/y", "after").await;
    let _ = old.child.kill().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_plain_listeners_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    harness::install_crypto();
    let options =
        server::ServerOptions::new(harness::test_config(), dir.path()).listen(["mqtt://0.0.0.0:0"]);
    let err = server::Server::start(options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("allow_insecure_listeners"), "{err}");
    assert!(
        !dir.path().join("ca").exists(),
        "nothing is created when the configuration is refused"
    );
}

/// Not-after (Unix seconds) and DNS names of the certificate served on `addr`.
async fn served_cert(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> pki::CertInfo {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    );
    pki::cert_info(&pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_certificate_is_renewed_and_name_changes_reissue_at_start() {
    let dir = tempfile::tempdir().unwrap();
    harness::install_crypto();
    let mut options = harness::test_options(dir.path());
    options.renewal_interval = Duration::from_millis(100);
    let server = server::Server::start(options).await.unwrap();
    let mqtts = server.mqtts_addr().unwrap();
    let client = harness::tls_client_config(&harness::ca_file(&server), None);

    let original = served_fingerprint(mqtts, client.clone()).await;
    let cert_path = dir.path().join("tls/server.crt");

    // A certificate that expires within the renewal margin (30 days) appears on disk...
    let short = server
        .ctx
        .ca
        .issue_server_cert(
            &["localhost".into()],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(10 * 86400),
        )
        .unwrap();
    pki::write_private_file(&dir.path().join("tls/server.key"), short.key_pem.as_bytes()).unwrap();
    pki::write_public_file(&cert_path, short.cert_pem.as_bytes()).unwrap();

    // ...and the renewal task replaces it with a full-lifetime one...
    let in_300_days = short.info.not_after_unix + 290 * 86400;
    let on_disk = async || pki::cert_info(&std::fs::read_to_string(&cert_path).unwrap()).unwrap();
    let renewed = harness::eventually(Duration::from_secs(10), async || {
        on_disk().await.not_after_unix > in_300_days
    })
    .await;
    assert!(renewed, "the expiring certificate was not renewed");
    let renewed = on_disk().await.fingerprint_sha256;
    assert_ne!(renewed, short.info.fingerprint_sha256);
    assert_ne!(renewed, original);
    // ...which new connections are served (the task reloads the listeners right away).
    let served = harness::eventually(Duration::from_secs(10), async || {
        served_fingerprint(mqtts, client.clone()).await == renewed
    })
    .await;
    assert!(served, "the renewed certificate is not served");
    server.shutdown().await;

    // Restart with another host name: the certificate is reissued for it.
    let mut options = harness::test_options(dir.path());
    options.config.hostnames.push("iot.example.com".into());
    let server = server::Server::start(options).await.unwrap();
    let info = served_cert(server.mqtts_addr().unwrap(), client.clone()).await;
    assert!(
        info.dns_names.contains(&"iot.example.com".to_string()),
        "{:?}",
        info.dns_names
    );
    server.shutdown().await;
}
