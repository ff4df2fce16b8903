//! Bounded work for the unauthenticated: every slow credential check (argon2 costs about
//! 19 MiB and tens of milliseconds each) runs under one global concurrency bound, shared by
//! dashboard logins and MQTT CONNECTs with a user name. A bounded number of further checks may
//! wait for a slot; beyond that a caller is refused at once (HTTP 503, MQTT 0x89 Server busy),
//! so a flood of wrong logins costs at most `max_concurrent` × 19 MiB, not 19 MiB per attempt.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use tokio::sync::Semaphore;

/// Refused because every slot and every queue place is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "too many logins are being checked right now; try again in a few seconds (auth.max_concurrent_password_checks)"
)]
pub struct Busy;

/// Counters of the gate, for `/metrics`.
#[derive(Debug, Default)]
pub struct GateCounters {
    /// Checks running now.
    pub running: AtomicUsize,
    /// Highest number of checks that ever ran at once (proves the bound).
    pub max_running: AtomicUsize,
    /// Checks waiting for a slot now.
    pub queued: AtomicUsize,
    /// Checks refused because the queue was full.
    pub busy_refused: AtomicU64,
    /// Checks completed.
    pub checked: AtomicU64,
}

pub struct PasswordGate {
    slots: Arc<Semaphore>,
    max_queued: usize,
    counters: Arc<GateCounters>,
}

impl std::fmt::Debug for PasswordGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordGate")
            .field("max_queued", &self.max_queued)
            .finish_non_exhaustive()
    }
}

/// Decrements a gauge when dropped, so a cancelled waiter (its CONNECT timed out, its HTTP
/// client went away) does not leak a queue place.
struct Gauge<'a>(&'a AtomicUsize);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PasswordGate {
    pub fn new(max_concurrent: usize, max_queued: usize) -> PasswordGate {
        PasswordGate {
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_queued,
            counters: Arc::new(GateCounters::default()),
        }
    }

    pub fn counters(&self) -> &GateCounters {
        &self.counters
    }

    /// Checks `password` against the argon2 `hash` (a dummy hash for unknown users, so both
    /// cost the same) under the bound, off the async threads.
    pub async fn verify_password(&self, password: &[u8], hash: &str) -> Result<bool, Busy> {
        let counters = &self.counters;
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Reserve a queue place first: the check and the increment are one atomic step.
                let queued = counters.queued.fetch_add(1, Ordering::Relaxed);
                let _place = Gauge(&counters.queued);
                if queued >= self.max_queued {
                    counters.busy_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(Busy);
                }
                self.slots.clone().acquire_owned().await.map_err(|_| Busy)?
            }
        };
        let password = password.to_vec();
        let hash = hash.to_owned();
        let counters = self.counters.clone();
        // The permit moves into the blocking task: if the caller gives up, the slot stays taken
        // until the hash is actually done, so the bound holds for memory, not just for waiters.
        let task = tokio::task::spawn_blocking(move || {
            let running = counters.running.fetch_add(1, Ordering::Relaxed) + 1;
            counters.max_running.fetch_max(running, Ordering::Relaxed);
            let ok = std::str::from_utf8(&password)
                .is_ok_and(|password| store::secret::verify_password(password, &hash));
            counters.running.fetch_sub(1, Ordering::Relaxed);
            counters.checked.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            ok
        });
        Ok(task.await.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_max_concurrent_checks_run_and_excess_is_refused_fast() {
        let hash = store::secret::hash_password("right password").unwrap();
        let gate = Arc::new(PasswordGate::new(2, 3));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let (gate, hash) = (gate.clone(), hash.clone());
            tasks.spawn(async move { gate.verify_password(b"wrong", &hash).await });
        }
        let (mut refused, mut checked) = (0, 0);
        while let Some(result) = tasks.join_next().await {
            match result.unwrap() {
                Ok(ok) => {
                    assert!(!ok);
                    checked += 1;
                }
                Err(Busy) => refused += 1,
            }
        }
        let c = gate.counters();
        assert!(c.max_running.load(Ordering::Relaxed) <= 2);
        assert!(
            checked >= 2 && refused > 0,
            "checked {checked}, refused {refused}"
        );
        assert_eq!(refused + checked, 40);
        assert_eq!(c.busy_refused.load(Ordering::Relaxed), refused as u64);
        assert_eq!(c.queued.load(Ordering::Relaxed), 0);
        assert!(
            gate.verify_password(b"right password", &hash)
                .await
                .unwrap()
        );
    }
}
