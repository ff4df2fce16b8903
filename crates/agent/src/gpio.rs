//! GPIO lines behind one trait, with two backends: the Linux character device
//! ([`linux::LinuxGpio`]) and a simulation ([`sim::SimGpio`]) for tests, demos and `devicecloud up`.
//!
//! Values are logical ("active" = true): the backend applies `active_low`, so an LED wired
//! to sink current is `true` when lit either way.

pub mod linux;
pub mod sim;

use proto::payload::Edge;
use tokio::sync::mpsc;

use crate::config::{InputConfig, OutputConfig};

/// A line could not be requested or driven.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO chip {chip} does not exist: {hint}")]
    ChipMissing { chip: String, hint: String },
    #[error(
        "no GPIO line named '{line}' was found on any chip (list them with `gpioinfo`), needed by '{name}'"
    )]
    LineNotFound { name: String, line: String },
    #[error(
        "GPIO line {line} on {chip} is busy (another program or a kernel driver holds it), needed by '{name}'; stop the other user or pick another line"
    )]
    Busy {
        name: String,
        chip: String,
        line: String,
    },
    #[error("cannot use GPIO line {line} for '{name}': {message}")]
    Request {
        name: String,
        line: String,
        message: String,
    },
    #[error("'{0}' is not a line of this GPIO backend")]
    UnknownLine(String),
    #[error("'{0}' is an output; only inputs can be driven from outside")]
    NotAnInput(String),
}

/// An input changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEdge {
    pub value: bool,
    pub edge: Edge,
}

impl InputEdge {
    pub fn new(value: bool) -> InputEdge {
        InputEdge {
            value,
            edge: if value { Edge::Rising } else { Edge::Falling },
        }
    }
}

/// An output line, held until dropped.
pub trait OutputLine: Send + 'static {
    fn set(&mut self, value: bool) -> Result<(), GpioError>;
    /// Reads the line back (what the hardware says, not what was asked).
    fn get(&mut self) -> Result<bool, GpioError>;
}

/// A requested input line: its level now, and its edges from then on. The line is released
/// when this is dropped.
pub struct InputLine {
    pub initial: bool,
    pub edges: mpsc::UnboundedReceiver<InputEdge>,
    /// Keeps the backend's request alive.
    pub guard: Box<dyn Send + Sync>,
}

/// A GPIO backend.
pub trait Gpio: Send + Sync + 'static {
    fn request_output(&self, config: &OutputConfig) -> Result<Box<dyn OutputLine>, GpioError>;
    fn request_input(&self, config: &InputConfig) -> Result<InputLine, GpioError>;
    /// The simulation behind this backend, if it is one.
    fn sim(&self) -> Option<sim::SimGpio> {
        None
    }
}
