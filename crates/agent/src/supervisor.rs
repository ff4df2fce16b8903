//! Device services: the user's own programs (`[[service]]`), each in its own process group,
//! with its output in a size-rotated log, restarted by policy with exponential backoff, and
//! stopped with SIGTERM to the whole group, then SIGKILL after the stop timeout, so children
//! a script spawned die with it.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use proto::bundle::{Bundle, Credentials};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    sync::watch,
    task::JoinHandle,
};

use crate::config::{RestartPolicy, ServiceConfig};

/// A run longer than this counts as healthy: the next failure restarts after the initial backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// What `agent status` shows for a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `starting`, `running`, `backoff`, `stopping`, `stopped`, `exited`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// How the last run ended: `exit code 3`, `signal 9 (SIGKILL)`, `cannot start: ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_in_ms: Option<u64>,
    pub log: PathBuf,
}

/// The services' statuses, shared with whoever reports them.
pub type SharedStatuses = Arc<Mutex<BTreeMap<String, ServiceStatus>>>;
type Statuses = SharedStatuses;

struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs the configured services.
pub struct Supervisor {
    statuses: Statuses,
    running: BTreeMap<String, Running>,
    changed: watch::Sender<u64>,
}

impl Supervisor {
    /// Starts every service. `env` is added to each one's environment (the device's broker
    /// address and credentials, see [`service_env`]); logs go to `log_dir/NAME.log`.
    pub fn start(
        services: &[ServiceConfig],
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Supervisor {
        let statuses: Statuses = Arc::default();
        let (changed, _) = watch::channel(0);
        let mut running = BTreeMap::new();
        let env = Arc::new(env);
        for config in services {
            let log = log_dir.join(format!("{}.log", config.name));
            statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(
                config.name.clone(),
                ServiceStatus {
                    name: config.name.clone(),
                    state: "starting".into(),
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                    next_start_in_ms: None,
                    log: log.clone(),
                },
            );
            let (stop, stop_rx) = watch::channel(false);
            let ctx = ServiceCtx {
                config: config.clone(),
                env: env.clone(),
                log,
                statuses: statuses.clone(),
                changed: changed.clone(),
            };
            let task = tokio::spawn(ctx.run(stop_rx));
            running.insert(config.name.clone(), Running { stop, task });
        }
        Supervisor {
            statuses,
            running,
            changed,
        }
    }

    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn shared(&self) -> SharedStatuses {
        self.statuses.clone()
    }

    pub fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Sees a new number whenever a service changes state.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Stops one service (and its process group) and waits until it is gone.
    pub async fn stop(&mut self, name: &str) -> bool {
        match self.running.remove(name) {
            Some(r) => {
                let _ = r.stop.send(true);
                let _ = r.task.await;
                true
            }
            None => false,
        }
    }

    /// Stops every service, concurrently.
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        for r in running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in running {
            let _ = r.task.await;
        }
    }
}

struct ServiceCtx {
    config: ServiceConfig,
    env: Arc<Vec<(String, String)>>,
    log: PathBuf,
    statuses: Statuses,
    changed: watch::Sender<u64>,
}

