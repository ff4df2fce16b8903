//! The soak test of issue 8 (`scripts/soak`): a real `devicecloud server`, thousands of
//! legitimate devices over mqtts publishing QoS 1 telemetry and confirming commands sent
//! through the HTTP API, while abusive clients attack it. It reports what the legitimate
//! traffic got (nothing lost? p99 confirmation under 50 ms?) and how each attack was
//! answered, and exits non-zero when the bar is missed. Not part of CI: it takes minutes and
//! the whole machine.

pub mod abuse;
mod api;
mod commands;
pub mod device;
pub mod net;
pub mod report;
mod server;
pub mod tally;
mod watcher;

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{StreamExt, stream};
use tokio_util::sync::CancellationToken;

use crate::procfs;
use abuse::{Abuse, AbuseConfig, Attack};
use api::Api;
use device::{DeviceSpec, Fleet};
use report::Figures;
use server::ServerProc;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    about = "Soak test: N devices over mqtts publishing QoS 1 and confirming commands while \
             abusive clients attack the server (issue 8)"
)]
pub struct Args {
    /// The devicecloud binary under test.
    #[arg(long, default_value = "target/release/devicecloud")]
    pub devicecloud: PathBuf,
    /// Legitimate devices [default: 10000, or 1000 with --quick].
    #[arg(long)]
    pub devices: Option<usize>,
    /// Seconds of the run, after every device connected [default: 120, or 30 with --quick].
    #[arg(long)]
    pub duration: Option<u64>,
    /// A short run: 1,000 devices for 30 s (unless --devices / --duration say otherwise).
    #[arg(long)]
    pub quick: bool,
    /// Seconds between two readings of one device.
    #[arg(long, default_value_t = 10)]
    pub interval: u64,
    /// Commands per second through the HTTP API, to random connected devices.
    #[arg(long, default_value_t = 20.0)]
    pub command_rate: f64,
    /// Devices in the TLS handshake + CONNECT at once while the fleet connects.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Which attacks to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "login,deep,slowloris,retained"
    )]
    pub attacks: Vec<Attack>,
    /// Run no attack at all (a baseline for the same fleet and commands).
    #[arg(long, conflicts_with = "attacks")]
    pub no_attacks: bool,
    /// Parallel wrong logins per protocol (HTTPS and MQTT each).
    #[arg(long, default_value_t = 200)]
    pub login_workers: usize,
    /// Most wrong logins per second per protocol.
    #[arg(long, default_value_t = 100.0)]
    pub login_rate: f64,
    /// Levels of the deep filters.
    #[arg(long, default_value_t = 30_000)]
    pub deep_levels: usize,
    /// Devices sending deep filters.
    #[arg(long, default_value_t = 2)]
    pub deep_abusers: usize,
    /// Slowloris connections per kind (4 kinds: MQTT/HTTPS port, before/after TLS).
    #[arg(long, default_value_t = 250)]
    pub slowloris: usize,
    /// Seconds between two bytes of a slowloris connection.
    #[arg(long, default_value_t = 3)]
    pub drip: u64,
    /// Devices flooding retained messages.
    #[arg(long, default_value_t = 2)]
    pub retained_abusers: usize,
    /// Retained publishes per second, over all retained abusers.
    #[arg(long, default_value_t = 500.0)]
    pub retained_rate: f64,
    /// Keep the server's data directory and log after the run.
    #[arg(long)]
    pub keep_data: bool,
}

