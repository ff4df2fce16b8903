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
    Bearer,
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
            Via::Bearer => format!("token:{}", self.name),
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
        let found = state
            .ctx
            .store
            .tokens()
            .find_by_hash(&hash_secret(token))
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
            via: Via::Bearer,
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

/// A syntactically valid argon2 hash of a random password: verifying against it costs what a
/// real check costs, so unknown user names are not revealed by timing.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0mB5MPbd0Qm+bF6vGyoRQQaWNq2G2u6s5M4v5k8Wk0g";

pub fn verify_password(hash: &str, password: &str) -> bool {
    store::secret::verify_password(password, hash)
}

pub async fn login(
    State(state): State<WebState>,
    meta: Option<axum::Extension<ConnMeta>>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let meta = meta.map(|m| m.0).unwrap_or_default();
    let ip = meta.peer.ip();
    let banned = state
        .login_backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .banned_for(ip, Instant::now());
    if let Some(wait) = banned {
        let secs = wait.as_secs().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed logins from {ip}; try again in {secs}s"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    if body.username.is_empty() {
        return Err(ApiError::bad_field(
            "username",
            "username must not be empty",
        ));
    }
    let user = state
        .ctx
        .store
        .users()
        .get(&body.username)
        .await
        .map_err(|e| ApiError::internal("cannot look up the user", e))?;
    let hash = user
        .as_ref()
        .map_or(DUMMY_HASH.to_string(), |u| u.password_hash.clone());
    let password = body.password.clone();
    let ok = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
        .await
        .map_err(|e| ApiError::internal("password check failed", e))?;
    let Some(user) = user.filter(|_| ok) else {
        state
            .counters
            .logins_failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state
            .login_backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record_failure(ip, Instant::now());
        tracing::info!(%ip, user = %body.username, "failed dashboard login");
        return Err(ApiError::unauthorized("wrong user name or password"));
    };
    state
        .login_backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record_success(ip);
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
        Via::Bearer => serde_json::Value::Null,
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

    #[test]
    fn dummy_hash_is_a_valid_argon2_hash() {
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!verify_password(DUMMY_HASH, "anything"));
    }
}
