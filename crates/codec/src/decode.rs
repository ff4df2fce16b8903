//! The strict decoder. Each check cites the normative statement it enforces (3.1.1 numbering,
//! with the v5 number where it differs).

use bytes::{Buf, Bytes, BytesMut};

use crate::{
    Ack, AckProperties, Auth, AuthProperties, ByteStr, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, ConnectReturnCode, DecodeError, Disconnect, LastWill, Packet,
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscribeOptions, SubscribeProperties, Subscription, UnsubAck, Unsubscribe,
    UnsubscribeProperties, WillProperties, topic,
};

type Result<T> = std::result::Result<T, DecodeError>;

/// The largest remaining length a 4-byte variable byte integer can carry.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Bytes reserved ahead for an incomplete packet; larger packets grow the buffer as they
/// arrive, so a forged length cannot make us allocate its full size up front.
const MAX_RESERVE: usize = 64 * 1024;

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole packet (nothing is consumed). With
/// `version == None` the only acceptable packet is CONNECT, whose protocol level decides the
/// version ([`Connect::protocol`]). Packets whose total size exceeds `max_packet_size` are
/// rejected as soon as their fixed header is complete (pass `u32::MAX` for no limit).
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
) -> Result<Option<Packet>> {
    let Some((first, remaining, header_len)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_type_and_flags(packet_type, flags, version)?;

    let total = header_len + remaining;
    if total as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::PacketTooLarge {
            size: total as u64,
            max: max_packet_size,
        });
    }
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header_len);
    let mut r = Reader(frame);
    let packet = match version {
        None => Packet::Connect(Box::new(connect(&mut r)?)),
        Some(v) => body(packet_type, flags, v, &mut r)?,
    };
    r.finish()?;
    Ok(Some(packet))
}

/// Parses the fixed header: (first byte, remaining length, header length).
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(DecodeError::Malformed(
                    "remaining length is not minimally encoded (MQTT-1.5.5-1)",
                ));
            }
            return Ok(Some((first, value, 2 + i)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length is longer than 4 bytes (spec 2.1.4)",
    ))
}

fn check_type_and_flags(
    packet_type: u8,
    flags: u8,
    version: Option<ProtocolVersion>,
) -> Result<()> {
    let Some(version) = version else {
        if packet_type != 1 {
            return Err(DecodeError::Protocol(
                "the first packet from a client must be CONNECT (MQTT-3.1.0-1)",
            ));
        }
        if flags != 0 {
            return Err(DecodeError::Malformed(
                "reserved CONNECT header flags set (MQTT-2.2.2-2)",
            ));
        }
        return Ok(());
    };
    match packet_type {
        0 => Err(DecodeError::Malformed(
            "packet type 0 is reserved (spec 2.1.2)",
        )),
        15 if version != ProtocolVersion::V5 => Err(DecodeError::Malformed(
            "packet type 15 is reserved before MQTT 5 (spec 2.2.1)",
        )),
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3 (MQTT-3.3.1-4)"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(DecodeError::Malformed(
                    "PUBLISH with QoS 0 and DUP set (MQTT-3.3.1-2)",
                ));
            }
            Ok(())
        }
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE: MQTT 3.1 sent these at QoS 1 and could set DUP.
        6 | 8 | 10 if flags == 0x02 || (version == ProtocolVersion::V3_1 && flags == 0x0A) => {
            Ok(())
        }
        6 | 8 | 10 => Err(DecodeError::Malformed(
            "PUBREL, SUBSCRIBE and UNSUBSCRIBE header flags must be 0010 (MQTT-3.6.1-1, \
             MQTT-3.8.1-1, MQTT-3.10.1-1)",
        )),
        _ if flags != 0 => Err(DecodeError::Malformed(
            "reserved header flags must be zero (MQTT-2.2.2-2; v5 MQTT-2.1.3-1)",
        )),
        _ => Ok(()),
    }
}

