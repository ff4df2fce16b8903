//! Schema migrations, embedded. DDL is the only place where SQLite and PostgreSQL differ
//! (auto-increment keys, WITHOUT ROWID); `{autoid}` and `{without_rowid}` are substituted.

use sqlx::AnyPool;

use crate::{Backend, Error};

/// Each migration runs once, in order, in one transaction. Never edit a released one: append.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE registry_version (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO registry_version (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING;

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    credential TEXT NOT NULL,
    cert_serial TEXT,
    cert_fingerprint TEXT,
    cert_not_after BIGINT,
    token_hash TEXT,
    online BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT,
    meta_json TEXT,
    grants_json TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE revoked_credentials (
    id {autoid},
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    cert_serial TEXT,
    cert_fingerprint TEXT,
    token_hash TEXT,
    revoked_at BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX revoked_credentials_fingerprint ON revoked_credentials (cert_fingerprint);
CREATE INDEX revoked_credentials_serial ON revoked_credentials (cert_serial);

CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    last_used BIGINT
);

CREATE TABLE enroll_codes (
    code_hash TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX enroll_codes_device ON enroll_codes (device_id);

CREATE TABLE audit (
    id {autoid},
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);

CREATE TABLE series (
    id {autoid},
    device_id TEXT NOT NULL,
    sensor TEXT NOT NULL,
    retention_ms BIGINT NOT NULL,
    UNIQUE (device_id, sensor)
);

CREATE TABLE telemetry (
    series_id BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series_id, ts)
){without_rowid};

CREATE TABLE telemetry_hourly (
    series_id BIGINT NOT NULL,
    hour BIGINT NOT NULL,
    vmin DOUBLE PRECISION NOT NULL,
    vmax DOUBLE PRECISION NOT NULL,
    vsum DOUBLE PRECISION NOT NULL,
    cnt BIGINT NOT NULL,
    PRIMARY KEY (series_id, hour)
){without_rowid};

CREATE TABLE web_sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_name);

CREATE TABLE commands (
    id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value_json TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    actor TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX commands_device ON commands (device_id, created_at);
CREATE INDEX commands_status ON commands (status, created_at)
"#];

pub(crate) async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let known = MIGRATIONS.len() as i64;
    let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_migrations")
        .fetch_one(pool)
        .await?;
    if let Some(newest) = newest
        && newest > known
    {
        return Err(Error::Corrupt {
            what: "schema version",
            message: format!(
                "the database is at schema version {newest}, this program knows {known}"
            ),
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        let mut tx = pool.begin().await?;
        // The claim is a write, so it takes the write lock first; a concurrent opener (CLI
        // and server starting together) waits and then sees the migration as applied.
        let claimed = sqlx::query(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(version)
        .bind(crate::now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            continue;
        }
        let sql = dialect(migration, backend);
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        tracing::debug!(version, "applied schema migration");
    }
    Ok(())
}

fn dialect(sql: &str, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => sql
            .replace("{autoid}", "INTEGER PRIMARY KEY AUTOINCREMENT")
            .replace("{without_rowid}", " WITHOUT ROWID"),
        Backend::Postgres => sql
            .replace("{autoid}", "BIGSERIAL PRIMARY KEY")
            .replace("{without_rowid}", ""),
    }
}