impl Args {
    fn devices(&self) -> usize {
        self.devices
            .unwrap_or(if self.quick { 1_000 } else { 10_000 })
    }

    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration.unwrap_or(if self.quick { 30 } else { 120 }))
    }

    fn attacks(&self) -> Vec<Attack> {
        if self.no_attacks {
            Vec::new()
        } else {
            self.attacks.clone()
        }
    }

    fn abuse(&self) -> AbuseConfig {
        AbuseConfig {
            attacks: self.attacks(),
            login_workers: self.login_workers,
            login_rate: self.login_rate,
            deep_levels: self.deep_levels,
            deep_every: Duration::from_secs(2),
            slowloris: self.slowloris,
            drip: Duration::from_secs(self.drip.max(1)),
            retained_rate: self.retained_rate,
            retained_payload: 512,
        }
    }

    /// File descriptors this process needs at most (every device, attacker and slot at once).
    fn descriptors_needed(&self) -> usize {
        let on = |a| self.attacks().contains(&a);
        self.devices()
            + self.deep_abusers
            + self.retained_abusers
            + if on(Attack::Login) {
                2 * self.login_workers
            } else {
                0
            }
            + if on(Attack::Slowloris) {
                4 * self.slowloris
            } else {
                0
            }
            + 2_000 // commands in flight, the API client, the watcher, stdio
    }
}

fn progress(started: Instant, message: impl AsRef<str>) {
    eprintln!(
        "[{:>5.0} s] {}",
        started.elapsed().as_secs_f64(),
        message.as_ref()
    );
}

