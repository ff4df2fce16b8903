//! The standalone broker's TOML configuration file: the same settings as the command-line
//! flags of `devicecloud broker`. Every field is optional; flags override the file.
//!
//! ```toml
//! listen = ["mqtts://0.0.0.0:8883", "ws://127.0.0.1:8080/mqtt"]
//! password_file = "passwd"          # relative paths are relative to this file
//! tls_cert = "server.pem"
//! tls_key = "server.key"
//! client_ca = "ca.pem"              # verify client certificates
//! require_client_cert = true
//! data = "/var/lib/devicecloud-broker"
//! allow_anonymous = false
//! allow_insecure_listeners = false
//!
//! [limits]
//! max_connections = 10000
//! max_packet_size = 1048576
//! max_topic_levels = 32
//! max_topic_length = 1024
//! max_sessions_per_principal = 16
//! max_retained_per_principal = 100
//! max_retained_bytes_per_principal = 262144
//! max_connect_size = 65536
//! ```

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

use crate::listener::ListenUrl;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerFileConfig {
    #[serde(default, deserialize_with = "listen_urls")]
    pub listen: Vec<ListenUrl>,
    pub allow_anonymous: Option<bool>,
    /// Allow plain (unencrypted) listeners and anonymous clients on non-loopback addresses.
    pub allow_insecure_listeners: Option<bool>,
    pub password_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: Option<bool>,
    /// Directory for persistent sessions and retained messages.
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Broker limits; unset ones keep the broker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: Option<usize>,
    pub max_packet_size: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub max_queued_messages: Option<usize>,
    pub max_queued_bytes: Option<usize>,
    pub connect_timeout_secs: Option<u64>,
    pub handshake_timeout_secs: Option<u64>,
    pub max_keepalive: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub max_session_expiry: Option<u32>,
    pub sys_interval_secs: Option<u64>,
    pub max_topic_levels: Option<usize>,
    pub max_topic_length: Option<usize>,
    pub max_sessions_per_principal: Option<usize>,
    pub max_retained_per_principal: Option<usize>,
    pub max_retained_bytes_per_principal: Option<usize>,
    pub max_connect_size: Option<u32>,
}

fn listen_urls<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ListenUrl>, D::Error> {
    let raw = Vec::<String>::deserialize(deserializer)?;
    raw.iter()
        .map(|url| url.parse::<ListenUrl>().map_err(serde::de::Error::custom))
        .collect()
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(InvalidConfig),
}

/// A syntax or schema error, located.
#[derive(Debug)]
pub struct InvalidConfig {
    pub path: PathBuf,
    /// 1-based; 0 when toml gave no location.
    pub line: usize,
    pub column: usize,
    /// The dotted key concerned, e.g. `limits.max_connections`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl BrokerFileConfig {
    /// Reads and parses `path`; relative paths inside are resolved against its directory.
    pub fn load(path: &Path) -> Result<BrokerFileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(path, &text)?;
        let base = path.parent().unwrap_or(Path::new(""));
        for file in [
            &mut config.password_file,
            &mut config.tls_cert,
            &mut config.tls_key,
            &mut config.client_ca,
            &mut config.data,
        ]
        .into_iter()
        .flatten()
        {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
        Ok(config)
    }

    /// Parses `text`; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<BrokerFileConfig, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Invalid(locate(path, text, &err)))
    }
}

fn locate(path: &Path, text: &str, err: &toml::de::Error) -> InvalidConfig {
    let location = fsutil::toml_location(text, err);
    InvalidConfig {
        path: path.to_owned(),
        line: location.line.unwrap_or(0),
        column: location.column.unwrap_or(0),
        key: location.qualified_key(),
        message: location.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        match BrokerFileConfig::parse(Path::new("/etc/broker.toml"), text) {
            Err(err) => err.to_string(),
            Ok(config) => panic!("accepted {config:?}"),
        }
    }

    #[test]
    fn parses_every_setting() {
        let config = BrokerFileConfig::parse(
            Path::new("b.toml"),
            r#"
listen = ["mqtts://0.0.0.0:8883", "ws://127.0.0.1:0"]
allow_anonymous = true
allow_insecure_listeners = false
password_file = "passwd"
tls_cert = "c.pem"
tls_key = "k.pem"
client_ca = "ca.pem"
require_client_cert = false
data = "/var/lib/b"
[limits]
max_connections = 5
max_packet_size = 1024
connect_timeout_secs = 3
max_topic_levels = 8
max_sessions_per_principal = 2
max_connect_size = 4096
"#,
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.listen[1].path, "/mqtt");
        assert_eq!(config.limits.max_connections, Some(5));
        assert_eq!(config.limits.connect_timeout_secs, Some(3));
        assert_eq!(config.limits.max_topic_levels, Some(8));
        assert_eq!(config.limits.max_sessions_per_principal, Some(2));
        assert_eq!(config.limits.max_connect_size, Some(4096));
        assert_eq!(config.require_client_cert, Some(false));
        assert_eq!(
            BrokerFileConfig::parse(Path::new("e.toml"), "").unwrap(),
            BrokerFileConfig::default()
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let err = invalid("allow_anonymous = true\nlisten_on = [\"mqtt://127.0.0.1:1\"]\n");
        assert!(
            err.starts_with("/etc/broker.toml:2:1: key `listen_on`: unknown field `listen_on`"),
            "{err}"
        );

        let err = invalid("\n[limits]\nmax_connections = \"many\"\n");
        assert!(
            err.starts_with("/etc/broker.toml:3:19: key `limits.max_connections`:"),
            "{err}"
        );

        let err = invalid("listen = [\"mqtt://example.com:1883\"]\n");
        assert!(
            err.contains(":1:")
                && err.contains("key `listen`")
                && err.contains("must be an IP address"),
            "{err}"
        );

        let err = invalid("allow_anonymous = yes\n");
        assert!(err.starts_with("/etc/broker.toml:1:19:"), "{err}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "password_file = \"passwd\"\ntls_cert = \"/abs/c.pem\"\n",
        )
        .unwrap();
        let config = BrokerFileConfig::load(&path).unwrap();
        assert_eq!(config.password_file.unwrap(), dir.path().join("passwd"));
        assert_eq!(config.tls_cert.unwrap(), PathBuf::from("/abs/c.pem"));
        let err = BrokerFileConfig::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }
}