fn body(packet_type: u8, flags: u8, v: ProtocolVersion, r: &mut Reader) -> Result<Packet> {
    Ok(match packet_type {
        1 => Packet::Connect(Box::new(connect(r)?)),
        2 => Packet::ConnAck(connack(r, v)?),
        3 => Packet::Publish(publish(flags, r, v)?),
        4 => Packet::PubAck(ack(r, v, "PUBACK", PUBACK_CODES)?),
        5 => Packet::PubRec(ack(r, v, "PUBREC", PUBACK_CODES)?),
        6 => Packet::PubRel(ack(r, v, "PUBREL", PUBREL_CODES)?),
        7 => Packet::PubComp(ack(r, v, "PUBCOMP", PUBREL_CODES)?),
        8 => Packet::Subscribe(subscribe(r, v)?),
        9 => Packet::SubAck(suback(r, v)?),
        10 => Packet::Unsubscribe(unsubscribe(r, v)?),
        11 => Packet::UnsubAck(unsuback(r, v)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(disconnect(r, v)?),
        _ => Packet::Auth(auth(r)?),
    })
}

const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn reason_code(r: &mut Reader, allowed: &[u8], packet: &'static str) -> Result<ReasonCode> {
    let value = r.u8()?;
    match ReasonCode::from_u8(value) {
        Some(code) if allowed.contains(&value) => Ok(code),
        _ => Err(DecodeError::Malformed(match packet {
            "CONNACK" => "reason code not valid in CONNACK (spec 3.2.2.2)",
            "PUBACK" | "PUBREC" => "reason code not valid in PUBACK/PUBREC (spec 3.4.2.1)",
            "PUBREL" | "PUBCOMP" => "reason code not valid in PUBREL/PUBCOMP (spec 3.6.2.1)",
            "SUBACK" => "reason code not valid in SUBACK (spec 3.9.3)",
            "UNSUBACK" => "reason code not valid in UNSUBACK (spec 3.11.3)",
            "DISCONNECT" => "reason code not valid in DISCONNECT (spec 3.14.2.1)",
            _ => "reason code not valid in AUTH (spec 3.15.2.1)",
        })),
    }
}

fn packet_id(r: &mut Reader) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Malformed(
            "packet identifier must be non-zero (MQTT-2.3.1-1; v5 MQTT-2.2.1-3)",
        )),
        id => Ok(id),
    }
}

fn connect(r: &mut Reader) -> Result<Connect> {
    let name = r.raw_string()?;
    let level = r.u8()?;
    let protocol = match (name.as_ref(), level) {
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        _ => {
            return Err(DecodeError::UnsupportedProtocolVersion {
                name: String::from_utf8_lossy(&name).into_owned(),
                level,
            });
        }
    };
    let v5 = protocol.is_v5();
    // MQTT 3.1 predates most flag rules; its brokers (mosquitto included) accept what 3.1.1
    // made malformed, so 3.1 CONNECTs are read leniently where 3.1 itself says nothing.
    let v31 = protocol == ProtocolVersion::V3_1;
    let flags = r.u8()?;
    if flags & 0x01 != 0 && !v31 {
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag must be zero (MQTT-3.1.2-3)",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let mut will_qos = (flags >> 3) & 0x03;
    let mut will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if will_qos == 3 {
        return Err(DecodeError::Malformed(
            "will QoS must not be 3 (MQTT-3.1.2-14; v5 -12)",
        ));
    }
    if !will_flag && v31 {
        // Meaningless without a will in 3.1.
        will_qos = 0;
        will_retain = false;
    }
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::Malformed(
            "will QoS must be 0 when the will flag is 0 (MQTT-3.1.2-13; v5 -11)",
        ));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::Malformed(
            "will retain must be 0 when the will flag is 0 (MQTT-3.1.2-15; v5 -13)",
        ));
    }
    if !v5 && !v31 && password_flag && !username_flag {
        return Err(DecodeError::Malformed(
            "password flag must be 0 when the user name flag is 0 (MQTT-3.1.2-22)",
        ));
    }
    let keep_alive = r.u16()?;
    let mut properties = ConnectProperties::default();
    if v5 {
        connect_properties(r, &mut properties)?;
    }
    let client_id = r.string()?;
    let will = if will_flag {
        let mut will_properties = WillProperties::default();
        if v5 {
            will_props(r, &mut will_properties)?;
        }
        let topic = r.bytestr()?;
        topic::validate_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: QoS::from_u8(will_qos).unwrap_or_default(),
            retain: will_retain,
            properties: will_properties,
        })
    } else {
        None
    };
    // 3.1 clients may set the user name and password flags and omit the fields; the
    // packet then simply ends there.
    let username = if username_flag && !(v31 && r.remaining() == 0) {
        Some(r.string()?)
    } else {
        None
    };
    let password = if password_flag && !(v31 && r.remaining() == 0) {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        client_id,
        keep_alive,
        clean_start,
        username,
        password,
        will,
        properties,
    })
}

