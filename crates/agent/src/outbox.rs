//! The outbox: every reading and input event goes through a bounded on-disk queue and is sent
//! from there, in id order, and removed only once the broker acknowledged it (QoS 1).
//!
//! SQLite (one file, WAL) rather than an append log: each push and each removal is a
//! transaction, so a power cut or a full disk can lose at most the item being written, never
//! corrupt what is already queued, and `AUTOINCREMENT` gives ids that are never reused, even
//! after the queue ran empty. The size cap is enforced by SQLite itself (`max_page_count`), so
//! hitting it takes exactly the same path as a real full disk (`SQLITE_FULL`).

use std::{
    path::Path,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use proto::payload::{Edge, Event, Reading};
use serde_json::Value;
use sqlx::{
    Row,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
    },
};
use tokio::sync::Notify;

use crate::config::OutboxConfig;

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error(
        "the outbox is full (disk full or its size limit of {max_bytes} bytes reached); new readings are not queued until it drains"
    )]
    Full { max_bytes: u64 },
    #[error("outbox database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Something to send later.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Telemetry {
        name: String,
        ts: i64,
        value: f64,
    },
    Event {
        name: String,
        ts: i64,
        value: Value,
        edge: Option<Edge>,
    },
}

/// A queued item with its id, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub id: i64,
    pub item: Item,
}

impl Queued {
    /// Topic under `devices/{device_id}/`.
    pub fn topic(&self, device_id: &str) -> String {
        match &self.item {
            Item::Telemetry { name, .. } => proto::topics::telemetry(device_id, name),
            Item::Event { name, .. } => proto::topics::event(device_id, name),
        }
    }

    /// The JSON payload, carrying the id so the server stores each item once.
    pub fn payload(&self) -> Vec<u8> {
        let id = u64::try_from(self.id).unwrap_or(0);
        match &self.item {
            Item::Telemetry { ts, value, .. } => serde_json::to_vec(&Reading {
                id,
                ts: *ts,
                value: *value,
            }),
            Item::Event {
                ts, value, edge, ..
            } => serde_json::to_vec(&Event {
                id,
                ts: *ts,
                value: value.clone(),
                edge: *edge,
            }),
        }
        .unwrap_or_default()
    }
}

/// The queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    max_entries: u64,
    max_bytes: u64,
    len: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    full: AtomicBool,
    notify: Notify,
}

