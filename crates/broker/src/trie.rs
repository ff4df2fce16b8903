//! The subscription trie: one node per topic level, so matching a PUBLISH costs O(levels ×
//! wildcard branches), not a scan over all subscriptions.
//!
//! Generic over the entry type so the router stores whatever it needs per subscriber and the
//! tests can use plain values. Entries in a node are kept in a `Vec`: fan-out iterates them,
//! and replacing/removing one is a linear search keyed by a caller-supplied predicate (the
//! router compares session pointers).

use std::collections::HashMap;

use crate::shared::SharedGroup;

/// Subscribers attached to one filter.
#[derive(Debug)]
pub struct Leaf<T> {
    pub subs: Vec<T>,
    pub groups: Vec<SharedGroup<T>>,
}

impl<T> Default for Leaf<T> {
    fn default() -> Self {
        Leaf {
            subs: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<T> Leaf<T> {
    fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.groups.is_empty()
    }
}

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    plus: Option<Box<Node<T>>>,
    /// Subscribers of `<path>/#`.
    hash: Option<Box<Leaf<T>>>,
    /// Subscribers of exactly `<path>`.
    leaf: Option<Box<Leaf<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            leaf: None,
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.leaf.is_none()
    }
}

/// What a PUBLISH matched.
pub enum Match<'a, T> {
    Sub(&'a T),
    Group(&'a SharedGroup<T>),
}

#[derive(Debug)]
pub struct Trie<T> {
    root: Node<T>,
    len: usize,
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie {
            root: Node::default(),
            len: 0,
        }
    }
}

/// Splits the first level off `rest`; `None` once all levels are consumed.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}

impl<T> Trie<T> {
    /// Number of (filter, subscriber) entries, shared group members included.
    pub fn len(&self) -> usize {
        self.len
    }

    fn leaf_mut(&mut self, filter: &str) -> &mut Leaf<T> {
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            if level == "#" {
                return node.hash.get_or_insert_with(Default::default);
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            rest = next;
        }
        node.leaf.get_or_insert_with(Default::default)
    }

    /// Adds `entry` under `filter` (plain, without `$share/`), or in shared `group`. An
    /// existing entry for which `same` is true is replaced and returned.
    pub fn insert(
        &mut self,
        filter: &str,
        group: Option<&str>,
        entry: T,
        same: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let leaf = self.leaf_mut(filter);
        let list = match group {
            None => &mut leaf.subs,
            Some(name) => {
                let idx = match leaf.groups.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        leaf.groups.push(SharedGroup::new(name));
                        leaf.groups.len() - 1
                    }
                };
                &mut leaf.groups[idx].members
            }
        };
        match list.iter_mut().find(|e| same(e)) {
            Some(old) => Some(std::mem::replace(old, entry)),
            None => {
                list.push(entry);
                self.len += 1;
                None
            }
        }
    }

    /// Removes the entry under `filter`/`group` for which `same` is true.
    pub fn remove(
        &mut self,
        filter: &str,
        group: Option<&str>,
        same: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let removed = remove_in(&mut self.root, Some(filter), group, &same);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `visit` for every subscription whose filter matches the topic name `topic`.
    /// Wildcards at the first level do not match topics starting with `$` (MQTT-4.7.2-1).
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, T>)) {
        let dollar = topic.starts_with('$');
        walk(&self.root, Some(topic), true, dollar, &mut visit);
    }
}

fn visit_leaf<'a, T>(leaf: &'a Leaf<T>, visit: &mut impl FnMut(Match<'a, T>)) {
    for s in &leaf.subs {
        visit(Match::Sub(s));
    }
    for g in &leaf.groups {
        if !g.members.is_empty() {
            visit(Match::Group(g));
        }
    }
}

