//! The broker journal's record reader and recovery: any file content (after the header)
//! must be recovered without a panic, and the state recovered must re-encode to a journal
//! that replays cleanly.
//!
//! The first input byte chooses the shape: raw bytes after the header (torn and corrupt
//! records, resynchronisation), or a sequence of record bodies (u16 LE length + body) that
//! get valid length and checksum headers, so that the fuzzer reaches record decoding and
//! the state machine behind it instead of stopping at the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = b"DCJRNL01".to_vec();
    if mode & 1 == 0 {
        file.extend_from_slice(rest);
    } else {
        let mut rest = rest;
        while rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            let body = &rest[2..2 + len];
            file.extend_from_slice(&(body.len() as u32).to_le_bytes());
            file.extend_from_slice(&fnv1a(body).to_le_bytes());
            file.extend_from_slice(body);
            rest = &rest[2 + len..];
        }
        // Bit 1: damage one byte in the middle, to exercise resynchronisation too.
        if mode & 2 != 0 && file.len() > 9 {
            let at = 8 + usize::from(mode >> 2) % (file.len() - 8);
            file[at] ^= 0x55;
        }
    }
    let _ = broker::fuzzing::journal_replay(&file);
});
