//! Retained messages, one per topic, kept in a tree of topic levels so that a wildcard
//! SUBSCRIBE walks only the matching branches instead of scanning every retained topic.
//!
//! Each retained message remembers the principal that stored it, so that one principal's
//! retained messages can be bounded in count and bytes (`Limits::max_retained_per_principal`,
//! `Limits::max_retained_bytes_per_principal`). Messages stored by the broker itself (`$SYS`,
//! in-process clients, wills) have no owner and are not counted.
//!
//! Every walk is iterative: a topic's depth comes from the client.

use std::{collections::HashMap, sync::Arc};

use tokio::time::Instant;

use crate::message::Publication;

#[derive(Debug)]
struct Stored {
    msg: Arc<Publication>,
    owner: Option<Arc<str>>,
}

impl Stored {
    fn cost(&self) -> usize {
        cost(&self.msg)
    }
}

/// What a retained message counts against its owner's byte quota.
fn cost(msg: &Publication) -> usize {
    msg.topic.len() + msg.payload.len()
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    stored: Option<Stored>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.stored.is_none()
    }
}

/// The derived drop would recurse once per level (see `trie`).
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack: Vec<Node> = self.children.drain().map(|(_, c)| c).collect();
        while let Some(mut n) = stack.pop() {
            stack.extend(n.children.drain().map(|(_, c)| c));
        }
    }
}

/// One principal's retained messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub count: usize,
    pub bytes: usize,
}

/// The per-principal bounds on retained messages.
#[derive(Debug, Clone, Copy)]
pub struct RetainQuota {
    pub max_count: usize,
    pub max_bytes: usize,
}

