//! Every failure of the HTTP API as one type: a status and a JSON body
//! `{"error": "<message>", "field": "<name>"?}`.

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (429 and 503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A 400 that names the offending field.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            field: Some(field.into()),
            retry_after: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 429 with `Retry-After`: this address or account is backing off after failed attempts.
    pub fn backing_off(ban: crate::backoff::Ban, ip: std::net::IpAddr) -> ApiError {
        ApiError {
            retry_after: Some(ban.remaining.as_secs().max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, ban.message(ip))
        }
    }

    /// 503 with `Retry-After`: too much work is queued (e.g. password checks); try again soon.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: Some(2),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    /// Something on our side failed; the details go to the log, the client gets a summary.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> ApiError {
        tracing::error!("{context}: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context}: {err}"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::String(field);
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // Not `Bearer realm=...` with a challenge the browser would act on: just say what works.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Unknown paths under `/api/v1`.
pub async fn api_not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no API endpoint {}; see /api/v1/openapi.json",
        uri.path()
    ))
}

/// A JSON request body whose errors name the field: `{"error": "...", "field": "role"}`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON: send Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as JSON into `T`; a failure names the field it happened at.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        // serde reports a missing field at its parent; the name is in the message.
        let at_root = path == "." || path == "?";
        let field = missing_field(&message).map(|f| {
            if at_root {
                f.to_owned()
            } else {
                format!("{path}.{f}")
            }
        });
        let field =
            field.or_else(|| (path != "." && path != "?" && !path.is_empty()).then_some(path));
        match field {
            Some(field) => ApiError::bad_field(
                field.clone(),
                format!("invalid JSON body at '{field}': {message}"),
            ),
            None => ApiError::bad_request(format!("invalid JSON body: {message}")),
        }
    })?;
    Ok(value)
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        role: proto::acl::Role,
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"name":"x","role":"king"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("role"));
        assert!(
            err.message.contains("unknown role 'king'"),
            "{}",
            err.message
        );
        let err = parse_json::<Body>(br#"{"role":"admin"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("name"));
        let err = parse_json::<Body>(br#"{"name":5,"role":"admin"}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("name"));
        let err = parse_json::<Body>(b"{").unwrap_err();
        assert_eq!(err.field, None);
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}
