//! `bench`: runs the same MQTT scenarios against our broker (`devicecloud broker`) and
//! mosquitto, one broker at a time, over loopback, and prints both results and their ratio.
//!
//! Run `scripts/bench` (builds release binaries, raises the open-files limit).

mod pki;
mod scenarios;
mod target;

use std::path::PathBuf;

use anyhow::Context;
use bench::procfs;
use clap::Parser;
use client::QoS;
use scenarios::{Better, Measurement};
use target::Target;

#[derive(Parser, Debug)]
#[command(about = "MQTT broker benchmark: devicecloud vs mosquitto")]
struct Args {
    /// The devicecloud binary.
    #[arg(long, default_value = "target/release/devicecloud")]
    devicecloud: PathBuf,
    /// The mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Idle connections to open (reduced to fit the open-files limit).
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Scale message counts (1.0 = default; smaller for a quick run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Only run against these brokers (devicecloud, mosquitto).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only run scenarios whose name contains one of these words (idle, TLS, fan-in,
    /// fan-out, latency, QoS0, QoS1).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let pki = pki::Pki::generate().context("generating the TLS test certificates")?;
    let limit = procfs::open_files_limit().unwrap_or(1024) as usize;
    let connections = args.connections.min(limit.saturating_sub(300));
    if connections < args.connections {
        eprintln!(
            "open-files limit is {limit}: using {connections} idle connections (raise it with \
             `ulimit -n 65536`, as scripts/bench does)"
        );
    }
    let scale = |n: usize| ((n as f64 * args.scale) as usize).max(1);
    let mut results: Vec<(&'static str, Vec<Measurement>)> = Vec::new();
    for name in ["devicecloud", "mosquitto"] {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name}");
        let mut target = match name {
            "devicecloud" => Target::devicecloud(&args.devicecloud, &pki).await,
            _ => Target::mosquitto(&args.mosquitto, &pki).await,
        }
        .with_context(|| format!("starting {name}"))?;
        let mut all = Vec::new();
        // Idle connections first, on a fresh broker, so that memory freed by earlier
        // scenarios does not hide the growth per connection.
        let steps: Vec<(&str, _)> = vec![
            ("idle connections", 6),
            ("TLS connections", 5),
            ("fan-in QoS0", 0),
            ("fan-in QoS1", 1),
            ("fan-out QoS0", 2),
            ("fan-out QoS1", 3),
            ("latency", 4),
        ];
        for (label, step) in steps {
            if !args.scenarios.is_empty()
                && !args.scenarios.iter().any(|w| label.contains(w.as_str()))
            {
                continue;
            }
            eprintln!("  {label}...");
            let r = match step {
                0 => scenarios::fan_in(&target, QoS::AtMostOnce, 8, scale(50_000)).await,
                1 => scenarios::fan_in(&target, QoS::AtLeastOnce, 8, scale(25_000)).await,
                2 => scenarios::fan_out(&target, QoS::AtMostOnce, 100, scale(10_000)).await,
                3 => scenarios::fan_out(&target, QoS::AtLeastOnce, 100, scale(5_000)).await,
                4 => scenarios::latency(&target, 1000, 5).await,
                5 => scenarios::tls_connections(&target, pki.client.clone(), scale(1_000), 4).await,
                _ => scenarios::idle_connections(&target, connections).await,
            };
            match r {
                Ok(ms) => all.extend(ms),
                Err(e) => eprintln!("  {label} failed on {name}: {e:#}"),
            }
            target.check_alive()?;
        }
        target.stop().await;
        results.push((name, all));
    }
    println!();
    println!(
        "loopback, {} CPU cores shared by brokers and load generator; both brokers: in-flight \
         window {}, queue {} messages per client, TCP_NODELAY; load: our `client` crate, MQTT 3.1.1",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        target::MAX_INFLIGHT,
        target::MAX_QUEUED,
    );
    print_table(&results);
    Ok(())
}

fn print_table(results: &[(&'static str, Vec<Measurement>)]) {
    let mut rows: Vec<(String, &'static str, Better)> = Vec::new();
    for (_, ms) in results {
        for m in ms {
            if !rows
                .iter()
                .any(|(s, k, _)| *s == m.scenario && *k == m.metric)
            {
                rows.push((m.scenario.clone(), m.metric, m.better));
            }
        }
    }
    let value = |target: &str, scenario: &str, metric: &str| {
        results
            .iter()
            .find(|(n, _)| *n == target)
            .and_then(|(_, ms)| {
                ms.iter()
                    .find(|m| m.scenario == scenario && m.metric == metric)
            })
            .map(|m| m.value)
    };
    let fmt = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    };
    println!();
    println!(
        "| {:<38} | {:<15} | {:>12} | {:>12} | {:>22} |",
        "scenario", "metric", "devicecloud", "mosquitto", "ratio (dc/mosq)"
    );
    println!(
        "|{:-<40}|{:-<17}|{:->14}|{:->14}|{:->24}|",
        "", "", "", "", ""
    );
    let mut last = String::new();
    for (scenario, metric, better) in rows {
        let ours = value("devicecloud", &scenario, metric);
        let theirs = value("mosquitto", &scenario, metric);
        let ratio = match (ours, theirs) {
            (Some(a), Some(b)) if b != 0.0 => format!(
                "{:.2} ({} better)",
                a / b,
                if better == Better::Higher {
                    "higher"
                } else {
                    "lower"
                }
            ),
            _ => "-".to_string(),
        };
        let shown = if scenario == last {
            String::new()
        } else {
            scenario.clone()
        };
        last = scenario.clone();
        println!(
            "| {:<38} | {:<15} | {:>12} | {:>12} | {:>22} |",
            shown,
            metric,
            fmt(ours),
            fmt(theirs),
            ratio
        );
    }
}
