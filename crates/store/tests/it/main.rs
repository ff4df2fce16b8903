mod registry;
mod sessions;
mod telemetry;

use store::Store;

/// A store on a real SQLite file in a fresh temporary directory.
pub async fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_data_dir(dir.path()).await.unwrap();
    (dir, store)
}
