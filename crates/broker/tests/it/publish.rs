use bytes::Bytes;
use codec::{Ack, Packet, Publish, QoS, ReasonCode, SubscribeOptions};

use crate::helpers::*;

#[tokio::test]
async fn qos_0_1_2_are_delivered_at_the_subscription_maximum() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("t/#", QoS::ExactlyOnce).await;
    let mut low = b.client("low").connect().await;
    low.subscribe("t/#", QoS::AtMostOnce).await;
    let mut publ = b.client("pub").connect().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("t/x", "m", qos, false).await;
        let p = sub.expect_publish().await;
        assert_eq!(
            (p.qos, &p.topic[..], &p.payload[..]),
            (qos, "t/x", &b"m"[..])
        );
        // MQTT-3.8.4-8: downgraded to the subscription's maximum QoS.
        let p = low.expect_publish().await;
        assert_eq!(p.qos, QoS::AtMostOnce);
        assert_eq!(p.packet_id, None);
    }
    assert_eq!(b.broker.stats().messages_received, 3);
}

#[tokio::test]
async fn mqtt_4_3_3_qos2_retransmitted_publish_is_delivered_once() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("q2", Bytes::from_static(b"once"));
    p.qos = QoS::ExactlyOnce;
    p.packet_id = Some(5);
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 5));
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 5));
    publ.send(Packet::PubRel(Ack::new(5))).await;
    assert!(
        matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 5 && a.reason_code == ReasonCode::Success)
    );
    sub.expect_publish().await;
    assert!(sub.sync().await.is_empty(), "routed twice");
    // MQTT-4.3.3: a PUBREL for an unknown id is answered 0x92 in v5.
    publ.send(Packet::PubRel(Ack::new(5))).await;
    assert!(
        matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.reason_code == ReasonCode::PacketIdentifierNotFound)
    );
}

