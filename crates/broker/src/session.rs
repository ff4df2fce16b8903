//! Per-client session state (spec 4.1): subscriptions, the queue of messages waiting to be
//! sent, the outbound in-flight window, and inbound QoS 2 packet ids awaiting PUBREL.
//!
//! A session outlives its network connections when its expiry interval is non-zero. The
//! router appends to the queue under the session's mutex (a short, non-async section) and
//! signals the connection task, which drains the queue into its write buffer on its next
//! wakeup; there is no task or channel per subscriber or per message.
//!
//! Slow-consumer policy ([`QueueLimits`]): a session's queue (beyond the in-flight window)
//! holds at most `Limits::max_queued_bytes` bytes of messages, and at most
//! `Limits::max_queued_messages` QoS 1/2 messages (as mosquitto counts them). QoS 0 messages
//! to a connected client are bounded by bytes only, so a burst of many small messages is
//! absorbed instead of being cut at a message count; they are never queued for disconnected
//! sessions. When a bound is reached the NEW message is dropped, whatever its QoS, and
//! counted in `messages_dropped`; older queued messages keep their order so a consumer that
//! catches up sees a gap, never a reordering. Dropping is logged once per episode: a warning
//! at the first drop, and how many were dropped once the queue has drained to half its
//! bounds. A connected client whose socket stops draining fills its queue the same way: the
//! connection moves messages into its write buffer only while that buffer is below a small
//! high-water mark.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use codec::{QoS, ReasonCode, SubscribeOptions};
use tokio::{sync::Notify, task::AbortHandle};

use crate::message::{Message, Publication};

/// How much one session may queue (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// QoS 1/2 messages.
    pub messages: usize,
    /// Bytes of messages of any QoS, as [`Outgoing::queued_size`] counts them.
    pub bytes: usize,
}

impl QueueLimits {
    /// Whether the queue has drained enough to call a dropping episode over: half of both
    /// bounds, so that a consumer hovering at the limit logs one episode, not one per message.
    fn has_room_again(&self, queue: &Queue) -> bool {
        queue.acked_len() <= self.messages / 2 && queue.bytes() <= self.bytes / 2
    }
}

/// One message for one session: the shared publication plus this delivery's options.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub msg: Arc<Publication>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    /// The journal entry id; 0 when this delivery is not persisted.
    pub entry_id: u64,
}

impl Outgoing {
    /// What this entry costs a queue, in bytes: the entry, the publication it shares (counted
    /// in full for every session it fans out to: an upper bound), topic and payload.
    pub fn queued_size(&self) -> usize {
        std::mem::size_of::<Outgoing>()
            + std::mem::size_of::<Publication>()
            + self.sub_ids.len() * 4
            + self.msg.topic.len()
            + self.msg.payload.len()
    }
}

/// A session's queue of messages waiting for the in-flight window, with the totals the
/// slow-consumer bounds need. Keeps the `VecDeque` method names its users need.
#[derive(Debug, Default)]
pub struct Queue {
    items: VecDeque<Outgoing>,
    bytes: usize,
    /// QoS 1/2 entries.
    acked: usize,
}

impl Queue {
    pub fn push_back(&mut self, out: Outgoing) {
        self.bytes += out.queued_size();
        self.acked += usize::from(out.qos != QoS::AtMostOnce);
        self.items.push_back(out);
    }

    pub fn pop_front(&mut self) -> Option<Outgoing> {
        let out = self.items.pop_front()?;
        self.bytes -= out.queued_size();
        self.acked -= usize::from(out.qos != QoS::AtMostOnce);
        Some(out)
    }

    pub fn front(&self) -> Option<&Outgoing> {
        self.items.front()
    }

    pub fn clear(&mut self) {
        *self = Queue::default();
    }

