//! `/metrics` (Prometheus text format: the broker's counters and the web tier's) and
//! `/healthz` (liveness plus a database round trip).

use std::{fmt::Write as _, sync::atomic::Ordering};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use proto::acl::Role;

use super::{WebState, auth::Principal, error::ApiResult};

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP devicecloud_{name} {help}");
    let _ = writeln!(out, "# TYPE devicecloud_{name} {kind}");
    let _ = writeln!(out, "devicecloud_{name} {value}");
}

/// The metrics text (admins only: it reveals fleet size and activity).
pub async fn metrics(State(state): State<WebState>, principal: Principal) -> ApiResult<Response> {
    principal.require(Role::Admin)?;
    let s = state.ctx.broker.stats();
    let mut out = String::with_capacity(4096);
    metric(
        &mut out,
        "mqtt_clients_connected",
        "gauge",
        "Connected MQTT clients.",
        s.clients_connected,
    );
    metric(
        &mut out,
        "mqtt_sessions",
        "gauge",
        "MQTT sessions, connected or not.",
        s.sessions,
    );
    metric(
        &mut out,
        "mqtt_connections_total",
        "counter",
        "MQTT connections accepted.",
        s.connections_total,
    );
    metric(
        &mut out,
        "mqtt_connections_refused_total",
        "counter",
        "MQTT CONNECTs refused.",
        s.connections_refused,
    );
    metric(
        &mut out,
        "mqtt_messages_received_total",
        "counter",
        "PUBLISH packets received.",
        s.messages_received,
    );
    metric(
        &mut out,
        "mqtt_messages_sent_total",
        "counter",
        "PUBLISH packets sent.",
        s.messages_sent,
    );
    metric(
        &mut out,
        "mqtt_bytes_received_total",
        "counter",
        "Bytes received from MQTT clients.",
        s.bytes_received,
    );
    metric(
        &mut out,
        "mqtt_bytes_sent_total",
        "counter",
        "Bytes sent to MQTT clients.",
        s.bytes_sent,
    );
    metric(
        &mut out,
        "mqtt_messages_dropped_total",
        "counter",
        "Messages not delivered (queue full, too big).",
        s.messages_dropped,
    );
    metric(
        &mut out,
        "mqtt_publish_denied_total",
        "counter",
        "PUBLISHes refused by the ACL.",
        s.publish_denied,
    );
    metric(
        &mut out,
        "mqtt_subscribe_denied_total",
        "counter",
        "Subscriptions refused by the ACL.",
        s.subscribe_denied,
    );
    metric(
        &mut out,
        "mqtt_malformed_packets_total",
        "counter",
        "Malformed MQTT packets.",
        s.malformed_packets,
    );
    metric(
        &mut out,
        "mqtt_topic_limit_exceeded_total",
        "counter",
        "Topic names or filters refused for too many levels or bytes.",
        s.topic_limit_exceeded,
    );
    metric(
        &mut out,
        "mqtt_retained_quota_exceeded_total",
        "counter",
        "Retained PUBLISH packets refused by the per-principal retained quota.",
        s.retained_quota_exceeded,
    );
    metric(
        &mut out,
        "mqtt_session_limit_exceeded_total",
        "counter",
        "CONNECTs refused by the sessions-per-principal limit.",
        s.session_limit_exceeded,
    );
    metric(
        &mut out,
        "mqtt_client_id_refused_total",
        "counter",
        "CONNECTs refused because the client id belongs to another principal.",
        s.client_id_refused,
    );
    metric(
        &mut out,
        "mqtt_connect_too_large_total",
        "counter",
        "CONNECT packets over the pre-authentication size limit.",
        s.connect_too_large,
    );
    metric(
        &mut out,
        "mqtt_subscriptions_revoked_total",
        "counter",
        "Restored subscriptions removed because their principal lost the right.",
        s.subscriptions_revoked,
    );
    metric(
        &mut out,
        "mqtt_retained_messages",
        "gauge",
        "Retained messages stored.",
        s.retained_messages,
    );
    metric(
        &mut out,
        "mqtt_subscriptions",
        "gauge",
        "Active subscriptions.",
        s.subscriptions,
    );
    metric(
        &mut out,
        "uptime_seconds",
        "counter",
        "Seconds since the broker started.",
        s.uptime_secs,
    );
    let c = &state.counters;
    metric(
        &mut out,
        "http_requests_total",
        "counter",
        "HTTP requests handled.",
        c.requests.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "http_logins_failed_total",
        "counter",
        "Failed dashboard logins.",
        c.logins_failed.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "commands_sent_total",
        "counter",
        "Commands sent through the API.",
        c.commands_sent.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "commands_pending",
        "gauge",
        "Commands waiting for their device.",
        state.ctx.twin.pending_commands() as u64,
    );
    metric(
        &mut out,
        "live_clients",
        "gauge",
        "Open live streams (WebSocket).",
        c.live_clients.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "mqtt_ws_clients",
        "gauge",
        "MQTT over WebSocket connections on the web port.",
        c.mqtt_ws_clients.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "http_connections",
        "gauge",
        "Open HTTP connections on the web port.",
        c.http_connections.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "http_connections_refused_total",
        "counter",
        "HTTP connections closed at once because limits.max_http_connections were open.",
        c.http_connections_refused.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "websocket_origin_refused_total",
        "counter",
        "WebSocket upgrades refused because a browser sent another site's Origin.",
        c.origin_refused.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "bus_dropped_over_share_total",
        "counter",
        "Messages for the twin and ingest dropped because their device had bus.per_device_queue waiting.",
        state
            .ctx
            .bus_counters
            .dropped_over_share
            .load(Ordering::Relaxed),
    );
    let t = state.ctx.twin.counters();
    metric(
        &mut out,
        "state_names_refused_total",
        "counter",
        "State reports refused: the device has telemetry.max_state_names_per_device names already.",
        t.state_names_refused.load(Ordering::Relaxed),
    );
    let i = state.ctx.ingest.counters();
    metric(
        &mut out,
        "telemetry_timestamp_refused_total",
        "counter",
        "Readings refused: stamped before telemetry.min_timestamp_ms or beyond telemetry.max_future_secs.",
        i.timestamp_refused.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "telemetry_sensors_refused_total",
        "counter",
        "Readings refused: the device has telemetry.max_sensors_per_device sensors already.",
        i.sensors_refused.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "telemetry_invalid_total",
        "counter",
        "Messages on telemetry topics that are not valid readings.",
        i.invalid.load(Ordering::Relaxed),
    );
    let g = state.ctx.registry.password_gate().counters();
    metric(
        &mut out,
        "auth_password_checks_running",
        "gauge",
        "Password checks (argon2) running now.",
        g.running.load(Ordering::Relaxed) as u64,
    );
    metric(
        &mut out,
        "auth_password_checks_max_running",
        "gauge",
        "Most password checks that ran at once since the start (bounded by auth.max_concurrent_password_checks).",
        g.max_running.load(Ordering::Relaxed) as u64,
    );
    metric(
        &mut out,
        "auth_queue_depth",
        "gauge",
        "Password checks waiting for a slot.",
        g.queued.load(Ordering::Relaxed) as u64,
    );
    metric(
        &mut out,
        "auth_busy_refused_total",
        "counter",
        "Logins refused with 503 / MQTT 0x89 because the password-check queue was full.",
        g.busy_refused.load(Ordering::Relaxed),
    );
    metric(
        &mut out,
        "auth_password_checks_total",
        "counter",
        "Password checks completed.",
        g.checked.load(Ordering::Relaxed),
    );
    let devices = state.ctx.twin.devices();
    metric(
        &mut out,
        "devices_online",
        "gauge",
        "Devices currently online.",
        devices.values().filter(|d| d.online).count() as u64,
    );
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// 200 when the server can reach its database; 503 otherwise.
pub async fn healthz(State(state): State<WebState>) -> Response {
    match state.ctx.store.change_counter().await {
        Ok(_) => Json(serde_json::json!({ "status": "ok" })).into_response(),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "status": "unavailable", "error": format!("database: {err}") }),
            ),
        )
            .into_response(),
    }
}
