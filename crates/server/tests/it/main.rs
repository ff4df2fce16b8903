//! The server's integration tests: one binary, one module per area.

mod abuse;
mod harness;
mod lifecycle;
mod security;
mod web;
