//! The server's configuration: `DATA/server.toml` (or `--config FILE`), every key optional.
//!
//! Defaults are secure: MQTT over TLS and HTTPS on all interfaces, plain MQTT on loopback only.
//! A plain-text listener beyond loopback needs `allow_insecure_listeners = true`, and even then
//! every start logs a warning.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The file name looked up in the data directory when no `--config` is given.
pub const CONFIG_FILE_NAME: &str = "server.toml";

/// Default listeners: TLS everywhere, plain MQTT for local apps on loopback.
pub const DEFAULT_LISTENERS: [&str; 3] = [
    "mqtts://0.0.0.0:8883",
    "https://0.0.0.0:8443",
    "mqtt://127.0.0.1:1883",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}, line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Listener(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// DNS names the server certificate is issued for. Empty: this machine's hostname and `localhost`.
    pub hostnames: Vec<String>,
    /// IP addresses the server certificate is issued for. Empty: loopback and every interface address.
    pub ip_addresses: Vec<IpAddr>,
    /// Listener URLs: `mqtt://`, `mqtts://`, `ws://`, `wss://` for the broker; `http://`, `https://` for the web tier.
    pub listeners: Vec<String>,
    /// Must be set to allow a plain-text (`mqtt://`, `ws://`, `http://`) listener beyond loopback.
    pub allow_insecure_listeners: bool,
    /// Public URLs put into device bundles, e.g. `mqtts://iot.example.com:8883`. Empty: derived from the listeners.
    pub public_broker_urls: Vec<String>,
    /// Public URL of the web tier put into bundles and enrollment lines. Empty: derived from the listeners.
    pub public_api_url: Option<String>,
    /// Database URL (`sqlite://...` or `postgres://...`). Empty: `devicecloud.db` in the data directory.
    pub database_url: Option<String>,
    pub certificates: CertificateConfig,
    pub telemetry: TelemetryConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub web: WebConfig,
    pub bus: BusConfig,
}

/// Queues between the broker and the server's own components (twin, ingest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Messages one device may have waiting per component subscription; beyond it that
    /// device's new messages are dropped (and counted), not other devices'.
    pub per_device_queue: usize,
    /// Messages all devices together may have waiting per component subscription.
    pub total_queue: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            per_device_queue: crate::bus::DEFAULT_PER_DEVICE_QUEUE,
            total_queue: crate::bus::DEFAULT_TOTAL_QUEUE,
        }
    }
}

/// Limits of the web tier (API, dashboard, `/mqtt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// HTTP connections open at once (each costs a task and buffers); beyond it new
    /// connections are closed at once and counted.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (slowloris).
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    pub body_read_timeout_secs: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            max_connections: 1024,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateConfig {
    /// Lifetime of the server's TLS certificate.
    pub server_days: u32,
    /// Lifetime of device client certificates.
    pub device_days: u32,
    /// Renew the server certificate this many days before it expires.
    pub renew_before_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Telemetry older than this is deleted.
    pub retention_days: u32,
    /// Readings stamped further than this into the future are refused and counted.
    pub max_future_secs: u64,
    /// Readings stamped before this (milliseconds since the Unix epoch; default 2000-01-01)
    /// are refused and counted: a device whose clock is unset sends 1970.
    pub min_timestamp_ms: i64,
    /// Distinct sensors per device (each is a series in the database and an entry in memory);
    /// readings of further sensors are refused and counted.
    pub max_sensors_per_device: usize,
    /// Distinct reported state names (`state/NAME`) the twin keeps per device; further names
    /// are refused and counted.
    pub max_state_names_per_device: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Failed CONNECTs from one address before it is refused for a while.
    pub failures_before_backoff: u32,
    /// The first refusal window; it doubles with every further failure.
    pub backoff_initial_ms: u64,
    /// The longest refusal window.
    pub backoff_max_secs: u64,
    /// Failures are forgotten after this long without a new one.
    pub failure_memory_secs: u64,
    /// Addresses and accounts remembered at most (memory bound).
    pub max_tracked_addresses: usize,
    /// Failed dashboard logins or enrollment codes from one address (or for one account)
    /// before it is refused (429) for a while; the window starts at 5 s and doubles up to 5 min.
    pub web_failures_before_backoff: u32,
    /// Password checks (argon2, about 19 MiB each) running at once, for MQTT and dashboard
    /// logins together. Default: half the CPU cores, at least 1 and at most 4, so that a login
    /// flood never takes all the CPU the broker needs.
    pub max_concurrent_password_checks: usize,
    /// Password checks waiting for a slot; beyond this a login is refused at once (HTTP 503,
    /// MQTT 0x89 Server busy).
    pub max_queued_password_checks: usize,
    /// Role given to MQTT clients that present no credentials at all, from loopback only
    /// (beyond loopback also needs `allow_insecure_listeners`). Unset: no anonymous clients.
    pub anonymous_role: Option<proto::acl::Role>,
}

