use std::time::Duration;

use store::{DeviceCredential, Grants, Sample};

use crate::temp_store;

const MIN: i64 = 60_000;
const HOUR: i64 = 3_600_000;

#[tokio::test]
async fn replays_are_stored_once_and_rollup_stays_exact() {
    let (_dir, store) = temp_store().await;
    let t = store.telemetry();
    let base = 1_700_000_000_000 / HOUR * HOUR;
    // Three hours of one-minute readings, value = minute index.
    let samples: Vec<Sample> = (0..180)
        .map(|i| Sample::new("pi", "temp", base + i * MIN, i as f64))
        .collect();
    assert_eq!(t.insert_batch(&samples).await.unwrap(), 180);
    // A replay of the last hour plus one new reading: only the new one counts.
    let mut replay: Vec<Sample> = samples[120..].to_vec();
    replay.push(Sample::new("pi", "temp", base + 180 * MIN, 180.0));
    replay.push(Sample::new("pi", "temp", base + 181 * MIN, f64::NAN));
    assert_eq!(t.insert_batch(&replay).await.unwrap(), 1);

    // Raw buckets (10 minutes).
    let q = t.query("pi", "temp", base, base + HOUR, 6).await.unwrap();
    assert_eq!(q.bucket_ms, 10 * MIN);
    assert_eq!(q.points.len(), 6);
    assert_eq!(
        (
            q.points[0].ts,
            q.points[0].min,
            q.points[0].max,
            q.points[0].count
        ),
        (base, 0.0, 9.0, 10)
    );
    assert!((q.points[0].avg - 4.5).abs() < 1e-9);

    // Rollup buckets (1 hour), must equal what the raw table says.
    let q = t
        .query("pi", "temp", base, base + 3 * HOUR + MIN, 3)
        .await
        .unwrap();
    assert_eq!(q.bucket_ms, 2 * HOUR, "rounded up to whole hours");
    assert!(q.points.len() <= 3);
    let counts: Vec<i64> = q.points.iter().map(|p| p.count).collect();
    assert_eq!(counts.iter().sum::<i64>(), 181, "{:?}", q.points);
    let last = q.points.last().unwrap();
    assert_eq!(last.max, 180.0);

    // A range starting and ending mid-hour reads partial hours from the raw table exactly.
    let from = base + 30 * MIN;
    let to = base + 150 * MIN;
    let q = t.query("pi", "temp", from, to, 1).await.unwrap();
    assert_eq!(q.points.len(), 1, "{q:?}");
    let total: i64 = q.points.iter().map(|p| p.count).sum();
    assert_eq!(total, 120);
    let min = q.points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let max = q
        .points
        .iter()
        .map(|p| p.max)
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!((min, max), (30.0, 149.0));
    let sum: f64 = q.points.iter().map(|p| p.avg * p.count as f64).sum();
    assert!((sum - (30..150).sum::<i64>() as f64).abs() < 1e-6);

    assert_eq!(
        t.latest("pi", "temp").await.unwrap(),
        Some((base + 180 * MIN, 180.0))
    );
    assert_eq!(t.sensors("pi").await.unwrap(), ["temp"]);
    assert!(
        t.query("pi", "nope", base, base + HOUR, 10)
            .await
            .unwrap()
            .points
            .is_empty()
    );
    assert!(t.query("pi", "temp", base, base, 10).await.is_err());
    assert!(t.query("pi", "temp", base, base + 1, 0).await.is_err());
}

#[tokio::test]
async fn retention_is_per_series_and_device_removal_deletes_readings() {
    let (_dir, store) = temp_store().await;
    store
        .devices()
        .add("pi", &DeviceCredential::Pending, &Grants::default())
        .await
        .unwrap();
    let t = store.telemetry();
    let now = 100 * 24 * HOUR;
    let mut samples = Vec::new();
    for day in 0..60 {
        samples.push(Sample::new("pi", "a", now - day * 24 * HOUR, 1.0));
        samples.push(Sample::new("pi", "b", now - day * 24 * HOUR, 2.0));
    }
    assert_eq!(t.insert_batch(&samples).await.unwrap(), 120);
    t.set_retention("pi", "b", Duration::from_secs(7 * 24 * 3600))
        .await
        .unwrap();
    let deleted = t.apply_retention(now).await.unwrap();
    // a keeps days 0..=30 (default 30 days), b keeps days 0..=7.
    assert_eq!(deleted, (60 - 31) + (60 - 8));
    let year = t
        .query("pi", "a", now - 365 * 24 * HOUR, now + 1, 100)
        .await
        .unwrap();
    assert_eq!(
        year.points.iter().map(|p| p.count).sum::<i64>(),
        31,
        "rollup follows retention"
    );
    assert_eq!(
        t.delete_older_than("pi", "a", now - 24 * HOUR)
            .await
            .unwrap(),
        29
    );

    store.devices().remove("pi").await.unwrap();
    assert!(t.sensors("pi").await.unwrap().is_empty());
    assert!(t.latest("pi", "b").await.unwrap().is_none());
    // A device that comes back under the same name starts empty and can store again.
    assert_eq!(
        t.insert_batch(&[Sample::new("pi", "a", now, 5.0)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(t.latest("pi", "a").await.unwrap(), Some((now, 5.0)));
}

/// A month of one-minute data, inserted in batches and queried downsampled: checks the
/// batching and the rollup at some scale. The one-year figures come from the release-mode
/// example `cargo run --release -p store --example telemetry_bench`.
#[tokio::test]
async fn a_month_of_minutes() {
    let (_dir, store) = temp_store().await;
    let t = store.telemetry();
    let start = 1_672_531_200_000; // 2023-01-01
    let n: i64 = 43_200;
    let begin = std::time::Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push(Sample::new(
            "pi",
            "temp",
            start + i * MIN,
            20.0 + (i % 1440) as f64 / 100.0,
        ));
        if batch.len() == 10_000 || i == n - 1 {
            t.insert_batch(&batch).await.unwrap();
            batch.clear();
        }
    }
    let insert = begin.elapsed();
    let begin = std::time::Instant::now();
    let q = t
        .query("pi", "temp", start, start + n * MIN, 1000)
        .await
        .unwrap();
    let query = begin.elapsed();
    assert_eq!(q.points.iter().map(|p| p.count).sum::<i64>(), n);
    assert!(q.points.len() <= 1000);
    eprintln!(
        "inserted {n} readings in {insert:?} ({:.0}/s); one-month query of {} points in {query:?}",
        n as f64 / insert.as_secs_f64(),
        q.points.len()
    );
    assert!(query < std::time::Duration::from_secs(2), "{query:?}");
}