#[tokio::test]
async fn mqtt_4_6_0_qos1_messages_keep_publish_order() {
    let b = TestBroker::start().await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("o", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    for i in 0..50 {
        publ.publish("o", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..50 {
        assert_eq!(sub.expect_publish().await.payload, i.to_string());
    }
}

#[tokio::test]
async fn mqtt_4_4_0_1_unacked_messages_are_resent_in_order_with_dup_after_reconnect() {
    let b = TestBroker::start().await;
    let mut sub = b.client("r").v311().clean(false).connect().await;
    sub.subscribe("r/+", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("r/1", "one", QoS::AtLeastOnce, false).await;
    publ.publish("r/2", "two", QoS::ExactlyOnce, false).await;
    publ.publish("r/3", "three", QoS::ExactlyOnce, false).await;
    let first: Vec<Publish> = vec![
        sub.expect_publish_noack().await,
        sub.expect_publish_noack().await,
        sub.expect_publish_noack().await,
    ];
    // PUBREC for the third: after reconnect the broker must resend PUBREL, not the PUBLISH.
    let pid3 = first[2].packet_id.unwrap();
    sub.send(Packet::PubRec(Ack::new(pid3))).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == pid3));
    drop(sub);
    wait_until("subscriber offline", || {
        b.broker.stats().clients_connected == 1
    })
    .await;
    let (mut sub, ack) = b.client("r").v311().clean(false).connect_raw().await;
    assert!(ack.session_present);
    let again1 = sub.expect_publish_noack().await;
    let again2 = sub.expect_publish_noack().await;
    for (a, f) in [(&again1, &first[0]), (&again2, &first[1])] {
        assert!(a.dup, "MQTT-3.3.1-1: DUP on redelivery");
        assert_eq!((a.packet_id, &a.payload), (f.packet_id, &f.payload));
    }
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.packet_id == pid3));
    sub.send(Packet::PubComp(Ack::new(pid3))).await;
    sub.ack(&again1).await;
    sub.ack(&again2).await;
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_3_4_9_client_receive_maximum_limits_in_flight() {
    let b = TestBroker::start().await;
    let mut sub = b.client("rm").receive_maximum(2).connect().await;
    sub.subscribe("rm", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    for i in 0..5 {
        publ.publish("rm", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let a = sub.expect_publish_noack().await;
    let b2 = sub.expect_publish_noack().await;
    assert!(sub.sync().await.is_empty());
    sub.ack(&a).await;
    let c = sub.expect_publish_noack().await;
    assert_eq!(c.payload, "2");
    assert!(sub.sync().await.is_empty());
    sub.ack(&b2).await;
    sub.ack(&c).await;
    assert_eq!(sub.expect_publish().await.payload, "3");
    assert_eq!(sub.expect_publish().await.payload, "4");
}

#[tokio::test]
async fn mqtt_4_7_2_1_dollar_topics_not_matched_by_root_wildcards() {
    let b = TestBroker::start().await;
    let mut all = b.client("all").connect().await;
    all.subscribe_with(
        vec![
            ("#", SubscribeOptions::qos(QoS::AtMostOnce)),
            ("+/x", SubscribeOptions::qos(QoS::AtMostOnce)),
        ],
        None,
    )
    .await;
    let mut dollar = b.client("dollar").connect().await;
    dollar.subscribe("$app/#", QoS::AtMostOnce).await;
    let local = b.broker.local_client("server:test");
    local.publish(broker::Message::new("$app/x", "d"));
    assert_eq!(dollar.expect_publish().await.topic, "$app/x");
    assert!(all.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_3_3_4_2_overlapping_subscriptions_deliver_once_at_highest_qos() {
    let b = TestBroker::start().await;
    let mut sub = b.client("ov").connect().await;
    sub.subscribe_with(
        vec![("ov/+", SubscribeOptions::qos(QoS::AtMostOnce))],
        Some(1),
    )
    .await;
    sub.subscribe_with(
        vec![("ov/#", SubscribeOptions::qos(QoS::AtLeastOnce))],
        Some(2),
    )
    .await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("ov/a", "x", QoS::ExactlyOnce, false).await;
    let p = sub.expect_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(
        ids,
        vec![1, 2],
        "MQTT-3.3.4-3: every matching subscription identifier"
    );
    assert!(sub.sync().await.is_empty());
}

#[tokio::test]
async fn mqtt_4_8_2_shared_subscription_round_robin() {
    let b = TestBroker::start().await;
    // One principal's two sessions (share groups are per principal).
    let mut m1 = b.client("m1").user("worker").connect().await;
    let mut m2 = b.client("m2").user("worker").connect().await;
    m1.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    m2.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    for i in 0..6 {
        publ.publish("jobs/x", &i.to_string(), QoS::AtLeastOnce, false)
            .await;
    }
    let mut got1 = Vec::new();
    let mut got2 = Vec::new();
    for _ in 0..3 {
        got1.push(m1.expect_publish().await.payload);
        got2.push(m2.expect_publish().await.payload);
    }
    assert!(m1.sync().await.is_empty());
    assert!(m2.sync().await.is_empty());
    let mut all: Vec<_> = got1.into_iter().chain(got2).collect();
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn mqtt_3_10_4_unsubscribe_stops_delivery_and_reports_missing_filters() {
    let b = TestBroker::start().await;
    let mut sub = b.client("u").connect().await;
    sub.subscribe("u/#", QoS::AtLeastOnce).await;
    sub.send(Packet::Unsubscribe(codec::Unsubscribe {
        packet_id: 4,
        filters: vec!["u/#".into(), "never".into()],
        properties: Default::default(),
    }))
    .await;
    match sub.recv().await {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(a.packet_id, 4);
            assert_eq!(
                a.reason_codes,
                vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publ = b.client("pub").connect().await;
    publ.publish("u/x", "x", QoS::AtLeastOnce, false).await;
    assert!(sub.sync().await.is_empty());
    assert_eq!(b.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn fan_out_frames_carry_each_subscribers_packet_id_and_flags() {
    let b = TestBroker::start().await;
    let rap = SubscribeOptions {
        retain_as_published: true,
        ..SubscribeOptions::qos(QoS::AtLeastOnce)
    };
    let mut a = b
        .client("a")
        .clean(false)
        .expiry(60)
        .receive_maximum(1)
        .connect()
        .await;
    a.subscribe_with(vec![("f", rap)], None).await;
    let mut bb = b.client("b").connect().await;
    bb.subscribe("f", QoS::ExactlyOnce).await;
    let mut c = b.client("c").v311().connect().await;
    c.subscribe("f", QoS::AtLeastOnce).await;
    // Make b's packet ids differ from a's.
    bb.subscribe("warm", QoS::AtLeastOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("warm", "w", QoS::AtLeastOnce, false).await;
    bb.expect_publish().await;
    publ.publish("f", "one", QoS::ExactlyOnce, true).await;
    let pa = a.expect_publish_noack().await;
    let pb = bb.expect_publish_noack().await;
    let pc = c.expect_publish_noack().await;
    assert_eq!(
        (pa.qos, pb.qos, pc.qos),
        (QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce)
    );
    assert_eq!((pa.retain, pb.retain, pc.retain), (true, false, false));
    assert!(!pa.dup && !pb.dup && !pc.dup);
    assert_ne!(pa.packet_id, pb.packet_id);
    assert_eq!(
        (&pa.payload, &pb.payload, &pc.payload),
        (&pa.payload, &pa.payload, &pa.payload)
    );
    bb.ack(&pb).await;
    c.ack(&pc).await;
    publ.publish("f", "two", QoS::AtLeastOnce, false).await;
    assert_eq!(bb.expect_publish().await.payload, "two");
    assert_eq!(c.expect_publish().await.payload, "two");
    // Receive Maximum 1 and "one" not acknowledged yet.
    assert!(a.sync().await.is_empty());
    a.ack(&pa).await;
    let two = a.expect_publish_noack().await;
    assert_eq!(two.payload, "two");
    assert_ne!(two.packet_id, pa.packet_id);
    drop(a);
    wait_until("a offline", || b.broker.stats().clients_connected == 3).await;
    let mut a = b.client("a").clean(false).expiry(60).connect().await;
    let again = a.expect_publish().await;
    assert!(again.dup);
    assert_eq!(
        (again.packet_id, &again.payload[..]),
        (two.packet_id, &b"two"[..])
    );
}
