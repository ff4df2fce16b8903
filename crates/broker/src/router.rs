//! Publish fan-out: match the topic in the subscription trie, merge overlapping
//! subscriptions of one session, pick one member per shared group, and offer the message to
//! each session's queue. The publication is one `Arc` shared by every subscriber; the trie's
//! read lock is held only for the synchronous fan-out (never across an await).

use std::sync::{Arc, RwLock};

use codec::{QoS, RetainHandling, SubscribeOptions};
use tokio::time::Instant;

use crate::{
    message::Publication,
    persist::{Journal, Record},
    retained::RetainedStore,
    session::{Offer, Outgoing, QueueLimits, Session},
    shared::FilterSpec,
    stats::Counters,
    trie::{Match, Trie},
};

#[derive(Debug, Clone)]
pub struct SubEntry {
    pub session: Arc<Session>,
    pub options: SubscribeOptions,
    pub sub_id: Option<u32>,
}

#[derive(Debug)]
pub struct Router {
    subs: RwLock<Trie<SubEntry>>,
    retained: RwLock<RetainedStore>,
    pub counters: Arc<Counters>,
    pub journal: Option<Arc<Journal>>,
    queue_limits: QueueLimits,
}

impl Router {
    pub fn new(
        counters: Arc<Counters>,
        journal: Option<Arc<Journal>>,
        queue_limits: QueueLimits,
    ) -> Router {
        Router {
            subs: RwLock::new(Trie::default()),
            retained: RwLock::new(RetainedStore::default()),
            counters,
            journal,
            queue_limits,
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.subs.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many retained messages match the plain filter `filter`.
    pub fn retained_matching(&self, filter: &str) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matching(filter, Instant::now())
            .len()
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Routes a message. Returns the journal sequence number that must be durable before
    /// the publisher is acknowledged (0: nothing to wait for).
    pub fn publish(&self, msg: Arc<Publication>) -> u64 {
        let mut seq = 0;
        if msg.retain {
            seq = self.store_retained(&msg);
        }
        let trie = self.subs.read().unwrap_or_else(|e| e.into_inner());
        let mut targets: Vec<&SubEntry> = Vec::new();
        let mut shared: Vec<&SubEntry> = Vec::new();
        trie.for_each_match(&msg.topic, |m| match m {
            Match::Sub(e) => {
                // No Local (MQTT-3.8.3-3): not back to the publishing session.
                if !(e.options.no_local && e.session.id == msg.origin) {
                    targets.push(e);
                }
            }
            Match::Group(g) => {
                if let Some(e) = g.pick(|e| e.session.is_online()) {
                    shared.push(e);
                }
            }
        });
        if targets.len() + shared.len() > 1 {
            msg.set_fanout();
        }
        if targets.len() > 1 {
            targets.sort_unstable_by_key(|e| Arc::as_ptr(&e.session) as usize);
        }
        // One delivery per session, at the highest QoS of its matching subscriptions and with
        // all their subscription identifiers (MQTT-3.3.4-2, -3, -4, -5).
        let mut i = 0;
        while i < targets.len() {
            let first = targets[i];
            let mut j = i + 1;
            while j < targets.len() && Arc::ptr_eq(&targets[j].session, &first.session) {
                j += 1;
            }
            let group = &targets[i..j];
            let qos = group
                .iter()
                .map(|e| e.options.qos.min(msg.qos))
                .max()
                .unwrap_or(QoS::AtMostOnce);
            let retain = msg.retain && group.iter().any(|e| e.options.retain_as_published);
            let sub_ids: Vec<u32> = group.iter().filter_map(|e| e.sub_id).collect();
            seq = seq.max(self.deliver(&first.session, &msg, qos, retain, sub_ids));
            i = j;
        }
        for e in shared {
            let qos = e.options.qos.min(msg.qos);
            let retain = msg.retain && e.options.retain_as_published;
            seq = seq.max(self.deliver(
                &e.session,
                &msg,
                qos,
                retain,
                e.sub_id.into_iter().collect(),
            ));
        }
        seq
    }

    /// Offers one delivery to a session; returns the journal sequence it produced, if any.
    pub fn deliver(
        &self,
        session: &Session,
        msg: &Arc<Publication>,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
    ) -> u64 {
        let out = Outgoing {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids,
            entry_id: 0,
        };
        let mut seq = 0;
        let offer = session.offer(out, self.queue_limits, |out| match &self.journal {
            Some(j) => {
                let msg_id = *out.msg.store_id.get_or_init(|| {
                    let id = j.next_id();
                    j.append(Record::Msg {
                        id,
                        msg: Arc::new(out.msg.detached()),
                    });
                    id
                });
                let entry = j.next_id();
                seq = j.append(Record::Enq {
                    client: session.client_id.clone(),
                    entry,
                    msg: msg_id,
                    qos: out.qos,
                    retain: out.retain,
                    sub_ids: out.sub_ids.clone(),
                });
                entry
            }
            None => 0,
        });
        match offer {
            Offer::Queued if session.local.is_some() => {
                Counters::add(&self.counters.messages_sent, 1)
            }
            Offer::Dropped => Counters::add(&self.counters.messages_dropped, 1),
            _ => {}
        }
        seq
    }

    fn store_retained(&self, msg: &Arc<Publication>) -> u64 {
        let stored = Arc::new(msg.detached());
        let delete = stored.payload.is_empty();
        let changed = self
            .retained
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(stored.clone());
        match &self.journal {
            Some(j) if !stored.topic.starts_with("$SYS/") => {
                if delete {
                    if changed {
                        return j.append(Record::Unretain {
                            topic: stored.topic.to_string(),
                        });
                    }
                    0
                } else {
                    j.append(Record::Retain { msg: stored })
                }
            }
            _ => 0,
        }
    }

    /// Restores a retained message recovered from the journal.
    pub fn restore_retained(&self, msg: Arc<Publication>) {
        self.retained
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(msg);
    }

    /// Adds (or replaces) `session`'s subscription to `raw` (may be `$share/...`) and queues
    /// the retained messages the retain handling option asks for. Returns whether the
    /// subscription already existed.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        raw: &str,
        options: SubscribeOptions,
        sub_id: Option<u32>,
        send_retained: bool,
    ) -> bool {
        let spec = FilterSpec::parse(raw);
        let entry = SubEntry {
            session: session.clone(),
            options,
            sub_id,
        };
        let existed = self
            .subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.filter, spec.group, entry, |e| {
                Arc::ptr_eq(&e.session, session)
            })
            .is_some();
        // Retained messages are not sent for shared subscriptions (spec 4.8.2).
        let wanted = match options.retain_handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendIfNew => !existed,
            RetainHandling::DoNotSend => false,
        };
        if send_retained && wanted && spec.group.is_none() {
            let msgs = self
                .retained
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .matching(spec.filter, Instant::now());
            for m in msgs {
                let qos = options.qos.min(m.qos);
                let m = if session.lock().persistent {
                    Arc::new(m.fresh())
                } else {
                    m
                };
                self.deliver(session, &m, qos, true, sub_id.into_iter().collect());
            }
        }
        existed
    }

    pub fn unsubscribe(&self, session: &Arc<Session>, raw: &str) -> bool {
        let spec = FilterSpec::parse(raw);
        self.subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(spec.filter, spec.group, |e| {
                Arc::ptr_eq(&e.session, session)
            })
            .is_some()
    }

    /// Removes every subscription of `session` listed in `filters`.
    pub fn unsubscribe_all<'a>(
        &self,
        session: &Arc<Session>,
        filters: impl Iterator<Item = &'a String>,
    ) {
        let mut trie = self.subs.write().unwrap_or_else(|e| e.into_inner());
        for raw in filters {
            let spec = FilterSpec::parse(raw);
            trie.remove(spec.filter, spec.group, |e| {
                Arc::ptr_eq(&e.session, session)
            });
        }
    }
}
