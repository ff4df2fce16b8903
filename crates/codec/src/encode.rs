//! The encoder. Each packet body is written by one function generic over a [`Sink`]: a
//! [`Counter`] pass computes the remaining length (and catches over-long fields), then a
//! [`Writer`] pass writes into the output buffer, which is reserved once.

use bytes::{BufMut, BytesMut};

use crate::{
    Ack, AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    EncodeError, Packet, ProtocolVersion, PublishProperties, QoS, SubscribeProperties,
    UnsubscribeProperties, UserProperties, WillProperties, decode::MAX_REMAINING_LENGTH,
};

/// Appends `packet` encoded for `version` to `out`. A CONNECT is always encoded in its own
/// [`crate::Connect::protocol`].
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let version = effective_version(packet, version);
    let len = remaining_length(packet, version)?;
    out.reserve(1 + varint_len(len as u32) + len);
    out.put_u8(first_byte(packet));
    put_varint(out, len as u32);
    body(packet, version, &mut Writer(out));
    Ok(())
}

/// The number of bytes [`encode`] would append (fixed header included), e.g. to compare with
/// the peer's maximum packet size before sending.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let version = effective_version(packet, version);
    let len = remaining_length(packet, version)?;
    Ok(1 + varint_len(len as u32) + len)
}

fn effective_version(packet: &Packet, version: ProtocolVersion) -> ProtocolVersion {
    match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    }
}

fn remaining_length(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    validate(packet, version)?;
    let mut counter = Counter::default();
    body(packet, version, &mut counter);
    if let Some(len) = counter.too_long {
        return Err(EncodeError::FieldTooLong { len });
    }
    if counter.len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { len: counter.len });
    }
    Ok(counter.len)
}

fn invalid(packet: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::Invalid { packet, reason }
}

fn validate(packet: &Packet, version: ProtocolVersion) -> Result<(), EncodeError> {
    match packet {
        Packet::Publish(p) => match (p.qos, p.packet_id) {
            (QoS::AtMostOnce, None) if !p.dup => Ok(()),
            (QoS::AtMostOnce, None) => Err(invalid("PUBLISH", "DUP set on a QoS 0 message")),
            (QoS::AtMostOnce, Some(_)) => Err(invalid("PUBLISH", "QoS 0 with a packet id")),
            (_, None | Some(0)) => Err(invalid("PUBLISH", "QoS 1/2 needs a non-zero packet id")),
            _ => Ok(()),
        },
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)
            if a.packet_id == 0 =>
        {
            Err(invalid(packet.name(), "packet id 0"))
        }
        Packet::Subscribe(s) if s.packet_id == 0 => Err(invalid("SUBSCRIBE", "packet id 0")),
        Packet::Subscribe(s) if s.subscriptions.is_empty() => {
            Err(invalid("SUBSCRIBE", "no subscriptions"))
        }
        Packet::SubAck(s) if s.packet_id == 0 => Err(invalid("SUBACK", "packet id 0")),
        Packet::SubAck(s) if s.reason_codes.is_empty() => Err(invalid("SUBACK", "no reason codes")),
        Packet::Unsubscribe(u) if u.packet_id == 0 => Err(invalid("UNSUBSCRIBE", "packet id 0")),
        Packet::Unsubscribe(u) if u.filters.is_empty() => {
            Err(invalid("UNSUBSCRIBE", "no topic filters"))
        }
        Packet::UnsubAck(u) if u.packet_id == 0 => Err(invalid("UNSUBACK", "packet id 0")),
        Packet::UnsubAck(u) if version.is_v5() && u.reason_codes.is_empty() => {
            Err(invalid("UNSUBACK", "no reason codes"))
        }
        Packet::Auth(_) if !version.is_v5() => Err(EncodeError::NotInVersion {
            packet: "AUTH",
            version,
        }),
        _ => Ok(()),
    }
}

fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => {
            0x30 | (u8::from(p.dup) << 3) | (p.qos.as_u8() << 1) | u8::from(p.retain)
        }
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

