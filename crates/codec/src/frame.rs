//! A PUBLISH encoded once and written many times: a message that fans out to many
//! subscribers differs per delivery only in DUP, RETAIN, the packet identifier and the topic
//! alias, so the broker encodes it once per (protocol family, QoS) and patches those fields in
//! while copying. Only this module knows where they sit in the bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    EncodeError, Packet, ProtocolVersion, Publish, QoS,
    decode::MAX_REMAINING_LENGTH,
    encode::{encode, put_varint, varint_len},
};

/// Property identifier of Topic Alias (spec 3.3.2.3.4).
const TOPIC_ALIAS: u8 = 0x23;

/// How a delivery uses a server-to-client topic alias (v5 only, spec 3.3.2.3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AliasPatch {
    /// Topic name only.
    #[default]
    None,
    /// Topic name and the alias: the receiver maps the alias to this topic from now on.
    Establish(u16),
    /// The alias with an empty topic name: the receiver already knows the mapping.
    Reuse(u16),
}

/// The per-delivery fields of a [`PublishFrame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FramePatch {
    pub dup: bool,
    pub retain: bool,
    /// Required for QoS 1 and 2, absent for QoS 0.
    pub packet_id: Option<u16>,
    pub alias: AliasPatch,
}

/// An encoded PUBLISH template; see the module documentation.
#[derive(Debug, Clone)]
pub struct PublishFrame {
    /// The whole packet, with packet id 1 where one goes and no topic alias.
    bytes: Bytes,
    qos: QoS,
    v5: bool,
    /// Fixed header length (type byte and remaining length).
    header_len: u8,
    /// Length of the topic name, without its two-byte prefix.
    topic_len: u16,
    /// v5: the property length and how many bytes its varint takes.
    props_len: u32,
    props_len_bytes: u8,
}

impl PublishFrame {
    /// Encodes `publish` for `version`. Its DUP, RETAIN, packet id and topic alias are
    /// ignored: they come from each [`FramePatch`].
    pub fn new(
        mut publish: Publish,
        version: ProtocolVersion,
    ) -> Result<PublishFrame, EncodeError> {
        let v5 = version.is_v5();
        publish.dup = false;
        publish.retain = false;
        publish.packet_id = (publish.qos != QoS::AtMostOnce).then_some(1);
        publish.properties.topic_alias = None;
        if !v5 {
            publish.properties = Default::default();
        }
        let qos = publish.qos;
        let topic_len =
            u16::try_from(publish.topic.len()).map_err(|_| EncodeError::FieldTooLong {
                len: publish.topic.len(),
            })?;
        let mut buf = BytesMut::new();
        encode(&Packet::Publish(publish), version, &mut buf)?;
        let header_len = 1 + buf[1..].iter().take_while(|b| **b & 0x80 != 0).count() + 1;
        let mut frame = PublishFrame {
            bytes: Bytes::new(),
            qos,
            v5,
            header_len: header_len as u8,
            topic_len,
            props_len: 0,
            props_len_bytes: 0,
        };
        if v5 {
            let at = frame.props_at();
            let (value, n) = read_varint(&buf[at..]).ok_or(EncodeError::Invalid {
                packet: "PUBLISH",
                reason: "property length missing from the encoded frame",
            })?;
            frame.props_len = value;
            frame.props_len_bytes = n as u8;
        }
        frame.bytes = buf.freeze();
        Ok(frame)
    }

    pub fn qos(&self) -> QoS {
        self.qos
    }

    /// Where the property length starts (v5) or the payload (v3).
    fn props_at(&self) -> usize {
        let pid = if self.qos == QoS::AtMostOnce { 0 } else { 2 };
        usize::from(self.header_len) + 2 + usize::from(self.topic_len) + pid
    }

    fn check(&self, patch: &FramePatch) -> Result<(), EncodeError> {
        let invalid = |reason| {
            Err(EncodeError::Invalid {
                packet: "PUBLISH",
                reason,
            })
        };
        match (self.qos, patch.packet_id) {
            (QoS::AtMostOnce, Some(_)) => return invalid("QoS 0 with a packet id"),
            (QoS::AtMostOnce, None) if patch.dup => return invalid("DUP set on a QoS 0 message"),
            (QoS::AtLeastOnce | QoS::ExactlyOnce, None | Some(0)) => {
                return invalid("QoS 1/2 needs a non-zero packet id");
            }
            _ => {}
        }
        match patch.alias {
            AliasPatch::None => Ok(()),
            _ if !self.v5 => Err(EncodeError::NotInVersion {
                packet: "topic alias",
                version: ProtocolVersion::V3_1_1,
            }),
            AliasPatch::Establish(0) | AliasPatch::Reuse(0) => invalid("topic alias 0"),
            _ => Ok(()),
        }
    }

    /// (remaining length, property length) of the patched packet.
    fn patched_lengths(&self, patch: &FramePatch) -> (usize, u32) {
        let mut remaining = self.bytes.len() - usize::from(self.header_len);
        let mut props_len = self.props_len;
        if let AliasPatch::Establish(_) | AliasPatch::Reuse(_) = patch.alias {
            props_len += 3;
            remaining = remaining - usize::from(self.props_len_bytes) + varint_len(props_len) + 3;
        }
        if let AliasPatch::Reuse(_) = patch.alias {
            remaining -= usize::from(self.topic_len);
        }
        (remaining, props_len)
    }

    /// The size of the packet [`PublishFrame::write_to`] writes for `patch`, e.g. to compare
    /// with the receiver's Maximum Packet Size.
    pub fn len(&self, patch: &FramePatch) -> usize {
        let (remaining, _) = self.patched_lengths(patch);
        1 + varint_len(remaining as u32) + remaining
    }