fn connack(r: &mut Reader, v: ProtocolVersion) -> Result<ConnAck> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::Malformed(
            "CONNACK acknowledge flags bits 7-1 are reserved (spec 3.2.2.1)",
        ));
    }
    let session_present = flags & 0x01 != 0;
    if !v.is_v5() {
        let code = ConnectReturnCode::from_u8(r.u8()?).ok_or(DecodeError::Malformed(
            "CONNACK return code 6-255 is reserved (spec 3.2.2.3)",
        ))?;
        if code != ConnectReturnCode::Accepted && session_present {
            return Err(DecodeError::Malformed(
                "session present must be 0 with a non-zero return code (MQTT-3.2.2-4)",
            ));
        }
        return Ok(ConnAck::new(
            ReasonCode::from_connect_return_code(code),
            session_present,
        ));
    }
    let reason_code = reason_code(r, CONNACK_CODES, "CONNACK")?;
    if reason_code.is_error() && session_present {
        return Err(DecodeError::Malformed(
            "session present must be 0 with an error reason code (MQTT-3.2.2-6)",
        ));
    }
    let mut properties = ConnAckProperties::default();
    connack_properties(r, &mut properties)?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn publish(flags: u8, r: &mut Reader, v: ProtocolVersion) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).unwrap_or_default();
    let topic = r.bytestr()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let mut properties = PublishProperties::default();
    if v.is_v5() {
        publish_properties(r, &mut properties)?;
    }
    if topic.is_empty() {
        if properties.topic_alias.is_none() {
            return Err(DecodeError::Protocol(
                "PUBLISH topic is empty and has no topic alias (MQTT-4.7.3-1, spec 3.3.2.1)",
            ));
        }
    } else {
        topic::validate_topic_name(&topic)?;
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

fn ack(r: &mut Reader, v: ProtocolVersion, packet: &'static str, codes: &[u8]) -> Result<Ack> {
    let packet_id = packet_id(r)?;
    let mut ack = Ack::new(packet_id);
    if v.is_v5() && r.remaining() > 0 {
        ack.reason_code = reason_code(r, codes, packet)?;
        if r.remaining() > 0 {
            ack_properties(r, &mut ack.properties, packet)?;
        }
    }
    Ok(ack)
}

fn subscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Subscribe> {
    let packet_id = packet_id(r)?;
    let mut properties = SubscribeProperties::default();
    if v.is_v5() {
        subscribe_properties(r, &mut properties)?;
    }
    let mut subscriptions = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        topic::validate_topic_filter(&filter)?;
        let byte = r.u8()?;
        let qos = QoS::from_u8(byte & 0x03).ok_or(DecodeError::Malformed(
            "subscription QoS must be 0, 1 or 2 (MQTT-3.8.3-4; v5 spec 3.8.3.1)",
        ))?;
        let options = if v.is_v5() {
            if byte & 0xC0 != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options bits 7-6 are reserved (MQTT-3.8.3-5)",
                ));
            }
            let retain_handling = match (byte >> 4) & 0x03 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                2 => RetainHandling::DoNotSend,
                _ => {
                    return Err(DecodeError::Protocol("retain handling 3 (spec 3.8.3.1)"));
                }
            };
            let no_local = byte & 0x04 != 0;
            if no_local && topic::parse_shared(&filter).is_some() {
                return Err(DecodeError::Protocol(
                    "no local on a shared subscription (MQTT-3.8.3-4)",
                ));
            }
            SubscribeOptions {
                qos,
                no_local,
                retain_as_published: byte & 0x08 != 0,
                retain_handling,
            }
        } else {
            if byte & 0xFC != 0 {
                return Err(DecodeError::Malformed(
                    "SUBSCRIBE requested QoS bits 7-2 are reserved (MQTT-3-8.3-4)",
                ));
            }
            SubscribeOptions::qos(qos)
        };
        subscriptions.push(Subscription { filter, options });
    }
    if subscriptions.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE must contain at least one topic filter (MQTT-3.8.3-3; v5 -2)",
        ));
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn suback(r: &mut Reader, v: ProtocolVersion) -> Result<SubAck> {
    let packet_id = packet_id(r)?;
    let mut properties = AckProperties::default();
    if v.is_v5() {
        ack_properties(r, &mut properties, "SUBACK")?;
    }
    let mut reason_codes = Vec::with_capacity(r.remaining());
    while r.remaining() > 0 {
        if v.is_v5() {
            reason_codes.push(reason_code(r, SUBACK_CODES, "SUBACK")?);
        } else {
            reason_codes.push(match r.u8()? {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => {
                    return Err(DecodeError::Malformed(
                        "SUBACK return codes other than 0x00, 0x01, 0x02, 0x80 are reserved \
                         (MQTT-3.9.3-2)",
                    ));
                }
            });
        }
    }
    if reason_codes.is_empty() {
        return Err(DecodeError::Malformed(
            "SUBACK without return codes (spec 3.9.3)",
        ));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v: ProtocolVersion) -> Result<Unsubscribe> {
    let packet_id = packet_id(r)?;
    let mut properties = UnsubscribeProperties::default();
    if v.is_v5() {
        properties_loop(r, "UNSUBSCRIBE", false, |id, p| match id {
            0x26 => {
                properties.user_properties.push(p.pair()?);
                Ok(())
            }
            _ => Err(invalid(id, "UNSUBSCRIBE")),
        })?;
    }
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string()?;
        topic::validate_topic_filter(&filter)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE must contain at least one topic filter (MQTT-3.10.3-2)",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, v: ProtocolVersion) -> Result<UnsubAck> {
    let packet_id = packet_id(r)?;
    let mut properties = AckProperties::default();
    let mut reason_codes = Vec::new();
    if v.is_v5() {
        ack_properties(r, &mut properties, "UNSUBACK")?;
        while r.remaining() > 0 {
            reason_codes.push(reason_code(r, UNSUBACK_CODES, "UNSUBACK")?);
        }
        if reason_codes.is_empty() {
            return Err(DecodeError::Malformed(
                "UNSUBACK without reason codes (spec 3.11.3)",
            ));
        }
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn disconnect(r: &mut Reader, v: ProtocolVersion) -> Result<Disconnect> {
    let mut d = Disconnect::default();
    if v.is_v5() && r.remaining() > 0 {
        d.reason_code = reason_code(r, DISCONNECT_CODES, "DISCONNECT")?;
        if r.remaining() > 0 {
            let p = &mut d.properties;
            properties_loop(r, "DISCONNECT", false, |id, r| {
                match id {
                    0x11 => p.session_expiry_interval = Some(r.u32()?),
                    0x1F => p.reason_string = Some(r.string()?),
                    0x26 => p.user_properties.push(r.pair()?),
                    0x1C => p.server_reference = Some(r.string()?),
                    _ => return Err(invalid(id, "DISCONNECT")),
                }
                Ok(())
            })?;
        }
    }
    Ok(d)
}

fn auth(r: &mut Reader) -> Result<Auth> {
    let mut a = Auth::default();
    if r.remaining() > 0 {
        a.reason_code = reason_code(r, AUTH_CODES, "AUTH")?;
        if r.remaining() > 0 {
            let p: &mut AuthProperties = &mut a.properties;
            properties_loop(r, "AUTH", false, |id, r| {
                match id {
                    0x15 => p.authentication_method = Some(r.string()?),
                    0x16 => p.authentication_data = Some(r.binary()?),
                    0x1F => p.reason_string = Some(r.string()?),
                    0x26 => p.user_properties.push(r.pair()?),
                    _ => return Err(invalid(id, "AUTH")),
                }
                Ok(())
            })?;
        }
    }
    Ok(a)
}

fn invalid(id: u32, packet: &'static str) -> DecodeError {
    DecodeError::InvalidProperty { id, packet }
}

/// Reads a property list: its length, then (identifier, value) pairs handed to `f`.
/// Rejects properties that appear twice, except User Property and, where `multi_sub_id`
/// (PUBLISH), Subscription Identifier.
fn properties_loop(
    r: &mut Reader,
    packet: &'static str,
    multi_sub_id: bool,
    mut f: impl FnMut(u32, &mut Reader) -> Result<()>,
) -> Result<()> {
    let len = r.varint()? as usize;
    let mut p = Reader(r.take(len)?);
    let mut seen: u64 = 0;
    while p.remaining() > 0 {
        let id = p.varint()?;
        if id >= 64 {
            return Err(invalid(id, packet));
        }
        if id != 0x26 && !(multi_sub_id && id == 0x0B) {
            if seen & (1 << id) != 0 {
                return Err(DecodeError::DuplicateProperty { id, packet });
            }
            seen |= 1 << id;
        }
        f(id, &mut p)?;
    }
    Ok(())
}

fn nonzero_u16(value: u16, what: &'static str) -> Result<u16> {
    if value == 0 {
        Err(DecodeError::Protocol(what))
    } else {
        Ok(value)
    }
}

fn nonzero_u32(value: u32, what: &'static str) -> Result<u32> {
    if value == 0 {
        Err(DecodeError::Protocol(what))
    } else {
        Ok(value)
    }
}

fn connect_properties(r: &mut Reader, p: &mut ConnectProperties) -> Result<()> {
    properties_loop(r, "CONNECT", false, |id, r| {
        match id {
            0x11 => p.session_expiry_interval = Some(r.u32()?),
            0x21 => {
                p.receive_maximum = Some(nonzero_u16(
                    r.u16()?,
                    "receive maximum of 0 (spec 3.1.2.11.3)",
                )?)
            }
            0x27 => {
                p.maximum_packet_size = Some(nonzero_u32(
                    r.u32()?,
                    "maximum packet size of 0 (spec 3.1.2.11.4)",
                )?)
            }
            0x22 => p.topic_alias_maximum = Some(r.u16()?),
            0x19 => p.request_response_information = Some(r.flag()?),
            0x17 => p.request_problem_information = Some(r.flag()?),
            0x26 => p.user_properties.push(r.pair()?),
            0x15 => p.authentication_method = Some(r.string()?),
            0x16 => p.authentication_data = Some(r.binary()?),
            _ => return Err(invalid(id, "CONNECT")),
        }
        Ok(())
    })?;
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method (spec 3.1.2.11.10)",
        ));
    }
    Ok(())
}

