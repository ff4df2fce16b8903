use broker::{BrokerConfig, Limits};
use bytes::Bytes;
use codec::{ByteStr, Packet, Publish, QoS, ReasonCode, SubscribeOptions};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

#[tokio::test]
async fn mqtt_3_3_2_3_4_topic_alias_is_resolved() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("alias/#", QoS::AtMostOnce).await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("alias/long/topic", Bytes::from_static(b"1"));
    p.properties.topic_alias = Some(3);
    publ.publish_packet(p).await;
    let mut p = Publish::new(ByteStr::new(), Bytes::from_static(b"2"));
    p.properties.topic_alias = Some(3);
    publ.publish_packet(p).await;
    for want in ["1", "2"] {
        let got = sub.expect_publish().await;
        assert_eq!(
            (&got.topic[..], &got.payload[..]),
            ("alias/long/topic", want.as_bytes())
        );
        assert_eq!(got.properties.topic_alias, None);
    }
}

#[tokio::test]
async fn mqtt_3_3_2_3_4_topic_alias_above_maximum_is_0x94() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("a", Bytes::from_static(b"1"));
    p.properties.topic_alias = Some(Limits::default().topic_alias_maximum + 1);
    publ.send(Packet::Publish(p)).await;
    let d = publ.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::TopicAliasInvalid);
}

#[tokio::test]
async fn mqtt_3_8_3_1_no_local() {
    let b = TestBroker::start().await;
    let mut c = b.client("nl").connect().await;
    let nl = SubscribeOptions {
        no_local: true,
        ..SubscribeOptions::qos(QoS::AtMostOnce)
    };
    c.subscribe_with(vec![("nl", nl)], None).await;
    c.publish("nl", "self", QoS::AtMostOnce, false).await;
    assert!(c.sync().await.is_empty());
    let mut other = b.client("other").connect().await;
    other.publish("nl", "other", QoS::AtMostOnce, false).await;
    assert_eq!(c.expect_publish().await.payload, "other");
}

#[tokio::test]
async fn mqtt_3_3_4_properties_are_forwarded() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe_with(
        vec![("req/#", SubscribeOptions::qos(QoS::AtLeastOnce))],
        Some(42),
    )
    .await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("req/x", Bytes::from_static(b"{}"));
    p.properties.user_properties = vec![("k".into(), "v".into())];
    p.properties.response_topic = Some("resp/x".into());
    p.properties.correlation_data = Some(Bytes::from_static(b"c1"));
    p.properties.content_type = Some("application/json".into());
    p.properties.payload_format_indicator = Some(true);
    publ.publish_packet(p.clone()).await;
    let got = sub.expect_publish().await;
    assert_eq!(got.properties.user_properties, p.properties.user_properties);
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        p.properties.correlation_data
    );
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(true));
    assert_eq!(got.properties.subscription_identifiers, vec![42]);
}

#[tokio::test]
async fn mqtt_3_1_2_25_message_too_big_for_client_is_dropped_and_counted() {
    let b = TestBroker::start().await;
    let mut sub = b.client("small").max_packet_size(64).connect().await;
    sub.subscribe("big", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("big", &"x".repeat(200), QoS::AtLeastOnce, false)
        .await;
    publ.publish("big", "fits", QoS::AtLeastOnce, false).await;
    assert_eq!(sub.expect_publish().await.payload, "fits");
    assert_eq!(b.broker.stats().messages_dropped, 1);
}

#[tokio::test]
async fn mqtt_3_2_2_3_6_packet_above_our_maximum_is_0x95() {
    let config = BrokerConfig {
        limits: Limits {
            max_packet_size: 128,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut publ = b.client("pub").connect().await;
    publ.send(Packet::Publish(Publish::new(
        "t",
        Bytes::from(vec![b'x'; 500]),
    )))
    .await;
    let d = publ.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::PacketTooLarge);
}

#[tokio::test]
async fn mqtt_4_13_malformed_packet_gets_disconnect_0x81() {
    let b = TestBroker::start().await;
    let mut c = b.client("bad").connect().await;
    // PUBLISH with QoS 3 (both QoS bits set) is malformed (MQTT-3.3.1-4).
    c.framed
        .get_mut()
        .write_all(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01])
        .await
        .unwrap();
    let d = c.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::MalformedPacket);
    assert_eq!(b.broker.stats().malformed_packets, 1);
}

#[tokio::test]
async fn mqtt_3_3_4_receive_maximum_exceeded_is_0x93() {
    let config = BrokerConfig {
        limits: Limits {
            receive_maximum: 2,
            ..Limits::default()
        },
        ..BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut publ = b.client("pub").connect().await;
    for pid in 1..=3u16 {
        let mut p = Publish::new("t", Bytes::from_static(b"x"));
        p.qos = QoS::ExactlyOnce;
        p.packet_id = Some(pid);
        publ.send(Packet::Publish(p)).await;
    }
    let d = publ.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::ReceiveMaximumExceeded);
}

#[tokio::test]
async fn mqtt_3_3_4_6_client_subscription_identifier_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("t", Bytes::from_static(b"x"));
    p.properties.subscription_identifiers = vec![1];
    publ.send(Packet::Publish(p)).await;
    let d = publ.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::ProtocolError);
}
