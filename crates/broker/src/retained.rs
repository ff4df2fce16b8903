//! Retained messages, one per topic, kept in a tree of topic levels so that a wildcard
//! SUBSCRIBE walks only the matching branches instead of scanning every retained topic.

use std::{collections::HashMap, sync::Arc};

use tokio::time::Instant;

use crate::message::Publication;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    msg: Option<Arc<Publication>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.msg.is_none()
    }
}

#[derive(Debug, Default)]
pub struct RetainedStore {
    root: Node,
    len: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `msg` for its topic, or deletes the topic's retained message if the payload is
    /// empty (MQTT-3.3.1-6, -7). Returns whether something changed.
    pub fn set(&mut self, msg: Arc<Publication>) -> bool {
        if msg.payload.is_empty() {
            let topic = msg.topic.clone();
            return self.remove(&topic);
        }
        let mut node = &mut self.root;
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.msg.replace(msg).is_none() {
            self.len += 1;
        }
        true
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        fn rec(node: &mut Node, mut levels: std::str::Split<'_, char>) -> bool {
            match levels.next() {
                None => node.msg.take().is_some(),
                Some(l) => {
                    let Some(child) = node.children.get_mut(l) else {
                        return false;
                    };
                    let removed = rec(child, levels);
                    if child.is_empty() {
                        node.children.remove(l);
                    }
                    removed
                }
            }
        }
        let removed = rec(&mut self.root, topic.split('/'));
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Every unexpired retained message whose topic matches the plain filter `filter`.
    pub fn matching(&self, filter: &str, now: Instant) -> Vec<Arc<Publication>> {
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        collect(&self.root, &levels, true, now, &mut out);
        out
    }
}

fn push_live(node: &Node, now: Instant, out: &mut Vec<Arc<Publication>>) {
    if let Some(m) = &node.msg
        && !m.is_expired(now)
    {
        out.push(m.clone());
    }
}

fn collect(
    node: &Node,
    levels: &[&str],
    first: bool,
    now: Instant,
    out: &mut Vec<Arc<Publication>>,
) {
    let Some((level, rest)) = levels.split_first() else {
        push_live(node, now, out);
        return;
    };
    match *level {
        "#" => {
            // `a/#` includes `a` itself; at the root, `#` skips `$` topics (MQTT-4.7.2-1).
            if !first {
                push_live(node, now, out);
            }
            fn all(node: &Node, now: Instant, out: &mut Vec<Arc<Publication>>) {
                for c in node.children.values() {
                    push_live(c, now, out);
                    all(c, now, out);
                }
            }
            for (name, c) in &node.children {
                if first && name.starts_with('$') {
                    continue;
                }
                push_live(c, now, out);
                all(c, now, out);
            }
        }
        "+" => {
            for (name, c) in &node.children {
                if first && name.starts_with('$') {
                    continue;
                }
                collect(c, rest, false, now, out);
            }
        }
        l => {
            if let Some(c) = node.children.get(l) {
                collect(c, rest, false, now, out);
            }
        }
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
}
