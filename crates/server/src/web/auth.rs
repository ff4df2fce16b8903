//! Who is calling: dashboard sessions (cookie `dc_session`, CSRF token for mutating requests)
//! and bearer tokens for scripts, resolved into a [`Principal`] by an extractor.
//!
//! Session ids are 256-bit random values; only their SHA-256 is stored, so a copy of the
//! database does not hand out sessions. Logins are rate limited per address (429).

use std::time::{Duration, Instant};

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use proto::acl::Role;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::{
    ConnMeta, WebState,
    error::{ApiError, ApiJson, ApiResult},
};
use crate::twin::now_ms;

pub const SESSION_COOKIE: &str = "dc_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a dashboard session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How a request was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    Session { id_hash: String, csrf_token: String },
    Bearer { token_hash: String },
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User or token name.
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Principal {
    /// The broker/audit principal: `user:NAME` or `token:NAME`.
    pub fn principal(&self) -> String {
        match self.via {
            Via::Session { .. } => format!("user:{}", self.name),
            Via::Bearer { .. } => format!("token:{}", self.name),
        }
    }

    /// The broker principal of a `/mqtt` connection opened by this caller. A dashboard session
    /// gets its own (`user:NAME#session-…`), so logging out or the session's expiry closes
    /// exactly the connections it opened; a token is `token:NAME`, like on the MQTT ports.
    pub fn mqtt_principal(&self) -> String {
        match &self.via {
            Via::Session { id_hash, .. } => session_principal(&self.name, id_hash),
            Via::Bearer { .. } => self.principal(),
        }
    }

    /// What the revocation watcher re-checks for a `/mqtt` connection of this caller.
    pub fn mqtt_credential(&self) -> crate::registry::Credential {
        use crate::registry::Credential;
        match &self.via {
            Via::Session { id_hash, .. } => Credential::WebSession {
                id_hash: id_hash.clone(),
                user: self.name.clone(),
                role: self.role,
            },
            Via::Bearer { token_hash } => Credential::ApiToken {
                name: self.name.clone(),
                token_hash: token_hash.clone(),
                role: self.role,
            },
        }
    }

    pub fn require(&self, role: Role) -> ApiResult<()> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} has role '{}'; this needs role '{}' or higher",
                self.principal(),
                self.role,
                role
            )))
        }
    }
}

/// The prefix of every `/mqtt` principal opened with one of `user`'s dashboard sessions.
pub fn session_principal_prefix(user: &str) -> String {
    format!("user:{user}#session-")
}

/// 48 bits of the session id's hash tell a user's sessions apart without revealing anything.
fn session_principal(user: &str, id_hash: &str) -> String {
    let marker = id_hash.get(..12).unwrap_or(id_hash);
    format!("{}{marker}", session_principal_prefix(user))
}

fn random_token() -> String {
    store::secret::generate_session_secret()
}

pub fn hash_secret(secret: &str) -> String {
    store::secret::hash_token(secret)
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let Ok(value) = value.to_str() else {
        return Some(Err(ApiError::unauthorized(
            "the Authorization header is not valid text",
        )));
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Some(Ok(token.trim()))
        }
        _ => Some(Err(ApiError::unauthorized(
            "use 'Authorization: Bearer <token>'",
        ))),
    }
}

/// Resolves the caller without the CSRF check (the WebSocket upgrades use this: a browser
/// cannot set headers on them, and SameSite=Strict keeps other sites' pages out).
pub async fn authenticate(state: &WebState, headers: &HeaderMap) -> ApiResult<Principal> {
    if let Some(token) = bearer(headers) {
        let token = token?;
        let token_hash = hash_secret(token);
        let found = state
            .ctx
            .store
            .tokens()
            .find_by_hash(&token_hash)
            .await
            .map_err(|e| ApiError::internal("cannot check the token", e))?;
        let Some(found) = found else {
            return Err(ApiError::unauthorized(
                "unknown or revoked token; create one with 'devicecloud token create NAME'",
            ));
        };
        let store = state.ctx.store.clone();
        let name = found.name.clone();
        tokio::spawn(async move {
            let _ = store.tokens().touch(&name, now_ms()).await;
        });
        return Ok(Principal {
            name: found.name,
            role: found.role,
            via: Via::Bearer { token_hash },
        });
    }
    if let Some(session) = cookie_value(headers, SESSION_COOKIE) {
        let id_hash = hash_secret(session);
        let found = state
            .ctx
            .store
            .sessions()
            .get(&id_hash, now_ms())
            .await
            .map_err(|e| ApiError::internal("cannot check the session", e))?;
        let Some(found) = found else {
            return Err(ApiError::unauthorized(
                "your session has expired; log in again",
            ));
        };
        return Ok(Principal {
            name: found.user,
            role: found.role,
            via: Via::Session {
                id_hash,
                csrf_token: found.csrf_token,
            },
        });
    }
    Err(ApiError::unauthorized(
        "log in, or send 'Authorization: Bearer <token>'",
    ))
}