    /// Never true: a PUBLISH has at least a fixed header and a topic length.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the packet with `patch` applied.
    pub fn write_to(&self, out: &mut BytesMut, patch: &FramePatch) -> Result<(), EncodeError> {
        self.check(patch)?;
        let (remaining, props_len) = self.patched_lengths(patch);
        if remaining > MAX_REMAINING_LENGTH {
            return Err(EncodeError::PacketTooLarge { len: remaining });
        }
        out.reserve(1 + varint_len(remaining as u32) + remaining);
        out.put_u8(
            0x30 | (u8::from(patch.dup) << 3) | (self.qos.as_u8() << 1) | u8::from(patch.retain),
        );
        put_varint(out, remaining as u32);
        let topic_at = usize::from(self.header_len);
        let topic_end = topic_at + 2 + usize::from(self.topic_len);
        match patch.alias {
            AliasPatch::Reuse(_) => out.put_u16(0),
            _ => out.extend_from_slice(&self.bytes[topic_at..topic_end]),
        }
        if let Some(pid) = patch.packet_id {
            out.put_u16(pid);
        }
        let mut rest = self.props_at();
        if self.v5 {
            put_varint(out, props_len);
            if let AliasPatch::Establish(alias) | AliasPatch::Reuse(alias) = patch.alias {
                out.put_u8(TOPIC_ALIAS);
                out.put_u16(alias);
            }
            rest += usize::from(self.props_len_bytes);
        }
        out.extend_from_slice(&self.bytes[rest..]);
        Ok(())
    }
}

/// A variable byte integer at the start of `b`: (value, bytes used).
fn read_varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PublishProperties, decode};

    fn publish(qos: QoS, topic: &str, payload_len: usize) -> Publish {
        let mut p = Publish::new(topic, Bytes::from(vec![b'x'; payload_len]));
        p.qos = qos;
        p
    }

    fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Publish {
        let mut buf = BytesMut::from(bytes);
        match decode(&mut buf, Some(version), u32::MAX) {
            Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
            other => panic!("not one PUBLISH: {other:?}"),
        }
    }

    /// Every patch decodes to the template with exactly the patched fields changed, for
    /// every version, QoS, alias use, and sizes around the remaining-length varint steps.
    #[test]
    fn patched_frames_decode_to_the_patched_packet() {
        let props = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        for version in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                for payload_len in [0, 100, 120, 16_370, 16_400, 200_000] {
                    let mut template = publish(qos, "a/topic", payload_len);
                    if version.is_v5() {
                        template.properties = props.clone();
                    }
                    let frame = PublishFrame::new(template.clone(), version).unwrap();
                    let pid = (qos != QoS::AtMostOnce).then_some(0xBEEF);
                    let mut aliases = vec![AliasPatch::None];
                    if version.is_v5() {
                        aliases.extend([AliasPatch::Establish(7), AliasPatch::Reuse(300)]);
                    }
                    for alias in aliases {
                        for (dup, retain) in [(false, false), (true, true), (false, true)] {
                            let dup = dup && qos != QoS::AtMostOnce;
                            let patch = FramePatch {
                                dup,
                                retain,
                                packet_id: pid,
                                alias,
                            };
                            let mut out = BytesMut::from(&b"prefix"[..]);
                            frame.write_to(&mut out, &patch).unwrap();
                            assert_eq!(&out[..6], b"prefix");
                            assert_eq!(out.len() - 6, frame.len(&patch));
                            let got = decode_one(&out[6..], version);
                            let mut want = template.clone();
                            want.dup = dup;
                            want.retain = retain;
                            want.packet_id = pid;
                            match alias {
                                AliasPatch::None => {}
                                AliasPatch::Establish(a) => want.properties.topic_alias = Some(a),
                                AliasPatch::Reuse(a) => {
                                    want.properties.topic_alias = Some(a);
                                    want.topic = crate::ByteStr::new();
                                }
                            }
                            assert_eq!(got, want, "{version} {qos:?} {payload_len} {patch:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn template_fields_are_ignored_and_invalid_patches_refused() {
        let mut p = publish(QoS::AtLeastOnce, "t", 3);
        p.dup = true;
        p.retain = true;
        p.packet_id = Some(9);
        p.properties.topic_alias = Some(4);
        let frame = PublishFrame::new(p, ProtocolVersion::V5).unwrap();
        let mut out = BytesMut::new();
        let ok = FramePatch {
            packet_id: Some(2),
            ..FramePatch::default()
        };
        frame.write_to(&mut out, &ok).unwrap();
        let got = decode_one(&out, ProtocolVersion::V5);
        assert_eq!(
            (
                got.dup,
                got.retain,
                got.packet_id,
                got.properties.topic_alias
            ),
            (false, false, Some(2), None)
        );
        for bad in [
            FramePatch::default(),
            FramePatch {
                packet_id: Some(0),
                ..FramePatch::default()
            },
            FramePatch {
                packet_id: Some(1),
                alias: AliasPatch::Reuse(0),
                ..FramePatch::default()
            },
        ] {
            assert!(frame.write_to(&mut out, &bad).is_err(), "{bad:?}");
        }
        let v3 =
            PublishFrame::new(publish(QoS::AtMostOnce, "t", 1), ProtocolVersion::V3_1_1).unwrap();
        let alias = FramePatch {
            alias: AliasPatch::Establish(1),
            ..FramePatch::default()
        };
        assert!(v3.write_to(&mut out, &alias).is_err());
        let qos0_pid = FramePatch {
            packet_id: Some(1),
            ..FramePatch::default()
        };
        assert!(v3.write_to(&mut out, &qos0_pid).is_err());
    }
}
