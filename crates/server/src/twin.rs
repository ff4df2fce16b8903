//! The device twin: what the server knows about every device from the MQTT traffic
//! (presence, self-description, reported state), what it asked for (desired state), and the
//! commands in flight. It is fed by the [`Bus`] and feeds the live stream of the web tier.
//!
//! A command is published on `devices/{id}/set/{name}` with an id and is *confirmed* when the
//! device reports `state/{name}` carrying that id (or acknowledges it with a value read back),
//! *failed* when the device acknowledges it with `ok: false`, and *timeout* otherwise.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use broker::Message;
use codec::QoS;
use proto::{
    payload::{Ack, Command, Meta, Reading, StateReport, Status},
    topics::{self, TopicKind},
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::bus::Bus;

/// How long a command waits for the device's confirmation unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Names kept per device unless configured otherwise (`telemetry.max_state_names_per_device`,
/// `telemetry.max_sensors_per_device`).
pub const DEFAULT_MAX_STATE_NAMES: usize = 256;
pub const DEFAULT_MAX_SENSORS: usize = 64;

/// What the twin refused to keep, for `/metrics`.
#[derive(Debug, Default)]
pub struct TwinCounters {
    /// State reports for a name beyond the device's limit.
    pub state_names_refused: AtomicU64,
    /// Readings of a sensor beyond the device's limit.
    pub sensors_refused: AtomicU64,
}

/// Live events kept for slow listeners before they start missing some.
const LIVE_CAPACITY: usize = 4096;

/// One change, as the live stream (`/api/v1/live`, `/api/v1/events`) sends it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LiveEvent {
    Presence {
        device: String,
        online: bool,
        ts: i64,
    },
    State {
        device: String,
        name: String,
        value: Value,
        ts: i64,
        cmd: Option<String>,
    },
    Telemetry {
        device: String,
        sensor: String,
        ts: i64,
        value: f64,
    },
    Meta {
        device: String,
        capabilities: Meta,
    },
    Command {
        device: String,
        name: String,
        command_id: String,
        value: Value,
        status: CommandStatus,
        error: Option<String>,
    },
}

impl LiveEvent {
    pub fn device(&self) -> &str {
        match self {
            LiveEvent::Presence { device, .. }
            | LiveEvent::State { device, .. }
            | LiveEvent::Telemetry { device, .. }
            | LiveEvent::Meta { device, .. }
            | LiveEvent::Command { device, .. } => device,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"type":"error","error":"{e}"}}"#))
    }
}

pub use store::CommandStatus;

/// A value as last reported by the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reported {
    pub value: Value,
    pub ts: i64,
}

/// A value the server last asked for, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Desired {
    pub value: Value,
    pub ts: i64,
    pub command_id: String,
    pub status: CommandStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything the twin knows about one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceState {
    pub online: bool,
    pub last_seen: Option<i64>,
    pub meta: Option<Meta>,
    pub reported: BTreeMap<String, Reported>,
    pub desired: BTreeMap<String, Desired>,
    /// The latest reading of each sensor.
    pub telemetry: BTreeMap<String, Reported>,
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandResult {
    pub id: String,
    pub device: String,
    pub name: String,
    /// The requested value while pending; the device's value once confirmed.
    pub value: Value,
    pub status: CommandStatus,
    pub error: Option<String>,
}

/// Why a command was not sent or not confirmed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("device '{0}' is not registered")]
    UnknownDevice(String),
    #[error("device '{device}' is offline{}; it cannot take commands until it reconnects", last_seen_text(*.last_seen))]
    Offline {
        device: String,
        last_seen: Option<i64>,
    },
    #[error(
        "device '{0}' has not described its outputs yet (no meta message); wait until it has connected once"
    )]
    NoCapabilities(String),
    /// Unknown output or a value of the wrong type.
    #[error("{0}")]
    Invalid(String),
    #[error("device '{device}' refused '{name}': {error}")]
    Refused {
        device: String,
        name: String,
        id: String,
        error: String,
    },
    #[error(
        "device '{device}' did not confirm '{name}' within {}s (command {id}); it may be busy or its connection stalled; poll GET /api/v1/commands/{id}",
        .timeout.as_secs_f32()
    )]
    Timeout {
        device: String,
        name: String,
        id: String,
        timeout: Duration,
    },
    #[error("cannot send the command: {0}")]
    Internal(String),
}