fn walk<'a, T>(
    node: &'a Node<T>,
    rest: Option<&str>,
    first: bool,
    dollar: bool,
    visit: &mut impl FnMut(Match<'a, T>),
) {
    let wild_ok = !(first && dollar);
    if wild_ok && let Some(h) = &node.hash {
        // `a/#` matches `a` itself as well as everything below it.
        visit_leaf(h, visit);
    }
    match rest {
        None => {
            if let Some(l) = &node.leaf {
                visit_leaf(l, visit);
            }
        }
        Some(r) => {
            let (level, next) = split_level(r);
            if let Some(c) = node.children.get(level) {
                walk(c, next, false, dollar, visit);
            }
            if wild_ok && let Some(p) = &node.plus {
                walk(p, next, false, dollar, visit);
            }
        }
    }
}

fn remove_from_leaf<T>(
    leaf: &mut Leaf<T>,
    group: Option<&str>,
    same: &impl Fn(&T) -> bool,
) -> Option<T> {
    match group {
        None => {
            let i = leaf.subs.iter().position(same)?;
            Some(leaf.subs.swap_remove(i))
        }
        Some(name) => {
            let gi = leaf.groups.iter().position(|g| &*g.name == name)?;
            let g = &mut leaf.groups[gi];
            let i = g.members.iter().position(same)?;
            // Keep member order so the round-robin cursor stays fair.
            let removed = g.members.remove(i);
            if g.members.is_empty() {
                leaf.groups.swap_remove(gi);
            }
            Some(removed)
        }
    }
}

fn remove_in<T>(
    node: &mut Node<T>,
    rest: Option<&str>,
    group: Option<&str>,
    same: &impl Fn(&T) -> bool,
) -> Option<T> {
    let Some(r) = rest else {
        let leaf = node.leaf.as_mut()?;
        let removed = remove_from_leaf(leaf, group, same);
        if leaf.is_empty() {
            node.leaf = None;
        }
        return removed;
    };
    let (level, next) = split_level(r);
    if level == "#" {
        let leaf = node.hash.as_mut()?;
        let removed = remove_from_leaf(leaf, group, same);
        if leaf.is_empty() {
            node.hash = None;
        }
        return removed;
    }
    if level == "+" {
        let child = node.plus.as_mut()?;
        let removed = remove_in(child, next, group, same);
        if child.is_empty() {
            node.plus = None;
        }
        return removed;
    }
    let child = node.children.get_mut(level)?;
    let removed = remove_in(child, next, group, same);
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matched(t: &Trie<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        t.for_each_match(topic, |m| match m {
            Match::Sub(v) => out.push(*v),
            Match::Group(g) => out.extend(g.members.iter().copied()),
        });
        out.sort();
        out
    }

    #[test]
    fn agrees_with_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/b", "a/+", "a/#", "+/b", "+/+", "a/b/c", "a/+/c", "$SYS/#", "$SYS/+",
            "+/#", "a//c", "a/+/+", "/a", "+/a", "#/x",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "b", "a/", "/a", "$SYS/x", "$SYS", "a//c", "x/b", "/",
        ];
        let mut t = Trie::default();
        for (i, f) in filters.iter().enumerate() {
            if codec::topic::validate_topic_filter(f).is_err() {
                continue;
            }
            t.insert(f, None, i as u32, |e| *e == i as u32);
        }
        for topic in topics {
            let mut want: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| codec::topic::validate_topic_filter(f).is_ok())
                .filter(|(_, f)| codec::topic::matches(f, topic))
                .map(|(i, _)| i as u32)
                .collect();
            want.sort();
            assert_eq!(matched(&t, topic), want, "topic {topic}");
        }
    }

    #[test]
    fn remove_prunes_and_replace_keeps_len() {
        let mut t = Trie::default();
        assert!(t.insert("a/+/c", None, 1, |e| *e == 1).is_none());
        assert_eq!(t.insert("a/+/c", None, 1, |e| *e == 1), Some(1));
        t.insert("a/#", Some("g"), 2, |e| *e == 2);
        assert_eq!(t.len(), 2);
        assert_eq!(matched(&t, "a/b/c"), vec![1, 2]);
        assert_eq!(t.remove("a/+/c", None, |e| *e == 1), Some(1));
        assert_eq!(t.remove("a/#", Some("g"), |e| *e == 2), Some(2));
        assert_eq!(t.remove("a/#", Some("g"), |e| *e == 2), None);
        assert_eq!(t.len(), 0);
        assert!(t.root.is_empty());
    }
}
