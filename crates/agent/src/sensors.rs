//! Sensors: figures of the board itself (`system`), 1-Wire DS18B20 thermometers, any program
//! that prints a number (`command`), and a drifting temperature for demos (`simulated`).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::config::{AgentConfig, SensorConfig, SensorKind, SystemMetric};

/// A reading could not be taken. The agent logs it and tries again at the next interval.
#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("DS18B20 {device}: {message}")]
    Ds18b20 { device: String, message: String },
    #[error("command '{command}': {message}")]
    Command { command: String, message: String },
}

enum Source {
    System {
        metric: SystemMetric,
        sysfs: PathBuf,
        proc: PathBuf,
        path: PathBuf,
    },
    Ds18b20 {
        devices: PathBuf,
        device: Option<String>,
    },
    Command {
        command: String,
        args: Vec<String>,
        timeout: Duration,
    },
    Simulated {
        value: f64,
        base: f64,
    },
}

/// One configured sensor.
pub struct Sensor {
    pub name: String,
    pub interval: Duration,
    source: Source,
}

impl Sensor {
    pub fn new(config: &SensorConfig, agent: &AgentConfig) -> Sensor {
        let source = match config.kind {
            SensorKind::System => Source::System {
                metric: config.metric.unwrap_or(SystemMetric::Load1),
                sysfs: agent.sysfs_root.clone(),
                proc: agent.proc_root.clone(),
                path: config.path.clone().unwrap_or_else(|| PathBuf::from("/")),
            },
            SensorKind::Ds18b20 => Source::Ds18b20 {
                devices: agent.sysfs_root.join("bus/w1/devices"),
                device: config.device.clone(),
            },
            SensorKind::Command => Source::Command {
                command: config.command.clone().unwrap_or_default(),
                args: config.args.clone(),
                timeout: Duration::from_millis(config.timeout_ms),
            },
            SensorKind::Simulated => Source::Simulated {
                value: 21.5,
                base: 21.5,
            },
        };
        Sensor {
            name: config.name.clone(),
            interval: Duration::from_millis(config.interval_ms),
            source,
        }
    }

    /// Takes one reading.
    pub async fn read(&mut self) -> Result<f64, SensorError> {
        match &mut self.source {
            Source::System {
                metric,
                sysfs,
                proc,
                path,
            } => match metric {
                SystemMetric::CpuTemp => cpu_temp(sysfs),
                SystemMetric::Load1 => load1(proc),
                SystemMetric::MemUsedPct => mem_used_pct(proc),
                SystemMetric::DiskUsedPct => disk_used_pct(path),
            },
            Source::Ds18b20 { devices, device } => {
                // The 1-Wire driver blocks the read for a whole conversion (~750 ms); the agent
                // runs on a single-threaded runtime, so it must not wait on its only thread.
                let (dir, device) = (devices.clone(), device.clone());
                tokio::task::spawn_blocking(move || ds18b20(&dir, device.as_deref()))
                    .await
                    .unwrap_or_else(|join| {
                        Err(SensorError::Read {
                            path: devices.clone(),
                            source: std::io::Error::other(join.to_string()),
                        })
                    })
            }
            Source::Command {
                command,
                args,
                timeout,
            } => run_command(command, args, *timeout).await,
            Source::Simulated { value, base } => {
                use rand::Rng;
                let mut rng = rand::rng();
                // A random walk pulled back towards the base, so the demo chart wanders but stays
                // plausible for a room.
                *value += rng.random_range(-0.15..0.15) + (*base - *value) * 0.05;
                Ok((*value * 100.0).round() / 100.0)
            }
        }
    }
}

