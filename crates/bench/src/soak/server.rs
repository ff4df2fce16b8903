//! The server under test: a real `devicecloud server` child process on free loopback ports,
//! in a fresh data directory, and a monitor that samples its memory and CPU from /proc.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

use crate::procfs;

const PASSWORD_LINE: &str = "Created user 'admin' with password: ";
/// How often the monitor samples the server and checks that it is alive.
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// What `devicecloud server` prints when it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    pub admin_password: String,
    pub mqtts: SocketAddr,
    pub https: SocketAddr,
    pub ca_path: PathBuf,
}

/// Reads the start banner (stdout lines up to and including "CA certificate: ...").
pub fn parse_banner(lines: &[String]) -> anyhow::Result<Banner> {
    let text = || lines.join("\n");
    let admin_password = lines
        .iter()
        .find_map(|l| l.strip_prefix(PASSWORD_LINE))
        .with_context(|| {
            format!(
                "no admin password in the banner (not a fresh data directory?):\n{}",
                text()
            )
        })?
        .trim()
        .to_string();
    let addr = |scheme: &str| -> anyhow::Result<SocketAddr> {
        let marker = format!("listening on {scheme}://");
        lines
            .iter()
            .find_map(|l| l.trim().strip_prefix(marker.as_str()))
            .and_then(|rest| rest.split(['/', ' ']).next())
            .and_then(|addr| addr.parse().ok())
            .with_context(|| format!("no `{marker}ADDR` line in the banner:\n{}", text()))
    };
    let ca_path = lines
        .iter()
        .find_map(|l| l.split_once("CA certificate: "))
        .and_then(|(_, rest)| rest.split(" (SHA-256").next())
        .map(PathBuf::from)
        .with_context(|| format!("no CA certificate line in the banner:\n{}", text()))?;
    Ok(Banner {
        admin_password,
        mqtts: addr("mqtts")?,
        https: addr("https")?,
        ca_path,
    })
}

/// One reading of the server process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub rss_kib: u64,
    pub cpu_secs: f64,
}

/// The running server, watched by a monitor task.
pub struct ServerProc {
    pub banner: Banner,
    pub ca_pem: String,
    pub pid: u32,
    pub log_path: PathBuf,
    samples: Arc<Mutex<Vec<Sample>>>,
    /// Cancelled by the monitor when the server exits on its own.
    pub died: CancellationToken,
    died_at: Arc<Mutex<Option<Instant>>>,
    stop: CancellationToken,
    monitor: tokio::task::JoinHandle<Option<ExitStatus>>,
}