impl ServiceCtx {
    fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        if let Some(s) = self
            .statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&self.config.name)
        {
            f(s);
        }
        self.changed.send_modify(|v| *v += 1);
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let c = &self.config;
        let log = Arc::new(Mutex::new(RotatingLog::new(
            self.log.clone(),
            c.log_max_bytes,
        )));
        let initial = Duration::from_millis(c.backoff_ms);
        let max = Duration::from_millis(c.backoff_max_ms);
        let mut backoff = initial;
        let mut restarts = 0u32;
        loop {
            let started = Instant::now();
            let outcome = match self.spawn() {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or(0);
                    tracing::info!(service = %c.name, pid, "service started");
                    self.update(|s| {
                        s.state = "running".into();
                        s.pid = Some(pid);
                        s.next_start_in_ms = None;
                    });
                    let mut pipes = Vec::new();
                    if let Some(out) = child.stdout.take() {
                        pipes.push(tokio::spawn(copy_lines(out, log.clone())));
                    }
                    if let Some(err) = child.stderr.take() {
                        pipes.push(tokio::spawn(copy_lines(err, log.clone())));
                    }
                    let status = tokio::select! {
                        status = child.wait() => Some(status),
                        _ = crate::fsutil::stopped(&mut stop) => None,
                    };
                    let pgid = Pid::from_raw(pid as i32);
                    let result = match status {
                        Some(status) => {
                            // The leader is gone; take down what it left in its group.
                            kill_group(pgid, Signal::SIGKILL);
                            status
                        }
                        None => {
                            self.update(|s| s.state = "stopping".into());
                            let status = stop_group(
                                &mut child,
                                pgid,
                                Duration::from_millis(c.stop_timeout_ms),
                            )
                            .await;
                            for p in pipes {
                                let _ = p.await;
                            }
                            let last = status
                                .map(|s| describe(&s))
                                .unwrap_or_else(|e| e.to_string());
                            tracing::info!(service = %c.name, exit = %last, "service stopped");
                            self.update(|s| {
                                s.state = "stopped".into();
                                s.pid = None;
                                s.last_exit = Some(last);
                            });
                            return;
                        }
                    };
                    for p in pipes {
                        let _ = p.await;
                    }
                    match result {
                        Ok(status) => (status.success(), describe(&status)),
                        Err(e) => (false, format!("wait failed: {e}")),
                    }
                }
                Err(e) => (false, format!("cannot start '{}': {e}", c.command)),
            };
            let (success, text) = outcome;
            if started.elapsed() >= HEALTHY_RUN {
                backoff = initial;
            }
            let restart = match c.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !success,
                RestartPolicy::Never => false,
            };
            if success {
                tracing::info!(service = %c.name, exit = %text, "service exited");
            } else {
                tracing::warn!(service = %c.name, exit = %text, restart, "service failed");
            }
            let _ = writeln!(
                log.lock().unwrap_or_else(|e| e.into_inner()).writer(),
                "[devicecloud-agent] service {}: {text}",
                c.name
            );
            if !restart {
                self.update(|s| {
                    s.state = "exited".into();
                    s.pid = None;
                    s.last_exit = Some(text);
                });
                let _ = crate::fsutil::stopped(&mut stop).await;
                self.update(|s| s.state = "stopped".into());
                return;
            }
            let delay = backoff;
            self.update(|s| {
                s.state = "backoff".into();
                s.pid = None;
                s.last_exit = Some(text);
                s.next_start_in_ms = Some(delay.as_millis() as u64);
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = crate::fsutil::stopped(&mut stop) => {
                    self.update(|s| { s.state = "stopped".into(); s.next_start_in_ms = None; });
                    return;
                }
            }
            backoff = (backoff * 2).min(max);
            restarts += 1;
            self.update(|s| s.restarts = restarts);
        }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(&c.command);
        cmd.args(&c.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(&c.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: signals to the group reach everything the service spawned, and
            // a Ctrl-C on the agent's terminal does not hit services directly.
            .process_group(0);
        if let Some(cwd) = &c.cwd {
            cmd.current_dir(cwd);
        }
        cmd.spawn()
    }
}

fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({})", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        _ => "unknown".into(),
    }
}

fn kill_group(pgid: Pid, signal: Signal) {
    if pgid.as_raw() > 0 {
        let _ = nix::sys::signal::killpg(pgid, signal);
    }
}

/// Whether any live (non-zombie) process is in group `pgid`, from /proc.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        match proc_stat(pid) {
            Some((state, group)) => group == pgid && state != 'Z' && state != 'X',
            None => false,
        }
    })
}

