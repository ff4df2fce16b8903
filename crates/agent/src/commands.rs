//! Outputs and the commands that drive them (`devices/{id}/set/{name}`).
//!
//! A command is checked against the declared outputs first: an unknown output or a value of
//! the wrong type is answered with `ok: false` and never touches a line. A valid one sets the
//! line, and the state reported is read back from the line, not copied from the request.
//! The last commanded value of each output (the desired state) is kept in `desired.json` and
//! re-applied at start, so the LED comes back on after a power cut.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use proto::payload::{Ack, Command, Meta, Port, StateReport, ValueType};
use serde_json::Value;

use crate::{
    config::OutputConfig,
    fsutil::now_ms,
    gpio::{Gpio, GpioError, OutputLine},
};

enum Line {
    Gpio(Box<dyn OutputLine>),
    /// An output without a line: the value is stored and reported as is.
    Virtual(Value),
}

struct Output {
    config: OutputConfig,
    line: Line,
}

/// What applying a command produced, to be published.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// For `devices/{id}/ack`, when the command carried an id.
    pub ack: Option<Ack>,
    /// For `devices/{id}/state/{name}` (retained), when a line was set.
    pub state: Option<(String, StateReport)>,
}

/// The outputs, held for the agent's lifetime.
pub struct Outputs {
    outputs: BTreeMap<String, Output>,
    meta: Arc<Meta>,
    desired_file: PathBuf,
    desired: BTreeMap<String, Value>,
}

impl Outputs {
    /// Requests every output line at its configured initial level, then re-applies the
    /// persisted desired state. A line that cannot be requested is an error: the agent must
    /// not start half-wired.
    pub fn open(
        configs: &[OutputConfig],
        gpio: &dyn Gpio,
        meta: Arc<Meta>,
        data_dir: &Path,
    ) -> Result<Outputs, GpioError> {
        let desired_file = data_dir.join("desired.json");
        let desired: BTreeMap<String, Value> = match std::fs::read(&desired_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %desired_file.display(), %err, "ignoring an unreadable desired-state file");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        let mut outputs = BTreeMap::new();
        for config in configs {
            let line = if config.line.is_some() {
                Line::Gpio(gpio.request_output(config)?)
            } else {
                Line::Virtual(match config.value_type {
                    ValueType::Bool => Value::Bool(config.initial),
                    ValueType::Number => Value::from(0.0),
                })
            };
            outputs.insert(
                config.name.clone(),
                Output {
                    config: config.clone(),
                    line,
                },
            );
        }
        let mut this = Outputs {
            outputs,
            meta,
            desired_file,
            desired,
        };
        let desired = this.desired.clone();
        for (name, value) in desired {
            if this.meta.check_command(&name, &value).is_err() {
                continue;
            }
            match this.set(&name, &value) {
                Ok(_) => tracing::info!(output = %name, %value, "re-applied the desired state"),
                Err(err) => {
                    tracing::warn!(output = %name, %err, "cannot re-apply the desired state")
                }
            }
        }
        Ok(this)
    }

    /// Builds the self-description from the config.
    pub fn meta_for(config: &crate::config::AgentConfig) -> Meta {
        Meta {
            agent: format!("devicecloud-agent/{}", env!("CARGO_PKG_VERSION")),
            outputs: config
                .outputs
                .iter()
                .map(|o| Port {
                    name: o.name.clone(),
                    value_type: o.value_type,
                })
                .collect(),
            inputs: config
                .inputs
                .iter()
                .map(|i| Port {
                    name: i.name.clone(),
                    value_type: ValueType::Bool,
                })
                .collect(),
            sensors: config
                .sensors
                .iter()
                .map(|s| proto::payload::Sensor {
                    name: s.name.clone(),
                    unit: s.unit.clone(),
                    interval_ms: Some(s.interval_ms),
                })
                .collect(),
        }
    }

    fn set(&mut self, name: &str, value: &Value) -> Result<Value, GpioError> {
        let output = self
            .outputs
            .get_mut(name)
            .ok_or_else(|| GpioError::UnknownLine(name.into()))?;
        match &mut output.line {
            Line::Gpio(line) => {
                line.set(value.as_bool().unwrap_or(false))?;
                Ok(Value::Bool(line.get()?))
            }
            Line::Virtual(v) => {
                *v = value.clone();
                Ok(v.clone())
            }
        }
    }

