//! Telemetry throughput and query latency on a real SQLite file:
//! `cargo run --release -p store --example telemetry_bench [DIR | postgres://...]`.
//!
//! Inserts a year of one-minute readings for one series (525,600) in batches of 10,000,
//! then runs the dashboard's one-year query (1,000 points) and a one-day query.

use std::time::Instant;

use store::{Sample, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Argument: a directory for the SQLite file, or a postgres:// URL of an empty database.
    let arg = std::env::args().nth(1);
    let temp = std::env::temp_dir().join(format!(
        "devicecloud-telemetry-bench-{}",
        std::process::id()
    ));
    let store = match &arg {
        Some(url) if url.starts_with("postgres") => Store::open(url).await?,
        Some(dir) => Store::open_data_dir(std::path::Path::new(dir)).await?,
        None => {
            std::fs::create_dir_all(&temp)?;
            Store::open_data_dir(&temp).await?
        }
    };
    let t = store.telemetry();
    const MIN: i64 = 60_000;
    let start = 1_672_531_200_000;
    let n: i64 = 525_600;
    let batch_size = 10_000;
    let mut batches = Vec::new();
    let mut batch = Vec::with_capacity(batch_size);
    for i in 0..n {
        batch.push(Sample::new(
            "bench",
            "temp",
            start + i * MIN,
            20.0 + ((i * 7) % 1000) as f64 / 100.0,
        ));
        if batch.len() == batch_size || i == n - 1 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    let begin = Instant::now();
    for b in &batches {
        t.insert_batch(b).await?;
    }
    let elapsed = begin.elapsed();
    println!(
        "insert: {n} readings in {elapsed:.2?} = {:.0} readings/s",
        n as f64 / elapsed.as_secs_f64()
    );

    let mut samples = Vec::new();
    for _ in 0..20 {
        let begin = Instant::now();
        let q = t
            .query("bench", "temp", start, start + n * MIN, 1000)
            .await?;
        samples.push(begin.elapsed());
        assert_eq!(q.points.iter().map(|p| p.count).sum::<i64>(), n);
    }
    samples.sort();
    println!(
        "one-year query (1000 points): median {:.2?}, max {:.2?}",
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
    let begin = Instant::now();
    let q = t
        .query(
            "bench",
            "temp",
            start + 100 * 1440 * MIN,
            start + 101 * 1440 * MIN,
            1000,
        )
        .await?;
    println!(
        "one-day query ({} points): {:.2?}",
        q.points.len(),
        begin.elapsed()
    );
    store.close().await;
    if arg.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    Ok(())
}
