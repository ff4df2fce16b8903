use std::time::Duration;

use bytes::Bytes;
use codec::{Disconnect, Packet, Publish, QoS, ReasonCode};

use crate::helpers::*;

#[tokio::test]
async fn mqtt_3_1_2_5_will_published_on_abnormal_close_only() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").connect().await;
    watch.subscribe("wills/#", QoS::AtLeastOnce).await;
    let c = b
        .client("dies")
        .will("wills/dies", "gone", None)
        .connect()
        .await;
    drop(c);
    let p = watch.expect_publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), ("wills/dies", &b"gone"[..]));
    let c = b
        .client("polite")
        .will("wills/polite", "gone", None)
        .connect()
        .await;
    c.disconnect().await;
    // Once the broker no longer counts it, its will is published or not: nothing is queued.
    wait_until("polite gone", || b.broker.stats().clients_connected == 1).await;
    assert!(watch.sync().await.is_empty());
    // v5 DISCONNECT 0x04: disconnect normally but send the will.
    let mut c = b.client("w4").will("wills/w4", "bye", None).connect().await;
    c.send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    assert_eq!(watch.expect_publish().await.topic, "wills/w4");
}

#[tokio::test]
async fn mqtt_3_1_3_9_will_delay_cancelled_by_reconnect() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").connect().await;
    watch.subscribe("wills/#", QoS::AtLeastOnce).await;
    let c = b
        .client("d")
        .clean(false)
        .expiry(60)
        .will("wills/d", "late", Some(1))
        .connect()
        .await;
    drop(c);
    wait_until("offline", || b.broker.stats().clients_connected == 1).await;
    let (_c2, ack) = b.client("d").clean(false).expiry(60).connect_raw().await;
    assert!(ack.session_present);
    will_marker(&b, &mut watch, "wills/ctrl", 1).await;
}

#[tokio::test]
async fn mqtt_3_1_3_9_will_sent_after_delay() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").connect().await;
    watch.subscribe("wills/#", QoS::AtLeastOnce).await;
    let c = b
        .client("d")
        .clean(false)
        .expiry(60)
        .will("wills/d", "late", Some(1))
        .connect()
        .await;
    let t = tokio::time::Instant::now();
    drop(c);
    assert_eq!(watch.expect_publish().await.payload, "late");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn mqtt_4_1_queued_messages_delivered_when_session_resumes() {
    let b = TestBroker::start().await;
    let mut c = b.client("p").clean(false).expiry(60).connect().await;
    c.subscribe("q/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("q/1", "a", QoS::AtLeastOnce, false).await;
    publ.publish(
        "q/2",
        "dropped: qos0 to offline session",
        QoS::AtMostOnce,
        false,
    )
    .await;
    publ.publish("q/3", "b", QoS::ExactlyOnce, false).await;
    let (mut c, ack) = b.client("p").clean(false).expiry(60).connect_raw().await;
    assert!(ack.session_present);
    assert_eq!(c.expect_publish().await.payload, "a");
    assert_eq!(c.expect_publish().await.payload, "b");
    assert!(c.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_1_2_4_clean_start_discards_the_session() {
    let b = TestBroker::start().await;
    let mut c = b.client("p").clean(false).expiry(60).connect().await;
    c.subscribe("q/#", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (mut c, ack) = b.client("p").clean(true).connect_raw().await;
    assert!(!ack.session_present);
    let mut publ = b.client("pub").connect().await;
    publ.publish("q/1", "a", QoS::AtLeastOnce, false).await;
    assert!(c.sync().await.is_empty());
    assert_eq!(b.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn mqtt_3_1_2_11_session_expires_after_interval() {
    let b = TestBroker::start().await;
    let c = b.client("e").clean(false).expiry(1).connect().await;
    c.disconnect().await;
    wait_until("session expired", || b.broker.stats().sessions == 0).await;
    let (_, ack) = b.client("e").clean(false).expiry(1).connect_raw().await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn mqtt_3_3_2_3_3_queued_message_expires() {
    let b = TestBroker::start().await;
    let mut c = b.client("x").clean(false).expiry(60).connect().await;
    c.subscribe("x", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("x", Bytes::from_static(b"short"));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(1);
    p.properties.message_expiry_interval = Some(1);
    publ.publish_packet(p).await;
    publ.publish("x", "forever", QoS::AtLeastOnce, false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = b.client("x").clean(false).expiry(60).connect().await;
    let p = c.expect_publish().await;
    assert_eq!(p.payload, "forever");
    assert_eq!(p.properties.message_expiry_interval, None);
    assert!(c.sync().await.is_empty());
}

#[tokio::test]
async fn shutdown_disconnects_with_0x8b_and_publishes_wills() {
    let b = TestBroker::start().await;
    let mut watch = b.local_will_watcher();
    let mut c = b
        .client("s")
        .will("wills/s", "down", Some(100))
        .clean(false)
        .expiry(100)
        .connect()
        .await;
    b.broker.shutdown().await;
    let d = c.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::ServerShuttingDown);
    assert_eq!(watch.recv().await.unwrap().payload, "down");
}

impl TestBroker {
    fn local_will_watcher(&self) -> broker::LocalSubscription {
        self.broker.local_client("server:test").subscribe("wills/#")
    }
}

#[tokio::test]
async fn mqtt_3_14_2_2_disconnect_may_change_session_expiry_but_not_from_zero() {
    let b = TestBroker::start().await;
    let mut c = b.client("z").connect().await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(60);
    c.send(Packet::Disconnect(d)).await;
    let got = c.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(got.reason_code, ReasonCode::ProtocolError);
    // From non-zero to zero: the session ends at disconnect.
    let mut c = b.client("y").clean(false).expiry(60).connect().await;
    let mut d = Disconnect::default();
    d.properties.session_expiry_interval = Some(0);
    c.send(Packet::Disconnect(d)).await;
    assert!(c.expect_disconnect().await.is_none());
    wait_until("session gone", || b.broker.stats().sessions == 0).await;
}
