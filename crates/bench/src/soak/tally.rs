//! Counting outcomes by label ("HTTP 429", "CONNACK 0x86 ...") from many tasks at once.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// Outcome label -> count, shared by the tasks of one kind of client.
#[derive(Debug, Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    pub fn add(&self, label: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(label.into())
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    /// "401 ×12, 429 ×3,400" (most frequent first), or "none".
    pub fn summary(&self) -> String {
        let mut entries: Vec<(String, u64)> = self.snapshot().into_iter().collect();
        if entries.is_empty() {
            return "none".to_string();
        }
        entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        entries
            .iter()
            .map(|(label, n)| format!("{label} ×{}", thousands(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// 12345 -> "12,345".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lists_the_most_frequent_outcome_first() {
        let tally = Tally::default();
        tally.add("HTTP 401");
        for _ in 0..1500 {
            tally.add("HTTP 429");
        }
        let clone = tally.clone();
        clone.add("HTTP 401");
        assert_eq!(tally.summary(), "HTTP 429 ×1,500, HTTP 401 ×2");
        assert_eq!(tally.total(), 1502);
        assert_eq!(Tally::default().summary(), "none");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
