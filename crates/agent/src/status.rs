//! The agent's status file (`DATA/status.json`): the link, the outbox and every service, for
//! `devicecloud agent status`. Rewritten on every change and every half minute.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::supervisor::ServiceStatus;

pub const STATUS_FILE: &str = "status.json";

/// The broker connection, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LinkState {
    Starting,
    Connecting {
        url: String,
    },
    Connected {
        url: String,
        since_ms: i64,
    },
    Disconnected {
        error: String,
        retry_in_ms: u64,
    },
    /// The agent cannot connect until its configuration is fixed (e.g. an unusable bundle).
    Failed {
        error: String,
    },
    Stopped,
}

impl LinkState {
    pub fn is_connected(&self) -> bool {
        matches!(self, LinkState::Connected { .. })
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Starting => f.write_str("starting"),
            LinkState::Connecting { url } => write!(f, "connecting to {url}"),
            LinkState::Connected { url, since_ms } => {
                write!(
                    f,
                    "connected to {url} for {}",
                    human_duration(crate::fsutil::now_ms() - since_ms)
                )
            }
            LinkState::Disconnected { error, retry_in_ms } => {
                write!(
                    f,
                    "disconnected ({error}); retrying in {}",
                    human_duration(*retry_in_ms as i64)
                )
            }
            LinkState::Failed { error } => write!(
                f,
                "not connecting: {error}; fix the bundle and restart the agent"
            ),
            LinkState::Stopped => f.write_str("stopped"),
        }
    }
}

fn human_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0 => format!("{}ms", ms.max(0)),
        1..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub queued: u64,
    pub dropped: u64,
    pub refused_full: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub device_id: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub gpio: String,
    pub link: LinkState,
    pub outbox: OutboxStatus,
    pub services: Vec<ServiceStatus>,
}

impl AgentStatus {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(STATUS_FILE)
    }

    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        ::fsutil::write_atomic_with(
            &AgentStatus::path(data_dir),
            &json,
            0o644,
            ::fsutil::Durability::Unsynced,
        )
    }

    /// Reads the status file of an agent using `data_dir`.
    pub fn read(data_dir: &Path) -> Result<AgentStatus, String> {
        let path = AgentStatus::path(data_dir);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}; is the agent running with data_dir = {}?",
                path.display(),
                data_dir.display()
            )
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not a status file: {e}", path.display()))
    }

    /// Whether the process that wrote this is still alive.
    pub fn agent_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists() && self.link != LinkState::Stopped
    }

    /// The human-readable report of `devicecloud agent status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let alive = self.agent_alive();
        out.push_str(&format!(
            "agent:   device '{}', pid {} ({}), gpio {}\n",
            self.device_id,
            self.pid,
            if alive { "running" } else { "not running" },
            self.gpio
        ));
        out.push_str(&format!("link:    {}\n", self.link));
        out.push_str(&format!(
            "outbox:  {} queued, {} dropped (queue full), {} refused (disk full)\n",
            self.outbox.queued, self.outbox.dropped, self.outbox.refused_full
        ));
        if self.services.is_empty() {
            out.push_str("services: none configured\n");
        } else {
            out.push_str("services:\n");
            for s in &self.services {
                out.push_str(&format!(
                    "  {:<16} {:<9} pid {:<8} restarts {:<4} last exit: {}\n",
                    s.name,
                    s.state,
                    s.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    s.restarts,
                    s.last_exit.as_deref().unwrap_or("-")
                ));
            }
        }
        if !alive {
            out.push_str(&format!(
                "(status as of {} ms since the epoch)\n",
                self.updated_ms
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let status = AgentStatus {
            pid: std::process::id(),
            device_id: "kitchen".into(),
            started_ms: 1,
            updated_ms: 2,
            gpio: "simulated".into(),
            link: LinkState::Disconnected {
                error: "connection refused".into(),
                retry_in_ms: 1500,
            },
            outbox: OutboxStatus {
                queued: 3,
                dropped: 0,
                refused_full: 0,
            },
            services: vec![ServiceStatus {
                name: "script".into(),
                state: "running".into(),
                pid: Some(42),
                restarts: 2,
                last_exit: Some("exit code 1".into()),
                next_start_in_ms: None,
                log: "/x/script.log".into(),
            }],
        };
        status.write(dir.path()).unwrap();
        let back = AgentStatus::read(dir.path()).unwrap();
        assert_eq!(back, status);
        let text = back.render();
        assert!(text.contains("(running)"), "{text}");
        assert!(
            text.contains("disconnected (connection refused); retrying in 1s"),
            "{text}"
        );
        assert!(
            text.contains("script") && text.contains("restarts 2") && text.contains("exit code 1"),
            "{text}"
        );
        let missing = AgentStatus::read(&dir.path().join("nope")).unwrap_err();
        assert!(missing.contains("is the agent running"), "{missing}");
    }
}
