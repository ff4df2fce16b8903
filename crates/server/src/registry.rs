//! The registry: who may connect to the broker, and with which permissions.
//!
//! [`Registry`] is the broker's [`Authenticator`]. It decides once per CONNECT, from the
//! [`Directory`] (the store):
//!
//! 1. a verified client certificate: CN = device id; the device must exist, not be revoked,
//!    and the certificate must be its current one (rotation or removal revokes the old one) and
//!    unexpired → `device:{id}` with the device ACL;
//! 2. user name + password: a device token (user name = device id; SHA-256 hashes compared in
//!    constant time), else a local user (argon2, verified off the async threads), else an API
//!    token (user name = token name) → `device:{id}`, `user:{name}` or `token:{name}`;
//! 3. nothing: refused. There are no anonymous clients.
//!
//! **Client ids.** A device must connect with its device id as client id (or an empty one,
//! letting the broker assign a random `auto-…` one); users and tokens may use any client id except a registered
//! device's id. Client ids are how MQTT session takeover works, so without this rule one client
//! could kick another device off by connecting with its id.
//!
//! Failures are logged with the peer address (never the secret) and counted per address and
//! per user name; after a few the address (or the account) is refused with `Banned` for a
//! growing window ([`crate::backoff`]). A password check is counted as a failure *before* it
//! starts and retracted when it succeeds, so parallel guesses cannot all pass the ban check.
//! Password checks run under the global [`PasswordGate`] (bounded concurrency and queue; beyond
//! it `ServerBusy`), and an unknown user name costs one check against a dummy hash, like a
//! known one.
//!
//! The registry remembers which credential each principal connected with (also for the web
//! tier's pre-authenticated `/mqtt` connections: [`Registry::remember`]), so that the
//! revocation watcher ([`Registry::watch_revocations`]) can kick principals whose credential
//! stopped being valid (device removed or rotated, user removed, role or password changed,
//! token revoked, web session ended or expired) within a fraction of a second of the change.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker::auth::{AuthError, AuthFuture, Authenticator, ConnectRequest, Identity};
use proto::acl::{DevicePermissions, Role, RolePermissions};
use store::secret;

use crate::{
    backoff::{Backoff, Ban},
    config::AuthConfig,
    gate::PasswordGate,
    permissions::AclPermissions,
};

pub type DirFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registered device as far as authentication cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEntry {
    pub id: String,
    /// Lowercase hex SHA-256 of the current client certificate's DER, if it has one.
    pub cert_fingerprint: Option<String>,
    /// Lowercase hex SHA-256 of the device token, if it has one.
    pub token_hash: Option<String>,
    pub revoked: bool,
    /// Extra topic filters granted explicitly in the registry.
    pub extra_publish: Vec<String>,
    pub extra_subscribe: Vec<String>,
}

/// A local user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    pub role: Role,
    /// Argon2 PHC string.
    pub password_hash: String,
}

/// An API token (for scripts; also usable as MQTT password with user name = token name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the token.
    pub token_hash: String,
}

/// A live dashboard session, as far as revocation cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEntry {
    pub user: String,
    /// The user's current role.
    pub role: Role,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct DirectoryError(pub String);

/// The registry's read-only view of the store.
pub trait Directory: Send + Sync + 'static {
    fn device(&self, id: &str) -> DirFuture<'_, Result<Option<DeviceEntry>, DirectoryError>>;
    fn user(&self, name: &str) -> DirFuture<'_, Result<Option<UserEntry>, DirectoryError>>;
    /// The API token with this hash ([`token_hash`] of the secret), if any.
    fn api_token_by_hash(
        &self,
        token_hash: &str,
    ) -> DirFuture<'_, Result<Option<TokenEntry>, DirectoryError>>;
    /// The unexpired dashboard session with this id hash, if any.
    fn web_session(
        &self,
        id_hash: &str,
    ) -> DirFuture<'_, Result<Option<SessionEntry>, DirectoryError>>;
    /// Changes whenever devices, users, tokens or sessions change (also from other processes).
    fn change_counter(&self) -> DirFuture<'_, Result<i64, DirectoryError>>;
}

