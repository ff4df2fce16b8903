//! Regression tests for conformance deviations found by third-party suites (issue 9), each
//! named after the normative statement it checks (MQTT 5.0 numbering unless noted).

use bytes::Bytes;
use codec::{Ack, Disconnect, Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use tokio::io::AsyncWriteExt;

use crate::helpers::*;

// ---- MQTT 3.1 ----

#[tokio::test]
async fn mqtt_3_1_connack_has_no_session_present_flag() {
    let b = TestBroker::start().await;
    let c = b.client("old31").v31().clean(false).connect().await;
    c.disconnect().await;
    wait_until("offline", || b.broker.stats().clients_connected == 0).await;
    let (c, ack) = b.client("old31").v31().clean(false).connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present, "3.1 CONNACK byte 1 must be 0");
    // The same resume in 3.1.1 does report it, so the session really was there.
    c.disconnect().await;
    wait_until("offline", || b.broker.stats().clients_connected == 0).await;
    let (_c, ack) = b.client("old31").v311().clean(false).connect_raw().await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn mqtt_3_1_client_id_of_23_multibyte_characters_is_accepted() {
    let b = TestBroker::start().await;
    let id = "é".repeat(23);
    let (_c, ack) = b.client(&id).v31().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let (_c, ack) = b.client(&"é".repeat(24)).v31().connect_raw().await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
}

/// Raw 3.1 CONNECT: "MQIsdp", level 3, `flags`, keep alive 60, client id "c31", then `tail`.
fn connect_31(flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 6];
    body.extend_from_slice(b"MQIsdp");
    body.extend_from_slice(&[3, flags, 0, 60, 0, 3]);
    body.extend_from_slice(b"c31");
    body.extend_from_slice(tail);
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend_from_slice(&body);
    packet
}

async fn connack_for_raw(b: &TestBroker, bytes: &[u8]) -> Option<Packet> {
    let mut c = b.raw_client(ProtocolVersion::V3_1).await;
    c.framed.get_mut().write_all(bytes).await.unwrap();
    c.recv().await
}

#[tokio::test]
async fn mqtt_3_1_connect_variants_accepted_like_mosquitto() {
    let b = TestBroker::start().await;
    let cases: [(&str, u8, &[u8]); 5] = [
        // Reserved bit 0 is not checked in 3.1.
        ("reserved bit set", 0x03, b""),
        // Will QoS/retain without the will flag carry no meaning in 3.1.
        ("will retain without will", 0x22, b""),
        // 3.1 does not forbid a password without a user name.
        ("password without user name", 0x42, b"\x00\x02pw"),
        // Old clients set the flags and omit the fields; 3.1 brokers ignore that.
        ("user name flag, no user name", 0x82, b""),
        ("password flag, no password", 0xC2, b"\x00\x01u"),
    ];
    for (what, flags, tail) in cases {
        match connack_for_raw(&b, &connect_31(flags, tail)).await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::Success, "{what}"),
            other => panic!("{what}: expected CONNACK, got {other:?}"),
        }
    }
}

// ---- Maximum Packet Size ----

#[tokio::test]
async fn mqtt_3_1_2_25_oversized_fanout_message_is_discarded_and_later_ones_flow() {
    let b = TestBroker::start().await;
    let mut small = b
        .client("small")
        .max_packet_size(64)
        .receive_maximum(1)
        .connect()
        .await;
    small.subscribe("big/#", QoS::ExactlyOnce).await;
    let mut large = b.client("large").connect().await;
    // At QoS 0, so that its acks do not interleave; the message still fans out to two.
    large.subscribe("big/#", QoS::AtMostOnce).await;
    let mut publ = b.client("pub").connect().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publ.publish("big/x", &"x".repeat(200), qos, false).await;
        publ.publish("big/x", "fits", qos, false).await;
        assert_eq!(large.expect_publish().await.payload.len(), 200);
        assert_eq!(large.expect_publish().await.payload, "fits");
        assert_eq!(small.expect_publish().await.payload, "fits", "{qos:?}");
    }
    assert_eq!(b.broker.stats().messages_dropped, 3);
}

// ---- Will Delay ----

#[tokio::test]
async fn mqtt_3_1_3_9_will_delay_cancelled_by_takeover() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").connect().await;
    watch.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut first = b
        .client("w")
        .clean(false)
        .expiry(60)
        .will("will/w", "gone", Some(1))
        .connect()
        .await;
    let _second = b.client("w").clean(false).expiry(60).connect().await;
    let d = first.expect_disconnect().await.expect("DISCONNECT");
    assert_eq!(d.reason_code, ReasonCode::SessionTakenOver);
    will_marker(&b, &mut watch, "will/ctrl", 1).await;
}

// ---- Malformed packets and protocol errors close the connection ----

async fn expect_closed_with(c: &mut TestClient, reason: ReasonCode) {
    let d = c.expect_disconnect().await;
    assert_eq!(d.map(|d| d.reason_code), Some(reason));
}

