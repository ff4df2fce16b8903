//! The persisted state as the records describe it: rebuilt by recovery, kept up to date by
//! the writer (so compaction writes it out without asking the broker), and handed to the
//! broker at open as [`Loaded`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use codec::{ByteStr, PublishProperties, QoS};

use super::{Recovery, record::Record};
use crate::{message::Publication, session::SubRecord};

/// A persisted queue entry, as recovered.
#[derive(Debug, Clone)]
pub struct LoadedEntry {
    pub entry: u64,
    pub msg: Arc<Publication>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
    pub pid: Option<u16>,
    pub released: bool,
}

#[derive(Debug, Clone, Default)]
pub struct LoadedSession {
    /// `None` for a session journaled before owners were recorded: nobody may resume it.
    pub owner: Option<Arc<str>>,
    pub expiry: u32,
    pub subs: BTreeMap<String, SubRecord>,
    pub entries: Vec<LoadedEntry>,
    pub inbound_qos2: Vec<u16>,
}

/// The state recovered at open.
#[derive(Debug, Default)]
pub struct Loaded {
    pub recovery: Recovery,
    pub sessions: Vec<(Arc<str>, LoadedSession)>,
    /// Retained messages with the principal they count against.
    pub retained: Vec<(Arc<Publication>, Option<Arc<str>>)>,
}

#[derive(Debug, Clone)]
pub(super) struct MEntry {
    msg: u64,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    pid: Option<u16>,
    released: bool,
}

#[derive(Debug, Default)]
pub(super) struct MSession {
    owner: Option<Arc<str>>,
    expiry: u32,
    subs: BTreeMap<String, SubRecord>,
    entries: BTreeMap<u64, MEntry>,
    inbound_qos2: BTreeSet<u16>,
}

#[derive(Debug, Default)]
pub(super) struct Mirror {
    sessions: HashMap<Arc<str>, MSession>,
    msgs: HashMap<u64, (Arc<Publication>, u32)>,
    retained: BTreeMap<String, (Arc<Publication>, Option<Arc<str>>)>,
    pub(super) max_id: u64,
}

impl Mirror {
    fn unref(&mut self, msg: u64) {
        if let Some((_, refs)) = self.msgs.get_mut(&msg) {
            *refs -= 1;
            if *refs == 0 {
                self.msgs.remove(&msg);
            }
        }
    }

