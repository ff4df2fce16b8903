//! `GET /api/v1/devices/{id}/telemetry/{sensor}?from=&to=&points=`: a time range of readings,
//! downsampled by the store into at most `points` buckets (min/avg/max/count).

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    WebState,
    auth::Principal,
    error::{ApiError, ApiResult},
};
use crate::twin::now_ms;

/// Points when the caller does not say.
pub const DEFAULT_POINTS: u32 = 500;
/// Most points one query may ask for (the store's limit too).
pub const MAX_POINTS: u32 = 10_000;
/// Latest timestamp a range may name: the end of year 9999 (ms). Bounding both ends keeps the
/// bucket arithmetic far from overflow (schemathesis found `from=-1e18&to=1e18` panicking).
pub const MAX_TS: i64 = 253_402_300_799_999;

/// Range when the caller does not say.
pub const DEFAULT_RANGE_MS: i64 = 3600 * 1000;

#[derive(Debug, Deserialize)]
pub struct RangeQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub points: Option<String>,
}

fn number<T: std::str::FromStr>(field: &'static str, raw: Option<&str>) -> ApiResult<Option<T>> {
    raw.map(|s| {
        s.parse::<T>().map_err(|_| {
            ApiError::bad_field(field, format!("'{field}' must be an integer, got '{s}'"))
        })
    })
    .transpose()
}

pub async fn query(
    State(state): State<WebState>,
    _principal: Principal,
    Path((device, sensor)): Path<(String, String)>,
    range: Result<Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    // Axum's own rejection is plain text; the API answers JSON errors everywhere.
    let Query(range) =
        range.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    let to = number::<i64>("to", range.to.as_deref())?.unwrap_or_else(|| now_ms() + 1);
    let from = number::<i64>("from", range.from.as_deref())?
        .unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS).max(0));
    let points = number::<u32>("points", range.points.as_deref())?.unwrap_or(DEFAULT_POINTS);
    for (field, value) in [("from", from), ("to", to)] {
        if !(0..=MAX_TS).contains(&value) {
            return Err(ApiError::bad_field(
                field,
                format!("'{field}' must be 0 to {MAX_TS} (ms since the epoch), not {value}"),
            ));
        }
    }
    if to <= from {
        return Err(ApiError::bad_field(
            "to",
            format!("'to' ({to}) must be after 'from' ({from})"),
        ));
    }
    if points == 0 || points > MAX_POINTS {
        return Err(ApiError::bad_field(
            "points",
            format!("ask for 1 to {} points, not {points}", MAX_POINTS),
        ));
    }
    if state
        .ctx
        .store
        .devices()
        .get(&device)
        .await
        .map_err(|e| ApiError::internal("cannot read the device", e))?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no device '{device}'; see GET /api/v1/devices"
        )));
    }
    let series = state
        .ctx
        .store
        .telemetry()
        .query(&device, &sensor, from, to, points)
        .await
        .map_err(|e| match e {
            store::Error::Invalid { field, message } => ApiError::bad_field(field, message),
            other => ApiError::internal("cannot read telemetry", other),
        })?;
    let points: Vec<Value> = series
        .points
        .iter()
        .map(|b| json!({ "ts": b.ts, "min": b.min, "avg": b.avg, "max": b.max, "count": b.count }))
        .collect();
    Ok(Json(json!({
        "device": device,
        "sensor": sensor,
        "from": from,
        "to": to,
        "bucket_ms": series.bucket_ms,
        "points": points,
    })))
}
