//! The devicecloud MQTT broker: MQTT 3.1, 3.1.1 and 5.0 over any byte stream the listeners
//! hand it (TCP, TLS, WebSocket), with retained messages, shared subscriptions, wills,
//! persistent sessions (journal in `data_dir`), `$SYS` topics and an in-process client API.
//!
//! Data flows one way: `connection` decodes packets and calls `router`, which matches the
//! `trie` and offers messages to each `session`'s queue; each connection drains its own
//! session queue. `persist` journals what must survive a restart.
//!
//! - One task per connection, no task or channel per subscriber or message: the router
//!   appends to the subscriber's session queue under a short std mutex and wakes its
//!   connection, which encodes everything queued since its last wakeup into one buffer and
//!   writes it with one write. A PUBLISH fanned out to several sessions is encoded once per
//!   (protocol family, QoS) and copied, with DUP/RETAIN/packet id/topic alias patched in by
//!   `codec::PublishFrame`.
//! - No buffer is held by an idle connection (reads go through a stack buffer; the write
//!   buffer is released after each flush) and the CONNECT handshake runs in its own
//!   allocation, so an idle connection costs about 2 KB (release build, Linux, measured with
//!   10k connections), its task future 752 bytes.
//! - Slow consumers: see the `session` module (queue bounded by bytes, and QoS 1/2 by count;
//!   the new message is dropped, counted, and logged once per episode).
//! - Durability: see the `persist` module (acks after fsync, group commit).
//! - Wills: see the `will` module (a will topic the client may not publish to refuses the
//!   CONNECT with 0x87 / return code 5).

pub mod auth;
// Listeners, TLS, WebSocket, password file and config file (H3).
mod broker;
pub mod config;
mod connection;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod listener;
mod local;
mod message;
pub mod password_file;
mod persist;
mod retained;
mod router;
mod session;
mod shared;
mod stats;
mod sys;
pub mod tls;
mod trie;
mod will;
pub mod ws;

pub use broker::{Broker, BrokerConfig, BrokerError, ConnInfo, Limits};
pub use codec::{PublishProperties, QoS};
pub use local::{LocalClient, LocalSubscription};
pub use message::Message;
pub use persist::PersistError;
pub use stats::Stats;
pub use sys::VERSION;

/// Entry points for the fuzz targets in `fuzz/` (not a stable API).
#[doc(hidden)]
pub mod fuzzing {
    /// Replays a whole journal file (see `fuzz/fuzz_targets/journal_records.rs`).
    pub fn journal_replay(data: &[u8]) -> (usize, usize) {
        crate::persist::fuzz_replay(data)
    }
}
