//! The registry and ACLs seen from real third-party clients over real TLS.

use std::time::{Duration, Instant};

use store::Role;

use crate::harness::{self, Sub, mosq_tls, mosquitto_pub};

fn s(v: &str) -> String {
    v.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_to_their_own_topics_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    let kitchen = harness::add_cert_device(&server, dir.path(), "kitchen").await;
    harness::add_cert_device(&server, dir.path(), "garage").await;
    let admin_password = server
        .initial_admin_password
        .clone()
        .expect("first start creates admin");

    // An admin watches everything.
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-u"),
        s("admin"),
        s("-P"),
        admin_password,
        s("-i"),
        s("watcher"),
        s("-t"),
        s("devices/#"),
    ]);
    let mut watcher = Sub::start(args).await;

    // kitchen publishes to its own subtree with its bundle PEMs: delivered.
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-i"),
        s("kitchen"),
        s("-q"),
        s("1"),
        s("-t"),
        s("devices/kitchen/state/led"),
        s("-m"),
        s("on"),
    ]);
    let out = mosquitto_pub(args).await;
    assert_eq!(out.code, Some(0), "{}", out.text);
    watcher
        .expect_message("devices/kitchen/state/led", "on")
        .await;

    // kitchen publishes to garage's topics (v5, QoS 1): the PUBACK says not authorized...
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-V"),
        s("5"),
        s("-i"),
        s("kitchen"),
        s("-q"),
        s("1"),
        s("-t"),
        s("devices/garage/set/door"),
        s("-m"),
        s("open"),
    ]);
    let out = mosquitto_pub(args).await;
    assert!(
        out.text.to_lowercase().contains("not authorized"),
        "mosquitto_pub should report the refusal: {out:?}"
    );

    // ...and nobody receives it: the next message from kitchen arrives, the forbidden one never did.
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-i"),
        s("kitchen"),
        s("-q"),
        s("1"),
        s("-t"),
        s("devices/kitchen/state/led"),
        s("-m"),
        s("sentinel"),
    ]);
    assert_eq!(mosquitto_pub(args).await.code, Some(0));
    watcher
        .expect_message("devices/kitchen/state/led", "sentinel")
        .await;
    assert!(
        !watcher
            .seen
            .iter()
            .any(|l| l.contains("devices/garage/set/door")),
        "forbidden publish was delivered: {:#?}",
        watcher.seen
    );

    // Subscriptions to `#` or another device's topics are refused in the SUBACK.
    for filter in ["#", "devices/garage/#", "devices/+/status"] {
        let mut args = mosq_tls(&server, Some(&kitchen));
        args.extend([s("-V"), s("5"), s("-i"), s("kitchen"), s("-t"), s(filter)]);
        let mut sub = Sub::start(args).await;
        sub.exited_within(harness::WAIT)
            .await
            .expect("mosquitto_sub exits when every subscription is denied");
        let stderr = sub.stderr().await;
        assert!(
            stderr.contains("All subscription requests were denied"),
            "{filter}: {stderr} {:#?}",
            sub.seen
        );
    }
    // Its own commands are fine.
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-V"),
        s("5"),
        s("-i"),
        s("kitchen"),
        s("-t"),
        s("devices/kitchen/set/#"),
    ]);
    let mut sub = Sub::start(args).await;
    assert!(
        sub.exited_within(Duration::from_millis(300))
            .await
            .is_none(),
        "{:#?}",
        sub.seen
    );
    let _ = sub.child.kill().await;

    let _ = watcher.child.kill().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_get_the_right_connack() {
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    let token = harness::add_token_device(&server, "sensor1").await;
    let kitchen = harness::add_cert_device(&server, dir.path(), "kitchen").await;
    let port = server.mqtts_addr().unwrap().port();
    let ca = harness::ca_file(&server);

    // A token device with paho (v5): accepted, and may publish to its own topics.
    let out = harness::paho(
        port,
        &ca,
        None,
        Some("sensor1"),
        Some(&token),
        "sensor1",
        Some(("devices/sensor1/status", "online")),
    )
    .await;
    assert!(
        out.text.contains("CONNACK 0") && out.text.contains("PUBACK 0"),
        "{out:?}"
    );
    // ...but not to another device's (v5 PUBACK 0x87 = 135 Not authorized).
    let out = harness::paho(
        port,
        &ca,
        None,
        Some("sensor1"),
        Some(&token),
        "sensor1",
        Some(("devices/kitchen/state/x", "1")),
    )
    .await;
    assert!(
        out.text.contains("CONNACK 0") && out.text.contains("PUBACK 135"),
        "{out:?}"
    );

    // Wrong token: 0x86 (134) Bad user name or password.
    let out = harness::paho(
        port,
        &ca,
        None,
        Some("sensor1"),
        Some("not-the-token"),
        "sensor1",
        None,
    )
    .await;
    assert!(out.text.contains("CONNACK 134"), "{out:?}");
    // Anonymous: 0x87 (135) Not authorized.
    let out = harness::paho(port, &ca, None, None, None, "anon", None).await;
    assert!(out.text.contains("CONNACK 135"), "{out:?}");
    // A device certificate with somebody else's client id: 0x85 (133) Client identifier not valid.
    let out = harness::paho(
        port,
        &ca,
        Some((&kitchen.cert, &kitchen.key)),
        None,
        None,
        "sensor1",
        None,
    )
    .await;
    assert!(out.text.contains("CONNACK 133"), "{out:?}");

    // mosquitto_pub (v3.1.1) anonymous and with a wrong password: refused.
    let mut args = mosq_tls(&server, None);
    args.extend([s("-t"), s("devices/x/status"), s("-m"), s("x")]);
    let out = mosquitto_pub(args).await;
    assert_ne!(out.code, Some(0));
    assert!(out.text.contains("not authorised"), "{out:?}");
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-u"),
        s("sensor1"),
        s("-P"),
        s("wrong"),
        s("-t"),
        s("devices/sensor1/status"),
        s("-m"),
        s("x"),
    ]);
    let out = mosquitto_pub(args).await;
    assert_ne!(out.code, Some(0));
    assert!(out.text.contains("bad user name or password"), "{out:?}");

    // A certificate from another CA: the TLS handshake fails, nothing reaches MQTT.
    let (other_ca, _) = pki::Ca::load_or_create(&dir.path().join("other-ca")).unwrap();
    let foreign = harness::issue_cert(&other_ca, dir.path(), "kitchen");
    let mut args = mosq_tls(&server, Some(&foreign));
    args.extend([
        s("-i"),
        s("kitchen"),
        s("-t"),
        s("devices/kitchen/status"),
        s("-m"),
        s("x"),
    ]);
    let out = mosquitto_pub(args).await;
    assert_ne!(out.code, Some(0), "{out:?}");
    let out = harness::paho(
        port,
        &ca,
        Some((&foreign.cert, &foreign.key)),
        None,
        None,
        "kitchen",
        None,
    )
    .await;
    assert!(!out.text.contains("CONNACK 0"), "{out:?}");

    // A rotated (revoked) certificate: 0x87 Not authorized; the new one works.
    let renewed = harness::issue_cert(&server.ctx.ca, dir.path(), "kitchen");
    let info = pki::cert_info(&std::fs::read_to_string(&renewed.cert).unwrap()).unwrap();
    server
        .ctx
        .store
        .devices()
        .set_credential(
            "kitchen",
            &store::DeviceCredential::Certificate {
                serial_hex: info.serial_hex,
                fingerprint_sha256: info.fingerprint_sha256,
                not_after_ms: info.not_after_unix * 1000,
            },
            "rotated",
        )
        .await
        .unwrap();
    let out = harness::paho(
        port,
        &ca,
        Some((&kitchen.cert, &kitchen.key)),
        None,
        None,
        "kitchen",
        None,
    )
    .await;
    assert!(out.text.contains("CONNACK 135"), "{out:?}");
    let out = harness::paho(
        port,
        &ca,
        Some((&renewed.cert, &renewed.key)),
        None,
        None,
        "kitchen",
        None,
    )
    .await;
    assert!(out.text.contains("CONNACK 0"), "{out:?}");

    // Users connect with their name and password under their role.
    harness::add_user(&server, "viewer1", Role::Viewer, "viewer-password").await;
    let out = harness::paho(
        port,
        &ca,
        None,
        Some("viewer1"),
        Some("viewer-password"),
        "v1",
        Some(("devices/kitchen/set/led", "1")),
    )
    .await;
    assert!(
        out.text.contains("CONNACK 0") && out.text.contains("PUBACK 135"),
        "viewers may not command: {out:?}"
    );
    harness::add_user(&server, "op1", Role::Operator, "operator-password").await;
    let out = harness::paho(
        port,
        &ca,
        None,
        Some("op1"),
        Some("operator-password"),
        "o1",
        Some(("devices/kitchen/set/led", "1")),
    )
    .await;
    assert!(
        out.text.contains("CONNACK 0") && out.text.contains("PUBACK 0"),
        "operators may: {out:?}"
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_device_is_kicked_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let server = harness::start(dir.path()).await;
    let kitchen = harness::add_cert_device(&server, dir.path(), "kitchen").await;
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-V"),
        s("5"),
        s("-i"),
        s("kitchen"),
        s("-t"),
        s("devices/kitchen/set/#"),
    ]);
    let mut sub = Sub::start(args).await;
    assert!(
        sub.seen.iter().any(|l| l.contains("SUBACK")),
        "{:#?}",
        sub.seen
    );

    // Removed through a second handle on the database file, as `devicecloud device remove` does.
    let cli = store::Store::open_data_dir(dir.path()).await.unwrap();
    let removed_at = Instant::now();
    cli.devices().remove("kitchen").await.unwrap();
    // mosquitto_sub is disconnected (v5 DISCONNECT 0x98), retries, and is refused: it exits.
    let line = sub
        .wait_for(|l| l.contains("DISCONNECT") || l.contains("isconnect"))
        .await;
    let kicked_after = removed_at.elapsed();
    assert!(line.is_some(), "{:#?}", sub.seen);
    assert!(
        kicked_after < Duration::from_secs(1),
        "kicked only after {kicked_after:?}"
    );
    eprintln!("removed device kicked after {kicked_after:?}");

    // It cannot come back.
    let mut args = mosq_tls(&server, Some(&kitchen));
    args.extend([
        s("-i"),
        s("kitchen"),
        s("-t"),
        s("devices/kitchen/status"),
        s("-m"),
        s("x"),
    ]);
    let out = mosquitto_pub(args).await;
    assert_ne!(out.code, Some(0));
    assert!(out.text.contains("not authorised"), "{out:?}");
    let _ = sub.child.kill().await;

    // A revoked API token and a removed user are kicked the same way.
    let token = store::secret::generate_api_token();
    let hash = store::secret::hash_token(&token);
    server
        .ctx
        .store
        .tokens()
        .create("ci", Role::Viewer, &hash)
        .await
        .unwrap();
    harness::add_user(&server, "bob", Role::Viewer, "bob-password").await;
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-V"),
        s("5"),
        s("-u"),
        s("ci"),
        s("-P"),
        token,
        s("-i"),
        s("ci-client"),
        s("-t"),
        s("devices/#"),
    ]);
    let mut by_token = Sub::start(args).await;
    assert!(
        by_token.seen.iter().any(|l| l.contains("SUBACK")),
        "{:#?}",
        by_token.seen
    );
    let mut args = mosq_tls(&server, None);
    args.extend([
        s("-V"),
        s("5"),
        s("-u"),
        s("bob"),
        s("-P"),
        s("bob-password"),
        s("-i"),
        s("bob-client"),
        s("-t"),
        s("devices/#"),
    ]);
    let mut by_user = Sub::start(args).await;
    assert!(
        by_user.seen.iter().any(|l| l.contains("SUBACK")),
        "{:#?}",
        by_user.seen
    );

    let revoked_at = Instant::now();
    server.ctx.store.tokens().revoke("ci").await.unwrap();
    server.ctx.store.users().remove("bob").await.unwrap();
    for sub in [&mut by_token, &mut by_user] {
        assert!(
            sub.wait_for(|l| l.contains("DISCONNECT")).await.is_some(),
            "{:#?}",
            sub.seen
        );
    }
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "kicked after {:?}",
        revoked_at.elapsed()
    );
    let _ = by_token.child.kill().await;
    let _ = by_user.child.kill().await;
    server.shutdown().await;
}
