//! User web apps: `DATA/apps/NAME/` served at `/apps/NAME/`, behind the dashboard login.
//!
//! Paths are checked component by component (no `..`, no hidden files, no backslashes) and the
//! resolved file must still lie inside the app's folder after following symlinks, so nothing
//! outside `DATA/apps/NAME/` can be reached.

use std::path::{Path, PathBuf};

use axum::{
    body::Body,
    extract::{Path as UrlPath, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Redirect, Response},
};

use super::{WebState, auth, error::ApiError};

/// Apps are user content on the dashboard's origin: they may load their own files and the SDK
/// and talk to this server (`/api`, `/mqtt`), but not run inline or foreign scripts, not frame
/// anything (so not the dashboard, to overlay it) and not be framed themselves.
pub const APP_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-src 'none'; frame-ancestors 'none'; object-src 'none'; base-uri 'self'; form-action 'self'";

/// Where user apps live inside the data directory.
pub const APPS_DIR: &str = "apps";

fn valid_component(c: &str) -> bool {
    !c.is_empty() && !c.starts_with('.') && !c.contains(['\\', '\0', ':'])
}

/// The file for `path` inside `root`, or `None` if the path is not acceptable or escapes it.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut candidate = root.to_path_buf();
    for component in path.split('/').filter(|c| !c.is_empty()) {
        if !valid_component(component) {
            return None;
        }
        candidate.push(component);
    }
    let root = root.canonicalize().ok()?;
    let mut resolved = candidate.canonicalize().ok()?;
    if resolved.is_dir() {
        resolved = resolved.join("index.html").canonicalize().ok()?;
    }
    (resolved.starts_with(&root) && resolved.is_file()).then_some(resolved)
}

/// Not logged in: browsers go to the login page and come back; scripts get a 401.
async fn require_login(state: &WebState, headers: &HeaderMap, uri: &Uri) -> Result<(), Response> {
    match auth::authenticate(state, headers).await {
        Ok(_) => Ok(()),
        Err(err) => {
            let wants_html = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("text/html"));
            if wants_html && err.status == StatusCode::UNAUTHORIZED {
                let next: String = uri
                    .path()
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'/'
                        | b'-'
                        | b'_'
                        | b'.'
                        | b'~' => (b as char).to_string(),
                        other => format!("%{other:02X}"),
                    })
                    .collect();
                Err(Redirect::to(&format!("/login?next={next}")).into_response())
            } else {
                Err(err.into_response())
            }
        }
    }
}

async fn serve(
    state: &WebState,
    name: &str,
    path: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> Response {
    if let Err(response) = require_login(state, headers, uri).await {
        return response;
    }
    if !valid_component(name) {
        return ApiError::not_found(format!("no app '{name}'")).into_response();
    }
    let root = state.ctx.data_dir.join(APPS_DIR).join(name);
    if !root.is_dir() {
        return ApiError::not_found(format!(
            "no app '{name}': put its files in {}",
            root.display()
        ))
        .into_response();
    }
    let Some(file) = resolve(&root, path) else {
        return ApiError::not_found(format!("no file '{path}' in app '{name}'")).into_response();
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let mime = mime_guess::from_path(&file).first_or_octet_stream();
            let mut response = Body::from(bytes).into_response();
            if let Ok(value) = HeaderValue::from_str(mime.as_ref()) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            // Apps change on disk without a restart; let the browser revalidate.
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response.headers_mut().insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(APP_CSP),
            );
            response
        }
        Err(err) => ApiError::internal("cannot read the app file", err).into_response(),
    }
}

pub async fn app_root(UrlPath(name): UrlPath<String>) -> Redirect {
    Redirect::permanent(&format!("/apps/{name}/"))
}

pub async fn app_index(
    State(state): State<WebState>,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    serve(&state, &name, "", &headers, &uri).await
}

pub async fn app_file(
    State(state): State<WebState>,
    UrlPath((name, path)): UrlPath<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    serve(&state, &name, &path, &headers, &uri).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_leave_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("hello");
        std::fs::create_dir_all(root.join("js")).unwrap();
        std::fs::write(root.join("index.html"), "hi").unwrap();
        std::fs::write(root.join("js/app.js"), "x").unwrap();
        std::fs::write(root.join(".secret"), "x").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "x").unwrap();
        assert!(resolve(&root, "").unwrap().ends_with("index.html"));
        assert!(resolve(&root, "js/app.js").is_some());
        assert!(
            resolve(&root, "js/").is_none(),
            "directory without index.html"
        );
        assert!(resolve(&root, "../outside.txt").is_none());
        assert!(resolve(&root, "js/../../outside.txt").is_none());
        assert!(resolve(&root, ".secret").is_none());
        assert!(resolve(&root, "..\\outside.txt").is_none());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("link.txt"))
                .unwrap();
            assert!(
                resolve(&root, "link.txt").is_none(),
                "symlink out of the app"
            );
        }
    }
}
