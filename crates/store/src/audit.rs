//! The audit log of administrative actions.

use crate::{
    Error, Store, now_ms,
    row::{i64_at, str_at},
};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    /// Who: `cli:<unix user>`, `user:<name>`, `token:<name>`, `server:<component>`.
    pub actor: String,
    /// What, e.g. `device.add`, `device.remove`, `user.add`.
    pub action: String,
    /// On what, e.g. the device id.
    pub subject: String,
    /// Free text; never a secret.
    pub detail: String,
}

/// `store.audit()`.
pub struct Audit<'a> {
    pub(crate) store: &'a Store,
}

impl Audit<'_> {
    /// Appends an entry; returns its id.
    pub async fn append(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: &str,
    ) -> Result<i64, Error> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit (ts, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(detail)
        .fetch_one(self.store.pool())
        .await?;
        Ok(id)
    }

    /// The newest `limit` entries, newest first.
    pub async fn list(&self, limit: i64) -> Result<Vec<AuditEntry>, Error> {
        let rows = sqlx::query(
            "SELECT id, ts, actor, action, subject, detail FROM audit ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.max(0))
        .fetch_all(self.store.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: i64_at(row, "id")?,
                    ts: i64_at(row, "ts")?,
                    actor: str_at(row, "actor")?,
                    action: str_at(row, "action")?,
                    subject: str_at(row, "subject")?,
                    detail: str_at(row, "detail")?,
                })
            })
            .collect()
    }
}
