//! Local users (dashboard and MQTT logins) and API tokens (scripts).

use sqlx::any::AnyRow;

use crate::{
    Error, Role, Store, bump_version, now_ms,
    row::{i64_at, opt_i64_at, role_at, str_at},
};

/// A local user. The password hash is argon2id (see [`crate::secret::hash_password`]).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// An API token; the token itself is shown once and only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub last_used: Option<i64>,
}

/// User names: what fits in an MQTT user name, a principal and a URL without escaping.
pub(crate) fn validate_name(field: &'static str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            field,
            message: format!(
                "'{name}': use 1 to 64 characters from letters, digits, '_', '-', '.' and '@', starting with a letter or digit"
            ),
        })
    }
}

fn user_from_row(row: &AnyRow) -> Result<User, Error> {
    Ok(User {
        name: str_at(row, "name")?,
        role: role_at(row, "role")?,
        password_hash: str_at(row, "password_hash")?,
        created_at: i64_at(row, "created_at")?,
        updated_at: i64_at(row, "updated_at")?,
    })
}

/// `store.users()`.
pub struct Users<'a> {
    pub(crate) store: &'a Store,
}

impl Users<'_> {
    pub async fn add(&self, name: &str, role: Role, password_hash: &str) -> Result<User, Error> {
        validate_name("user name", name)?;
        let now = now_ms();
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query(
            "INSERT INTO users (name, role, password_hash, created_at, updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::UserExists(name.to_string()));
        }
        tx.commit().await?;
        Ok(User {
            name: name.into(),
            role,
            password_hash: password_hash.into(),
            created_at: now,
            updated_at: now,
        })
    }

    pub async fn get(&self, name: &str) -> Result<Option<User>, Error> {
        let row = sqlx::query(
            "SELECT name, role, password_hash, created_at, updated_at FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    pub async fn list(&self) -> Result<Vec<User>, Error> {
        let rows = sqlx::query(
            "SELECT name, role, password_hash, created_at, updated_at FROM users ORDER BY name",
        )
        .fetch_all(self.store.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// How many users exist (the server creates a first admin when there are none).
    pub async fn count(&self) -> Result<i64, Error> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(self.store.pool())
            .await?)
    }

    /// Changes a password; the user's web sessions end.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE name = $3")
            .bind(password_hash)
            .bind(now_ms())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::UserNotFound(name.to_string()));
        }
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_role(&self, name: &str, role: Role) -> Result<(), Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE name = $3")
            .bind(role.as_str())
            .bind(now_ms())
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::UserNotFound(name.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes a user and their web sessions.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        sqlx::query("DELETE FROM web_sessions WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::UserNotFound(name.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }
}

/// `store.tokens()`.
pub struct Tokens<'a> {
    pub(crate) store: &'a Store,
}

fn token_from_row(row: &AnyRow) -> Result<ApiToken, Error> {
    Ok(ApiToken {
        name: str_at(row, "name")?,
        role: role_at(row, "role")?,
        created_at: i64_at(row, "created_at")?,
        last_used: opt_i64_at(row, "last_used")?,
    })
}

impl Tokens<'_> {
    /// Stores a new token by its hash ([`crate::secret::hash_token`]).
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
    ) -> Result<ApiToken, Error> {
        validate_name("token name", name)?;
        let now = now_ms();
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query(
            "INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(token_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(Error::TokenExists(name.to_string()));
        }
        tx.commit().await?;
        Ok(ApiToken {
            name: name.into(),
            role,
            created_at: now,
            last_used: None,
        })
    }

    pub async fn list(&self) -> Result<Vec<ApiToken>, Error> {
        let rows =
            sqlx::query("SELECT name, role, created_at, last_used FROM api_tokens ORDER BY name")
                .fetch_all(self.store.pool())
                .await?;
        rows.iter().map(token_from_row).collect()
    }

    pub async fn get(&self, name: &str) -> Result<Option<ApiToken>, Error> {
        let row =
            sqlx::query("SELECT name, role, created_at, last_used FROM api_tokens WHERE name = $1")
                .bind(name)
                .fetch_optional(self.store.pool())
                .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// The token whose hash this is. The lookup is by an indexed hash of a 128-bit random
    /// secret, so it leaks nothing useful through timing.
    pub async fn find_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>, Error> {
        let row = sqlx::query(
            "SELECT name, role, created_at, last_used FROM api_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.store.pool())
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Records use (at most the caller's choice of granularity; not a registry change).
    pub async fn touch(&self, name: &str, now: i64) -> Result<(), Error> {
        sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE name = $2")
            .bind(now)
            .bind(name)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    pub async fn revoke(&self, name: &str) -> Result<(), Error> {
        let mut tx = self.store.pool().begin().await?;
        bump_version(&mut tx).await?;
        let n = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(Error::TokenNotFound(name.to_string()));
        }
        tx.commit().await?;
        Ok(())
    }
}
