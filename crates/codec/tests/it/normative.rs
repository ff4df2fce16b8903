//! One test per normative statement the decoder enforces, named after it (MQTT 3.1.1
//! numbering unless the name says v5).

use bytes::BytesMut;
use codec::*;

use crate::{dec, raw};

const V3: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

/// A length-prefixed string.
fn s(x: &[u8]) -> Vec<u8> {
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A v3.1.1 CONNECT with `flags` and the payload after the client id "c".
fn connect_v4(flags: u8, rest: &[u8]) -> Vec<u8> {
    raw(
        0x10,
        &cat(&[&s(b"MQTT"), &[4, flags, 0, 60], &s(b"c"), rest]),
    )
}

/// A v5 CONNECT with the given properties (without length) and no will/credentials.
fn connect_v5(props: &[u8]) -> Vec<u8> {
    raw(
        0x10,
        &cat(&[
            &s(b"MQTT"),
            &[5, 0x02, 0, 60, props.len() as u8],
            props,
            &s(b"c"),
        ]),
    )
}

fn malformed(r: Result<Packet, DecodeError>) -> DecodeError {
    let e = r.expect_err("must be rejected");
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket, "{e}");
    e
}

fn protocol_error(r: Result<Packet, DecodeError>) -> DecodeError {
    let e = r.expect_err("must be rejected");
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError, "{e}");
    e
}

#[test]
fn mqtt_2_2_2_2_reserved_header_flags_must_be_zero() {
    // v5 numbering: MQTT-2.1.3-1.
    malformed(dec(&[0xC1, 0x00], V3)); // PINGREQ
    malformed(dec(&[0xD8, 0x00], V5)); // PINGRESP
    malformed(dec(&[0x41, 0x02, 0x00, 0x01], V3)); // PUBACK
    malformed(dec(&[0xE2, 0x00], V3)); // DISCONNECT
    malformed(dec(&[0x21, 0x02, 0x00, 0x00], V3)); // CONNACK
    assert!(dec(&[0xC0, 0x00], V3).is_ok());
}

#[test]
fn mqtt_2_2_2_2_connect_header_flags_must_be_zero() {
    let mut bytes = connect_v4(0x02, &[]);
    bytes[0] = 0x11;
    malformed(dec(&bytes, None));
}

#[test]
fn mqtt_3_6_1_1_pubrel_flags_must_be_0010() {
    malformed(dec(&[0x60, 0x02, 0x00, 0x01], V3));
    assert_eq!(
        dec(&[0x62, 0x02, 0x00, 0x01], V3),
        Ok(Packet::PubRel(Ack::new(1)))
    );
}

#[test]
fn mqtt_3_8_1_1_subscribe_flags_must_be_0010() {
    let body = cat(&[&[0, 1], &s(b"a"), &[0]]);
    malformed(dec(&raw(0x80, &body), V3));
    malformed(dec(&raw(0x8A, &body), V3));
    assert!(dec(&raw(0x82, &body), V3).is_ok());
    // MQTT 3.1 clients set DUP on re-sent SUBSCRIBEs.
    assert!(dec(&raw(0x8A, &body), Some(ProtocolVersion::V3_1)).is_ok());
}

#[test]
fn mqtt_3_10_1_1_unsubscribe_flags_must_be_0010() {
    let body = cat(&[&[0, 1], &s(b"a")]);
    malformed(dec(&raw(0xA0, &body), V3));
    assert!(dec(&raw(0xA2, &body), V3).is_ok());
}