    /// Applies a command for output `name`.
    pub fn apply(&mut self, name: &str, command: Command) -> Applied {
        let id = command.id.clone();
        let fail = |error: String| Applied {
            ack: id.clone().map(|id| Ack {
                id,
                name: name.to_string(),
                ok: false,
                value: None,
                error: Some(error),
            }),
            state: None,
        };
        if let Err(error) = self.meta.check_command(name, &command.value) {
            tracing::info!(output = %name, %error, "refused a command");
            return fail(error);
        }
        match self.set(name, &command.value) {
            Ok(actual) => {
                self.desired.insert(name.to_string(), command.value.clone());
                if let Err(err) = ::fsutil::write_atomic(
                    &self.desired_file,
                    &serde_json::to_vec_pretty(&self.desired).unwrap_or_default(),
                    0o600,
                ) {
                    tracing::warn!(path = %self.desired_file.display(), %err, "cannot persist the desired state; it will not survive a restart");
                }
                let state = StateReport {
                    value: actual.clone(),
                    ts: now_ms(),
                    cmd: id.clone(),
                };
                Applied {
                    ack: id.map(|id| Ack {
                        id,
                        name: name.to_string(),
                        ok: true,
                        value: Some(actual),
                        error: None,
                    }),
                    state: Some((name.to_string(), state)),
                }
            }
            Err(err) => {
                tracing::warn!(output = %name, %err, "applying a command failed");
                fail(err.to_string())
            }
        }
    }

    /// The current state of every output, read back from the lines.
    pub fn states(&mut self) -> Vec<(String, StateReport)> {
        let ts = now_ms();
        self.outputs
            .iter_mut()
            .filter_map(|(name, o)| {
                let value = match &mut o.line {
                    Line::Gpio(line) => Value::Bool(line.get().ok()?),
                    Line::Virtual(v) => v.clone(),
                };
                Some((
                    name.clone(),
                    StateReport {
                        value,
                        ts,
                        cmd: None,
                    },
                ))
            })
            .collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.outputs.values().map(|o| o.config.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::AgentConfig, gpio::sim::SimGpio};
    use serde_json::json;

    const CONFIG: &str = r#"
[[output]]
name = "led"
line = 17
[[output]]
name = "speed"
type = "number"
"#;

    #[test]
    fn commands_are_checked_applied_read_back_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::parse(CONFIG, "t").unwrap();
        let meta = Arc::new(Outputs::meta_for(&config));
        let sim = SimGpio::new(None);
        let mut outputs = Outputs::open(&config.outputs, &sim, meta.clone(), dir.path()).unwrap();
        assert_eq!(sim.level("led"), Some(false));

        let a = outputs.apply(
            "led",
            Command {
                value: json!(true),
                id: Some("c1".into()),
            },
        );
        assert_eq!(sim.level("led"), Some(true));
        assert_eq!(
            a.ack,
            Some(Ack {
                id: "c1".into(),
                name: "led".into(),
                ok: true,
                value: Some(json!(true)),
                error: None
            })
        );
        let (name, state) = a.state.unwrap();
        assert_eq!(
            (name.as_str(), &state.value, state.cmd.as_deref()),
            ("led", &json!(true), Some("c1"))
        );

        let bad = outputs.apply(
            "led",
            Command {
                value: json!("on"),
                id: Some("c2".into()),
            },
        );
        assert!(bad.state.is_none());
        let ack = bad.ack.unwrap();
        assert!(!ack.ok && ack.error.unwrap().contains("expected a bool"));
        assert_eq!(sim.level("led"), Some(true), "never applied");
        let unknown = outputs.apply(
            "fan",
            Command {
                value: json!(true),
                id: Some("c3".into()),
            },
        );
        assert!(
            unknown
                .ack
                .unwrap()
                .error
                .unwrap()
                .contains("unknown output 'fan'")
        );
        let silent = outputs.apply(
            "fan",
            Command {
                value: json!(true),
                id: None,
            },
        );
        assert_eq!(
            silent,
            Applied {
                ack: None,
                state: None
            }
        );

        let n = outputs.apply(
            "speed",
            Command {
                value: json!(42.5),
                id: None,
            },
        );
        assert_eq!(n.state.unwrap().1.value, json!(42.5));

        // A power cut: new lines at their initial level, then the desired state comes back.
        drop(outputs);
        let sim = SimGpio::new(None);
        let mut outputs = Outputs::open(&config.outputs, &sim, meta, dir.path()).unwrap();
        assert_eq!(sim.level("led"), Some(true));
        let states: BTreeMap<_, _> = outputs
            .states()
            .into_iter()
            .map(|(n, s)| (n, s.value))
            .collect();
        assert_eq!(states["led"], json!(true));
        assert_eq!(states["speed"], json!(42.5));
    }
}
