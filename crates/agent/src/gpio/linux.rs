//! The Linux GPIO character device (`/dev/gpiochip*`, uAPI v2) through `gpiocdev`.
//!
//! Each configured line is one request held for the agent's lifetime, so no other program can
//! flip the LED behind our back. Active-low, bias and debounce are done by the kernel.

use std::{path::PathBuf, time::Duration};

use gpiocdev::line::{EdgeKind, Value};
use tokio::sync::mpsc;

use super::{Gpio, GpioError, InputEdge, InputLine, OutputLine};
use crate::config::{Bias, InputConfig, LineRef, OutputConfig};

const CONSUMER: &str = "devicecloud-agent";

/// The character-device backend.
#[derive(Debug, Clone)]
pub struct LinuxGpio {
    /// Chip for lines given by offset without `chip` (e.g. `gpiochip0`).
    pub default_chip: String,
}

/// Where a configured line is and how to request it: the pure part of a request, tested here
/// without hardware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSettings {
    pub name: String,
    pub chip: Option<PathBuf>,
    pub line: LineRef,
    pub active_low: bool,
    pub output: Option<bool>,
    pub bias: Option<gpiocdev::line::Bias>,
    pub debounce: Option<Duration>,
}

/// `gpiochip0` -> `/dev/gpiochip0`; absolute paths stay.
pub fn chip_path(chip: &str) -> PathBuf {
    if chip.starts_with('/') {
        PathBuf::from(chip)
    } else {
        PathBuf::from("/dev").join(chip)
    }
}

impl LinuxGpio {
    pub fn new(default_chip: impl Into<String>) -> LinuxGpio {
        LinuxGpio {
            default_chip: default_chip.into(),
        }
    }

    fn chip_for(&self, chip: &Option<String>, line: &LineRef) -> Option<PathBuf> {
        match (chip, line) {
            (Some(c), _) => Some(chip_path(c)),
            (None, LineRef::Offset(_)) => Some(chip_path(&self.default_chip)),
            // A name without a chip is searched on every chip.
            (None, LineRef::Name(_)) => None,
        }
    }

    pub fn output_settings(&self, c: &OutputConfig) -> Option<LineSettings> {
        let line = c.line.clone()?;
        Some(LineSettings {
            name: c.name.clone(),
            chip: self.chip_for(&c.chip, &line),
            line,
            active_low: c.active_low,
            output: Some(c.initial),
            bias: None,
            debounce: None,
        })
    }

    pub fn input_settings(&self, c: &InputConfig) -> LineSettings {
        LineSettings {
            name: c.name.clone(),
            chip: self.chip_for(&c.chip, &c.line),
            line: c.line.clone(),
            active_low: c.active_low,
            output: None,
            bias: match c.bias {
                Bias::AsIs => None,
                Bias::Disabled => Some(gpiocdev::line::Bias::Disabled),
                Bias::PullUp => Some(gpiocdev::line::Bias::PullUp),
                Bias::PullDown => Some(gpiocdev::line::Bias::PullDown),
            },
            debounce: (c.debounce_ms > 0).then(|| Duration::from_millis(u64::from(c.debounce_ms))),
        }
    }

    fn request(&self, s: &LineSettings) -> Result<gpiocdev::Request, GpioError> {
        let (chip, offset) = resolve(s)?;
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(&chip)
            .with_consumer(CONSUMER)
            .with_line(offset);
        if s.active_low {
            builder.as_active_low();
        }
        match s.output {
            Some(initial) => {
                builder.as_output(level(initial));
            }
            None => {
                builder
                    .as_input()
                    .with_edge_detection(gpiocdev::line::EdgeDetection::BothEdges);
                builder.with_bias(s.bias);
                if let Some(period) = s.debounce {
                    builder.with_debounce_period(period);
                }
            }
        }
        builder
            .request()
            .map_err(|err| request_error(s, &chip, err))
    }
}

fn level(v: bool) -> Value {
    if v { Value::Active } else { Value::Inactive }
}

