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
    retained::{RetainQuota, RetainRefused, RetainedStore},
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
    retain_quota: RetainQuota,
}

impl Router {
    pub fn new(
        counters: Arc<Counters>,
        journal: Option<Arc<Journal>>,
        queue_limits: QueueLimits,
        retain_quota: RetainQuota,
    ) -> Router {
        Router {
            subs: RwLock::new(Trie::default()),
            retained: RwLock::new(RetainedStore::default()),
            counters,
            journal,
            queue_limits,
            retain_quota,
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

    /// Routes a message of the broker's own (a will, `$SYS`, an in-process client): its
    /// retained copy counts against nobody's quota. Returns the journal sequence number
    /// that must be durable before the publisher is acknowledged (0: nothing to wait for).
    pub fn publish(&self, msg: Arc<Publication>) -> u64 {
        self.publish_as(msg, None).unwrap_or(0)
    }

    /// Routes a client's message. A retained one counts against `owner`'s retained quota;
    /// over it, the message is refused as a whole (not routed either) and counted in
    /// `retained_quota_exceeded`, so the publisher learns of it instead of subscribers
    /// seeing a message that later retained readers miss.
    pub fn publish_as(
        &self,
        msg: Arc<Publication>,
        owner: Option<&Arc<str>>,
    ) -> Result<u64, RetainRefused> {
        let mut seq = 0;
        if msg.retain {
            seq = self.store_retained(&msg, owner)?;
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
        Ok(seq)
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

    fn store_retained(
        &self,
        msg: &Arc<Publication>,
        owner: Option<&Arc<str>>,
    ) -> Result<u64, RetainRefused> {
        let stored = Arc::new(msg.detached());
        let delete = stored.payload.is_empty();
        let changed = self
            .retained
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_owned(stored.clone(), owner, self.retain_quota);
        let changed = match changed {
            Ok(changed) => changed,
            Err(e) => {
                Counters::add(&self.counters.retained_quota_exceeded, 1);
                return Err(e);
            }
        };
        Ok(match &self.journal {
            Some(j) if !stored.topic.starts_with("$SYS/") => {
                if delete {
                    if changed {
                        return Ok(j.append(Record::Unretain {
                            topic: stored.topic.to_string(),
                        }));
                    }
                    0
                } else {
                    j.append(Record::Retain {
                        msg: stored,
                        owner: owner.cloned(),
                    })
                }
            }
            _ => 0,
        })
    }

    /// Restores a retained message recovered from the journal (quotas are not enforced on
    /// what was already accepted).
    pub fn restore_retained(&self, msg: Arc<Publication>, owner: Option<Arc<str>>) {
        let unbounded = RetainQuota {
            max_count: usize::MAX,
            max_bytes: usize::MAX,
        };
        let _ = self
            .retained
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_owned(msg, owner.as_ref(), unbounded);
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
        let group = spec.group.map(|g| group_key(session, g));
        let entry = SubEntry {
            session: session.clone(),
            options,
            sub_id,
        };
        let existed = self
            .subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.filter, group.as_deref(), entry, |e| {
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
        let group = spec.group.map(|g| group_key(session, g));
        self.subs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(spec.filter, group.as_deref(), |e| {
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
        let owner = session.lock().owner.clone();
        let mut trie = self.subs.write().unwrap_or_else(|e| e.into_inner());
        for raw in filters {
            let spec = FilterSpec::parse(raw);
            let group = spec.group.map(|g| owned_group_key(owner.as_deref(), g));
            trie.remove(spec.filter, group.as_deref(), |e| {
                Arc::ptr_eq(&e.session, session)
            });
        }
    }
}

/// Shared subscription groups are per principal: `$share/g/...` of `user:alice` and of
/// `device:x` are two different groups. So no principal can join another's group to take
/// a share of its messages, and none can squat a group name to block another. The key
/// joins owner and group with NUL, which neither a principal name nor (MQTT-4.7.3-2) a
/// group name contains.
fn group_key(session: &Session, group: &str) -> String {
    owned_group_key(session.lock().owner.as_deref(), group)
}

fn owned_group_key(owner: Option<&str>, group: &str) -> String {
    format!("{}\0{group}", owner.unwrap_or(""))
}