fn read(path: &Path) -> Result<String, SensorError> {
    std::fs::read_to_string(path).map_err(|source| SensorError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, message: impl Into<String>) -> SensorError {
    SensorError::Parse {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// CPU temperature in °C from the first thermal zone (`thermal_zone0` is the SoC on a Pi).
pub fn cpu_temp(sysfs: &Path) -> Result<f64, SensorError> {
    let dir = sysfs.join("class/thermal");
    let mut zones: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| SensorError::Read {
            path: dir.clone(),
            source,
        })?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .map(|e| e.path().join("temp"))
        .filter(|p| p.exists())
        .collect();
    zones.sort();
    let path = zones.first().ok_or_else(|| {
        SensorError::NotFound(format!(
            "no thermal zone with a temp file under {}",
            dir.display()
        ))
    })?;
    let text = read(path)?;
    let milli: f64 = text.trim().parse().map_err(|_| {
        parse_err(
            path,
            format!("expected millidegrees, got '{}'", text.trim()),
        )
    })?;
    Ok(milli / 1000.0)
}

/// The 1-minute load average.
pub fn load1(proc: &Path) -> Result<f64, SensorError> {
    let path = proc.join("loadavg");
    let text = read(&path)?;
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| parse_err(&path, "expected a number first"))
}

/// Memory in use, percent of total (MemTotal - MemAvailable).
pub fn mem_used_pct(proc: &Path) -> Result<f64, SensorError> {
    let path = proc.join("meminfo");
    let text = read(&path)?;
    let field = |name: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    };
    let total = field("MemTotal").ok_or_else(|| parse_err(&path, "no MemTotal line"))?;
    let available =
        field("MemAvailable").ok_or_else(|| parse_err(&path, "no MemAvailable line"))?;
    if total <= 0.0 {
        return Err(parse_err(&path, "MemTotal is 0"));
    }
    Ok(((total - available) / total * 100.0 * 10.0).round() / 10.0)
}

/// Disk space in use on the file system holding `path`, percent, as `df` computes it.
pub fn disk_used_pct(path: &Path) -> Result<f64, SensorError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| SensorError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    })?;
    let used = st.blocks().saturating_sub(st.blocks_free()) as f64;
    let usable = used + st.blocks_available() as f64;
    if usable <= 0.0 {
        return Ok(0.0);
    }
    Ok((used / usable * 100.0 * 10.0).round() / 10.0)
}

/// A DS18B20 reading from `w1_slave`: the first line must end in `YES` (CRC ok), the second
/// carries `t=` in millidegrees.
pub fn ds18b20(devices: &Path, device: Option<&str>) -> Result<f64, SensorError> {
    let device = match device {
        Some(d) => d.to_string(),
        None => {
            let mut found: Vec<String> = std::fs::read_dir(devices)
                .map_err(|source| SensorError::Read {
                    path: devices.to_path_buf(),
                    source,
                })?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("28-"))
                .collect();
            found.sort();
            found.into_iter().next().ok_or_else(|| {
                SensorError::NotFound(format!(
                    "no DS18B20 (28-*) under {}; is the 1-Wire overlay enabled (dtoverlay=w1-gpio)?",
                    devices.display()
                ))
            })?
        }
    };
    let path = devices.join(&device).join("w1_slave");
    let text = read(&path)?;
    parse_w1_slave(&text).map_err(|message| SensorError::Ds18b20 { device, message })
}

/// Parses the two lines of a `w1_slave` file.
pub fn parse_w1_slave(text: &str) -> Result<f64, String> {
    let mut lines = text.lines();
    let crc = lines.next().ok_or("the file is empty")?;
    if !crc.trim_end().ends_with("YES") {
        return Err(format!(
            "CRC check failed ('{}'); the wiring may be loose",
            crc.trim()
        ));
    }
    let data = lines.next().ok_or("no temperature line")?;
    let t = data
        .split("t=")
        .nth(1)
        .ok_or("no 't=' in the temperature line")?;
    let milli: i64 = t
        .trim()
        .parse()
        .map_err(|_| format!("'t={}' is not a number", t.trim()))?;
    // 85 °C exactly is the power-on reset value, not a measurement.
    if milli == 85_000 {
        return Err(
            "the sensor returned its power-on value (85 °C); check its power supply".into(),
        );
    }
    Ok(milli as f64 / 1000.0)
}

async fn run_command(
    command: &str,
    args: &[String],
    timeout: Duration,
) -> Result<f64, SensorError> {
    let err = |message: String| SensorError::Command {
        command: command.to_string(),
        message,
    };
    let child = tokio::process::Command::new(command)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("cannot start it: {e}")))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            err(format!(
                "no answer within {} ms; it was killed",
                timeout.as_millis()
            ))
        })?
        .map_err(|e| err(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(err(format!(
            "exited with {}: {}",
            output.status,
            stderr.trim()
        )));
    }
    first_number(&stdout).ok_or_else(|| err(format!("no number in its output '{}'", stdout.trim())))
}

