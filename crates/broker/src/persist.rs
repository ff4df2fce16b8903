//! Persistence: an append-only journal with group commit and compaction.
//!
//! What is persisted (only with a `data_dir`): sessions with a non-zero expiry (v5) or
//! `clean session = 0` (v3), their subscriptions, their queued and in-flight QoS 1/2
//! messages (with packet ids and QoS 2 stage), inbound QoS 2 packet ids awaiting PUBREL, and
//! retained messages (except `$SYS/...`). Clean sessions and QoS 0 never touch the journal.
//!
//! Durability window: a QoS 1/2 PUBLISH whose routing wrote anything to the journal
//! (a queued copy for a persistent session, a retained update, the publisher's own QoS 2
//! state) is acknowledged (PUBACK/PUBREC) only after those records are written AND fsync'd
//! (`fdatasync`). Commits are grouped: one writer thread writes everything appended while the
//! previous fsync ran, then fsyncs once, so the added ack latency is about one fsync. Records
//! that nobody waits for (SUBSCRIBE, session creation, delivery progress, QoS 0 retained
//! updates) are written by the same next group commit, normally within a few milliseconds;
//! a crash inside that window loses them (a delivered message may then be redelivered, which
//! QoS 1 allows and the DUP flag marks). kill -9 of the process loses nothing that was
//! acknowledged; power loss too, as far as the disk honours fsync.
//!
//! Why a journal and not SQLite: every record is an append to one file in arrival order, the
//! hot path only pushes a record into a vector under a mutex, and the writer thread keeps a
//! mirror of the persisted state, so compaction (rewrite the mirror to a new file, fsync,
//! rename) needs no coordination with the broker. Each record carries a length and a
//! checksum. Recovery truncates only a torn tail; a damaged record in the middle is skipped by
//! resynchronising on the next valid record, after the original file is copied aside (see
//! [`replay`]).
//!
//! Session expiry across a restart: an offline persistent session's expiry timer restarts
//! when the broker starts (the time it was offline before the restart is not recorded).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use codec::{ByteStr, PublishProperties, QoS, RetainHandling, SubscribeOptions};
use tokio::{sync::Notify, time::Instant};

use crate::{message::Publication, session::SubRecord};

const FILE_NAME: &str = "broker.journal";
const MAGIC: &[u8; 8] = b"DCJRNL01";
/// Compact once the journal is this much larger than the last snapshot (and at least 8 MiB).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN: u64 = 8 << 20;

/// One change to the persisted state.
#[derive(Debug, Clone)]
pub enum Record {
    Session {
        client: Arc<str>,
        expiry: u32,
    },
    SessionEnd {
        client: Arc<str>,
    },
    Sub {
        client: Arc<str>,
        filter: String,
        rec: SubRecord,
    },
    Unsub {
        client: Arc<str>,
        filter: String,
    },
    Msg {
        id: u64,
        msg: Arc<Publication>,
    },
    Enq {
        client: Arc<str>,
        entry: u64,
        msg: u64,
        qos: QoS,
        retain: bool,
        sub_ids: Vec<u32>,
    },
    Sent {
        client: Arc<str>,
        entry: u64,
        pid: u16,
    },
    Released {
        client: Arc<str>,
        entry: u64,
    },
    Done {
        client: Arc<str>,
        entry: u64,
    },
    /// `owner`: the principal whose retained quota it counts against (none for the
    /// broker's own messages and for journals written before quotas existed).
    Retain {
        msg: Arc<Publication>,
        owner: Option<Arc<str>>,
    },
    Unretain {
        topic: String,
    },
    InQos2 {
        client: Arc<str>,
        pid: u16,
    },
    InQos2Done {
        client: Arc<str>,
        pid: u16,
    },
    /// The principal that owns a persistent session (written right after its first
    /// `Session` record); only that principal may resume it.
    Owner {
        client: Arc<str>,
        principal: Arc<str>,
    },
}

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

/// What recovery found wrong with the journal.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of an incomplete or damaged record at the very end, with nothing valid after
    /// it (an interrupted write): dropped.
    pub torn_tail_bytes: usize,
    /// `(offset, length)` of damaged regions followed by valid records: skipped, and the
    /// records after each were recovered.
    pub corrupt: Vec<(usize, usize)>,
    /// Where the original file was copied when `corrupt` is not empty.
    pub kept_aside: Option<PathBuf>,
}

