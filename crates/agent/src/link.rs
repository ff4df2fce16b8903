//! The connection to the broker: TLS with the device certificate or token from the bundle,
//! a will that marks the device offline, reconnects with jittered exponential backoff, and on
//! every connect: `meta`, current state (retained), `status online`, the `set/+` subscription,
//! then the outbox drained in order.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use client::{Client, ClientError, ClientOptions, Delivery, Event, Events, LastWill, Publish, QoS};
use proto::{
    bundle::{Bundle, Credentials},
    payload::{Ack, Command, Meta, StateReport},
    topics,
};
use rand::Rng;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::{
    commands::Outputs, config::LinkConfig, fsutil::now_ms, outbox::Outbox, status::LinkState,
};

/// Messages in flight from the outbox at once.
const WINDOW: usize = 64;
/// Name of the retained report of how many queued items were dropped because the queue was full.
pub const DROPPED_STATE: &str = "agent_dropped";

/// Everything the link needs; built by [`crate::agent`].
pub struct Link {
    pub bundle: Bundle,
    pub config: LinkConfig,
    pub meta: Arc<Meta>,
    pub outputs: Arc<Mutex<Outputs>>,
    /// Latest input states, re-published on connect.
    pub input_states: Arc<Mutex<BTreeMap<String, StateReport>>>,
    pub outbox: Outbox,
    pub replay_per_second: u32,
    /// Live state changes (inputs) to publish while connected.
    pub state_rx: mpsc::UnboundedReceiver<(String, StateReport)>,
    pub link_state: watch::Sender<LinkState>,
}

