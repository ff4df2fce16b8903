//! Telemetry: numeric readings per (device, sensor) series, stored once per timestamp,
//! downsampled on query.
//!
//! Raw readings live in `telemetry (series_id, ts)`; an hourly rollup (`telemetry_hourly`:
//! min, max, sum, count per series and hour) is maintained in the same transaction as every
//! insert, from exactly the rows that were new (`RETURNING`), so replays never double-count.
//! Queries with buckets of an hour or more read whole hours from the rollup and only the
//! partial hours at the edges from the raw table: a year of one-minute data (525,600 rows)
//! becomes ~8,800 rollup rows plus at most two hours of raw rows.

use std::{collections::HashMap, sync::OnceLock, time::Duration};

use crate::{
    Backend, Error, Store,
    row::{f64_at, i64_at, str_at},
};

/// Readings are kept this long unless a series says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

const HOUR_MS: i64 = 3_600_000;
/// Most points one query may ask for.
pub const MAX_POINTS: u32 = 10_000;
/// Rows per INSERT statement, as a power of two (SQLite allows 32,766 bound parameters).
const MAX_INSERT_CHUNK_LOG2: u32 = 10;
const MAX_ROLLUP_CHUNK_LOG2: u32 = 8;

/// One reading to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device_id: String,
    pub sensor: String,
    pub ts: i64,
    pub value: f64,
}

impl Sample {
    pub fn new(
        device_id: impl Into<String>,
        sensor: impl Into<String>,
        ts: i64,
        value: f64,
    ) -> Sample {
        Sample {
            device_id: device_id.into(),
            sensor: sensor.into(),
            ts,
            value,
        }
    }
}

/// One downsampled bucket: readings with `ts <= t < ts + bucket_ms`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bucket {
    pub ts: i64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Downsampled {
    pub bucket_ms: i64,
    pub points: Vec<Bucket>,
}

/// `store.telemetry()`.
pub struct Telemetry<'a> {
    pub(crate) store: &'a Store,
}

#[derive(Clone, Copy)]
struct Agg {
    min: f64,
    max: f64,
    sum: f64,
    count: i64,
}

/// Placeholders for bulk statements. SQLite gets anonymous `?`: sqlx looks up every
/// parameter's name, and SQLite's lookup walks the list of named parameters, which makes
/// `$N` quadratic in the row count (it cost two thirds of the insert time).
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => format!("${n}"),
    }
}

fn values_sql(backend: Backend, head: &str, columns: usize, rows: usize, tail: &str) -> String {
    let mut sql = String::from(head);
    for i in 0..rows {
        sql.push_str(if i == 0 { "(" } else { ",(" });
        for c in 0..columns {
            if c > 0 {
                sql.push(',');
            }
            sql.push_str(&placeholder(backend, columns * i + c + 1));
        }
        sql.push(')');
    }
    sql.push_str(tail);
    sql
}

/// `INSERT ... VALUES (..),(..)` statements for 2^k rows, built once per backend.
fn insert_sql(backend: Backend, log2: u32) -> &'static str {
    static SQL: OnceLock<[Vec<String>; 2]> = OnceLock::new();
    let build = |backend| {
        (0..=MAX_INSERT_CHUNK_LOG2)
            .map(|k| {
                values_sql(
                    backend,
                    "INSERT INTO telemetry (series_id, ts, value) VALUES ",
                    3,
                    1 << k,
                    " ON CONFLICT DO NOTHING RETURNING series_id, ts, value",
                )
            })
            .collect()
    };
    &SQL.get_or_init(|| [build(Backend::Sqlite), build(Backend::Postgres)])[backend as usize]
        [log2 as usize]
}

fn rollup_sql(backend: Backend, log2: u32) -> &'static str {
    static SQL: OnceLock<[Vec<String>; 2]> = OnceLock::new();
    // CASE instead of MIN()/LEAST(): the two-argument forms differ between SQLite and
    // PostgreSQL.
    let build = |backend| {
        (0..=MAX_ROLLUP_CHUNK_LOG2)
            .map(|k| {
                values_sql(
                    backend,
                    "INSERT INTO telemetry_hourly (series_id, hour, vmin, vmax, vsum, cnt) VALUES ",
                    6,
                    1 << k,
                    " ON CONFLICT (series_id, hour) DO UPDATE SET \
                     vmin = CASE WHEN excluded.vmin < telemetry_hourly.vmin THEN excluded.vmin ELSE telemetry_hourly.vmin END, \
                     vmax = CASE WHEN excluded.vmax > telemetry_hourly.vmax THEN excluded.vmax ELSE telemetry_hourly.vmax END, \
                     vsum = telemetry_hourly.vsum + excluded.vsum, \
                     cnt = telemetry_hourly.cnt + excluded.cnt",
                )
            })
            .collect()
    };
    &SQL.get_or_init(|| [build(Backend::Sqlite), build(Backend::Postgres)])[backend as usize]
        [log2 as usize]
}