/// The state recovered at open.
#[derive(Debug, Default)]
pub struct Loaded {
    pub recovery: Recovery,
    pub sessions: Vec<(Arc<str>, LoadedSession)>,
    /// Retained messages with the principal they count against.
    pub retained: Vec<(Arc<Publication>, Option<Arc<str>>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a devicecloud broker journal (bad header); move it away or point data_dir elsewhere"
    )]
    BadHeader { path: PathBuf },
    #[error(
        "the broker journal is damaged and could not be copied aside to {path} before recovery: {source}; free disk space or fix permissions, then start again"
    )]
    KeepAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default)]
struct Pending {
    records: Vec<Record>,
    seq: u64,
    waiters: Vec<(u64, Arc<Notify>)>,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    cv: Condvar,
    durable: AtomicU64,
    failed: AtomicBool,
    next_id: AtomicU64,
}

/// The journal handle the broker appends to.
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, recovers its state and compacts it. Blocking.
    pub fn open(dir: &Path) -> Result<(Journal, Loaded), PersistError> {
        Journal::open_with(dir, COMPACT_MIN)
    }

    /// [`Journal::open`] with a custom minimum size before compaction (tests).
    fn open_with(dir: &Path, compact_min: u64) -> Result<(Journal, Loaded), PersistError> {
        let io = |source| PersistError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(FILE_NAME);
        let mut mirror = Mirror::default();
        let mut recovery = Recovery::default();
        if path.exists() {
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|source| PersistError::Io {
                    path: path.clone(),
                    source,
                })?;
            if !data.is_empty() {
                if !data.starts_with(MAGIC) {
                    return Err(PersistError::BadHeader { path });
                }
                recovery = replay(&data, &mut mirror);
                if recovery.torn_tail_bytes > 0 {
                    tracing::warn!(
                        path = %path.display(),
                        dropped_bytes = recovery.torn_tail_bytes,
                        "journal ends with a torn record (an interrupted write); recovered up to it"
                    );
                }
                if !recovery.corrupt.is_empty() {
                    recovery.kept_aside = Some(keep_aside(&path)?);
                    report_corruption(&path, &recovery);
                }
            }
        }
        let mut loaded = mirror.loaded();
        loaded.recovery = recovery;
        let next_id = mirror.max_id + 1;
        let (file, size) = write_snapshot(&path, &mirror).map_err(io)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            cv: Condvar::new(),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            next_id: AtomicU64::new(next_id),
        });
        let writer = Writer {
            compact_min,
            shared: shared.clone(),
            path,
            file,
            size,
            snapshot_size: size,
            mirror,
        };
        let thread = std::thread::Builder::new()
            .name("broker-journal".into())
            .spawn(move || writer.run())
            .map_err(io)?;
        Ok((
            Journal {
                shared,
                thread: Mutex::new(Some(thread)),
            },
            loaded,
        ))
    }

    /// A fresh id for a message or queue entry.
    pub fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Appends a record; returns its sequence number (see [`Journal::durable`]).
    pub fn append(&self, rec: Record) -> u64 {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.records.push(rec);
        p.seq += 1;
        let seq = p.seq;
        drop(p);
        self.shared.cv.notify_one();
        seq
    }

    /// The highest sequence number known to be on disk.
    pub fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Whether the journal stopped writing after an I/O error (the broker keeps running
    /// without durability; acknowledgements are no longer delayed).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Wakes `signal` once `seq` is durable.
    pub fn notify_when_durable(&self, seq: u64, signal: Arc<Notify>) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.durable() >= seq || self.failed() {
            signal.notify_one();
            return;
        }
        p.waiters.push((seq, signal));
    }

    /// Writes and fsyncs everything appended so far, then stops the writer. Blocking.
    pub fn close(&self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.shutdown = true;
        drop(p);
        self.shared.cv.notify_one();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    compact_min: u64,
    shared: Arc<Shared>,
    path: PathBuf,
    file: File,
    size: u64,
    snapshot_size: u64,
    mirror: Mirror,
}