/// Broker limits; unset keys use the broker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_connections: Option<usize>,
    pub max_packet_size: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub max_queued_messages: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub max_keepalive: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub max_session_expiry: Option<u32>,
    pub max_topic_levels: Option<usize>,
    pub max_topic_length: Option<usize>,
    pub max_sessions_per_principal: Option<usize>,
    pub max_retained_per_principal: Option<usize>,
    pub max_retained_bytes_per_principal: Option<usize>,
    pub max_connect_size: Option<u32>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostnames: Vec::new(),
            ip_addresses: Vec::new(),
            listeners: DEFAULT_LISTENERS.iter().map(|s| s.to_string()).collect(),
            allow_insecure_listeners: false,
            public_broker_urls: Vec::new(),
            public_api_url: None,
            database_url: None,
            certificates: CertificateConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            web: WebConfig::default(),
            bus: BusConfig::default(),
        }
    }
}

impl Default for CertificateConfig {
    fn default() -> Self {
        CertificateConfig {
            server_days: 365,
            device_days: 3650,
            renew_before_days: 30,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            retention_days: 30,
            max_future_secs: 24 * 3600,
            min_timestamp_ms: 946_684_800_000,
            max_sensors_per_device: 64,
            max_state_names_per_device: 256,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            failures_before_backoff: 5,
            backoff_initial_ms: 1000,
            backoff_max_secs: 300,
            failure_memory_secs: 900,
            max_tracked_addresses: 10_000,
            web_failures_before_backoff: 5,
            max_concurrent_password_checks: std::thread::available_parallelism()
                .map_or(1, |n| n.get().div_ceil(2))
                .clamp(1, 4),
            max_queued_password_checks: 32,
            anonymous_role: None,
        }
    }
}

impl CertificateConfig {
    pub fn renew_before(&self) -> Duration {
        Duration::from_secs(u64::from(self.renew_before_days) * 86_400)
    }
}

