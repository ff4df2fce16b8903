//! `agent.toml`: what the agent drives (outputs, inputs), measures (sensors) and runs (services),
//! and where it connects to.
//!
//! Every table refuses unknown keys, and every error names the file, the line and the key and
//! says what was expected, because the person reading it is at a device's console.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use proto::{bundle::Bundle, payload::ValueType};
use serde::{Deserialize, Deserializer, Serialize};

/// A config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}{}: {}{message}", line.map(|l| format!(":{l}")).unwrap_or_default(), key.as_ref().map(|k| format!("key '{k}': ")).unwrap_or_default())]
    Invalid {
        origin: String,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Bundle(#[from] proto::bundle::BundleError),
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            _ => None,
        }
    }
}

/// The whole `agent.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The device bundle file (from `device add` or `agent enroll`); relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<PathBuf>,
    /// The bundle's fields inline, instead of `bundle = "file"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<toml::Table>,
    /// Outbox, desired state, service logs, status file, credentials for services.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Where `/sys` is (tests point it at a fake tree).
    #[serde(default = "default_sysfs_root")]
    pub sysfs_root: PathBuf,
    /// Where `/proc` is.
    #[serde(default = "default_proc_root")]
    pub proc_root: PathBuf,
    #[serde(default)]
    pub gpio: GpioConfig,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub link: LinkConfig,
    #[serde(default, rename = "output", skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputConfig>,
    #[serde(default, rename = "input", skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<InputConfig>,
    #[serde(default, rename = "sensor", skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<SensorConfig>,
    #[serde(default, rename = "service", skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceConfig>,
    /// The file this was read from, for messages and relative paths.
    #[serde(skip)]
    pub origin: Option<PathBuf>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/devicecloud-agent")
}
fn default_sysfs_root() -> PathBuf {
    PathBuf::from("/sys")
}
fn default_proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

/// Which GPIO backend drives the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// The Linux GPIO character device (`/dev/gpiochip*`).
    #[default]
    Linux,
    /// Lines that live in memory and in `DATA/sim-gpio.json`.
    Simulated,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioConfig {
    #[serde(default)]
    pub backend: GpioBackend,
    /// Chip used for lines given by offset without `chip`.
    #[serde(default = "default_chip")]
    pub default_chip: String,
}

fn default_chip() -> String {
    "gpiochip0".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// At most this many queued readings/events; beyond it the oldest are dropped (and counted).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// The queue file may not grow beyond this; when it would, queueing stops with an error
    /// (the same path as a full disk).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Replay rate after a reconnect, messages per second.
    #[serde(default = "default_replay_rate")]
    pub replay_per_second: u32,
}

fn default_max_entries() -> u64 {
    100_000
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_replay_rate() -> u32 {
    500
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_entries: default_max_entries(),
            max_bytes: default_max_bytes(),
            replay_per_second: default_replay_rate(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_ms: u64,
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
}

fn default_keep_alive() -> u16 {
    30
}
fn default_backoff_initial() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    60_000
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            keep_alive_s: default_keep_alive(),
            backoff_initial_ms: default_backoff_initial(),
            backoff_max_ms: default_backoff_max(),
        }
    }
}

/// A GPIO line: by name (`line = "GPIO17"`, searched on every chip) or by offset
/// (`line = 17`, on `chip` or the default chip).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LineRef {
    Name(String),
    Offset(u32),
}

impl fmt::Display for LineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineRef::Name(n) => write!(f, "'{n}'"),
            LineRef::Offset(o) => write!(f, "offset {o}"),
        }
    }
}

