//! MQTT 3.1 (protocol level 3, "MQIsdp"), 3.1.1 (level 4) and 5.0 (level 5) packets:
//! types, a strict decoder, an encoder, topic rules, and a `tokio_util` codec.
//!
//! Why our own codec: the existing crates are tied to another runtime (ntex-mqtt), accept
//! what the spec forbids (rumqttc's `mqttbytes` does not check reserved bits or duplicate
//! properties), or are unmaintained. A broker must reject malformed input precisely and never
//! panic on it, so decoding is strict: every check names the normative statement it enforces,
//! and every [`DecodeError`] maps to the v5 reason code to send ([`DecodeError::reason_code`]).
//!
//! Decoding is zero-copy: topics ([`ByteStr`]) and payloads ([`bytes::Bytes`]) are slices of
//! the received frame.
//!
//! What the codec leaves to the connection (it needs connection state): resolving topic
//! aliases, rejecting a second CONNECT, Subscription Identifiers in client PUBLISH packets,
//! packet identifier bookkeeping, and client identifier policy.

mod bytestr;
mod codec;
mod decode;
mod encode;
mod error;
mod frame;
mod packet;
mod reason;
pub mod topic;

pub use bytestr::ByteStr;
pub use codec::{CodecError, MqttCodec};
pub use decode::{MAX_REMAINING_LENGTH, decode};
pub use encode::{encode, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use frame::{AliasPatch, FramePatch, PublishFrame};
pub use packet::*;
pub use reason::{ConnectReturnCode, ReasonCode};
