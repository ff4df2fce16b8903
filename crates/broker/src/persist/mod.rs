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
//! `replay`).
//!
//! Session expiry across a restart: an offline persistent session's expiry timer restarts
//! when the broker starts (the time it was offline before the restart is not recorded).
//!
//! Layout: `record` (the record format: encoding, decoding, checksums), `mirror` (the
//! persisted state rebuilt from records, which the writer keeps for compaction and which
//! recovery hands to the broker), `journal` (the writer thread, group commit, compaction),
//! and recovery here.

mod journal;
mod mirror;
mod record;

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

pub use journal::Journal;
pub use mirror::Loaded;
pub use record::Record;

use mirror::Mirror;
use record::{MAGIC, encode_record, read_record};

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

#[cfg(test)]
mod tests {
    use std::{fs::OpenOptions, io::Write, sync::Arc};

    use bytes::Bytes;
    use codec::{ByteStr, PublishProperties, QoS, SubscribeOptions};

    use super::{journal::FILE_NAME, *};
    use crate::{message::Publication, session::SubRecord};

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
