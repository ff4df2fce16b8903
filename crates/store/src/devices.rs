//! The device registry: identities, credentials, revocations, presence, self-descriptions.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;

use crate::{
    Error, Store, bump_version, now_ms,
    row::{i64_at, opt_i64_at, opt_str_at, str_at},
};

/// How a device proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceCredential {
    /// A client certificate signed by the server's CA, with CN = device id.
    Certificate {
        serial_hex: String,
        fingerprint_sha256: String,
        not_after_ms: i64,
    },
    /// MQTT user name = device id, password = a token; only its SHA-256 is stored.
    Token { token_hash: String },
    /// Registered with an enrollment code; no credential until the device enrolls.
    Pending,
}

impl DeviceCredential {
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceCredential::Certificate { .. } => "certificate",
            DeviceCredential::Token { .. } => "token",
            DeviceCredential::Pending => "pending",
        }
    }
}

/// Topic filters granted to a device beyond its own subtree (see docs/topics.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }

    /// Checks that every grant is a well-formed MQTT topic filter.
    pub fn validate(&self) -> Result<(), Error> {
        for filter in self.publish.iter().chain(&self.subscribe) {
            if !proto::acl::is_valid_filter(filter) {
                return Err(Error::Invalid {
                    field: "grant",
                    message: format!("'{filter}' is not a valid MQTT topic filter"),
                });
            }
        }
        Ok(())
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub id: String,
    pub created_at: i64,
    pub credential: DeviceCredential,
    pub online: bool,
    pub last_seen: Option<i64>,
    /// The device's last self-description (`devices/{id}/meta`), if any.
    pub meta: Option<serde_json::Value>,
    pub grants: Grants,
}

/// A credential that no longer works: kept so that a presented certificate can be told
/// "revoked" rather than "unknown", and for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCredential {
    pub device_id: String,
    pub kind: String,
    pub cert_serial: Option<String>,
    pub cert_fingerprint: Option<String>,
    pub revoked_at: i64,
    pub reason: String,
}

/// Device registry operations: `store.devices()`.
pub struct Devices<'a> {
    pub(crate) store: &'a Store,
}

const COLUMNS: &str = "id, created_at, credential, cert_serial, cert_fingerprint, cert_not_after, token_hash, online, last_seen, meta_json, grants_json";

fn device_from_row(row: &AnyRow) -> Result<Device, Error> {
    let kind = str_at(row, "credential")?;
    let credential = match kind.as_str() {
        "certificate" => DeviceCredential::Certificate {
            serial_hex: opt_str_at(row, "cert_serial")?.unwrap_or_default(),
            fingerprint_sha256: opt_str_at(row, "cert_fingerprint")?.unwrap_or_default(),
            not_after_ms: opt_i64_at(row, "cert_not_after")?.unwrap_or(0),
        },
        "token" => DeviceCredential::Token {
            token_hash: opt_str_at(row, "token_hash")?.unwrap_or_default(),
        },
        "pending" => DeviceCredential::Pending,
        other => {
            return Err(Error::Corrupt {
                what: "devices.credential",
                message: format!("unknown kind '{other}'"),
            });
        }
    };
    let meta = match opt_str_at(row, "meta_json")? {
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            what: "devices.meta_json",
            message: e.to_string(),
        })?),
        None => None,
    };
    let grants =
        serde_json::from_str(&str_at(row, "grants_json")?).map_err(|e| Error::Corrupt {
            what: "devices.grants_json",
            message: e.to_string(),
        })?;
    Ok(Device {
        id: str_at(row, "id")?,
        created_at: i64_at(row, "created_at")?,
        credential,
        online: i64_at(row, "online")? != 0,
        last_seen: opt_i64_at(row, "last_seen")?,
        meta,
        grants,
    })
}

/// (kind, serial, fingerprint, not_after, token_hash) column values of a credential.
type CredentialColumns<'c> = (
    &'static str,
    Option<&'c str>,
    Option<&'c str>,
    Option<i64>,
    Option<&'c str>,
);

fn credential_columns(c: &DeviceCredential) -> CredentialColumns<'_> {
    match c {
        DeviceCredential::Certificate {
            serial_hex,
            fingerprint_sha256,
            not_after_ms,
        } => (
            "certificate",
            Some(serial_hex),
            Some(fingerprint_sha256),
            Some(*not_after_ms),
            None,
        ),
        DeviceCredential::Token { token_hash } => ("token", None, None, None, Some(token_hash)),
        DeviceCredential::Pending => ("pending", None, None, None, None),
    }
}

