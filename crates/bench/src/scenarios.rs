//! The measurements. Every scenario runs against one [`Target`] with our MQTT client, counts
//! loss with per-publisher sequence numbers carried in the payload, and is bounded in
//! message count and time.

use std::{
    collections::VecDeque,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use client::{ClientOptions, Event, Events, ProtocolVersion, Publish, QoS};
use codec::{ConnAck, Connect, MqttCodec, Packet};
use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::Semaphore, task::JoinSet};
use tokio_util::codec::Framed;

use bench::procfs;

use crate::target::Target;

pub const PAYLOAD_SIZE: usize = 64;
/// A receiver that hears nothing for this long decides the rest was lost.
const IDLE: Duration = Duration::from_secs(2);

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Clone)]
pub struct Measurement {
    pub scenario: String,
    pub metric: &'static str,
    pub value: f64,
    pub better: Better,
}

fn m(scenario: &str, metric: &'static str, value: f64, better: Better) -> Measurement {
    Measurement {
        scenario: scenario.to_string(),
        metric,
        value,
        better,
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Payload: publisher id (u16), sequence number (u32), send time in ns since the bench
/// started (u64), zero padding to [`PAYLOAD_SIZE`].
fn payload(publisher: u16, seq: u32) -> Bytes {
    let mut b = BytesMut::with_capacity(PAYLOAD_SIZE);
    b.put_u16(publisher);
    b.put_u32(seq);
    b.put_u64(epoch().elapsed().as_nanos() as u64);
    b.resize(PAYLOAD_SIZE, 0);
    b.freeze()
}

fn parse_payload(p: &[u8]) -> Option<(u16, u32, u64)> {
    if p.len() < 14 {
        return None;
    }
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
        u64::from_be_bytes(p[6..14].try_into().ok()?),
    ))
}

/// Which (publisher, sequence) pairs arrived.
struct Tracker {
    seen: Vec<Vec<bool>>,
    unique: u64,
    duplicates: u64,
    expected: u64,
}

impl Tracker {
    fn new(publishers: usize, per_publisher: usize) -> Tracker {
        Tracker {
            seen: vec![vec![false; per_publisher]; publishers],
            unique: 0,
            duplicates: 0,
            expected: (publishers * per_publisher) as u64,
        }
    }

    fn record(&mut self, payload: &[u8]) {
        let Some((publisher, seq, _)) = parse_payload(payload) else {
            return;
        };
        let Some(slot) = self
            .seen
            .get_mut(usize::from(publisher))
            .and_then(|s| s.get_mut(seq as usize))
        else {
            return;
        };
        if *slot {
            self.duplicates += 1;
        } else {
            *slot = true;
            self.unique += 1;
        }
    }

    fn complete(&self) -> bool {
        self.unique == self.expected
    }
}

fn options(url: String, id: String) -> ClientOptions {
    let mut o = ClientOptions::new(url, id);
    o.version = ProtocolVersion::V3_1_1;
    o.keep_alive = 60;
    o.event_capacity = 65_536;
    o
}

