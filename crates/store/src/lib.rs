//! The server's database: device registry, users, API tokens, enrollment codes, audit log,
//! telemetry, web sessions and commands.
//!
//! SQLite by default (one file, WAL, busy timeout, so that the CLI can change the registry
//! while the server runs); every query is portable SQL that PostgreSQL also runs (times are
//! i64 epoch milliseconds, ids are text, booleans are 0/1 integers, upserts are
//! `ON CONFLICT`). Nobody outside this crate writes SQL against these tables.

mod audit;
mod commands;
mod devices;
mod enroll;
mod error;
mod row;
mod schema;
pub mod secret;
mod sessions;
mod telemetry;
mod users;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    AnyPool, Executor,
    any::{AnyConnectOptions, AnyPoolOptions},
};

pub use audit::{Audit, AuditEntry};
pub use commands::{CommandRecord, CommandStatus, Commands};
pub use devices::{Device, DeviceCredential, Devices, Grants, RevokedCredential};
pub use enroll::Enroll;
pub use error::Error;
pub use proto::acl::Role;
pub use sessions::{Sessions, WebSession};
pub use telemetry::{Bucket, DEFAULT_RETENTION, Downsampled, Sample, Telemetry};
pub use users::{ApiToken, Tokens, User, Users};

/// The database file inside a data directory.
pub const DB_FILE: &str = "devicecloud.db";
/// The CA directory inside a data directory.
pub const CA_DIR: &str = "ca";

/// The data directory used when `--data` is not given: `$DEVICECLOUD_DATA`, else
/// `$XDG_DATA_HOME/devicecloud`, else `~/.local/share/devicecloud`. The server and every CLI
/// command agree on it.
pub fn default_data_dir() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("DEVICECLOUD_DATA") {
        return dir;
    }
    if let Some(dir) = env("XDG_DATA_HOME") {
        return dir.join("devicecloud");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/devicecloud")
}

/// Milliseconds since the Unix epoch, the time unit of every column.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which SQL dialect the few non-portable statements (DDL, bulk placeholders) must use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    location: String,
    /// (device, sensor) -> series id; series are never renumbered, only deleted with their device.
    series: Mutex<HashMap<(String, String), i64>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.inner.location)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) a database: a SQLite file path, a `sqlite:` URL, or a
    /// `postgres://` URL. Runs the schema migrations.
    pub async fn open(path_or_url: &str) -> Result<Store, Error> {
        sqlx::any::install_default_drivers();
        let (url, backend, location) =
            if path_or_url.starts_with("postgres://") || path_or_url.starts_with("postgresql://") {
                (
                    path_or_url.to_string(),
                    Backend::Postgres,
                    redact_url(path_or_url),
                )
            } else if path_or_url.starts_with("sqlite:") {
                (
                    path_or_url.to_string(),
                    Backend::Sqlite,
                    path_or_url.to_string(),
                )
            } else {
                let path = Path::new(path_or_url);
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|source| Error::Open {
                        location: path_or_url.to_string(),
                        message: format!("cannot create directory {}: {source}", parent.display()),
                    })?;
                }
                (
                    format!("sqlite://{}?mode=rwc", encode_path(path_or_url)),
                    Backend::Sqlite,
                    path_or_url.to_string(),
                )
            };
        let options: AnyConnectOptions = url.parse().map_err(|e: sqlx::Error| Error::Open {
            location: location.clone(),
            message: e.to_string(),
        })?;
        // One direct connection first: a wrong URL or a server that is down fails at once with
        // its real error, instead of the pool retrying until its acquire timeout.
        {
            use sqlx::Connection;
            let conn = sqlx::AnyConnection::connect_with(&options)
                .await
                .map_err(|e| Error::Open {
                    location: location.clone(),
                    message: e.to_string(),
                })?;
            let _ = conn.close().await;
        }
        let mut pool_options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            pool_options = pool_options
                .max_connections(4)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        // busy_timeout: writers wait for each other (CLI and server share the
                        // file) instead of failing. WAL: readers never block the writer.
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        Ok(())
                    })
                });
        } else {
            pool_options = pool_options.max_connections(8);
        }
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| Error::Open {
                location: location.clone(),
                message: e.to_string(),
            })?;
        schema::migrate(&pool, backend).await?;
        if backend == Backend::Sqlite {
            restrict_file_mode(path_or_url);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                location,
                series: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Opens `DATA/devicecloud.db`.
    pub async fn open_data_dir(data_dir: &Path) -> Result<Store, Error> {
        Store::open(&data_dir.join(DB_FILE).to_string_lossy()).await
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The file path or (password-less) URL, for messages.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    pub fn devices(&self) -> Devices<'_> {
        Devices { store: self }
    }

    pub fn users(&self) -> Users<'_> {
        Users { store: self }
    }

    pub fn tokens(&self) -> Tokens<'_> {
        Tokens { store: self }
    }

    pub fn enroll(&self) -> Enroll<'_> {
        Enroll { store: self }
    }

    pub fn audit(&self) -> Audit<'_> {
        Audit { store: self }
    }

    pub fn telemetry(&self) -> Telemetry<'_> {
        Telemetry { store: self }
    }

    pub fn sessions(&self) -> Sessions<'_> {
        Sessions { store: self }
    }

    pub fn commands(&self) -> Commands<'_> {
        Commands { store: self }
    }

    /// A number that grows with every change to devices, credentials, users or tokens (from
    /// any process). The server polls it (cheap: one row) and re-checks connected clients
    /// when it moves, so revocations made by the CLI take effect within a second.
    pub async fn change_counter(&self) -> Result<i64, Error> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM registry_version WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(version)
    }

    /// Closes the pool, waiting for connections to finish (checkpoints the WAL on SQLite).
    pub async fn close(&self) {
        self.inner.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    pub(crate) fn series_cache(&self) -> &Mutex<HashMap<(String, String), i64>> {
        &self.inner.series
    }
}

/// Bumps the change counter. Called first in every registry-changing transaction: being a
/// write, it also takes SQLite's write lock up front, so the transaction waits for other
/// writers (busy_timeout) instead of failing when it later upgrades from read to write.
pub(crate) async fn bump_version(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<(), Error> {
    sqlx::query("UPDATE registry_version SET version = version + 1 WHERE id = 1")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn redact_url(url: &str) -> String {
    // postgres://user:password@host/db -> postgres://user@host/db
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

/// The database holds password hashes and session ids: keep it (and its WAL) owner-only.
fn restrict_file_mode(path: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{path}{suffix}");
            if let Ok(meta) = std::fs::metadata(&p)
                && meta.permissions().mode() & 0o077 != 0
            {
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