#[tokio::test]
async fn mqtt_3_14_2_1_invalid_disconnect_reason_closes() {
    let b = TestBroker::start().await;
    let mut c = b.client("d").connect().await;
    // DISCONNECT with reason 0x05, which does not exist.
    c.framed
        .get_mut()
        .write_all(&[0xE0, 0x01, 0x05])
        .await
        .unwrap();
    expect_closed_with(&mut c, ReasonCode::MalformedPacket).await;
}

#[tokio::test]
async fn mqtt_3_12_pingreq_with_nonzero_remaining_length_is_malformed() {
    let b = TestBroker::start().await;
    for v311 in [false, true] {
        let mut c = if v311 {
            b.client("p").v311().connect().await
        } else {
            b.client("p").connect().await
        };
        c.framed
            .get_mut()
            .write_all(&[0xC0, 0x01, 0x00])
            .await
            .unwrap();
        let d = c.expect_disconnect().await;
        if v311 {
            assert!(d.is_none(), "v3 closes without DISCONNECT");
        } else {
            assert_eq!(d.map(|d| d.reason_code), Some(ReasonCode::MalformedPacket));
        }
    }
}

#[tokio::test]
async fn mqtt_3_14_v3_disconnect_with_nonzero_remaining_length_is_malformed() {
    let b = TestBroker::start().await;
    let mut watch = b.client("watch").connect().await;
    watch.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut c = b
        .client("d3")
        .v311()
        .will("will/d3", "bad", None)
        .connect()
        .await;
    c.framed
        .get_mut()
        .write_all(&[0xE0, 0x01, 0x00])
        .await
        .unwrap();
    assert!(c.expect_disconnect().await.is_none());
    // A malformed DISCONNECT is no normal DISCONNECT: the will is sent.
    assert_eq!(watch.expect_publish().await.payload, "bad");
}

#[tokio::test]
async fn mqtt_3_13_pingresp_from_client_is_protocol_error() {
    let b = TestBroker::start().await;
    let mut c = b.client("p").connect().await;
    c.send(Packet::PingResp).await;
    expect_closed_with(&mut c, ReasonCode::ProtocolError).await;
}

/// A subscriber at `qos` with one message from the broker not yet acknowledged.
async fn subscriber_with_inflight(b: &TestBroker, qos: QoS) -> (TestClient, Publish) {
    let mut sub = b.client("acker").connect().await;
    sub.subscribe("acks", qos).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("acks", "m", qos, false).await;
    let p = sub.expect_publish_noack().await;
    assert_eq!(p.qos, qos);
    (sub, p)
}