fn last_seen_text(last_seen: Option<i64>) -> String {
    match last_seen {
        Some(ms) => {
            let ago = (now_ms() - ms).max(0) / 1000;
            format!(" (last seen {ago}s ago)")
        }
        None => " (never seen)".to_string(),
    }
}

type Outcome = Result<CommandResult, CommandError>;

struct Pending {
    device: String,
    name: String,
    value: Value,
    waiter: Option<oneshot::Sender<Outcome>>,
}

/// A change to the commands table, applied in order by one writer task, off the command path.
enum Record {
    Create {
        id: String,
        device: String,
        name: String,
        value: Value,
        actor: Option<String>,
        ts: i64,
    },
    Finish {
        id: String,
        status: CommandStatus,
        error: Option<String>,
        ts: i64,
    },
}

/// Recent commands, so a status poll sees an outcome before the store has it.
#[derive(Default)]
struct Recent {
    by_id: HashMap<String, CommandResult>,
    order: std::collections::VecDeque<String>,
}

/// Commands remembered in memory (the store keeps them all).
const RECENT_COMMANDS: usize = 10_000;

impl Recent {
    fn insert(&mut self, result: CommandResult) {
        if self.by_id.len() >= RECENT_COMMANDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_id.remove(&oldest);
        }
        self.order.push_back(result.id.clone());
        self.by_id.insert(result.id.clone(), result);
    }
}

async fn record_writer(store: store::Store, mut rx: mpsc::UnboundedReceiver<Record>) {
    while let Some(record) = rx.recv().await {
        let (id, result) = match record {
            Record::Create {
                id,
                device,
                name,
                value,
                actor,
                ts,
            } => {
                let r = store
                    .commands()
                    .create(&id, &device, &name, &value, actor.as_deref(), ts)
                    .await
                    .map(|_| ());
                (id, r)
            }
            Record::Finish {
                id,
                status,
                error,
                ts,
            } => {
                let r = store
                    .commands()
                    .finish(&id, status, error.as_deref(), ts)
                    .await
                    .map(|_| ());
                (id, r)
            }
        };
        if let Err(err) = result {
            tracing::warn!(command = %id, "cannot record the command: {err}");
        }
    }
}

struct Inner {
    devices: Mutex<HashMap<String, DeviceState>>,
    pending: Mutex<HashMap<String, Pending>>,
    recent: Mutex<Recent>,
    records: mpsc::UnboundedSender<Record>,
    live: broadcast::Sender<Arc<LiveEvent>>,
    bus: Arc<dyn Bus>,
    store: store::Store,
    timeout: Mutex<Duration>,
    max_state_names: usize,
    max_sensors: usize,
    counters: TwinCounters,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Twin {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Twin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Twin").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Twin {
    /// Subscribes to the device topics and starts following them. Retained status, meta and
    /// state arrive first, so the twin is warm shortly after start.
    pub async fn start(
        bus: Arc<dyn Bus>,
        store: store::Store,
    ) -> Result<Twin, crate::bus::BusError> {
        Twin::start_with(bus, store, DEFAULT_MAX_STATE_NAMES, DEFAULT_MAX_SENSORS).await
    }

    /// [`Twin::start`] keeping at most `max_state_names` reported states and `max_sensors`
    /// latest readings per device: a device cannot grow the server's memory by inventing names.
    pub async fn start_with(
        bus: Arc<dyn Bus>,
        store: store::Store,
        max_state_names: usize,
        max_sensors: usize,
    ) -> Result<Twin, crate::bus::BusError> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        let (records, records_rx) = mpsc::unbounded_channel();
        tokio::spawn(record_writer(store.clone(), records_rx));
        let twin = Twin {
            inner: Arc::new(Inner {
                devices: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                recent: Mutex::new(Recent::default()),
                records,
                live,
                bus: bus.clone(),
                store,
                timeout: Mutex::new(DEFAULT_COMMAND_TIMEOUT),
                max_state_names,
                max_sensors,
                counters: TwinCounters::default(),
            }),
        };
        for filter in [
            topics::ALL_STATUS,
            topics::ALL_META,
            topics::ALL_STATE,
            topics::ALL_ACK,
            topics::ALL_TELEMETRY,
        ] {
            let mut subscription = bus.subscribe(filter).await?;
            let weak = Arc::downgrade(&twin.inner);
            tokio::spawn(async move {
                while let Some(message) = subscription.recv().await {
                    let Some(inner) = weak.upgrade() else { break };
                    Twin { inner }.handle(&message);
                }
            });
        }
        Ok(twin)
    }

