//! One-time enrollment codes: `device add --enroll` creates one, the agent spends it.

use crate::{Error, Store, now_ms};

/// `store.enroll()`.
pub struct Enroll<'a> {
    pub(crate) store: &'a Store,
}

impl Enroll<'_> {
    /// Stores a code (by its [`crate::secret::hash_enroll_code`] hash) for a registered device.
    pub async fn create(
        &self,
        device_id: &str,
        code_hash: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        let n = sqlx::query(
            "INSERT INTO enroll_codes (code_hash, device_id, created_at, expires_at) \
             SELECT $1, id, $2, $3 FROM devices WHERE id = $4",
        )
        .bind(code_hash)
        .bind(now_ms())
        .bind(expires_at)
        .bind(device_id)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::DeviceNotFound(device_id.to_string()));
        }
        Ok(())
    }

    /// Spends a code: returns its device id exactly once, if the code exists, is unused and
    /// has not expired at `now`. Atomic across processes: of two concurrent attempts one wins.
    pub async fn consume(&self, code_hash: &str, now: i64) -> Result<String, Error> {
        let mut tx = self.store.pool().begin().await?;
        let n = sqlx::query(
            "UPDATE enroll_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            return Err(Error::EnrollCodeInvalid);
        }
        let device_id: String =
            sqlx::query_scalar("SELECT device_id FROM enroll_codes WHERE code_hash = $1")
                .bind(code_hash)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(device_id)
    }

    /// Deletes codes that expired before `now` or were used. Returns how many.
    pub async fn purge(&self, now: i64) -> Result<u64, Error> {
        Ok(
            sqlx::query("DELETE FROM enroll_codes WHERE expires_at <= $1 OR used_at IS NOT NULL")
                .bind(now)
                .execute(self.store.pool())
                .await?
                .rows_affected(),
        )
    }
}