#[test]
fn remaining_length_longer_than_four_bytes_is_malformed() {
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
    let e = decode(&mut buf, V3, u32::MAX).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_1_5_5_1_variable_byte_integers_must_be_minimal() {
    // PINGREQ with remaining length 0 encoded in two bytes.
    malformed(dec(&[0xC0, 0x80, 0x00], V3));
    // Property length 0 in two bytes.
    malformed(dec(&[0x40, 0x05, 0x00, 0x01, 0x10, 0x80, 0x00], V5));
}

#[test]
fn mqtt_1_5_3_1_strings_must_be_valid_utf8() {
    // v5: MQTT-1.5.4-1. Client id with an invalid byte and with a UTF-16 surrogate.
    let bytes = raw(
        0x10,
        &cat(&[&s(b"MQTT"), &[4, 0x02, 0, 60], &s(b"\xC3\x28")]),
    );
    malformed(dec(&bytes, None));
    let bytes = raw(
        0x10,
        &cat(&[&s(b"MQTT"), &[4, 0x02, 0, 60], &s(b"\xED\xA0\x80")]),
    );
    malformed(dec(&bytes, None));
    // Topic of a PUBLISH.
    malformed(dec(&raw(0x30, &s(b"a\xFF")), V3));
}

#[test]
fn mqtt_1_5_3_2_strings_must_not_contain_null() {
    // v5: MQTT-1.5.4-2.
    let bytes = raw(0x10, &cat(&[&s(b"MQTT"), &[4, 0x02, 0, 60], &s(b"a\0b")]));
    malformed(dec(&bytes, None));
    malformed(dec(&raw(0x30, &s(b"a\0")), V3));
    // In a user property.
    let props = cat(&[&[0x26], &s(b"k\0"), &s(b"v")]);
    malformed(dec(&connect_v5(&props), None));
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let e = dec(&[0xC0, 0x00], None).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    let e = dec(&raw(0x30, &s(b"a")), None).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
}

#[test]
fn mqtt_3_1_2_1_unknown_protocol_name_is_rejected() {
    let bytes = raw(0x10, &cat(&[&s(b"HTTP"), &[4, 0x02, 0, 60], &s(b"c")]));
    let e = dec(&bytes, None).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnsupportedProtocolVersion {
            name: "HTTP".into(),
            level: 4
        }
    );
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_is_0x84() {
    let bytes = raw(0x10, &cat(&[&s(b"MQTT"), &[6, 0x02, 0, 60], &s(b"c")]));
    let e = dec(&bytes, None).unwrap_err();
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(
        e.reason_code().to_connect_return_code(),
        ConnectReturnCode::UnacceptableProtocolVersion
    );
    // MQIsdp is only level 3, MQTT only 4 and 5.
    let bytes = raw(0x10, &cat(&[&s(b"MQIsdp"), &[4, 0x02, 0, 60], &s(b"c")]));
    assert!(matches!(
        dec(&bytes, None),
        Err(DecodeError::UnsupportedProtocolVersion { .. })
    ));
    let bytes = raw(0x10, &cat(&[&s(b"MQIsdp"), &[3, 0x02, 0, 60], &s(b"c")]));
    let Ok(Packet::Connect(c)) = dec(&bytes, None) else {
        panic!("MQTT 3.1 CONNECT")
    };
    assert_eq!(c.protocol, ProtocolVersion::V3_1);
}

#[test]
fn mqtt_3_1_2_3_reserved_flag_must_be_zero() {
    malformed(dec(&connect_v4(0x03, &[]), None));
    assert!(dec(&connect_v4(0x02, &[]), None).is_ok());
}

#[test]
fn mqtt_3_1_2_9_will_flag_requires_will_topic_and_message() {
    // Will flag set, but the packet ends after the client id.
    malformed(dec(&connect_v4(0x06, &[]), None));
}

#[test]
fn mqtt_3_1_2_13_will_qos_must_be_zero_without_will_flag() {
    malformed(dec(&connect_v4(0x02 | 0x08, &[]), None));
}

#[test]
fn mqtt_3_1_2_14_will_qos_must_not_be_3() {
    let will = cat(&[&s(b"w"), &s(b"bye")]);
    malformed(dec(&connect_v4(0x02 | 0x04 | 0x18, &will), None));
    let Ok(Packet::Connect(c)) = dec(&connect_v4(0x02 | 0x04 | 0x10, &will), None) else {
        panic!("will QoS 2 is fine")
    };
    assert_eq!(c.will.unwrap().qos, QoS::ExactlyOnce);
}

#[test]
fn mqtt_3_1_2_15_will_retain_must_be_zero_without_will_flag() {
    malformed(dec(&connect_v4(0x02 | 0x20, &[]), None));
}

#[test]
fn mqtt_3_1_2_22_password_requires_user_name_before_v5() {
    malformed(dec(&connect_v4(0x02 | 0x40, &s(b"pw")), None));
    // v5 allows a password without a user name (v5 spec 3.1.2.9).
    let bytes = raw(
        0x10,
        &cat(&[&s(b"MQTT"), &[5, 0x42, 0, 60, 0], &s(b"c"), &s(b"pw")]),
    );
    let Ok(Packet::Connect(c)) = dec(&bytes, None) else {
        panic!("v5 password only")
    };
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
}

#[test]
fn mqtt_3_1_3_11_will_topic_must_be_a_valid_topic_name() {
    let will = cat(&[&s(b"w/+"), &s(b"bye")]);
    let e = malformed(dec(&connect_v4(0x02 | 0x04, &will), None));
    assert_eq!(e, DecodeError::Topic(topic::TopicError::WildcardInName));
}

#[test]
fn mqtt_3_2_2_4_session_present_zero_with_refusal() {
    malformed(dec(&[0x20, 0x02, 0x01, 0x05], V3));
    malformed(dec(&[0x20, 0x03, 0x01, 0x87, 0x00], V5));
    assert!(dec(&[0x20, 0x02, 0x01, 0x00], V3).is_ok());
}

#[test]
fn connack_reserved_return_codes_are_malformed() {
    malformed(dec(&[0x20, 0x02, 0x00, 0x06], V3));
    // 0x10 exists as a reason code but not in CONNACK.
    malformed(dec(&[0x20, 0x03, 0x00, 0x10, 0x00], V5));
}

#[test]
fn mqtt_3_3_1_2_dup_must_be_zero_for_qos0() {
    malformed(dec(&raw(0x38, &s(b"a")), V3));
}

#[test]
fn mqtt_3_3_1_4_qos_3_is_malformed() {
    malformed(dec(&raw(0x36, &cat(&[&s(b"a"), &[0, 1]])), V3));
}

#[test]
fn mqtt_3_3_2_2_publish_topic_must_not_contain_wildcards() {
    let e = malformed(dec(&raw(0x30, &s(b"a/+")), V3));
    assert_eq!(e, DecodeError::Topic(topic::TopicError::WildcardInName));
    malformed(dec(&raw(0x30, &s(b"#")), V3));
}

#[test]
fn mqtt_4_7_3_1_publish_topic_must_not_be_empty_without_alias() {
    protocol_error(dec(&raw(0x30, &s(b"")), V3));
    protocol_error(dec(&raw(0x30, &cat(&[&s(b""), &[0]])), V5));
}

#[test]
fn mqtt_2_3_1_1_packet_identifier_must_be_non_zero() {
    // v5: MQTT-2.2.1-3.
    malformed(dec(&raw(0x32, &cat(&[&s(b"a"), &[0, 0]])), V3));
    malformed(dec(&raw(0x82, &cat(&[&[0, 0], &s(b"a"), &[0]])), V3));
    malformed(dec(&raw(0xA2, &cat(&[&[0, 0], &s(b"a")])), V3));
    malformed(dec(&[0x40, 0x02, 0x00, 0x00], V3));
}

#[test]
fn mqtt_3_8_3_3_subscribe_must_have_a_topic_filter() {
    // v5: MQTT-3.8.3-2.
    protocol_error(dec(&raw(0x82, &[0, 1]), V3));
    protocol_error(dec(&raw(0x82, &[0, 1, 0]), V5));
}

#[test]
fn mqtt_3_8_3_4_subscribe_reserved_bits_must_be_zero() {
    malformed(dec(&raw(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x04]])), V3));
    malformed(dec(&raw(0x82, &cat(&[&[0, 1], &s(b"a"), &[0x03]])), V3));
}

