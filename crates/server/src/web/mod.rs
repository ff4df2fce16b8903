//! The web tier: the HTTP API (`/api/v1`), the live stream, MQTT over WebSocket (`/mqtt`), the
//! embedded dashboard and the user apps (`/apps/NAME/`), on one HTTPS port.
//!
//! [`app`] builds the router (testable without a socket); [`serve`] runs it on a listener,
//! with TLS from a [`ReloadableTls`] (or plain HTTP when configured), and shuts down gracefully.

pub mod admin;
pub mod apps;
pub mod assets;
pub mod auth;
pub mod commands;
pub mod devices;
pub mod enroll;
pub mod error;
pub mod live;
pub mod metrics;
pub mod mqtt_ws;
pub mod openapi;
pub mod telemetry;
pub mod tls;

use std::{
    future::Future,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderMap, header},
    routing::{get, post, put},
};
use broker::tls::ReloadableTls;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt as _;

use crate::{backoff::Backoff, context::ServerContext};
use error::ApiError;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body (device bundles and CSRs are a few kB).
const MAX_BODY: usize = 256 * 1024;

/// Per-connection facts the handlers need: who is calling and whether the channel is encrypted.
#[derive(Debug, Clone, Copy)]
pub struct ConnMeta {
    pub peer: SocketAddr,
    pub tls: bool,
}

impl Default for ConnMeta {
    /// Requests without connection facts (tests through `oneshot`) count as encrypted local ones.
    fn default() -> Self {
        ConnMeta {
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: true,
        }
    }
}

/// Counters exported on `/metrics` next to the broker's.
#[derive(Debug, Default)]
pub struct WebCounters {
    pub requests: AtomicU64,
    pub logins_failed: AtomicU64,
    pub commands_sent: AtomicU64,
    pub live_clients: AtomicU64,
    pub mqtt_ws_clients: AtomicU64,
    pub http_connections: AtomicU64,
    pub http_connections_refused: AtomicU64,
    pub origin_refused: AtomicU64,
}

/// What every handler gets.
#[derive(Clone)]
pub struct WebState {
    pub ctx: ServerContext,
    pub login_backoff: Arc<Mutex<Backoff>>,
    pub counters: Arc<WebCounters>,
    /// Becomes `true` when the server shuts down; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

impl WebState {
    pub fn new(ctx: ServerContext) -> WebState {
        let (shutdown_tx, shutdown) = watch::channel(false);
        // Dashboard logins and enrollment codes have their own policy (the other `[auth]`
        // settings tune MQTT CONNECTs): `web_failures_before_backoff` tries, then the address
        // or account waits (and gets 429) for 5 s, doubling with every failure up to 5 minutes.
        let auth = crate::config::AuthConfig {
            failures_before_backoff: ctx.config.auth.web_failures_before_backoff,
            backoff_initial_ms: 5_000,
            backoff_max_secs: 300,
            failure_memory_secs: 900,
            ..ctx.config.auth.clone()
        };
        WebState {
            login_backoff: Arc::new(Mutex::new(Backoff::new(&auth))),
            ctx,
            counters: Arc::new(WebCounters::default()),
            shutdown,
            shutdown_tx: Arc::new(shutdown_tx),
        }
    }

    /// Ends live streams (called by [`serve`] at shutdown).
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }
}

/// The whole web tier as one router.
pub fn app(ctx: ServerContext) -> Router {
    router(WebState::new(ctx))
}

/// Every route, in one place (the OpenAPI test walks [`ROUTES`] against this).
pub fn router(state: WebState) -> Router {
    let api = Router::new()
        .route("/login", post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/me", get(auth::me))
        .route("/devices", get(devices::list).post(admin::add_device))
        .route(
            "/devices/{id}",
            get(devices::get).delete(admin::remove_device),
        )
        .route(
            "/devices/{id}/properties/{name}",
            put(commands::put_property),
        )
        .route("/commands/{id}", get(commands::get))
        .route("/devices/{id}/telemetry/{sensor}", get(telemetry::query))
        .route("/live", get(live::websocket))
        .route("/events", get(live::sse))
        .route("/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/tokens/{name}", axum::routing::delete(admin::delete_token))
        .route("/users", get(admin::list_users).post(admin::create_user))
        .route("/users/{name}", axum::routing::delete(admin::delete_user))
        .route("/enroll", post(enroll::enroll))
        .route("/openapi.json", get(openapi::document))
        .fallback(error::api_not_found);
    let counters = state.counters.clone();
    let body_timeout_secs = state.ctx.config.web.body_read_timeout_secs;
    Router::new()
        .nest("/api/v1", api)
        .route("/mqtt", get(mqtt_ws::upgrade))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(metrics::healthz))
        .route("/apps/{name}", get(apps::app_root))
        .route("/apps/{name}/", get(apps::app_index))
        .route("/apps/{name}/{*path}", get(apps::app_file))
        .fallback(assets::static_file)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_secs(body_timeout_secs.max(1)),
        ))
        .layer(axum::middleware::map_request(move |req: Request| {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            std::future::ready(req)
        }))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(strict_transport_security))
        .with_state(state)
}