fn check_csrf(principal: &Principal, method: &Method, headers: &HeaderMap) -> ApiResult<()> {
    let Via::Session { csrf_token, .. } = &principal.via else {
        return Ok(());
    };
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let presented = headers
        .get(CSRF_HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.ct_eq(csrf_token.as_bytes())) {
        return Err(ApiError::forbidden(
            "missing or wrong X-CSRF-Token header: send the csrf_token from /api/v1/login or /api/v1/me",
        ));
    }
    Ok(())
}

impl FromRequestParts<WebState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &WebState,
    ) -> Result<Self, Self::Rejection> {
        let principal = authenticate(state, &parts.headers).await?;
        check_csrf(&principal, &parts.method, &parts.headers)?;
        Ok(principal)
    }
}

/// Any authenticated caller with at least role operator.
#[derive(Debug, Clone)]
pub struct Operator(pub Principal);

impl FromRequestParts<WebState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &WebState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Role::Operator)?;
        Ok(Operator(principal))
    }
}

/// An authenticated admin.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl FromRequestParts<WebState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &WebState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(Role::Admin)?;
        Ok(Admin(principal))
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize)]
pub struct SessionInfo {
    pub user: String,
    pub role: Role,
    pub csrf_token: String,
}

pub async fn login(
    State(state): State<WebState>,
    meta: Option<axum::Extension<ConnMeta>>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let meta = meta.map(|m| m.0).unwrap_or_default();
    let ip = meta.peer.ip();
    if body.username.is_empty() {
        return Err(ApiError::bad_field(
            "username",
            "username must not be empty",
        ));
    }
    let account = Some(body.username.as_str());
    let backoff = || {
        state
            .login_backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    };
    if let Some(ban) = backoff().banned_for(ip, account, Instant::now()) {
        return Err(ApiError::backing_off(ban, ip));
    }
    // Counted as a failure before the (slow) check starts, so parallel guesses cannot all pass
    // the ban check above; a success retracts it.
    backoff().record_failure(ip, account, Instant::now());
    let user = state
        .ctx
        .store
        .users()
        .get(&body.username)
        .await
        .map_err(|e| ApiError::internal("cannot look up the user", e))?;
    // Unknown users are checked against a dummy hash: the same cost, so timing tells nothing.
    let hash = user
        .as_ref()
        .map_or(store::secret::DUMMY_PASSWORD_HASH, |u| &u.password_hash);
    let ok = match state
        .ctx
        .registry
        .password_gate()
        .verify_password(body.password.as_bytes(), hash)
        .await
    {
        Ok(ok) => ok,
        Err(busy) => {
            // Our load, not the caller's failure.
            backoff().record_success(ip, account);
            return Err(ApiError::busy(busy.to_string()));
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        state
            .counters
            .logins_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%ip, user = %body.username, "failed dashboard login");
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    backoff().record_success(ip, account);
    let role = user.role;
    let session = random_token();
    let csrf_token = random_token();
    let expires_at = now_ms() + i64::try_from(SESSION_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    state
        .ctx
        .store
        .sessions()
        .create(&hash_secret(&session), &user.name, &csrf_token, expires_at)
        .await
        .map_err(|e| ApiError::internal("cannot create the session", e))?;
    let _ = state
        .ctx
        .store
        .audit()
        .append(
            &format!("user:{}", user.name),
            "login",
            &user.name,
            &format!("from {ip}"),
        )
        .await;
    let cookie = format!(
        "{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if meta.tls { "; Secure" } else { "" }
    );
    let mut response = Json(SessionInfo {
        user: user.name,
        role,
        csrf_token,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal("bad cookie", e))?,
    );
    Ok(response)
}

pub async fn logout(State(state): State<WebState>, principal: Principal) -> ApiResult<Response> {
    if let Via::Session { id_hash, .. } = &principal.via {
        state
            .ctx
            .store
            .sessions()
            .delete(id_hash)
            .await
            .map_err(|e| ApiError::internal("cannot end the session", e))?;
        // The session's `/mqtt` connections end with it (now, not at the watcher's next look).
        state
            .ctx
            .broker
            .disconnect_principal(&principal.mqtt_principal());
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("dc_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(response)
}

pub async fn me(principal: Principal) -> Json<serde_json::Value> {
    let csrf = match &principal.via {
        Via::Session { csrf_token, .. } => serde_json::Value::String(csrf_token.clone()),
        Via::Bearer { .. } => serde_json::Value::Null,
    };
    Json(
        serde_json::json!({ "user": principal.name, "role": principal.role, "csrf_token": csrf, "principal": principal.principal() }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_bearer_headers_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; dc_session=abc ; b=2"),
        );
        assert_eq!(cookie_value(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&headers, "c"), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  tok "),
        );
        assert_eq!(bearer(&headers).unwrap().unwrap(), "tok");
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        assert!(bearer(&headers).unwrap().is_err());
    }
}
