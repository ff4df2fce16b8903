//! The journal writer: appends from the broker go into a pending list under a mutex; one
//! thread writes everything pending, fsyncs once (group commit), wakes the acks waiting for
//! it, and compacts by snapshot + rename when the file has grown enough.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use tokio::sync::Notify;

use super::{
    Loaded, PersistError, Recovery, keep_aside,
    mirror::Mirror,
    record::{MAGIC, Record, encode_record},
    replay, report_corruption,
};

pub(super) const FILE_NAME: &str = "broker.journal";
/// Compact once the journal is this much larger than the last snapshot (and at least 8 MiB).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN: u64 = 8 << 20;

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
    pub(super) fn open_with(
        dir: &Path,
        compact_min: u64,
    ) -> Result<(Journal, Loaded), PersistError> {
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