    /// Changes how long commands wait for confirmation (tests use a short one).
    pub fn set_command_timeout(&self, timeout: Duration) {
        *lock(&self.inner.timeout) = timeout;
    }

    pub fn command_timeout(&self) -> Duration {
        *lock(&self.inner.timeout)
    }

    pub fn counters(&self) -> &TwinCounters {
        &self.inner.counters
    }

    /// A receiver of every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveEvent>> {
        self.inner.live.subscribe()
    }

    /// Sends an event to live listeners (ingest uses this for telemetry it did not see here).
    pub fn emit(&self, event: LiveEvent) {
        if self.inner.live.receiver_count() > 0 {
            let _ = self.inner.live.send(Arc::new(event));
        }
    }

    pub fn device(&self, id: &str) -> Option<DeviceState> {
        lock(&self.inner.devices).get(id).cloned()
    }

    pub fn devices(&self) -> HashMap<String, DeviceState> {
        lock(&self.inner.devices).clone()
    }

    /// Forgets a device (after it was removed from the registry).
    pub fn forget(&self, id: &str) {
        lock(&self.inner.devices).remove(id);
    }

    fn handle(&self, message: &Message) {
        let Some(parsed) = topics::parse(&message.topic) else {
            return;
        };
        let device = parsed.device_id.to_string();
        let now = now_ms();
        match (parsed.kind, parsed.name) {
            (TopicKind::Status, _) => self.on_status(&device, &message.payload, now),
            (TopicKind::Meta, _) => self.on_meta(&device, &message.payload, now),
            (TopicKind::State, Some(name)) => {
                self.on_state(&device, name, &message.payload, now, message.retain)
            }
            (TopicKind::Ack, _) => self.on_ack(&device, &message.payload, now),
            (TopicKind::Telemetry, Some(sensor)) => {
                self.on_telemetry(&device, sensor, &message.payload, now)
            }
            _ => {}
        }
    }

    fn on_status(&self, device: &str, payload: &[u8], now: i64) {
        let Some(status) = Status::parse(payload) else {
            tracing::debug!(
                device,
                "ignoring a status payload that is neither online nor offline"
            );
            return;
        };
        let online = status == Status::Online;
        let changed = {
            let mut devices = lock(&self.inner.devices);
            let state = devices.entry(device.to_string()).or_default();
            let changed = state.online != online || state.last_seen.is_none();
            state.online = online;
            state.last_seen = Some(now);
            changed
        };
        if changed {
            let store = self.inner.store.clone();
            let id = device.to_string();
            tokio::spawn(async move {
                if let Err(err) = store.devices().set_presence(&id, online, now).await {
                    tracing::warn!(device = %id, "cannot record presence: {err}");
                }
            });
            self.emit(LiveEvent::Presence {
                device: device.to_string(),
                online,
                ts: now,
            });
        }
    }

    fn on_meta(&self, device: &str, payload: &[u8], now: i64) {
        let meta: Meta = match serde_json::from_slice(payload) {
            Ok(meta) => meta,
            Err(err) => {
                tracing::info!(device, "ignoring an invalid meta message: {err}");
                return;
            }
        };
        {
            let mut devices = lock(&self.inner.devices);
            let state = devices.entry(device.to_string()).or_default();
            state.last_seen = Some(now);
            state.meta = Some(meta.clone());
        }
        let store = self.inner.store.clone();
        let id = device.to_string();
        let json = serde_json::to_value(&meta).unwrap_or_default();
        tokio::spawn(async move {
            if let Err(err) = store.devices().set_meta(&id, &json).await {
                tracing::warn!(device = %id, "cannot record the device's meta: {err}");
            }
        });
        self.emit(LiveEvent::Meta {
            device: device.to_string(),
            capabilities: meta,
        });
    }

    fn on_state(&self, device: &str, name: &str, payload: &[u8], now: i64, retained: bool) {
        let report: StateReport = match serde_json::from_slice(payload) {
            Ok(report) => report,
            Err(err) => {
                tracing::info!(device, name, "ignoring an invalid state message: {err}");
                return;
            }
        };
        {
            let mut devices = lock(&self.inner.devices);
            let state = devices.entry(device.to_string()).or_default();
            if !retained {
                state.last_seen = Some(now);
            }
            if state.reported.len() >= self.inner.max_state_names
                && !state.reported.contains_key(name)
            {
                let refused = self
                    .inner
                    .counters
                    .state_names_refused
                    .fetch_add(1, Ordering::Relaxed);
                if refused.is_power_of_two() {
                    tracing::warn!(
                        device,
                        name,
                        limit = self.inner.max_state_names,
                        "device reports more state names than telemetry.max_state_names_per_device; ignoring new ones"
                    );
                }
                return;
            }
            state.reported.insert(
                name.to_string(),
                Reported {
                    value: report.value.clone(),
                    ts: report.ts,
                },
            );
        }
        // Listeners see the state before the command's outcome.
        self.emit(LiveEvent::State {
            device: device.to_string(),
            name: name.to_string(),
            value: report.value.clone(),
            ts: report.ts,
            cmd: report.cmd.clone(),
        });
        // A retained state replayed at start-up cannot confirm a command sent since.
        if let Some(cmd) = report.cmd.as_deref().filter(|_| !retained) {
            self.resolve(cmd, device, Ok(report.value));
        }
    }

    fn on_ack(&self, device: &str, payload: &[u8], now: i64) {
        let ack: Ack = match serde_json::from_slice(payload) {
            Ok(ack) => ack,
            Err(err) => {
                tracing::info!(device, "ignoring an invalid ack message: {err}");
                return;
            }
        };
        if let Some(state) = lock(&self.inner.devices).get_mut(device) {
            state.last_seen = Some(now);
        }
        if !ack.ok {
            let error = ack.error.unwrap_or_else(|| "no reason given".to_string());
            self.resolve(&ack.id, device, Err(error));
        } else if let Some(value) = ack.value {
            // The value read back after applying it: as good as the state report.
            self.resolve(&ack.id, device, Ok(value));
        }
    }

    fn on_telemetry(&self, device: &str, sensor: &str, payload: &[u8], now: i64) {
        if let Some(state) = lock(&self.inner.devices).get_mut(device) {
            state.last_seen = Some(now);
        }
        if self.inner.live.receiver_count() == 0 {
            // Only the latest value matters for the device page; parse lazily below.
            if let Ok(reading) = serde_json::from_slice::<Reading>(payload) {
                self.note_reading(device, sensor, reading);
            }
            return;
        }
        if let Ok(reading) = serde_json::from_slice::<Reading>(payload) {
            self.note_reading(device, sensor, reading);
            self.emit(LiveEvent::Telemetry {
                device: device.to_string(),
                sensor: sensor.to_string(),
                ts: reading.ts,
                value: reading.value,
            });
        }
    }

    fn note_reading(&self, device: &str, sensor: &str, reading: Reading) {
        if let Some(state) = lock(&self.inner.devices).get_mut(device) {
            if state.telemetry.len() >= self.inner.max_sensors
                && !state.telemetry.contains_key(sensor)
            {
                self.inner
                    .counters
                    .sensors_refused
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            let newer = state
                .telemetry
                .get(sensor)
                .is_none_or(|r| r.ts <= reading.ts);
            if newer {
                state.telemetry.insert(
                    sensor.to_string(),
                    Reported {
                        value: Value::from(reading.value),
                        ts: reading.ts,
                    },
                );
            }
        }
    }

    /// Settles command `id` (if it is still pending and belongs to `device`).
    fn resolve(&self, id: &str, device: &str, outcome: Result<Value, String>) {
        let pending = {
            let mut pending = lock(&self.inner.pending);
            match pending.get(id) {
                Some(p) if p.device == device => pending.remove(id),
                _ => None,
            }
        };
        let Some(mut pending) = pending else { return };
        let (status, value, error) = match outcome {
            Ok(value) => (CommandStatus::Confirmed, value, None),
            Err(error) => (CommandStatus::Failed, pending.value.clone(), Some(error)),
        };
        let result = match &error {
            None => Ok(CommandResult {
                id: id.to_string(),
                device: pending.device.clone(),
                name: pending.name.clone(),
                value: value.clone(),
                status,
                error: None,
            }),
            Some(error) => Err(CommandError::Refused {
                device: pending.device.clone(),
                name: pending.name.clone(),
                id: id.to_string(),
                error: error.clone(),
            }),
        };
        if let Some(waiter) = pending.waiter.take() {
            let _ = waiter.send(result);
        }
        self.settle(id, &pending.device, &pending.name, value, status, error);
    }

    /// Records the final status of a command: desired state, store, live stream.
    fn settle(
        &self,
        id: &str,
        device: &str,
        name: &str,
        value: Value,
        status: CommandStatus,
        error: Option<String>,
    ) {
        if let Some(state) = lock(&self.inner.devices).get_mut(device)
            && let Some(desired) = state.desired.get_mut(name)
            && desired.command_id == id
        {
            desired.status = status;
            desired.error.clone_from(&error);
        }
        if let Some(recent) = lock(&self.inner.recent).by_id.get_mut(id) {
            recent.status = status;
            recent.error.clone_from(&error);
            if status == CommandStatus::Confirmed {
                recent.value = value.clone();
            }
        }
        let _ = self.inner.records.send(Record::Finish {
            id: id.to_string(),
            status,
            error: error.clone(),
            ts: now_ms(),
        });
        self.emit(LiveEvent::Command {
            device: device.to_string(),
            name: name.to_string(),
            command_id: id.to_string(),
            value,
            status,
            error,
        });
    }

    /// Sends `value` to output `name` of `device`. With `wait`, resolves once the device
    /// confirms (or refuses, or the timeout passes); without, returns at once with the pending
    /// command, whose status can be read with [`Twin::command`].
    pub async fn send_command(
        &self,
        device: &str,
        name: &str,
        value: Value,
        wait: bool,
    ) -> Outcome {
        self.send_command_as(device, name, value, wait, None).await
    }

    /// [`Twin::send_command`], recording who sent it.
    pub async fn send_command_as(
        &self,
        device: &str,
        name: &str,
        value: Value,
        wait: bool,
        actor: Option<&str>,
    ) -> Outcome {
        let (online, last_seen, meta) = {
            let devices = lock(&self.inner.devices);
            match devices.get(device) {
                Some(s) => (s.online, s.last_seen, s.meta.clone()),
                None => (false, None, None),
            }
        };
        if !online {
            let registered = self
                .inner
                .store
                .devices()
                .get(device)
                .await
                .map_err(|e| CommandError::Internal(e.to_string()))?
                .is_some();
            if !registered {
                return Err(CommandError::UnknownDevice(device.to_string()));
            }
            return Err(CommandError::Offline {
                device: device.to_string(),
                last_seen,
            });
        }
        let meta = meta.ok_or_else(|| CommandError::NoCapabilities(device.to_string()))?;
        if meta.output(name).is_none() {
            let outputs: Vec<&str> = meta.outputs.iter().map(|p| p.name.as_str()).collect();
            return Err(CommandError::Invalid(format!(
                "device '{device}' has no output '{name}' (its outputs: {})",
                if outputs.is_empty() {
                    "none".to_string()
                } else {
                    outputs.join(", ")
                }
            )));
        }
        meta.check_command(name, &value)
            .map_err(|e| CommandError::Invalid(format!("device '{device}': {e}")))?;

        let id = uuid::Uuid::new_v4().simple().to_string();
        let now = now_ms();
        // Recorded in order by the writer task: the store is not on the command's path.
        let _ = self.inner.records.send(Record::Create {
            id: id.clone(),
            device: device.to_string(),
            name: name.to_string(),
            value: value.clone(),
            actor: actor.map(str::to_string),
            ts: now,
        });
        lock(&self.inner.recent).insert(CommandResult {
            id: id.clone(),
            device: device.to_string(),
            name: name.to_string(),
            value: value.clone(),
            status: CommandStatus::Pending,
            error: None,
        });

        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(
            id.clone(),
            Pending {
                device: device.to_string(),
                name: name.to_string(),
                value: value.clone(),
                waiter: wait.then_some(tx),
            },
        );
        if let Some(state) = lock(&self.inner.devices).get_mut(device) {
            state.desired.insert(
                name.to_string(),
                Desired {
                    value: value.clone(),
                    ts: now,
                    command_id: id.clone(),
                    status: CommandStatus::Pending,
                    error: None,
                },
            );
        }
        let payload = serde_json::to_vec(&Command {
            value: value.clone(),
            id: Some(id.clone()),
        })
        .map_err(|e| CommandError::Internal(e.to_string()))?;
        let message = Message::new(topics::set(device, name), payload).with_qos(QoS::AtLeastOnce);
        if let Err(err) = self.inner.bus.publish(message).await {
            lock(&self.inner.pending).remove(&id);
            self.settle(
                &id,
                device,
                name,
                value,
                CommandStatus::Failed,
                Some(err.to_string()),
            );
            return Err(CommandError::Internal(format!(
                "cannot publish the command: {err}"
            )));
        }

        let timeout = self.command_timeout();
        let twin = self.clone();
        let timer_id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            twin.expire(&timer_id, timeout);
        });

        let pending = CommandResult {
            id: id.clone(),
            device: device.to_string(),
            name: name.to_string(),
            value,
            status: CommandStatus::Pending,
            error: None,
        };
        if !wait {
            return Ok(pending);
        }
        rx.await.unwrap_or(Err(CommandError::Internal(
            "the twin stopped while waiting for the device".to_string(),
        )))
    }

    fn expire(&self, id: &str, timeout: Duration) {
        let Some(mut pending) = lock(&self.inner.pending).remove(id) else {
            return;
        };
        let error = CommandError::Timeout {
            device: pending.device.clone(),
            name: pending.name.clone(),
            id: id.to_string(),
            timeout,
        };
        let message = error.to_string();
        if let Some(waiter) = pending.waiter.take() {
            let _ = waiter.send(Err(error));
        }
        self.settle(
            id,
            &pending.device,
            &pending.name,
            pending.value,
            CommandStatus::Timeout,
            Some(message),
        );
    }

    /// A recent command as the twin knows it (the store has older ones).
    pub fn command(&self, id: &str) -> Option<CommandResult> {
        lock(&self.inner.recent).by_id.get(id).cloned()
    }

    /// Commands still waiting for their device.
    pub fn pending_commands(&self) -> usize {
        lock(&self.inner.pending).len()
    }
}