impl Writer {
    fn run(mut self) {
        let mut buf = Vec::new();
        loop {
            let (records, seq, shutdown) = {
                let mut p = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                while p.records.is_empty() && !p.shutdown {
                    p = self.shared.cv.wait(p).unwrap_or_else(|e| e.into_inner());
                }
                (std::mem::take(&mut p.records), p.seq, p.shutdown)
            };
            if !records.is_empty() && !self.shared.failed.load(Ordering::Relaxed) {
                buf.clear();
                for r in &records {
                    encode_record(r, &mut buf);
                    self.mirror.apply(r);
                }
                let res = self
                    .file
                    .write_all(&buf)
                    .and_then(|()| self.file.sync_data());
                match res {
                    Ok(()) => self.size += buf.len() as u64,
                    Err(e) => {
                        tracing::error!(
                            path = %self.path.display(),
                            error = %e,
                            "broker journal write failed; persistence is disabled until restart \
                             (check disk space and permissions of the data directory)"
                        );
                        self.shared.failed.store(true, Ordering::Relaxed);
                    }
                }
                if buf.capacity() > 4 << 20 {
                    buf = Vec::new();
                }
            }
            self.shared.durable.store(seq, Ordering::Release);
            let ready: Vec<Arc<Notify>> = {
                let mut p = self
                    .shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut p.waiters)
                    .into_iter()
                    .partition(|(s, _)| *s <= seq);
                p.waiters = waiting;
                ready.into_iter().map(|(_, n)| n).collect()
            };
            for n in ready {
                n.notify_one();
            }
            if shutdown {
                return;
            }
            if self.size > self.compact_min.max(self.snapshot_size * COMPACT_FACTOR)
                && !self.shared.failed.load(Ordering::Relaxed)
            {
                match write_snapshot(&self.path, &self.mirror) {
                    Ok((file, size)) => {
                        self.file = file;
                        self.size = size;
                        self.snapshot_size = size;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "journal compaction failed; will retry later")
                    }
                }
            }
        }
    }
}

/// Applies every valid record of `data` (which starts with `MAGIC`) to `mirror`.
///
/// A record that does not decode is either a torn tail (nothing valid follows: dropped, as
/// an interrupted append leaves it) or damage in the middle: then the reader resynchronises
/// on the next position where a whole record with a matching checksum starts (first where
/// the damaged record's own length points, then byte by byte) and carries on, so a bad
/// record never silently takes everything after it along.
fn replay(data: &[u8], mirror: &mut Mirror) -> Recovery {
    let mut recovery = Recovery::default();
    let mut pos = MAGIC.len();
    while pos < data.len() {
        if let Some((rec, next)) = read_record(data, pos) {
            mirror.apply(&rec);
            pos = next;
            continue;
        }
        match resync(data, pos) {
            Some(next) => {
                recovery.corrupt.push((pos, next - pos));
                pos = next;
            }
            None => {
                recovery.torn_tail_bytes = data.len() - pos;
                break;
            }
        }
    }
    recovery
}

/// For the fuzz target: recovers the state `data` (a whole journal file) describes, the way
/// `Journal::open` does, and re-encodes it; returns (sessions, retained messages). Must not
/// panic on any input.
pub fn fuzz_replay(data: &[u8]) -> (usize, usize) {
    if !data.starts_with(MAGIC) {
        return (0, 0);
    }
    let mut mirror = Mirror::default();
    replay(data, &mut mirror);
    let mut buf = Vec::from(&MAGIC[..]);
    for r in mirror.snapshot() {
        encode_record(&r, &mut buf);
    }
    // The snapshot is a valid journal: replaying it finds no damage.
    let mut again = Mirror::default();
    let recovery = replay(&buf, &mut again);
    assert_eq!(
        recovery,
        Recovery::default(),
        "a snapshot must replay cleanly"
    );
    let loaded = mirror.loaded();
    (loaded.sessions.len(), loaded.retained.len())
}

