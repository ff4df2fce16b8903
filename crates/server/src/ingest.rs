//! Telemetry ingest: readings from `devices/+/telemetry/+` into the store, in batches (one
//! transaction per batch is what makes 100k readings/s possible on SQLite), plus the
//! retention task that deletes what is older than the retention period.
//!
//! Replays after an outage are harmless: the store keeps each `(device, sensor, ts)` once.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use proto::{
    payload::Reading,
    topics::{self, TopicKind},
};
use tokio::sync::mpsc;

use crate::bus::Bus;

/// How the batches are cut.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Flush when this many readings are waiting...
    pub max_batch: usize,
    /// ...or when the oldest waiting reading is this old.
    pub max_delay: Duration,
    /// Readings older than this are deleted (the retention of new series; each series keeps its own).
    pub retention: Duration,
    /// How often the retention task runs.
    pub retention_interval: Duration,
    /// Readings stamped before this (ms since the epoch) are refused.
    pub min_timestamp_ms: i64,
    /// Readings stamped further than this into the future are refused.
    pub max_future: Duration,
    /// Distinct sensors (series) per device; readings of further sensors are refused.
    pub max_sensors_per_device: usize,
}

/// Devices whose sensors are tracked for `max_sensors_per_device` (memory bound); beyond it
/// new devices' sensors are not limited until the server restarts.
const MAX_TRACKED_DEVICES: usize = 100_000;

/// What ingest refused, for `/metrics`.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Readings with a timestamp outside the sane window.
    pub timestamp_refused: AtomicU64,
    /// Readings of a sensor beyond the device's limit.
    pub sensors_refused: AtomicU64,
    /// Messages on telemetry topics that are not valid readings.
    pub invalid: AtomicU64,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            max_batch: 5_000,
            max_delay: Duration::from_millis(200),
            retention: store::DEFAULT_RETENTION,
            retention_interval: Duration::from_secs(3600),
            min_timestamp_ms: 946_684_800_000,
            max_future: Duration::from_secs(24 * 3600),
            max_sensors_per_device: crate::twin::DEFAULT_MAX_SENSORS,
        }
    }
}

/// One reading on its way to the store.
pub type Row = store::Sample;

/// Handle to the running ingest; dropping it does not stop it (the bus subscription ending does).
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Row>,
    counters: Arc<IngestCounters>,
}

impl Ingest {
    /// Queues a reading as if it had arrived over MQTT (waits when the queue is full).
    pub async fn push(&self, row: Row) -> bool {
        self.tx.send(row).await.is_ok()
    }

    pub fn counters(&self) -> &Arc<IngestCounters> {
        &self.counters
    }
}

/// Decides which readings are stored: timestamps in a sane window, a bounded number of
/// sensors per device.
struct Admission {
    min_ts: i64,
    max_future_ms: i64,
    max_sensors: usize,
    sensors: HashMap<String, HashSet<String>>,
    counters: Arc<IngestCounters>,
}

impl Admission {
    fn admit(&mut self, row: &Row, now_ms: i64) -> bool {
        if row.ts < self.min_ts || row.ts > now_ms.saturating_add(self.max_future_ms) {
            let refused = self
                .counters
                .timestamp_refused
                .fetch_add(1, Ordering::Relaxed);
            if refused.is_power_of_two() {
                tracing::warn!(device = %row.device_id, sensor = %row.sensor, ts = row.ts, "refusing readings stamped outside the sane window (telemetry.min_timestamp_ms, telemetry.max_future_secs): is the device's clock set?");
            }
            return false;
        }
        if self.sensors.len() >= MAX_TRACKED_DEVICES && !self.sensors.contains_key(&row.device_id) {
            return true;
        }
        let sensors = self.sensors.entry(row.device_id.clone()).or_default();
        if sensors.contains(&row.sensor) {
            return true;
        }
        if sensors.len() >= self.max_sensors {
            let refused = self
                .counters
                .sensors_refused
                .fetch_add(1, Ordering::Relaxed);
            if refused.is_power_of_two() {
                tracing::warn!(device = %row.device_id, sensor = %row.sensor, limit = self.max_sensors, "device sends more sensors than telemetry.max_sensors_per_device; refusing new ones");
            }
            return false;
        }
        sensors.insert(row.sensor.clone());
        true
    }
}

