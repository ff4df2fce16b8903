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
    routing::{get, post, put},
};
use broker::tls::ReloadableTls;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::watch};
use tower::ServiceExt as _;

use crate::{backoff::Backoff, context::ServerContext};

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
        // Dashboard logins and enrollment codes have their own, fixed policy (the `[auth]`
        // settings tune MQTT CONNECTs): five tries, then the address waits (and gets 429) for
        // 5 s, doubling with every further failure up to 5 minutes.
        let auth = crate::config::AuthConfig {
            failures_before_backoff: 5,
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
        .layer(axum::middleware::map_request(move |req: Request| {
            counters.requests.fetch_add(1, Ordering::Relaxed);
            std::future::ready(req)
        }))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
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
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let tls = tls.clone();
                let stop = stop_rx.clone();
                connections.spawn(async move {
                    match tls {
                        Some(tls) => {
                            let acceptor = tls.acceptor();
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(stream)) => serve_connection(stream, ConnMeta { peer, tls: true }, app, stop).await,
                                Ok(Err(err)) => tracing::debug!(%peer, "TLS handshake failed: {err}"),
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                        None => serve_connection(tcp, ConnMeta { peer, tls: false }, app, stop).await,
                    }
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
        .header_read_timeout(Duration::from_secs(30));
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