/// Builds the client options for one broker URL.
pub fn client_options(
    bundle: &Bundle,
    url: &str,
    keep_alive: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> ClientOptions {
    let mut o = ClientOptions::new(url, bundle.device_id.clone());
    o.keep_alive = keep_alive;
    o.will = Some(LastWill {
        topic: topics::status(&bundle.device_id).into(),
        payload: topics::OFFLINE.into(),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    });
    o.tls = tls;
    if let Credentials::Token { token } = &bundle.credentials {
        o.username = Some(bundle.device_id.clone());
        o.password = Some(token.clone().into_bytes().into());
    }
    o
}

/// The TLS configuration for a bundle: its CA, and its client certificate if it has one.
pub fn tls_for(bundle: &Bundle) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let auth = match &bundle.credentials {
        Credentials::Certificate { cert_pem, key_pem } => {
            Some((cert_pem.as_str(), key_pem.as_str()))
        }
        Credentials::Token { .. } => None,
    };
    Ok(Arc::new(client::tls_config(&bundle.ca_pem, auth)?))
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl Link {
    /// Runs until `shutdown` turns true; then publishes `offline` and disconnects cleanly.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let tls = match tls_for(&self.bundle) {
            Ok(t) => Some(t),
            Err(err) => {
                tracing::error!(%err, "the bundle's certificates are unusable; the agent cannot connect");
                let _ = self.link_state.send(LinkState::Failed {
                    error: err.to_string(),
                });
                let _ = crate::fsutil::stopped(&mut shutdown).await;
                let _ = self.link_state.send(LinkState::Stopped);
                return;
            }
        };
        let initial = Duration::from_millis(self.config.backoff_initial_ms.max(1));
        let max = Duration::from_millis(
            self.config
                .backoff_max_ms
                .max(self.config.backoff_initial_ms),
        );
        let mut backoff = initial;
        loop {
            let mut last_error = String::new();
            let mut connected = None;
            for url in self.bundle.broker_urls.clone() {
                let _ = self
                    .link_state
                    .send(LinkState::Connecting { url: url.clone() });
                let tls = if url.starts_with("mqtts://") {
                    tls.clone()
                } else {
                    None
                };
                let options = client_options(&self.bundle, &url, self.config.keep_alive_s, tls);
                let attempt = tokio::select! {
                    r = client::connect(&options) => r,
                    _ = crate::fsutil::stopped(&mut shutdown) => {
                        let _ = self.link_state.send(LinkState::Stopped);
                        return;
                    }
                };
                match attempt {
                    Ok(c) => {
                        connected = Some((url, c));
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(%url, %err, "cannot connect to the broker");
                        last_error = err.to_string();
                    }
                }
            }
            if let Some((url, (client, events))) = connected {
                tracing::info!(%url, device = %self.bundle.device_id, "connected to the broker");
                backoff = initial;
                match self.session(&url, &client, events, &mut shutdown).await {
                    Ended::Shutdown => {
                        let _ = self.link_state.send(LinkState::Stopped);
                        return;
                    }
                    Ended::Lost(err) => {
                        tracing::warn!(%url, error = %err, "lost the broker connection");
                        last_error = err;
                        client.abort().await;
                    }
                }
            }
            // Jitter spreads a fleet's reconnects after a broker restart.
            let delay = rand::rng().random_range(backoff / 2..=backoff);
            let _ = self.link_state.send(LinkState::Disconnected {
                error: last_error,
                retry_in_ms: delay.as_millis() as u64,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::fsutil::stopped(&mut shutdown) => {
                    let _ = self.link_state.send(LinkState::Stopped);
                    return;
                }
            }
            backoff = (backoff * 2).min(max);
        }
    }

    async fn announce(&self, client: &Client) -> Result<(), ClientError> {
        let id = &self.bundle.device_id;
        let meta = serde_json::to_vec(&*self.meta).unwrap_or_default();
        client
            .publish(topics::meta(id), meta, QoS::AtLeastOnce, true)
            .await?;
        let mut states = self
            .outputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .states();
        states.extend(
            self.input_states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(n, s)| (n.clone(), s.clone())),
        );
        for (name, state) in states {
            let payload = serde_json::to_vec(&state).unwrap_or_default();
            client
                .publish(topics::state(id, &name), payload, QoS::AtLeastOnce, true)
                .await?;
        }
        let code = client
            .subscribe(format!("{}/{}/set/+", topics::ROOT, id), QoS::AtLeastOnce)
            .await?;
        if code.is_error() {
            return Err(ClientError::Protocol(format!(
                "the broker refused the subscription to set/+ ({code}); check the device's permissions"
            )));
        }
        // Online only once commands can be received.
        client
            .publish(topics::status(id), topics::ONLINE, QoS::AtLeastOnce, true)
            .await?;
        Ok(())
    }

    async fn session(
        &mut self,
        url: &str,
        client: &Client,
        mut events: Events,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Ended {
        let announce = tokio::select! {
            r = self.announce(client) => r,
            _ = crate::fsutil::stopped(shutdown) => return self.goodbye(client).await,
        };
        if let Err(err) = announce {
            return Ended::Lost(err.to_string());
        }
        let _ = self.link_state.send(LinkState::Connected {
            url: url.to_string(),
            since_ms: now_ms(),
        });
        let drain = drain(
            client.clone(),
            self.outbox.clone(),
            self.bundle.device_id.clone(),
            self.replay_per_second,
        );
        tokio::pin!(drain);
        loop {
            tokio::select! {
                _ = crate::fsutil::stopped(shutdown) => return self.goodbye(client).await,
                event = events.recv() => match event {
                    Some(Event::Publish(p)) => self.on_message(client, &p).await,
                    Some(Event::Disconnected(reason)) => return Ended::Lost(format!("{reason:?}")),
                    None => return Ended::Lost("the connection closed".into()),
                },
                Some((name, state)) = self.state_rx.recv() => {
                    let payload = serde_json::to_vec(&state).unwrap_or_default();
                    let mut msg = Publish::new(topics::state(&self.bundle.device_id, &name), payload);
                    msg.qos = QoS::AtLeastOnce;
                    msg.retain = true;
                    if client.publish_detached(msg).await.is_err() {
                        return Ended::Lost("the connection closed".into());
                    }
                }
                result = &mut drain => return Ended::Lost(match result {
                    Ok(()) => "the outbox sender stopped".into(),
                    Err(e) => e,
                }),
            }
        }
    }

    async fn goodbye(&self, client: &Client) -> Ended {
        let bye = async {
            let _ = client
                .publish(
                    topics::status(&self.bundle.device_id),
                    topics::OFFLINE,
                    QoS::AtLeastOnce,
                    true,
                )
                .await;
            let _ = client.disconnect().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), bye).await;
        Ended::Shutdown
    }

    async fn on_message(&self, client: &Client, p: &Publish) {
        let Some(t) = topics::parse(p.topic.as_str()) else {
            return;
        };
        if t.kind != topics::TopicKind::Set || t.device_id != self.bundle.device_id {
            return;
        }
        let Some(name) = t.name else { return };
        let applied = match serde_json::from_slice::<Command>(&p.payload) {
            Ok(command) => self
                .outputs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(name, command),
            Err(err) => {
                // Answer malformed commands too, if we can find their id.
                let id = serde_json::from_slice::<serde_json::Value>(&p.payload)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
                tracing::info!(output = %name, %err, "ignoring a malformed command");
                crate::commands::Applied {
                    ack: id.map(|id| Ack {
                        id,
                        name: name.to_string(),
                        ok: false,
                        value: None,
                        error: Some(format!(
                            "invalid command: {err}; expected {{\"value\": ..., \"id\": \"...\"}}"
                        )),
                    }),
                    state: None,
                }
            }
        };
        let id = &self.bundle.device_id;
        if let Some((name, state)) = applied.state {
            let mut msg = Publish::new(
                topics::state(id, &name),
                serde_json::to_vec(&state).unwrap_or_default(),
            );
            msg.qos = QoS::AtLeastOnce;
            msg.retain = true;
            let _ = client.publish_detached(msg).await;
        }
        if let Some(ack) = applied.ack {
            let mut msg = Publish::new(
                topics::ack(id),
                serde_json::to_vec(&ack).unwrap_or_default(),
            );
            msg.qos = QoS::AtLeastOnce;
            let _ = client.publish_detached(msg).await;
        }
    }
}