#[test]
fn mqtt_3_8_3_5_v5_subscription_options_reserved_bits_must_be_zero() {
    malformed(dec(&raw(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x40]])), V5));
    malformed(dec(&raw(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x03]])), V5));
    // Retain handling 3.
    protocol_error(dec(&raw(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x30]])), V5));
    let Ok(Packet::Subscribe(sub)) = dec(&raw(0x82, &cat(&[&[0, 1, 0], &s(b"a"), &[0x2D]])), V5)
    else {
        panic!("all options set")
    };
    assert_eq!(
        sub.subscriptions[0].options,
        SubscribeOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend
        }
    );
}

#[test]
fn v5_mqtt_3_8_3_4_no_local_on_shared_subscription_is_protocol_error() {
    protocol_error(dec(
        &raw(0x82, &cat(&[&[0, 1, 0], &s(b"$share/g/a"), &[0x04]])),
        V5,
    ));
}

#[test]
fn subscribe_filters_are_validated() {
    let e = malformed(dec(&raw(0x82, &cat(&[&[0, 1], &s(b"a/#/b"), &[0]])), V3));
    assert_eq!(e, DecodeError::Topic(topic::TopicError::MultiLevelWildcard));
    malformed(dec(&raw(0xA2, &cat(&[&[0, 1], &s(b"a+")])), V3));
    malformed(dec(
        &raw(0x82, &cat(&[&[0, 1], &s(b"$share//a"), &[0]])),
        V3,
    ));
}

