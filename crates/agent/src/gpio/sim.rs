//! Simulated GPIO: lines that live in memory, mirrored to `sim-gpio.json` (rewritten atomically
//! on every change) so a person can watch them, and drivable through a Unix socket
//! (`devicecloud agent sim set button 1`) or in-process through [`SimGpio`] itself.
//!
//! Lines are named after their config entry (`led`, `button`), not after a chip line.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    sync::{mpsc, watch},
};

use super::{Gpio, GpioError, InputEdge, InputLine, OutputLine};
use crate::config::{InputConfig, OutputConfig};

/// File name of the state mirror inside the data directory.
pub const STATE_FILE: &str = "sim-gpio.json";
/// File name of the control socket inside the data directory.
pub const SOCKET_FILE: &str = "sim-gpio.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Output,
    Input,
}

/// One simulated line as shown in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimLine {
    pub direction: Direction,
    /// Logical value (true = active).
    pub value: bool,
    pub active_low: bool,
    /// What a voltmeter would show: `value` XOR `active_low`.
    pub physical: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SimState {
    pub lines: BTreeMap<String, SimLine>,
}

struct Inner {
    state: Mutex<(SimState, BTreeMap<String, mpsc::UnboundedSender<InputEdge>>)>,
    version: watch::Sender<u64>,
    file: Option<PathBuf>,
}

/// The simulated backend and, cloned, its handle for tests and `devicecloud up`.
#[derive(Clone)]
pub struct SimGpio {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimGpio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimGpio")
            .field("file", &self.inner.file)
            .finish()
    }
}

impl SimGpio {
    /// A simulation that mirrors its lines to `state_file` (if given).
    pub fn new(state_file: Option<PathBuf>) -> SimGpio {
        let (version, _) = watch::channel(0);
        SimGpio {
            inner: Arc::new(Inner {
                state: Mutex::new((SimState::default(), BTreeMap::new())),
                version,
                file: state_file,
            }),
        }
    }

    /// A simulation mirrored to `DATA/sim-gpio.json`.
    pub fn in_data_dir(data_dir: &Path) -> SimGpio {
        SimGpio::new(Some(data_dir.join(STATE_FILE)))
    }

    /// This backend's handle (a clone; all clones share the lines).
    pub fn handle(&self) -> SimGpio {
        self.clone()
    }

    /// The logical level of a line, if it exists.
    pub fn level(&self, name: &str) -> Option<bool> {
        self.lock().0.lines.get(name).map(|l| l.value)
    }

    /// All lines, as in the state file.
    pub fn snapshot(&self) -> BTreeMap<String, SimLine> {
        self.lock().0.lines.clone()
    }

    /// Drives an input line to a logical level, like a finger on a button. An edge is
    /// reported to the agent if the level changes.
    pub fn drive_input(&self, name: &str, value: bool) -> Result<(), GpioError> {
        {
            let mut guard = self.lock();
            let (state, senders) = &mut *guard;
            let line = state
                .lines
                .get_mut(name)
                .ok_or_else(|| GpioError::UnknownLine(name.into()))?;
            if line.direction != Direction::Input {
                return Err(GpioError::NotAnInput(name.into()));
            }
            if line.value == value {
                return Ok(());
            }
            line.value = value;
            line.physical = value ^ line.active_low;
            if let Some(tx) = senders.get(name) {
                let _ = tx.send(InputEdge::new(value));
            }
        }
        self.changed();
        Ok(())
    }

