//! Decode and encode errors. Every decode error names the rule that was broken and maps to
//! the v5 reason code a server sends in its DISCONNECT (or CONNACK) before closing.

use crate::{ReasonCode, topic::TopicError};

/// Why bytes received could not be decoded. The connection must be closed after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not form a packet as the spec defines it (v5 0x81).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// A property identifier that does not exist or is not allowed in this packet (v5 0x81).
    #[error("malformed packet: property 0x{id:02X} is not valid in {packet}")]
    InvalidProperty { id: u32, packet: &'static str },
    /// A topic name or filter broke a rule of spec 4.7 (v5 0x81).
    #[error("malformed packet: {0}")]
    Topic(#[from] TopicError),
    /// Well-formed bytes that break a protocol rule (v5 0x82).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A property that may appear once appeared twice (v5 0x82).
    #[error("protocol error: property 0x{id:02X} appears more than once in {packet}")]
    DuplicateProperty { id: u32, packet: &'static str },
    /// The packet is larger than the receiver accepts (v5 0x95). Detected from the fixed
    /// header, before the rest arrives.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: u64, max: u32 },
    /// CONNECT asked for a protocol this codec does not speak (v5 0x84, v3 return code 1).
    /// Answer with a v3.1.1 CONNACK (the client's version is unknown) and close.
    #[error(
        "unsupported protocol: name {name:?} level {level} (supported: MQIsdp 3, MQTT 4, MQTT 5)"
    )]
    UnsupportedProtocolVersion { name: String, level: u8 },
}

impl DecodeError {
    /// The v5 reason code that reports this error to the peer.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_)
            | DecodeError::InvalidProperty { .. }
            | DecodeError::Topic(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) | DecodeError::DuplicateProperty { .. } => {
                ReasonCode::ProtocolError
            }
            DecodeError::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocolVersion { .. } => {
                ReasonCode::UnsupportedProtocolVersion
            }
        }
    }
}

/// Why a packet could not be encoded: it violates an invariant of the packet types, or it
/// does not exist in the chosen protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode {packet}: {reason}")]
    Invalid {
        packet: &'static str,
        reason: &'static str,
    },
    #[error("{packet} does not exist in {version}")]
    NotInVersion {
        packet: &'static str,
        version: crate::ProtocolVersion,
    },
    #[error("a string or binary field of {len} bytes exceeds the 65535-byte limit")]
    FieldTooLong { len: usize },
    #[error("packet body of {len} bytes exceeds the MQTT limit of 268435455 bytes")]
    PacketTooLarge { len: usize },
}
