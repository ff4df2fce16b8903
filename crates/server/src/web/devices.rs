//! `GET /api/v1/devices` and `GET /api/v1/devices/{id}`: the registry merged with the twin.

use axum::{
    Json,
    extract::{Path, State},
};
use proto::payload::Meta;
use serde_json::{Value, json};

use super::{
    WebState,
    auth::Principal,
    error::{ApiError, ApiResult},
};
use crate::twin::DeviceState;

fn capabilities(meta: Option<&Meta>) -> Value {
    match meta {
        Some(meta) => {
            json!({ "outputs": meta.outputs, "inputs": meta.inputs, "sensors": meta.sensors, "agent": meta.agent })
        }
        None => json!({ "outputs": [], "inputs": [], "sensors": [] }),
    }
}

/// The summary of one device: registry facts, overridden by what the twin saw live.
fn summary(record: &store::Device, twin: Option<&DeviceState>) -> Value {
    let stored_meta: Option<Meta> = record
        .meta
        .clone()
        .and_then(|j| serde_json::from_value(j).ok());
    let meta = twin.and_then(|t| t.meta.as_ref()).or(stored_meta.as_ref());
    let online = twin.map_or(record.online, |t| t.online);
    let last_seen = twin.and_then(|t| t.last_seen).or(record.last_seen);
    json!({
        "id": record.id,
        "online": online,
        "last_seen": last_seen,
        "capabilities": capabilities(meta),
    })
}

pub async fn list(
    State(state): State<WebState>,
    _principal: Principal,
) -> ApiResult<Json<Vec<Value>>> {
    let records = state
        .ctx
        .store
        .devices()
        .list()
        .await
        .map_err(|e| ApiError::internal("cannot list devices", e))?;
    let twins = state.ctx.twin.devices();
    Ok(Json(
        records
            .iter()
            .map(|r| summary(r, twins.get(&r.id)))
            .collect(),
    ))
}

pub async fn get(
    State(state): State<WebState>,
    _principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = state
        .ctx
        .store
        .devices()
        .get(&id)
        .await
        .map_err(|e| ApiError::internal("cannot read the device", e))?
        .ok_or_else(|| ApiError::not_found(format!("no device '{id}'; see GET /api/v1/devices")))?;
    let twin = state.ctx.twin.device(&id);
    let mut body = summary(&record, twin.as_ref());
    let twin = twin.unwrap_or_default();
    body["reported"] = serde_json::to_value(&twin.reported).unwrap_or(Value::Null);
    body["desired"] = serde_json::to_value(&twin.desired).unwrap_or(Value::Null);
    body["telemetry"] = serde_json::to_value(&twin.telemetry).unwrap_or(Value::Null);
    body["created_at"] = json!(record.created_at);
    body["credential"] = json!(record.credential.kind());
    Ok(Json(body))
}
