//! Dashboard sessions. The cookie value is a random secret; only its hash is stored.

use crate::{
    Error, Role, Store, bump_version,
    row::{i64_at, role_at, str_at},
};

#[derive(Clone, PartialEq, Eq)]
pub struct WebSession {
    pub id_hash: String,
    pub user: String,
    /// The user's current role (joined from users, so a role change applies at once).
    pub role: Role,
    pub csrf_token: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for WebSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSession")
            .field("user", &self.user)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// `store.sessions()`.
pub struct Sessions<'a> {
    pub(crate) store: &'a Store,
}

impl Sessions<'_> {
    /// Creates a session for an existing user.
    pub async fn create(
        &self,
        id_hash: &str,
        user: &str,
        csrf_token: &str,
        expires_at: i64,
    ) -> Result<(), Error> {
        let n = sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_name, csrf_token, created_at, expires_at) \
             SELECT $1, name, $2, $3, $4 FROM users WHERE name = $5",
        )
        .bind(id_hash)
        .bind(csrf_token)
        .bind(crate::now_ms())
        .bind(expires_at)
        .bind(user)
        .execute(self.store.pool())
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::UserNotFound(user.to_string()));
        }
        Ok(())
    }

    /// The live session with this id hash at `now`, if any.
    pub async fn get(&self, id_hash: &str, now: i64) -> Result<Option<WebSession>, Error> {
        let row = sqlx::query(
            "SELECT s.id_hash, s.user_name, u.role, s.csrf_token, s.created_at, s.expires_at \
             FROM web_sessions s JOIN users u ON u.name = s.user_name WHERE s.id_hash = $1 AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(WebSession {
            id_hash: str_at(&row, "id_hash")?,
            user: str_at(&row, "user_name")?,
            role: role_at(&row, "role")?,
            csrf_token: str_at(&row, "csrf_token")?,
            created_at: i64_at(&row, "created_at")?,
            expires_at: i64_at(&row, "expires_at")?,
        }))
    }

    /// Moves a session's expiry (sliding sessions).
    pub async fn extend(&self, id_hash: &str, expires_at: i64) -> Result<(), Error> {
        sqlx::query("UPDATE web_sessions SET expires_at = $1 WHERE id_hash = $2")
            .bind(expires_at)
            .bind(id_hash)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Ends a session (logout). A registry change: `/mqtt` connections opened with this
    /// session are closed by the server's revocation watcher, also when another process ends it.
    pub async fn delete(&self, id_hash: &str) -> Result<(), Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends every session of `user` (a registry change, like [`Sessions::delete`]).
    pub async fn delete_for_user(&self, user: &str) -> Result<u64, Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("DELETE FROM web_sessions WHERE user_name = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    pub async fn delete_expired(&self, now: i64) -> Result<u64, Error> {
        Ok(
            sqlx::query("DELETE FROM web_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(self.store.pool())
                .await?
                .rows_affected(),
        )
    }
}