impl ServerConfig {
    /// Reads `path`; a missing file is an error (use [`ServerConfig::load_or_default`] for the data dir).
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        ServerConfig::parse(&text, path)
    }

    /// Reads `path` if it exists, otherwise the defaults.
    pub fn load_or_default(path: &Path) -> Result<ServerConfig, ConfigError> {
        match std::fs::metadata(path) {
            Ok(_) => ServerConfig::load(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ServerConfig::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<ServerConfig, ConfigError> {
        let config: ServerConfig = toml::from_str(text).map_err(|err| {
            let location = fsutil::toml_location(text, &err);
            ConfigError::Parse {
                path: path.to_owned(),
                line: location.line.unwrap_or(1),
                message: match location.qualified_key() {
                    Some(key) => format!("key `{key}`: {}", location.message),
                    None => location.message,
                },
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        for url in &self.listeners {
            Listener::from_str(url).map_err(|e| format!("key `listeners`: {e}"))?;
        }
        let certs = &self.certificates;
        if certs.server_days == 0 || certs.device_days == 0 {
            return Err(
                "keys `certificates.server_days` and `certificates.device_days` must be at least 1"
                    .into(),
            );
        }
        if certs.renew_before_days >= certs.server_days {
            return Err(format!(
                "key `certificates.renew_before_days` ({}) must be less than `certificates.server_days` ({}), \
                 or the certificate would be renewed at every check",
                certs.renew_before_days, certs.server_days
            ));
        }
        if self.telemetry.retention_days == 0 {
            return Err("key `telemetry.retention_days` must be at least 1".into());
        }
        if self.auth.max_tracked_addresses == 0 {
            return Err("key `auth.max_tracked_addresses` must be at least 1".into());
        }
        Ok(())
    }

    /// The listeners to open: `overrides` (from `--listen`) replace the configured ones when given.
    /// Refuses plain-text listeners beyond loopback unless `allow_insecure_listeners` is set.
    pub fn effective_listeners(&self, overrides: &[String]) -> Result<Vec<Listener>, ConfigError> {
        let urls = if overrides.is_empty() {
            &self.listeners
        } else {
            overrides
        };
        let mut listeners = Vec::with_capacity(urls.len());
        for url in urls {
            let listener = Listener::from_str(url).map_err(ConfigError::Listener)?;
            if !listener.kind.is_tls() && !listener.addr.ip().is_loopback() {
                if !self.allow_insecure_listeners {
                    return Err(ConfigError::Listener(format!(
                        "refusing to open the plain-text listener {url} beyond loopback: anyone on the network \
                         could read and forge traffic. Use {} instead, bind it to 127.0.0.1, or set \
                         `allow_insecure_listeners = true` in the server config if you really mean it",
                        listener.kind.tls_counterpart()
                    )));
                }
                tracing::warn!(listener = %url, "plain-text listener beyond loopback (allow_insecure_listeners = true): traffic is not encrypted");
            }
            listeners.push(listener);
        }
        if listeners.is_empty() {
            return Err(ConfigError::Listener(
                "no listeners configured: add at least one, e.g. mqtts://0.0.0.0:8883".into(),
            ));
        }
        Ok(listeners)
    }

    /// DNS names for the server certificate (configured, or hostname + `localhost`).
    pub fn cert_hostnames(&self) -> Vec<String> {
        if !self.hostnames.is_empty() {
            return dedup(self.hostnames.clone());
        }
        let mut names = Vec::new();
        // A machine name that is not a valid DNS name (underscores, spaces) cannot go into a
        // certificate; leave it out rather than fail the start.
        if let Ok(name) = hostname::get()
            && let Some(name) = name.to_str()
            && pki::is_dns_name(name)
        {
            names.push(name.to_owned());
        }
        names.push("localhost".to_owned());
        dedup(names)
    }

    /// IP addresses for the server certificate (configured, or loopback + interface addresses).
    pub fn cert_ip_addresses(&self) -> Vec<IpAddr> {
        if !self.ip_addresses.is_empty() {
            return dedup(self.ip_addresses.clone());
        }
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        if let Ok(interfaces) = if_addrs::get_if_addrs() {
            // Link-local v6 addresses need a zone id to be useful; leave them out.
            ips.extend(interfaces.iter().map(|i| i.ip()).filter(|ip| match ip {
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                IpAddr::V4(_) => true,
            }));
        }
        dedup(ips)
    }

    /// The database URL: configured, or a SQLite file in the data directory.
    pub fn database_url(&self, data_dir: &Path) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => data_dir.join("devicecloud.db").display().to_string(),
        }
    }

    /// A config file with every default commented out, for `devicecloud server --print-config`.
    pub fn default_file_text(broker_limits: &LimitsConfig) -> String {
        let d = ServerConfig::default();
        let probe = ServerConfig::default();
        let hostnames = toml_list(probe.cert_hostnames().iter().map(|h| format!("{h:?}")));
        let ips = toml_list(
            probe
                .cert_ip_addresses()
                .iter()
                .map(|ip| format!("\"{ip}\"")),
        );
        let listeners = toml_list(d.listeners.iter().map(|l| format!("{l:?}")));
        let c = &d.certificates;
        let a = &d.auth;
        let mut out = String::new();
        let _ = write!(
            out,
            "# devicecloud server configuration ({CONFIG_FILE_NAME} in the data directory, or --config FILE).
# Every setting is optional; each is shown here with its default, commented out.

# Names and addresses the server's TLS certificate is issued for. The defaults are this
# machine's hostname, localhost, loopback and every interface address (computed at each start;
# the certificate is reissued when they change).
# hostnames = {hostnames}
# ip_addresses = {ips}

# Where to listen. Broker: mqtt://, mqtts://, ws://, wss:// (ws paths, e.g. ws://127.0.0.1:8080/mqtt).
# Web tier (API and dashboard): https://, http://. `--listen URL` flags replace this list.
# listeners = {listeners}

# Plain-text listeners (mqtt://, ws://, http://) beyond loopback are refused unless this is true;
# when it is, every start logs a warning.
# allow_insecure_listeners = false

# URLs written into device bundles and enrollment commands. Default: derived from the listeners
# and the first hostname.
# public_broker_urls = [\"mqtts://iot.example.com:8883\"]
# public_api_url = \"https://iot.example.com:8443\"

# Database: a SQLite file in the data directory by default; PostgreSQL also works.
# database_url = \"postgres://devicecloud@localhost/devicecloud\"

[certificates]
# server_days = {}
# device_days = {}
# renew_before_days = {}

[telemetry]
# retention_days = {}
# Readings stamped more than this far in the future, or before min_timestamp_ms (2000-01-01),
# are refused and counted.
# max_future_secs = {}
# min_timestamp_ms = {}
# Distinct sensors and reported state names kept per device; more are refused and counted.
# max_sensors_per_device = {}
# max_state_names_per_device = {}

# Per-address and per-account backoff for failed MQTT logins.
[auth]
# failures_before_backoff = {}
# backoff_initial_ms = {}
# backoff_max_secs = {}
# failure_memory_secs = {}
# max_tracked_addresses = {}
# Failed dashboard logins / enrollment codes before an address or account gets 429.
# web_failures_before_backoff = {}
# Password checks (argon2, ~19 MiB each) at once, MQTT and dashboard together, and how many
# may wait; beyond that logins get HTTP 503 / MQTT 0x89 Server busy.
# max_concurrent_password_checks = {}
# max_queued_password_checks = {}
# Let MQTT clients without credentials in, from loopback only, with this role (viewer,
# operator or admin); a warning is logged at every start. Unset: nobody gets in anonymously.
# anonymous_role = \"viewer\"

# Web tier: HTTP connections at once, and seconds to send headers and a body (slowloris).
[web]
# max_connections = {}
# header_read_timeout_secs = {}
# body_read_timeout_secs = {}

# Queues between the broker and the server's own components (twin, ingest), served
# round-robin per device: a device over its share loses its own messages, not others'.
[bus]
# per_device_queue = {}
# total_queue = {}

# Broker limits.
[limits]
",
            c.server_days,
            c.device_days,
            c.renew_before_days,
            d.telemetry.retention_days,
            d.telemetry.max_future_secs,
            d.telemetry.min_timestamp_ms,
            d.telemetry.max_sensors_per_device,
            d.telemetry.max_state_names_per_device,
            a.failures_before_backoff,
            a.backoff_initial_ms,
            a.backoff_max_secs,
            a.failure_memory_secs,
            a.max_tracked_addresses,
            a.web_failures_before_backoff,
            a.max_concurrent_password_checks,
            a.max_queued_password_checks,
            d.web.max_connections,
            d.web.header_read_timeout_secs,
            d.web.body_read_timeout_secs,
            d.bus.per_device_queue,
            d.bus.total_queue,
        );
        let l = broker_limits;
        let mut limit = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "# {key} = {value}");
            }
        };
        limit("max_connections", l.max_connections.map(|v| v.to_string()));
        limit("max_packet_size", l.max_packet_size.map(|v| v.to_string()));
        limit("receive_maximum", l.receive_maximum.map(|v| v.to_string()));
        limit(
            "max_queued_messages",
            l.max_queued_messages.map(|v| v.to_string()),
        );
        limit(
            "max_queued_bytes",
            l.max_queued_bytes.map(|v| v.to_string()),
        );
        limit(
            "connect_timeout_secs",
            l.connect_timeout_secs.map(|v| v.to_string()),
        );
        limit("max_keepalive", l.max_keepalive.map(|v| v.to_string()));
        limit(
            "topic_alias_maximum",
            l.topic_alias_maximum.map(|v| v.to_string()),
        );
        limit(
            "max_session_expiry",
            l.max_session_expiry.map(|v| v.to_string()),
        );
        limit(
            "max_topic_levels",
            l.max_topic_levels.map(|v| v.to_string()),
        );
        limit(
            "max_topic_length",
            l.max_topic_length.map(|v| v.to_string()),
        );
        limit(
            "max_sessions_per_principal",
            l.max_sessions_per_principal.map(|v| v.to_string()),
        );
        limit(
            "max_retained_per_principal",
            l.max_retained_per_principal.map(|v| v.to_string()),
        );
        limit(
            "max_retained_bytes_per_principal",
            l.max_retained_bytes_per_principal.map(|v| v.to_string()),
        );
        limit(
            "max_connect_size",
            l.max_connect_size.map(|v| v.to_string()),
        );
        out
    }
}