/// Why a retained message was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetainRefused {
    #[error(
        "retained message quota exceeded: {principal} would hold {count} retained messages, the limit is {max}; delete some by publishing an empty retained payload to their topics"
    )]
    Count {
        principal: Arc<str>,
        count: usize,
        max: usize,
    },
    #[error(
        "retained message quota exceeded: {principal} would hold {bytes} bytes of retained messages, the limit is {max}; delete some by publishing an empty retained payload to their topics"
    )]
    Bytes {
        principal: Arc<str>,
        bytes: usize,
        max: usize,
    },
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
    usage: HashMap<Arc<str>, Usage>,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    /// What `principal`'s retained messages currently cost.
    pub fn usage(&self, principal: &str) -> Usage {
        self.usage.get(principal).copied().unwrap_or_default()
    }

    fn find(&self, topic: &str) -> Option<&Stored> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.stored.as_ref()
    }

    /// Stores `msg` for its topic on behalf of `owner` (unbounded without one), or deletes
    /// the topic's retained message if the payload is empty (MQTT-3.3.1-6, -7; always
    /// allowed). Returns whether something changed; nothing changes when refused.
    pub fn set_owned(
        &mut self,
        msg: Arc<Publication>,
        owner: Option<&Arc<str>>,
        quota: RetainQuota,
    ) -> Result<bool, RetainRefused> {
        if msg.payload.is_empty() {
            let topic = msg.topic.clone();
            return Ok(self.remove(&topic));
        }
        if let Some(owner) = owner {
            let mut usage = self.usage(owner);
            if let Some(old) = self.find(&msg.topic)
                && old.owner.as_ref() == Some(owner)
            {
                usage.count -= 1;
                usage.bytes -= old.cost();
            }
            usage.count += 1;
            usage.bytes += cost(&msg);
            if usage.count > quota.max_count {
                return Err(RetainRefused::Count {
                    principal: owner.clone(),
                    count: usage.count,
                    max: quota.max_count,
                });
            }
            if usage.bytes > quota.max_bytes {
                return Err(RetainRefused::Bytes {
                    principal: owner.clone(),
                    bytes: usage.bytes,
                    max: quota.max_bytes,
                });
            }
        }
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let new = Stored {
            msg,
            owner: owner.cloned(),
        };
        let added = charge(&mut self.usage, &new, true);
        debug_assert!(added || new.owner.is_none());
        match node.stored.replace(new) {
            Some(old) => {
                charge(&mut self.usage, &old, false);
            }
            None => self.len += 1,
        }
        Ok(true)
    }

    /// Stores `msg` without an owner (the broker's own messages, and recovery).
    #[cfg(test)]
    pub fn set(&mut self, msg: Arc<Publication>) -> bool {
        let unbounded = RetainQuota {
            max_count: usize::MAX,
            max_bytes: usize::MAX,
        };
        self.set_owned(msg, None, unbounded).unwrap_or(false)
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let removed = {
            let mut node = &mut self.root;
            for level in &levels {
                match node.children.get_mut(*level) {
                    Some(c) => node = c,
                    None => return false,
                }
            }
            node.stored.take()
        };
        let Some(old) = removed else {
            return false;
        };
        charge(&mut self.usage, &old, false);
        self.len -= 1;
        self.prune(&levels);
        true
    }

    /// Removes the deepest run of nodes along `levels` that hold nothing but the next one.
    fn prune(&mut self, levels: &[&str]) {
        let mut path: Vec<&Node> = Vec::with_capacity(levels.len() + 1);
        let mut node = &self.root;
        path.push(node);
        for level in levels {
            match node.children.get(*level) {
                Some(c) => node = c,
                None => return,
            }
            path.push(node);
        }
        let mut cut = None;
        for depth in (1..path.len()).rev() {
            let n = path[depth];
            let removable = if depth == path.len() - 1 {
                n.is_empty()
            } else {
                n.stored.is_none() && n.children.len() == 1
            };
            if !removable {
                break;
            }
            cut = Some(depth);
        }
        let Some(cut) = cut else { return };
        let mut parent = &mut self.root;
        for level in &levels[..cut - 1] {
            match parent.children.get_mut(*level) {
                Some(c) => parent = c,
                None => return,
            }
        }
        parent.children.remove(levels[cut - 1]);
    }

    /// Every unexpired retained message whose topic matches the plain filter `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Publication>> {
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        // (node, index of the filter level to match next, at the root level)
        let mut stack: Vec<(&Node, usize, bool)> = vec![(&self.root, 0, true)];
        while let Some((node, i, first)) = stack.pop() {
            let Some(level) = levels.get(i) else {
                push_live(node, now, &mut out);
                continue;
            };
            match *level {
                "#" => {
                    // `a/#` includes `a` itself; at the root, `#` skips `$` topics
                    // (MQTT-4.7.2-1).
                    if !first {
                        push_live(node, now, &mut out);
                    }
                    let mut below: Vec<&Node> = node
                        .children
                        .iter()
                        .filter(|(name, _)| !(first && name.starts_with('$')))
                        .map(|(_, c)| c)
                        .collect();
                    while let Some(n) = below.pop() {
                        push_live(n, now, &mut out);
                        below.extend(n.children.values());
                    }
                }
                "+" => {
                    for (name, c) in &node.children {
                        if first && name.starts_with('$') {
                            continue;
                        }
                        stack.push((c, i + 1, false));
                    }
                }
                l => {
                    if let Some(c) = node.children.get(l) {
                        stack.push((c, i + 1, false));
                    }
                }
            }
        }
        out
    }
}

/// Adds (`add`) or removes `stored`'s cost to its owner's usage; false without an owner.
fn charge(usage: &mut HashMap<Arc<str>, Usage>, stored: &Stored, add: bool) -> bool {
    let Some(owner) = &stored.owner else {
        return false;
    };
    let cost = stored.cost();
    if add {
        let u = usage.entry(owner.clone()).or_default();
        u.count += 1;
        u.bytes += cost;
    } else if let Some(u) = usage.get_mut(owner) {
        u.count -= 1;
        u.bytes -= cost;
        if u.count == 0 {
            usage.remove(owner);
        }
    }
    true
}