    /// Resolves once `name` has logical level `value`, or gives up after `timeout`.
    pub async fn wait_level(&self, name: &str, value: bool, timeout: Duration) -> bool {
        let mut rx = self.inner.version.subscribe();
        let wait = async {
            loop {
                if self.level(name) == Some(value) {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// A receiver that sees a new number on every change of any line.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (SimState, BTreeMap<String, mpsc::UnboundedSender<InputEdge>>)>
    {
        // A panic while holding the lock cannot leave the map half-updated; keep going.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        if let Some(path) = &self.inner.file {
            let json = {
                let guard = self.lock();
                serde_json::to_vec_pretty(&guard.0).unwrap_or_default()
            };
            if let Err(err) =
                ::fsutil::write_atomic_with(path, &json, 0o644, ::fsutil::Durability::Unsynced)
            {
                tracing::warn!(path = %path.display(), %err, "cannot write the simulated GPIO state file");
            }
        }
        self.inner.version.send_modify(|v| *v += 1);
    }

    fn set_output(&self, name: &str, value: bool) -> Result<(), GpioError> {
        {
            let mut guard = self.lock();
            let line = guard
                .0
                .lines
                .get_mut(name)
                .ok_or_else(|| GpioError::UnknownLine(name.into()))?;
            if line.value == value {
                return Ok(());
            }
            line.value = value;
            line.physical = value ^ line.active_low;
        }
        self.changed();
        Ok(())
    }

    /// Serves the control socket: one command per line, `set NAME 0|1` or `get NAME` or
    /// `list`; answers `ok`, the value, or `error: ...`. Runs until the task is dropped.
    pub async fn serve_control(self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let sim = self.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let answer = sim.control(&line);
                    if write
                        .write_all(format!("{answer}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    }

    /// Binds the control socket (replacing a stale one). Needs a Tokio runtime.
    pub fn bind_control(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
        let _ = std::fs::remove_file(path);
        tokio::net::UnixListener::bind(path)
    }

    /// Executes one control command (see [`SimGpio::serve_control`]).
    pub fn control(&self, command: &str) -> String {
        let words: Vec<&str> = command.split_whitespace().collect();
        match words.as_slice() {
            ["set", name, value] => match parse_level(value) {
                Some(v) => match self.drive_input(name, v) {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
                None => format!("error: '{value}' is not a level; use 1/0, on/off or true/false"),
            },
            ["get", name] => match self.level(name) {
                Some(v) => u8::from(v).to_string(),
                None => format!("error: no line named '{name}'"),
            },
            ["list"] => self
                .snapshot()
                .iter()
                .map(|(n, l)| {
                    format!(
                        "{n} {} {}",
                        match l.direction {
                            Direction::Input => "input",
                            Direction::Output => "output",
                        },
                        u8::from(l.value)
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => "error: commands are `set NAME 0|1`, `get NAME` and `list`".into(),
        }
    }
}

/// Parses a level typed by a person.
pub fn parse_level(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "high" => Some(true),
        "0" | "off" | "false" | "low" => Some(false),
        _ => None,
    }
}

/// Sends one command to a running agent's control socket and returns the answer.
pub async fn send_control(socket: &Path, command: &str) -> std::io::Result<String> {
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    Ok(lines.next_line().await?.unwrap_or_default())
}

struct SimOutput {
    sim: SimGpio,
    name: String,
}

impl OutputLine for SimOutput {
    fn set(&mut self, value: bool) -> Result<(), GpioError> {
        self.sim.set_output(&self.name, value)
    }

    fn get(&mut self) -> Result<bool, GpioError> {
        self.sim
            .level(&self.name)
            .ok_or_else(|| GpioError::UnknownLine(self.name.clone()))
    }
}

impl Drop for SimOutput {
    fn drop(&mut self) {
        self.sim.lock().0.lines.remove(&self.name);
    }
}

struct SimInputGuard {
    sim: SimGpio,
    name: String,
}

impl Drop for SimInputGuard {
    fn drop(&mut self) {
        let mut guard = self.sim.lock();
        guard.0.lines.remove(&self.name);
        guard.1.remove(&self.name);
    }
}

impl Gpio for SimGpio {
    fn request_output(&self, config: &OutputConfig) -> Result<Box<dyn OutputLine>, GpioError> {
        {
            let mut guard = self.lock();
            if guard.0.lines.contains_key(&config.name) {
                return Err(GpioError::Busy {
                    name: config.name.clone(),
                    chip: "sim".into(),
                    line: config.name.clone(),
                });
            }
            guard.0.lines.insert(
                config.name.clone(),
                SimLine {
                    direction: Direction::Output,
                    value: config.initial,
                    active_low: config.active_low,
                    physical: config.initial ^ config.active_low,
                },
            );
        }
        self.changed();
        Ok(Box::new(SimOutput {
            sim: self.clone(),
            name: config.name.clone(),
        }))
    }

    fn request_input(&self, config: &InputConfig) -> Result<InputLine, GpioError> {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut guard = self.lock();
            if guard.0.lines.contains_key(&config.name) {
                return Err(GpioError::Busy {
                    name: config.name.clone(),
                    chip: "sim".into(),
                    line: config.name.clone(),
                });
            }
            guard.0.lines.insert(
                config.name.clone(),
                SimLine {
                    direction: Direction::Input,
                    value: false,
                    active_low: config.active_low,
                    physical: config.active_low,
                },
            );
            guard.1.insert(config.name.clone(), tx);
        }
        self.changed();
        Ok(InputLine {
            initial: false,
            edges: rx,
            guard: Box::new(SimInputGuard {
                sim: self.clone(),
                name: config.name.clone(),
            }),
        })
    }

    fn sim(&self) -> Option<SimGpio> {
        Some(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bias, LineRef};

    fn output(name: &str, initial: bool) -> OutputConfig {
        OutputConfig {
            name: name.into(),
            line: Some(LineRef::Offset(1)),
            chip: None,
            active_low: true,
            initial,
            value_type: proto::payload::ValueType::Bool,
        }
    }

    fn input(name: &str) -> InputConfig {
        InputConfig {
            name: name.into(),
            line: LineRef::Offset(2),
            chip: None,
            bias: Bias::AsIs,
            debounce_ms: 0,
            active_low: false,
        }
    }

    #[tokio::test]
    async fn outputs_inputs_state_file_and_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimGpio::in_data_dir(dir.path());
        let mut led = sim.request_output(&output("led", false)).unwrap();
        assert!(matches!(
            sim.request_output(&output("led", false)),
            Err(GpioError::Busy { .. })
        ));
        let mut button = sim.request_input(&input("button")).unwrap();
        assert_eq!(sim.level("led"), Some(false));
        led.set(true).unwrap();
        assert!(led.get().unwrap());
        assert!(sim.wait_level("led", true, Duration::from_secs(1)).await);
        let file: SimState =
            serde_json::from_slice(&std::fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(
            file.lines["led"],
            SimLine {
                direction: Direction::Output,
                value: true,
                active_low: true,
                physical: false
            }
        );

        assert!(matches!(
            sim.drive_input("led", true),
            Err(GpioError::NotAnInput(_))
        ));
        let socket = dir.path().join(SOCKET_FILE);
        let listener = SimGpio::bind_control(&socket).unwrap();
        let server = tokio::spawn(sim.clone().serve_control(listener));
        assert_eq!(send_control(&socket, "set button on").await.unwrap(), "ok");
        assert_eq!(button.edges.recv().await, Some(InputEdge::new(true)));
        assert_eq!(send_control(&socket, "get button").await.unwrap(), "1");
        assert!(
            send_control(&socket, "set button maybe")
                .await
                .unwrap()
                .starts_with("error:")
        );
        assert!(
            send_control(&socket, "get nothing")
                .await
                .unwrap()
                .starts_with("error:")
        );
        // Same level again: no edge.
        sim.drive_input("button", true).unwrap();
        sim.drive_input("button", false).unwrap();
        assert_eq!(button.edges.recv().await, Some(InputEdge::new(false)));
        server.abort();
        drop(led);
        assert_eq!(sim.level("led"), None, "dropping the line releases it");
    }
}