#[test]
fn mqtt_3_9_3_2_suback_reserved_return_codes() {
    malformed(dec(&[0x90, 0x03, 0x00, 0x01, 0x03], V3));
    assert!(dec(&[0x90, 0x03, 0x00, 0x01, 0x80], V3).is_ok());
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_must_have_a_topic_filter() {
    protocol_error(dec(&raw(0xA2, &[0, 1]), V3));
}

#[test]
fn v5_duplicate_property_is_protocol_error() {
    let props = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    let e = protocol_error(dec(&connect_v5(&props), None));
    assert_eq!(
        e,
        DecodeError::DuplicateProperty {
            id: 0x11,
            packet: "CONNECT"
        }
    );
    // User properties may repeat.
    let pair = cat(&[&[0x26], &s(b"k"), &s(b"v")]);
    assert!(dec(&connect_v5(&cat(&[&pair, &pair])), None).is_ok());
}

#[test]
fn v5_unknown_or_misplaced_property_is_malformed() {
    let e = malformed(dec(&connect_v5(&[0x7F, 0]), None));
    assert_eq!(
        e,
        DecodeError::InvalidProperty {
            id: 0x7F,
            packet: "CONNECT"
        }
    );
    // Topic Alias (0x23) belongs to PUBLISH, not CONNECT.
    let e = malformed(dec(&connect_v5(&[0x23, 0, 1]), None));
    assert_eq!(
        e,
        DecodeError::InvalidProperty {
            id: 0x23,
            packet: "CONNECT"
        }
    );
}

#[test]
fn v5_property_length_beyond_packet_is_malformed() {
    malformed(dec(&raw(0x30, &cat(&[&s(b"a"), &[5, 0x01]])), V5));
}

#[test]
fn v5_zero_receive_maximum_and_packet_size_are_protocol_errors() {
    protocol_error(dec(&connect_v5(&[0x21, 0, 0]), None));
    protocol_error(dec(&connect_v5(&[0x27, 0, 0, 0, 0]), None));
}

#[test]
fn v5_authentication_data_requires_method() {
    protocol_error(dec(&connect_v5(&cat(&[&[0x16], &s(b"d")])), None));
}

#[test]
fn v5_boolean_property_must_be_0_or_1() {
    protocol_error(dec(&connect_v5(&[0x17, 2]), None));
}

#[test]
fn v5_mqtt_3_3_2_8_topic_alias_zero_is_protocol_error() {
    protocol_error(dec(&raw(0x30, &cat(&[&s(b"a"), &[3, 0x23, 0, 0]])), V5));
}

#[test]
fn v5_mqtt_3_3_2_14_response_topic_must_not_have_wildcards() {
    malformed(dec(
        &raw(0x30, &cat(&[&s(b"a"), &[4, 0x08], &s(b"r#")])),
        V5,
    ));
}

#[test]
fn v5_subscription_identifier_zero_is_protocol_error() {
    protocol_error(dec(
        &raw(0x82, &cat(&[&[0, 1, 2, 0x0B, 0], &s(b"a"), &[0]])),
        V5,
    ));
}

#[test]
fn v5_reason_codes_must_be_valid_for_the_packet() {
    malformed(dec(&[0x40, 0x03, 0x00, 0x01, 0x92], V5)); // PUBACK with PUBREL's code
    malformed(dec(&[0x62, 0x03, 0x00, 0x01, 0x10], V5));
    malformed(dec(&[0xE0, 0x01, 0x05], V5));
    malformed(dec(&[0xF0, 0x01, 0x80], V5));
}

#[test]
fn auth_does_not_exist_before_v5() {
    malformed(dec(&[0xF0, 0x00], V3));
    assert!(dec(&[0xF0, 0x00], V5).is_ok());
}

#[test]
fn packet_type_zero_is_reserved() {
    malformed(dec(&[0x00, 0x00], V3));
}

#[test]
fn trailing_bytes_are_malformed() {
    malformed(dec(&[0xC0, 0x01, 0x00], V3));
    malformed(dec(&[0x40, 0x03, 0x00, 0x01, 0x00], V3));
    malformed(dec(&[0xE0, 0x01, 0x00], V3));
}

#[test]
fn truncated_fields_are_malformed() {
    // SUBSCRIBE whose filter length claims more bytes than the packet has.
    malformed(dec(&raw(0x82, &[0, 1, 0, 9, b'a']), V3));
    malformed(dec(&[0x40, 0x01, 0x00], V3));
}

#[test]
fn packet_too_large_is_0x95_and_detected_from_the_header() {
    // Only the fixed header of a 1000-byte PUBLISH has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
    let e = decode(&mut buf, V3, 512).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 1003,
            max: 512
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    // Exactly at the limit is fine.
    let bytes = raw(0x30, &s(b"abc"));
    let mut buf = BytesMut::from(&bytes[..]);
    assert!(decode(&mut buf, V3, bytes.len() as u32).unwrap().is_some());
}

#[test]
fn several_packets_in_one_buffer_decode_in_order() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xE0][..]);
    assert_eq!(decode(&mut buf, V3, 100), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, V3, 100), Ok(Some(Packet::PingResp)));
    assert_eq!(decode(&mut buf, V3, 100), Ok(None));
    assert_eq!(&buf[..], &[0xE0]);
}