fn body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            s.str(c.protocol.protocol_name());
            s.u8(c.protocol.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | (w.qos.as_u8() << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            s.u8(flags);
            s.u16(c.keep_alive);
            if v5 {
                put_props(s, &c.properties);
            }
            s.str(&c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    put_props(s, &w.properties);
                }
                s.str(&w.topic);
                s.bin(&w.payload);
            }
            if let Some(u) = &c.username {
                s.str(u);
            }
            if let Some(p) = &c.password {
                s.bin(p);
            }
        }
        Packet::ConnAck(c) => {
            // 3.1 has no session present flag: the byte is reserved and 0.
            s.u8(u8::from(
                c.session_present && version != ProtocolVersion::V3_1,
            ));
            if v5 {
                s.u8(c.reason_code.as_u8());
                put_props(s, &c.properties);
            } else {
                s.u8(c.reason_code.to_connect_return_code() as u8);
            }
        }
        Packet::Publish(p) => {
            s.str(&p.topic);
            if let Some(id) = p.packet_id {
                s.u16(id);
            }
            if v5 {
                put_props(s, &p.properties);
            }
            s.raw(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack(a, v5, s)
        }
        Packet::Subscribe(sub) => {
            s.u16(sub.packet_id);
            if v5 {
                put_props(s, &sub.properties);
            }
            for entry in &sub.subscriptions {
                s.str(&entry.filter);
                let o = &entry.options;
                let mut byte = o.qos.as_u8();
                if v5 {
                    byte |= (u8::from(o.no_local) << 2)
                        | (u8::from(o.retain_as_published) << 3)
                        | ((o.retain_handling as u8) << 4);
                }
                s.u8(byte);
            }
        }
        Packet::SubAck(a) => {
            s.u16(a.packet_id);
            if v5 {
                put_props(s, &a.properties);
                for code in &a.reason_codes {
                    s.u8(code.as_u8());
                }
            } else {
                for code in &a.reason_codes {
                    s.u8(code.to_v3_suback());
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.packet_id);
            if v5 {
                put_props(s, &u.properties);
            }
            for filter in &u.filters {
                s.str(filter);
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.packet_id);
            if v5 {
                put_props(s, &a.properties);
                for code in &a.reason_codes {
                    s.u8(code.as_u8());
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 && (d.reason_code.as_u8() != 0 || !d.properties.is_empty()) {
                s.u8(d.reason_code.as_u8());
                if !d.properties.is_empty() {
                    put_props(s, &d.properties);
                }
            }
        }
        Packet::Auth(a) => {
            if a.reason_code.as_u8() != 0 || !a.properties.is_empty() {
                s.u8(a.reason_code.as_u8());
                if !a.properties.is_empty() {
                    put_props(s, &a.properties);
                }
            }
        }
    }
}

/// v5 short forms: no reason code when it is Success without properties (spec 3.4.2.1).
fn ack<S: Sink>(a: &Ack, v5: bool, s: &mut S) {
    s.u16(a.packet_id);
    if v5 && (a.reason_code.as_u8() != 0 || !a.properties.is_empty()) {
        s.u8(a.reason_code.as_u8());
        if !a.properties.is_empty() {
            put_props(s, &a.properties);
        }
    }
}

/// Where encoded bytes go: counted or written.
trait Sink {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn varint(&mut self, v: u32);
    fn raw(&mut self, b: &[u8]);
    /// A two-byte length prefix and the bytes.
    fn bin(&mut self, b: &[u8]);
    fn str(&mut self, s: &str) {
        self.bin(s.as_bytes())
    }
}

#[derive(Default)]
struct Counter {
    len: usize,
    too_long: Option<usize>,
}

impl Sink for Counter {
    fn u8(&mut self, _: u8) {
        self.len += 1;
    }
    fn u16(&mut self, _: u16) {
        self.len += 2;
    }
    fn u32(&mut self, _: u32) {
        self.len += 4;
    }
    fn varint(&mut self, v: u32) {
        self.len += varint_len(v);
    }
    fn raw(&mut self, b: &[u8]) {
        self.len += b.len();
    }
    fn bin(&mut self, b: &[u8]) {
        if b.len() > usize::from(u16::MAX) {
            self.too_long = Some(b.len());
        }
        self.len += 2 + b.len();
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl Sink for Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.put_u32(v);
    }
    fn varint(&mut self, v: u32) {
        put_varint(self.0, v);
    }
    fn raw(&mut self, b: &[u8]) {
        self.0.put_slice(b);
    }
    fn bin(&mut self, b: &[u8]) {
        // The counting pass rejected fields longer than u16::MAX.
        self.0.put_u16(b.len() as u16);
        self.0.put_slice(b);
    }
}

pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: u32) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            return;
        }
    }
}

/// A v5 property list.
trait Props {
    fn write<S: Sink>(&self, s: &mut S);
}

/// The property length, then the properties.
fn put_props<S: Sink, P: Props>(s: &mut S, props: &P) {
    let mut counter = Counter::default();
    props.write(&mut counter);
    s.varint(counter.len as u32);
    props.write(s);
}

