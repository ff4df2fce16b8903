//! Integration tests: the agent against our own broker over TLS, with simulated GPIO.

mod enroll;
mod harness;
mod link;
mod local;
mod services;