/// A 3.1 CONNECT (client id "c") with `flags` and `tail` after the client id.
fn connect_v3(flags: u8, tail: &[u8]) -> Vec<u8> {
    raw(
        0x10,
        &cat(&[&s(b"MQIsdp"), &[3, flags, 0, 60], &s(b"c"), tail]),
    )
}

#[test]
fn mqtt_3_1_connect_is_read_as_leniently_as_3_1_allows() {
    let ok = |flags: u8, tail: &[u8]| match dec(&connect_v3(flags, tail), None) {
        Ok(Packet::Connect(c)) => *c,
        other => panic!("flags {flags:#04x}: {other:?}"),
    };
    // Reserved bit and will QoS/retain without a will: ignored.
    assert!(ok(0x03, &[]).clean_start);
    assert!(ok(0x02 | 0x08 | 0x20, &[]).will.is_none());
    // A password without a user name.
    let c = ok(0x42, &s(b"pw"));
    assert_eq!(
        (c.username, c.password.as_deref()),
        (None, Some(&b"pw"[..]))
    );
    // Flags set, fields omitted.
    let c = ok(0xC2, &[]);
    assert_eq!((c.username, c.password), (None, None));
    let c = ok(0xC2, &s(b"u"));
    assert_eq!((c.username.as_deref(), c.password), (Some("u"), None));
    // Will QoS 3 stays malformed in every version.
    malformed(dec(&connect_v3(0x02 | 0x04 | 0x18, &[]), None));
}

#[test]
fn mqtt_3_1_connack_byte_1_is_zero_even_for_a_resumed_session() {
    let mut out = BytesMut::new();
    let ack = Packet::ConnAck(ConnAck::new(ReasonCode::Success, true));
    encode(&ack, ProtocolVersion::V3_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x00]);
    out.clear();
    encode(&ack, ProtocolVersion::V3_1_1, &mut out).unwrap();
    assert_eq!(&out[..], &[0x20, 0x02, 0x01, 0x00]);
}
