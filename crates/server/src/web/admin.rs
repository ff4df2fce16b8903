//! Administration over the API (role admin): devices (add with an enrollment code, a
//! certificate or a token; remove), API tokens and local users. Every change is audited.

use std::time::Duration;

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use proto::{acl::Role, bundle::Credentials};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{DeviceCredential, Grants, secret};

use super::{
    WebState,
    auth::{Admin, Principal},
    enroll::{bundle_for, device_cert_validity},
    error::{ApiError, ApiJson, ApiResult},
};
use crate::twin::now_ms;

/// How long an enrollment code is valid.
pub const ENROLL_CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

fn store_error(context: &str, err: store::Error) -> ApiError {
    match err {
        store::Error::DeviceExists(_)
        | store::Error::UserExists(_)
        | store::Error::TokenExists(_) => ApiError::conflict(err.to_string()),
        store::Error::DeviceNotFound(_)
        | store::Error::UserNotFound(_)
        | store::Error::TokenNotFound(_) => ApiError::not_found(err.to_string()),
        store::Error::Invalid { field, message } => ApiError::bad_field(field, message),
        other => ApiError::internal(context, other),
    }
}

async fn audit(state: &WebState, actor: &Principal, action: &str, subject: &str, detail: &str) {
    if let Err(err) = state
        .ctx
        .store
        .audit()
        .append(&actor.principal(), action, subject, detail)
        .await
    {
        tracing::warn!("cannot write the audit log: {err}");
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    #[default]
    Enroll,
    Certificate,
    Token,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    pub id: String,
    #[serde(default)]
    pub credential: CredentialKind,
}

pub async fn add_device(
    State(state): State<WebState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<AddDevice>,
) -> ApiResult<Response> {
    proto::topics::validate_device_id(&body.id)
        .map_err(|e| ApiError::bad_field("id", e.to_string()))?;
    let devices = state.ctx.store.devices();
    let answer = match body.credential {
        CredentialKind::Enroll => {
            devices
                .add(&body.id, &DeviceCredential::Pending, &Grants::default())
                .await
                .map_err(|e| store_error("cannot add the device", e))?;
            let code = secret::generate_enroll_code();
            let expires_at =
                now_ms() + i64::try_from(ENROLL_CODE_LIFETIME.as_millis()).unwrap_or(i64::MAX);
            state
                .ctx
                .store
                .enroll()
                .create(&body.id, &secret::hash_enroll_code(&code), expires_at)
                .await
                .map_err(|e| store_error("cannot create the enrollment code", e))?;
            let api_url = state
                .ctx
                .api_url
                .as_deref()
                .unwrap_or("https://SERVER:8443");
            let ca_sha256 = state.ctx.ca.sha256_hex();
            json!({
                "id": body.id,
                "code": code,
                "expires_at": expires_at,
                "ca_sha256": ca_sha256,
                "enroll_command": format!("devicecloud agent enroll {api_url} {code} --ca-sha256 {ca_sha256}"),
            })
        }
        CredentialKind::Certificate => {
            let issued = state
                .ctx
                .ca
                .issue_device_cert(&body.id, device_cert_validity(&state))
                .map_err(|e| ApiError::internal("cannot issue the device certificate", e))?;
            let credential = DeviceCredential::Certificate {
                serial_hex: issued.info.serial_hex.clone(),
                fingerprint_sha256: issued.info.fingerprint_sha256.clone(),
                not_after_ms: issued.info.not_after_unix.saturating_mul(1000),
            };
            devices
                .add(&body.id, &credential, &Grants::default())
                .await
                .map_err(|e| store_error("cannot add the device", e))?;
            let bundle = bundle_for(
                &state,
                &body.id,
                Credentials::Certificate {
                    cert_pem: issued.cert_pem,
                    key_pem: issued.key_pem,
                },
            );
            json!({ "id": body.id, "bundle": bundle.to_toml() })
        }
        CredentialKind::Token => {
            let token = secret::generate_device_token();
            let credential = DeviceCredential::Token {
                token_hash: secret::hash_token(&token),
            };
            devices
                .add(&body.id, &credential, &Grants::default())
                .await
                .map_err(|e| store_error("cannot add the device", e))?;
            let bundle = bundle_for(&state, &body.id, Credentials::Token { token });
            json!({ "id": body.id, "bundle": bundle.to_toml() })
        }
    };
    let kind = match body.credential {
        CredentialKind::Enroll => "enroll",
        CredentialKind::Certificate => "certificate",
        CredentialKind::Token => "token",
    };
    audit(
        &state,
        &admin,
        "device.add",
        &body.id,
        &format!("credential {kind}"),
    )
    .await;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn remove_device(
    State(state): State<WebState>,
    Admin(admin): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .ctx
        .store
        .devices()
        .remove(&id)
        .await
        .map_err(|e| store_error("cannot remove the device", e))?;
    // Kick it now rather than at the revocation watcher's next look.
    let kicked = state
        .ctx
        .broker
        .disconnect_principal(&format!("device:{id}"));
    state.ctx.twin.forget(&id);
    audit(
        &state,
        &admin,
        "device.remove",
        &id,
        &format!("{kicked} connection(s) closed"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    #[serde(default = "default_token_role")]
    pub role: Role,
}

fn default_token_role() -> Role {
    Role::Operator
}

fn check_name(field: &'static str, name: &str) -> ApiResult<()> {
    // The store's rule for user names; tokens follow it too.
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!(
                "invalid {field} '{name}': use 1 to 64 of a-z, A-Z, 0-9, '_', '-', '.', '@', starting with a letter or digit"
            ),
        ))
    }
}

pub async fn list_tokens(
    State(state): State<WebState>,
    Admin(_): Admin,
) -> ApiResult<Json<Vec<Value>>> {
    let tokens = state
        .ctx
        .store
        .tokens()
        .list()
        .await
        .map_err(|e| store_error("cannot list tokens", e))?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| json!({ "name": t.name, "role": t.role, "created_at": t.created_at, "last_used": t.last_used }))
            .collect(),
    ))
}

