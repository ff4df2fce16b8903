//! The soak's figures, the table it prints, and the verdict against issue 8's bar.

use std::{process::ExitStatus, time::Duration};

use super::{abuse::AbuseReport, tally::thousands};

/// Issue 8: "p99 command confirmation stays under 50 ms".
pub const P99_BAR: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct Figures {
    pub devices: usize,
    pub ever_connected: usize,
    pub online_at_start: usize,
    pub online_at_end: usize,
    pub create_time: Duration,
    pub connect_time: Duration,
    pub duration: Duration,
    pub interval: Duration,

    pub telemetry_sent: u64,
    pub telemetry_acked: u64,
    pub telemetry_resent: u64,
    pub telemetry_rejected: String,
    pub telemetry_unacked: u64,
    pub received_distinct: u64,
    pub duplicates: u64,
    pub lost_subscriber: u64,
    pub watcher_disconnects: String,
    /// `None` when the stored telemetry could not be checked (server gone).
    pub lost_stored: Option<u64>,
    pub stored_checked: usize,
    pub connect_failures: String,
    pub disconnects: String,
    pub disconnect_count: u64,
    pub commands_received: u64,
    pub replies_acked: u64,
    pub replies_failed: String,

    pub commands_sent: u64,
    pub commands_confirmed: u64,
    /// Latencies of confirmed commands, sorted.
    pub confirmed: Vec<Duration>,
    pub command_answers: String,
    pub commands_skipped: u64,

    pub rss_idle_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    /// Server CPU in percent of one core, while devices connected and during the run.
    pub cpu_connect_pct: Option<f64>,
    pub cpu_run_pct: Option<f64>,
    pub load_cpu_run_pct: Option<f64>,
    pub server_alive: bool,
    pub server_exit: Option<ExitStatus>,
    pub died_after: Option<Duration>,
    pub defence_metrics: Vec<(String, u64)>,
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

impl Figures {
    /// p99 over every command sent: one that was not confirmed counts as slower than any
    /// that was (a refusal or a timeout is no confirmation). `None`: more than 1% failed.
    pub fn p99_all(&self) -> Option<Duration> {
        if self.commands_sent == 0 {
            return None;
        }
        let rank = (0.99 * self.commands_sent as f64).ceil().max(1.0) as usize;
        self.confirmed.get(rank - 1).copied()
    }

    pub fn verdict(&self) -> Vec<(String, bool)> {
        let p99 = self.p99_all();
        vec![
            (
                format!(
                    "server alive at the end{}",
                    self.died_after
                        .map(|d| format!(" (died {:.0} s after the run started)", d.as_secs_f64()))
                        .unwrap_or_default()
                ),
                self.server_alive,
            ),
            (
                format!("all {} devices connected", thousands(self.devices as u64)),
                self.ever_connected == self.devices,
            ),
            (
                format!(
                    "no acknowledged reading lost (subscriber: {}, store: {})",
                    self.lost_subscriber,
                    self.lost_stored
                        .map_or("not checked".to_string(), |l| l.to_string())
                ),
                self.lost_subscriber == 0
                    && self.lost_stored == Some(0)
                    && self.telemetry_acked > 0,
            ),
            (
                format!(
                    "every reading acknowledged ({} without PUBACK at the end)",
                    self.telemetry_unacked
                ),
                self.telemetry_unacked == 0 && self.telemetry_rejected == "none",
            ),
            (
                format!(
                    "p99 command confirmation < {} ms ({})",
                    P99_BAR.as_millis(),
                    p99.map_or("more than 1% unconfirmed".to_string(), ms)
                ),
                p99.is_some_and(|p| p < P99_BAR),
            ),
        ]
    }

    pub fn passed(&self) -> bool {
        self.verdict().iter().all(|(_, ok)| *ok)
    }
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn pct(p: Option<f64>) -> String {
    p.map_or("-".to_string(), |p| format!("{p:.0}%"))
}

pub fn print(f: &Figures, attacks: &[String], abuse: &AbuseReport) {
    let n = |v: u64| thousands(v);
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    row(
        "devices connected",
        format!(
            "{} of {} (registered in {:.0} s, connected over mqtts in {:.0} s); online at start/end of the run: {}/{}",
            n(f.ever_connected as u64),
            n(f.devices as u64),
            f.create_time.as_secs_f64(),
            f.connect_time.as_secs_f64(),
            n(f.online_at_start as u64),
            n(f.online_at_end as u64),
        ),
    );
    row(
        "duration of the run",
        format!(
            "{:.0} s, one QoS 1 reading per device every {:.0} s",
            f.duration.as_secs_f64(),
            f.interval.as_secs_f64()
        ),
    );
    row(
        "legit readings sent / acked",
        format!(
            "{} / {} (resent after a reconnect: {}; rejected: {}; without PUBACK at the end: {})",
            n(f.telemetry_sent),
            n(f.telemetry_acked),
            n(f.telemetry_resent),
            f.telemetry_rejected,
            n(f.telemetry_unacked)
        ),
    );
    row(
        "received by the admin subscriber",
        format!(
            "{} distinct ({} duplicates); subscriber reconnects: {}",
            n(f.received_distinct),
            n(f.duplicates),
            f.watcher_disconnects
        ),
    );
    row(
        "lost (acked, never delivered)",
        format!(
            "subscriber: {}; telemetry store: {}",
            n(f.lost_subscriber),
            f.lost_stored
                .map_or("not checked (server gone)".to_string(), |l| format!(
                    "{} ({} devices checked through the API)",
                    n(l),
                    n(f.stored_checked as u64)
                ))
        ),
    );
    row(
        "legit connection failures / drops",
        format!(
            "connect: {}; dropped: {}",
            f.connect_failures, f.disconnects
        ),
    );
    row(
        "commands (PUT .../properties/led)",
        format!(
            "{} sent, {} confirmed; answers: {}; devices answered {} (reply failures: {}); skipped ticks: {}",
            n(f.commands_sent),
            n(f.commands_confirmed),
            f.command_answers,
            n(f.replies_acked),
            f.replies_failed,
            n(f.commands_skipped)
        ),
    );
    let lat = |p: f64| percentile(&f.confirmed, p).map_or("-".to_string(), ms);
    row(
        "confirmation latency",
        format!(
            "p50 {}, p99 {}, max {} (confirmed ones); p99 counting failures as slowest: {}",
            lat(0.50),
            lat(0.99),
            lat(1.0),
            f.p99_all()
                .map_or("more than 1% unconfirmed".to_string(), ms)
        ),
    );
    for attack in attacks {
        row("attack", attack.clone());
    }
    row("abuse: login flood, HTTPS", abuse.login_http.summary());
    row("abuse: login flood, MQTT", abuse.login_mqtt.summary());
    row("abuse: deep filters", abuse.deep.summary());
    row("abuse: retained flood", abuse.retained.summary());
    for (kind, stats) in &abuse.slowloris {
        let lifetimes = stats
            .lifetime_summary()
            .map_or(String::new(), |(median, max)| {
                format!(
                    "; lifetime median {:.0} s, max {:.0} s",
                    median.as_secs_f64(),
                    max.as_secs_f64()
                )
            });
        row(
            &format!("abuse: {}", kind.label()),
            format!(
                "{} opened: {}{lifetimes}",
                n(stats.opened.load(std::sync::atomic::Ordering::Relaxed)),
                stats.outcomes.summary()
            ),
        );
    }
    row(
        "server RSS",
        format!(
            "idle {}, {} devices connected {}, peak {}, end {}",
            mib(f.rss_idle_kib),
            n(f.ever_connected as u64),
            mib(f.rss_connected_kib),
            mib(f.rss_peak_kib),
            mib(f.rss_end_kib)
        ),
    );
    row(
        "server CPU (100% = one core)",
        format!(
            "while devices connected {}, during the run {} (load generator during the run: {})",
            pct(f.cpu_connect_pct),
            pct(f.cpu_run_pct),
            pct(f.load_cpu_run_pct)
        ),
    );
    row(
        "server",
        if f.server_alive {
            "alive at the end".to_string()
        } else {
            format!(
                "DIED{} ({})",
                f.died_after
                    .map(|d| format!(" {:.0} s after the run started", d.as_secs_f64()))
                    .unwrap_or_default(),
                f.server_exit
                    .map_or("exit status unknown".to_string(), |s| s.to_string())
            )
        },
    );
    if !f.defence_metrics.is_empty() {
        row(
            "server /metrics (refusals)",
            f.defence_metrics
                .iter()
                .map(|(k, v)| format!("{} {}", k.trim_start_matches("devicecloud_"), n(*v)))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    println!();
    println!("| {:<40} | result |", "soak");
    println!("|{:-<42}|{:-<10}|", "", "");
    for (k, v) in &rows {
        println!("| {k:<40} | {v} |");
    }
    println!();
    for (what, ok) in f.verdict() {
        println!("{} {what}", if ok { "PASS" } else { "FAIL" });
    }
    println!(
        "{}",
        if f.passed() {
            "SOAK PASSED"
        } else {
            "SOAK FAILED"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(ms_).collect();
        assert_eq!(percentile(&samples, 0.5), Some(ms_(50)));
        assert_eq!(percentile(&samples, 0.99), Some(ms_(99)));
        assert_eq!(percentile(&samples, 1.0), Some(ms_(100)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    fn passing() -> Figures {
        Figures {
            devices: 10,
            ever_connected: 10,
            telemetry_acked: 100,
            telemetry_rejected: "none".into(),
            lost_stored: Some(0),
            commands_sent: 100,
            commands_confirmed: 100,
            confirmed: (1..=100).map(ms_).map(|d| d / 10).collect(),
            server_alive: true,
            ..Figures::default()
        }
    }

    #[test]
    fn the_bar_passes_only_when_every_condition_holds() {
        assert!(passing().passed());

        let mut lost = passing();
        lost.lost_subscriber = 1;
        assert!(!lost.passed());

        let mut unchecked = passing();
        unchecked.lost_stored = None;
        assert!(!unchecked.passed(), "an unchecked store is no proof");

        let mut dead = passing();
        dead.server_alive = false;
        assert!(!dead.passed());

        let mut slow = passing();
        slow.confirmed = (1..=100).map(ms_).collect();
        assert_eq!(slow.p99_all(), Some(ms_(99)));
        assert!(!slow.passed());
    }

    #[test]
    fn unconfirmed_commands_count_as_the_slowest() {
        let mut f = passing();
        // 98 confirmed quickly, 2 refused: the p99 rank falls on a refusal.
        f.confirmed.truncate(98);
        f.commands_confirmed = 98;
        assert_eq!(f.p99_all(), None);
        assert!(!f.passed());
        // 99 confirmed, 1 refused: the p99 rank is the slowest confirmed one.
        let mut f = passing();
        f.confirmed.truncate(99);
        f.commands_confirmed = 99;
        assert_eq!(f.p99_all(), Some(Duration::from_micros(9900)));
        assert!(f.passed());
    }
}
