//! Bounded work for the unauthenticated: every slow credential check (argon2 costs about
//! 19 MiB and tens of milliseconds each) runs on one of a fixed number of threads, shared by
//! dashboard logins and MQTT CONNECTs with a user name. A bounded number of further checks may
//! wait in a queue; beyond that a caller is refused at once (HTTP 503, MQTT 0x89 Server busy),
//! so a flood of wrong logins costs at most `max_concurrent` × 19 MiB, not 19 MiB per attempt.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
    mpsc,
};

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
    /// Checks waiting for a thread now.
    pub queued: AtomicUsize,
    /// Checks refused because the queue was full.
    pub busy_refused: AtomicU64,
    /// Checks completed.
    pub checked: AtomicU64,
}

/// One password check for a worker thread.
struct Job {
    password: Vec<u8>,
    hash: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

pub struct PasswordGate {
    jobs: mpsc::SyncSender<Job>,
    counters: Arc<GateCounters>,
}

impl std::fmt::Debug for PasswordGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordGate").finish_non_exhaustive()
    }
}

impl PasswordGate {
    /// `max_concurrent` dedicated threads run the checks; `max_queued` more may wait.
    ///
    /// Dedicated threads rather than tokio's blocking pool: the allocator may keep a freed
    /// argon2 block in the arena of the thread that used it, and the blocking pool grows to
    /// hundreds of threads under load. A fixed set of threads bounds both. Measured peak RSS
    /// (debug build) for 1,200 and 2,400 parallel wrong logins with a bound of 4: 476 MB
    /// both times; with 64 at once: 9.8 GB.
    pub fn new(max_concurrent: usize, max_queued: usize) -> PasswordGate {
        let (jobs, queue) = mpsc::sync_channel::<Job>(max_queued);
        let queue = Arc::new(Mutex::new(queue));
        let counters = Arc::new(GateCounters::default());
        for i in 0..max_concurrent.max(1) {
            let (queue, counters) = (queue.clone(), counters.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || work(&queue, &counters));
            if let Err(err) = spawned {
                tracing::error!("cannot start a password-check thread: {err}");
            }
        }
        PasswordGate { jobs, counters }
    }

    pub fn counters(&self) -> &GateCounters {
        &self.counters
    }

    /// Checks `password` against the argon2 `hash` (a dummy hash for unknown users, so both
    /// cost the same) on one of the gate's threads; `Busy` at once when the queue is full.
    pub async fn verify_password(&self, password: &[u8], hash: &str) -> Result<bool, Busy> {
        let (answer, result) = tokio::sync::oneshot::channel();
        let job = Job {
            password: password.to_vec(),
            hash: hash.to_owned(),
            answer,
        };
        // Counted before sending, so a worker never takes the gauge below zero.
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.jobs.try_send(job).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            self.counters.busy_refused.fetch_add(1, Ordering::Relaxed);
            return Err(Busy);
        }
        // No answer means the worker is gone: the check failed.
        Ok(result.await.unwrap_or(false))
    }
}

/// A worker: takes jobs until the gate is dropped.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, counters: &GateCounters) {
    loop {
        let job = {
            let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        counters.queued.fetch_sub(1, Ordering::Relaxed);
        let running = counters.running.fetch_add(1, Ordering::Relaxed) + 1;
        counters.max_running.fetch_max(running, Ordering::Relaxed);
        let ok = std::str::from_utf8(&job.password)
            .is_ok_and(|password| store::secret::verify_password(password, &job.hash));
        counters.running.fetch_sub(1, Ordering::Relaxed);
        counters.checked.fetch_add(1, Ordering::Relaxed);
        // The caller may have given up (timeout); the check was bounded all the same.
        let _ = job.answer.send(ok);
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
