use std::time::Duration;

use broker::BrokerConfig;
use bytes::Bytes;
use codec::{Publish, QoS, RetainHandling, SubscribeOptions};

use crate::helpers::*;

#[tokio::test]
async fn mqtt_3_3_1_5_retained_delivered_on_subscribe() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("dev/a/status", "online", QoS::AtLeastOnce, true)
        .await;
    publ.publish("dev/b/status", "offline", QoS::AtMostOnce, true)
        .await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("dev/+/status", QoS::AtLeastOnce).await;
    let mut got = [sub.expect_publish().await, sub.expect_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert!(
        got.iter().all(|p| p.retain),
        "MQTT-3.3.1-8: retain flag set on subscribe delivery"
    );
    assert_eq!(
        (got[0].qos, got[1].qos),
        (QoS::AtLeastOnce, QoS::AtMostOnce)
    );
    // A live retained publish to an existing subscription has retain = 0 (MQTT-3.3.1-9).
    publ.publish("dev/a/status", "again", QoS::AtLeastOnce, true)
        .await;
    assert!(!sub.expect_publish().await.retain);
    assert_eq!(b.broker.stats().retained_messages, 2);
}

#[tokio::test]
async fn mqtt_3_3_1_10_empty_payload_deletes_retained() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("gone", "x", QoS::AtLeastOnce, true).await;
    publ.publish("gone", "", QoS::AtLeastOnce, true).await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    sub.expect_nothing(100).await;
    assert_eq!(b.broker.stats().retained_messages, 0);
}

#[tokio::test]
async fn mqtt_3_3_1_12_retain_as_published() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    let rap = SubscribeOptions {
        retain_as_published: true,
        ..SubscribeOptions::qos(QoS::AtLeastOnce)
    };
    sub.subscribe_with(vec![("rap", rap)], None).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("rap", "x", QoS::AtLeastOnce, true).await;
    assert!(sub.expect_publish().await.retain);
}

#[tokio::test]
async fn mqtt_3_3_1_9_retain_handling_1_and_2() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("rh", "x", QoS::AtLeastOnce, true).await;
    let mut sub = b.client("sub").connect().await;
    let never = SubscribeOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..SubscribeOptions::qos(QoS::AtLeastOnce)
    };
    sub.subscribe_with(vec![("rh", never)], None).await;
    sub.expect_nothing(100).await;
    let if_new = SubscribeOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..SubscribeOptions::qos(QoS::AtLeastOnce)
    };
    let mut sub2 = b.client("sub2").connect().await;
    sub2.subscribe_with(vec![("rh", if_new)], None).await;
    assert!(sub2.expect_publish().await.retain);
    sub2.subscribe_with(vec![("rh", if_new)], None).await;
    sub2.expect_nothing(100).await;
}

#[tokio::test]
async fn mqtt_3_3_2_3_3_expired_retained_message_is_not_delivered() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("exp", Bytes::from_static(b"x"));
    p.retain = true;
    p.properties.message_expiry_interval = Some(1);
    publ.publish_packet(p).await;
    let mut keep = Publish::new("keep", Bytes::from_static(b"k"));
    keep.retain = true;
    keep.properties.message_expiry_interval = Some(100);
    publ.publish_packet(keep).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("#", QoS::AtMostOnce).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.topic, "keep");
    let left = p
        .properties
        .message_expiry_interval
        .expect("remaining expiry forwarded");
    assert!((97..=99).contains(&left), "{left}");
    sub.expect_nothing(50).await;
}

#[tokio::test]
async fn sys_topics_are_published() {
    let config = BrokerConfig {
        sys_interval: Duration::from_millis(50),
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut sub = b.client("sys").connect().await;
    // One SUBSCRIBE: a second one would race with the next 50 ms round of publications.
    let qos0 = codec::SubscribeOptions::qos(QoS::AtMostOnce);
    sub.subscribe_with(
        vec![
            ("$SYS/broker/version", qos0),
            ("$SYS/broker/clients/connected", qos0),
        ],
        None,
    )
    .await;
    let (mut version, mut connected) = (None, None);
    while version.is_none() || connected.is_none() {
        let p = sub.expect_publish().await;
        match &*p.topic {
            "$SYS/broker/version" => version = Some(p.payload),
            "$SYS/broker/clients/connected" => connected = Some(p.payload),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(version.unwrap(), broker::VERSION);
    assert_eq!(connected.unwrap(), "1");
}