#[tokio::test]
async fn mqtt_4_3_2_pubrec_for_a_qos1_message_is_protocol_error() {
    let b = TestBroker::start().await;
    let (mut sub, p) = subscriber_with_inflight(&b, QoS::AtLeastOnce).await;
    sub.send(Packet::PubRec(Ack::new(p.packet_id.unwrap())))
        .await;
    expect_closed_with(&mut sub, ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn mqtt_4_3_3_puback_for_a_qos2_message_is_protocol_error() {
    let b = TestBroker::start().await;
    let (mut sub, p) = subscriber_with_inflight(&b, QoS::ExactlyOnce).await;
    sub.send(Packet::PubAck(Ack::new(p.packet_id.unwrap())))
        .await;
    expect_closed_with(&mut sub, ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn mqtt_4_3_3_pubcomp_before_pubrec_is_protocol_error() {
    let b = TestBroker::start().await;
    let (mut sub, p) = subscriber_with_inflight(&b, QoS::ExactlyOnce).await;
    sub.send(Packet::PubComp(Ack::new(p.packet_id.unwrap())))
        .await;
    expect_closed_with(&mut sub, ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn mqtt_4_3_3_pubrec_with_failure_code_ends_the_flow_without_pubrel() {
    let b = TestBroker::start().await;
    let mut sub = b.client("acker").receive_maximum(1).connect().await;
    sub.subscribe("acks", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("acks", "one", QoS::ExactlyOnce, false).await;
    publ.publish("acks", "two", QoS::ExactlyOnce, false).await;
    let one = sub.expect_publish_noack().await;
    let mut rec = Ack::new(one.packet_id.unwrap());
    rec.reason_code = ReasonCode::UnspecifiedError;
    sub.send(Packet::PubRec(rec)).await;
    // The slot is free again (Receive Maximum 1): "two" follows, and no PUBREL came first.
    let got = sub.recv().await;
    match got {
        Some(Packet::Publish(p)) => assert_eq!(p.payload, "two"),
        other => panic!("expected the next PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn mqtt_4_3_3_duplicate_qos2_publish_in_flight_is_not_routed_again() {
    let config = broker::BrokerConfig {
        limits: broker::Limits {
            receive_maximum: 1,
            ..broker::Limits::default()
        },
        ..broker::BrokerConfig::default()
    };
    let b = TestBroker::with_config(config).await;
    let mut sub = b.client("sub").connect().await;
    sub.subscribe("q2", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    let mut p = Publish::new("q2", Bytes::from_static(b"once"));
    p.qos = QoS::ExactlyOnce;
    p.packet_id = Some(5);
    publ.send(Packet::Publish(p.clone())).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 5));
    // The PUBREC was lost: the client sends the PUBLISH again with DUP (Receive Maximum 1 is
    // already used by this very packet id).
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 5));
    publ.send(Packet::PubRel(Ack::new(5))).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 5));
    assert_eq!(sub.expect_publish().await.payload, "once");
    assert!(sub.sync().await.is_empty(), "delivered twice");
    publ.send(Packet::Disconnect(Disconnect::default())).await;
}

// ---- Flow control ----

#[tokio::test]
async fn mqtt_3_3_4_9_never_more_than_receive_maximum_in_flight() {
    let b = TestBroker::start().await;
    let mut sub = b.client("rm2").receive_maximum(2).connect().await;
    sub.subscribe("flow", QoS::ExactlyOnce).await;
    let mut publ = b.client("pub").connect().await;
    for i in 0..6 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publ.publish("flow", &format!("m{i}"), qos, false).await;
    }
    let first = sub.expect_publish_noack().await;
    let second = sub.expect_publish_noack().await;
    assert!(
        sub.sync().await.is_empty(),
        "a third message exceeded Receive Maximum 2"
    );
    // A QoS 2 message holds its slot until PUBCOMP, not just PUBREC.
    assert_eq!(second.qos, QoS::ExactlyOnce);
    sub.send(Packet::PubRec(Ack::new(second.packet_id.unwrap())))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(_))));
    assert!(
        sub.sync().await.is_empty(),
        "sent more while a PUBCOMP was due"
    );
    sub.send(Packet::PubComp(Ack::new(second.packet_id.unwrap())))
        .await;
    assert_eq!(sub.expect_publish_noack().await.payload, "m2");
    assert!(sub.sync().await.is_empty());
    sub.ack(&first).await;
    let mut rest = Vec::new();
    for _ in 3..6 {
        let p = sub.expect_publish().await;
        rest.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(rest, ["m3", "m4", "m5"]);
}

// ---- Server-to-client topic aliases ----

/// Receives the next PUBLISH and returns (topic, alias, payload).
async fn aliased(c: &mut TestClient) -> (String, Option<u16>, String) {
    let p = c.expect_publish().await;
    (
        p.topic.to_string(),
        p.properties.topic_alias,
        String::from_utf8(p.payload.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn mqtt_3_3_2_3_4_server_assigns_topic_aliases_up_to_the_client_maximum() {
    let b = TestBroker::start().await;
    let mut with = b.client("aliases").topic_alias_maximum(2).connect().await;
    with.subscribe("al/#", QoS::AtLeastOnce).await;
    let mut without = b.client("plain").connect().await;
    without.subscribe("al/#", QoS::AtMostOnce).await;
    let mut publ = b.client("pub").connect().await;
    // A single subscriber (encoded per connection) and two (the shared, patched frame), at
    // QoS 0 and 1.
    let steps = [
        ("al/a", "1", QoS::AtMostOnce),
        ("al/a", "2", QoS::AtLeastOnce),
        ("al/b", "3", QoS::AtLeastOnce),
        ("al/c", "4", QoS::AtMostOnce),
        ("al/b", "5", QoS::AtMostOnce),
    ];
    for (topic, payload, qos) in steps {
        publ.publish(topic, payload, qos, false).await;
    }
    let got = [
        aliased(&mut with).await,
        aliased(&mut with).await,
        aliased(&mut with).await,
        aliased(&mut with).await,
        aliased(&mut with).await,
    ];
    let want = [
        ("al/a", Some(1), "1"),
        ("", Some(1), "2"),
        ("al/b", Some(2), "3"),
        // Both aliases are taken: no alias, full topic.
        ("al/c", None, "4"),
        ("", Some(2), "5"),
    ];
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1, g.2.as_str()), w);
    }
    for (topic, payload, _) in steps {
        assert_eq!(
            aliased(&mut without).await,
            (topic.to_string(), None, payload.to_string())
        );
    }
}

#[tokio::test]
async fn mqtt_3_3_2_3_4_alias_is_not_established_by_a_message_that_was_dropped() {
    let b = TestBroker::start().await;
    let mut small = b
        .client("small")
        .max_packet_size(40)
        .topic_alias_maximum(4)
        .connect()
        .await;
    small.subscribe("al/#", QoS::AtMostOnce).await;
    let mut publ = b.client("pub").connect().await;
    publ.publish("al/a", &"x".repeat(60), QoS::AtMostOnce, false)
        .await;
    publ.publish("al/a", "fits", QoS::AtMostOnce, false).await;
    // The first delivery that reaches the client carries the topic.
    assert_eq!(
        aliased(&mut small).await,
        ("al/a".into(), Some(1), "fits".into())
    );
}
