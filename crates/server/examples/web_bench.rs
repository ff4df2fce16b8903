//! Measurements of the web tier (not a test: it prints figures, it does not assert them).
//!
//! `cargo run --release -p server --example web_bench [-- TOGGLES [READINGS]]`
//!
//! 1. `PUT /api/v1/devices/demo/properties/led` until the device's confirmation, over HTTPS
//!    on loopback with the real agent (simulated GPIO, mqtts): p50/p99 over 1,000 toggles.
//! 2. Telemetry ingest into the store, batched as the server does it: readings/s.
//! 3. A one-year query of 525,600 one-minute readings, downsampled to 1,000 buckets.

use std::time::{Duration, Instant};

use server::{Server, ServerOptions, config::ServerConfig};
use store::Sample;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let toggles: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let readings: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);

    let dir = tempfile::tempdir()?;
    let config = ServerConfig {
        hostnames: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse()?],
        ..ServerConfig::default()
    };
    let options = ServerOptions::new(config, dir.path())
        .listen(["mqtts://127.0.0.1:0", "https://127.0.0.1:0"]);
    let server = Server::start(options).await?;
    let store = server.ctx.store.clone();

    // An admin token for the API.
    let token = store::secret::generate_api_token();
    store
        .tokens()
        .create(
            "bench",
            store::Role::Admin,
            &store::secret::hash_token(&token),
        )
        .await?;

    // The real agent, with the demo configuration, over mqtts with a device token.
    let device_token = store::secret::generate_device_token();
    store
        .devices()
        .add(
            "demo",
            &store::DeviceCredential::Token {
                token_hash: store::secret::hash_token(&device_token),
            },
            &store::Grants::default(),
        )
        .await?;
    let bundle = proto::bundle::Bundle {
        device_id: "demo".into(),
        broker_urls: vec![format!(
            "mqtts://localhost:{}",
            server.mqtts_addr().expect("mqtts").port()
        )],
        api_url: None,
        ca_pem: server.ctx.ca.cert_pem().to_string(),
        credentials: proto::bundle::Credentials::Token {
            token: device_token,
        },
    };
    let agent_config = agent::demo::demo_config(dir.path().join("agent"));
    let gpio = agent::agent::gpio_for(&agent_config);
    let agent =
        agent::agent::Agent::start(agent_config, bundle, gpio, std::future::pending()).await?;
    anyhow::ensure!(
        agent.wait_connected(Duration::from_secs(10)).await,
        "the agent did not connect"
    );

    let addr = server.https_addr().expect("https");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(
            server.ctx.ca.cert_pem().as_bytes(),
        )?)
        .resolve("localhost", addr)
        .build()?;
    let url = format!(
        "https://localhost:{}/api/v1/devices/demo/properties/led",
        addr.port()
    );
    // Wait until the twin knows the device's outputs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = http
            .put(&url)
            .bearer_auth(&token)
            .json(&false)
            .send()
            .await?;
        if response.status().is_success() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the device never accepted a command: {}",
            response.text().await?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 1. PUT -> confirmed.
    let mut latencies = Vec::with_capacity(toggles);
    for i in 0..toggles {
        let value = i % 2 == 0;
        let started = Instant::now();
        let response = http
            .put(&url)
            .bearer_auth(&token)
            .json(&value)
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        latencies.push(started.elapsed());
        anyhow::ensure!(
            status == 200 && body["value"] == value,
            "toggle {i}: {status} {body}"
        );
    }
    latencies.sort();
    println!(
        "PUT -> confirmed, {toggles} toggles over HTTPS with the real agent: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
    );
    agent.shutdown().await;

    // 2. Ingest: readings pushed into the server's ingest (the path MQTT readings take after
    // parsing), batched into the store; timed until the last one is queryable.
    store
        .devices()
        .add(
            "meter",
            &store::DeviceCredential::Pending,
            &store::Grants::default(),
        )
        .await?;
    let t0: i64 = 1_600_000_000_000;
    let started = Instant::now();
    for i in 0..readings {
        let sensor = ["a", "b", "c", "d"][i % 4];
        server
            .ingest
            .push(Sample::new(
                "meter",
                sensor,
                t0 + (i / 4) as i64 * 1000,
                i as f64,
            ))
            .await;
    }
    let end = t0 + (readings / 4) as i64 * 1000 + 1000;
    loop {
        let mut total = 0;
        for sensor in ["a", "b", "c", "d"] {
            let q = store.telemetry().query("meter", sensor, t0, end, 1).await?;
            total += q.points.iter().map(|b| b.count).sum::<i64>();
        }
        if total as usize >= readings {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "telemetry ingest, batched: {readings} readings in {:.2} s = {:.0} readings/s",
        elapsed.as_secs_f64(),
        readings as f64 / elapsed.as_secs_f64()
    );

    // 3. One year of one-minute readings, downsampled.
    let minutes = 525_600i64;
    let y0: i64 = 1_577_836_800_000; // 2020-01-01T00:00Z
    let samples: Vec<Sample> = (0..minutes)
        .map(|m| Sample::new("meter", "year", y0 + m * 60_000, (m % 1440) as f64))
        .collect();
    let started = Instant::now();
    for chunk in samples.chunks(5000) {
        store.telemetry().insert_batch(chunk).await?;
    }
    println!(
        "  (loading 525,600 readings directly: {:.2} s)",
        started.elapsed().as_secs_f64()
    );
    let mut times = Vec::new();
    let mut buckets = 0;
    for _ in 0..10 {
        let started = Instant::now();
        let q = store
            .telemetry()
            .query("meter", "year", y0, y0 + minutes * 60_000, 1000)
            .await?;
        times.push(started.elapsed());
        buckets = q.points.len();
        let count: i64 = q.points.iter().map(|b| b.count).sum();
        anyhow::ensure!(count == minutes, "the year query counted {count} readings");
    }
    times.sort();
    // And through the HTTP API, as the dashboard asks for it.
    let api = format!(
        "https://localhost:{}/api/v1/devices/meter/telemetry/year?from={y0}&to={}&points=1000",
        addr.port(),
        y0 + minutes * 60_000
    );
    let mut http_times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let response = http.get(&api).bearer_auth(&token).send().await?;
        anyhow::ensure!(
            response.status() == 200,
            "year query over HTTP: {}",
            response.status()
        );
        let _: serde_json::Value = response.json().await?;
        http_times.push(started.elapsed());
    }
    http_times.sort();
    println!(
        "one-year query (525,600 one-minute readings -> {buckets} buckets): median {:.1} ms in the store, {:.1} ms over HTTPS",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&http_times, 0.5).as_secs_f64() * 1e3,
    );
    server.shutdown().await;
    Ok(())
}
