//! `/mqtt`: MQTT over WebSocket on the web port, for the dashboard and user apps. The caller
//! is authenticated like any API request (session cookie or bearer token) and the connection
//! is handed to the broker already authenticated, with the permissions of the caller's role
//! (a viewer cannot publish commands).

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use broker::auth::{AuthError, Authenticator, Identity, Transport};
use bytes::{Buf, BytesMut};
use codec::{ConnAck, ConnAckProperties, Packet, ReasonCode};
use hyper_util::rt::TokioIo;
use proto::acl::RolePermissions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
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
    let registry = state.ctx.registry.clone();
    let limits = &state.ctx.config.limits;
    let defaults = broker::Limits::default();
    let connect_timeout = limits
        .connect_timeout_secs
        .map(Duration::from_secs)
        .unwrap_or(defaults.connect_timeout);
    let max_packet = limits.max_packet_size.unwrap_or(defaults.max_packet_size);
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
        let mut stream = broker::ws::WsStream::new(ws);
        // The client-id rule ("a device's id is reserved to that device") is checked here,
        // before the broker attaches a session: the broker does not authenticate this
        // connection, so it would otherwise let a viewer take over a device's session.
        let read = tokio::time::timeout(connect_timeout, first_connect(&mut stream, max_packet));
        let Ok((prefix, connect)) = read.await else {
            tracing::debug!(peer = %meta.peer, "/mqtt: no CONNECT within the connect timeout");
            return;
        };
        if let Some(connect) = connect
            && let Err(err) = registry
                .authorize_client_id(&identity, &connect.client_id)
                .await
        {
            tracing::warn!(peer = %meta.peer, principal = %identity.principal, client_id = %connect.client_id, "refused /mqtt CONNECT: {err}");
            refuse(&mut stream, connect.protocol, &err).await;
            return;
        }
        let stream = Prefixed {
            prefix,
            inner: stream,
        };
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

/// Reads until the first packet, a CONNECT, is complete. Returns the bytes read (the broker
/// reads them again) and the CONNECT, or no CONNECT when the stream ended or the bytes are
/// not one (the broker then refuses them the way it refuses any malformed start).
async fn first_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_packet: u32,
) -> (BytesMut, Option<Box<codec::Connect>>) {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        // Decode a copy: the broker must see every byte, including the CONNECT.
        let mut probe = buf.clone();
        match codec::decode(&mut probe, None, max_packet) {
            Ok(Some(Packet::Connect(connect))) => return (buf, Some(connect)),
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return (buf, None),
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return (buf, None),
            Ok(_) => {}
        }
    }
}

/// Answers a CONNECT refused by the client-id rule with a CONNACK, then closes.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: codec::ProtocolVersion,
    err: &AuthError,
) {
    let reason_code = match err {
        AuthError::ClientIdNotValid(_) => ReasonCode::ClientIdentifierNotValid,
        AuthError::Unavailable(_) => ReasonCode::ServerUnavailable,
        AuthError::ServerBusy(_) => ReasonCode::ServerBusy,
        _ => ReasonCode::NotAuthorized,
    };
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code,
        properties: ConnAckProperties {
            reason_string: version.is_v5().then(|| err.to_string()),
            ..ConnAckProperties::default()
        },
    });
    let mut out = BytesMut::new();
    if codec::encode(&connack, version, &mut out).is_ok() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
    let _ = stream.shutdown().await;
}

/// A stream whose first bytes were already read (the CONNECT): they are served again first.
struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
