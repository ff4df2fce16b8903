//! `/mqtt`: MQTT over WebSocket on the web port, for the dashboard and user apps. The caller
//! is authenticated like any API request (session cookie or bearer token) and the connection
//! is handed to the broker already authenticated, with the permissions of the caller's role
//! (a viewer cannot publish commands).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use broker::auth::{Identity, Transport};
use hyper_util::rt::TokioIo;
use proto::acl::RolePermissions;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};

use super::{ConnMeta, WebState, auth, error::ApiError};
use crate::permissions::AclPermissions;

/// Subprotocols we accept, preferred first (`mqttv3.1` is what MQTT 3.1 clients offer).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];
/// Largest WebSocket message (MQTT packets are limited separately by the broker).
const MAX_MESSAGE: usize = 1 << 20;

fn chosen_subprotocol(headers: &HeaderMap) -> Result<&'static str, ApiError> {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    SUBPROTOCOLS
        .into_iter()
        .find(|p| offered.contains(p))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "offer the WebSocket subprotocol \"mqtt\" (offered: {offered:?})"
            ))
        })
}

pub async fn upgrade(
    State(state): State<WebState>,
    mut request: Request,
) -> Result<Response, ApiError> {
    super::check_websocket_origin(&state, request.headers())?;
    let principal = auth::authenticate(&state, request.headers()).await?;
    let headers = request.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| is_upgrade)
    else {
        return Err(ApiError::bad_request(
            "/mqtt is MQTT over WebSocket: open it with a WebSocket client (subprotocol mqtt)",
        ));
    };
    let protocol = chosen_subprotocol(headers)?;
    let accept = derive_accept_key(key.as_bytes());
    let meta = request
        .extensions()
        .get::<ConnMeta>()
        .copied()
        .unwrap_or_default();
    let Some(on_upgrade) = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
    else {
        return Err(ApiError::bad_request(
            "this connection cannot be upgraded to a WebSocket (HTTP/1.1 required)",
        ));
    };

    let identity = Identity {
        principal: principal.mqtt_principal(),
        permissions: Arc::new(AclPermissions(RolePermissions::new(principal.role))),
    };
    // The broker does not authenticate this connection, so tell the revocation watcher what
    // it relies on: logout, expiry, a role change or a revoked token then closes it.
    state
        .ctx
        .registry
        .remember(&identity.principal, principal.mqtt_credential());
    let broker = state.ctx.broker.clone();
    let counters = state.counters.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(peer = %meta.peer, "MQTT WebSocket upgrade failed: {err}");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        // The broker checks the client-id rule (`Authenticator::authorize_client_id`) for this
        // pre-authenticated connection too, so a viewer cannot take over a device's session.
        let stream = broker::ws::WsStream::new(ws);
        counters.mqtt_ws_clients.fetch_add(1, Ordering::Relaxed);
        let info = broker::ConnInfo {
            peer: meta.peer,
            transport: if meta.tls {
                Transport::Wss
            } else {
                Transport::Ws
            },
            client_cert: None,
            preauthenticated: Some(identity),
        };
        broker.serve_connection(stream, info).await;
        counters.mqtt_ws_clients.fetch_sub(1, Ordering::Relaxed);
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| ApiError::internal("bad accept key", e))?,
    );
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    Ok(response)
}