/// What a principal connected with, to re-check it when the registry changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    DeviceCert {
        id: String,
        fingerprint: String,
    },
    DeviceToken {
        id: String,
        token_hash: String,
    },
    User {
        name: String,
        password_hash: String,
        role: Role,
    },
    ApiToken {
        name: String,
        token_hash: String,
        role: Role,
    },
    /// A dashboard session (the web tier's `/mqtt` with a session cookie): valid while the
    /// session exists, is unexpired and the user keeps this role.
    WebSession {
        id_hash: String,
        user: String,
        role: Role,
    },
    /// Nothing to revoke; not remembered.
    Anonymous,
}

#[derive(Debug, Clone, Copy)]
struct Anonymous {
    role: Role,
    beyond_loopback: bool,
}

#[derive(Debug)]
struct Seen {
    credentials: Vec<Credential>,
    last_auth: Instant,
    /// Set once the credential became invalid; the entry is kicked at every check until it expires.
    invalid_since: Option<Instant>,
}

/// Principals remembered at most for revocation (each entry is small).
const SEEN_CAPACITY: usize = 100_000;
/// How long an invalidated principal keeps being kicked (covers a connect that raced the change).
const INVALID_GRACE: Duration = Duration::from_secs(30);

pub struct Registry {
    directory: Arc<dyn Directory>,
    anonymous: Option<Anonymous>,
    backoff: Mutex<Backoff>,
    gate: Arc<PasswordGate>,
    seen: Mutex<HashMap<String, Seen>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

type Decision = Result<(Identity, Credential), AuthError>;

/// Whether a decision recorded a provisional failure (before a password check) to settle.
#[derive(Debug, Default)]
struct Attempt {
    provisional: bool,
}

impl Registry {
    pub fn new(directory: Arc<dyn Directory>, auth: &AuthConfig) -> Registry {
        Registry {
            directory,
            anonymous: None,
            backoff: Mutex::new(Backoff::new(auth)),
            gate: Arc::new(PasswordGate::new(
                auth.max_concurrent_password_checks,
                auth.max_queued_password_checks,
            )),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The one bound on password checks, shared with the web tier's logins.
    pub fn password_gate(&self) -> &Arc<PasswordGate> {
        &self.gate
    }

    /// Lets clients without credentials in with `role` (from loopback only, unless
    /// `beyond_loopback`). Off unless the config says so.
    pub fn allow_anonymous(mut self, role: Role, beyond_loopback: bool) -> Registry {
        self.anonymous = Some(Anonymous {
            role,
            beyond_loopback,
        });
        self
    }

    /// Is `ip` (or the account, when given) currently refused because of earlier failures?
    pub fn banned_for(&self, ip: IpAddr, account: Option<&str>) -> Option<Ban> {
        lock(&self.backoff).banned_for(ip, account, Instant::now())
    }

    async fn authenticate_request(
        &self,
        request: &ConnectRequest<'_>,
    ) -> Result<Identity, AuthError> {
        let ip = request.peer.ip();
        let account = request.username.filter(|u| !u.is_empty());
        if let Some(ban) = self.banned_for(ip, account) {
            // The ban itself was logged when it started; one line per refused retry would let an
            // attacker flood the log.
            tracing::debug!(peer = %request.peer, client_id = request.client_id, "refused: backing off after repeated failed logins");
            return Err(AuthError::Banned(ban.message(ip)));
        }
        let mut attempt = Attempt::default();
        // The client-id rule is not checked here: the broker calls `authorize_client_id` for
        // every CONNECT, the web tier's pre-authenticated `/mqtt` ones included.
        let decision = self.decide(request, &mut attempt).await;
        match decision {
            Ok((identity, credential)) => {
                if attempt.provisional {
                    lock(&self.backoff).record_success(ip, account);
                }
                if credential != Credential::Anonymous {
                    self.remember(&identity.principal, credential);
                }
                tracing::debug!(peer = %request.peer, principal = %identity.principal, "authenticated");
                Ok(identity)
            }
            Err(err) => {
                let window = match (&err, attempt.provisional) {
                    // Our side failed: not the client's fault, nothing to count.
                    (AuthError::Unavailable(_) | AuthError::ServerBusy(_), true) => {
                        lock(&self.backoff).record_success(ip, account);
                        None
                    }
                    (AuthError::Unavailable(_) | AuthError::ServerBusy(_), false) => None,
                    // Already counted before the password check.
                    (_, true) => None,
                    // Per address only: device tokens and certificates are random secrets, so
                    // an account ban would only let strangers lock a device out.
                    (_, false) => lock(&self.backoff).record_failure(ip, None, Instant::now()),
                };
                tracing::warn!(
                    peer = %request.peer,
                    client_id = request.client_id,
                    username = request.username.unwrap_or(""),
                    cert_cn = request.client_cert.and_then(|c| c.common_name.as_deref()).unwrap_or(""),
                    "refused CONNECT: {err}"
                );
                if let Some(window) = window {
                    tracing::warn!(peer = %request.peer, "repeated failed logins: refusing {ip} for {window:?}");
                }
                Err(err)
            }
        }
    }

    async fn decide(&self, request: &ConnectRequest<'_>, attempt: &mut Attempt) -> Decision {
        if let Some(cert) = request.client_cert {
            return self.decide_certificate(cert).await;
        }
        match (request.username, request.password) {
            (Some(username), Some(password)) if !username.is_empty() => {
                self.decide_password(request, username, password, attempt)
                    .await
            }
            (None | Some(""), None) => match self.anonymous {
                Some(anon) if anon.beyond_loopback || request.peer.ip().is_loopback() => {
                    let identity = role_identity("anonymous".to_owned(), anon.role);
                    Ok((identity, Credential::Anonymous))
                }
                _ => Err(AuthError::NotAuthorized(
                    "anonymous clients are not allowed: connect with a device certificate, or a user name and password or token"
                        .into(),
                )),
            },
            (Some(_), None) => Err(AuthError::BadCredentials),
            _ => Err(AuthError::NotAuthorized(
                "anonymous clients are not allowed: connect with a device certificate, or a user name and password or token"
                    .into(),
            )),
        }
    }

    async fn decide_certificate(&self, cert: &broker::auth::ClientCert) -> Decision {
        let Some(id) = cert.common_name.as_deref().filter(|cn| !cn.is_empty()) else {
            return Err(AuthError::NotAuthorized(
                "the client certificate has no common name (device id)".into(),
            ));
        };
        let device = self.device(id).await?.ok_or_else(|| {
            AuthError::NotAuthorized(format!(
                "device '{id}' is not registered (removed?); its certificate is no longer valid"
            ))
        })?;
        if device.revoked {
            return Err(AuthError::NotAuthorized(format!(
                "device '{id}' is revoked"
            )));
        }
        let current = device.cert_fingerprint.as_deref().unwrap_or("");
        if !current.eq_ignore_ascii_case(&cert.fingerprint_sha256) {
            return Err(AuthError::NotAuthorized(format!(
                "this certificate for device '{id}' was replaced or revoked (serial {}); use the device's current credentials",
                cert.serial_hex
            )));
        }
        if cert.not_after_unix <= unix_now() {
            return Err(AuthError::NotAuthorized(format!(
                "the certificate of device '{id}' has expired"
            )));
        }
        let credential = Credential::DeviceCert {
            id: id.to_owned(),
            fingerprint: current.to_ascii_lowercase(),
        };
        Ok((device_identity(&device), credential))
    }

    async fn decide_password(
        &self,
        request: &ConnectRequest<'_>,
        username: &str,
        password: &[u8],
        attempt: &mut Attempt,
    ) -> Decision {
        // Device and API tokens are random text; anything else cannot be one.
        let token = std::str::from_utf8(password).ok();
        if let Some(device) = self.device(username).await? {
            let Some(stored) = device.token_hash.as_deref() else {
                return Err(AuthError::BadCredentials);
            };
            if !token.is_some_and(|t| secret::verify_token(t, &stored.to_ascii_lowercase())) {
                return Err(AuthError::BadCredentials);
            }
            if device.revoked {
                return Err(AuthError::NotAuthorized(format!(
                    "device '{username}' is revoked"
                )));
            }
            let credential = Credential::DeviceToken {
                id: device.id.clone(),
                token_hash: stored.to_ascii_lowercase(),
            };
            return Ok((device_identity(&device), credential));
        }
        let user = self.user(username).await?;
        if let Some(user) = user {
            if !self
                .check_password(request, username, password, &user.password_hash, attempt)
                .await?
            {
                return Err(AuthError::BadCredentials);
            }
            let identity = role_identity(format!("user:{}", user.name), user.role);
            return Ok((
                identity,
                Credential::User {
                    name: user.name,
                    password_hash: user.password_hash,
                    role: user.role,
                },
            ));
        }
        // API tokens are found by their hash (an indexed look-up of a 128-bit secret's hash
        // leaks nothing through timing); the user name must be the token's name.
        let presented = token.map(secret::hash_token);
        let found = match &presented {
            Some(hash) => self.api_token_by_hash(hash).await?,
            None => None,
        };
        if let Some(token) = found.filter(|t| t.name == username) {
            let identity = role_identity(format!("token:{}", token.name), token.role);
            return Ok((
                identity,
                Credential::ApiToken {
                    name: token.name,
                    token_hash: token.token_hash,
                    role: token.role,
                },
            ));
        }
        // Unknown user name: spend what a known one costs, so timing does not tell them apart.
        self.check_password(
            request,
            username,
            password,
            secret::DUMMY_PASSWORD_HASH,
            attempt,
        )
        .await?;
        Err(AuthError::BadCredentials)
    }

    /// One argon2 check under the global gate. The failure is recorded first (and retracted by
    /// the caller on success), so parallel guesses cannot all pass the ban check.
    async fn check_password(
        &self,
        request: &ConnectRequest<'_>,
        username: &str,
        password: &[u8],
        hash: &str,
        attempt: &mut Attempt,
    ) -> Result<bool, AuthError> {
        let ip = request.peer.ip();
        attempt.provisional = true;
        if let Some(window) = lock(&self.backoff).record_failure(ip, Some(username), Instant::now())
        {
            tracing::warn!(peer = %request.peer, user = username, "repeated failed logins: refusing {ip} and this account for {window:?}");
        }
        self.gate
            .verify_password(password, hash)
            .await
            .map_err(|busy| AuthError::ServerBusy(busy.to_string()))
    }

    /// The client-id rule: a device principal must use its own id (or an empty, broker-assigned
    /// one); any other principal may not use a registered device's id.
    async fn check_client_id(&self, identity: &Identity, client_id: &str) -> Result<(), AuthError> {
        if let Some(device_id) = identity.principal.strip_prefix("device:") {
            return check_device_client_id(client_id, device_id);
        }
        if !client_id.is_empty()
            && !is_broker_assigned(client_id)
            && self.device(client_id).await?.is_some()
        {
            return Err(AuthError::ClientIdNotValid(format!(
                "client id '{client_id}' belongs to a device; choose another client id"
            )));
        }
        Ok(())
    }

    async fn device(&self, id: &str) -> Result<Option<DeviceEntry>, AuthError> {
        self.directory.device(id).await.map_err(unavailable)
    }

    async fn user(&self, name: &str) -> Result<Option<UserEntry>, AuthError> {
        self.directory.user(name).await.map_err(unavailable)
    }

    async fn api_token_by_hash(&self, hash: &str) -> Result<Option<TokenEntry>, AuthError> {
        self.directory
            .api_token_by_hash(hash)
            .await
            .map_err(unavailable)
    }

    /// Remembers that `principal` is connected with `credential`, so the revocation watcher
    /// re-checks it (the web tier calls this for `/mqtt`, which the broker does not authenticate).
    pub fn remember(&self, principal: &str, credential: Credential) {
        let now = Instant::now();
        let mut seen = lock(&self.seen);
        if !seen.contains_key(principal) && seen.len() >= SEEN_CAPACITY {
            // Principals that authenticated long ago are most likely gone; forget the oldest.
            if let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, s)| s.last_auth)
                .map(|(p, _)| p.clone())
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(principal.to_owned()).or_insert_with(|| Seen {
            credentials: Vec::new(),
            last_auth: now,
            invalid_since: None,
        });
        entry.last_auth = now;
        entry.invalid_since = None;
        if !entry.credentials.contains(&credential) {
            // A device may have an old and a new credential in use right after a rotation;
            // keep a few so the old one is still checked (and kicked).
            if entry.credentials.len() >= 4 {
                entry.credentials.remove(0);
            }
            entry.credentials.push(credential);
        }
    }

    /// Remembered principals starting with `prefix` (e.g. a user's `/mqtt` session principals).
    pub fn principals_with_prefix(&self, prefix: &str) -> Vec<String> {
        lock(&self.seen)
            .keys()
            .filter(|p| p.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Principals remembered for revocation checks.
    pub fn tracked_principals(&self) -> usize {
        lock(&self.seen).len()
    }

    /// Re-validates every remembered principal's credentials and calls `disconnect` for those
    /// that are no longer valid. Returns the principals disconnected.
    pub async fn recheck(&self, disconnect: &(dyn Fn(&str) -> usize + Send + Sync)) -> Vec<String> {
        let snapshot: Vec<(String, Vec<Credential>, Option<Instant>)> = lock(&self.seen)
            .iter()
            .map(|(p, s)| (p.clone(), s.credentials.clone(), s.invalid_since))
            .collect();
        let now = Instant::now();
        let mut kicked = Vec::new();
        for (principal, credentials, invalid_since) in snapshot {
            let valid = match invalid_since {
                Some(_) => false,
                None => {
                    let mut all_valid = true;
                    for credential in &credentials {
                        match self.still_valid(credential).await {
                            Ok(true) => {}
                            Ok(false) => all_valid = false,
                            // The store hiccupped; judge again at the next check.
                            Err(err) => tracing::warn!("cannot re-check {principal}: {err}"),
                        }
                    }
                    all_valid
                }
            };
            if valid {
                continue;
            }
            let n = disconnect(&principal);
            if invalid_since.is_none() || n > 0 {
                tracing::info!(principal = %principal, connections = n, "credentials no longer valid: disconnected");
                kicked.push(principal.clone());
            }
            let mut seen = lock(&self.seen);
            match invalid_since {
                Some(since) if now.duration_since(since) > INVALID_GRACE => {
                    seen.remove(&principal);
                }
                Some(_) => {}
                None => {
                    if let Some(entry) = seen.get_mut(&principal) {
                        entry.invalid_since = Some(now);
                    }
                }
            }
        }
        kicked
    }

    async fn still_valid(&self, credential: &Credential) -> Result<bool, DirectoryError> {
        Ok(match credential {
            Credential::DeviceCert { id, fingerprint } => {
                self.directory.device(id).await?.is_some_and(|d| {
                    !d.revoked
                        && d.cert_fingerprint
                            .is_some_and(|f| f.eq_ignore_ascii_case(fingerprint))
                })
            }
            Credential::DeviceToken { id, token_hash } => {
                self.directory.device(id).await?.is_some_and(|d| {
                    !d.revoked
                        && d.token_hash
                            .is_some_and(|h| h.eq_ignore_ascii_case(token_hash))
                })
            }
            Credential::User {
                name,
                password_hash,
                role,
            } => self
                .directory
                .user(name)
                .await?
                .is_some_and(|u| &u.password_hash == password_hash && u.role == *role),
            Credential::ApiToken {
                name,
                token_hash,
                role,
            } => self
                .directory
                .api_token_by_hash(token_hash)
                .await?
                .is_some_and(|t| &t.name == name && t.role == *role),
            Credential::WebSession {
                id_hash,
                user,
                role,
            } => self
                .directory
                .web_session(id_hash)
                .await?
                .is_some_and(|s| &s.user == user && s.role == *role),
            Credential::Anonymous => true,
        })
    }

    /// Polls the directory's change counter every `period` and, when it moved (and every
    /// `INVALID_GRACE / 6` regardless, to catch connects that raced a change), re-checks
    /// connected principals and disconnects those whose credentials were revoked.
    pub async fn watch_revocations(
        self: Arc<Self>,
        period: Duration,
        disconnect: Arc<dyn Fn(&str) -> usize + Send + Sync>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_counter: Option<i64> = None;
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            let counter = match self.directory.change_counter().await {
                Ok(counter) => Some(counter),
                Err(err) => {
                    tracing::warn!(
                        "revocation watcher cannot read the registry's change counter: {err}"
                    );
                    None
                }
            };
            let changed = counter.is_some() && counter != last_counter;
            if changed || last_full.elapsed() >= INVALID_GRACE / 6 {
                if counter.is_some() {
                    last_counter = counter;
                }
                last_full = Instant::now();
                self.recheck(disconnect.as_ref()).await;
            }
        }
    }
}

impl Authenticator for Registry {
    fn authenticate<'a>(&'a self, request: ConnectRequest<'a>) -> AuthFuture<'a> {
        Box::pin(async move { self.authenticate_request(&request).await })
    }

    fn authorize_client_id<'a>(
        &'a self,
        identity: &'a Identity,
        client_id: &'a str,
    ) -> AuthFuture<'a, ()> {
        Box::pin(self.check_client_id(identity, client_id))
    }
}

fn device_identity(device: &DeviceEntry) -> Identity {
    let acl = DevicePermissions::new(
        &device.id,
        device.extra_publish.clone(),
        device.extra_subscribe.clone(),
    );
    Identity {
        principal: format!("device:{}", device.id),
        permissions: Arc::new(AclPermissions(acl)),
    }
}

fn role_identity(principal: String, role: Role) -> Identity {
    Identity {
        principal,
        permissions: Arc::new(AclPermissions(RolePermissions::new(role))),
    }
}

fn check_device_client_id(client_id: &str, device_id: &str) -> Result<(), AuthError> {
    if client_id.is_empty() || client_id == device_id || is_broker_assigned(client_id) {
        return Ok(());
    }
    Err(AuthError::ClientIdNotValid(format!(
        "device '{device_id}' must connect with client id '{device_id}' (or an empty one), not '{client_id}'"
    )))
}

/// The broker assigns `auto-` + 16 random hex digits to clients that send an empty client id
/// (before authentication); unguessable, so it cannot be used to take over another session.
fn is_broker_assigned(client_id: &str) -> bool {
    client_id
        .strip_prefix("auto-")
        .is_some_and(|rest| rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn unavailable(err: DirectoryError) -> AuthError {
    tracing::error!("registry lookup failed: {err}");
    AuthError::Unavailable("the device registry is unavailable; try again shortly".into())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::auth::{ClientCert, Transport};
    use std::sync::atomic::{AtomicI64, Ordering};

    #[derive(Default)]
    struct Fake {
        devices: Mutex<HashMap<String, DeviceEntry>>,
        users: Mutex<HashMap<String, UserEntry>>,
        tokens: Mutex<HashMap<String, TokenEntry>>,
        sessions: Mutex<HashMap<String, SessionEntry>>,
        counter: AtomicI64,
    }

    impl Directory for Fake {
        fn device(&self, id: &str) -> DirFuture<'_, Result<Option<DeviceEntry>, DirectoryError>> {
            let d = lock(&self.devices).get(id).cloned();
            Box::pin(async move { Ok(d) })
        }
        fn user(&self, name: &str) -> DirFuture<'_, Result<Option<UserEntry>, DirectoryError>> {
            let u = lock(&self.users).get(name).cloned();
            Box::pin(async move { Ok(u) })
        }
        fn api_token_by_hash(
            &self,
            hash: &str,
        ) -> DirFuture<'_, Result<Option<TokenEntry>, DirectoryError>> {
            let t = lock(&self.tokens)
                .values()
                .find(|t| t.token_hash == hash)
                .cloned();
            Box::pin(async move { Ok(t) })
        }
        fn web_session(
            &self,
            id_hash: &str,
        ) -> DirFuture<'_, Result<Option<SessionEntry>, DirectoryError>> {
            let s = lock(&self.sessions).get(id_hash).cloned();
            Box::pin(async move { Ok(s) })
        }
        fn change_counter(&self) -> DirFuture<'_, Result<i64, DirectoryError>> {
            let c = self.counter.load(Ordering::SeqCst);
            Box::pin(async move { Ok(c) })
        }
    }

    fn setup() -> (Arc<Fake>, Registry) {
        let fake = Arc::new(Fake::default());
        lock(&fake.devices).insert(
            "kitchen".into(),
            DeviceEntry {
                id: "kitchen".into(),
                cert_fingerprint: Some("ab".repeat(32)),
                token_hash: None,
                revoked: false,
                extra_publish: vec![],
                extra_subscribe: vec![],
            },
        );
        lock(&fake.devices).insert(
            "garage".into(),
            DeviceEntry {
                id: "garage".into(),
                cert_fingerprint: None,
                token_hash: Some(secret::hash_token("s3cret")),
                revoked: false,
                extra_publish: vec![],
                extra_subscribe: vec![],
            },
        );
        let registry = Registry::new(
            fake.clone(),
            &AuthConfig {
                failures_before_backoff: 3,
                ..AuthConfig::default()
            },
        );
        (fake, registry)
    }

    fn cert(cn: &str, fingerprint: &str) -> ClientCert {
        ClientCert {
            common_name: Some(cn.into()),
            fingerprint_sha256: fingerprint.into(),
            serial_hex: "01".into(),
            not_after_unix: unix_now() + 3600,
            der: Arc::new(vec![]),
        }
    }

    fn request<'a>(
        client_id: &'a str,
        username: Option<&'a str>,
        password: Option<&'a [u8]>,
        client_cert: Option<&'a ClientCert>,
        peer: &str,
    ) -> ConnectRequest<'a> {
        ConnectRequest {
            client_id,
            username,
            password,
            peer: peer.parse().unwrap(),
            transport: Transport::Tls,
            client_cert,
        }
    }

    #[tokio::test]
    async fn certificates_tokens_and_refusals() {
        let (fake, registry) = setup();
        let good = cert("kitchen", &"ab".repeat(32));
        let id = registry
            .authenticate(request("kitchen", None, None, Some(&good), "10.0.0.1:1"))
            .await
            .unwrap();
        assert_eq!(id.principal, "device:kitchen");
        assert!(id.permissions.may_publish("devices/kitchen/state/led"));
        assert!(!id.permissions.may_publish("devices/garage/state/led"));

        let old = cert("kitchen", &"cd".repeat(32));
        let err = registry
            .authenticate(request("kitchen", None, None, Some(&old), "10.0.0.1:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::NotAuthorized(_)), "{err}");
        let kitchen = registry
            .authenticate(request("garage", None, None, Some(&good), "10.0.0.1:1"))
            .await
            .unwrap();
        let err = registry
            .authorize_client_id(&kitchen, "garage")
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::ClientIdNotValid(_)), "{err}");

        let id = registry
            .authenticate(request(
                "",
                Some("garage"),
                Some(b"s3cret"),
                None,
                "10.0.0.2:1",
            ))
            .await
            .unwrap();
        assert_eq!(id.principal, "device:garage");
        let err = registry
            .authenticate(request(
                "",
                Some("garage"),
                Some(b"wrong"),
                None,
                "10.0.0.2:1",
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::BadCredentials));
        let err = registry
            .authenticate(request("x", None, None, None, "10.0.0.2:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::NotAuthorized(_)));

        lock(&fake.tokens).insert(
            "ci".into(),
            TokenEntry {
                name: "ci".into(),
                role: Role::Operator,
                token_hash: secret::hash_token("tok"),
            },
        );
        let id = registry
            .authenticate(request(
                "script",
                Some("ci"),
                Some(b"tok"),
                None,
                "10.0.0.3:1",
            ))
            .await
            .unwrap();
        assert_eq!(id.principal, "token:ci");
        assert!(id.permissions.may_publish("devices/kitchen/set/led"));
        let err = registry
            .authorize_client_id(&id, "kitchen")
            .await
            .unwrap_err();
        assert!(
            matches!(err, AuthError::ClientIdNotValid(_)),
            "a user must not take over a device's session"
        );
    }

    #[tokio::test]
    async fn anonymous_only_when_configured_and_only_from_loopback() {
        let (fake, registry) = setup();
        let err = registry
            .authenticate(request("a", None, None, None, "127.0.0.1:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::NotAuthorized(_)));
        let registry =
            Registry::new(fake, &AuthConfig::default()).allow_anonymous(Role::Viewer, false);
        let id = registry
            .authenticate(request("a", None, None, None, "127.0.0.1:1"))
            .await
            .unwrap();
        assert_eq!(id.principal, "anonymous");
        assert!(
            id.permissions.may_subscribe("devices/#")
                && !id.permissions.may_publish("devices/x/set/y")
        );
        let err = registry
            .authenticate(request("a", None, None, None, "10.0.0.1:1"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::NotAuthorized(_)));
    }

    #[tokio::test]
    async fn backoff_bans_one_address_only() {
        let (_fake, registry) = setup();
        for _ in 0..3 {
            let _ = registry
                .authenticate(request(
                    "",
                    Some("garage"),
                    Some(b"bad"),
                    None,
                    "10.0.0.9:1",
                ))
                .await;
        }
        let err = registry
            .authenticate(request(
                "",
                Some("garage"),
                Some(b"s3cret"),
                None,
                "10.0.0.9:2",
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::Banned(_)), "{err}");
        registry
            .authenticate(request(
                "",
                Some("garage"),
                Some(b"s3cret"),
                None,
                "10.0.0.10:1",
            ))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn recheck_kicks_revoked_principals() {
        let (fake, registry) = setup();
        let good = cert("kitchen", &"ab".repeat(32));
        registry
            .authenticate(request("kitchen", None, None, Some(&good), "10.0.0.1:1"))
            .await
            .unwrap();
        registry
            .authenticate(request(
                "garage",
                Some("garage"),
                Some(b"s3cret"),
                None,
                "10.0.0.1:1",
            ))
            .await
            .unwrap();
        let kicked = Mutex::new(Vec::new());
        let disconnect = |p: &str| {
            lock(&kicked).push(p.to_owned());
            1
        };
        assert!(registry.recheck(&disconnect).await.is_empty());
        lock(&fake.devices)
            .get_mut("kitchen")
            .unwrap()
            .cert_fingerprint = Some("ef".repeat(32));
        assert_eq!(
            registry.recheck(&disconnect).await,
            vec!["device:kitchen".to_owned()]
        );
        assert_eq!(*lock(&kicked), vec!["device:kitchen".to_owned()]);
    }
}
