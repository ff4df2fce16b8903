//! Commands through the HTTP API at a steady rate to random connected devices, each measured
//! from the PUT until the server answers that the device confirmed it (200).
//!
//! The load is open-loop: a command starts every 1/rate seconds whether or not earlier ones
//! have been answered, so a slow server shows up as latency instead of as fewer commands.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    api::Api,
    device::{self, Fleet, OUTPUT},
    tally::Tally,
};

/// Commands allowed in flight at once; beyond this the sender skips (and counts) a tick.
const MAX_IN_FLIGHT: usize = 2_000;

#[derive(Debug, Default)]
pub struct CommandStats {
    /// Latency of every command answered 200 (confirmed by the device).
    pub confirmed: Vec<Duration>,
    /// Every answer by HTTP status or transport error.
    pub answers: Tally,
    /// Ticks without a connected device to pick, or with too many commands in flight.
    pub skipped: u64,
}

impl CommandStats {
    pub fn sent(&self) -> u64 {
        self.answers.total()
    }
}

/// A small, fast generator for picking devices (xorshift64*); quality is not critical here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub async fn run(api: Api, fleet: Arc<Fleet>, rate: f64, stop: CancellationToken) -> CommandStats {
    let mut stats = CommandStats::default();
    if rate <= 0.0 || fleet.online.is_empty() {
        return stats;
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight: JoinSet<(Result<u16, String>, Duration)> = JoinSet::new();
    let record =
        |stats: &mut CommandStats, (answer, latency): (Result<u16, String>, Duration)| match answer
        {
            Ok(200) => {
                stats.confirmed.push(latency);
                stats.answers.add("200 confirmed");
            }
            Ok(status) => stats.answers.add(format!("HTTP {status}")),
            Err(label) => stats.answers.add(label),
        };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(done) = in_flight.join_next() => {
                if let Ok(done) = done {
                    record(&mut stats, done);
                }
            }
            _ = tick.tick() => {
                let devices = fleet.online.len();
                // A few random picks find a connected device unless most are offline.
                let pick = (0..8)
                    .map(|_| rng.next() as usize % devices)
                    .find(|&i| fleet.online[i].load(Ordering::Relaxed));
                let Some(index) = pick.filter(|_| in_flight.len() < MAX_IN_FLIGHT) else {
                    stats.skipped += 1;
                    continue;
                };
                let api = api.clone();
                let value = rng.next() & 1 == 1;
                in_flight.spawn(async move {
                    let started = Instant::now();
                    let answer = api.put_property(&device::device_id(index), OUTPUT, value).await;
                    (answer, started.elapsed())
                });
            }
        }
    }
    // Commands already sent are part of the run: wait for their answers.
    while let Some(done) = in_flight.join_next().await {
        if let Ok(done) = done {
            record(&mut stats, done);
        }
    }
    stats
}