fn toml_list(items: impl Iterator<Item = String>) -> String {
    format!("[{}]", items.collect::<Vec<_>>().join(", "))
}

fn dedup<T: PartialEq>(items: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// What a listener URL serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Mqtt,
    Mqtts,
    Ws,
    Wss,
    Http,
    Https,
}

impl ListenerKind {
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            ListenerKind::Mqtts | ListenerKind::Wss | ListenerKind::Https
        )
    }

    /// Broker listeners (MQTT, MQTT over WebSocket) as opposed to the web tier.
    pub fn is_broker(self) -> bool {
        !matches!(self, ListenerKind::Http | ListenerKind::Https)
    }

    pub fn scheme(self) -> &'static str {
        match self {
            ListenerKind::Mqtt => "mqtt",
            ListenerKind::Mqtts => "mqtts",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
            ListenerKind::Http => "http",
            ListenerKind::Https => "https",
        }
    }

    fn tls_counterpart(self) -> &'static str {
        match self {
            ListenerKind::Mqtt | ListenerKind::Mqtts => "mqtts://",
            ListenerKind::Ws | ListenerKind::Wss => "wss://",
            ListenerKind::Http | ListenerKind::Https => "https://",
        }
    }
}

/// One parsed listener URL such as `mqtts://0.0.0.0:8883` or `ws://127.0.0.1:8080/mqtt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// The WebSocket path for `ws://` and `wss://` (default `/mqtt`).
    pub path: Option<String>,
}