    /// Keeps only the messages `keep` accepts, in order, with the byte and QoS counts kept right.
    pub fn retain(&mut self, mut keep: impl FnMut(&Outgoing) -> bool) {
        let (mut bytes, mut acked) = (self.bytes, self.acked);
        self.items.retain(|out| {
            let kept = keep(out);
            if !kept {
                bytes -= out.queued_size();
                acked -= usize::from(out.qos != QoS::AtMostOnce);
            }
            kept
        });
        (self.bytes, self.acked) = (bytes, acked);
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes queued, as [`Outgoing::queued_size`] counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// QoS 1/2 messages queued.
    pub fn acked_len(&self) -> usize {
        self.acked
    }

    /// Whether `out` must be dropped rather than queued. A message is always admitted into
    /// an empty queue, so that one larger than the byte bound can still be delivered.
    fn is_full_for(&self, out: &Outgoing, limits: QueueLimits) -> bool {
        if self.items.is_empty() {
            return false;
        }
        self.bytes + out.queued_size() > limits.bytes
            || (out.qos != QoS::AtMostOnce && self.acked >= limits.messages)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub pid: u16,
    pub out: Outgoing,
    pub stage: Stage,
}

/// A subscription as the session remembers it (to restore it and to remove it on clean).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    pub options: SubscribeOptions,
    pub sub_id: Option<u32>,
}

/// The link from a session to the connection currently serving it.
#[derive(Debug)]
pub struct ConnLink {
    /// Which connection: a connection that finds a different generation has been taken over.
    pub generation: u64,
    pub signal: Arc<Notify>,
    pub principal: Arc<str>,
    /// Set to ask the connection to send DISCONNECT with this reason and close.
    pub kick: Option<ReasonCode>,
}

#[derive(Debug, Default)]
pub struct SessionState {
    pub conn: Option<ConnLink>,
    pub generation: u64,
    /// Session expiry interval in seconds; `u32::MAX` never expires.
    pub expiry: u32,
    /// Whether this session is written to the journal.
    pub persistent: bool,
    /// The session was discarded (clean start, expiry); the router must not queue to it.
    pub ended: bool,
    /// Raw filter (including any `$share/` prefix) -> options.
    pub subs: HashMap<String, SubRecord>,
    pub queue: Queue,
    pub inflight: VecDeque<Inflight>,
    /// Outbound window: the client's Receive Maximum capped by ours.
    pub send_quota: u16,
    pub next_pid: u16,
    /// How many ids after `next_pid` are known to be free of in-flight messages, so that
    /// `alloc_pid` scans the window once per run of free ids instead of once per message.
    pub free_pids: u16,
    /// Inbound QoS 2 packet ids whose PUBREL has not arrived yet.
    pub inbound_qos2: Vec<u16>,
    /// A delayed will waiting to be published; cancelled if the client reconnects.
    pub pending_will: Option<PendingWill>,
    /// The principal that created the session; only it may take the session over or resume
    /// it. `None` for a session recovered from a journal written before owners were
    /// recorded: nobody resumes it (see `Inner::attach`).
    pub owner: Option<Arc<str>>,
    /// Messages dropped by the slow-consumer policy in the current episode (0: none).
    pub dropping: u64,
}

impl SessionState {
    /// A packet identifier not used by any in-flight message.
    pub fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                // Ids allocated in this run lie behind it; a wrap could reach them again.
                self.next_pid = 1;
                self.free_pids = 0;
            }
            let pid = self.next_pid;
            if self.free_pids > 0 {
                self.free_pids -= 1;
                return pid;
            }
            // The distance to the nearest in-flight id at or after `pid`: 0 = taken.
            let nearest = self
                .inflight
                .iter()
                .map(|i| i.pid.wrapping_sub(pid))
                .min()
                .unwrap_or(u16::MAX);
            if nearest > 0 {
                self.free_pids = nearest - 1;
                return pid;
            }
        }
    }

    pub fn signal(&self) {
        if let Some(c) = &self.conn {
            c.signal.notify_one();
        }
    }

    /// Index of the in-flight entry with `pid`; acks usually arrive in order, so this
    /// normally finds it at the front.
    pub fn inflight_pos(&self, pid: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.pid == pid)
    }
}

/// A will message waiting for its Will Delay Interval.
#[derive(Debug)]
pub struct PendingWill {
    pub abort: AbortHandle,
    pub msg: Arc<Publication>,
}

/// Where messages for an in-process subscriber go instead of a queue.
#[derive(Debug)]
pub struct LocalSink {
    pub tx: tokio::sync::mpsc::Sender<Message>,
}

#[derive(Debug)]
pub struct Session {
    /// Unique per session object (No Local compares it with `Publication::origin`).
    pub id: u64,
    pub client_id: Arc<str>,
    pub online: AtomicBool,
    pub state: Mutex<SessionState>,
    pub local: Option<LocalSink>,
}

/// What happened to a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Not queued on purpose (QoS 0 for an offline session, session ended).
    Skipped,
    /// Dropped by the slow-consumer policy or a lagging local subscriber.
    Dropped,
}

