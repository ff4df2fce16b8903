//! Per-address backoff for failed logins: after a few failures an address is refused outright
//! (with `Banned`, before its credentials are even looked at) for a window that doubles with every
//! further failure. Other addresses are unaffected. Memory is bounded.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use crate::config::AuthConfig;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Backoff {
    entries: HashMap<IpAddr, Entry>,
    threshold: u32,
    initial: Duration,
    max: Duration,
    memory: Duration,
    capacity: usize,
}

impl Backoff {
    pub fn new(config: &AuthConfig) -> Backoff {
        Backoff {
            entries: HashMap::new(),
            threshold: config.failures_before_backoff.max(1),
            initial: Duration::from_millis(config.backoff_initial_ms.max(1)),
            max: Duration::from_secs(config.backoff_max_secs)
                .max(Duration::from_millis(config.backoff_initial_ms.max(1))),
            memory: Duration::from_secs(config.failure_memory_secs.max(1)),
            capacity: config.max_tracked_addresses.max(1),
        }
    }

    /// `Some(remaining)` when `ip` is currently refused.
    pub fn banned_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let until = self.entries.get(&key(ip))?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed login; returns the ban window it started, if any.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = key(ip);
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        let entry = self.entries.entry(ip).or_insert(Entry {
            failures: 0,
            last_failure: now,
            banned_until: None,
        });
        if now.duration_since(entry.last_failure) > self.memory {
            *entry = Entry {
                failures: 0,
                last_failure: now,
                banned_until: None,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures < self.threshold {
            return None;
        }
        let doublings = (entry.failures - self.threshold).min(30);
        let window = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        entry.banned_until = Some(now + window);
        Some(window)
    }

    /// A successful login clears the address's record.
    pub fn record_success(&mut self, ip: IpAddr) {
        self.entries.remove(&key(ip));
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    /// Drops forgotten entries; if the map is still full, the entry with the oldest failure goes.
    fn evict(&mut self, now: Instant) {
        let memory = self.memory;
        self.entries.retain(|_, e| {
            now.duration_since(e.last_failure) <= memory
                || e.banned_until.is_some_and(|until| until > now)
        });
        while self.entries.len() >= self.capacity {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(ip, _)| *ip)
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

/// IPv6 clients usually own a whole /64, so they are tracked by prefix.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            failures_before_backoff: 3,
            backoff_initial_ms: 1000,
            backoff_max_secs: 4,
            failure_memory_secs: 60,
            max_tracked_addresses: 2,
            anonymous_role: None,
        }
    }

    #[test]
    fn bans_after_threshold_and_doubles_up_to_max() {
        let mut b = Backoff::new(&config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(b.record_failure(ip, t), None);
        assert_eq!(b.record_failure(ip, t), None);
        assert_eq!(b.record_failure(ip, t), Some(Duration::from_secs(1)));
        assert!(b.banned_for(ip, t).is_some());
        assert!(b.banned_for(other, t).is_none());
        assert_eq!(b.record_failure(ip, t), Some(Duration::from_secs(2)));
        assert_eq!(b.record_failure(ip, t), Some(Duration::from_secs(4)));
        assert_eq!(b.record_failure(ip, t), Some(Duration::from_secs(4)));
        assert!(b.banned_for(ip, t + Duration::from_secs(5)).is_none());
        b.record_success(ip);
        assert_eq!(b.record_failure(ip, t), None);
    }

    #[test]
    fn forgets_after_memory_and_bounds_the_map() {
        let mut b = Backoff::new(&config());
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        b.record_failure(a, t);
        b.record_failure(a, t);
        assert_eq!(b.record_failure(a, t + Duration::from_secs(61)), None);
        for i in 0..100u8 {
            b.record_failure(
                IpAddr::from([10, 1, 0, i]),
                t + Duration::from_secs(62 + u64::from(i)),
            );
        }
        assert!(b.tracked() <= 2);
    }

    #[test]
    fn ipv6_tracked_by_prefix() {
        let mut b = Backoff::new(&config());
        let t = Instant::now();
        for i in 1..=3u16 {
            b.record_failure(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i)),
                t,
            );
        }
        assert!(
            b.banned_for("2001:db8:0:1::99".parse().unwrap(), t)
                .is_some()
        );
        assert!(
            b.banned_for("2001:db8:0:2::1".parse().unwrap(), t)
                .is_none()
        );
    }
}