/// Parses a telemetry message into a row; `None` for anything that is not a valid reading.
pub fn parse(topic: &str, payload: &[u8]) -> Option<Row> {
    let parsed = topics::parse(topic)?;
    if parsed.kind != TopicKind::Telemetry {
        return None;
    }
    let sensor = parsed.name?;
    let reading: Reading = serde_json::from_slice(payload).ok()?;
    if !reading.value.is_finite() {
        return None;
    }
    Some(Row::new(
        parsed.device_id,
        sensor,
        reading.ts,
        reading.value,
    ))
}

/// Starts ingest with default options (retention from `retention_days`).
pub async fn start(
    bus: Arc<dyn Bus>,
    store: store::Store,
    retention_days: u32,
) -> Result<Ingest, crate::bus::BusError> {
    let options = IngestOptions {
        retention: Duration::from_secs(u64::from(retention_days.max(1)) * 24 * 3600),
        ..IngestOptions::default()
    };
    start_with(bus, store, options).await
}

/// The options `[telemetry]` in server.toml describes.
pub fn options_from(config: &crate::config::TelemetryConfig) -> IngestOptions {
    IngestOptions {
        retention: Duration::from_secs(u64::from(config.retention_days.max(1)) * 24 * 3600),
        min_timestamp_ms: config.min_timestamp_ms,
        max_future: Duration::from_secs(config.max_future_secs),
        max_sensors_per_device: config.max_sensors_per_device,
        ..IngestOptions::default()
    }
}

pub async fn start_with(
    bus: Arc<dyn Bus>,
    store: store::Store,
    options: IngestOptions,
) -> Result<Ingest, crate::bus::BusError> {
    let mut subscription = bus.subscribe(topics::ALL_TELEMETRY).await?;
    let (tx, rx) = mpsc::channel::<Row>(options.max_batch * 4);
    let feeder = tx.clone();
    let counters = Arc::new(IngestCounters::default());
    let mut admission = Admission {
        min_ts: options.min_timestamp_ms,
        max_future_ms: i64::try_from(options.max_future.as_millis()).unwrap_or(i64::MAX),
        max_sensors: options.max_sensors_per_device,
        sensors: HashMap::new(),
        counters: counters.clone(),
    };
    tokio::spawn(async move {
        while let Some(message) = subscription.recv().await {
            match parse(&message.topic, &message.payload) {
                Some(row) => {
                    if !admission.admit(&row, crate::twin::now_ms()) {
                        continue;
                    }
                    if feeder.send(row).await.is_err() {
                        break;
                    }
                }
                None => {
                    admission.counters.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %message.topic, "ignoring an invalid telemetry message")
                }
            }
        }
    });
    tokio::spawn(writer(store.clone(), rx, options));
    tokio::spawn(retention(store, options));
    Ok(Ingest { tx, counters })
}