/// Receives until every expected message arrived or nothing arrives for [`IDLE`]; returns
/// the tracker and the time of the last message.
async fn collect(mut events: Events, mut tracker: Tracker) -> (Tracker, Instant) {
    let mut last = Instant::now();
    while !tracker.complete() {
        match tokio::time::timeout(IDLE, events.recv()).await {
            Ok(Some(Event::Publish(p))) => {
                tracker.record(&p.payload);
                last = Instant::now();
            }
            Ok(Some(Event::Disconnected(reason))) => {
                eprintln!("  subscriber disconnected: {reason:?}");
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    (tracker, last)
}

/// Publishes `count` messages; QoS 1/2 with up to `window` unacknowledged.
async fn publish_all(
    client: &client::Client,
    topic: &str,
    publisher: u16,
    count: usize,
    qos: QoS,
    window: usize,
) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    for seq in 0..count {
        let mut message = Publish::new(topic, payload(publisher, seq as u32));
        message.qos = qos;
        if qos == QoS::AtMostOnce {
            client.publish_detached(message).await?;
        } else {
            pending.push_back(client.publish_message(message).await?);
            if pending.len() >= window
                && let Some(d) = pending.pop_front()
            {
                d.await?;
            }
        }
    }
    for d in pending {
        d.await?;
    }
    Ok(())
}

fn loss_percent(tracker: &Tracker) -> f64 {
    100.0 * (tracker.expected - tracker.unique) as f64 / tracker.expected.max(1) as f64
}

/// N publishers -> 1 subscriber on a wildcard.
pub async fn fan_in(
    t: &Target,
    qos: QoS,
    publishers: usize,
    per_publisher: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let name = format!("fan-in {publishers}->1 QoS{} {PAYLOAD_SIZE}B", qos.as_u8());
    let (sub, events) = client::connect(&options(t.url(), "fanin-sub".into())).await?;
    sub.subscribe("bench/in/#", qos).await?;
    let cpu0 = procfs::cpu_seconds(t.pid);
    let start = Instant::now();
    let collector = tokio::spawn(collect(events, Tracker::new(publishers, per_publisher)));
    let mut set = JoinSet::new();
    for p in 0..publishers {
        let url = t.url();
        set.spawn(async move {
            let (c, _events) = client::connect(&options(url, format!("fanin-pub-{p}"))).await?;
            publish_all(
                &c,
                &format!("bench/in/{p}"),
                p as u16,
                per_publisher,
                qos,
                100,
            )
            .await?;
            c.disconnect().await?;
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let (tracker, last) = collector.await?;
    let cpu1 = procfs::cpu_seconds(t.pid);
    let _ = sub.disconnect().await;
    let secs = (last - start).as_secs_f64().max(1e-6);
    let mut out = vec![
        m(
            &name,
            "msgs/s",
            tracker.unique as f64 / secs,
            Better::Higher,
        ),
        m(&name, "loss %", loss_percent(&tracker), Better::Lower),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        out.push(m(
            &name,
            "CPU us/msg",
            (b - a) * 1e6 / tracker.unique.max(1) as f64,
            Better::Lower,
        ));
    }
    if tracker.duplicates > 0 {
        out.push(m(
            &name,
            "duplicates",
            tracker.duplicates as f64,
            Better::Lower,
        ));
    }
    Ok(out)
}

/// 1 publisher -> N subscribers of one topic.
pub async fn fan_out(
    t: &Target,
    qos: QoS,
    subscribers: usize,
    messages: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let name = format!(
        "fan-out 1->{subscribers} QoS{} {PAYLOAD_SIZE}B",
        qos.as_u8()
    );
    let mut subs = Vec::new();
    let mut collectors = Vec::new();
    let mut connecting = JoinSet::new();
    for i in 0..subscribers {
        let url = t.url();
        connecting.spawn(async move {
            let (c, events) = client::connect(&options(url, format!("fanout-sub-{i}"))).await?;
            c.subscribe("bench/out", qos).await?;
            anyhow::Ok((c, events))
        });
    }
    let mut all_events = Vec::new();
    while let Some(r) = connecting.join_next().await {
        let (c, events) = r??;
        subs.push(c);
        all_events.push(events);
    }
    let cpu0 = procfs::cpu_seconds(t.pid);
    let start = Instant::now();
    for events in all_events {
        collectors.push(tokio::spawn(collect(events, Tracker::new(1, messages))));
    }
    let (publisher, _events) = client::connect(&options(t.url(), "fanout-pub".into())).await?;
    publish_all(&publisher, "bench/out", 0, messages, qos, 100).await?;
    let mut unique = 0;
    let mut duplicates = 0;
    let mut last = start;
    for c in collectors {
        let (tracker, at) = c.await?;
        unique += tracker.unique;
        duplicates += tracker.duplicates;
        last = last.max(at);
    }
    let cpu1 = procfs::cpu_seconds(t.pid);
    let _ = publisher.disconnect().await;
    for s in subs {
        let _ = s.disconnect().await;
    }
    let expected = (subscribers * messages) as u64;
    let secs = (last - start).as_secs_f64().max(1e-6);
    let mut out = vec![
        m(&name, "deliveries/s", unique as f64 / secs, Better::Higher),
        m(
            &name,
            "loss %",
            100.0 * (expected - unique) as f64 / expected as f64,
            Better::Lower,
        ),
    ];
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        out.push(m(
            &name,
            "CPU us/msg",
            (b - a) * 1e6 / unique.max(1) as f64,
            Better::Lower,
        ));
    }
    if duplicates > 0 {
        out.push(m(&name, "duplicates", duplicates as f64, Better::Lower));
    }
    Ok(out)
}

/// One-way latency at a fixed rate, publisher and subscriber in this process.
pub async fn latency(t: &Target, rate: u32, secs: u32) -> anyhow::Result<Vec<Measurement>> {
    let name = format!("latency {rate} msg/s QoS1 {PAYLOAD_SIZE}B");
    let count = (rate * secs) as usize;
    let (sub, mut events) = client::connect(&options(t.url(), "lat-sub".into())).await?;
    sub.subscribe("bench/lat", QoS::AtLeastOnce).await?;
    let collector = tokio::spawn(async move {
        let mut tracker = Tracker::new(1, count);
        let mut samples = Vec::with_capacity(count);
        while !tracker.complete() {
            match tokio::time::timeout(IDLE, events.recv()).await {
                Ok(Some(Event::Publish(p))) => {
                    let now = epoch().elapsed().as_nanos() as u64;
                    if let Some((_, _, sent)) = parse_payload(&p.payload) {
                        samples.push(now.saturating_sub(sent));
                    }
                    tracker.record(&p.payload);
                }
                _ => break,
            }
        }
        (tracker, samples)
    });
    let (publisher, _events) = client::connect(&options(t.url(), "lat-pub".into())).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    for seq in 0..count {
        tick.tick().await;
        let mut message = Publish::new("bench/lat", payload(0, seq as u32));
        message.qos = QoS::AtLeastOnce;
        publisher.publish_detached(message).await?;
    }
    let (tracker, mut samples) = collector.await?;
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    if samples.is_empty() {
        bail!("{name}: no message arrived");
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    Ok(vec![
        m(&name, "p50 us", pct(0.50), Better::Lower),
        m(&name, "p99 us", pct(0.99), Better::Lower),
        m(&name, "max us", pct(1.0), Better::Lower),
        m(&name, "loss %", loss_percent(&tracker), Better::Lower),
    ])
}

/// Opens `n` idle MQTT connections; measures the time to connect them and the broker's RSS
/// growth per connection.
pub async fn idle_connections(t: &Target, n: usize) -> anyhow::Result<Vec<Measurement>> {
    let name = format!("{n} idle connections");
    let rss0 = procfs::rss_kib(t.pid).context("reading broker RSS")?;
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(100));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let port = t.port;
        set.spawn(async move {
            let result = idle_connect(port, i).await;
            drop(permit);
            result
        });
    }
    let mut connections = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        connections.push(r??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rss1 = procfs::rss_kib(t.pid).context("reading broker RSS")?;
    drop(connections);
    Ok(vec![
        m(&name, "connect all (s)", elapsed, Better::Lower),
        m(
            &name,
            "RSS KiB/conn",
            rss1.saturating_sub(rss0) as f64 / n as f64,
            Better::Lower,
        ),
    ])
}

async fn idle_connect(port: u16, i: usize) -> anyhow::Result<Framed<TcpStream, MqttCodec>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("idle connection {i}"))?;
    let mut framed = Framed::new(tcp, MqttCodec::new(ProtocolVersion::V3_1_1, 1 << 16));
    let mut connect = Connect::new(ProtocolVersion::V3_1_1, format!("idle-{i}"));
    connect.keep_alive = 0;
    framed.send(Packet::Connect(Box::new(connect))).await?;
    match framed.next().await {
        Some(Ok(Packet::ConnAck(ConnAck { reason_code, .. }))) if !reason_code.is_error() => {
            Ok(framed)
        }
        other => bail!("idle connection {i}: expected CONNACK, got {other:?}"),
    }
}

/// Full TLS handshakes + CONNECT/CONNACK per second (`concurrency` at a time).
pub async fn tls_connections(
    t: &Target,
    tls: Arc<rustls::ClientConfig>,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Measurement>> {
    let name = format!("TLS connect+CONNACK ({concurrency} parallel)");
    let permits = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let mut o = options(t.tls_url(), format!("tls-{i}"));
        o.tls = Some(tls.clone());
        set.spawn(async move {
            let (c, _events) = client::connect(&o).await?;
            c.disconnect().await?;
            drop(permit);
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(vec![m(
        &name,
        "conns/s",
        n as f64 / start.elapsed().as_secs_f64(),
        Better::Higher,
    )])
}
