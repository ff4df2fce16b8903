//! The abusive clients of issue 8, run alongside the legitimate fleet: a login flood (HTTPS
//! and MQTT), deep-filter SUBSCRIBEs, slowloris connections and a retained-message flood.
//! Each counts how the server answered every attempt.

pub mod deep;
pub mod login;
pub mod retained;
pub mod slowloris;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::{device::DeviceSpec, tally::Tally};
use slowloris::{SlowKind, SlowStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// Wrong-password logins over HTTPS and MQTT CONNECT, from a rotating pool of addresses.
    Login,
    /// SUBSCRIBEs with very deep filters under the abuser's own `devices/{id}/set/`.
    Deep,
    /// Connections that send one byte every few seconds (TLS handshake, MQTT CONNECT, HTTP
    /// headers).
    Slowloris,
    /// Many distinct retained topics under the abuser's own tree.
    Retained,
}

/// Sizes and rates of the attacks.
#[derive(Debug, Clone)]
pub struct AbuseConfig {
    pub attacks: Vec<Attack>,
    /// Parallel login attempts per protocol (HTTPS and MQTT each).
    pub login_workers: usize,
    /// Most login attempts per second per protocol (a fast refusal would otherwise turn the
    /// flood into a TLS handshake benchmark of the load generator).
    pub login_rate: f64,
    pub deep_levels: usize,
    pub deep_every: Duration,
    /// Connections per slowloris kind.
    pub slowloris: usize,
    pub drip: Duration,
    /// Retained publishes per second, over all retained abusers.
    pub retained_rate: f64,
    pub retained_payload: usize,
}

impl AbuseConfig {
    /// One line per attack that runs, saying how hard it pushes.
    pub fn describe(&self, deep_abusers: usize, retained_abusers: usize) -> Vec<String> {
        let mut out = Vec::new();
        for attack in &self.attacks {
            out.push(match attack {
                Attack::Login => format!(
                    "login flood: {} parallel attempts per protocol (HTTPS, MQTT), at most {}/s each, \
                     from 4,096 rotating addresses",
                    self.login_workers, self.login_rate
                ),
                Attack::Deep => format!(
                    "deep filters: {deep_abusers} devices, a {}-level filter each every {} s",
                    self.deep_levels,
                    self.deep_every.as_secs()
                ),
                Attack::Slowloris => format!(
                    "slowloris: {} connections of each of 4 kinds, one byte every {} s",
                    self.slowloris,
                    self.drip.as_secs()
                ),
                Attack::Retained => format!(
                    "retained flood: {retained_abusers} devices, {}/s in all, {} B each, new topic every time",
                    self.retained_rate, self.retained_payload
                ),
            });
        }
        out
    }
}

/// Where the attacks go, and who they are.
#[derive(Clone)]
pub struct Target {
    pub mqtts: SocketAddr,
    pub https: SocketAddr,
    pub tls: TlsConnector,
    pub tls_config: Arc<rustls::ClientConfig>,
    /// Registered devices whose own credentials the deep-filter abusers use.
    pub deep_abusers: Vec<DeviceSpec>,
    pub retained_abusers: Vec<DeviceSpec>,
    /// Legitimate device ids, for MQTT logins with a real device id and a wrong token.
    pub device_ids: Arc<Vec<String>>,
}

/// How the server answered, per attack.
#[derive(Default)]
pub struct AbuseReport {
    pub login_http: Tally,
    pub login_mqtt: Tally,
    pub deep: Tally,
    pub retained: Tally,
    pub slowloris: Vec<(SlowKind, Arc<SlowStats>)>,
}

pub struct Abuse {
    pub report: AbuseReport,
    tasks: JoinSet<()>,
    /// Attackers that stay connected after the stop until [`Abuse::release`].
    holders: JoinSet<()>,
    stop: CancellationToken,
    release: CancellationToken,
}

impl Abuse {
    pub fn start(config: &AbuseConfig, target: Target) -> anyhow::Result<Abuse> {
        let stop = CancellationToken::new();
        let release = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut holders = JoinSet::new();
        let mut report = AbuseReport::default();
        let on = |a: Attack| config.attacks.contains(&a);
        if on(Attack::Login) {
            for worker in 0..config.login_workers {
                let pace = Duration::from_secs_f64(
                    config.login_workers as f64 / config.login_rate.max(0.001),
                );
                tasks.spawn(login::http_worker(
                    target.clone(),
                    worker,
                    pace,
                    report.login_http.clone(),
                    stop.clone(),
                ));
                tasks.spawn(login::mqtt_worker(
                    target.clone(),
                    worker,
                    pace,
                    report.login_mqtt.clone(),
                    stop.clone(),
                ));
            }
        }
        if on(Attack::Deep) {
            for (k, spec) in target.deep_abusers.iter().enumerate() {
                holders.spawn(deep::abuser(
                    target.clone(),
                    spec.clone(),
                    k,
                    deep::DeepShape {
                        levels: config.deep_levels,
                        every: config.deep_every,
                    },
                    report.deep.clone(),
                    stop.clone(),
                    release.clone(),
                ));
            }
        }
        if on(Attack::Retained) && !target.retained_abusers.is_empty() {
            let per_abuser = config.retained_rate / target.retained_abusers.len() as f64;
            for (k, spec) in target.retained_abusers.iter().enumerate() {
                tasks.spawn(retained::abuser(
                    target.clone(),
                    spec.clone(),
                    target.deep_abusers.len() + k,
                    per_abuser,
                    config.retained_payload,
                    report.retained.clone(),
                    stop.clone(),
                ));
            }
        }
        if on(Attack::Slowloris) {
            for kind in SlowKind::ALL {
                let stats = Arc::new(SlowStats::default());
                let payload = Arc::new(kind.payload(&target.tls_config)?);
                for _ in 0..config.slowloris {
                    tasks.spawn(slowloris::slot(
                        target.clone(),
                        kind,
                        payload.clone(),
                        config.drip,
                        stats.clone(),
                        stop.clone(),
                    ));
                }
                report.slowloris.push((kind, stats));
            }
        }
        Ok(Abuse {
            report,
            tasks,
            holders,
            stop,
            release,
        })
    }

    /// Stops every attack and waits for the attackers to record their last outcome; the
    /// deep-filter abusers stay connected until [`Abuse::release`].
    pub async fn finish(&mut self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(40), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }

    /// Lets the remaining attackers disconnect.
    pub async fn release(mut self) -> AbuseReport {
        self.stop.cancel();
        self.release.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.holders.join_next().await.is_some() {}
        })
        .await;
        self.holders.abort_all();
        self.report
    }
}
