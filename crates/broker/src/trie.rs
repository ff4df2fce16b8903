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

    /// Removes the entry under `filter`/`group` for which `same` is true, and prunes the
    /// nodes left empty. Iterative: the filter's depth comes from the client.
    pub fn remove(
        &mut self,
        filter: &str,
        group: Option<&str>,
        same: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let (steps, in_hash) = path_of(filter);
        let removed = {
            let mut node = &mut self.root;
            for step in &steps {
                node = node.child_mut(step)?;
            }
            let slot = if in_hash {
                &mut node.hash
            } else {
                &mut node.leaf
            };
            let leaf = slot.as_mut()?;
            let removed = remove_from_leaf(leaf, group, &same);
            if leaf.is_empty() {
                *slot = None;
            }
            removed?
        };
        self.len -= 1;
        self.prune(&steps);
        Some(removed)
    }

    /// Removes the deepest run of nodes along `steps` that hold nothing but the next node
    /// of the run (the tail of a just-emptied path).
    fn prune(&mut self, steps: &[&str]) {
        let mut path: Vec<&Node<T>> = Vec::with_capacity(steps.len() + 1);
        let mut node = &self.root;
        path.push(node);
        for step in steps {
            match node.child(step) {
                Some(c) => node = c,
                None => return,
            }
            path.push(node);
        }
        // `cut`: the shallowest depth from which every node down the path is removable.
        let mut cut = None;
        for depth in (1..path.len()).rev() {
            let n = path[depth];
            let removable = if depth == path.len() - 1 {
                n.is_empty()
            } else {
                n.leaf.is_none()
                    && n.hash.is_none()
                    && n.children.len() + usize::from(n.plus.is_some()) == 1
            };
            if !removable {
                break;
            }
            cut = Some(depth);
        }
        let Some(cut) = cut else { return };
        let mut parent = &mut self.root;
        for step in &steps[..cut - 1] {
            match parent.child_mut(step) {
                Some(c) => parent = c,
                None => return,
            }
        }
        let step = steps[cut - 1];
        // Dropping the detached chain is iterative too (see `Drop for Node`).
        if step == "+" {
            parent.plus = None;
        } else {
            parent.children.remove(step);
        }
    }

    /// Calls `visit` for every subscription whose filter matches the topic name `topic`.
    /// Wildcards at the first level do not match topics starting with `$` (MQTT-4.7.2-1).
    /// Iterative: the depth comes from the publisher. The walk follows one branch at a time
    /// and stacks the other only where a level has both an exact child and `+`, so a
    /// publish without such forks allocates nothing.
    pub fn for_each_match<'a>(&'a self, topic: &str, mut visit: impl FnMut(Match<'a, T>)) {
        let dollar = topic.starts_with('$');
        let mut forks: Vec<(&'a Node<T>, Option<&str>)> = Vec::new();
        let mut current = Some((&self.root, Some(topic), true));
        while let Some((node, rest, first)) = current
            .take()
            .or_else(|| forks.pop().map(|(n, r)| (n, r, false)))
        {
            let wild_ok = !(first && dollar);
            if wild_ok && let Some(h) = &node.hash {
                // `a/#` matches `a` itself as well as everything below it.
                visit_leaf(h, &mut visit);
            }
            let Some(r) = rest else {
                if let Some(l) = &node.leaf {
                    visit_leaf(l, &mut visit);
                }
                continue;
            };
            let (level, next) = split_level(r);
            let exact = node.children.get(level);
            let plus = node.plus.as_deref().filter(|_| wild_ok);
            current = match (exact, plus) {
                (Some(c), Some(p)) => {
                    forks.push((p, next));
                    Some((c, next, false))
                }
                (Some(c), None) | (None, Some(c)) => Some((c, next, false)),
                (None, None) => None,
            };
        }
    }
}

/// The steps from the root to the node holding `filter`'s subscribers, and whether they
/// sit in that node's `#` leaf.
fn path_of(filter: &str) -> (Vec<&str>, bool) {
    let mut steps: Vec<&str> = filter.split('/').collect();
    let in_hash = steps.last() == Some(&"#");
    if in_hash {
        steps.pop();
    }
    (steps, in_hash)
}

impl<T> Node<T> {
    fn child(&self, step: &str) -> Option<&Node<T>> {
        if step == "+" {
            self.plus.as_deref()
        } else {
            self.children.get(step)
        }
    }

    fn child_mut(&mut self, step: &str) -> Option<&mut Node<T>> {
        if step == "+" {
            self.plus.as_deref_mut()
        } else {
            self.children.get_mut(step)
        }
    }
}

/// The derived drop would recurse once per level; a chain of nodes as deep as a filter is
/// long would overflow the stack. Children are moved onto a heap stack instead.
impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        let mut stack: Vec<Node<T>> = Vec::new();
        stack.extend(self.children.drain().map(|(_, c)| c));
        stack.extend(self.plus.take().map(|b| *b));
        while let Some(mut n) = stack.pop() {
            stack.extend(n.children.drain().map(|(_, c)| c));
            stack.extend(n.plus.take().map(|b| *b));
        }
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

    /// A filter and topic as deep as a packet allows must not overflow the stack in insert,
    /// match, remove or drop (CVE-2019-11779 class); this runs on a test thread's 2 MiB stack.
    #[test]
    fn deep_filters_do_not_recurse() {
        let deep = vec!["a"; 100_000].join("/");
        let mut t = Trie::default();
        t.insert(&deep, None, 1, |e| *e == 1);
        t.insert(&format!("{deep}/#"), None, 2, |e| *e == 2);
        t.insert("a/+/a", None, 3, |e| *e == 3);
        assert_eq!(matched(&t, &deep), vec![1, 2]);
        assert_eq!(matched(&t, "a/a/a"), vec![3]);
        assert_eq!(t.remove(&deep, None, |e| *e == 1), Some(1));
        assert_eq!(matched(&t, &deep), vec![2]);
        assert_eq!(t.remove(&format!("{deep}/#"), None, |e| *e == 2), Some(2));
        assert_eq!(
            t.root.children.len(),
            1,
            "the deep chain is pruned, a/+/a stays"
        );
        t.insert(&deep, None, 4, |e| *e == 4);
        drop(t);
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
