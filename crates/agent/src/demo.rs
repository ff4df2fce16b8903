//! The demo device used by `devicecloud agent --simulate` and `devicecloud up`: an LED, a
//! button and a drifting temperature, on simulated GPIO.

use std::path::PathBuf;

use crate::config::AgentConfig;

/// The demo configuration as TOML (also a starting point for a real `agent.toml`).
pub const DEMO_TOML: &str = r#"# The devicecloud demo device: an LED, a button and a temperature sensor, simulated.
[gpio]
backend = "simulated"

[[output]]
name = "led"
line = "GPIO17"
initial = false

[[input]]
name = "button"
line = "GPIO27"
bias = "pull-up"
debounce_ms = 10

[[sensor]]
name = "temperature"
kind = "simulated"
unit = "°C"
interval_ms = 5000
"#;

/// The demo configuration with its state in `data_dir`.
pub fn demo_config(data_dir: PathBuf) -> AgentConfig {
    // DEMO_TOML is a constant checked by the test below.
    let mut config = AgentConfig::parse(DEMO_TOML, "demo config").unwrap_or_default();
    config.data_dir = data_dir;
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GpioBackend;

    #[test]
    fn demo_config_is_valid() {
        AgentConfig::parse(DEMO_TOML, "demo").unwrap();
        let c = demo_config("/tmp/demo".into());
        assert_eq!(c.gpio.backend, GpioBackend::Simulated);
        assert_eq!(c.outputs[0].name, "led");
        assert_eq!(c.inputs[0].name, "button");
        assert_eq!(c.sensors[0].name, "temperature");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/demo"));
    }
}
