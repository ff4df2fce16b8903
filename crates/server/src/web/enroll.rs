//! `POST /api/v1/enroll`: a device spends its one-time code and gets its certificate.
//!
//! No login: the code is the credential. The device's key never leaves it (it sends a CSR);
//! the answer is its bundle without secrets plus the signed certificate. Failed attempts count
//! towards the same per-address backoff as logins.

use std::time::{Duration, Instant};

use axum::{
    Json,
    extract::State,
    response::{IntoResponse, Response},
};
use proto::bundle::{Bundle, Credentials};
use serde::Deserialize;
use store::{DeviceCredential, secret};

use super::{
    ConnMeta, WebState,
    error::{ApiError, ApiJson},
};
use crate::twin::now_ms;

#[derive(Debug, Deserialize)]
pub struct EnrollRequest {
    pub code: String,
    pub csr_pem: String,
}

/// The bundle every device of this server gets, with `credentials` filled in.
pub fn bundle_for(state: &WebState, device_id: &str, credentials: Credentials) -> Bundle {
    Bundle {
        device_id: device_id.to_string(),
        broker_urls: state.ctx.broker_urls.as_ref().clone(),
        api_url: state.ctx.api_url.as_deref().map(str::to_string),
        ca_pem: state.ctx.ca.cert_pem().to_string(),
        credentials,
    }
}

pub fn device_cert_validity(state: &WebState) -> Duration {
    Duration::from_secs(u64::from(state.ctx.config.certificates.device_days.max(1)) * 24 * 3600)
}

pub async fn enroll(
    State(state): State<WebState>,
    meta: Option<axum::Extension<ConnMeta>>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Response, ApiError> {
    let ip = meta.map(|m| m.0).unwrap_or_default().peer.ip();
    let banned = state
        .login_backoff
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .banned_for(ip, None, Instant::now());
    if let Some(ban) = banned {
        return Err(ApiError::backing_off(ban, ip));
    }
    if request.code.trim().is_empty() {
        return Err(ApiError::bad_field("code", "the enrollment code is empty"));
    }
    // Check the CSR before spending the code, so a broken request does not burn it.
    state
        .ctx
        .ca
        .sign_csr(&request.csr_pem, "csr-check", Duration::from_secs(60))
        .map_err(|e| ApiError::bad_field("csr_pem", e.to_string()))?;
    let device_id = match state
        .ctx
        .store
        .enroll()
        .consume(&secret::hash_enroll_code(&request.code), now_ms())
        .await
    {
        Ok(id) => id,
        Err(store::Error::EnrollCodeInvalid) => {
            state
                .login_backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_failure(ip, None, Instant::now());
            tracing::info!(%ip, "enrollment with an unknown, used or expired code");
            return Err(ApiError::unauthorized(
                store::Error::EnrollCodeInvalid.to_string(),
            ));
        }
        Err(e) => return Err(ApiError::internal("cannot check the enrollment code", e)),
    };
    let signed = state
        .ctx
        .ca
        .sign_csr(&request.csr_pem, &device_id, device_cert_validity(&state))
        .map_err(|e| ApiError::bad_field("csr_pem", e.to_string()))?;
    let credential = DeviceCredential::Certificate {
        serial_hex: signed.info.serial_hex.clone(),
        fingerprint_sha256: signed.info.fingerprint_sha256.clone(),
        not_after_ms: signed.info.not_after_unix.saturating_mul(1000),
    };
    state
        .ctx
        .store
        .devices()
        .set_credential(&device_id, &credential, "enrolled")
        .await
        .map_err(|e| ApiError::internal("cannot record the device certificate", e))?;
    let _ = state
        .ctx
        .store
        .audit()
        .append(
            &format!("device:{device_id}"),
            "device.enroll",
            &device_id,
            &format!("from {ip}, serial {}", signed.info.serial_hex),
        )
        .await;
    let bundle = bundle_for(
        &state,
        &device_id,
        Credentials::Certificate {
            cert_pem: signed.cert_pem.clone(),
            key_pem: String::new(),
        },
    );
    tracing::info!(device = %device_id, %ip, "device enrolled");
    Ok(Json(serde_json::json!({ "bundle": bundle.to_public_toml(), "cert_pem": signed.cert_pem, "device_id": device_id }))
        .into_response())
}