/// Finds the chip and offset of a line, with errors a person can act on.
fn resolve(s: &LineSettings) -> Result<(PathBuf, u32), GpioError> {
    if let Some(chip) = &s.chip
        && !chip.exists()
    {
        return Err(GpioError::ChipMissing {
            chip: chip.display().to_string(),
            hint: format!(
                "'{}' needs it; list the chips with `ls /dev/gpiochip*`, or use the simulated backend ([gpio] backend = \"simulated\")",
                s.name
            ),
        });
    }
    match (&s.line, &s.chip) {
        (LineRef::Offset(o), Some(chip)) => Ok((chip.clone(), *o)),
        (LineRef::Name(n), Some(chip)) => {
            let c = gpiocdev::Chip::from_path(chip).map_err(|e| GpioError::Request {
                name: s.name.clone(),
                line: format!("'{n}'"),
                message: format!("cannot open {}: {e}", chip.display()),
            })?;
            let info = c.info().map_err(|e| GpioError::Request {
                name: s.name.clone(),
                line: n.clone(),
                message: e.to_string(),
            })?;
            for offset in 0..info.num_lines {
                if let Ok(li) = c.line_info(offset)
                    && li.name == *n
                {
                    return Ok((chip.clone(), offset));
                }
            }
            Err(GpioError::LineNotFound {
                name: s.name.clone(),
                line: n.clone(),
            })
        }
        (LineRef::Name(n), None) => match gpiocdev::find_named_line(n) {
            Some(found) => Ok((found.chip, found.info.offset)),
            None => {
                let any_chip = std::fs::read_dir("/dev")
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().starts_with("gpiochip"))
                    })
                    .unwrap_or(false);
                if any_chip {
                    Err(GpioError::LineNotFound {
                        name: s.name.clone(),
                        line: n.clone(),
                    })
                } else {
                    Err(GpioError::ChipMissing {
                        chip: "/dev/gpiochip*".into(),
                        hint: format!(
                            "no GPIO chip on this machine, so line '{n}' for '{}' cannot be found; use the simulated backend ([gpio] backend = \"simulated\") off the board",
                            s.name
                        ),
                    })
                }
            }
        },
        (LineRef::Offset(_), None) => unreachable_offset(s),
    }
}

// chip_for always supplies a chip for offsets; kept as an error rather than a panic.
fn unreachable_offset(s: &LineSettings) -> Result<(PathBuf, u32), GpioError> {
    Err(GpioError::Request {
        name: s.name.clone(),
        line: s.line.to_string(),
        message: "a line offset needs a chip".into(),
    })
}

fn request_error(s: &LineSettings, chip: &std::path::Path, err: gpiocdev::Error) -> GpioError {
    let text = err.to_string();
    if text.contains("busy") || text.contains("EBUSY") {
        GpioError::Busy {
            name: s.name.clone(),
            chip: chip.display().to_string(),
            line: s.line.to_string(),
        }
    } else {
        GpioError::Request {
            name: s.name.clone(),
            line: format!("{} on {}", s.line, chip.display()),
            message: if text.contains("ermission") {
                format!("{text} (add the user to the 'gpio' group)")
            } else {
                text
            },
        }
    }
}

struct LinuxOutput {
    request: gpiocdev::Request,
    name: String,
}

impl OutputLine for LinuxOutput {
    fn set(&mut self, value: bool) -> Result<(), GpioError> {
        self.request
            .set_lone_value(level(value))
            .map_err(|e| GpioError::Request {
                name: self.name.clone(),
                line: self.name.clone(),
                message: format!("cannot set the line: {e}"),
            })
    }

    fn get(&mut self) -> Result<bool, GpioError> {
        self.request
            .lone_value()
            .map(|v| v == Value::Active)
            .map_err(|e| GpioError::Request {
                name: self.name.clone(),
                line: self.name.clone(),
                message: format!("cannot read the line back: {e}"),
            })
    }
}

struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Gpio for LinuxGpio {
    fn request_output(&self, config: &OutputConfig) -> Result<Box<dyn OutputLine>, GpioError> {
        let settings = self
            .output_settings(config)
            .ok_or_else(|| GpioError::Request {
                name: config.name.clone(),
                line: "(none)".into(),
                message: "a virtual output has no line".into(),
            })?;
        let request = self.request(&settings)?;
        Ok(Box::new(LinuxOutput {
            request,
            name: config.name.clone(),
        }))
    }

    fn request_input(&self, config: &InputConfig) -> Result<InputLine, GpioError> {
        let settings = self.input_settings(config);
        let request = self.request(&settings)?;
        let initial = request
            .lone_value()
            .map(|v| v == Value::Active)
            .unwrap_or(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let name = config.name.clone();
        let request = gpiocdev::tokio::AsyncRequest::new(request);
        let task = tokio::spawn(async move {
            loop {
                match request.read_edge_event().await {
                    Ok(ev) => {
                        let value = ev.kind == EdgeKind::Rising;
                        if tx.send(InputEdge::new(value)).is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::error!(input = %name, %err, "reading GPIO edge events failed; this input stops reporting");
                        return;
                    }
                }
            }
        });
        Ok(InputLine {
            initial,
            edges: rx,
            guard: Box::new(TaskGuard(task)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::payload::ValueType;

    #[test]
    fn config_maps_to_requests() {
        let gpio = LinuxGpio::new("gpiochip0");
        let out = OutputConfig {
            name: "led".into(),
            line: Some(LineRef::Offset(17)),
            chip: None,
            active_low: true,
            initial: true,
            value_type: ValueType::Bool,
        };
        let s = gpio.output_settings(&out).unwrap();
        assert_eq!(s.chip, Some(PathBuf::from("/dev/gpiochip0")));
        assert_eq!(
            (s.active_low, s.output, s.bias, s.debounce),
            (true, Some(true), None, None)
        );
        let virtual_out = OutputConfig { line: None, ..out };
        assert!(gpio.output_settings(&virtual_out).is_none());

        let inp = InputConfig {
            name: "button".into(),
            line: LineRef::Name("GPIO22".into()),
            chip: None,
            bias: Bias::PullUp,
            debounce_ms: 20,
            active_low: true,
        };
        let s = gpio.input_settings(&inp);
        assert_eq!(s.chip, None, "names are searched on every chip");
        assert_eq!(s.bias, Some(gpiocdev::line::Bias::PullUp));
        assert_eq!(s.debounce, Some(Duration::from_millis(20)));
        assert_eq!(s.output, None);
        let s = gpio.input_settings(&InputConfig {
            chip: Some("/dev/gpiochip4".into()),
            debounce_ms: 0,
            bias: Bias::AsIs,
            ..inp
        });
        assert_eq!(s.chip, Some(PathBuf::from("/dev/gpiochip4")));
        assert_eq!((s.bias, s.debounce), (None, None));
    }

    #[tokio::test]
    async fn missing_chip_is_a_clear_error() {
        let gpio = LinuxGpio::new("/nonexistent/gpiochip9");
        let out = OutputConfig {
            name: "led".into(),
            line: Some(LineRef::Offset(1)),
            chip: None,
            active_low: false,
            initial: false,
            value_type: ValueType::Bool,
        };
        let err = gpio.request_output(&out).err().expect("no such chip");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/gpiochip9") && msg.contains("'led'"),
            "{msg}"
        );
        assert!(matches!(err, GpioError::ChipMissing { .. }));
        if !std::path::Path::new("/dev/gpiochip0").exists() {
            let inp = InputConfig {
                name: "button".into(),
                line: LineRef::Name("GPIO22".into()),
                chip: None,
                bias: Bias::AsIs,
                debounce_ms: 0,
                active_low: false,
            };
            let msg = LinuxGpio::new("gpiochip0")
                .request_input(&inp)
                .err()
                .expect("no chips")
                .to_string();
            assert!(msg.contains("GPIO22") && msg.contains("simulated"), "{msg}");
        }
    }
}