/// HSTS on every answer sent over TLS: browsers that saw the server once never fall back to
/// plain HTTP (a year; not `includeSubDomains`, the server does not own its parent domain).
async fn strict_transport_security(
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let tls = request
        .extensions()
        .get::<ConnMeta>()
        .copied()
        .unwrap_or_default()
        .tls;
    let mut response = next.run(request).await;
    if tls {
        response.headers_mut().insert(
            axum::http::header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static("max-age=31536000"),
        );
    }
    response
}

/// Refuses a WebSocket upgrade that a browser sends from another site's page. Browsers always
/// send `Origin` on WebSocket handshakes and WebSockets are not covered by CORS, so without
/// this check any page could open `/mqtt` with the visitor's cookie. Requests without `Origin`
/// (scripts, MQTT clients with a bearer token) are not from a browser page and pass.
pub fn check_websocket_origin(state: &WebState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same = match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "https" | "http"))
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        _ => false,
    };
    if same {
        return Ok(());
    }
    state
        .counters
        .origin_refused
        .fetch_add(1, Ordering::Relaxed);
    Err(ApiError::forbidden(format!(
        "WebSocket connections from pages of another site are refused (Origin {:?} is not this server); open the page from this server, or connect without an Origin header using a bearer token",
        origin.to_str().unwrap_or("(not text)")
    )))
}

/// Every route the router serves, as `(method, OpenAPI path)`.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/login"),
    ("post", "/api/v1/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/devices"),
    ("post", "/api/v1/devices"),
    ("get", "/api/v1/devices/{id}"),
    ("delete", "/api/v1/devices/{id}"),
    ("put", "/api/v1/devices/{id}/properties/{name}"),
    ("get", "/api/v1/commands/{id}"),
    ("get", "/api/v1/devices/{id}/telemetry/{sensor}"),
    ("get", "/api/v1/live"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/tokens"),
    ("post", "/api/v1/tokens"),
    ("delete", "/api/v1/tokens/{name}"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("delete", "/api/v1/users/{name}"),
    ("post", "/api/v1/enroll"),
    ("get", "/api/v1/openapi.json"),
    ("get", "/mqtt"),
    ("get", "/metrics"),
    ("get", "/healthz"),
    ("get", "/apps/{name}/{path}"),
];

async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let headers = response.headers_mut();
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("same-origin"));
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    response
}

/// Serves the web tier on `listener` until `shutdown` completes, then lets open requests
/// finish (up to a few seconds). With `tls`, every connection must complete a TLS handshake
/// within [`HANDSHAKE_TIMEOUT`]; without, it is plain HTTP (the caller decides when that is allowed).
pub async fn serve(
    ctx: ServerContext,
    listener: TcpListener,
    tls: Option<ReloadableTls>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let state = WebState::new(ctx);
    serve_state(state, listener, tls, shutdown).await;
}

pub async fn serve_state(
    state: WebState,
    listener: TcpListener,
    tls: Option<ReloadableTls>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let app = router(state.clone());
    let tls = tls.map(|tls| Arc::new(tls::WebTls::new(tls, state.ctx.ca.cert_der())));
    let web = state.ctx.config.web.clone();
    let header_timeout = Duration::from_secs(web.header_read_timeout_secs.max(1));
    // Each connection holds a slot until it ends; beyond the limit new ones are closed at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(web.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("web listener: accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    state.counters.http_connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "web: refused a connection: web.max_connections are open");
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let counters = state.counters.clone();
                let tls = tls.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    counters.http_connections.fetch_add(1, Ordering::Relaxed);
                    match tls {
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_connection(stream, ConnMeta { peer, tls: true }, app, header_timeout, stop).await,
                                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                        None => serve_connection(tcp, ConnMeta { peer, tls: false }, app, header_timeout, stop).await,
                    }
                    counters.http_connections.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "web: closing connections that did not finish in time"
        );
        connections.abort_all();
    }
}

/// Completes once the watched flag is `true` (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}

async fn serve_connection<S>(
    stream: S,
    meta: ConnMeta,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = app.map_request(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(meta);
        req.map(axum::body::Body::new)
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(peer = %meta.peer, "HTTP connection ended: {err}");
            }
        }
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
