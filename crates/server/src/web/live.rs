//! The live stream: every presence, state, meta, telemetry and command change the twin sees,
//! as JSON messages over a WebSocket (`/api/v1/live`) or server-sent events (`/api/v1/events`).
//! `?device=ID` narrows it to one device. A listener that falls behind gets
//! `{"type":"lagged","missed":N}` and should re-read the REST state.

use std::{convert::Infallible, sync::Arc, sync::atomic::Ordering, time::Duration};

use axum::{
    extract::{
        Query, State,
        rejection::QueryRejection,
        ws::{Message, WebSocket, WebSocketUpgrade},
    },
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{SinkExt as _, StreamExt as _, stream};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};

use super::{WebState, auth::Principal};
use crate::twin::LiveEvent;

#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    pub device: Option<String>,
}

/// The next message for a listener, or `None` when the stream ends.
async fn next(
    rx: &mut broadcast::Receiver<Arc<LiveEvent>>,
    device: Option<&str>,
) -> Option<String> {
    loop {
        match rx.recv().await {
            Ok(event) => {
                if device.is_none_or(|d| d == event.device()) {
                    return Some(event.to_json());
                }
            }
            Err(RecvError::Lagged(missed)) => {
                return Some(format!(r#"{{"type":"lagged","missed":{missed}}}"#));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

pub async fn websocket(
    State(state): State<WebState>,
    headers: axum::http::HeaderMap,
    _principal: Principal,
    query: Result<Query<LiveQuery>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(e) => return bad_query(e).into_response(),
    };
    if let Err(refused) = super::check_websocket_origin(&state, &headers) {
        return refused.into_response();
    }
    // Subscribe before the upgrade completes so nothing between the answer and the first
    // read is missed.
    let rx = state.ctx.twin.subscribe();
    upgrade
        .on_upgrade(move |socket| run_websocket(socket, rx, query.device, state))
        .into_response()
}

async fn run_websocket(
    socket: WebSocket,
    mut rx: broadcast::Receiver<Arc<LiveEvent>>,
    device: Option<String>,
    state: WebState,
) {
    state.counters.live_clients.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut incoming) = socket.split();
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    loop {
        tokio::select! {
            message = next(&mut rx, device.as_deref()) => {
                let Some(message) = message else { break };
                if sink.send(Message::Text(message.into())).await.is_err() {
                    break;
                }
            }
            frame = incoming.next() => match frame {
                // The client only ever closes; anything else it sends is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            () = super::stopped(&mut shutdown) => {
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        }
    }
    state.counters.live_clients.fetch_sub(1, Ordering::Relaxed);
}

pub async fn sse(
    State(state): State<WebState>,
    _principal: Principal,
    query: Result<Query<LiveQuery>, QueryRejection>,
) -> Result<impl IntoResponse, super::error::ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let rx = state.ctx.twin.subscribe();
    let shutdown = state.shutdown.clone();
    let events = stream::unfold(
        (rx, query.device, shutdown),
        |(mut rx, device, mut shutdown)| async move {
            if *shutdown.borrow() {
                return None;
            }
            let message = tokio::select! {
                message = next(&mut rx, device.as_deref()) => message?,
                () = super::stopped(&mut shutdown) => return None,
            };
            Some((
                Ok::<_, Infallible>(Event::default().data(message)),
                (rx, device, shutdown),
            ))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Axum's own rejection is plain text; the API answers JSON errors everywhere.
fn bad_query(e: QueryRejection) -> super::error::ApiError {
    super::error::ApiError::bad_field("device", format!("bad query string: {}", e.body_text()))
}
