//! The devicecloud device agent: drives GPIO outputs on command, reports inputs and sensor
//! readings (through an on-disk outbox that survives outages), supervises the user's own
//! device services, and keeps the device's presence on the broker.
//!
//! Start it with [`Agent::start`]; `devicecloud up` uses [`demo::demo_config`] with a
//! [`gpio::sim::SimGpio`] and reaches the simulated lines through [`AgentHandle::sim`].

pub mod agent;
pub mod commands;
pub mod config;
pub mod demo;
pub mod enroll;
pub mod fsutil;
pub mod gpio;
pub mod install;
pub mod link;
pub mod outbox;
pub mod sensors;
pub mod status;
pub mod supervisor;

pub use agent::{Agent, AgentError, AgentHandle, gpio_for};
pub use config::AgentConfig;
pub use gpio::{Gpio, sim::SimGpio};
