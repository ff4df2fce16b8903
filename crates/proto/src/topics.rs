//! Builders and a parser for the topic convention in docs/topics.md.
//!
//! Every device `{id}` owns `devices/{id}/`; see [`TopicKind`] for the subtopics.

use std::fmt;

/// First level of every device topic.
pub const ROOT: &str = "devices";
/// Every device topic.
pub const ALL_DEVICES: &str = "devices/#";
/// Every device's presence.
pub const ALL_STATUS: &str = "devices/+/status";
/// Every device's self-description.
pub const ALL_META: &str = "devices/+/meta";
/// Every device's reported state.
pub const ALL_STATE: &str = "devices/+/state/+";
/// Every device's command acknowledgements.
pub const ALL_ACK: &str = "devices/+/ack";
/// Every device's input events.
pub const ALL_EVENTS: &str = "devices/+/event/+";
/// Every device's telemetry.
pub const ALL_TELEMETRY: &str = "devices/+/telemetry/+";

/// Payload of `devices/{id}/status` while connected.
pub const ONLINE: &str = "online";
/// Payload of `devices/{id}/status` after a clean disconnect or as the will.
pub const OFFLINE: &str = "offline";

/// Longest device id, in bytes. Short enough to be a certificate CN and a file name.
pub const MAX_ID_LEN: usize = 63;
/// Longest output/input/sensor name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a device id or a property name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error(
        "invalid device id '{0}': use 1 to 63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
    )]
    DeviceId(String),
    #[error(
        "invalid name '{0}': use 1 to 64 characters from A-Z, a-z, 0-9, '_', '-' and '.', starting with a letter or digit"
    )]
    Name(String),
}

/// Checks a device id: `[a-z0-9][a-z0-9_-]{0,62}`. Such an id is safe in a topic level, a
/// certificate common name, a file name and a URL path segment.
pub fn validate_device_id(id: &str) -> Result<(), NameError> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_ID_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::DeviceId(id.to_string()))
    }
}

/// Checks an output, input or sensor name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(NameError::Name(name.to_string()))
    }
}

/// `devices/{id}/status`
pub fn status(id: &str) -> String {
    format!("{ROOT}/{id}/status")
}

/// `devices/{id}/meta`
pub fn meta(id: &str) -> String {
    format!("{ROOT}/{id}/meta")
}

/// `devices/{id}/state/{name}`
pub fn state(id: &str, name: &str) -> String {
    format!("{ROOT}/{id}/state/{name}")
}

/// `devices/{id}/set/{name}`
pub fn set(id: &str, name: &str) -> String {
    format!("{ROOT}/{id}/set/{name}")
}

/// `devices/{id}/ack`
pub fn ack(id: &str) -> String {
    format!("{ROOT}/{id}/ack")
}

/// `devices/{id}/event/{input}`
pub fn event(id: &str, input: &str) -> String {
    format!("{ROOT}/{id}/event/{input}")
}

/// `devices/{id}/telemetry/{sensor}`
pub fn telemetry(id: &str, sensor: &str) -> String {
    format!("{ROOT}/{id}/telemetry/{sensor}")
}

/// `devices/{id}/#`: everything a device owns.
pub fn device_subtree(id: &str) -> String {
    format!("{ROOT}/{id}/#")
}

/// `devices/{id}/set/#`: the commands a device listens to.
pub fn device_commands(id: &str) -> String {
    format!("{ROOT}/{id}/set/#")
}

/// What a device topic is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Status,
    Meta,
    State,
    Set,
    Ack,
    Event,
    Telemetry,
}

impl TopicKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Status => "status",
            TopicKind::Meta => "meta",
            TopicKind::State => "state",
            TopicKind::Set => "set",
            TopicKind::Ack => "ack",
            TopicKind::Event => "event",
            TopicKind::Telemetry => "telemetry",
        }
    }

    /// Whether topics of this kind carry a trailing `{name}` level.
    pub fn has_name(self) -> bool {
        matches!(
            self,
            TopicKind::State | TopicKind::Set | TopicKind::Event | TopicKind::Telemetry
        )
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed device topic, borrowing from the topic string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTopic<'a> {
    pub device_id: &'a str,
    pub kind: TopicKind,
    /// The `{name}` level for state, set, event and telemetry topics.
    pub name: Option<&'a str>,
}

impl DeviceTopic<'_> {
    /// Rebuilds the topic string.
    pub fn to_topic(&self) -> String {
        match self.name {
            Some(name) => format!("{ROOT}/{}/{}/{name}", self.device_id, self.kind),
            None => format!("{ROOT}/{}/{}", self.device_id, self.kind),
        }
    }
}

/// Parses a concrete topic of the convention; `None` for anything else (other trees, invalid
/// device ids or names, wrong number of levels, wildcards).
pub fn parse(topic: &str) -> Option<DeviceTopic<'_>> {
    let mut levels = topic.split('/');
    if levels.next()? != ROOT {
        return None;
    }
    let device_id = levels.next()?;
    validate_device_id(device_id).ok()?;
    let kind = match levels.next()? {
        "status" => TopicKind::Status,
        "meta" => TopicKind::Meta,
        "state" => TopicKind::State,
        "set" => TopicKind::Set,
        "ack" => TopicKind::Ack,
        "event" => TopicKind::Event,
        "telemetry" => TopicKind::Telemetry,
        _ => return None,
    };
    let name = if kind.has_name() {
        let name = levels.next()?;
        validate_name(name).ok()?;
        Some(name)
    } else {
        None
    };
    if levels.next().is_some() {
        return None;
    }
    Some(DeviceTopic {
        device_id,
        kind,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        for ok in ["a", "kitchen", "pi-4_b", "0", &"a".repeat(63)] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "Kitchen",
            "a/b",
            "a+",
            "a#",
            "$sys",
            "a b",
            "ü",
            &"a".repeat(64),
            "a.b",
        ] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
        let msg = validate_device_id("A/B").unwrap_err().to_string();
        assert!(msg.contains("'A/B'") && msg.contains("a-z"), "{msg}");
    }

    #[test]
    fn names() {
        for ok in ["led", "LED_1", "temp.c", "x-y"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "a/b", "+", "#", "a b", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builders_round_trip_through_parse() {
        let cases = [
            (status("d1"), TopicKind::Status, None),
            (meta("d1"), TopicKind::Meta, None),
            (ack("d1"), TopicKind::Ack, None),
            (state("d1", "led"), TopicKind::State, Some("led")),
            (set("d1", "led"), TopicKind::Set, Some("led")),
            (event("d1", "button"), TopicKind::Event, Some("button")),
            (
                telemetry("d1", "temperature"),
                TopicKind::Telemetry,
                Some("temperature"),
            ),
        ];
        for (topic, kind, name) in cases {
            let parsed = parse(&topic).unwrap_or_else(|| panic!("{topic} should parse"));
            assert_eq!(
                parsed,
                DeviceTopic {
                    device_id: "d1",
                    kind,
                    name
                }
            );
            assert_eq!(parsed.to_topic(), topic);
        }
    }

    #[test]
    fn parse_rejects_foreign_and_malformed_topics() {
        for bad in [
            "",
            "devices",
            "devices/d1",
            "devices/d1/status/extra",
            "devices/d1/state",
            "devices/d1/state/led/x",
            "devices/D1/status",
            "devices/+/status",
            "devices/d1/set/#",
            "devices/d1/unknown",
            "other/d1/status",
            "$SYS/broker/uptime",
            "/devices/d1/status",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn filters() {
        assert_eq!(device_subtree("a"), "devices/a/#");
        assert_eq!(device_commands("a"), "devices/a/set/#");
    }
}
