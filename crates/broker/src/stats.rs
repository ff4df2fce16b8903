//! Counters, updated with relaxed atomics on the hot path and read as a [`Stats`] snapshot
//! (the server exports them as Prometheus metrics, `$SYS` publishes them).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub clients_connected: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub publish_denied: AtomicU64,
    pub subscribe_denied: AtomicU64,
    pub malformed_packets: AtomicU64,
    pub topic_limit_exceeded: AtomicU64,
    pub retained_quota_exceeded: AtomicU64,
    pub session_limit_exceeded: AtomicU64,
    pub client_id_refused: AtomicU64,
    pub connect_too_large: AtomicU64,
    pub subscriptions_revoked: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Relaxed);
    }
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Currently connected network clients (in-process clients are not counted).
    pub clients_connected: u64,
    /// Sessions known to the broker, connected or not.
    pub sessions: u64,
    pub connections_total: u64,
    /// CONNECTs refused (bad credentials, limits, protocol errors before CONNACK).
    pub connections_refused: u64,
    /// PUBLISH packets received from clients and in-process publishers.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients (and messages handed to in-process subscribers).
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// Messages not delivered to a subscriber because its queue was full, it was too big
    /// for the client's Maximum Packet Size, or an in-process subscriber lagged.
    pub messages_dropped: u64,
    /// PUBLISH packets refused by the ACL.
    pub publish_denied: u64,
    /// SUBSCRIBE filters refused by the ACL.
    pub subscribe_denied: u64,
    pub malformed_packets: u64,
    /// Topic names or filters refused for exceeding `max_topic_levels`/`max_topic_length`.
    pub topic_limit_exceeded: u64,
    /// Retained PUBLISH packets refused by the per-principal retained quota.
    pub retained_quota_exceeded: u64,
    /// CONNECTs refused by `max_sessions_per_principal`.
    pub session_limit_exceeded: u64,
    /// CONNECTs refused because the client id belongs to another principal (its session's
    /// owner, or the authenticator's client-id rule).
    pub client_id_refused: u64,
    /// CONNECT packets larger than `max_connect_size`, refused before authentication.
    pub connect_too_large: u64,
    /// Restored subscriptions removed because their principal may no longer subscribe.
    pub subscriptions_revoked: u64,
    pub retained_messages: u64,
    pub subscriptions: u64,
    pub uptime_secs: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        Stats {
            clients_connected: self.clients_connected.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            messages_dropped: self.messages_dropped.load(Relaxed),
            publish_denied: self.publish_denied.load(Relaxed),
            subscribe_denied: self.subscribe_denied.load(Relaxed),
            malformed_packets: self.malformed_packets.load(Relaxed),
            topic_limit_exceeded: self.topic_limit_exceeded.load(Relaxed),
            retained_quota_exceeded: self.retained_quota_exceeded.load(Relaxed),
            session_limit_exceeded: self.session_limit_exceeded.load(Relaxed),
            client_id_refused: self.client_id_refused.load(Relaxed),
            connect_too_large: self.connect_too_large.load(Relaxed),
            subscriptions_revoked: self.subscriptions_revoked.load(Relaxed),
            ..Stats::default()
        }
    }
}