/// Runs the soak; `Ok(true)` when it met the bar.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    let t = Instant::now();
    let devices = args.devices();
    if devices == 0 {
        bail!("--devices must be at least 1");
    }
    let needed = args.descriptors_needed();
    let limit = procfs::open_files_limit().unwrap_or(1024) as usize;
    if limit < needed {
        bail!(
            "the open-files limit is {limit}, the soak needs about {needed}: raise it (`ulimit -n {needed}`; \
             scripts/soak raises it to the hard limit) or run fewer --devices / --slowloris"
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("devicecloud-soak.")
        .tempdir()
        .context("creating a temporary directory")?;
    let data_dir = tmp.path().join("data");
    let log_path = tmp.path().join("server.log");
    progress(
        t,
        format!(
            "starting {} server in {}",
            args.devicecloud.display(),
            data_dir.display()
        ),
    );
    let server = ServerProc::start(&args.devicecloud, &data_dir, &log_path).await?;
    let idle = server.sample();
    let (tls, tls_config) = net::tls_connector(&server.ca_pem)?;
    let api = Api::connect(
        server.banner.https,
        tls_config.clone(),
        &server.banner.admin_password,
    )
    .await?;

    // Register every device (and the abusers) through the API, a few at a time.
    progress(
        t,
        format!("registering {devices} devices through POST /api/v1/devices"),
    );
    let created = Instant::now();
    let deep_ids: Vec<String> = (0..args.deep_abusers)
        .map(|k| format!("abuse-deep-{k}"))
        .collect();
    let retained_ids: Vec<String> = (0..args.retained_abusers)
        .map(|k| format!("abuse-retained-{k}"))
        .collect();
    let all_ids: Vec<String> = (0..devices)
        .map(device::device_id)
        .chain(deep_ids.iter().cloned())
        .chain(retained_ids.iter().cloned())
        .collect();
    let mut specs: Vec<DeviceSpec> = Vec::with_capacity(all_ids.len());
    let mut registrations = stream::iter(all_ids.iter().cloned().enumerate())
        .map(|(index, id)| {
            let api = api.clone();
            async move {
                (
                    index,
                    api.add_device(&id)
                        .await
                        .map(|token| DeviceSpec { index, id, token }),
                )
            }
        })
        .buffer_unordered(16);
    while let Some((_, spec)) = registrations.next().await {
        specs.push(spec?);
        if specs.len().is_multiple_of(2_000) {
            progress(t, format!("  {} registered", specs.len()));
        }
    }
    drop(registrations);
    specs.sort_by_key(|s| s.index);
    let retained_specs = specs.split_off(devices + deep_ids.len());
    let deep_specs = specs.split_off(devices);
    let create_time = created.elapsed();

    // The witness subscribes before any device publishes.
    let watcher =
        watcher::Watcher::start(server.banner.mqtts, tls.clone(), &api.token, devices).await?;

    progress(
        t,
        format!(
            "connecting {devices} devices over mqtts ({} at a time)",
            args.connect_concurrency
        ),
    );
    let connecting = Instant::now();
    let cpu_before_connect = server.sample();
    let interval = Duration::from_secs(args.interval.max(1));
    let fleet = Arc::new(Fleet::new(
        server.banner.mqtts,
        tls.clone(),
        interval,
        devices,
    ));
    let (drained_tx, mut drained) = tokio::sync::mpsc::unbounded_channel();
    let life = device::Lifecycle {
        stop: CancellationToken::new(),
        drained: drained_tx,
        leave: CancellationToken::new(),
    };
    let mut device_tasks = Vec::with_capacity(devices);
    let connect_deadline = Instant::now() + Duration::from_secs(600);
    for spec in specs {
        // Bound the handshakes in progress: a device counts as done once connected, or once it
        // failed at least once (it keeps retrying on its own).
        while device_tasks.len()
            >= fleet.ever_connected.load(Ordering::Relaxed)
                + fleet.stats.connect_failures.total() as usize
                + args.connect_concurrency
            && Instant::now() < connect_deadline
            && server.is_alive()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        device_tasks.push(tokio::spawn(device::run(spec, fleet.clone(), life.clone())));
        if device_tasks.len().is_multiple_of(2_000) {
            progress(
                t,
                format!(
                    "  {} started, {} connected",
                    device_tasks.len(),
                    fleet.ever_connected.load(Ordering::Relaxed)
                ),
            );
        }
    }
    while fleet.ever_connected.load(Ordering::Relaxed) < devices
        && Instant::now() < connect_deadline
        && server.is_alive()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_time = connecting.elapsed();
    let connected = server.sample();
    progress(
        t,
        format!(
            "{} of {devices} devices connected in {:.0} s (connect failures: {})",
            fleet.ever_connected.load(Ordering::Relaxed),
            connect_time.as_secs_f64(),
            fleet.stats.connect_failures.summary()
        ),
    );

    // The run: commands and attacks for `duration`, while the fleet keeps publishing.
    let duration = args.duration();
    progress(
        t,
        format!(
            "running for {:.0} s with attacks: {:?}",
            duration.as_secs_f64(),
            args.attacks()
        ),
    );
    let run_started = Instant::now();
    let run_start_sample = server.sample();
    let run_started_ms = device::now_ms();
    let load_cpu0 = procfs::cpu_seconds(std::process::id());
    let online_at_start = fleet.online_count();
    let mut abuse = Abuse::start(
        &args.abuse(),
        abuse::Target {
            mqtts: server.banner.mqtts,
            https: server.banner.https,
            tls: tls.clone(),
            tls_config: tls_config.clone(),
            deep_abusers: deep_specs,
            retained_abusers: retained_specs,
            device_ids: Arc::new((0..devices).map(device::device_id).collect()),
        },
    )?;
    let commands_stop = CancellationToken::new();
    let commands = tokio::spawn(commands::run(
        api.clone(),
        fleet.clone(),
        args.command_rate,
        commands_stop.clone(),
    ));
    let mut report_every = tokio::time::interval(Duration::from_secs(10));
    report_every.tick().await;
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = server.died.cancelled() => {
                progress(t, "the server DIED");
                break;
            }
            _ = report_every.tick() => progress(t, format!(
                "  {} online, {} readings acked, server RSS {} MiB",
                fleet.online_count(),
                fleet.stats.telemetry_acked.load(Ordering::Relaxed),
                server.last_sample().map_or(0, |s| s.rss_kib / 1024),
            )),
        }
    }
    let online_at_end = fleet.online_count();
    let run_time = run_started.elapsed();
    let run_end = server.sample();
    let load_cpu1 = procfs::cpu_seconds(std::process::id());
    commands_stop.cancel();
    progress(
        t,
        "stopping: waiting for the last command answers and attackers",
    );
    let command_stats = commands.await.unwrap_or_default();
    abuse.finish().await;

    // Stop publishing, collect the last PUBACKs, then see what arrived.
    progress(
        t,
        "stopping the fleet and collecting the last acknowledgements",
    );
    life.stop.cancel();
    let mut outcomes: Vec<device::DeviceOutcome> = (0..devices)
        .map(|_| device::DeviceOutcome::default())
        .collect();
    // Every device reports once its PUBACKs are in (or after the drain timeout).
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        // Each device task holds a sender until it leaves: count, do not wait for the close.
        for _ in 0..devices {
            let Some((index, outcome)) = drained.recv().await else {
                break;
            };
            outcomes[index] = outcome;
        }
    })
    .await;
    let acked_total: u64 = outcomes.iter().map(|o| o.acked.len() as u64).sum();
    // The watcher may still be receiving what was acknowledged last: wait until the count
    // stops growing (or covers everything).
    let mut last = (watcher.count.load(Ordering::Relaxed), Instant::now());
    while server.is_alive() && last.0 < acked_total && last.1.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = watcher.count.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    // What the server stored, device by device, through the telemetry API.
    let (lost_stored, stored_checked) = if server.is_alive() {
        progress(
            t,
            "checking the stored telemetry of every device through the API",
        );
        let (lost, checked) = check_stored(
            &api,
            &outcomes,
            run_started_ms - 600_000,
            device::now_ms() + 60_000,
        )
        .await;
        // Answers that never came from a server that died meanwhile prove nothing either way.
        (lost.filter(|_| server.is_alive()), checked)
    } else {
        (None, 0)
    };
    // The watcher leaves only now: its (persistent) session going offline is part of the
    // teardown, after every figure is in.
    let watcher_disconnects = watcher.disconnects.summary();
    let seen = watcher.finish().await;
    let mut lost_subscriber = 0;
    let mut received_distinct = 0;
    let mut duplicates = 0;
    for (outcome, received) in outcomes.iter().zip(&seen.received) {
        lost_subscriber += watcher::missing(&outcome.acked, received);
        duplicates += watcher::duplicates(received);
        received_distinct += (received.len() as u64) - watcher::duplicates(received);
    }

    // Everything is counted: the fleet leaves (clean DISCONNECTs), then the deep-filter
    // abusers; the server must survive both.
    progress(t, "the fleet disconnects");
    life.leave.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        for task in device_tasks {
            let _ = task.await;
        }
    })
    .await;
    // The deep-filter abusers leave last, so that a crash on their way out cannot hide the
    // figures above; the server must survive it all the same.
    progress(t, "letting the deep-filter abusers disconnect");
    let abuse_report = abuse.release().await;
    let mut settle = tokio::time::interval(Duration::from_millis(200));
    for _ in 0..10 {
        // A few samples: a server that is about to die has a moment to do so.
        settle.tick().await;
    }
    let defence_metrics = if server.is_alive() {
        api.metrics()
            .await
            .map(|text| api::defence_metrics(&text))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let end = server.sample().or(server.last_sample());
    let peak = server.peak_rss_kib(run_started);
    let server_alive = server.is_alive();
    let died_after = server
        .died_at()
        .map(|at| at.saturating_duration_since(run_started));
    let log_path = server.log_path.clone();
    let server_exit = server.stop().await;
    let cpu_pct = |a: Option<server::Sample>, b: Option<server::Sample>| {
        let (a, b) = (a?, b?);
        let wall = b.at.duration_since(a.at).as_secs_f64();
        (wall > 0.0).then(|| 100.0 * (b.cpu_secs - a.cpu_secs) / wall)
    };
    let mut confirmed = command_stats.confirmed.clone();
    confirmed.sort_unstable();
    let figures = Figures {
        devices,
        ever_connected: fleet.ever_connected.load(Ordering::Relaxed),
        online_at_start,
        online_at_end,
        create_time,
        connect_time,
        duration: run_time,
        interval,
        telemetry_sent: fleet.stats.telemetry_sent.load(Ordering::Relaxed),
        telemetry_acked: acked_total,
        telemetry_resent: fleet.stats.telemetry_resent.load(Ordering::Relaxed),
        telemetry_rejected: fleet.stats.telemetry_rejected.summary(),
        telemetry_unacked: outcomes.iter().map(|o| o.unacked).sum(),
        received_distinct,
        duplicates,
        lost_subscriber,
        watcher_disconnects,
        lost_stored,
        stored_checked,
        connect_failures: fleet.stats.connect_failures.summary(),
        disconnects: fleet.stats.disconnects.summary(),
        disconnect_count: fleet.stats.disconnects.total(),
        commands_received: fleet.stats.commands_received.load(Ordering::Relaxed),
        replies_acked: fleet.stats.replies_acked.load(Ordering::Relaxed),
        replies_failed: fleet.stats.replies_failed.summary(),
        commands_sent: command_stats.sent(),
        commands_confirmed: confirmed.len() as u64,
        confirmed,
        command_answers: command_stats.answers.summary(),
        commands_skipped: command_stats.skipped,
        rss_idle_kib: idle.map(|s| s.rss_kib),
        rss_connected_kib: connected.map(|s| s.rss_kib),
        rss_peak_kib: peak,
        rss_end_kib: end.map(|s| s.rss_kib),
        cpu_connect_pct: cpu_pct(cpu_before_connect, connected),
        cpu_run_pct: cpu_pct(run_start_sample, run_end),
        load_cpu_run_pct: match (load_cpu0, load_cpu1) {
            (Some(a), Some(b)) => Some(100.0 * (b - a) / run_time.as_secs_f64().max(0.001)),
            _ => None,
        },
        server_alive,
        server_exit: if server_alive { None } else { server_exit },
        died_after,
        defence_metrics,
    };
    let attacks = args
        .abuse()
        .describe(args.deep_abusers, args.retained_abusers);
    report::print(&figures, &attacks, &abuse_report);
    if !server_alive || !figures.passed() {
        eprintln!(
            "server log {}{}, errors:\n{}",
            log_path.display(),
            if args.keep_data {
                ""
            } else {
                " (deleted at exit; --keep-data keeps it)"
            },
            server::error_tail(&log_path, 15)
        );
    }
    if args.keep_data {
        let kept = tmp.keep();
        eprintln!(
            "kept the data directory and server log in {}",
            kept.display()
        );
    }
    Ok(figures.passed())
}