impl<'de> Deserialize<'de> for LineRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = LineRef;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a line name like \"GPIO17\" or a line offset like 17")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LineRef, E> {
                if v.is_empty() {
                    return Err(E::custom(
                        "the line name is empty; use a name like \"GPIO17\" or an offset like 17",
                    ));
                }
                Ok(LineRef::Name(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<LineRef, E> {
                u32::try_from(v).map(LineRef::Offset).map_err(|_| {
                    E::custom(format!("line offset {v} is out of range; use 0 or more"))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LineRef, E> {
                u32::try_from(v)
                    .map(LineRef::Offset)
                    .map_err(|_| E::custom(format!("line offset {v} is out of range")))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_bool_type() -> ValueType {
    ValueType::Bool
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    pub name: String,
    /// The GPIO line; absent for a virtual output (a value that is only stored and reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<LineRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<String>,
    #[serde(default)]
    pub active_low: bool,
    /// The level the line gets when the agent requests it, before any desired state.
    #[serde(default)]
    pub initial: bool,
    #[serde(rename = "type", default = "default_bool_type")]
    pub value_type: ValueType,
}

/// Pull resistor of an input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bias {
    #[default]
    AsIs,
    Disabled,
    PullUp,
    PullDown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    pub name: String,
    pub line: LineRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip: Option<String>,
    #[serde(default)]
    pub bias: Bias,
    #[serde(default)]
    pub debounce_ms: u32,
    #[serde(default)]
    pub active_low: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    /// A figure of the board itself; `metric` says which.
    System,
    /// A 1-Wire DS18B20 thermometer; `device` is its id (`28-...`), or the first one found.
    Ds18b20,
    /// A program whose output's first number is the reading.
    Command,
    /// A drifting temperature, for demos.
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SystemMetric {
    CpuTemp,
    Load1,
    MemUsedPct,
    DiskUsedPct,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorConfig {
    pub name: String,
    pub kind: SensorKind,
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    #[serde(default)]
    pub unit: String,
    /// `system`: which figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<SystemMetric>,
    /// `system` + `disk_used_pct`: the mount point (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `ds18b20`: the 1-Wire device id, e.g. `28-00000a1b2c3d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `command`: the program and its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `command`: how long the program may run.
    #[serde(default = "default_sensor_timeout")]
    pub timeout_ms: u64,
}

fn default_interval() -> u64 {
    10_000
}
fn default_sensor_timeout() -> u64 {
    5_000
}

/// When a service is started again after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// First restart delay; doubles on each quick failure up to `backoff_max_ms`.
    #[serde(default = "default_service_backoff")]
    pub backoff_ms: u64,
    #[serde(default = "default_service_backoff_max")]
    pub backoff_max_ms: u64,
    /// SIGTERM, then SIGKILL to the whole process group after this long.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    /// The log is rotated (one `.1` kept) when it reaches this size.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
}

fn default_service_backoff() -> u64 {
    1_000
}
fn default_service_backoff_max() -> u64 {
    60_000
}
fn default_stop_timeout() -> u64 {
    10_000
}
fn default_log_max() -> u64 {
    1024 * 1024
}

impl AgentConfig {
    /// Reads and validates `agent.toml`.
    pub fn load(path: impl AsRef<Path>) -> Result<AgentConfig, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = AgentConfig::parse(&text, &path.display().to_string())?;
        config.origin = Some(path.to_path_buf());
        if let Some(dir) = path.parent() {
            if let Some(bundle) = &config.bundle
                && bundle.is_relative()
            {
                config.bundle = Some(dir.join(bundle));
            }
            if config.data_dir.is_relative() {
                config.data_dir = dir.join(&config.data_dir);
            }
        }
        Ok(config)
    }

    /// Parses and validates a config; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
        let config: AgentConfig = toml::from_str(text).map_err(|err| {
            let location = fsutil::toml_location(text, &err);
            ConfigError::Invalid {
                origin: origin.to_string(),
                line: location.line,
                key: location.key,
                message: location.message,
            }
        })?;
        config.validate(&Locator { text, origin })?;
        Ok(config)
    }

    /// The bundle this config points to (`bundle = "file"` or `[connection]`).
    pub fn load_bundle(&self) -> Result<Bundle, ConfigError> {
        let origin = self
            .origin
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "agent config".into());
        match (&self.bundle, &self.connection) {
            (Some(path), None) => Ok(Bundle::load(path)?),
            (None, Some(table)) => {
                let text = toml::to_string(table).unwrap_or_default();
                Ok(Bundle::parse(&text, &format!("{origin} [connection]"))?)
            }
            (Some(_), Some(_)) => Err(ConfigError::Invalid {
                origin,
                line: None,
                key: Some("bundle".into()),
                message: "both `bundle` and `[connection]` are set; keep one".into(),
            }),
            (None, None) => Err(ConfigError::Invalid {
                origin,
                line: None,
                key: Some("bundle".into()),
                message: "no connection: set `bundle = \"/etc/devicecloud/device.bundle\"` (the file from `devicecloud device add` or `agent enroll`), or a `[connection]` table".into(),
            }),
        }
    }

    /// The config serialized back to TOML (for `--print-config` and tests).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    fn validate(&self, loc: &Locator<'_>) -> Result<(), ConfigError> {
        let mut names: BTreeMap<String, &str> = BTreeMap::new();
        let mut check_name =
            |section: &'static str, index: usize, name: &str| -> Result<(), ConfigError> {
                if let Err(e) = proto::topics::validate_name(name) {
                    return Err(loc.invalid(Some((section, index)), "name", &e.to_string()));
                }
                if let Some(prev) = names.insert(name.to_string(), section) {
                    return Err(loc.invalid(
                    Some((section, index)),
                    "name",
                    &format!(
                        "the name '{name}' is already used by an [[{prev}]]; names must be unique"
                    ),
                ));
                }
                Ok(())
            };
        for (i, o) in self.outputs.iter().enumerate() {
            check_name("output", i, &o.name)?;
            if o.line.is_some() && o.value_type != ValueType::Bool {
                return Err(loc.invalid(
                    Some(("output", i)),
                    "type",
                    "a GPIO line is on or off: use type = \"bool\", or remove `line` for a virtual number output",
                ));
            }
            if o.chip.is_some() && o.line.is_none() {
                return Err(loc.invalid(
                    Some(("output", i)),
                    "chip",
                    "`chip` needs a `line` offset next to it",
                ));
            }
        }
        for (i, inp) in self.inputs.iter().enumerate() {
            check_name("input", i, &inp.name)?;
        }
        // Sensors share the name space with outputs/inputs only within telemetry; keep them
        // distinct anyway so dashboards never show two things called the same.
        for (i, s) in self.sensors.iter().enumerate() {
            check_name("sensor", i, &s.name)?;
            let at = Some(("sensor", i));
            if s.interval_ms == 0 {
                return Err(loc.invalid(at, "interval_ms", "the interval must be at least 1 ms"));
            }
            match s.kind {
                SensorKind::System if s.metric.is_none() => {
                    return Err(loc.invalid(
                        at,
                        "metric",
                        "a system sensor needs `metric = \"cpu_temp\" | \"load1\" | \"mem_used_pct\" | \"disk_used_pct\"`",
                    ));
                }
                SensorKind::Command if s.command.as_deref().is_none_or(str::is_empty) => {
                    return Err(loc.invalid(
                        at,
                        "command",
                        "a command sensor needs `command = \"/path/to/program\"`",
                    ));
                }
                _ => {}
            }
            if s.kind != SensorKind::System && s.metric.is_some() {
                return Err(loc.invalid(at, "metric", "`metric` is only for kind = \"system\""));
            }
            if s.kind != SensorKind::Command && s.command.is_some() {
                return Err(loc.invalid(at, "command", "`command` is only for kind = \"command\""));
            }
            if s.kind != SensorKind::Ds18b20 && s.device.is_some() {
                return Err(loc.invalid(at, "device", "`device` is only for kind = \"ds18b20\""));
            }
        }
        let mut service_names = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = Some(("service", i));
            if proto::topics::validate_name(&s.name).is_err() {
                return Err(loc.invalid(
                    at,
                    "name",
                    &format!(
                        "invalid service name '{}': use letters, digits, '_', '-' and '.'",
                        s.name
                    ),
                ));
            }
            if service_names.contains(&s.name.as_str()) {
                return Err(loc.invalid(
                    at,
                    "name",
                    &format!("the service name '{}' is used twice", s.name),
                ));
            }
            service_names.push(&s.name);
            if s.command.trim().is_empty() {
                return Err(loc.invalid(
                    at,
                    "command",
                    "the command is empty; give a program like \"/usr/bin/python3\"",
                ));
            }
            if s.backoff_max_ms < s.backoff_ms {
                return Err(loc.invalid(at, "backoff_max_ms", "must be at least backoff_ms"));
            }
        }
        if self.outbox.max_entries == 0 {
            return Err(loc.invalid(
                Some(("outbox", usize::MAX)),
                "max_entries",
                "the outbox must hold at least one entry",
            ));
        }
        if self.outbox.replay_per_second == 0 {
            return Err(loc.invalid(
                Some(("outbox", usize::MAX)),
                "replay_per_second",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

struct Locator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    /// The line of `key` inside the `index`-th `[[section]]` (or inside `[section]` when
    /// index is usize::MAX), or at the top level.
    fn line(&self, section: Option<(&str, usize)>, key: &str) -> Option<usize> {
        let lines: Vec<&str> = self.text.lines().collect();
        let (start, header) = match section {
            None => (0, None),
            Some((name, usize::MAX)) => {
                let header = format!("[{name}]");
                let pos = lines.iter().position(|l| l.trim() == header)?;
                (pos + 1, Some(pos))
            }
            Some((name, index)) => {
                let header = format!("[[{name}]]");
                let pos = lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.trim() == header)
                    .nth(index)?
                    .0;
                (pos + 1, Some(pos))
            }
        };
        for (i, l) in lines.iter().enumerate().skip(start) {
            let t = l.trim_start();
            if t.starts_with('[') {
                break;
            }
            if t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
            {
                return Some(i + 1);
            }
        }
        header.map(|h| h + 1)
    }

    fn invalid(&self, section: Option<(&str, usize)>, key: &str, message: &str) -> ConfigError {
        let line = self.line(section, key);
        let message = match section {
            Some((name, usize::MAX)) => format!("[{name}]: {message}"),
            Some((name, index)) => format!("[[{name}]] #{}: {message}", index + 1),
            None => message.to_string(),
        };
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line,
            key: Some(key.to_string()),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
bundle = "kitchen.bundle"
data_dir = "/tmp/x"

[[output]]
name = "led"
line = "GPIO17"
initial = false

[[output]]
name = "relay"
line = 27
chip = "gpiochip0"
active_low = true

[[input]]
name = "button"
line = "GPIO22"
bias = "pull-up"
debounce_ms = 20
active_low = true

[[sensor]]
name = "cpu"
kind = "system"
metric = "cpu_temp"
unit = "°C"
interval_ms = 5000

[[sensor]]
name = "outside"
kind = "ds18b20"
device = "28-00000a1b2c3d"

[[sensor]]
name = "ext"
kind = "command"
command = "/usr/bin/vcgencmd"
args = ["measure_temp"]
timeout_ms = 1000

[[service]]
name = "script"
command = "/usr/bin/python3"
args = ["main.py"]
env = { FOO = "bar" }
restart = "on-failure"
stop_timeout_ms = 2000
"#;

    #[test]
    fn parses_a_full_config() {
        let c = AgentConfig::parse(GOOD, "agent.toml").unwrap();
        assert_eq!(c.outputs.len(), 2);
        assert_eq!(c.outputs[0].line, Some(LineRef::Name("GPIO17".into())));
        assert_eq!(c.outputs[1].line, Some(LineRef::Offset(27)));
        assert!(c.outputs[1].active_low);
        assert_eq!(c.inputs[0].bias, Bias::PullUp);
        assert_eq!(c.sensors[0].metric, Some(SystemMetric::CpuTemp));
        assert_eq!(c.sensors[2].args, vec!["measure_temp".to_string()]);
        assert_eq!(c.services[0].restart, RestartPolicy::OnFailure);
        assert_eq!(
            c.services[0].env.get("FOO").map(String::as_str),
            Some("bar")
        );
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        // Round trip.
        let again = AgentConfig::parse(&c.to_toml(), "x").unwrap();
        assert_eq!(again.outputs[1].line, Some(LineRef::Offset(27)));
    }

    fn err(text: &str) -> ConfigError {
        AgentConfig::parse(text, "agent.toml").unwrap_err()
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = err("data_dir = \"/x\"\n\n[[output]]\nname = \"led\"\nlien = \"GPIO17\"\n");
        assert_eq!(e.line(), Some(5), "{e}");
        assert_eq!(e.key(), Some("lien"));
        let msg = e.to_string();
        assert!(msg.starts_with("agent.toml:5:"), "{msg}");
        assert!(msg.contains("expected one of"), "{msg}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let e = err("[[input]]\nname = \"b\"\nline = \"GPIO1\"\ndebounce_ms = \"soon\"\n");
        assert_eq!(e.line(), Some(4), "{e}");
        assert_eq!(e.key(), Some("debounce_ms"), "{e}");
        let e = err("[[output]]\nname = \"led\"\nline = true\n");
        assert_eq!(e.line(), Some(3));
        assert!(e.to_string().contains("a line name like"), "{e}");
        let e = err("[[service]]\nname = \"s\"\ncommand = \"x\"\nrestart = \"sometimes\"\n");
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().contains("on-failure"), "{e}");
    }

    #[test]
    fn semantic_errors_name_line_and_key() {
        let e = err("[[sensor]]\nname = \"t\"\nkind = \"system\"\n");
        assert_eq!(e.key(), Some("metric"));
        assert_eq!(
            e.line(),
            Some(1),
            "points at the table when the key is missing: {e}"
        );
        assert!(e.to_string().contains("cpu_temp"), "{e}");
        let e = err("[[output]]\nname = \"a\"\n[[output]]\nname = \"a\"\n");
        assert_eq!((e.line(), e.key()), (Some(4), Some("name")), "{e}");
        let e = err("[[output]]\nname = \"led\"\nline = 3\ntype = \"number\"\n");
        assert_eq!((e.line(), e.key()), (Some(4), Some("type")), "{e}");
        let e = err("[[output]]\nname = \"bad/name\"\n");
        assert_eq!((e.line(), e.key()), (Some(2), Some("name")), "{e}");
        let e = err("[[sensor]]\nname = \"t\"\nkind = \"simulated\"\ninterval_ms = 0\n");
        assert_eq!((e.line(), e.key()), (Some(4), Some("interval_ms")), "{e}");
    }

    #[test]
    fn bundle_is_required_to_connect() {
        let c = AgentConfig::parse("", "agent.toml").unwrap();
        let e = c.load_bundle().unwrap_err().to_string();
        assert!(e.contains("devicecloud device add"), "{e}");
    }

    #[test]
    fn inline_connection() {
        let text = r#"
[connection]
device_id = "kitchen"
broker_urls = ["mqtts://127.0.0.1:8883"]
ca_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
token = "secret"
"#;
        let c = AgentConfig::parse(text, "agent.toml").unwrap();
        let b = c.load_bundle().unwrap();
        assert_eq!(b.device_id, "kitchen");
    }
}