/// The first number in `text` (`temp=48.3'C` -> 48.3).
pub fn first_number(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    for start in 0..b.len() {
        let c = b[start];
        let begins = c.is_ascii_digit()
            || ((c == b'-' || c == b'.') && b.get(start + 1).is_some_and(u8::is_ascii_digit))
            || (c == b'-'
                && b.get(start + 1) == Some(&b'.')
                && b.get(start + 2).is_some_and(u8::is_ascii_digit));
        if !begins {
            continue;
        }
        let mut end = start + 1;
        while end < b.len()
            && (b[end].is_ascii_digit() || matches!(b[end], b'.' | b'e' | b'E' | b'-' | b'+'))
        {
            end += 1;
        }
        // Shrink until it parses: "12.5e" or "3-4" have a tail that is not part of the number.
        while end > start {
            if let Ok(v) = text[start..end].parse::<f64>()
                && v.is_finite()
            {
                return Some(v);
            }
            end -= 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_program_output() {
        assert_eq!(first_number("temp=48.3'C\n"), Some(48.3));
        assert_eq!(first_number("-12"), Some(-12.0));
        assert_eq!(first_number("value: .5 V"), Some(0.5));
        assert_eq!(first_number("1e3 ms"), Some(1000.0));
        assert_eq!(first_number("3-4"), Some(3.0));
        assert_eq!(first_number("none"), None);
        assert_eq!(first_number("a - b"), None);
    }

    #[test]
    fn w1_slave_parsing() {
        let ok = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert_eq!(parse_w1_slave(ok), Ok(23.125));
        let neg = "ff ff : crc=aa YES\nff ff t=-1062\n";
        assert_eq!(parse_w1_slave(neg), Ok(-1.062));
        assert!(
            parse_w1_slave("72 01 : crc=57 NO\n72 01 t=23125\n")
                .unwrap_err()
                .contains("CRC")
        );
        assert!(
            parse_w1_slave("x YES\nx t=85000\n")
                .unwrap_err()
                .contains("power-on")
        );
        assert!(parse_w1_slave("").is_err());
        assert!(parse_w1_slave("x YES\nnothing\n").is_err());
    }

    #[test]
    fn system_metrics_from_fake_trees() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(sys.join("class/thermal/thermal_zone0")).unwrap();
        std::fs::create_dir_all(sys.join("class/thermal/cooling_device0")).unwrap();
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(sys.join("class/thermal/thermal_zone0/temp"), "48312\n").unwrap();
        std::fs::write(proc.join("loadavg"), "0.42 0.30 0.20 1/123 4567\n").unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal:        1000 kB\nMemFree:  100 kB\nMemAvailable:     250 kB\n",
        )
        .unwrap();
        assert_eq!(cpu_temp(&sys).unwrap(), 48.312);
        assert_eq!(load1(&proc).unwrap(), 0.42);
        assert_eq!(mem_used_pct(&proc).unwrap(), 75.0);
        let disk = disk_used_pct(dir.path()).unwrap();
        assert!((0.0..=100.0).contains(&disk), "{disk}");
        std::fs::write(proc.join("meminfo"), "MemTotal: 1000 kB\n").unwrap();
        assert!(
            mem_used_pct(&proc)
                .unwrap_err()
                .to_string()
                .contains("MemAvailable")
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(empty.join("class/thermal")).unwrap();
        assert!(
            cpu_temp(&empty)
                .unwrap_err()
                .to_string()
                .contains("no thermal zone")
        );
    }

    #[tokio::test]
    async fn command_sensor_parses_and_times_out() {
        let ok = run_command(
            "sh",
            &["-c".into(), "echo temp=48.3\\'C".into()],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(ok.unwrap(), 48.3);
        let slow = run_command("sleep", &["5".into()], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(
            slow.to_string().contains("no answer within 100 ms"),
            "{slow}"
        );
        let failing = run_command(
            "sh",
            &["-c".into(), "echo broken >&2; exit 3".into()],
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(failing.to_string().contains("broken"), "{failing}");
        let missing = run_command("/nonexistent/program", &[], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(missing.to_string().contains("cannot start"), "{missing}");
        let words = run_command("echo", &["hello".into()], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(words.to_string().contains("no number"), "{words}");
    }
}
