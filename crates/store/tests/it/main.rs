//! The store against real databases: SQLite files in temporary directories by default; set
//! `DEVICECLOUD_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`, a
//! role that may create databases) to run the same tests against PostgreSQL, each in a
//! fresh database.

mod registry;
mod sessions;
mod telemetry;

use store::Store;

/// A store on a fresh database: a SQLite file in a new temporary directory, or a new
/// PostgreSQL database (see the module docs).
pub async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = match std::env::var("DEVICECLOUD_TEST_POSTGRES_URL") {
        Ok(admin_url) if !admin_url.is_empty() => Store::open(&fresh_postgres_db(&admin_url).await)
            .await
            .unwrap(),
        _ => Store::open_data_dir(dir.path()).await.unwrap(),
    };
    (dir, store)
}

async fn fresh_postgres_db(admin_url: &str) -> String {
    use sqlx::{Connection, Executor};
    sqlx::any::install_default_drivers();
    let name = format!(
        "devicecloud_test_{}",
        store::secret::generate_device_token()
    );
    let mut conn = sqlx::AnyConnection::connect(admin_url).await.unwrap();
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    conn.close().await.unwrap();
    let base = admin_url
        .rsplit_once('/')
        .map(|(base, _)| base)
        .unwrap_or(admin_url);
    format!("{base}/{name}")
}
