//! A `tokio_util::codec` Decoder/Encoder for use with `Framed`.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{DecodeError, EncodeError, Packet, ProtocolVersion, decode, encode};

/// Errors of [`MqttCodec`]: the transport failed, or a packet could not be decoded/encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Frames MQTT packets. A server-side codec starts without a version, accepts only CONNECT,
/// and adopts the version that CONNECT asks for; a client-side codec is created with the
/// version it will speak.
#[derive(Debug, Clone)]
pub struct MqttCodec {
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
}

impl MqttCodec {
    /// Server side: expects CONNECT first. `max_packet_size` limits received packets
    /// (`u32::MAX` for none).
    pub fn server(max_packet_size: u32) -> MqttCodec {
        MqttCodec {
            version: None,
            max_packet_size,
        }
    }

    /// Client side (or a server after CONNECT): speaks `version`.
    pub fn new(version: ProtocolVersion, max_packet_size: u32) -> MqttCodec {
        MqttCodec {
            version: Some(version),
            max_packet_size,
        }
    }

    /// The negotiated version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    pub fn set_max_packet_size(&mut self, max_packet_size: u32) {
        self.max_packet_size = max_packet_size;
    }
}

impl Decoder for MqttCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        let packet = decode(src, self.version, self.max_packet_size)?;
        if let (None, Some(Packet::Connect(c))) = (self.version, &packet) {
            self.version = Some(c.protocol);
        }
        Ok(packet)
    }
}

/// Only `Encoder<Packet>` is implemented: a second impl (for `&Packet`) would make
/// `SinkExt::flush` on a `Framed` ambiguous for every user.
impl Encoder<Packet> for MqttCodec {
    type Error = CodecError;

    /// Before a version is known (answering an unsupported CONNECT), packets are encoded as
    /// MQTT 3.1.1, as MQTT-3.1.2-2 prescribes for the CONNACK.
    fn encode(&mut self, packet: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let version = match (self.version, &packet) {
            (_, Packet::Connect(c)) => c.protocol,
            (Some(v), _) => v,
            (None, _) => ProtocolVersion::V3_1_1,
        };
        encode(&packet, version, dst)?;
        Ok(())
    }
}