/// Compares, device by device, the readings acknowledged to it with what the telemetry API
/// returns; a store that is still catching up gets a few more looks. Returns (lost, checked);
/// lost is `None` when some device's telemetry could not be read at all.
async fn check_stored(
    api: &Api,
    outcomes: &[device::DeviceOutcome],
    from: i64,
    to: i64,
) -> (Option<u64>, usize) {
    let expected: Vec<(usize, u64)> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let distinct: std::collections::HashSet<u64> = o.acked.iter().copied().collect();
            (i, distinct.len() as u64)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let checked = expected.len();
    let mut short: Vec<(usize, u64, Option<u64>)> = Vec::new();
    let mut pending = expected;
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let results: Vec<(usize, u64, Option<u64>)> = stream::iter(pending.iter().copied())
            .map(|(i, want)| async move {
                let got = api
                    .stored_readings(&device::device_id(i), device::SENSOR, from, to)
                    .await
                    .ok();
                (i, want, got)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        short = results
            .into_iter()
            .filter_map(|(i, want, got)| match got {
                Some(got) if got >= want => None,
                got => Some((i, want, got)),
            })
            .collect();
        if short.is_empty() {
            break;
        }
        pending = short.iter().map(|&(i, want, _)| (i, want)).collect();
    }
    let lost = short
        .iter()
        .map(|&(_, want, got)| got.map(|got| want - got.min(want)))
        .sum();
    (lost, checked)
}
