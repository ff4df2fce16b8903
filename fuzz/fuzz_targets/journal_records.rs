//! The broker journal's record reader and recovery: any file content (after the header)
//! must be recovered without a panic, and the state recovered must re-encode to a journal
//! that replays cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = b"DCJRNL01".to_vec();
    file.extend_from_slice(data);
    let _ = broker::fuzzing::journal_replay(&file);
});