    pub(super) fn apply(&mut self, r: &Record) {
        match r {
            Record::Session { client, expiry } => {
                self.sessions.entry(client.clone()).or_default().expiry = *expiry;
            }
            Record::SessionEnd { client } => {
                if let Some(s) = self.sessions.remove(client) {
                    for e in s.entries.values() {
                        self.unref(e.msg);
                    }
                }
            }
            Record::Sub {
                client,
                filter,
                rec,
            } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subs.insert(filter.clone(), rec.clone());
                }
            }
            Record::Unsub { client, filter } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.subs.remove(filter);
                }
            }
            Record::Msg { id, msg } => {
                self.max_id = self.max_id.max(*id);
                self.msgs.entry(*id).or_insert_with(|| (msg.clone(), 0));
            }
            Record::Enq {
                client,
                entry,
                msg,
                qos,
                retain,
                sub_ids,
            } => {
                self.max_id = self.max_id.max(*entry);
                let Some(s) = self.sessions.get_mut(client) else {
                    return;
                };
                let Some((_, refs)) = self.msgs.get_mut(msg) else {
                    return;
                };
                *refs += 1;
                s.entries.insert(
                    *entry,
                    MEntry {
                        msg: *msg,
                        qos: *qos,
                        retain: *retain,
                        sub_ids: sub_ids.clone(),
                        pid: None,
                        released: false,
                    },
                );
            }
            Record::Sent { client, entry, pid } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(client)
                    .and_then(|s| s.entries.get_mut(entry))
                {
                    e.pid = Some(*pid);
                }
            }
            Record::Released { client, entry } => {
                if let Some(e) = self
                    .sessions
                    .get_mut(client)
                    .and_then(|s| s.entries.get_mut(entry))
                {
                    e.released = true;
                }
            }
            Record::Done { client, entry } => {
                let removed = self
                    .sessions
                    .get_mut(client)
                    .and_then(|s| s.entries.remove(entry));
                if let Some(e) = removed {
                    self.unref(e.msg);
                }
            }
            Record::Retain { msg, owner } => {
                self.retained
                    .insert(msg.topic.to_string(), (msg.clone(), owner.clone()));
            }
            Record::Unretain { topic } => {
                self.retained.remove(topic);
            }
            Record::InQos2 { client, pid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.inbound_qos2.insert(*pid);
                }
            }
            Record::InQos2Done { client, pid } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.inbound_qos2.remove(pid);
                }
            }
            Record::Owner { client, principal } => {
                if let Some(s) = self.sessions.get_mut(client) {
                    s.owner = Some(principal.clone());
                }
            }
        }
    }

    pub(super) fn snapshot(&self) -> Vec<Record> {
        let mut out = Vec::new();
        for (msg, owner) in self.retained.values() {
            out.push(Record::Retain {
                msg: msg.clone(),
                owner: owner.clone(),
            });
        }
        for (id, (msg, refs)) in &self.msgs {
            if *refs == 0 {
                continue;
            }
            out.push(Record::Msg {
                id: *id,
                msg: msg.clone(),
            });
        }
        for (client, s) in &self.sessions {
            out.push(Record::Session {
                client: client.clone(),
                expiry: s.expiry,
            });
            if let Some(principal) = &s.owner {
                out.push(Record::Owner {
                    client: client.clone(),
                    principal: principal.clone(),
                });
            }
            for (filter, rec) in &s.subs {
                out.push(Record::Sub {
                    client: client.clone(),
                    filter: filter.clone(),
                    rec: rec.clone(),
                });
            }
            for pid in &s.inbound_qos2 {
                out.push(Record::InQos2 {
                    client: client.clone(),
                    pid: *pid,
                });
            }
            for (entry, e) in &s.entries {
                out.push(Record::Enq {
                    client: client.clone(),
                    entry: *entry,
                    msg: e.msg,
                    qos: e.qos,
                    retain: e.retain,
                    sub_ids: e.sub_ids.clone(),
                });
                if let Some(pid) = e.pid {
                    out.push(Record::Sent {
                        client: client.clone(),
                        entry: *entry,
                        pid,
                    });
                }
                if e.released {
                    out.push(Record::Released {
                        client: client.clone(),
                        entry: *entry,
                    });
                }
            }
        }
        // Keeps ids monotonic across restarts even if every message was delivered (an
        // unreferenced message, dropped again by the next snapshot).
        out.push(Record::Msg {
            id: self.max_id,
            msg: Arc::new(empty_publication()),
        });
        out
    }

    pub(super) fn loaded(&self) -> Loaded {
        let sessions = self
            .sessions
            .iter()
            .map(|(client, s)| {
                let entries = s
                    .entries
                    .iter()
                    .filter_map(|(entry, e)| {
                        let (msg, _) = self.msgs.get(&e.msg)?;
                        Some(LoadedEntry {
                            entry: *entry,
                            msg: msg.clone(),
                            qos: e.qos,
                            retain: e.retain,
                            sub_ids: e.sub_ids.clone(),
                            pid: e.pid,
                            released: e.released,
                        })
                    })
                    .collect();
                let ls = LoadedSession {
                    owner: s.owner.clone(),
                    expiry: s.expiry,
                    subs: s.subs.clone(),
                    entries,
                    inbound_qos2: s.inbound_qos2.iter().copied().collect(),
                };
                (client.clone(), ls)
            })
            .collect();
        Loaded {
            recovery: Recovery::default(),
            sessions,
            retained: self.retained.values().cloned().collect(),
        }
    }
}

fn empty_publication() -> Publication {
    Publication::new(
        ByteStr::from_static("$none"),
        Bytes::new(),
        QoS::AtMostOnce,
        false,
        PublishProperties::default(),
        0,
    )
}