impl Outbox {
    /// Opens (or creates) the queue file.
    pub async fn open(path: &Path, config: &OutboxConfig) -> Result<Outbox, OutboxError> {
        let open_err = |source| OutboxError::Open {
            path: path.display().to_string(),
            source,
        };
        let max_pages = (config.max_bytes / PAGE_SIZE).max(4);
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_err)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .page_size(PAGE_SIZE as u32)
            .pragma("max_page_count", max_pages.to_string())
            // A small page cache keeps the agent's memory small; the queue is read in order.
            .pragma("cache_size", "-256");
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                ts INTEGER NOT NULL,
                value TEXT NOT NULL,
                edge TEXT
            )",
        )
        .execute(&pool)
        .await
        .map_err(open_err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(open_err)?;
        let len: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&pool)
            .await
            .map_err(open_err)?;
        let dropped: Option<i64> =
            sqlx::query_scalar("SELECT value FROM counters WHERE name = 'dropped'")
                .fetch_optional(&pool)
                .await
                .map_err(open_err)?;
        Ok(Outbox {
            inner: Arc::new(Inner {
                pool,
                max_entries: config.max_entries,
                max_bytes: config.max_bytes,
                len: AtomicU64::new(len as u64),
                dropped: AtomicU64::new(dropped.unwrap_or(0) as u64),
                rejected: AtomicU64::new(0),
                full: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        })
    }

    /// Queues an item and returns its id. When the queue holds `max_entries`, the oldest are
    /// dropped (and counted). When the file cannot grow (full disk or size cap), the item is
    /// refused with [`OutboxError::Full`] and everything already queued stays intact.
    pub async fn push(&self, item: Item) -> Result<i64, OutboxError> {
        let (kind, name, ts, value, edge) = match &item {
            Item::Telemetry { name, ts, value } => (
                "telemetry",
                name,
                *ts,
                Value::from(*value).to_string(),
                None,
            ),
            Item::Event {
                name,
                ts,
                value,
                edge,
            } => (
                "event",
                name,
                *ts,
                value.to_string(),
                edge.map(|e| {
                    if e == Edge::Rising {
                        "rising"
                    } else {
                        "falling"
                    }
                }),
            ),
        };
        let result = async {
            let mut tx = self.inner.pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO outbox (kind, name, ts, value, edge) VALUES (?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(kind)
            .bind(name)
            .bind(ts)
            .bind(&value)
            .bind(edge)
            .fetch_one(&mut *tx)
            .await?;
            let len: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&mut *tx).await?;
            let excess = (len as u64).saturating_sub(self.inner.max_entries);
            if excess > 0 {
                sqlx::query("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)")
                    .bind(excess as i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?)
                     ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                )
                .bind(excess as i64)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>((id, len as u64 - excess, excess))
        }
        .await;
        match result {
            Ok((id, len, excess)) => {
                self.inner.len.store(len, Ordering::Relaxed);
                if excess > 0 {
                    let total = self.inner.dropped.fetch_add(excess, Ordering::Relaxed) + excess;
                    if total == excess || total.is_power_of_two() {
                        tracing::warn!(
                            dropped_total = total,
                            max_entries = self.inner.max_entries,
                            "outbox full: dropping the oldest queued items"
                        );
                    }
                }
                if self.inner.full.swap(false, Ordering::Relaxed) {
                    tracing::info!("the outbox accepts items again");
                }
                self.inner.notify.notify_one();
                Ok(id)
            }
            Err(err) if is_full(&err) => {
                self.inner.rejected.fetch_add(1, Ordering::Relaxed);
                if !self.inner.full.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        max_bytes = self.inner.max_bytes,
                        "the outbox cannot grow (disk full or size limit reached): new readings and events are NOT queued until it drains; queued ones are kept"
                    );
                }
                Err(OutboxError::Full {
                    max_bytes: self.inner.max_bytes,
                })
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Up to `limit` items with ids greater than `after`, oldest first.
    pub async fn peek(&self, after: i64, limit: u32) -> Result<Vec<Queued>, OutboxError> {
        let rows = sqlx::query(
            "SELECT id, kind, name, ts, value, edge FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.inner.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let name: String = row.try_get("name")?;
            let ts: i64 = row.try_get("ts")?;
            let value: String = row.try_get("value")?;
            let edge: Option<String> = row.try_get("edge")?;
            let value: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
            let item = if kind == "telemetry" {
                Item::Telemetry {
                    name,
                    ts,
                    value: value.as_f64().unwrap_or(f64::NAN),
                }
            } else {
                let edge = edge.map(|e| {
                    if e == "rising" {
                        Edge::Rising
                    } else {
                        Edge::Falling
                    }
                });
                Item::Event {
                    name,
                    ts,
                    value,
                    edge,
                }
            };
            out.push(Queued { id, item });
        }
        Ok(out)
    }

    /// Removes an item the broker acknowledged.
    pub async fn remove(&self, id: i64) -> Result<(), OutboxError> {
        let done = sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(id)
            .execute(&self.inner.pool)
            .await?;
        if done.rows_affected() > 0 {
            let _ = self
                .inner
                .len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        Ok(())
    }

    /// Removes every item up to and including `id`: the broker acknowledged them in order.
    pub async fn remove_through(&self, id: i64) -> Result<(), OutboxError> {
        let done = sqlx::query("DELETE FROM outbox WHERE id <= ?")
            .bind(id)
            .execute(&self.inner.pool)
            .await?;
        let n = done.rows_affected();
        let _ = self
            .inner
            .len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                Some(len.saturating_sub(n))
            });
        Ok(())
    }

    /// Resolves when an item was pushed since the last call (or immediately if one was
    /// pushed while nobody waited).
    pub async fn pushed(&self) {
        self.inner.notify.notified().await
    }

    pub fn len(&self) -> u64 {
        self.inner.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items dropped because the queue was full, over the queue file's lifetime.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Items refused since start because the file could not grow.
    pub fn rejected(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    pub async fn close(&self) {
        self.inner.pool.close().await;
    }
}

fn is_full(err: &sqlx::Error) -> bool {
    match err {
        // SQLITE_FULL (13), also what a real ENOSPC turns into.
        sqlx::Error::Database(e) => {
            e.code().is_some_and(|c| c == "13") || e.message().contains("full")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(i: i64) -> Item {
        Item::Telemetry {
            name: "t".into(),
            ts: 1_700_000_000_000 + i,
            value: i as f64,
        }
    }

    #[tokio::test]
    async fn ids_grow_and_survive_reopen_even_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let config = OutboxConfig::default();
        let ob = Outbox::open(&path, &config).await.unwrap();
        let a = ob.push(reading(1)).await.unwrap();
        let b = ob
            .push(Item::Event {
                name: "button".into(),
                ts: 5,
                value: Value::Bool(true),
                edge: Some(Edge::Rising),
            })
            .await
            .unwrap();
        assert!(b > a);
        let items = ob.peek(0, 10).await.unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].topic("d1"), "devices/d1/event/button");
        let payload: serde_json::Value = serde_json::from_slice(&items[1].payload()).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"id": b, "ts": 5, "value": true, "edge": "rising"})
        );
        ob.remove(a).await.unwrap();
        ob.remove(b).await.unwrap();
        assert!(ob.is_empty());
        ob.close().await;
        let ob = Outbox::open(&path, &config).await.unwrap();
        let c = ob.push(reading(2)).await.unwrap();
        assert!(c > b, "ids are never reused: {c} after {b}");
        assert_eq!(ob.peek(0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn full_queue_drops_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let config = OutboxConfig {
            max_entries: 5,
            ..OutboxConfig::default()
        };
        let ob = Outbox::open(&dir.path().join("o.db"), &config)
            .await
            .unwrap();
        for i in 0..8 {
            ob.push(reading(i)).await.unwrap();
        }
        assert_eq!(ob.len(), 5);
        assert_eq!(ob.dropped(), 3);
        let values: Vec<f64> = ob
            .peek(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|q| match q.item {
                Item::Telemetry { value, .. } => value,
                Item::Event { .. } => -1.0,
            })
            .collect();
        assert_eq!(values, vec![3.0, 4.0, 5.0, 6.0, 7.0], "the oldest went");
        ob.close().await;
        let ob = Outbox::open(&dir.path().join("o.db"), &config)
            .await
            .unwrap();
        assert_eq!(ob.dropped(), 3, "the count is persisted");
    }

    #[tokio::test]
    async fn full_disk_stops_queueing_without_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.db");
        // A few pages: the schema fills most of it.
        let config = OutboxConfig {
            max_bytes: 6 * PAGE_SIZE,
            ..OutboxConfig::default()
        };
        let ob = Outbox::open(&path, &config).await.unwrap();
        let big = "x".repeat(600);
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..200 {
            let item = Item::Event {
                name: "in".into(),
                ts: i,
                value: Value::String(big.clone()),
                edge: None,
            };
            match ob.push(item).await {
                Ok(id) => accepted.push(id),
                Err(OutboxError::Full { .. }) => refused += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(
            !accepted.is_empty() && refused > 0,
            "accepted {} refused {refused}",
            accepted.len()
        );
        assert_eq!(ob.rejected(), refused);
        // Everything accepted is still there, intact and in order.
        let queued = ob.peek(0, 1000).await.unwrap();
        assert_eq!(queued.iter().map(|q| q.id).collect::<Vec<_>>(), accepted);
        assert!(
            queued.iter().all(
                |q| matches!(&q.item, Item::Event { value: Value::String(s), .. } if *s == big)
            )
        );
        // Draining makes room again.
        for id in &accepted {
            ob.remove(*id).await.unwrap();
        }
        ob.push(reading(1))
            .await
            .expect("room again after draining");
        ob.close().await;
        let ob = Outbox::open(&path, &config).await.unwrap();
        assert_eq!(ob.len(), 1);
        let ok: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&ob.inner.pool)
            .await
            .unwrap();
        assert_eq!(ok, "ok");
    }
}