/// A token bucket: at most `rate` sends per second, bursts of up to 1/20 s worth.
struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    fn new(rate: u32) -> Throttle {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 20.0).max(1.0);
        Throttle {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate)
                .min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)).await;
        }
    }
}

/// Sends the outbox in id order, up to [`WINDOW`] in flight, removing each item once the
/// broker acknowledged it. Returns only on error (the connection is gone).
async fn drain(client: Client, outbox: Outbox, device_id: String, rate: u32) -> Result<(), String> {
    let mut throttle = Throttle::new(rate);
    let mut window: VecDeque<(i64, Delivery)> = VecDeque::new();
    let mut after = 0i64;
    let mut acked: Option<i64> = None;
    let mut reported_dropped = None;
    let result = async {
        loop {
            if reported_dropped != Some(outbox.dropped()) && outbox.dropped() > 0 {
                let dropped = outbox.dropped();
                let state = StateReport {
                    value: dropped.into(),
                    ts: now_ms(),
                    cmd: None,
                };
                let mut msg = Publish::new(
                    topics::state(&device_id, DROPPED_STATE),
                    serde_json::to_vec(&state).unwrap_or_default(),
                );
                msg.qos = QoS::AtLeastOnce;
                msg.retain = true;
                client
                    .publish_detached(msg)
                    .await
                    .map_err(|e| e.to_string())?;
                reported_dropped = Some(dropped);
            }
            let batch = outbox.peek(after, 256).await.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                while let Some((id, delivery)) = window.pop_front() {
                    delivery.await.map_err(|e| e.to_string())?;
                    acked = Some(id);
                }
                if let Some(id) = acked.take() {
                    outbox.remove_through(id).await.map_err(|e| e.to_string())?;
                }
                outbox.pushed().await;
                continue;
            }
            for item in batch {
                throttle.take().await;
                let mut msg = Publish::new(item.topic(&device_id), item.payload());
                msg.qos = QoS::AtLeastOnce;
                let delivery = client
                    .publish_message(msg)
                    .await
                    .map_err(|e| e.to_string())?;
                window.push_back((item.id, delivery));
                after = item.id;
                if window.len() >= WINDOW {
                    while window.len() > WINDOW / 2 {
                        if let Some((id, delivery)) = window.pop_front() {
                            delivery.await.map_err(|e| e.to_string())?;
                            acked = Some(id);
                        }
                    }
                    if let Some(id) = acked.take() {
                        outbox.remove_through(id).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
    .await;
    // What the broker did acknowledge must not be sent again after the reconnect.
    if let Some(id) = acked {
        let _ = outbox.remove_through(id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(credentials: Credentials) -> Bundle {
        Bundle {
            device_id: "d1".into(),
            broker_urls: vec!["mqtts://127.0.0.1:8883".into()],
            api_url: None,
            ca_pem: String::new(),
            credentials,
        }
    }

    #[test]
    fn token_devices_log_in_with_their_id_and_everyone_leaves_a_will() {
        let o = client_options(
            &bundle(Credentials::Token {
                token: "s3cret".into(),
            }),
            "mqtts://127.0.0.1:8883",
            30,
            None,
        );
        assert_eq!(o.client_id, "d1");
        assert_eq!(o.username.as_deref(), Some("d1"));
        assert_eq!(o.password.as_deref(), Some(&b"s3cret"[..]));
        let will = o.will.unwrap();
        assert_eq!(
            (will.topic.as_str(), &will.payload[..], will.retain),
            ("devices/d1/status", &b"offline"[..], true)
        );
        let o = client_options(
            &bundle(Credentials::Certificate {
                cert_pem: "c".into(),
                key_pem: "k".into(),
            }),
            "mqtts://127.0.0.1:8883",
            30,
            None,
        );
        assert_eq!((o.username, o.password), (None, None));
    }

    #[tokio::test]
    async fn throttle_limits_the_rate() {
        let mut t = Throttle::new(200);
        let start = Instant::now();
        for _ in 0..60 {
            t.take().await;
        }
        // A burst of 10, then 50 at 200/s.
        assert!(
            start.elapsed() >= Duration::from_millis(240),
            "{:?}",
            start.elapsed()
        );
    }
}
