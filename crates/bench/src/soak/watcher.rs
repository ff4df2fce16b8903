//! The witness: a subscriber with admin rights (the soak's API token as MQTT credentials) on
//! every device's telemetry, recording which readings arrived, so that "lost" means acknowledged
//! to the device but never delivered.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::bail;
use bytes::Bytes;
use client::{ClientOptions, Event, QoS};
use proto::payload::Reading;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{
    api::TOKEN_NAME,
    device::{self, SENSOR},
    tally::Tally,
};

pub const FILTER: &str = "devices/+/telemetry/#";

/// What the watcher saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// `received[i]`: sequence numbers of device `i`'s readings, in arrival order.
    pub received: Vec<Vec<u64>>,
}

pub struct Watcher {
    /// Telemetry messages received so far (duplicates included).
    pub count: Arc<AtomicU64>,
    pub disconnects: Tally,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Seen>,
}

impl Watcher {
    /// Connects and subscribes before returning, so that nothing published afterwards is missed.
    pub async fn start(
        mqtts: SocketAddr,
        tls: TlsConnector,
        token: &str,
        devices: usize,
    ) -> anyhow::Result<Watcher> {
        let mut options = ClientOptions::new("mqtts://127.0.0.1:8883", "soak-watcher");
        options.username = Some(TOKEN_NAME.to_string());
        options.password = Some(Bytes::from(token.to_string().into_bytes()));
        // A persistent session: if the connection drops, the broker keeps queueing for it.
        options.clean_start = false;
        options.session_expiry = Some(3600);
        options.event_capacity = 65_536;
        let connect = || device::connect_mqtts(Ipv4Addr::LOCALHOST, mqtts, &tls, &options);
        let (client, mut events) = match connect().await {
            Ok(c) => c,
            Err(label) => bail!("the watcher cannot connect: {label}"),
        };
        let code = client.subscribe(FILTER, QoS::AtLeastOnce).await?;
        if code.is_error() {
            bail!(
                "the watcher may not subscribe to {FILTER}: {}",
                device::code_label(code)
            );
        }
        let count = Arc::new(AtomicU64::new(0));
        let disconnects = Tally::default();
        let stop = CancellationToken::new();
        let task = {
            let (count, disconnects, stop) = (count.clone(), disconnects.clone(), stop.clone());
            let tls = tls.clone();
            let options = options.clone();
            tokio::spawn(async move {
                let mut seen = Seen {
                    received: vec![Vec::new(); devices],
                };
                let mut client = client;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        event = events.recv() => match event {
                            Some(Event::Publish(p)) => {
                                count.fetch_add(1, Ordering::Relaxed);
                                if let Some((index, seq)) = parse(p.topic.as_str(), &p.payload)
                                    && let Some(list) = seen.received.get_mut(index)
                                {
                                    list.push(seq);
                                }
                            }
                            other => {
                                let reason = match other {
                                    Some(Event::Disconnected(reason)) => format!("{reason:?}"),
                                    _ => "connection task ended".to_string(),
                                };
                                disconnects.add(reason.chars().take(60).collect::<String>());
                                // Reconnect to the persistent session; its queue held meanwhile.
                                loop {
                                    if stop.is_cancelled() {
                                        return seen;
                                    }
                                    match device::connect_mqtts(Ipv4Addr::LOCALHOST, mqtts, &tls, &options).await {
                                        Ok((c, e)) => {
                                            client = c;
                                            events = e;
                                            break;
                                        }
                                        Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                                    }
                                }
                            }
                        }
                    }
                }
                let _ = client.disconnect().await;
                seen
            })
        };
        Ok(Watcher {
            count,
            disconnects,
            stop,
            task,
        })
    }

    pub async fn finish(self) -> Seen {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// `devices/soak-00042/telemetry/temp` + `{"id":7,...}` -> (42, 7).
fn parse(topic: &str, payload: &[u8]) -> Option<(usize, u64)> {
    let rest = topic.strip_prefix("devices/")?;
    let (id, sensor) = rest.split_once("/telemetry/")?;
    if sensor != SENSOR {
        return None;
    }
    let reading: Reading = serde_json::from_slice(payload).ok()?;
    Some((device::device_index(id)?, reading.id))
}

/// Readings acknowledged to device `i` that the watcher never received.
pub fn missing(acked: &[u64], received: &[u64]) -> u64 {
    let got: std::collections::HashSet<u64> = received.iter().copied().collect();
    acked.iter().filter(|seq| !got.contains(seq)).count() as u64
}

/// Deliveries beyond the first of a reading (QoS 1 allows them; reported, not failed).
pub fn duplicates(received: &[u64]) -> u64 {
    let distinct: std::collections::HashSet<u64> = received.iter().copied().collect();
    (received.len() - distinct.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_topics_map_to_device_and_sequence() {
        assert_eq!(
            parse(
                "devices/soak-00042/telemetry/temp",
                br#"{"id":7,"ts":1,"value":2.5}"#
            ),
            Some((42, 7))
        );
        assert_eq!(
            parse(
                "devices/soak-00042/telemetry/hum",
                br#"{"id":7,"ts":1,"value":2}"#
            ),
            None
        );
        assert_eq!(parse("devices/soak-00042/telemetry/temp", b"garbage"), None);
        assert_eq!(
            parse(
                "devices/abuse-x/telemetry/temp",
                br#"{"id":7,"ts":1,"value":2}"#
            ),
            None
        );
    }

    #[test]
    fn missing_counts_acknowledged_readings_never_received() {
        assert_eq!(missing(&[1, 2, 3, 4], &[4, 2, 2, 1]), 1);
        assert_eq!(missing(&[1, 2], &[]), 2);
        assert_eq!(missing(&[], &[5]), 0);
        assert_eq!(duplicates(&[4, 2, 2, 1, 4]), 2);
    }
}