/// The first position after the damaged record at `bad` where a valid record starts.
fn resync(data: &[u8], bad: usize) -> Option<usize> {
    let declared = data
        .get(bad..bad + 4)
        .and_then(|h| h.try_into().ok())
        .map(|h| u32::from_le_bytes(h) as usize)
        .and_then(|len| (bad + 8).checked_add(len));
    if let Some(next) = declared
        && next < data.len()
        && read_record(data, next).is_some()
    {
        return Some(next);
    }
    (bad + 1..data.len().saturating_sub(8)).find(|&p| {
        // Cheap filter before the checksum: a plausible tag right after the header.
        matches!(data.get(p + 8), Some(1..=15)) && read_record(data, p).is_some()
    })
}

/// Copies the journal next to itself as `broker.journal.corrupt-<unix time>` before
/// recovery rewrites it.
fn keep_aside(path: &Path) -> Result<PathBuf, PersistError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.with_extension(format!("journal.corrupt-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("journal.corrupt-{secs}-{n}"));
        n += 1;
    }
    std::fs::copy(path, &aside)
        .and_then(|_| File::open(&aside)?.sync_all())
        .map_err(|source| PersistError::KeepAside {
            path: aside.clone(),
            source,
        })?;
    Ok(aside)
}

fn report_corruption(path: &Path, recovery: &Recovery) {
    let regions: Vec<String> = recovery
        .corrupt
        .iter()
        .map(|(at, len)| format!("{len} bytes at offset {at}"))
        .collect();
    let aside = recovery
        .kept_aside
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    tracing::error!(
        path = %path.display(),
        kept_aside = %aside,
        "the broker journal is damaged in the middle ({}); every valid record around the damage \
         was recovered, but what the damaged records said (a session change, a subscription, \
         a queued message or its delivery) is lost. The original file is kept at {aside}. \
         Check the disk (dmesg, smartctl); remove the copy once you no longer need it",
        regions.join(", "),
    );
}

