//! The devicecloud MQTT broker: MQTT 3.1, 3.1.1 and 5.0 over any byte stream the listeners
//! hand it (TCP, TLS, WebSocket), with retained messages, shared subscriptions, wills,
//! persistent sessions (journal in `data_dir`), `$SYS` topics and an in-process client API.
//!
//! Data flows one way: `connection` decodes packets and calls `router`, which matches the
//! `trie` and offers messages to each `session`'s queue; each connection drains its own
//! session queue. `persist` journals what must survive a restart.

pub mod auth;
// Listeners, TLS, WebSocket, password file and config file (H3).
mod broker;
pub mod config;
mod connection;
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
