//! Stateful fuzzing of the broker: the input is a script of packets from three clients (one
//! with a restricted ACL) against one in-process broker over in-memory streams; the driver
//! (`broker::fuzz`) checks the invariants after every step: no panic, answers within a
//! deadline, only well-formed packets sent, no delivery outside the ACL, Receive Maximum
//! respected, session queues within their bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|script: &[u8]| {
    broker::fuzz::run(script);
});