/// Writes the mirror to a temporary file, fsyncs it, renames it over the journal and
/// returns the journal opened for appending.
fn write_snapshot(path: &Path, mirror: &Mirror) -> std::io::Result<(File, u64)> {
    let tmp = path.with_extension("journal.tmp");
    let mut buf = Vec::with_capacity(4096);
    buf.extend_from_slice(MAGIC);
    for r in mirror.snapshot() {
        encode_record(&r, &mut buf);
    }
    {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(&buf)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((file, buf.len() as u64))
}

// ---- the mirror of persisted state ----

#[derive(Debug, Clone)]
struct MEntry {
    msg: u64,
    qos: QoS,
    retain: bool,
    sub_ids: Vec<u32>,
    pid: Option<u16>,
    released: bool,
}

#[derive(Debug, Default)]
struct MSession {
    owner: Option<Arc<str>>,
    expiry: u32,
    subs: BTreeMap<String, SubRecord>,
    entries: BTreeMap<u64, MEntry>,
    inbound_qos2: BTreeSet<u16>,
}

#[derive(Debug, Default)]
struct Mirror {
    sessions: HashMap<Arc<str>, MSession>,
    msgs: HashMap<u64, (Arc<Publication>, u32)>,
    retained: BTreeMap<String, (Arc<Publication>, Option<Arc<str>>)>,
    max_id: u64,
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

    fn apply(&mut self, r: &Record) {
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

    fn snapshot(&self) -> Vec<Record> {
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

    fn loaded(&self) -> Loaded {
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

// ---- binary encoding ----

fn checksum(data: &[u8]) -> u32 {
    // FNV-1a: detects torn writes and bit rot well enough for a local journal.
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
    fn opts(&mut self, o: &SubscribeOptions) {
        let v = o.qos.as_u8()
            | (u8::from(o.no_local) << 2)
            | (u8::from(o.retain_as_published) << 3)
            | ((o.retain_handling as u8) << 4);
        self.u8(v);
    }
    fn msg(&mut self, m: &Publication) {
        self.bytes(m.topic.as_bytes());
        self.bytes(&m.payload);
        self.u8(m.qos.as_u8() | (u8::from(m.retain) << 2));
        let now = Instant::now();
        let expires = m
            .expires_at
            .map(|t| unix_ms_now() + t.saturating_duration_since(now).as_millis() as u64);
        self.u64(expires.unwrap_or(0));
        let p = &m.props;
        self.u8(match p.payload_format_indicator {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        });
        self.opt_bytes(p.response_topic.as_deref().map(str::as_bytes));
        self.opt_bytes(p.correlation_data.as_deref());
        self.opt_bytes(p.content_type.as_deref().map(str::as_bytes));
        self.u32(p.user_properties.len() as u32);
        for (k, v) in &p.user_properties {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
    }
}

fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    let mut e = Enc(out);
    match r {
        Record::Session { client, expiry } => {
            e.u8(1);
            e.bytes(client.as_bytes());
            e.u32(*expiry);
        }
        Record::SessionEnd { client } => {
            e.u8(2);
            e.bytes(client.as_bytes());
        }
        Record::Sub {
            client,
            filter,
            rec,
        } => {
            e.u8(3);
            e.bytes(client.as_bytes());
            e.bytes(filter.as_bytes());
            e.opts(&rec.options);
            e.u32(rec.sub_id.unwrap_or(0));
        }
        Record::Unsub { client, filter } => {
            e.u8(4);
            e.bytes(client.as_bytes());
            e.bytes(filter.as_bytes());
        }
        Record::Msg { id, msg } => {
            e.u8(5);
            e.u64(*id);
            e.msg(msg);
        }
        Record::Enq {
            client,
            entry,
            msg,
            qos,
            retain,
            sub_ids,
        } => {
            e.u8(6);
            e.bytes(client.as_bytes());
            e.u64(*entry);
            e.u64(*msg);
            e.u8(qos.as_u8() | (u8::from(*retain) << 2));
            e.u32(sub_ids.len() as u32);
            for s in sub_ids {
                e.u32(*s);
            }
        }
        Record::Sent { client, entry, pid } => {
            e.u8(7);
            e.bytes(client.as_bytes());
            e.u64(*entry);
            e.u16(*pid);
        }
        Record::Released { client, entry } => {
            e.u8(8);
            e.bytes(client.as_bytes());
            e.u64(*entry);
        }
        Record::Done { client, entry } => {
            e.u8(9);
            e.bytes(client.as_bytes());
            e.u64(*entry);
        }
        Record::Retain { msg, owner: None } => {
            e.u8(10);
            e.msg(msg);
        }
        Record::Retain {
            msg,
            owner: Some(owner),
        } => {
            e.u8(14);
            e.msg(msg);
            e.bytes(owner.as_bytes());
        }
        Record::Unretain { topic } => {
            e.u8(11);
            e.bytes(topic.as_bytes());
        }
        Record::InQos2 { client, pid } => {
            e.u8(12);
            e.bytes(client.as_bytes());
            e.u16(*pid);
        }
        Record::InQos2Done { client, pid } => {
            e.u8(13);
            e.bytes(client.as_bytes());
            e.u16(*pid);
        }
        Record::Owner { client, principal } => {
            e.u8(15);
            e.bytes(client.as_bytes());
            e.bytes(principal.as_bytes());
        }
    }
    let body_len = (out.len() - start - 8) as u32;
    let sum = checksum(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
}

struct Dec<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn arc_str(&mut self) -> Option<Arc<str>> {
        Some(Arc::from(std::str::from_utf8(self.bytes()?).ok()?))
    }
    fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.bytes()?)),
        }
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.opt_bytes()? {
            None => Some(None),
            Some(b) => Some(Some(String::from_utf8(b.to_vec()).ok()?)),
        }
    }
    fn opts(&mut self) -> Option<SubscribeOptions> {
        let v = self.u8()?;
        Some(SubscribeOptions {
            qos: QoS::from_u8(v & 3)?,
            no_local: v & 4 != 0,
            retain_as_published: v & 8 != 0,
            retain_handling: match (v >> 4) & 3 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendIfNew,
                _ => RetainHandling::DoNotSend,
            },
        })
    }
    fn msg(&mut self) -> Option<Arc<Publication>> {
        let topic = ByteStr::from(self.string()?);
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let flags = self.u8()?;
        let expires = self.u64()?;
        let pfi = match self.u8()? {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        };
        let response_topic = self.opt_string()?;
        let correlation_data = self.opt_bytes()?.map(Bytes::copy_from_slice);
        let content_type = self.opt_string()?;
        let n = self.u32()?;
        let mut user_properties = Vec::new();
        for _ in 0..n {
            user_properties.push((self.string()?, self.string()?));
        }
        let props = PublishProperties {
            payload_format_indicator: pfi,
            response_topic,
            correlation_data,
            content_type,
            user_properties,
            ..PublishProperties::default()
        };
        let mut p = Publication::new(
            topic,
            payload,
            QoS::from_u8(flags & 3)?,
            flags & 4 != 0,
            props,
            0,
        );
        if expires != 0 {
            let left = expires.saturating_sub(unix_ms_now());
            p.expires_at = Instant::now().checked_add(Duration::from_millis(left));
            p.props.message_expiry_interval = Some(1);
        }
        Some(Arc::new(p))
    }
}

