//! The JSON payloads of the topic convention (docs/topics.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `devices/{id}/status`: plain text, not JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Online,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => crate::topics::ONLINE,
            Status::Offline => crate::topics::OFFLINE,
        }
    }

    /// Parses a status payload; surrounding whitespace is ignored.
    pub fn parse(payload: &[u8]) -> Option<Status> {
        match std::str::from_utf8(payload).ok()?.trim() {
            crate::topics::ONLINE => Some(Status::Online),
            crate::topics::OFFLINE => Some(Status::Offline),
            _ => None,
        }
    }
}

/// The type of an output's or input's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Bool,
    Number,
}

/// A value did not have its declared type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a {expected} value, got {got}")]
pub struct TypeMismatch {
    pub expected: ValueType,
    pub got: &'static str,
}

impl std::fmt::Display for ValueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ValueType::Bool => "bool",
            ValueType::Number => "number",
        })
    }
}

impl ValueType {
    /// Checks that `value` has this type (`true`/`false` for bool; a finite JSON number for number).
    pub fn check(self, value: &Value) -> Result<(), TypeMismatch> {
        let ok = match self {
            ValueType::Bool => value.is_boolean(),
            ValueType::Number => value.as_f64().is_some_and(f64::is_finite),
        };
        if ok {
            Ok(())
        } else {
            Err(TypeMismatch {
                expected: self,
                got: json_kind(value),
            })
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An output or input declared in [`Meta`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    #[serde(rename = "type")]
    pub value_type: ValueType,
}

/// A sensor declared in [`Meta`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    pub name: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
}

/// `devices/{id}/meta`: the device's self-description (retained).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub agent: String,
    #[serde(default)]
    pub outputs: Vec<Port>,
    #[serde(default)]
    pub inputs: Vec<Port>,
    #[serde(default)]
    pub sensors: Vec<Sensor>,
}

impl Meta {
    pub fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn sensor(&self, name: &str) -> Option<&Sensor> {
        self.sensors.iter().find(|s| s.name == name)
    }

    /// Checks that a command for output `name` with `value` may be applied: the output is
    /// declared and the value has its type. The error is the message to put in the [`Ack`].
    pub fn check_command(&self, name: &str, value: &Value) -> Result<(), String> {
        let port = self
            .output(name)
            .ok_or_else(|| format!("unknown output '{name}'"))?;
        port.value_type
            .check(value)
            .map_err(|e| format!("output '{name}': {e}"))
    }
}

/// `devices/{id}/state/{name}`: a value reported by the device (retained).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    pub value: Value,
    pub ts: i64,
    /// The command that caused this state, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
}

/// `devices/{id}/set/{name}`: a command or desired value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub value: Value,
    /// Command id; the device answers on `ack` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `devices/{id}/ack`: the answer to a command that carried an id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub id: String,
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Direction of an input change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    Rising,
    Falling,
}

/// `devices/{id}/event/{input}`: an input edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The agent's per-device sequence number.
    pub id: u64,
    pub ts: i64,
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<Edge>,
}

/// `devices/{id}/telemetry/{sensor}`: a reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The agent's per-device sequence number.
    pub id: u64,
    pub ts: i64,
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn value_types() {
        assert!(ValueType::Bool.check(&json!(true)).is_ok());
        assert!(ValueType::Bool.check(&json!(1)).is_err());
        assert!(ValueType::Number.check(&json!(1.5)).is_ok());
        assert!(ValueType::Number.check(&json!(-3)).is_ok());
        assert!(ValueType::Number.check(&json!("1")).is_err());
        assert!(ValueType::Number.check(&json!(null)).is_err());
        let err = ValueType::Bool.check(&json!("on")).unwrap_err();
        assert_eq!(err.to_string(), "expected a bool value, got a string");
    }

    #[test]
    fn meta_parses_the_documented_example() {
        let meta: Meta = serde_json::from_value(json!({
            "agent": "devicecloud-agent/0.0.0",
            "outputs": [{"name": "led", "type": "bool"}],
            "inputs": [{"name": "button", "type": "bool"}],
            "sensors": [{"name": "temperature", "unit": "°C", "interval_ms": 5000}]
        }))
        .unwrap();
        assert_eq!(meta.output("led").unwrap().value_type, ValueType::Bool);
        assert_eq!(meta.sensor("temperature").unwrap().interval_ms, Some(5000));
        assert!(meta.check_command("led", &json!(true)).is_ok());
        assert_eq!(
            meta.check_command("led", &json!(2)).unwrap_err(),
            "output 'led': expected a bool value, got a number"
        );
        assert_eq!(
            meta.check_command("fan", &json!(true)).unwrap_err(),
            "unknown output 'fan'"
        );
        assert!(
            meta.check_command("button", &json!(true)).is_err(),
            "inputs are not commandable"
        );
        // A minimal meta is fine too.
        let empty: Meta = serde_json::from_str("{}").unwrap();
        assert!(empty.outputs.is_empty());
    }

    #[test]
    fn payloads_serialize_without_absent_fields() {
        let cmd = Command {
            value: json!(true),
            id: None,
        };
        assert_eq!(serde_json::to_string(&cmd).unwrap(), r#"{"value":true}"#);
        let ack = Ack {
            id: "c1".into(),
            name: "led".into(),
            ok: false,
            value: None,
            error: Some("x".into()),
        };
        assert_eq!(
            serde_json::to_value(&ack).unwrap(),
            json!({"id":"c1","name":"led","ok":false,"error":"x"})
        );
        let state: StateReport =
            serde_json::from_str(r#"{"value":true,"ts":5,"cmd":"c1"}"#).unwrap();
        assert_eq!(state.cmd.as_deref(), Some("c1"));
        let r: Reading =
            serde_json::from_str(r#"{"id":7,"ts":1700000000000,"value":21.5}"#).unwrap();
        assert_eq!(r.value, 21.5);
        let e: Event =
            serde_json::from_str(r#"{"id":1,"ts":2,"value":true,"edge":"rising"}"#).unwrap();
        assert_eq!(e.edge, Some(Edge::Rising));
    }

    #[test]
    fn status_payloads() {
        assert_eq!(Status::parse(b"online"), Some(Status::Online));
        assert_eq!(Status::parse(b"offline\n"), Some(Status::Offline));
        assert_eq!(Status::parse(b"maybe"), None);
        assert_eq!(Status::parse(&[0xff]), None);
    }
}
