//! Arbitrary bytes -> decode loop for every starting version. The decoder must never panic,
//! and every packet it accepts must survive encode -> decode unchanged.
#![no_main]

use bytes::BytesMut;
use codec::{Packet, ProtocolVersion, decode, encode, encoded_len};
use libfuzzer_sys::fuzz_target;

const MODES: [Option<ProtocolVersion>; 4] = [
    None,
    Some(ProtocolVersion::V3_1),
    Some(ProtocolVersion::V3_1_1),
    Some(ProtocolVersion::V5),
];

fuzz_target!(|data: &[u8]| {
    for mode in MODES {
        for max_packet_size in [u32::MAX, 64] {
            let mut version = mode;
            let mut buf = BytesMut::from(data);
            while let Ok(Some(packet)) = decode(&mut buf, version, max_packet_size) {
                let v = match (&packet, version) {
                    (Packet::Connect(c), _) => c.protocol,
                    (_, Some(v)) => v,
                    (_, None) => panic!("decoded {} before CONNECT", packet.name()),
                };
                roundtrip(&packet, v, version);
                version = Some(v);
            }
        }
    }
});

fn roundtrip(packet: &Packet, v: ProtocolVersion, decode_version: Option<ProtocolVersion>) {
    let mut out = BytesMut::new();
    encode(packet, v, &mut out).unwrap_or_else(|e| panic!("decoded {packet:?} but cannot encode: {e}"));
    assert_eq!(encoded_len(packet, v).ok(), Some(out.len()));
    let decode_version = if matches!(packet, Packet::Connect(_)) { None } else { decode_version.or(Some(v)) };
    let again = decode(&mut out, decode_version, u32::MAX)
        .unwrap_or_else(|e| panic!("re-encoded {packet:?} does not decode: {e}"))
        .expect("re-encoded packet is complete");
    assert!(out.is_empty(), "re-encoded {packet:?} has trailing bytes");
    assert_eq!(&again, packet);
}
