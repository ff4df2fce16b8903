//! Property-based round trips over generated packets.

use bytes::Bytes;
use codec::*;
use proptest::prelude::*;

use crate::roundtrip;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9$ é/]{1,40}"
}

fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn user_props() -> impl Strategy<Value = UserProperties> {
    prop::collection::vec((text(), text()), 0..3)
}

fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        prop::option::of(any::<bool>()),
        prop::option::of(any::<u32>()),
        prop::option::of(1u16..),
        prop::option::of(topic_name()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        user_props(),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        prop::option::of(text()),
    )
        .prop_map(|(pfi, mei, alias, rt, cd, up, ids, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: alias,
            response_topic: rt,
            correlation_data: cd.map(Bytes::from),
            user_properties: up,
            subscription_identifiers: ids,
            content_type: ct,
        })
}

prop_compose! {
    fn publish(v5: bool)(
        qos in qos(),
        dup in any::<bool>(),
        retain in any::<bool>(),
        topic in topic_name(),
        id in 1u16..,
        payload in prop::collection::vec(any::<u8>(), 0..300),
        props in publish_props(),
    ) -> Publish {
        Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic: topic.into(),
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            payload: payload.into(),
            properties: if v5 { props } else { PublishProperties::default() },
        }
    }
}

fn filter() -> impl Strategy<Value = String> {
    prop_oneof![
        topic_name(),
        "[a-z]{1,5}/\\+/[a-z]{1,5}",
        "[a-z]{1,5}(/[a-z]{0,3}){0,3}/#",
        "\\$share/[a-z]{1,4}/[a-z+]{1}",
        Just("#".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn publish_round_trips(v in version(), p in publish(true)) {
        let mut p = p;
        if !v.is_v5() { p.properties = PublishProperties::default(); }
        roundtrip(&Packet::Publish(p), v);
    }

    #[test]
    fn subscribe_round_trips(
        v in version(),
        id in 1u16..,
        subs in prop::collection::vec((filter(), qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..5),
        sub_id in prop::option::of(1u32..=268_435_455),
        up in user_props(),
    ) {
        let subscriptions = subs.into_iter().map(|(filter, qos, nl, rap, rh)| {
            let options = if v.is_v5() {
                let shared = topic::parse_shared(&filter).is_some();
                SubscribeOptions {
                    qos,
                    no_local: nl && !shared,
                    retain_as_published: rap,
                    retain_handling: [RetainHandling::SendAtSubscribe, RetainHandling::SendIfNew, RetainHandling::DoNotSend][rh as usize],
                }
            } else {
                SubscribeOptions::qos(qos)
            };
            Subscription { filter, options }
        }).collect();
        let properties = if v.is_v5() {
            SubscribeProperties { subscription_identifier: sub_id, user_properties: up }
        } else {
            SubscribeProperties::default()
        };
        roundtrip(&Packet::Subscribe(Subscribe { packet_id: id, subscriptions, properties }), v);
    }

    #[test]
    fn connect_round_trips(
        v in version(),
        client_id in text(),
        keep_alive in any::<u16>(),
        clean in any::<bool>(),
        user in prop::option::of(text()),
        pw in prop::option::of(prop::collection::vec(any::<u8>(), 0..10)),
        will in prop::option::of((topic_name(), prop::collection::vec(any::<u8>(), 0..10), qos(), any::<bool>())),
        sei in prop::option::of(any::<u32>()),
        up in user_props(),
    ) {
        let mut c = Connect::new(v, client_id);
        c.keep_alive = keep_alive;
        c.clean_start = clean;
        c.username = user.clone();
        c.password = if user.is_some() || v.is_v5() { pw.map(Bytes::from) } else { None };
        c.will = will.map(|(topic, payload, qos, retain)| LastWill {
            topic: topic.into(), payload: payload.into(), qos, retain, properties: WillProperties::default(),
        });
        if v.is_v5() {
            c.properties.session_expiry_interval = sei;
            c.properties.user_properties = up;
        }
        roundtrip(&Packet::Connect(Box::new(c)), v);
    }

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to a packet
    /// that decodes to the same value.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), v in prop::option::of(version())) {
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        while let Ok(Some(packet)) = decode(&mut buf, v, u32::MAX) {
            let version = match (&packet, v) { (Packet::Connect(c), _) => c.protocol, (_, Some(v)) => v, (_, None) => unreachable!() };
            roundtrip(&packet, version);
            if v.is_none() { break; }
        }
    }
}
