//! The ACL rule engine for the "Who may do what" table in docs/topics.md.
//!
//! Pure and allocation-free per check, so the broker can consult it for every packet. The
//! server wraps these types into `broker::auth::Permissions`; this crate does not depend on
//! the broker.
//!
//! Wildcards are treated conservatively: a subscription filter is granted only if every topic
//! it can match is allowed, i.e. if one of the allowed filters *contains* it
//! ([`filter_contains`]).

use std::{fmt, str::FromStr};

use crate::topics;

/// The rules one principal is held to.
pub trait Acl: Send + Sync + fmt::Debug + 'static {
    /// May this principal publish to `topic` (a concrete topic, no wildcards)?
    fn may_publish(&self, topic: &str) -> bool;
    /// May this principal subscribe to `filter` (possibly with `+`/`#`, no `$share/` prefix)?
    fn may_subscribe(&self, filter: &str) -> bool;
}

/// A local user's (or API token's) role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Operators and admins may send commands.
    pub fn may_command(self) -> bool {
        self >= Role::Operator
    }

    /// Admins manage devices, users and tokens.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role '{0}': use admin, operator or viewer")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Role, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device may publish under `devices/{id}/` and subscribe to `devices/{id}/set/#`, plus
/// whatever its registry entry grants explicitly (filters, checked like everything else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePermissions {
    pub device_id: String,
    /// Extra topic filters the device may publish to.
    pub extra_publish: Vec<String>,
    /// Extra topic filters the device may subscribe to (or to anything they contain).
    pub extra_subscribe: Vec<String>,
    own_subtree: String,
    own_commands: String,
}

impl DevicePermissions {
    pub fn new(device_id: &str, extra_publish: Vec<String>, extra_subscribe: Vec<String>) -> Self {
        DevicePermissions {
            device_id: device_id.to_string(),
            extra_publish,
            extra_subscribe,
            own_subtree: topics::device_subtree(device_id),
            own_commands: topics::device_commands(device_id),
        }
    }
}

impl Acl for DevicePermissions {
    fn may_publish(&self, topic: &str) -> bool {
        is_valid_topic(topic)
            && (topic_matches(&self.own_subtree, topic)
                || self.extra_publish.iter().any(|f| topic_matches(f, topic)))
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        is_valid_filter(filter)
            && (filter_contains(&self.own_commands, filter)
                || self
                    .extra_subscribe
                    .iter()
                    .any(|f| filter_contains(f, filter)))
    }
}

/// A user's or token's permissions, from its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolePermissions {
    pub role: Role,
}

impl RolePermissions {
    pub fn new(role: Role) -> Self {
        RolePermissions { role }
    }
}

const ALL_COMMANDS: &str = "devices/+/set/#";

impl Acl for RolePermissions {
    fn may_publish(&self, topic: &str) -> bool {
        if !is_valid_topic(topic) {
            return false;
        }
        match self.role {
            Role::Viewer => false,
            Role::Operator => topic_matches(ALL_COMMANDS, topic),
            Role::Admin => true,
        }
    }

    fn may_subscribe(&self, filter: &str) -> bool {
        if !is_valid_filter(filter) {
            return false;
        }
        match self.role {
            Role::Viewer | Role::Operator => filter_contains(topics::ALL_DEVICES, filter),
            Role::Admin => true,
        }
    }
}

/// Everything: the server's own components.
#[derive(Debug, Clone, Copy, Default)]
pub struct Superuser;

impl Acl for Superuser {
    fn may_publish(&self, topic: &str) -> bool {
        is_valid_topic(topic)
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        is_valid_filter(filter)
    }
}

