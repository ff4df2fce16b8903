use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use codec::{LastWill, ProtocolVersion};

use crate::ClientError;

/// How to connect. Build with [`ClientOptions::new`] and set fields; reuse the same options to
/// reconnect.
#[derive(Clone)]
pub struct ClientOptions {
    /// `mqtt://host:port` (plain TCP, default port 1883) or `mqtts://host:port` (TLS, 8883).
    pub url: String,
    pub client_id: String,
    /// `V3_1_1` or `V5` (`V3_1` works too).
    pub version: ProtocolVersion,
    pub clean_start: bool,
    /// Seconds; 0 disables pings. A v5 broker may override it (Server Keep Alive).
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<LastWill>,
    /// Required for `mqtts://`; see [`crate::tls_config`].
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS server name to verify; defaults to the URL's host.
    pub tls_server_name: Option<String>,
    /// v5 Session Expiry Interval in seconds (ignored for v3).
    pub session_expiry: Option<u32>,
    /// Time allowed for TCP connect + TLS handshake + CONNACK.
    pub connect_timeout: Duration,
    /// Capacity of the event channel. When it is full, up to as many events again are held
    /// back, then reading from the socket pauses until the application catches up (publishing
    /// keeps working meanwhile).
    pub event_capacity: usize,
    /// Largest packet accepted from the broker.
    pub max_packet_size: u32,
}

impl ClientOptions {
    pub fn new(url: impl Into<String>, client_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            url: url.into(),
            client_id: client_id.into(),
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 30,
            username: None,
            password: None,
            will: None,
            tls: None,
            tls_server_name: None,
            session_expiry: None,
            connect_timeout: Duration::from_secs(10),
            event_capacity: 1024,
            max_packet_size: 16 * 1024 * 1024,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("version", &self.version)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will.as_ref().map(|w| &w.topic))
            .field("tls", &self.tls.is_some())
            .field("session_expiry", &self.session_expiry)
            .finish_non_exhaustive()
    }
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    /// Host name or IP address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ClientError> {
        let bad = |reason| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(bad("unknown scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(bad("paths are not supported"));
        }
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port.parse().map_err(|_| bad("invalid port"))?),
                None if after.is_empty() => (host, default_port),
                None => return Err(bad("unexpected text after ']'")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().map_err(|_| bad("invalid port"))?),
                None => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port` for connecting (IPv6 literals bracketed).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}