fn push_live(node: &Node, now: Instant, out: &mut Vec<Arc<Publication>>) {
    if let Some(s) = &node.stored
        && !s.msg.is_expired(now)
    {
        out.push(s.msg.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{ByteStr, PublishProperties, QoS};

    fn p(topic: &str, payload: &str) -> Arc<Publication> {
        Arc::new(Publication::new(
            ByteStr::from(topic),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
            PublishProperties::default(),
            0,
        ))
    }

    #[test]
    fn matches_like_subscriptions() {
        let mut s = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/b", "a//c"] {
            s.set(p(t, "x"));
        }
        let now = Instant::now();
        let names = |s: &RetainedStore, f: &str| {
            let mut v: Vec<String> = s
                .matching(f, now)
                .iter()
                .map(|m| m.topic.to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&s, "#"), vec!["a", "a//c", "a/b", "a/b/c", "b/b"]);
        assert_eq!(names(&s, "a/#"), vec!["a", "a//c", "a/b", "a/b/c"]);
        assert_eq!(names(&s, "+/b"), vec!["a/b", "b/b"]);
        assert_eq!(names(&s, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(names(&s, "a/+/c"), vec!["a//c", "a/b/c"]);
        assert!(s.set(p("a/b", "")));
        assert_eq!(names(&s, "a/#"), vec!["a", "a//c", "a/b/c"]);
        assert_eq!(s.len(), 5);
    }

    /// Topics as deep as a packet allows must not overflow the stack in set, match,
    /// remove or drop; this runs on a test thread's 2 MiB stack.
    #[test]
    fn deep_topics_do_not_recurse() {
        let deep = vec!["a"; 100_000].join("/");
        let mut s = RetainedStore::default();
        s.set(p(&deep, "x"));
        s.set(p("a/b", "y"));
        let now = Instant::now();
        assert_eq!(s.matching("#", now).len(), 2);
        assert_eq!(s.matching(&deep, now).len(), 1);
        assert_eq!(s.matching(&format!("{deep}/#"), now).len(), 1);
        assert!(s.remove(&deep));
        assert_eq!(s.root.children["a"].children.len(), 1, "pruned to a/b");
        s.set(p(&deep, "x"));
        drop(s);
    }

    #[test]
    fn quota_counts_per_owner_and_frees_on_delete_and_replace() {
        let mut s = RetainedStore::default();
        let alice: Arc<str> = Arc::from("user:alice");
        let bob: Arc<str> = Arc::from("user:bob");
        let quota = RetainQuota {
            max_count: 2,
            max_bytes: 10,
        };
        assert_eq!(s.set_owned(p("a", "12"), Some(&alice), quota), Ok(true));
        assert_eq!(s.set_owned(p("b", "12"), Some(&alice), quota), Ok(true));
        assert!(matches!(
            s.set_owned(p("c", "1"), Some(&alice), quota),
            Err(RetainRefused::Count { max: 2, .. })
        ));
        // Replacing one's own message does not count twice; too many bytes is refused.
        assert_eq!(s.set_owned(p("a", "1234"), Some(&alice), quota), Ok(true));
        assert!(matches!(
            s.set_owned(p("a", "123456789"), Some(&alice), quota),
            Err(RetainRefused::Bytes { max: 10, .. })
        ));
        assert_eq!(s.usage(&alice), Usage { count: 2, bytes: 8 });
        // Bob overwrites alice's topic: it moves to bob's account.
        assert_eq!(s.set_owned(p("a", "z"), Some(&bob), quota), Ok(true));
        assert_eq!(s.usage(&alice), Usage { count: 1, bytes: 3 });
        assert_eq!(s.usage(&bob), Usage { count: 1, bytes: 2 });
        assert_eq!(s.set_owned(p("b", ""), Some(&bob), quota), Ok(true));
        assert_eq!(s.usage(&alice), Usage::default());
        assert_eq!(s.len(), 1);
    }
}