impl Listener {
    /// The URL with `addr` replaced (e.g. by the actually bound port-0 address).
    pub fn url_with_addr(&self, addr: SocketAddr) -> String {
        format!(
            "{}://{}{}",
            self.kind.scheme(),
            addr,
            self.path.as_deref().unwrap_or("")
        )
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url_with_addr(self.addr))
    }
}

impl FromStr for Listener {
    type Err = String;

    fn from_str(url: &str) -> Result<Listener, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("listener {url:?} is not a URL: write it like mqtts://0.0.0.0:8883 or https://0.0.0.0:8443")
        })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "mqtt" | "tcp" => ListenerKind::Mqtt,
            "mqtts" | "ssl" | "tls" => ListenerKind::Mqtts,
            "ws" => ListenerKind::Ws,
            "wss" => ListenerKind::Wss,
            "http" => ListenerKind::Http,
            "https" => ListenerKind::Https,
            other => {
                return Err(format!(
                    "listener {url:?}: unknown scheme {other:?}; use mqtt, mqtts, ws, wss (broker) or http, https (web)"
                ));
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
            None => (rest, None),
        };
        let addr = parse_authority(authority).ok_or_else(|| {
            format!(
                "listener {url:?}: expected IP:PORT after the scheme (e.g. 0.0.0.0:8883, 127.0.0.1:1883 or [::]:8883)"
            )
        })?;
        let path = match kind {
            ListenerKind::Ws | ListenerKind::Wss => Some(
                path.filter(|p| p != "/")
                    .unwrap_or_else(|| "/mqtt".to_owned()),
            ),
            _ => {
                if path.as_deref().is_some_and(|p| p != "/") {
                    return Err(format!(
                        "listener {url:?}: only ws:// and wss:// listeners take a path"
                    ));
                }
                None
            }
        };
        Ok(Listener { kind, addr, path })
    }
}