impl ServerProc {
    /// Starts `bin server` with its data in `data_dir` (created fresh) and waits for its banner.
    pub async fn start(bin: &Path, data_dir: &Path, log_path: &Path) -> anyhow::Result<ServerProc> {
        if !bin.exists() {
            bail!(
                "{} does not exist: build it with `cargo build --release -p devicecloud` (scripts/soak does)",
                bin.display()
            );
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        // The certificate is issued for loopback only: interface enumeration is not needed.
        std::fs::write(
            data_dir.join("server.toml"),
            "hostnames = [\"localhost\"]\nip_addresses = [\"127.0.0.1\"]\n",
        )?;
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(bin)
            .arg("server")
            .arg("--data")
            .arg(data_dir)
            .args(["--listen", "mqtts://127.0.0.1:0"])
            .args(["--listen", "https://127.0.0.1:0"])
            // Quiet by default (the login flood alone writes a line per attempt at info);
            // DEVICECLOUD_LOG in the soak's environment overrides it.
            .env(
                "DEVICECLOUD_LOG",
                std::env::var("DEVICECLOUD_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} server", bin.display()))?;
        let pid = child.id().context("the server has no pid")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut reader = BufReader::new(stdout).lines();
        let mut lines = Vec::new();
        let read_banner = async {
            while let Some(line) = reader.next_line().await? {
                let last = line.contains("CA certificate: ");
                lines.push(line);
                if last {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        };
        let complete = tokio::time::timeout(Duration::from_secs(120), read_banner)
            .await
            .map_err(|_| anyhow::anyhow!("the server printed no banner within 120 s"))??;
        if !complete {
            let status = child.wait().await?;
            bail!(
                "the server exited ({status}) before it was ready; its log ({}):\n{}",
                log_path.display(),
                error_tail(log_path, 30)
            );
        }
        // Nothing else is expected on stdout; drain it so the server never blocks on a pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = reader.next_line().await {} });
        let banner = parse_banner(&lines)?;
        let ca_pem = std::fs::read_to_string(&banner.ca_path)
            .with_context(|| format!("reading the CA certificate {}", banner.ca_path.display()))?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let died = CancellationToken::new();
        let stop = CancellationToken::new();
        let died_at = Arc::new(Mutex::new(None));
        let monitor = tokio::spawn(monitor(
            child,
            pid,
            samples.clone(),
            (died.clone(), died_at.clone()),
            stop.clone(),
        ));
        Ok(ServerProc {
            banner,
            ca_pem,
            pid,
            log_path: log_path.to_path_buf(),
            samples,
            died,
            died_at,
            stop,
            monitor,
        })
    }

    pub fn is_alive(&self) -> bool {
        !self.died.is_cancelled()
    }

    /// When the server exited on its own, if it did.
    pub fn died_at(&self) -> Option<Instant> {
        *self.died_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh reading (not waiting for the monitor's next one).
    pub fn sample(&self) -> Option<Sample> {
        Some(Sample {
            at: Instant::now(),
            rss_kib: procfs::rss_kib(self.pid)?,
            cpu_secs: procfs::cpu_seconds(self.pid)?,
        })
    }

    /// The largest RSS the monitor saw since `since`.
    pub fn peak_rss_kib(&self, since: Instant) -> Option<u64> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.at >= since)
            .map(|s| s.rss_kib)
            .max()
    }

    /// The last reading taken while the server was alive.
    pub fn last_sample(&self) -> Option<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    /// SIGTERM (then SIGKILL after 15 s); returns how the server ended.
    pub async fn stop(self) -> Option<ExitStatus> {
        self.stop.cancel();
        self.monitor.await.ok().flatten()
    }
}

async fn monitor(
    mut child: Child,
    pid: u32,
    samples: Arc<Mutex<Vec<Sample>>>,
    (died, died_at): (CancellationToken, Arc<Mutex<Option<Instant>>>),
    stop: CancellationToken,
) -> Option<ExitStatus> {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            status = child.wait() => {
                *died_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                died.cancel();
                return status.ok();
            }
            _ = tick.tick() => {
                if let (Some(rss_kib), Some(cpu_secs)) = (procfs::rss_kib(pid), procfs::cpu_seconds(pid)) {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(Sample {
                        at: Instant::now(),
                        rss_kib,
                        cpu_secs,
                    });
                }
            }
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.start_kill();
            child.wait().await.ok()
        }
    }
}

/// The last `n` lines of the server log that speak of errors, dropped data or crashes (the
/// login flood fills the log with refusals, which say nothing new).
pub fn error_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            [
                "ERROR", "panic", "overflow", "fatal", "abort", "killed", "dropping",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .collect();
    if lines.is_empty() {
        return "(no errors logged)".to_string();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_banner_gives_password_ports_and_ca() {
        let lines: Vec<String> = [
            "Created user 'admin' with password: correct-horse-7",
            "  (shown only now; change it with `devicecloud user passwd admin`)",
            "devicecloud server running, data in /tmp/x",
            "  listening on mqtts://127.0.0.1:40001",
            "  listening on https://127.0.0.1:40002",
            "  CA certificate: /tmp/x/ca.crt (SHA-256 abcd)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let banner = parse_banner(&lines).unwrap();
        assert_eq!(
            banner,
            Banner {
                admin_password: "correct-horse-7".into(),
                mqtts: "127.0.0.1:40001".parse().unwrap(),
                https: "127.0.0.1:40002".parse().unwrap(),
                ca_path: PathBuf::from("/tmp/x/ca.crt"),
            }
        );
    }

    #[test]
    fn a_banner_without_a_password_says_why() {
        let lines = vec!["  listening on mqtts://127.0.0.1:1".to_string()];
        let err = parse_banner(&lines).unwrap_err().to_string();
        assert!(err.contains("no admin password"), "{err}");
    }
}
