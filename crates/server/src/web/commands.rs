//! `PUT /api/v1/devices/{id}/properties/{name}` (send a command, wait for the device to confirm
//! it) and `GET /api/v1/commands/{id}` (poll one).

use std::sync::atomic::Ordering;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    WebState,
    auth::{Operator, Principal},
    error::{ApiError, ApiResult, parse_json},
};
use crate::twin::{CommandError, CommandResult};

#[derive(Debug, Deserialize)]
pub struct PutQuery {
    /// `false`: answer 202 at once with the command id.
    #[serde(default = "yes")]
    pub wait: bool,
}

fn yes() -> bool {
    true
}

fn command_error(err: CommandError) -> ApiError {
    let status = match &err {
        CommandError::UnknownDevice(_) => StatusCode::NOT_FOUND,
        CommandError::Offline { .. } | CommandError::NoCapabilities(_) => StatusCode::CONFLICT,
        CommandError::Invalid(_) => StatusCode::BAD_REQUEST,
        CommandError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        CommandError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut api = ApiError::new(status, err.to_string());
    if matches!(err, CommandError::Invalid(_)) {
        api.field = Some("value".to_string());
    }
    api
}

pub async fn put_property(
    State(state): State<WebState>,
    Operator(principal): Operator,
    Path((device, name)): Path<(String, String)>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> ApiResult<Response> {
    let Query(query) = query
        .map_err(|e| ApiError::bad_field("wait", format!("bad query string: {}", e.body_text())))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_field(
            "value",
            "empty body: send the JSON value to set, e.g. true",
        ));
    }
    let value: Value = parse_json(&body).map_err(|mut e| {
        e.field = Some("value".to_string());
        e.message = format!(
            "the body must be the JSON value to set, e.g. true or 21.5: {}",
            e.message
        );
        e
    })?;
    state.counters.commands_sent.fetch_add(1, Ordering::Relaxed);
    let result = state
        .ctx
        .twin
        .send_command_as(
            &device,
            &name,
            value,
            query.wait,
            Some(&principal.principal()),
        )
        .await
        .map_err(command_error)?;
    let status = if query.wait {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(result_json(&result))).into_response())
}

fn result_json(result: &CommandResult) -> Value {
    json!({
        "command_id": result.id,
        "device": result.device,
        "name": result.name,
        "value": result.value,
        "status": result.status,
    })
}

pub async fn get(
    State(state): State<WebState>,
    _principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = state
        .ctx
        .store
        .commands()
        .get(&id)
        .await
        .map_err(|e| ApiError::internal("cannot read the command", e))?;
    // The twin knows the newest outcome first; the store has who sent it and when.
    let recent = state.ctx.twin.command(&id);
    let mut body = match (&record, &recent) {
        (None, None) => return Err(ApiError::not_found(format!("no command '{id}'"))),
        (Some(r), _) => json!({
            "id": r.id, "device": r.device_id, "name": r.name, "value": r.value, "status": r.status,
            "error": r.error, "actor": r.actor, "created_at": r.created_at, "updated_at": r.updated_at,
        }),
        (None, Some(c)) => {
            json!({ "id": c.id, "device": c.device, "name": c.name, "value": c.value })
        }
    };
    if let Some(c) = recent {
        body["status"] = json!(c.status);
        body["error"] = json!(c.error);
        body["value"] = c.value;
    }
    Ok(Json(body))
}