fn parse_authority(authority: &str) -> Option<SocketAddr> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Some(addr);
    }
    // `localhost:PORT` is common enough in docs and examples to accept.
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    host.eq_ignore_ascii_case("localhost")
        .then_some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_secure() {
        let config = ServerConfig::default();
        let listeners = config.effective_listeners(&[]).unwrap();
        assert_eq!(listeners.len(), 3);
        assert!(
            listeners
                .iter()
                .all(|l| l.kind.is_tls() || l.addr.ip().is_loopback())
        );
    }

    #[test]
    fn refuses_plain_listener_beyond_loopback() {
        let config = ServerConfig::default();
        let err = config
            .effective_listeners(&["mqtt://0.0.0.0:1883".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow_insecure_listeners"), "{err}");
        let config = ServerConfig {
            allow_insecure_listeners: true,
            ..ServerConfig::default()
        };
        assert!(
            config
                .effective_listeners(&["mqtt://0.0.0.0:1883".into()])
                .is_ok()
        );
        assert!(
            ServerConfig::default()
                .effective_listeners(&["http://[::1]:80".into()])
                .is_ok()
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let text = "hostnames = [\"a\"]\n\n[certificates]\nserver_dayz = 3\n";
        let err = ServerConfig::parse(text, Path::new("/x/server.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/x/server.toml") && err.contains("line 4") && err.contains("server_dayz"),
            "{err}"
        );
        let err = ServerConfig::parse("listeners = [\"ftp://1.2.3.4:1\"]", Path::new("s.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("unknown scheme"), "{err}");
    }

    #[test]
    fn printed_config_parses_and_uncommented_equals_defaults() {
        let text = ServerConfig::default_file_text(&LimitsConfig {
            max_connections: Some(10),
            ..Default::default()
        });
        assert_eq!(
            ServerConfig::parse(&text, Path::new("p")).unwrap(),
            ServerConfig::default()
        );
        let uncommented: String = text
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("# ").unwrap_or(l);
                if rest.contains(" = ")
                    && !rest.contains("example")
                    && !rest.starts_with("database_url")
                {
                    format!("{rest}\n")
                } else if l.starts_with('#') {
                    "\n".to_owned()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        let parsed = ServerConfig::parse(&uncommented, Path::new("p")).unwrap();
        assert_eq!(parsed.certificates, ServerConfig::default().certificates);
        assert_eq!(parsed.limits.max_connections, Some(10));
        assert_eq!(parsed.listeners, ServerConfig::default().listeners);
    }

    #[test]
    fn parses_listener_urls() {
        let l: Listener = "ws://127.0.0.1:0".parse().unwrap();
        assert_eq!(l.path.as_deref(), Some("/mqtt"));
        let l: Listener = "mqtts://[::]:8883".parse().unwrap();
        assert_eq!(l.kind, ListenerKind::Mqtts);
        assert!("mqtt://nohost".parse::<Listener>().is_err());
        assert!("https://0.0.0.0:1/x".parse::<Listener>().is_err());
    }
}
