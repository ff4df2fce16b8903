//! Integration tests of the codec: round trips, one test per enforced normative statement,
//! framing through `tokio_util`, and property-based round trips.

mod framing;
mod normative;
mod proptests;
mod roundtrip;

use bytes::BytesMut;
use codec::{DecodeError, Packet, ProtocolVersion, decode, encode};

/// Encodes `packet` for `version`.
pub fn enc(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).expect("encode");
    out
}

/// Decodes one packet from exactly `bytes` (asserting nothing is left over).
pub fn dec(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, u32::MAX)?.expect("a complete packet");
    assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(packet)
}

/// A raw packet: first byte, minimal remaining length, body.
pub fn raw(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Encodes, checks every strict prefix is "incomplete", decodes, compares.
pub fn roundtrip(packet: &Packet, version: ProtocolVersion) {
    let bytes = enc(packet, version);
    assert_eq!(codec::encoded_len(packet, version).unwrap(), bytes.len());
    let decode_version = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    for cut in 0..bytes.len() {
        let mut partial = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut partial, decode_version, u32::MAX),
            Ok(None),
            "prefix of {cut} bytes of {packet:?}"
        );
        assert_eq!(partial.len(), cut, "an incomplete decode must not consume");
    }
    let decoded = dec(&bytes, decode_version).unwrap_or_else(|e| panic!("{e}: {packet:?}"));
    assert_eq!(&decoded, packet, "{version}");
}