pub async fn create_token(
    State(state): State<WebState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<Response> {
    check_name("name", &body.name)?;
    let token = secret::generate_api_token();
    state
        .ctx
        .store
        .tokens()
        .create(&body.name, body.role, &secret::hash_token(&token))
        .await
        .map_err(|e| store_error("cannot create the token", e))?;
    audit(
        &state,
        &admin,
        "token.create",
        &body.name,
        &format!("role {}", body.role),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": body.name, "role": body.role, "token": token })),
    )
        .into_response())
}

pub async fn delete_token(
    State(state): State<WebState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .ctx
        .store
        .tokens()
        .revoke(&name)
        .await
        .map_err(|e| store_error("cannot revoke the token", e))?;
    let kicked = state
        .ctx
        .broker
        .disconnect_principal(&format!("token:{name}"));
    audit(
        &state,
        &admin,
        "token.revoke",
        &name,
        &format!("{kicked} connection(s) closed"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    pub password: String,
    #[serde(default = "default_user_role")]
    pub role: Role,
}

fn default_user_role() -> Role {
    Role::Viewer
}

pub async fn list_users(
    State(state): State<WebState>,
    Admin(_): Admin,
) -> ApiResult<Json<Vec<Value>>> {
    let users = state
        .ctx
        .store
        .users()
        .list()
        .await
        .map_err(|e| store_error("cannot list users", e))?;
    Ok(Json(
        users
            .into_iter()
            .map(|u| json!({ "name": u.name, "role": u.role, "created_at": u.created_at }))
            .collect(),
    ))
}

pub async fn create_user(
    State(state): State<WebState>,
    Admin(admin): Admin,
    ApiJson(body): ApiJson<CreateUser>,
) -> ApiResult<Response> {
    check_name("name", &body.name)?;
    secret::check_password_strength(&body.password)
        .map_err(|e| ApiError::bad_field("password", e.to_string()))?;
    let password = body.password.clone();
    let hash = tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(|e| ApiError::internal("password hashing failed", e))?
        .map_err(|e| ApiError::internal("password hashing failed", e))?;
    state
        .ctx
        .store
        .users()
        .add(&body.name, body.role, &hash)
        .await
        .map_err(|e| store_error("cannot add the user", e))?;
    audit(
        &state,
        &admin,
        "user.add",
        &body.name,
        &format!("role {}", body.role),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": body.name, "role": body.role })),
    )
        .into_response())
}

pub async fn delete_user(
    State(state): State<WebState>,
    Admin(admin): Admin,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if name == admin.name && matches!(admin.via, super::auth::Via::Session { .. }) {
        return Err(ApiError::conflict(
            "you cannot remove yourself; log in as another admin",
        ));
    }
    state
        .ctx
        .store
        .users()
        .remove(&name)
        .await
        .map_err(|e| store_error("cannot remove the user", e))?;
    let _ = state.ctx.store.sessions().delete_for_user(&name).await;
    let mut kicked = state
        .ctx
        .broker
        .disconnect_principal(&format!("user:{name}"));
    for principal in state
        .ctx
        .registry
        .principals_with_prefix(&super::auth::session_principal_prefix(&name))
    {
        kicked += state.ctx.broker.disconnect_principal(&principal);
    }
    audit(
        &state,
        &admin,
        "user.remove",
        &name,
        &format!("{kicked} connection(s) closed"),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