async fn record_revoked(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    device_id: &str,
    credential: &DeviceCredential,
    reason: &str,
) -> Result<(), Error> {
    if *credential == DeviceCredential::Pending {
        return Ok(());
    }
    let (kind, serial, fingerprint, _, token_hash) = credential_columns(credential);
    sqlx::query(
        "INSERT INTO revoked_credentials (device_id, kind, cert_serial, cert_fingerprint, token_hash, revoked_at, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(device_id)
    .bind(kind)
    .bind(serial)
    .bind(fingerprint)
    .bind(token_hash)
    .bind(now_ms())
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Devices<'_> {
    /// Registers a device. Fails with [`Error::DeviceExists`] if the id is taken.
    pub async fn add(
        &self,
        id: &str,
        credential: &DeviceCredential,
        grants: &Grants,
    ) -> Result<Device, Error> {
        proto::topics::validate_device_id(id).map_err(|e| Error::Invalid {
            field: "device id",
            message: e.to_string(),
        })?;
        grants.validate()?;
        let grants_json = serde_json::to_string(grants).unwrap_or_else(|_| "{}".into());
        let (kind, serial, fingerprint, not_after, token_hash) = credential_columns(credential);
        let now = now_ms();
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let inserted = sqlx::query(
            "INSERT INTO devices (id, created_at, credential, cert_serial, cert_fingerprint, cert_not_after, token_hash, online, grants_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(now)
        .bind(kind)
        .bind(serial)
        .bind(fingerprint)
        .bind(not_after)
        .bind(token_hash)
        .bind(&grants_json)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::DeviceExists(id.to_string()));
        }
        tx.commit().await?;
        Ok(Device {
            id: id.to_string(),
            created_at: now,
            credential: credential.clone(),
            online: false,
            last_seen: None,
            meta: None,
            grants: grants.clone(),
        })
    }

    pub async fn get(&self, id: &str) -> Result<Option<Device>, Error> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Like [`Devices::get`], but a missing device is an error.
    pub async fn require(&self, id: &str) -> Result<Device, Error> {
        self.get(id)
            .await?
            .ok_or_else(|| Error::DeviceNotFound(id.to_string()))
    }

    /// Every device, ordered by id.
    pub async fn list(&self) -> Result<Vec<Device>, Error> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM devices ORDER BY id"))
            .fetch_all(self.store.pool())
            .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// The current credential of a device, for authentication; `None` if unknown.
    pub async fn credential(&self, id: &str) -> Result<Option<DeviceCredential>, Error> {
        Ok(self.get(id).await?.map(|d| d.credential))
    }

    /// Removes a device: its credentials are recorded as revoked, its enrollment codes and
    /// telemetry are deleted. Returns what was removed.
    pub async fn remove(&self, id: &str) -> Result<Device, Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(device) = row.as_ref().map(device_from_row).transpose()? else {
            return Err(Error::DeviceNotFound(id.to_string()));
        };
        record_revoked(&mut tx, id, &device.credential, "device removed").await?;
        sqlx::query("DELETE FROM enroll_codes WHERE device_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for table in ["telemetry", "telemetry_hourly"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE device_id = $1)"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM series WHERE device_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let Ok(mut cache) = self.store.series_cache().lock() {
            cache.retain(|(device, _), _| device != id);
        }
        Ok(device)
    }

    /// Replaces a device's credential (rotation, or completing an enrollment). The old one is
    /// recorded as revoked at once. Returns the old credential.
    pub async fn set_credential(
        &self,
        id: &str,
        credential: &DeviceCredential,
        reason: &str,
    ) -> Result<DeviceCredential, Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(device) = row.as_ref().map(device_from_row).transpose()? else {
            return Err(Error::DeviceNotFound(id.to_string()));
        };
        record_revoked(&mut tx, id, &device.credential, reason).await?;
        let (kind, serial, fingerprint, not_after, token_hash) = credential_columns(credential);
        sqlx::query(
            "UPDATE devices SET credential = $1, cert_serial = $2, cert_fingerprint = $3, cert_not_after = $4, token_hash = $5 WHERE id = $6",
        )
        .bind(kind)
        .bind(serial)
        .bind(fingerprint)
        .bind(not_after)
        .bind(token_hash)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(device.credential)
    }

    /// Replaces the extra topic grants of a device.
    pub async fn set_grants(&self, id: &str, grants: &Grants) -> Result<(), Error> {
        grants.validate()?;
        let json = serde_json::to_string(grants).unwrap_or_else(|_| "{}".into());
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("UPDATE devices SET grants_json = $1 WHERE id = $2")
            .bind(json)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::DeviceNotFound(id.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records presence. Returns false if the device is unknown. Not a registry change: does
    /// not move the change counter.
    pub async fn set_presence(
        &self,
        id: &str,
        online: bool,
        last_seen: i64,
    ) -> Result<bool, Error> {
        let n = sqlx::query("UPDATE devices SET online = $1, last_seen = $2 WHERE id = $3")
            .bind(online as i64)
            .bind(last_seen)
            .bind(id)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Marks every device offline (the server starts with no connections). Returns how many
    /// were online.
    pub async fn reset_presence(&self) -> Result<u64, Error> {
        let n = sqlx::query("UPDATE devices SET online = 0 WHERE online <> 0")
            .execute(self.store.pool())
            .await?
            .rows_affected();
        Ok(n)
    }

    /// Stores the device's self-description. Returns false if the device is unknown.
    pub async fn set_meta(&self, id: &str, meta: &serde_json::Value) -> Result<bool, Error> {
        let n = sqlx::query("UPDATE devices SET meta_json = $1 WHERE id = $2")
            .bind(meta.to_string())
            .bind(id)
            .execute(self.store.pool())
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    /// Whether a certificate (by fingerprint or serial; either may be empty) was revoked.
    pub async fn is_cert_revoked(
        &self,
        serial_hex: &str,
        fingerprint_sha256: &str,
    ) -> Result<bool, Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM revoked_credentials WHERE (cert_fingerprint = $1 AND $1 <> '') OR (cert_serial = $2 AND $2 <> '')",
        )
        .bind(fingerprint_sha256)
        .bind(serial_hex)
        .fetch_one(self.store.pool())
        .await?;
        Ok(n > 0)
    }

    /// Revoked credentials, newest first.
    pub async fn revoked(&self, limit: i64) -> Result<Vec<RevokedCredential>, Error> {
        let rows = sqlx::query(
            "SELECT device_id, kind, cert_serial, cert_fingerprint, revoked_at, reason FROM revoked_credentials ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RevokedCredential {
                    device_id: str_at(row, "device_id")?,
                    kind: str_at(row, "kind")?,
                    cert_serial: opt_str_at(row, "cert_serial")?,
                    cert_fingerprint: opt_str_at(row, "cert_fingerprint")?,
                    revoked_at: i64_at(row, "revoked_at")?,
                    reason: str_at(row, "reason")?,
                })
            })
            .collect()
    }
}