/// Decodes the record at `pos`; `None` at the end, or at a torn/corrupt record.
fn read_record(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if checksum(body) != sum {
        return None;
    }
    let mut d = Dec { data: body, pos: 0 };
    let rec = match d.u8()? {
        1 => Record::Session {
            client: d.arc_str()?,
            expiry: d.u32()?,
        },
        2 => Record::SessionEnd {
            client: d.arc_str()?,
        },
        3 => {
            let client = d.arc_str()?;
            let filter = d.string()?;
            let options = d.opts()?;
            let sub_id = Some(d.u32()?).filter(|v| *v != 0);
            Record::Sub {
                client,
                filter,
                rec: SubRecord { options, sub_id },
            }
        }
        4 => Record::Unsub {
            client: d.arc_str()?,
            filter: d.string()?,
        },
        5 => Record::Msg {
            id: d.u64()?,
            msg: d.msg()?,
        },
        6 => {
            let client = d.arc_str()?;
            let entry = d.u64()?;
            let msg = d.u64()?;
            let flags = d.u8()?;
            let n = d.u32()?;
            let mut sub_ids = Vec::new();
            for _ in 0..n {
                sub_ids.push(d.u32()?);
            }
            Record::Enq {
                client,
                entry,
                msg,
                qos: QoS::from_u8(flags & 3)?,
                retain: flags & 4 != 0,
                sub_ids,
            }
        }
        7 => Record::Sent {
            client: d.arc_str()?,
            entry: d.u64()?,
            pid: d.u16()?,
        },
        8 => Record::Released {
            client: d.arc_str()?,
            entry: d.u64()?,
        },
        9 => Record::Done {
            client: d.arc_str()?,
            entry: d.u64()?,
        },
        10 => Record::Retain {
            msg: d.msg()?,
            owner: None,
        },
        11 => Record::Unretain { topic: d.string()? },
        12 => Record::InQos2 {
            client: d.arc_str()?,
            pid: d.u16()?,
        },
        13 => Record::InQos2Done {
            client: d.arc_str()?,
            pid: d.u16()?,
        },
        14 => Record::Retain {
            msg: d.msg()?,
            owner: Some(d.arc_str()?),
        },
        15 => Record::Owner {
            client: d.arc_str()?,
            principal: d.arc_str()?,
        },
        _ => return None,
    };
    if d.pos != body.len() {
        // Trailing bytes: not a record this version wrote (helps resynchronisation reject
        // a false start inside another record's body).
        return None;
    }
    Some((rec, pos + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &str) -> Arc<Publication> {
        let props = PublishProperties {
            user_properties: vec![("k".into(), "v".into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        Arc::new(Publication::new(
            ByteStr::from(topic),
            Bytes::copy_from_slice(payload.as_bytes()),
            QoS::AtLeastOnce,
            false,
            props,
            0,
        ))
    }

    #[test]
    fn recovers_state_and_ignores_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let c: Arc<str> = Arc::from("c1");
        {
            let (j, loaded) = Journal::open(dir.path()).unwrap();
            assert!(loaded.sessions.is_empty());
            j.append(Record::Session {
                client: c.clone(),
                expiry: 100,
            });
            let opts = SubscribeOptions::qos(QoS::AtLeastOnce);
            j.append(Record::Sub {
                client: c.clone(),
                filter: "a/#".into(),
                rec: SubRecord {
                    options: opts,
                    sub_id: Some(7),
                },
            });
            let m = j.next_id();
            j.append(Record::Msg {
                id: m,
                msg: msg("a/b", "one"),
            });
            let e1 = j.next_id();
            j.append(Record::Enq {
                client: c.clone(),
                entry: e1,
                msg: m,
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: vec![7],
            });
            let e2 = j.next_id();
            j.append(Record::Enq {
                client: c.clone(),
                entry: e2,
                msg: m,
                qos: QoS::AtLeastOnce,
                retain: false,
                sub_ids: vec![],
            });
            j.append(Record::Sent {
                client: c.clone(),
                entry: e1,
                pid: 5,
            });
            j.append(Record::Done {
                client: c.clone(),
                entry: e2,
            });
            j.append(Record::Retain {
                msg: msg("r", "kept"),
                owner: None,
            });
            let seq = j.append(Record::InQos2 {
                client: c.clone(),
                pid: 9,
            });
            j.close();
            assert_eq!(j.durable(), seq);
        }
        // A torn record at the end must be ignored.
        let path = dir.path().join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let (j, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded.sessions.len(), 1);
        let (name, s) = &loaded.sessions[0];
        assert_eq!(&**name, "c1");
        assert_eq!(s.expiry, 100);
        assert_eq!(s.subs["a/#"].sub_id, Some(7));
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].pid, Some(5));
        assert_eq!(s.entries[0].sub_ids, vec![7]);
        assert_eq!(&s.entries[0].msg.payload[..], b"one");
        assert_eq!(
            s.entries[0].msg.props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        assert_eq!(s.inbound_qos2, vec![9]);
        assert_eq!(loaded.retained.len(), 1);
        assert!(j.next_id() > 3);
    }

    /// Writes sessions `a`, `b` (owned by `user:b`, with a subscription) and `c`; returns
    /// the journal's bytes and the offsets of its records.
    fn three_sessions(dir: &Path) -> (Vec<u8>, Vec<usize>) {
        {
            let (j, _) = Journal::open(dir).unwrap();
            for name in ["a", "b", "c"] {
                j.append(Record::Session {
                    client: Arc::from(name),
                    expiry: 60,
                });
                if name == "b" {
                    j.append(Record::Owner {
                        client: Arc::from(name),
                        principal: Arc::from("user:b"),
                    });
                    j.append(Record::Sub {
                        client: Arc::from(name),
                        filter: "t/#".into(),
                        rec: SubRecord {
                            options: SubscribeOptions::qos(QoS::AtLeastOnce),
                            sub_id: None,
                        },
                    });
                }
            }
            j.close();
        }
        let data = std::fs::read(dir.join(FILE_NAME)).unwrap();
        let mut offsets = Vec::new();
        let mut pos = MAGIC.len();
        while let Some((_, next)) = read_record(&data, pos) {
            offsets.push(pos);
            pos = next;
        }
        assert_eq!(pos, data.len());
        (data, offsets)
    }

    fn names(loaded: &Loaded) -> Vec<String> {
        let mut v: Vec<String> = loaded.sessions.iter().map(|(n, _)| n.to_string()).collect();
        v.sort();
        v
    }

    /// The offset of the `Session` record of client `name`.
    fn session_record(data: &[u8], offsets: &[usize], name: &str) -> usize {
        *offsets
            .iter()
            .find(|&&o| {
                matches!(read_record(data, o), Some((Record::Session { client, .. }, _)) if &*client == name)
            })
            .unwrap()
    }

    #[test]
    fn a_corrupt_record_in_the_middle_is_skipped_and_the_original_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut data, offsets) = three_sessions(dir.path());
        let at = session_record(&data, &offsets, "b");
        // Bit rot in the body of b's Session record: the checksum no longer matches.
        data[at + 10] ^= 0x40;
        std::fs::write(dir.path().join(FILE_NAME), &data).unwrap();

        let (_, loaded) = Journal::open(dir.path()).unwrap();
        // b's Session record is lost, so its later Owner/Sub records have no session to
        // attach to; a and c (after the damage) are recovered.
        assert_eq!(names(&loaded), ["a", "c"]);
        let r = &loaded.recovery;
        assert_eq!(r.torn_tail_bytes, 0);
        assert_eq!(r.corrupt.len(), 1);
        assert_eq!(r.corrupt[0].0, at);
        let aside = r.kept_aside.as_ref().expect("original kept aside");
        assert!(
            aside
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("broker.journal.corrupt-")
        );
        assert_eq!(
            std::fs::read(aside).unwrap(),
            data,
            "the copy is the original"
        );
        // The rewritten journal is clean: the next start reports nothing.
        let (_, again) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&again), ["a", "c"]);
        assert_eq!(again.recovery, Recovery::default());
    }

    #[test]
    fn a_corrupt_length_in_the_middle_resynchronises_on_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut data, offsets) = three_sessions(dir.path());
        let at = session_record(&data, &offsets, "a");
        // The length field points far away: found again by scanning.
        data[at + 2] = 0x7f;
        std::fs::write(dir.path().join(FILE_NAME), &data).unwrap();
        let (_, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&loaded), ["b", "c"]);
        let b = &loaded.sessions.iter().find(|(n, _)| &**n == "b").unwrap().1;
        assert_eq!(b.owner.as_deref(), Some("user:b"));
        assert!(b.subs.contains_key("t/#"));
        assert_eq!(loaded.recovery.corrupt.len(), 1);
        assert!(loaded.recovery.kept_aside.is_some());
    }

    #[test]
    fn only_a_torn_tail_is_truncated_and_nothing_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (data, offsets) = three_sessions(dir.path());
        let last = *offsets.last().unwrap();
        // The last record half written.
        std::fs::write(dir.path().join(FILE_NAME), &data[..last + 5]).unwrap();
        let (_, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(names(&loaded), ["a", "b"]);
        assert_eq!(loaded.recovery.torn_tail_bytes, 5);
        assert!(loaded.recovery.corrupt.is_empty());
        assert!(loaded.recovery.kept_aside.is_none());
        let entries: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["broker.journal"]);
    }

    #[test]
    fn retained_owners_and_session_owners_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (j, _) = Journal::open(dir.path()).unwrap();
            j.append(Record::Retain {
                msg: msg("r/1", "x"),
                owner: Some(Arc::from("user:a")),
            });
            j.append(Record::Retain {
                msg: msg("r/2", "y"),
                owner: None,
            });
            j.append(Record::Session {
                client: Arc::from("legacy"),
                expiry: 5,
            });
            j.close();
        }
        // Twice: once from the appended records, once from the compacted snapshot.
        for _ in 0..2 {
            let (_, loaded) = Journal::open(dir.path()).unwrap();
            let owners: Vec<Option<&str>> =
                loaded.retained.iter().map(|(_, o)| o.as_deref()).collect();
            assert_eq!(owners, [Some("user:a"), None]);
            assert_eq!(loaded.sessions[0].1.owner, None);
        }
    }

    #[test]
    fn compaction_keeps_live_state_and_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let live: Arc<str> = Arc::from("live");
        {
            let (j, _) = Journal::open_with(dir.path(), 4096).unwrap();
            j.append(Record::Session {
                client: live.clone(),
                expiry: 5,
            });
            for i in 0..2000 {
                let c: Arc<str> = Arc::from(format!("churn-{i}"));
                j.append(Record::Session {
                    client: c.clone(),
                    expiry: 60,
                });
                let m = j.next_id();
                j.append(Record::Msg {
                    id: m,
                    msg: msg("t", "payload"),
                });
                let e = j.next_id();
                j.append(Record::Enq {
                    client: c.clone(),
                    entry: e,
                    msg: m,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    sub_ids: vec![],
                });
                j.append(Record::SessionEnd { client: c });
                if i % 100 == 0 {
                    // Let the writer commit (and compact) between batches.
                    let seq = j.append(Record::Session {
                        client: live.clone(),
                        expiry: 5,
                    });
                    while j.durable() < seq {
                        std::thread::yield_now();
                    }
                }
            }
            j.close();
        }
        let size = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert!(size < 64 * 1024, "journal not compacted: {size} bytes");
        let (_, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded.sessions.len(), 1);
        assert_eq!(&*loaded.sessions[0].0, "live");
    }
}