/// `(state, pgid)` of a process from `/proc/PID/stat`.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// SIGTERM to the group, wait for the leader and the group to go, SIGKILL after `timeout`.
async fn stop_group(
    child: &mut tokio::process::Child,
    pgid: Pid,
    timeout: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    kill_group(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + timeout;
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            kill_group(pgid, Signal::SIGKILL);
            return child.wait().await;
        }
    };
    // The leader is gone; give the rest of the group until the deadline, checking at a
    // modest pace (there is no event for "a process in another tree exited").
    let raw = pgid.as_raw() as u32;
    while group_alive(raw) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_group(pgid, Signal::SIGKILL);
    status
}

async fn copy_lines(stream: impl AsyncRead + Unpin, log: Arc<Mutex<RotatingLog>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => log.lock().unwrap_or_else(|e| e.into_inner()).write(&line),
        }
    }
}

/// A log file that is moved to `NAME.log.1` when it reaches `max` bytes.
pub struct RotatingLog {
    path: PathBuf,
    max: u64,
    file: Option<std::fs::File>,
    size: u64,
}

impl RotatingLog {
    pub fn new(path: PathBuf, max: u64) -> RotatingLog {
        RotatingLog {
            path,
            max: max.max(1024),
            file: None,
            size: 0,
        }
    }

    fn open(&mut self) -> Option<&mut std::fs::File> {
        if self.file.is_none() {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(err) => {
                    tracing::warn!(path = %self.path.display(), %err, "cannot open a service log");
                    return None;
                }
            }
        }
        self.file.as_mut()
    }

    pub fn write(&mut self, data: &[u8]) {
        if self.open().is_some() && self.size + data.len() as u64 > self.max && self.size > 0 {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, &old);
        }
        let len = data.len() as u64;
        if let Some(f) = self.open()
            && f.write_all(data).is_ok()
        {
            self.size += len;
        }
    }

    fn writer(&mut self) -> &mut Self {
        self
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        RotatingLog::write(self, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The environment a service gets so that it can talk to the broker as the device:
/// `DEVICECLOUD_BROKER_URL`, `DEVICECLOUD_DEVICE_ID`, `DEVICECLOUD_CA_FILE`, and either
/// `DEVICECLOUD_CERT_FILE` + `DEVICECLOUD_KEY_FILE` or `DEVICECLOUD_TOKEN`. The PEMs are
/// written to `dir` with mode 0600.
pub fn service_env(bundle: &Bundle, dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    std::fs::create_dir_all(dir)?;
    let ca = dir.join("ca.pem");
    ::fsutil::write_atomic(&ca, bundle.ca_pem.as_bytes(), 0o600)?;
    let mut env = vec![
        (
            "DEVICECLOUD_BROKER_URL".to_string(),
            bundle.broker_urls.first().cloned().unwrap_or_default(),
        ),
        (
            "DEVICECLOUD_DEVICE_ID".to_string(),
            bundle.device_id.clone(),
        ),
        ("DEVICECLOUD_CA_FILE".to_string(), ca.display().to_string()),
    ];
    match &bundle.credentials {
        Credentials::Certificate { cert_pem, key_pem } => {
            let cert = dir.join("device.crt");
            let key = dir.join("device.key");
            ::fsutil::write_atomic(&cert, cert_pem.as_bytes(), 0o600)?;
            ::fsutil::write_atomic(&key, key_pem.as_bytes(), 0o600)?;
            env.push(("DEVICECLOUD_CERT_FILE".into(), cert.display().to_string()));
            env.push(("DEVICECLOUD_KEY_FILE".into(), key.display().to_string()));
        }
        Credentials::Token { token } => env.push(("DEVICECLOUD_TOKEN".into(), token.clone())),
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut log = RotatingLog::new(path.clone(), 1024);
        let line = vec![b'a'; 100];
        for _ in 0..15 {
            log.write(&line);
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("s.log.1")).unwrap().len();
        assert!(current <= 1024 && old <= 1024, "{current} {old}");
        assert_eq!(current + old, 1500);
    }

    #[test]
    fn proc_stat_parses_own_process() {
        let me = std::process::id();
        let (state, _) = proc_stat(me).unwrap();
        assert!(state == 'R' || state == 'S', "{state}");
    }
}