impl Session {
    pub fn new(id: u64, client_id: Arc<str>) -> Session {
        Session {
            id,
            client_id,
            online: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                send_quota: 1,
                ..SessionState::default()
            }),
            local: None,
        }
    }

    pub fn new_local(
        id: u64,
        client_id: Arc<str>,
        tx: tokio::sync::mpsc::Sender<Message>,
    ) -> Session {
        let mut s = Session::new(id, client_id);
        s.online = AtomicBool::new(true);
        s.local = Some(LocalSink { tx });
        s
    }

    /// Locks the state; a poisoned lock (a panic elsewhere) is recovered, since the state
    /// is plain data that stays consistent between statements.
    pub fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Offers a message to this session, applying the slow-consumer policy.
    /// `persist` is called (under the session lock, so journal order matches queue order)
    /// for a QoS 1/2 message to a persistent session and returns the journal entry id.
    pub fn offer(
        &self,
        mut out: Outgoing,
        limits: QueueLimits,
        persist: impl FnOnce(&Outgoing) -> u64,
    ) -> Offer {
        if let Some(local) = &self.local {
            return match local.tx.try_send(out.msg.to_message(out.qos, out.retain)) {
                Ok(()) => Offer::Queued,
                Err(_) => Offer::Dropped,
            };
        }
        let mut st = self.lock();
        if st.ended || (st.conn.is_none() && out.qos == QoS::AtMostOnce) {
            return Offer::Skipped;
        }
        if st.queue.is_full_for(&out, limits) {
            if st.dropping == 0 {
                tracing::warn!(
                    client = %self.client_id,
                    queued_messages = st.queue.len(),
                    queued_bytes = st.queue.bytes(),
                    "slow consumer: its queue is full, new messages are dropped until it catches up \
                     (raise limits.max_queued_bytes or max_queued_messages if this client is just bursty)"
                );
            }
            st.dropping += 1;
            return Offer::Dropped;
        }
        if st.dropping > 0 && limits.has_room_again(&st.queue) {
            tracing::info!(
                client = %self.client_id,
                dropped = st.dropping,
                "slow consumer caught up; {} messages were dropped",
                st.dropping
            );
            st.dropping = 0;
        }
        if st.persistent && out.qos != QoS::AtMostOnce {
            out.entry_id = persist(&out);
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(out);
        if was_empty {
            st.signal();
        }
        Offer::Queued
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use codec::ByteStr;

    use super::*;
    use crate::message::Publication;

    fn inflight(pid: u16) -> Inflight {
        let msg = Publication::new(
            ByteStr::from("t"),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            Default::default(),
            0,
        );
        Inflight {
            pid,
            out: Outgoing {
                msg: Arc::new(msg),
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: Vec::new(),
                entry_id: 0,
            },
            stage: Stage::Published,
        }
    }

    fn outgoing(qos: QoS, payload: usize) -> Outgoing {
        let mut o = inflight(1).out;
        o.qos = qos;
        o.msg = Arc::new(Publication::new(
            ByteStr::from("topic"),
            Bytes::from(vec![0; payload]),
            qos,
            false,
            Default::default(),
            0,
        ));
        o
    }

    /// The queue's totals follow every push and pop, and its bounds apply as documented:
    /// bytes for every QoS, the message count for QoS 1/2 only, and an empty queue always
    /// takes one message.
    #[test]
    fn queue_totals_and_bounds() {
        let small = outgoing(QoS::AtMostOnce, 10).queued_size();
        let limits = QueueLimits {
            messages: 2,
            bytes: 4 * small,
        };
        let mut q = Queue::default();
        assert!(!q.is_full_for(&outgoing(QoS::AtMostOnce, 1 << 20), limits));
        for _ in 0..4 {
            assert!(!q.is_full_for(&outgoing(QoS::AtMostOnce, 10), limits));
            q.push_back(outgoing(QoS::AtMostOnce, 10));
        }
        assert_eq!((q.len(), q.bytes(), q.acked_len()), (4, 4 * small, 0));
        assert!(q.is_full_for(&outgoing(QoS::AtMostOnce, 10), limits));
        q.pop_front();
        q.pop_front();
        q.push_back(outgoing(QoS::AtLeastOnce, 10));
        q.push_back(outgoing(QoS::ExactlyOnce, 10));
        assert_eq!(q.acked_len(), 2);
        // Room for bytes would be there after a pop, but not for a third QoS 1/2 message.
        q.pop_front();
        assert!(q.is_full_for(&outgoing(QoS::AtLeastOnce, 10), limits));
        assert!(!q.is_full_for(&outgoing(QoS::AtMostOnce, 10), limits));
        while q.pop_front().is_some() {}
        assert_eq!((q.len(), q.bytes(), q.acked_len()), (0, 0, 0));
        assert!(limits.has_room_again(&q));
    }

    /// The cached run of free ids gives exactly what a scan per allocation gives: the next
    /// id after the last one that is not in flight, never 0, across wraps and with acks
    /// out of order and ids restored from elsewhere.
    #[test]
    fn alloc_pid_matches_a_full_scan() {
        let mut st = SessionState {
            next_pid: 65_000,
            ..SessionState::default()
        };
        st.inflight.push_back(inflight(65_003));
        st.inflight.push_back(inflight(2));
        let mut expected_next = st.next_pid;
        let mut x: u32 = 12_345;
        for step in 0..140_000u32 {
            let want = loop {
                expected_next = expected_next.wrapping_add(1);
                if expected_next != 0 && !st.inflight.iter().any(|i| i.pid == expected_next) {
                    break expected_next;
                }
            };
            let pid = st.alloc_pid();
            assert_eq!(pid, want, "step {step}");
            st.inflight.push_back(inflight(pid));
            // Ack one (pseudo-random position) most of the time; keep up to ~100 in flight.
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if st.inflight.len() > 100 || !x.is_multiple_of(4) {
                let at = (x >> 8) as usize % st.inflight.len();
                // 65_003 and 2 stay in flight for good, so that later runs must skip them.
                if ![65_003, 2].contains(&st.inflight[at].pid) {
                    st.inflight.remove(at);
                }
            }
        }
    }
}