fn opt_u8<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.u8(id);
        s.u8(v);
    }
}
fn opt_bool<S: Sink>(s: &mut S, id: u8, v: Option<bool>) {
    opt_u8(s, id, v.map(u8::from));
}
fn opt_u16<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.u8(id);
        s.u16(v);
    }
}
fn opt_u32<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.u8(id);
        s.u32(v);
    }
}
fn opt_str<S: Sink>(s: &mut S, id: u8, v: &Option<String>) {
    if let Some(v) = v {
        s.u8(id);
        s.str(v);
    }
}
fn opt_bin<S: Sink>(s: &mut S, id: u8, v: &Option<bytes::Bytes>) {
    if let Some(v) = v {
        s.u8(id);
        s.bin(v);
    }
}
fn user<S: Sink>(s: &mut S, props: &UserProperties) {
    for (k, v) in props {
        s.u8(0x26);
        s.str(k);
        s.str(v);
    }
}

impl Props for ConnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_u32(s, 0x11, self.session_expiry_interval);
        opt_u16(s, 0x21, self.receive_maximum);
        opt_u32(s, 0x27, self.maximum_packet_size);
        opt_u16(s, 0x22, self.topic_alias_maximum);
        opt_bool(s, 0x19, self.request_response_information);
        opt_bool(s, 0x17, self.request_problem_information);
        user(s, &self.user_properties);
        opt_str(s, 0x15, &self.authentication_method);
        opt_bin(s, 0x16, &self.authentication_data);
    }
}

impl Props for WillProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_u32(s, 0x18, self.will_delay_interval);
        opt_bool(s, 0x01, self.payload_format_indicator);
        opt_u32(s, 0x02, self.message_expiry_interval);
        opt_str(s, 0x03, &self.content_type);
        opt_str(s, 0x08, &self.response_topic);
        opt_bin(s, 0x09, &self.correlation_data);
        user(s, &self.user_properties);
    }
}

impl Props for ConnAckProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_u32(s, 0x11, self.session_expiry_interval);
        opt_u16(s, 0x21, self.receive_maximum);
        opt_u8(s, 0x24, self.maximum_qos.map(QoS::as_u8));
        opt_bool(s, 0x25, self.retain_available);
        opt_u32(s, 0x27, self.maximum_packet_size);
        opt_str(s, 0x12, &self.assigned_client_identifier);
        opt_u16(s, 0x22, self.topic_alias_maximum);
        opt_str(s, 0x1F, &self.reason_string);
        user(s, &self.user_properties);
        opt_bool(s, 0x28, self.wildcard_subscription_available);
        opt_bool(s, 0x29, self.subscription_identifiers_available);
        opt_bool(s, 0x2A, self.shared_subscription_available);
        opt_u16(s, 0x13, self.server_keep_alive);
        opt_str(s, 0x1A, &self.response_information);
        opt_str(s, 0x1C, &self.server_reference);
        opt_str(s, 0x15, &self.authentication_method);
        opt_bin(s, 0x16, &self.authentication_data);
    }
}

impl Props for PublishProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_bool(s, 0x01, self.payload_format_indicator);
        opt_u32(s, 0x02, self.message_expiry_interval);
        opt_u16(s, 0x23, self.topic_alias);
        opt_str(s, 0x08, &self.response_topic);
        opt_bin(s, 0x09, &self.correlation_data);
        user(s, &self.user_properties);
        for id in &self.subscription_identifiers {
            s.u8(0x0B);
            s.varint(*id);
        }
        opt_str(s, 0x03, &self.content_type);
    }
}

impl Props for AckProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_str(s, 0x1F, &self.reason_string);
        user(s, &self.user_properties);
    }
}

impl Props for SubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            s.u8(0x0B);
            s.varint(id);
        }
        user(s, &self.user_properties);
    }
}

impl Props for UnsubscribeProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        user(s, &self.user_properties);
    }
}

impl Props for DisconnectProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_u32(s, 0x11, self.session_expiry_interval);
        opt_str(s, 0x1F, &self.reason_string);
        user(s, &self.user_properties);
        opt_str(s, 0x1C, &self.server_reference);
    }
}

impl Props for AuthProperties {
    fn write<S: Sink>(&self, s: &mut S) {
        opt_str(s, 0x15, &self.authentication_method);
        opt_bin(s, 0x16, &self.authentication_data);
        opt_str(s, 0x1F, &self.reason_string);
        user(s, &self.user_properties);
    }
}

impl AckProperties {
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl DisconnectProperties {
    pub fn is_empty(&self) -> bool {
        self.session_expiry_interval.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
            && self.server_reference.is_none()
    }
}

impl AuthProperties {
    pub fn is_empty(&self) -> bool {
        self.authentication_method.is_none()
            && self.authentication_data.is_none()
            && self.reason_string.is_none()
            && self.user_properties.is_empty()
    }
}
