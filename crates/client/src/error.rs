use codec::{CodecError, EncodeError, ReasonCode};

/// Everything that can go wrong connecting or talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "invalid broker URL {url:?}: {reason} (expected mqtt://host:port or mqtts://host:port)"
    )]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0} (check the PEM input)")]
    TlsConfig(String),
    #[error("mqtts:// URL {0:?} needs ClientOptions::tls (see client::tls_config)")]
    TlsRequired(String),
    #[error("timed out after {secs:.1}s while {what}")]
    Timeout { what: &'static str, secs: f64 },
    /// The broker answered CONNECT with a refusal (v3 return codes are mapped to v5 codes).
    #[error("broker refused the connection: {code}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Refused {
        code: ReasonCode,
        reason: Option<String>,
    },
    /// The broker answered a PUBLISH with an error reason code (v5 only).
    #[error("broker rejected the message: {code}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    Rejected {
        code: ReasonCode,
        reason: Option<String>,
    },
    #[error("protocol violation by the broker: {0}")]
    Protocol(String),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("cannot encode packet: {0}")]
    Encode(#[from] EncodeError),
    /// The connection is gone; connect again.
    #[error("not connected: the connection to the broker is closed")]
    Disconnected,
}
