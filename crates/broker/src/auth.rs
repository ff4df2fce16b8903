//! Authentication and authorisation: the one seam between the broker and whoever decides
//! who may connect (a password file, the server's device registry, a test).
//!
//! The broker calls [`Authenticator::authenticate`] once per CONNECT; it may be async and may
//! do I/O. What it returns, an [`Identity`], carries the [`Permissions`] that the broker then
//! checks synchronously for every PUBLISH and SUBSCRIBE, without I/O.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

/// What a client presented when it connected.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub peer: SocketAddr,
    pub transport: Transport,
    /// Present when the listener verified a client certificate against its client CA.
    pub client_cert: Option<&'a ClientCert>,
}

/// The transport a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
    /// In-process clients (the server's own components).
    Local,
}

impl Transport {
    pub fn is_encrypted(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss | Transport::Local)
    }
}

/// The identity carried by a verified client certificate.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// Subject common name (CN); devicecloud issues device certificates with CN = device id.
    pub common_name: Option<String>,
    /// Lowercase hex SHA-256 of the DER certificate, for revocation look-ups.
    pub fingerprint_sha256: String,
    /// Serial number as lowercase hex.
    pub serial_hex: String,
    /// Expiry, seconds since the Unix epoch.
    pub not_after_unix: i64,
    pub der: Arc<Vec<u8>>,
}

/// Why a CONNECT was refused. The broker maps each kind to the CONNACK reason code of the
/// client's protocol version (v5 code in brackets, v3 return code after it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// Unknown user, wrong password or token (v5 0x86, v3 4).
    #[error("bad user name or password")]
    BadCredentials,
    /// Credentials were fine but this principal may not connect, e.g. revoked (v5 0x87, v3 5).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The client id is not acceptable for this principal (v5 0x85, v3 2).
    #[error("client identifier not valid: {0}")]
    ClientIdNotValid(String),
    /// Too many failures from this address; try again later (v5 0x8A Banned, v3 5).
    #[error("banned: {0}")]
    Banned(String),
    /// The decider is down (registry unreachable) (v5 0x88, v3 3).
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// Too many credential checks are running or waiting; try again shortly (v5 0x89 Server
    /// busy, v3 3).
    #[error("server busy: {0}")]
    ServerBusy(String),
}

/// Decided once at CONNECT, consulted per packet. Implementations must not block or do I/O.
pub trait Permissions: Send + Sync + std::fmt::Debug + 'static {
    /// May this client publish to `topic` (a concrete topic name, no wildcards)?
    fn may_publish(&self, topic: &str) -> bool;
    /// May this client subscribe to `filter` (may contain `+` and `#`; without any
    /// `$share/group/` prefix)? Implementations must treat wildcards conservatively:
    /// `devices/+/status` is allowed only if every topic it can match is allowed.
    fn may_subscribe(&self, filter: &str) -> bool;
}

/// Every permission; for superusers, anonymous-mode and the server's own components.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Permissions for AllowAll {
    fn may_publish(&self, _topic: &str) -> bool {
        true
    }
    fn may_subscribe(&self, _filter: &str) -> bool {
        true
    }
}

/// Who a connected client is, as far as the broker cares.
#[derive(Debug, Clone)]
pub struct Identity {
    /// A stable principal name such as `device:kitchen` or `user:alice`; used in logs and for
    /// [`crate::Broker::disconnect_principal`] (revocation).
    pub principal: String,
    pub permissions: Arc<dyn Permissions>,
}

impl Identity {
    pub fn superuser(principal: impl Into<String>) -> Identity {
        Identity {
            principal: principal.into(),
            permissions: Arc::new(AllowAll),
        }
    }
}

pub type AuthFuture<'a, T = Identity> =
    Pin<Box<dyn Future<Output = Result<T, AuthError>> + Send + 'a>>;

/// Called once per CONNECT. May be async (look up a registry); the broker applies a deadline.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, request: ConnectRequest<'a>) -> AuthFuture<'a>;

    /// May `identity` use `client_id`? Called for every CONNECT after the identity is known,
    /// including pre-authenticated ones (the web tier's `/mqtt`), so a client-id rule such as
    /// "a device's id is reserved to that device" holds on every entry point.
    fn authorize_client_id<'a>(
        &'a self,
        identity: &'a Identity,
        client_id: &'a str,
    ) -> AuthFuture<'a, ()> {
        let _ = (identity, client_id);
        Box::pin(async { Ok(()) })
    }
}