fn will_props(r: &mut Reader, p: &mut WillProperties) -> Result<()> {
    properties_loop(r, "CONNECT will properties", false, |id, r| {
        match id {
            0x18 => p.will_delay_interval = Some(r.u32()?),
            0x01 => p.payload_format_indicator = Some(r.flag()?),
            0x02 => p.message_expiry_interval = Some(r.u32()?),
            0x03 => p.content_type = Some(r.string()?),
            0x08 => p.response_topic = Some(r.response_topic()?),
            0x09 => p.correlation_data = Some(r.binary()?),
            0x26 => p.user_properties.push(r.pair()?),
            _ => return Err(invalid(id, "CONNECT will properties")),
        }
        Ok(())
    })
}

fn connack_properties(r: &mut Reader, p: &mut ConnAckProperties) -> Result<()> {
    properties_loop(r, "CONNACK", false, |id, r| {
        match id {
            0x11 => p.session_expiry_interval = Some(r.u32()?),
            0x21 => {
                p.receive_maximum = Some(nonzero_u16(
                    r.u16()?,
                    "receive maximum of 0 (spec 3.2.2.3.3)",
                )?)
            }
            0x24 => {
                p.maximum_qos = Some(match r.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => {
                        return Err(DecodeError::Protocol(
                            "maximum QoS must be 0 or 1 (spec 3.2.2.3.4)",
                        ));
                    }
                })
            }
            0x25 => p.retain_available = Some(r.flag()?),
            0x27 => {
                p.maximum_packet_size = Some(nonzero_u32(
                    r.u32()?,
                    "maximum packet size of 0 (spec 3.2.2.3.6)",
                )?)
            }
            0x12 => p.assigned_client_identifier = Some(r.string()?),
            0x22 => p.topic_alias_maximum = Some(r.u16()?),
            0x1F => p.reason_string = Some(r.string()?),
            0x26 => p.user_properties.push(r.pair()?),
            0x28 => p.wildcard_subscription_available = Some(r.flag()?),
            0x29 => p.subscription_identifiers_available = Some(r.flag()?),
            0x2A => p.shared_subscription_available = Some(r.flag()?),
            0x13 => p.server_keep_alive = Some(r.u16()?),
            0x1A => p.response_information = Some(r.string()?),
            0x1C => p.server_reference = Some(r.string()?),
            0x15 => p.authentication_method = Some(r.string()?),
            0x16 => p.authentication_data = Some(r.binary()?),
            _ => return Err(invalid(id, "CONNACK")),
        }
        Ok(())
    })
}

