//! The dashboard, embedded in the binary: `/` (and `/login`) is `index.html`, `/assets/*` the
//! files of `crates/server/assets/`, `/sdk/devicecloud.js` the JavaScript client for user apps.

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use rust_embed::RustEmbed;

use super::error::ApiError;

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

/// No inline scripts, no third-party origins: a page can only talk to this server.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The embedded file for a request path, if any.
fn lookup(path: &str) -> Option<(&'static str, rust_embed::EmbeddedFile)> {
    let name = match path {
        "/" | "/index.html" | "/login" => "index.html",
        p if p.starts_with("/assets/") => &p["/assets/".len()..],
        p if p.starts_with("/sdk/") => &p[1..],
        _ => return None,
    };
    // rust-embed keys never contain `..`; a request that does simply is not found.
    let file = Assets::get(name)?;
    let mime = mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    Some((mime, file))
}

pub async fn static_file(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let Some((mime, file)) = lookup(path) else {
        if path.starts_with("/api/") {
            return ApiError::not_found(format!(
                "no API endpoint {path}; see /api/v1/openapi.json"
            ))
            .into_response();
        }
        return ApiError::not_found(format!("nothing at {path}")).into_response();
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let mut response = Body::from(file.data.into_owned()).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    if mime.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_and_the_sdk_are_embedded() {
        assert_eq!(lookup("/").unwrap().0, "text/html");
        assert!(lookup("/login").is_some());
        assert_eq!(lookup("/sdk/devicecloud.js").unwrap().0, "text/javascript");
        assert!(lookup("/assets/../Cargo.toml").is_none());
        assert!(lookup("/nothing").is_none());
    }
}
