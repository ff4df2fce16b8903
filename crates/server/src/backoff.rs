//! Backoff for failed logins, per address and per account: after a few failures an address (or
//! an account, from any address) is refused outright (with `Banned` / 429, before its
//! credentials are even looked at) for a window that doubles with every further failure.
//! Others are unaffected. Memory is bounded.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use crate::config::AuthConfig;

/// Account names longer than this are tracked by their prefix (memory bound per entry).
const MAX_ACCOUNT_KEY: usize = 128;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Addr(IpAddr),
    Account(Box<str>),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    banned_until: Option<Instant>,
}

/// Why an attempt is refused before its credentials are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    pub remaining: Duration,
    /// `true` when the account (not only the address) is backing off.
    pub account: bool,
}

impl Ban {
    /// The text clients get: what happened and when to try again.
    pub fn message(&self, ip: IpAddr) -> String {
        let secs = self.remaining.as_secs().max(1);
        if self.account {
            format!("too many failed logins for this account; try again in {secs} s")
        } else {
            format!("too many failed logins from {ip}; try again in {secs} s")
        }
    }
}

/// Failures per address and per account (so that many addresses cannot take turns guessing
/// one account's password). Memory is bounded by `max_tracked_addresses` entries.
#[derive(Debug)]
pub struct Backoff {
    entries: HashMap<Key, Entry>,
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

    /// `Some` when `ip`, or `account` if given, is currently refused.
    pub fn banned_for(&self, ip: IpAddr, account: Option<&str>, now: Instant) -> Option<Ban> {
        let remaining = |key: &Key| {
            let until = self.entries.get(key)?.banned_until?;
            (until > now).then(|| until - now)
        };
        if let Some(remaining) = remaining(&addr_key(ip)) {
            return Some(Ban {
                remaining,
                account: false,
            });
        }
        let remaining = remaining(&account_key(account?))?;
        Some(Ban {
            remaining,
            account: true,
        })
    }

    /// Records a failed attempt for `ip` and `account`. Callers record it *before* verifying
    /// (and retract it with [`Backoff::record_success`]), so parallel attempts cannot all pass
    /// the ban check while their verifications run. Returns the ban window it started, if any.
    pub fn record_failure(
        &mut self,
        ip: IpAddr,
        account: Option<&str>,
        now: Instant,
    ) -> Option<Duration> {
        let mut started = self.fail(addr_key(ip), now);
        if let Some(account) = account {
            started = started.max(self.fail(account_key(account), now));
        }
        started
    }

    /// Retracts the one failure recorded for this attempt. Other accounts' records, and earlier
    /// failures, stay: a correct password for one account says nothing about guesses at others.
    pub fn record_success(&mut self, ip: IpAddr, account: Option<&str>) {
        self.retract(&addr_key(ip));
        if let Some(account) = account {
            self.retract(&account_key(account));
        }
    }

    pub fn tracked(&self) -> usize {
        self.entries.len()
    }

    fn fail(&mut self, key: Key, now: Instant) -> Option<Duration> {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        let entry = self.entries.entry(key).or_insert(Entry {
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

    fn retract(&mut self, key: &Key) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.failures = entry.failures.saturating_sub(1);
        if entry.failures < self.threshold {
            // The ban this attempt's provisional failure started was not earned.
            entry.banned_until = None;
        }
        if entry.failures == 0 {
            self.entries.remove(key);
        }
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
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

fn addr_key(ip: IpAddr) -> Key {
    Key::Addr(key(ip))
}

fn account_key(account: &str) -> Key {
    let mut end = account.len().min(MAX_ACCOUNT_KEY);
    while !account.is_char_boundary(end) {
        end -= 1;
    }
    Key::Account(account[..end].into())
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
            ..AuthConfig::default()
        }
    }

    #[test]
    fn bans_after_threshold_and_doubles_up_to_max() {
        let mut b = Backoff::new(&config());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        assert_eq!(b.record_failure(ip, None, t), None);
        assert_eq!(b.record_failure(ip, None, t), None);
        assert_eq!(b.record_failure(ip, None, t), Some(Duration::from_secs(1)));
        assert!(b.banned_for(ip, None, t).is_some());
        assert!(b.banned_for(other, None, t).is_none());
        assert_eq!(b.record_failure(ip, None, t), Some(Duration::from_secs(2)));
        assert_eq!(b.record_failure(ip, None, t), Some(Duration::from_secs(4)));
        assert_eq!(b.record_failure(ip, None, t), Some(Duration::from_secs(4)));
        assert!(b.banned_for(ip, None, t + Duration::from_secs(5)).is_none());
    }

    #[test]
    fn forgets_after_memory_and_bounds_the_map() {
        let mut b = Backoff::new(&config());
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        b.record_failure(a, None, t);
        b.record_failure(a, None, t);
        assert_eq!(b.record_failure(a, None, t + Duration::from_secs(61)), None);
        for i in 0..100u8 {
            b.record_failure(
                IpAddr::from([10, 1, 0, i]),
                Some("admin"),
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
                None,
                t,
            );
        }
        assert!(
            b.banned_for("2001:db8:0:1::99".parse().unwrap(), None, t)
                .is_some()
        );
        assert!(
            b.banned_for("2001:db8:0:2::1".parse().unwrap(), None, t)
                .is_none()
        );
    }

    #[test]
    fn an_account_backs_off_across_addresses() {
        let mut b = Backoff::new(&AuthConfig {
            max_tracked_addresses: 100,
            ..config()
        });
        let t = Instant::now();
        for i in 1..=3u8 {
            b.record_failure(IpAddr::from([10, 0, 0, i]), Some("admin"), t);
        }
        let fresh: IpAddr = "10.9.9.9".parse().unwrap();
        let ban = b.banned_for(fresh, Some("admin"), t).unwrap();
        assert!(ban.account, "{ban:?}");
        assert!(b.banned_for(fresh, Some("alice"), t).is_none());
        assert!(b.banned_for(fresh, None, t).is_none());
    }

    #[test]
    fn a_success_retracts_only_its_own_provisional_failure() {
        let mut b = Backoff::new(&AuthConfig {
            max_tracked_addresses: 100,
            ..config()
        });
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // Two wrong guesses at admin from this address, then alice logs in from it.
        b.record_failure(ip, Some("admin"), t);
        b.record_failure(ip, Some("admin"), t);
        b.record_failure(ip, Some("alice"), t);
        b.record_success(ip, Some("alice"));
        // The address still has its two failures: one more and it is banned.
        assert_eq!(
            b.record_failure(ip, Some("admin"), t),
            Some(Duration::from_secs(1))
        );
        assert!(b.banned_for(ip, Some("admin"), t).is_some());
    }

    #[test]
    fn a_provisional_failure_that_turns_out_right_lifts_the_ban_it_started() {
        let mut b = Backoff::new(&AuthConfig {
            max_tracked_addresses: 100,
            ..config()
        });
        let t = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        b.record_failure(ip, Some("alice"), t);
        b.record_failure(ip, Some("alice"), t);
        assert!(b.record_failure(ip, Some("alice"), t).is_some());
        b.record_success(ip, Some("alice"));
        assert!(b.banned_for(ip, Some("alice"), t).is_none());
    }
}