fn publish_properties(r: &mut Reader, p: &mut PublishProperties) -> Result<()> {
    properties_loop(r, "PUBLISH", true, |id, r| {
        match id {
            0x01 => p.payload_format_indicator = Some(r.flag()?),
            0x02 => p.message_expiry_interval = Some(r.u32()?),
            0x23 => p.topic_alias = Some(nonzero_u16(r.u16()?, "topic alias 0 (MQTT-3.3.2-8)")?),
            0x08 => p.response_topic = Some(r.response_topic()?),
            0x09 => p.correlation_data = Some(r.binary()?),
            0x26 => p.user_properties.push(r.pair()?),
            0x0B => p
                .subscription_identifiers
                .push(r.subscription_identifier()?),
            0x03 => p.content_type = Some(r.string()?),
            _ => return Err(invalid(id, "PUBLISH")),
        }
        Ok(())
    })
}

fn subscribe_properties(r: &mut Reader, p: &mut SubscribeProperties) -> Result<()> {
    properties_loop(r, "SUBSCRIBE", false, |id, r| {
        match id {
            0x0B => p.subscription_identifier = Some(r.subscription_identifier()?),
            0x26 => p.user_properties.push(r.pair()?),
            _ => return Err(invalid(id, "SUBSCRIBE")),
        }
        Ok(())
    })
}

