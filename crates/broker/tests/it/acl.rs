use codec::{Packet, QoS, ReasonCode, SubscribeOptions};

use crate::helpers::*;

#[tokio::test]
async fn denied_publish_v5_gets_0x87_and_is_not_delivered() {
    let b = TestBroker::start().await;
    let mut sub = b.client("watch").connect().await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let mut c = b.client("lim").user("limited").connect().await;
    let mut p = codec::Publish::new("secret/x", bytes::Bytes::from_static(b"no"));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(3);
    assert_eq!(c.publish_packet(p.clone()).await, ReasonCode::NotAuthorized);
    p.qos = QoS::ExactlyOnce;
    assert_eq!(c.publish_packet(p).await, ReasonCode::NotAuthorized);
    c.publish("secret/x", "q0", QoS::AtMostOnce, false).await;
    c.publish("allowed/x", "yes", QoS::AtLeastOnce, false).await;
    assert_eq!(sub.expect_publish().await.topic, "allowed/x");
    assert!(sub.sync().await.is_empty());
    assert_eq!(b.broker.stats().publish_denied, 3);
}

#[tokio::test]
async fn denied_publish_v311_is_acked_but_dropped() {
    let b = TestBroker::start().await;
    let mut sub = b.client("watch").connect().await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    let mut c = b.client("lim").v311().user("limited").connect().await;
    c.publish("secret/x", "no", QoS::AtLeastOnce, false).await;
    c.publish("secret/x", "no", QoS::ExactlyOnce, false).await;
    assert!(c.sync().await.is_empty());
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn denied_subscribe_gets_suback_failure() {
    let b = TestBroker::start().await;
    let mut c = b.client("lim").user("limited").connect().await;
    let ack = c
        .subscribe_with(
            vec![
                ("secret/#", SubscribeOptions::qos(QoS::AtLeastOnce)),
                ("allowed/#", SubscribeOptions::qos(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
    assert_eq!(
        ack.reason_codes,
        vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQoS1]
    );
    let mut c3 = b.client("lim3").v311().user("limited").connect().await;
    let ack = c3.subscribe("#", QoS::AtMostOnce).await;
    assert_eq!(ack.reason_codes[0].to_v3_suback(), 0x80);
    assert_eq!(b.broker.stats().subscribe_denied, 2);
}

#[tokio::test]
async fn will_on_a_forbidden_topic_refuses_the_connection() {
    let b = TestBroker::start().await;
    let (_, ack) = b
        .client("w")
        .user("limited")
        .will("secret/w", "bye", None)
        .connect_raw()
        .await;
    assert_eq!(ack.reason_code, ReasonCode::NotAuthorized);
}

#[tokio::test]
async fn disconnect_principal_closes_its_connections() {
    let b = TestBroker::start().await;
    let mut a = b.client("a1").user("alice").connect().await;
    let mut other = b.client("b1").user("bob").connect().await;
    assert_eq!(b.broker.disconnect_principal("user:alice"), 1);
    let d = a.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::AdministrativeAction);
    assert!(other.sync().await.is_empty());
    other.send(Packet::PingReq).await;
    assert_eq!(other.recv().await, Some(Packet::PingResp));
}

#[tokio::test]
async fn preauthenticated_connections_skip_the_authenticator_but_keep_their_acl() {
    use broker::{
        ConnInfo,
        auth::{Identity, Transport},
    };
    use codec::{Connect, MqttCodec, ProtocolVersion, Publish};
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Arc;

    let b = TestBroker::start().await;
    let (client, server) = tokio::io::duplex(4096);
    let mut info = ConnInfo::new("127.0.0.1:1".parse().unwrap(), Transport::Wss);
    info.preauthenticated = Some(Identity {
        principal: "user:dash".into(),
        permissions: Arc::new(Limited),
    });
    tokio::spawn(b.broker.serve_connection(server, info));
    let mut f =
        tokio_util::codec::Framed::new(client, MqttCodec::new(ProtocolVersion::V5, u32::MAX));
    let mut connect = Connect::new(ProtocolVersion::V5, "dash");
    connect.username = Some("bad".into()); // the authenticator would refuse this
    f.send(Packet::Connect(Box::new(connect))).await.unwrap();
    match f.next().await {
        Some(Ok(Packet::ConnAck(a))) => assert_eq!(a.reason_code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut p = Publish::new("secret/x", bytes::Bytes::from_static(b"no"));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(1);
    f.send(Packet::Publish(p)).await.unwrap();
    match f.next().await {
        Some(Ok(Packet::PubAck(a))) => assert_eq!(a.reason_code, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(b.broker.disconnect_principal("user:dash"), 1);
}

#[tokio::test]
async fn clients_cannot_publish_into_sys() {
    let b = TestBroker::start().await;
    let mut watch = b.client("w").connect().await;
    watch.subscribe("$SYS/#", QoS::AtMostOnce).await;
    watch.subscribe("$app/#", QoS::AtMostOnce).await;
    let mut c = b.client("c").connect().await;
    let mut p = codec::Publish::new("$SYS/broker/version", bytes::Bytes::from_static(b"fake"));
    p.qos = QoS::AtLeastOnce;
    p.packet_id = Some(2);
    assert_eq!(c.publish_packet(p).await, ReasonCode::NotAuthorized);
    c.publish("$app/x", "ok", QoS::AtMostOnce, false).await;
    assert_eq!(watch.expect_publish().await.topic, "$app/x");
}
