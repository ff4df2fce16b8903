//! Legitimate devices: each connects over mqtts with its token as the agent does (will, status,
//! meta), publishes a QoS 1 telemetry reading at a steady rate, and answers commands on
//! `devices/{id}/set/{name}` with an ack and a state report, as the agent does
//! (crates/agent/src/commands.rs). A reading the broker did not acknowledge before a
//! disconnect is sent again after the reconnect, as the agent's outbox does.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use client::{
    Client, ClientError, ClientOptions, Event, Events, LastWill, Publish, QoS, ReasonCode,
};
use futures_util::{StreamExt, stream::FuturesUnordered};
use proto::{
    payload::{Ack, Command, Meta, Port, Reading, Sensor, StateReport, ValueType},
    topics,
};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{net, tally::Tally};

/// The output every simulated device declares, and the sensor it reports.
pub const OUTPUT: &str = "led";
pub const SENSOR: &str = "temp";
/// Time allowed for TCP + TLS + CONNECT/CONNACK.
const CONNECT_WITHIN: Duration = Duration::from_secs(30);
/// After the run, time allowed for outstanding PUBACKs.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What all devices share: where to connect, how often to publish, and the counters.
pub struct Fleet {
    pub mqtts: SocketAddr,
    pub tls: TlsConnector,
    pub interval: Duration,
    /// `online[i]`: device `i` is connected and has announced itself (commands go only there).
    pub online: Vec<AtomicBool>,
    /// Devices that completed their first connection.
    pub ever_connected: AtomicUsize,
    pub stats: FleetStats,
}

#[derive(Default)]
pub struct FleetStats {
    pub telemetry_sent: AtomicU64,
    pub telemetry_acked: AtomicU64,
    /// Sent again after a disconnect lost its PUBACK.
    pub telemetry_resent: AtomicU64,
    /// Answered with a v5 error reason code (never retried: the broker said no).
    pub telemetry_rejected: Tally,
    pub commands_received: AtomicU64,
    pub replies_acked: AtomicU64,
    pub replies_failed: Tally,
    pub connect_failures: Tally,
    /// Connections that ended while the run was on, by reason.
    pub disconnects: Tally,
}

impl Fleet {
    pub fn new(mqtts: SocketAddr, tls: TlsConnector, interval: Duration, devices: usize) -> Fleet {
        Fleet {
            mqtts,
            tls,
            interval,
            online: (0..devices).map(|_| AtomicBool::new(false)).collect(),
            ever_connected: AtomicUsize::new(0),
            stats: FleetStats::default(),
        }
    }

    pub fn online_count(&self) -> usize {
        self.online
            .iter()
            .filter(|o| o.load(Ordering::Relaxed))
            .count()
    }
}

/// One device's identity.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub index: usize,
    pub id: String,
    pub token: String,
}

/// `soak-00042`: fixed width, so ids sort like indexes.
pub fn device_id(index: usize) -> String {
    format!("soak-{index:05}")
}

/// The index back from a device id, for devices of this run only.
pub fn device_index(id: &str) -> Option<usize> {
    id.strip_prefix("soak-")?.parse().ok()
}

/// What a device ends with.
#[derive(Debug, Default)]
pub struct DeviceOutcome {
    /// Sequence numbers of the readings the broker acknowledged.
    pub acked: Vec<u64>,
    /// Readings still without PUBACK when the run ended.
    pub unacked: u64,
}