async fn writer(store: store::Store, mut rx: mpsc::Receiver<Row>, options: IngestOptions) {
    let mut batch: Vec<Row> = Vec::with_capacity(options.max_batch);
    let mut known: HashSet<(String, String)> = HashSet::new();
    loop {
        // Wait for the first reading, then collect more until the batch is full or old enough.
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + options.max_delay;
        while batch.len() < options.max_batch {
            let room = options.max_batch - batch.len();
            // Take whatever is already queued without waiting.
            let before = batch.len();
            while batch.len() - before < room {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            if batch.len() >= options.max_batch {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(row)) => batch.push(row),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&store, &mut batch, &mut known, options.retention).await;
    }
    flush(&store, &mut batch, &mut known, options.retention).await;
}

async fn flush(
    store: &store::Store,
    batch: &mut Vec<Row>,
    known: &mut HashSet<(String, String)>,
    retention: Duration,
) {
    if batch.is_empty() {
        return;
    }
    if retention != store::DEFAULT_RETENTION {
        // A series starts with the store's default retention; apply the configured one once.
        for row in batch.iter() {
            if known.len() < 100_000
                && !known.contains(&(row.device_id.clone(), row.sensor.clone()))
            {
                if let Err(err) = store
                    .telemetry()
                    .set_retention(&row.device_id, &row.sensor, retention)
                    .await
                {
                    tracing::warn!(device = %row.device_id, sensor = %row.sensor, "cannot set the series' retention: {err}");
                }
                known.insert((row.device_id.clone(), row.sensor.clone()));
            }
        }
    }
    if let Err(err) = store.telemetry().insert_batch(batch).await {
        tracing::warn!(
            readings = batch.len(),
            "cannot store telemetry, dropping this batch: {err}"
        );
    }
    batch.clear();
}

async fn retention(store: store::Store, options: IngestOptions) {
    let mut tick = tokio::time::interval(options.retention_interval);
    loop {
        tick.tick().await;
        match store
            .telemetry()
            .apply_retention(crate::twin::now_ms())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "telemetry retention: deleted old readings"),
            Err(err) => tracing::warn!("telemetry retention failed, will retry: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_readings_and_refuses_the_rest() {
        let row = parse(
            "devices/kitchen/telemetry/temp",
            br#"{"id":1,"ts":1000,"value":21.5}"#,
        )
        .unwrap();
        assert_eq!(
            (
                row.device_id.as_str(),
                row.sensor.as_str(),
                row.ts,
                row.value
            ),
            ("kitchen", "temp", 1000, 21.5)
        );
        assert!(
            parse(
                "devices/kitchen/state/led",
                br#"{"id":1,"ts":1000,"value":21.5}"#
            )
            .is_none()
        );
        assert!(
            parse(
                "devices/kitchen/telemetry/temp",
                br#"{"id":1,"ts":1000,"value":"hot"}"#
            )
            .is_none()
        );
        assert!(parse("devices/kitchen/telemetry/temp", b"garbage").is_none());
    }

    #[test]
    fn readings_outside_the_time_window_or_beyond_the_sensor_limit_are_refused_and_counted() {
        let counters = Arc::new(IngestCounters::default());
        let options = IngestOptions {
            max_sensors_per_device: 2,
            ..IngestOptions::default()
        };
        let mut admission = Admission {
            min_ts: options.min_timestamp_ms,
            max_future_ms: 24 * 3600 * 1000,
            max_sensors: options.max_sensors_per_device,
            sensors: HashMap::new(),
            counters: counters.clone(),
        };
        let now = 1_750_000_000_000;
        let row = |device: &str, sensor: &str, ts: i64| Row::new(device, sensor, ts, 1.0);
        assert!(admission.admit(&row("a", "t", now), now));
        assert!(
            !admission.admit(&row("a", "t", 0), now),
            "1970: clock unset"
        );
        assert!(!admission.admit(&row("a", "t", now + 2 * 24 * 3600 * 1000), now));
        assert!(
            admission.admit(&row("a", "t", now + 3600 * 1000), now),
            "an hour ahead is fine"
        );
        assert_eq!(counters.timestamp_refused.load(Ordering::Relaxed), 2);
        assert!(admission.admit(&row("a", "h", now), now));
        assert!(
            !admission.admit(&row("a", "x", now), now),
            "third sensor of a"
        );
        assert!(
            admission.admit(&row("a", "t", now), now),
            "known sensors still flow"
        );
        assert!(
            admission.admit(&row("b", "x", now), now),
            "other devices unaffected"
        );
        assert_eq!(counters.sensors_refused.load(Ordering::Relaxed), 1);
    }
}
