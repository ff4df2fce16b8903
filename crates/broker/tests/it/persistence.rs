use broker::BrokerConfig;
use codec::{Ack, Packet, QoS, ReasonCode};

use crate::helpers::*;

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: Some(dir.to_path_buf()),
        ..BrokerConfig::default()
    }
}

#[tokio::test]
async fn sessions_queues_inflight_and_retained_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with_config(config(dir.path())).await;
    let mut c = b.client("dev").clean(false).expiry(3600).connect().await;
    c.subscribe("p/#", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("p/1", "in-flight", QoS::AtLeastOnce, false)
        .await;
    let first = c.expect_publish_noack().await;
    drop(c);
    wait_until("offline", || b.broker.stats().clients_connected == 1).await;
    publ.publish("p/2", "queued", QoS::ExactlyOnce, false).await;
    publ.publish("keep", "retained", QoS::AtLeastOnce, true)
        .await;
    // Inbound QoS 2 state of a persistent publisher: PUBREC received, PUBREL pending.
    let mut p2 = b.client("pub2").clean(false).expiry(3600).connect().await;
    let mut q2 = codec::Publish::new("other", bytes::Bytes::from_static(b"x"));
    q2.qos = QoS::ExactlyOnce;
    q2.packet_id = Some(11);
    p2.send(Packet::Publish(q2)).await;
    assert!(matches!(p2.recv().await, Some(Packet::PubRec(_))));
    // Acks were sent only after fsync, so a crash now must lose nothing.
    b.crash().await;

    let b = TestBroker::with_config(config(dir.path())).await;
    assert_eq!(b.broker.stats().retained_messages, 1);
    let (mut c, ack) = b
        .client("dev")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    let again = c.expect_publish_noack().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"in-flight"[..])
    );
    c.ack(&again).await;
    let queued = c.expect_publish().await;
    assert_eq!(
        (queued.qos, &queued.payload[..]),
        (QoS::ExactlyOnce, &b"queued"[..])
    );
    // The subscription survived too.
    let mut publ = b.client("pub").connect().await;
    publ.publish("p/3", "live", QoS::AtLeastOnce, false).await;
    assert_eq!(c.expect_publish().await.payload, "live");
    let mut r = b.client("r").connect().await;
    r.subscribe("keep", QoS::AtLeastOnce).await;
    assert_eq!(r.expect_publish().await.payload, "retained");
    let (mut p2, ack) = b
        .client("pub2")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    p2.send(Packet::PubRel(Ack::new(11))).await;
    assert!(
        matches!(p2.recv().await, Some(Packet::PubComp(a)) if a.reason_code == ReasonCode::Success)
    );
    b.broker.shutdown().await;
}

#[tokio::test]
async fn delivered_messages_and_ended_sessions_stay_gone_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with_config(config(dir.path())).await;
    let mut c = b.client("dev").clean(false).expiry(3600).connect().await;
    c.subscribe("p", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("p", "done", QoS::AtLeastOnce, false).await;
    c.expect_publish().await;
    c.sync().await;
    let mut gone = b.client("gone").clean(false).expiry(3600).connect().await;
    gone.subscribe("x", QoS::AtLeastOnce).await;
    drop(gone);
    let (_g, ack) = b.client("gone").clean(true).connect_raw().await;
    assert!(!ack.session_present);
    b.broker.shutdown().await;
    b.crash().await;

    let b = TestBroker::with_config(config(dir.path())).await;
    let (mut c, ack) = b
        .client("dev")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    assert!(
        c.sync().await.is_empty(),
        "an acknowledged message must not come back"
    );
    let (_, ack) = b
        .client("gone")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn clean_sessions_do_not_touch_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with_config(config(dir.path())).await;
    let path = dir.path().join("broker.journal");
    let before = std::fs::metadata(&path).unwrap().len();
    let mut c = b.client("clean").connect().await;
    c.subscribe("t", QoS::AtLeastOnce).await;
    for _ in 0..10 {
        c.publish("t", "x", QoS::AtLeastOnce, false).await;
        c.expect_publish().await;
    }
    c.sync().await;
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
}

/// The body of the child process that `sessions_survive_kill_9` starts and kills; it does
/// nothing when run as an ordinary test.
#[tokio::test]
async fn kill9_child_process_entry() {
    let Ok(dir) = std::env::var("DC_KILL9_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let b = TestBroker::with_config(config(&dir)).await;
    let tmp = dir.join("port.tmp");
    std::fs::write(&tmp, b.addr.port().to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("port")).unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn sessions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "persistence::kill9_child_process_entry",
            "--nocapture",
        ])
        .env("DC_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let port_file = dir.path().join("port");
    wait_until("child broker up", || port_file.exists()).await;
    let port: u16 = std::fs::read_to_string(&port_file)
        .unwrap()
        .parse()
        .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut c = ClientBuilder::new(addr, "dev")
        .clean(false)
        .expiry(3600)
        .connect()
        .await;
    c.subscribe("k/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = ClientBuilder::new(addr, "pub").connect().await;
    for i in 0..20 {
        publ.publish("k/x", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    publ.publish("k/r", "retained", QoS::AtLeastOnce, true)
        .await;
    // Every PUBACK above was sent after fsync; SIGKILL now.
    child.kill().unwrap();
    child.wait().unwrap();

    let b = TestBroker::with_config(config(dir.path())).await;
    let (mut c, ack) = b
        .client("dev")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    for i in 0..20 {
        assert_eq!(c.expect_publish().await.payload, i.to_string());
    }
    // The retained message was also queued for the subscriber (retain flag 0: live delivery).
    assert_eq!(c.expect_publish().await.payload, "retained");
    assert!(c.sync().await.is_empty());
    let mut r = b.client("r").connect().await;
    r.subscribe("k/r", QoS::AtLeastOnce).await;
    assert_eq!(r.expect_publish().await.payload, "retained");
}

#[tokio::test]
async fn retained_message_sent_to_a_second_persistent_subscriber_is_journaled_again() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::with_config(config(dir.path())).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("cfg", "v1", QoS::AtLeastOnce, true).await;
    let mut a = b.client("a").clean(false).expiry(3600).connect().await;
    a.subscribe("cfg", QoS::AtLeastOnce).await;
    a.expect_publish().await;
    a.sync().await;
    let mut second = b.client("second").clean(false).expiry(3600).connect().await;
    second.subscribe("cfg", QoS::AtLeastOnce).await;
    let first = second.expect_publish_noack().await;
    second.sync().await;
    b.crash().await;

    let b = TestBroker::with_config(config(dir.path())).await;
    let (mut second, ack) = b
        .client("second")
        .clean(false)
        .expiry(3600)
        .connect_raw()
        .await;
    assert!(ack.session_present);
    let again = second.expect_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (first.packet_id, &b"v1"[..])
    );
}