fn ack_properties(r: &mut Reader, p: &mut AckProperties, packet: &'static str) -> Result<()> {
    properties_loop(r, packet, false, |id, r| {
        match id {
            0x1F => p.reason_string = Some(r.string()?),
            0x26 => p.user_properties.push(r.pair()?),
            _ => return Err(invalid(id, packet)),
        }
        Ok(())
    })
}

/// A cursor over a frozen frame; every slice it hands out shares the frame's memory.
struct Reader(Bytes);

const SHORT: DecodeError =
    DecodeError::Malformed("packet ends inside a field (remaining length too small)");

impl Reader {
    fn remaining(&self) -> usize {
        self.0.len()
    }

    fn finish(&self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "bytes left over after the last field of the packet",
            ))
        }
    }

    fn take(&mut self, n: usize) -> Result<Bytes> {
        if self.0.len() < n {
            return Err(SHORT);
        }
        Ok(self.0.split_to(n))
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    fn u8(&mut self) -> Result<u8> {
        if self.0.is_empty() {
            return Err(SHORT);
        }
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16> {
        if self.0.len() < 2 {
            return Err(SHORT);
        }
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32> {
        if self.0.len() < 4 {
            return Err(SHORT);
        }
        Ok(self.0.get_u32())
    }

    fn varint(&mut self) -> Result<u32> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::Malformed(
                        "variable byte integer is not minimally encoded (MQTT-1.5.5-1)",
                    ));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes (spec 1.5.5)",
        ))
    }

    /// 0 or 1, anything else is a protocol error (spec 2.2.2.2 data types).
    fn flag(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Protocol(
                "a boolean property must be 0 or 1 (spec 3)",
            )),
        }
    }

    fn binary(&mut self) -> Result<Bytes> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// A length-prefixed string, without the UTF-8 check (the CONNECT protocol name).
    fn raw_string(&mut self) -> Result<Bytes> {
        self.binary()
    }

    fn bytestr(&mut self) -> Result<ByteStr> {
        let bytes = self.binary()?;
        if bytes.contains(&0) {
            return Err(DecodeError::Malformed(
                "UTF-8 string contains U+0000 (MQTT-1.5.3-2; v5 MQTT-1.5.4-2)",
            ));
        }
        ByteStr::from_utf8(bytes).map_err(|_| {
            DecodeError::Malformed("string is not valid UTF-8 (MQTT-1.5.3-1; v5 MQTT-1.5.4-1)")
        })
    }

    fn string(&mut self) -> Result<String> {
        Ok(self.bytestr()?.as_str().to_owned())
    }

    fn pair(&mut self) -> Result<(String, String)> {
        Ok((self.string()?, self.string()?))
    }

    fn response_topic(&mut self) -> Result<String> {
        let topic = self.string()?;
        topic::validate_topic_name(&topic)?;
        Ok(topic)
    }

    fn subscription_identifier(&mut self) -> Result<u32> {
        nonzero_u32(self.varint()?, "subscription identifier 0 (spec 3.3.2.3.8)")
    }
}