/// A topic name one may publish to: non-empty, no wildcards, no NUL.
pub fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A well-formed MQTT topic filter: `#` only as the last whole level, `+` only as a whole level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "#" if levels.peek().is_some() => return false,
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// Does `filter` match the concrete `topic` (MQTT semantics, including that a filter starting
/// with a wildcard does not match topics starting with `$`)?
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Does `outer` contain `inner`, i.e. is every topic `inner` can match also matched by `outer`?
/// Both must be valid filters (see [`is_valid_filter`]).
pub fn filter_contains(outer: &str, inner: &str) -> bool {
    // A leading wildcard in `outer` does not match `$` topics; `inner` may name them literally.
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            // `x/#` matches `x` and everything below it, whatever `inner` has left.
            (Some("#"), _) => return true,
            // `inner` can match any suffix here (including none) but `outer` cannot.
            (_, Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            // `inner` matches any level here, `outer` only one literal.
            (Some(_), Some("+")) => return false,
            (Some(ol), Some(il)) if ol == il => {}
            (None, None) => return true,
            // `inner` ended: only fine if `outer` ends with `/#` right here (`x/#` contains `x`).
            (Some(_), None) => return false,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DevicePermissions {
        DevicePermissions::new(id, vec![], vec![])
    }

    #[test]
    fn filter_containment_table() {
        let cases = [
            ("#", "#", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/#", "a", true),
            ("a/#", "a/#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "#", false),
            ("a/#", "+/b", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
            ("a/b/#", "a/+/#", false),
            ("+/+", "a/b", true),
            ("+/#", "a", true),
            ("devices/+/set/#", "devices/x/set/led", true),
            ("devices/+/set/#", "devices/+/set/+", true),
            ("devices/+/set/#", "devices/+/+/led", false),
        ];
        for (outer, inner, want) in cases {
            assert_eq!(
                filter_contains(outer, inner),
                want,
                "does {outer} contain {inner}?"
            );
        }
    }

    #[test]
    fn topic_matching_table() {
        let cases = [
            ("#", "a/b", true),
            ("#", "$SYS/uptime", false),
            ("+/b", "$x/b", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(
                topic_matches(filter, topic),
                want,
                "does {filter} match {topic}?"
            );
        }
    }

    #[test]
    fn filter_validity() {
        for ok in ["#", "+", "a/#", "a/+/b", "/", "+/+", "$SYS/#"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a+/b", "#/a", "a/b+", "x\0"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn device_rules() {
        let me = device("me");
        let publish = [
            ("devices/me/status", true),
            ("devices/me/state/led", true),
            ("devices/me/telemetry/t", true),
            ("devices/me/a/b/c", true),
            // `devices/me/#` matches its parent level too (MQTT semantics).
            ("devices/me", true),
            ("devices/other/status", false),
            ("devices/other/set/x", false),
            ("devices/me/+", false),
            ("devices/me/#", false),
            ("$SYS/x", false),
            ("elsewhere", false),
            ("", false),
        ];
        for (topic, want) in publish {
            assert_eq!(me.may_publish(topic), want, "device publish {topic}");
        }
        let subscribe = [
            ("devices/me/set/#", true),
            ("devices/me/set/+", true),
            ("devices/me/set/led", true),
            ("devices/me/set", true),
            ("#", false),
            ("+/#", false),
            ("devices/#", false),
            ("devices/+/status", false),
            ("devices/+/set/#", false),
            ("devices/me/#", false),
            ("devices/me/+/led", false),
            ("devices/me/status", false),
            ("devices/other/set/x", false),
            ("devices/other/set/#", false),
            ("$SYS/#", false),
            ("devices/me/set/#/x", false),
        ];
        for (filter, want) in subscribe {
            assert_eq!(me.may_subscribe(filter), want, "device subscribe {filter}");
        }
    }

    #[test]
    fn device_grants_are_filters_checked_conservatively() {
        let d = DevicePermissions::new(
            "gw",
            vec!["devices/child/#".into()],
            vec!["devices/+/status".into(), "weather/#".into()],
        );
        assert!(d.may_publish("devices/child/state/x"));
        assert!(!d.may_publish("devices/other/state/x"));
        assert!(d.may_subscribe("devices/+/status"));
        assert!(d.may_subscribe("devices/x/status"));
        assert!(d.may_subscribe("weather/+/temp"));
        assert!(!d.may_subscribe("devices/+/meta"));
        assert!(!d.may_subscribe("devices/#"));
        assert!(!d.may_subscribe("#"));
    }

    #[test]
    fn role_rules() {
        let viewer = RolePermissions::new(Role::Viewer);
        let operator = RolePermissions::new(Role::Operator);
        let admin = RolePermissions::new(Role::Admin);
        // (principal, topic, viewer, operator, admin)
        let publish = [
            ("devices/x/set/led", false, true, true),
            ("devices/x/set/a/b", false, true, true),
            ("devices/x/status", false, false, true),
            ("devices/x/state/led", false, false, true),
            // `devices/+/set/#` matches its parent level too (MQTT semantics).
            ("devices/x/set", false, true, true),
            ("other/topic", false, false, true),
            ("$SYS/x", false, false, true),
            ("devices/+/set/led", false, false, false),
        ];
        for (topic, v, o, a) in publish {
            assert_eq!(viewer.may_publish(topic), v, "viewer publish {topic}");
            assert_eq!(operator.may_publish(topic), o, "operator publish {topic}");
            assert_eq!(admin.may_publish(topic), a, "admin publish {topic}");
        }
        let subscribe = [
            ("devices/#", true, true, true),
            ("devices/+/status", true, true, true),
            ("devices/x/telemetry/+", true, true, true),
            ("devices/x/set/#", true, true, true),
            ("#", false, false, true),
            ("+/status", false, false, true),
            ("$SYS/#", false, false, true),
            ("other/#", false, false, true),
            ("devices/#/x", false, false, false),
        ];
        for (filter, v, o, a) in subscribe {
            assert_eq!(viewer.may_subscribe(filter), v, "viewer subscribe {filter}");
            assert_eq!(
                operator.may_subscribe(filter),
                o,
                "operator subscribe {filter}"
            );
            assert_eq!(admin.may_subscribe(filter), a, "admin subscribe {filter}");
        }
    }

    #[test]
    fn roles_parse_and_order() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "unknown role 'root': use admin, operator or viewer"
        );
        assert!(
            Role::Admin.may_command()
                && Role::Operator.may_command()
                && !Role::Viewer.may_command()
        );
        assert_eq!(
            serde_json::to_string(&Role::Operator).unwrap(),
            r#""operator""#
        );
    }

    #[test]
    fn superuser_allows_valid_everything() {
        assert!(Superuser.may_publish("$SYS/x"));
        assert!(Superuser.may_subscribe("#"));
        assert!(!Superuser.may_subscribe("a/#/b"));
    }
}
