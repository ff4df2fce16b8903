//! Shared subscriptions (`$share/{group}/{filter}`, spec 4.8.2): each message matching the
//! filter goes to one member of the group, chosen round-robin among the members that are
//! connected (falling back to any member, whose session then queues it).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The members of one share group under one filter (stored in the trie leaf).
#[derive(Debug)]
pub struct SharedGroup<T> {
    pub name: Box<str>,
    pub members: Vec<T>,
    /// Round-robin cursor; atomic so that fan-out needs only the trie's read lock.
    next: AtomicUsize,
}

impl<T> SharedGroup<T> {
    pub fn new(name: &str) -> SharedGroup<T> {
        SharedGroup {
            name: name.into(),
            members: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// The member to deliver the next message to: the next connected one after the cursor,
    /// or, if none is connected, the next one in turn.
    pub fn pick(&self, connected: impl Fn(&T) -> bool) -> Option<&T> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (start + k) % n;
            if connected(&self.members[i]) {
                if k > 0 {
                    // Skip past the member we used so the rotation stays fair.
                    self.next.store(i + 1, Ordering::Relaxed);
                }
                return Some(&self.members[i]);
            }
        }
        Some(&self.members[start])
    }
}

/// A parsed subscription filter: the plain filter and the share group, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterSpec<'a> {
    pub filter: &'a str,
    pub group: Option<&'a str>,
}

impl<'a> FilterSpec<'a> {
    /// Splits `$share/{group}/{filter}`; the codec has already validated the syntax.
    pub fn parse(raw: &'a str) -> FilterSpec<'a> {
        match codec::topic::parse_shared(raw) {
            Some(s) => FilterSpec {
                filter: s.filter,
                group: Some(s.group),
            },
            None => FilterSpec {
                filter: raw,
                group: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_prefers_connected_members() {
        let mut g = SharedGroup::new("g");
        g.members = vec![1, 2, 3];
        let picks: Vec<i32> = (0..6).map(|_| *g.pick(|_| true).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
        let picks: Vec<i32> = (0..4).map(|_| *g.pick(|m| *m != 2).unwrap()).collect();
        assert!(!picks.contains(&2), "{picks:?}");
        assert!(picks.contains(&1) && picks.contains(&3));
        assert!(g.pick(|_| false).is_some());
        assert_eq!(
            FilterSpec::parse("$share/g/a/#"),
            FilterSpec {
                filter: "a/#",
                group: Some("g")
            }
        );
        assert_eq!(
            FilterSpec::parse("a/#"),
            FilterSpec {
                filter: "a/#",
                group: None
            }
        );
    }
}
