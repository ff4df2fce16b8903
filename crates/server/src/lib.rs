//! The devicecloud server: the broker plus a certificate authority, the device registry, the
//! HTTP API and the dashboard, composed around one [`context::ServerContext`].
//!
//! [`runtime::Server::start`] is the entry point (`devicecloud server`, `devicecloud up` and
//! the tests call it).

pub mod backoff;
pub mod bus;
pub mod config;
pub mod context;
pub mod directory;
pub mod gate;
pub mod ingest;
pub mod permissions;
pub mod registry;
pub mod renew;
pub mod runtime;
pub mod twin;
pub mod web;

pub use context::ServerContext;
pub use runtime::{RunningServer, Server, ServerOptions};