/// A deterministic spread in `0..span` for device `index` (SplitMix64), so that devices do
/// not publish in lockstep.
pub fn spread(index: usize, span: Duration) -> Duration {
    let mut z = (index as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let nanos = span.as_nanos().max(1) as u64;
    Duration::from_nanos(z % nanos)
}

pub fn device_options(spec: &DeviceSpec) -> ClientOptions {
    let mut o = ClientOptions::new("mqtts://127.0.0.1:8883", spec.id.clone());
    o.keep_alive = 60;
    o.username = Some(spec.id.clone());
    o.password = Some(Bytes::from(spec.token.clone().into_bytes()));
    o.will = Some(LastWill {
        topic: topics::status(&spec.id).into(),
        payload: Bytes::from_static(topics::OFFLINE.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    // A device only receives commands; a small event queue keeps 10,000 of them cheap.
    o.event_capacity = 16;
    o
}

/// TCP from `from` + TLS + MQTT CONNECT, within [`CONNECT_WITHIN`].
pub async fn connect_mqtts(
    from: std::net::Ipv4Addr,
    to: SocketAddr,
    tls: &TlsConnector,
    options: &ClientOptions,
) -> Result<(Client, Events), String> {
    let stream = net::tls_from(from, to, tls, CONNECT_WITHIN)
        .await
        .map_err(|e| format!("TCP/TLS: {}", net::io_label(&e)))?;
    match tokio::time::timeout(CONNECT_WITHIN, client::connect_stream(stream, options)).await {
        Err(_) => Err("no CONNACK (timeout)".to_string()),
        Ok(Err(err)) => Err(client_error_label(&err)),
        Ok(Ok(connected)) => Ok(connected),
    }
}

/// A short label for a client error, for tallies.
pub fn client_error_label(err: &ClientError) -> String {
    match err {
        ClientError::Refused { code, .. } => format!("CONNACK {}", code_label(*code)),
        ClientError::Rejected { code, .. } => code_label(*code),
        ClientError::Timeout { .. } => "timeout".to_string(),
        ClientError::Disconnected => "disconnected".to_string(),
        ClientError::Protocol(_) | ClientError::Codec(_) => "closed before CONNACK".to_string(),
        other => format!("{}", other)
            .split(':')
            .next()
            .unwrap_or("error")
            .to_string(),
    }
}

/// "0x86 bad user name or password".
pub fn code_label(code: ReasonCode) -> String {
    format!("0x{:02X} {}", code as u8, code.description())
}

fn meta(interval: Duration) -> Vec<u8> {
    let meta = Meta {
        agent: "devicecloud-soak".to_string(),
        outputs: vec![Port {
            name: OUTPUT.to_string(),
            value_type: ValueType::Bool,
        }],
        inputs: Vec::new(),
        sensors: vec![Sensor {
            name: SENSOR.to_string(),
            unit: "°C".to_string(),
            interval_ms: Some(interval.as_millis() as u64),
        }],
    };
    serde_json::to_vec(&meta).unwrap_or_default()
}

fn message(topic: String, payload: Vec<u8>, retain: bool) -> Publish {
    let mut m = Publish::new(topic, payload);
    m.qos = QoS::AtLeastOnce;
    m.retain = retain;
    m
}

/// A pending reading: sequence number, timestamp, value.
type Pending = (u64, i64, f64);

/// Runs one device until `stop`, then waits for its outstanding PUBACKs and disconnects.
/// When a device stops publishing and when it leaves: the figures are collected in between,
/// with every device still connected.
#[derive(Clone)]
pub struct Lifecycle {
    /// Stop publishing and collect the outstanding PUBACKs.
    pub stop: CancellationToken,
    /// Receives each device's outcome once its PUBACKs are in.
    pub drained: mpsc::UnboundedSender<(usize, DeviceOutcome)>,
    /// Disconnect.
    pub leave: CancellationToken,
}

/// Runs one device until `stop`, collects its outstanding PUBACKs, reports its outcome, and
/// disconnects cleanly at `leave`.
pub async fn run(spec: DeviceSpec, fleet: Arc<Fleet>, life: Lifecycle) {
    let stop = life.stop.clone();
    let options = device_options(&spec);
    let from = net::DEVICE_ADDRS.nth(spec.index / net::DEVICES_PER_ADDRESS);
    let mut outcome = DeviceOutcome::default();
    let mut seq = 0u64;
    // Readings without PUBACK, oldest first; sent again after a reconnect.
    let mut outbox: VecDeque<Pending> = VecDeque::new();
    let mut first = true;
    let mut kept = None;
    let mut retry = Duration::from_millis(500);
    let phase = spread(spec.index, fleet.interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, fleet.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'connection: while !stop.is_cancelled() {
        let (client, mut events) =
            match connect_mqtts(from, fleet.mqtts, &fleet.tls, &options).await {
                Ok(c) => c,
                Err(label) => {
                    fleet.stats.connect_failures.add(label);
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
        if let Err(label) = announce(&client, &spec, fleet.interval).await {
            fleet
                .stats
                .disconnects
                .add(format!("during setup: {label}"));
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(Duration::from_secs(10));
            continue;
        }
        retry = Duration::from_millis(500);
        fleet.online[spec.index].store(true, Ordering::Relaxed);
        if first {
            first = false;
            fleet.ever_connected.fetch_add(1, Ordering::Relaxed);
        }
        let mut deliveries = FuturesUnordered::new();
        let mut replies = FuturesUnordered::new();
        // What a previous connection left unacknowledged goes first.
        for pending in outbox.drain(..).collect::<Vec<_>>() {
            match send_reading(&client, &spec.id, pending).await {
                Some(d) => {
                    fleet.stats.telemetry_resent.fetch_add(1, Ordering::Relaxed);
                    deliveries.push(d);
                }
                None => outbox.push_back(pending),
            }
        }
        let ended = loop {
            tokio::select! {
                () = stop.cancelled() => break None,
                _ = tick.tick() => {
                    seq += 1;
                    let reading = (seq, now_ms(), 20.0 + (seq % 50) as f64 / 10.0);
                    fleet.stats.telemetry_sent.fetch_add(1, Ordering::Relaxed);
                    match send_reading(&client, &spec.id, reading).await {
                        Some(d) => deliveries.push(d),
                        None => outbox.push_back(reading),
                    }
                }
                Some((reading, result)) = deliveries.next() => {
                    settle(&fleet.stats, &mut outcome, &mut outbox, reading, result);
                }
                Some(result) = replies.next() => {
                    match result {
                        Ok(()) => { fleet.stats.replies_acked.fetch_add(1, Ordering::Relaxed); }
                        Err(err) => fleet.stats.replies_failed.add(client_error_label(&err)),
                    }
                }
                event = events.recv() => match event {
                    Some(Event::Publish(p)) => {
                        for reply in answer(&spec.id, &p) {
                            fleet.stats.commands_received.fetch_add(1, Ordering::Relaxed);
                            match client.publish_message(reply).await {
                                Ok(d) => replies.push(d),
                                Err(err) => fleet.stats.replies_failed.add(client_error_label(&err)),
                            }
                        }
                    }
                    Some(Event::Disconnected(reason)) => break Some(format!("{reason:?}")),
                    None => break Some("connection task ended".to_string()),
                }
            }
        };
        fleet.online[spec.index].store(false, Ordering::Relaxed);
        if let Some(reason) = ended {
            // Deliveries of a dead connection resolve at once (Disconnected): back to the outbox.
            while let Some((reading, result)) = deliveries.next().await {
                settle(&fleet.stats, &mut outcome, &mut outbox, reading, result);
            }
            fleet.stats.disconnects.add(short_reason(&reason));
            continue 'connection;
        }
        // The run is over: collect the last PUBACKs, then leave cleanly (no will).
        let drain = async {
            while let Some((reading, result)) = deliveries.next().await {
                settle(&fleet.stats, &mut outcome, &mut outbox, reading, result);
            }
            while replies.next().await.is_some() {}
        };
        let _ = tokio::time::timeout(DRAIN_WITHIN, drain).await;
        kept = Some((client, events));
        break;
    }
    outcome.unacked = outbox.len() as u64;
    let _ = life.drained.send((spec.index, outcome));
    if let Some((client, _events)) = kept {
        life.leave.cancelled().await;
        // A clean DISCONNECT: no will.
        let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    }
}

fn settle(
    stats: &FleetStats,
    outcome: &mut DeviceOutcome,
    outbox: &mut VecDeque<Pending>,
    reading: Pending,
    result: Result<(), ClientError>,
) {
    match result {
        Ok(()) => {
            stats.telemetry_acked.fetch_add(1, Ordering::Relaxed);
            outcome.acked.push(reading.0);
        }
        Err(ClientError::Rejected { code, .. }) => stats
            .telemetry_rejected
            .add(format!("PUBACK {}", code_label(code))),
        Err(_) => outbox.push_back(reading),
    }
}

type ReadingDelivery =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Pending, Result<(), ClientError>)> + Send>>;

async fn send_reading(client: &Client, id: &str, reading: Pending) -> Option<ReadingDelivery> {
    let (seq, ts, value) = reading;
    let payload = serde_json::to_vec(&Reading { id: seq, ts, value }).unwrap_or_default();
    let delivery = client
        .publish_message(message(topics::telemetry(id, SENSOR), payload, false))
        .await
        .ok()?;
    Some(Box::pin(async move { (reading, delivery.await) }))
}

/// Subscribes to the device's commands and publishes status and meta (retained), as the agent
/// does on every connect.
async fn announce(client: &Client, spec: &DeviceSpec, interval: Duration) -> Result<(), String> {
    let code = client
        .subscribe(topics::device_commands(&spec.id), QoS::AtLeastOnce)
        .await
        .map_err(|e| client_error_label(&e))?;
    if code.is_error() {
        return Err(format!("SUBACK {}", code_label(code)));
    }
    for (topic, payload) in [
        (topics::status(&spec.id), topics::ONLINE.as_bytes().to_vec()),
        (topics::meta(&spec.id), meta(interval)),
    ] {
        client
            .publish_message(message(topic, payload, true))
            .await
            .map_err(|e| client_error_label(&e))?
            .await
            .map_err(|e| client_error_label(&e))?;
    }
    Ok(())
}

/// The ack and the state report for a command on `devices/{id}/set/{name}`: a valid command
/// for our output is applied (the value echoed back as read), anything else refused.
fn answer(id: &str, p: &Publish) -> Vec<Publish> {
    let Some(name) = p
        .topic
        .as_str()
        .strip_prefix(&format!("devices/{id}/set/"))
        .map(str::to_string)
    else {
        return Vec::new();
    };
    let Ok(command) = serde_json::from_slice::<Command>(&p.payload) else {
        return Vec::new();
    };
    let Some(cmd_id) = command.id.clone() else {
        return Vec::new();
    };
    let valid = name == OUTPUT && command.value.is_boolean();
    let ack = Ack {
        id: cmd_id.clone(),
        name: name.clone(),
        ok: valid,
        value: valid.then(|| command.value.clone()),
        error: (!valid).then(|| format!("unknown output or wrong type for '{name}'")),
    };
    let mut out = vec![message(
        topics::ack(id),
        serde_json::to_vec(&ack).unwrap_or_default(),
        false,
    )];
    if valid {
        let state = StateReport {
            value: command.value,
            ts: now_ms(),
            cmd: Some(cmd_id),
        };
        out.push(message(
            topics::state(id, &name),
            serde_json::to_vec(&state).unwrap_or_default(),
            true,
        ));
    }
    out
}

/// `Server { code: NotAuthorized, reason: Some("...") }` -> `Server { code: NotAuthorized`.
fn short_reason(debug: &str) -> String {
    debug.split(", reason").next().unwrap_or(debug).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_round_trip_and_sort_like_indexes() {
        assert_eq!(device_id(42), "soak-00042");
        assert_eq!(device_index("soak-00042"), Some(42));
        assert_eq!(device_index("abuse-deep-0"), None);
        assert!(device_id(9) < device_id(10));
        assert!(proto::topics::validate_device_id(&device_id(99_999)).is_ok());
    }

    #[test]
    fn publishing_phases_spread_over_the_interval() {
        let span = Duration::from_secs(10);
        let phases: Vec<Duration> = (0..1000).map(|i| spread(i, span)).collect();
        assert!(phases.iter().all(|p| *p < span));
        // Each tenth of the interval gets some devices: no thundering herd.
        for tenth in 0..10 {
            let lo = span * tenth / 10;
            let hi = span * (tenth + 1) / 10;
            let n = phases.iter().filter(|p| **p >= lo && **p < hi).count();
            assert!((50..150).contains(&n), "tenth {tenth}: {n} devices");
        }
    }

    #[test]
    fn a_command_is_answered_with_an_ack_and_a_state_carrying_its_id() {
        let mut p = Publish::new("devices/d1/set/led", &br#"{"value":true,"id":"c7"}"#[..]);
        p.qos = QoS::AtLeastOnce;
        let out = answer("d1", &p);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic.as_str(), "devices/d1/ack");
        let ack: Ack = serde_json::from_slice(&out[0].payload).unwrap();
        assert_eq!((ack.id.as_str(), ack.ok), ("c7", true));
        assert_eq!(ack.value, Some(serde_json::json!(true)));
        assert_eq!(out[1].topic.as_str(), "devices/d1/state/led");
        assert!(out[1].retain);
        let state: StateReport = serde_json::from_slice(&out[1].payload).unwrap();
        assert_eq!(state.cmd.as_deref(), Some("c7"));

        let wrong = Publish::new("devices/d1/set/fan", &br#"{"value":1,"id":"c8"}"#[..]);
        let out = answer("d1", &wrong);
        assert_eq!(out.len(), 1, "a refused command gets an ack only");
        let ack: Ack = serde_json::from_slice(&out[0].payload).unwrap();
        assert!(!ack.ok);
        assert!(answer("d1", &Publish::new("devices/d2/set/led", &b"{}"[..])).is_empty());
    }
}
