//! Small helpers shared by the agent's modules. Files are written with the workspace's
//! `fsutil::write_atomic` (one copy for every crate).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Resolves once a stop flag turns true (or its sender is gone). Unlike `wait_for`, holds no
/// borrow across the await, so it can sit in a `select!` of a `Send` future.
pub async fn stopped(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