/// Splits `n` into chunks of 2^k (largest first, capped at 2^max_log2) so that only a few
/// distinct statements exist and each stays in the prepared-statement cache.
fn chunks(mut n: usize, max_log2: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let max = 1usize << max_log2;
    while n >= max {
        out.push(max_log2);
        n -= max;
    }
    for k in (0..max_log2).rev() {
        if n & (1 << k) != 0 {
            out.push(k);
        }
    }
    out
}

/// How many epoch-aligned buckets of `bucket` ms the range `[from, to)` touches.
fn bucket_count(from: i64, to: i64, bucket: i64) -> i64 {
    (to - 1).div_euclid(bucket) - from.div_euclid(bucket) + 1
}

fn floor_hour(ts: i64) -> i64 {
    ts.div_euclid(HOUR_MS) * HOUR_MS
}

impl Telemetry<'_> {
    /// The series id for (device, sensor), created if needed.
    async fn series_id(&self, device_id: &str, sensor: &str) -> Result<i64, Error> {
        let key = (device_id.to_string(), sensor.to_string());
        if let Some(id) = self
            .store
            .series_cache()
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
        {
            return Ok(id);
        }
        sqlx::query("INSERT INTO series (device_id, sensor, retention_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(device_id)
            .bind(sensor)
            .bind(DEFAULT_RETENTION.as_millis() as i64)
            .execute(self.store.pool())
            .await?;
        let id = self
            .find_series(device_id, sensor)
            .await?
            .ok_or_else(|| Error::Corrupt {
                what: "series",
                message: format!("series {device_id}/{sensor} vanished right after it was created"),
            })?;
        if let Ok(mut cache) = self.store.series_cache().lock() {
            cache.insert(key, id);
        }
        Ok(id)
    }

    async fn find_series(&self, device_id: &str, sensor: &str) -> Result<Option<i64>, Error> {
        Ok(
            sqlx::query_scalar("SELECT id FROM series WHERE device_id = $1 AND sensor = $2")
                .bind(device_id)
                .bind(sensor)
                .fetch_optional(self.store.pool())
                .await?,
        )
    }

    /// Stores readings in one transaction. A (device, sensor, ts) that is already stored is
    /// skipped (replays are harmless), as are non-finite values. Returns how many were new.
    pub async fn insert_batch(&self, samples: &[Sample]) -> Result<u64, Error> {
        let mut rows: Vec<(i64, i64, f64)> = Vec::with_capacity(samples.len());
        let mut ids: HashMap<(&str, &str), i64> = HashMap::new();
        for s in samples {
            if !s.value.is_finite() {
                continue;
            }
            let id = match ids.get(&(s.device_id.as_str(), s.sensor.as_str())) {
                Some(id) => *id,
                None => {
                    let id = self.series_id(&s.device_id, &s.sensor).await?;
                    ids.insert((&s.device_id, &s.sensor), id);
                    id
                }
            };
            rows.push((id, s.ts, s.value));
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let mut rollup: HashMap<(i64, i64), Agg> = HashMap::new();
        let mut inserted = 0u64;
        let mut tx = self.store.pool().begin().await?;
        let mut offset = 0;
        for log2 in chunks(rows.len(), MAX_INSERT_CHUNK_LOG2) {
            let n = 1usize << log2;
            let mut query = sqlx::query(insert_sql(self.store.backend(), log2));
            for &(id, ts, value) in &rows[offset..offset + n] {
                query = query.bind(id).bind(ts).bind(value);
            }
            offset += n;
            for row in query.fetch_all(&mut *tx).await? {
                let (id, ts, value) = (
                    i64_at(&row, "series_id")?,
                    i64_at(&row, "ts")?,
                    f64_at(&row, "value")?,
                );
                inserted += 1;
                rollup
                    .entry((id, floor_hour(ts)))
                    .and_modify(|a| {
                        a.min = a.min.min(value);
                        a.max = a.max.max(value);
                        a.sum += value;
                        a.count += 1;
                    })
                    .or_insert(Agg {
                        min: value,
                        max: value,
                        sum: value,
                        count: 1,
                    });
            }
        }
        let rollup: Vec<((i64, i64), Agg)> = rollup.into_iter().collect();
        let mut offset = 0;
        for log2 in chunks(rollup.len(), MAX_ROLLUP_CHUNK_LOG2) {
            let n = 1usize << log2;
            let mut query = sqlx::query(rollup_sql(self.store.backend(), log2));
            for ((id, hour), a) in &rollup[offset..offset + n] {
                query = query
                    .bind(*id)
                    .bind(*hour)
                    .bind(a.min)
                    .bind(a.max)
                    .bind(a.sum)
                    .bind(a.count);
            }
            offset += n;
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Readings of one series with `from <= ts < to`, downsampled into at most about `points`
    /// buckets (min/avg/max/count each). Buckets are aligned to multiples of `bucket_ms`
    /// since the epoch; buckets of an hour or more are whole hours and read the rollup.
    pub async fn query(
        &self,
        device_id: &str,
        sensor: &str,
        from: i64,
        to: i64,
        points: u32,
    ) -> Result<Downsampled, Error> {
        if to <= from {
            return Err(Error::Invalid {
                field: "to",
                message: format!("'to' ({to}) must be after 'from' ({from})"),
            });
        }
        if points == 0 || points > MAX_POINTS {
            return Err(Error::Invalid {
                field: "points",
                message: format!("ask for 1 to {MAX_POINTS} points, not {points}"),
            });
        }
        let span = to - from;
        let points = points as i64;
        let mut bucket = ((span + points - 1) / points).max(1);
        // Buckets are epoch-aligned, so the range may straddle one more than span/bucket:
        // widen until it fits.
        while bucket_count(from, to, bucket) > points {
            bucket += (bucket / points).max(1);
        }
        let Some(series) = self.find_series(device_id, sensor).await? else {
            return Ok(Downsampled {
                bucket_ms: bucket,
                points: Vec::new(),
            });
        };
        let first_full_hour = floor_hour(from + HOUR_MS - 1);
        let last_full_hour_end = floor_hour(to);
        let rows = if bucket >= HOUR_MS && first_full_hour < last_full_hour_end {
            bucket = (bucket + HOUR_MS - 1) / HOUR_MS * HOUR_MS;
            while bucket_count(from, to, bucket) > points {
                bucket += HOUR_MS;
            }
            sqlx::query(
                "SELECT (h / $2) * $2 AS b, MIN(vmin) AS vmin, MAX(vmax) AS vmax, SUM(vsum) AS vsum, \
                 CAST(SUM(cnt) AS BIGINT) AS cnt FROM ( \
                   SELECT hour AS h, vmin, vmax, vsum, cnt FROM telemetry_hourly \
                     WHERE series_id = $1 AND hour >= $3 AND hour < $4 \
                   UNION ALL \
                   SELECT ts AS h, value AS vmin, value AS vmax, value AS vsum, 1 AS cnt FROM telemetry \
                     WHERE series_id = $1 AND ts >= $5 AND ts < $3 \
                   UNION ALL \
                   SELECT ts AS h, value AS vmin, value AS vmax, value AS vsum, 1 AS cnt FROM telemetry \
                     WHERE series_id = $1 AND ts >= $4 AND ts < $6 \
                 ) AS t GROUP BY b ORDER BY b",
            )
            .bind(series)
            .bind(bucket)
            .bind(first_full_hour)
            .bind(last_full_hour_end)
            .bind(from)
            .bind(to)
            .fetch_all(self.store.pool())
            .await?
        } else {
            sqlx::query(
                "SELECT (ts / $2) * $2 AS b, MIN(value) AS vmin, MAX(value) AS vmax, SUM(value) AS vsum, \
                 COUNT(*) AS cnt FROM telemetry WHERE series_id = $1 AND ts >= $3 AND ts < $4 GROUP BY b ORDER BY b",
            )
            .bind(series)
            .bind(bucket)
            .bind(from)
            .bind(to)
            .fetch_all(self.store.pool())
            .await?
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let count = i64_at(row, "cnt")?;
            let sum = f64_at(row, "vsum")?;
            out.push(Bucket {
                ts: i64_at(row, "b")?,
                min: f64_at(row, "vmin")?,
                max: f64_at(row, "vmax")?,
                avg: if count > 0 { sum / count as f64 } else { 0.0 },
                count,
            });
        }
        Ok(Downsampled {
            bucket_ms: bucket,
            points: out,
        })
    }

    /// The newest reading of a series, if any.
    pub async fn latest(&self, device_id: &str, sensor: &str) -> Result<Option<(i64, f64)>, Error> {
        let Some(series) = self.find_series(device_id, sensor).await? else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT ts, value FROM telemetry WHERE series_id = $1 ORDER BY ts DESC LIMIT 1",
        )
        .bind(series)
        .fetch_optional(self.store.pool())
        .await?;
        row.map(|r| Ok((i64_at(&r, "ts")?, f64_at(&r, "value")?)))
            .transpose()
    }

    /// The sensors a device has readings for.
    pub async fn sensors(&self, device_id: &str) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT sensor FROM series WHERE device_id = $1 ORDER BY sensor")
            .bind(device_id)
            .fetch_all(self.store.pool())
            .await?;
        rows.iter().map(|r| str_at(r, "sensor")).collect()
    }

    /// Sets how long a series keeps its readings (creating the series if needed).
    pub async fn set_retention(
        &self,
        device_id: &str,
        sensor: &str,
        retention: Duration,
    ) -> Result<(), Error> {
        let id = self.series_id(device_id, sensor).await?;
        sqlx::query("UPDATE series SET retention_ms = $1 WHERE id = $2")
            .bind(retention.as_millis() as i64)
            .bind(id)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Deletes a series' readings older than `cutoff` (rounded down to the hour, so that the
    /// rollup stays exact). Returns how many raw readings were deleted.
    pub async fn delete_older_than(
        &self,
        device_id: &str,
        sensor: &str,
        cutoff: i64,
    ) -> Result<u64, Error> {
        let Some(series) = self.find_series(device_id, sensor).await? else {
            return Ok(0);
        };
        self.delete_series_before(series, cutoff).await
    }

    async fn delete_series_before(&self, series: i64, cutoff: i64) -> Result<u64, Error> {
        let cutoff = floor_hour(cutoff);
        let mut tx = self.store.pool().begin().await?;
        let n = sqlx::query("DELETE FROM telemetry WHERE series_id = $1 AND ts < $2")
            .bind(series)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM telemetry_hourly WHERE series_id = $1 AND hour < $2")
            .bind(series)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Applies every series' retention at `now` (run it periodically, e.g. hourly). Returns
    /// how many raw readings were deleted.
    pub async fn apply_retention(&self, now: i64) -> Result<u64, Error> {
        let rows = sqlx::query("SELECT id, retention_ms FROM series")
            .fetch_all(self.store.pool())
            .await?;
        let mut deleted = 0;
        for row in &rows {
            let (id, retention) = (i64_at(row, "id")?, i64_at(row, "retention_ms")?);
            deleted += self.delete_series_before(id, now - retention).await?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_covers_exactly() {
        for n in [0usize, 1, 2, 3, 1023, 1024, 1025, 5000] {
            let parts = chunks(n, MAX_INSERT_CHUNK_LOG2);
            assert_eq!(parts.iter().map(|k| 1usize << k).sum::<usize>(), n, "{n}");
            assert!(parts.len() <= n / 1024 + 10);
        }
        assert!(insert_sql(Backend::Postgres, 1).contains("($1,$2,$3),($4,$5,$6) ON CONFLICT"));
        assert!(insert_sql(Backend::Sqlite, 1).contains("(?,?,?),(?,?,?) ON CONFLICT"));
        assert!(rollup_sql(Backend::Postgres, 0).contains("($1,$2,$3,$4,$5,$6) ON CONFLICT"));
    }

    #[test]
    fn bucket_counts() {
        assert_eq!(bucket_count(0, 10, 5), 2);
        assert_eq!(bucket_count(3, 10, 7), 2);
        assert_eq!(bucket_count(3, 10, 14), 1);
    }

    #[test]
    fn hours() {
        assert_eq!(floor_hour(0), 0);
        assert_eq!(floor_hour(HOUR_MS - 1), 0);
        assert_eq!(floor_hour(HOUR_MS), HOUR_MS);
    }
}
