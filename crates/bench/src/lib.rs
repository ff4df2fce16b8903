//! The load tools behind `scripts/bench` (the `bench` binary: our broker against mosquitto)
//! and `scripts/soak` (the `soak` binary: a whole server under legitimate and abusive load).

pub mod procfs;
pub mod soak;
