//! [`RetainedIndex`]: the retained message of each topic, in a trie of topic levels so that a
//! new subscription's filter finds its retained messages without scanning every topic.
//!
//! A SUBSCRIBE to `fleet/site7/+/status` walks only the `fleet`, `site7` and then each child's
//! `status` branch; `#` enumerates just the subtree below its prefix. Node storage is the same
//! non-recursive [`Arena`] as the subscription tree, and removing a topic prunes the nodes it
//! leaves empty. The full topic of a match is rebuilt level by level into one buffer during the
//! walk rather than stored per message.

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::topic::{split_level, validate_topic_name};

use super::arena::{Arena, NodeId, ROOT, shrink_map};

#[derive(Debug)]
struct Node<T> {
    children: HashMap<Box<str>, NodeId>,
    value: Option<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            value: None,
        }
    }
}

/// Retained messages keyed by topic name (section 3.3.1.3). `T` is whatever the caller keeps
/// per message (typically the PUBLISH and its arrival time, for expiry).
///
/// Topics must be valid topic names ([`validate_topic_name`]); anything else trips a debug
/// assertion. The root never holds a value: every topic has at least one level.
#[derive(Debug)]
pub struct RetainedIndex<T> {
    nodes: Arena<Node<T>>,
    len: usize,
}

impl<T> Default for RetainedIndex<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A pending step of [`RetainedIndex::for_each_match`]'s walk.
enum Walk<'f> {
    /// Match the rest of the filter below the node (`None`: the filter is used up).
    Filter(Option<&'f str>),
    /// Under a `#`: the node and everything below it matches.
    All,
}

impl<T> RetainedIndex<T> {
    pub fn new() -> Self {
        RetainedIndex {
            nodes: Arena::with_root(),
            len: 0,
        }
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes, the root included (so 1 when empty). For metrics and tests.
    pub fn node_count(&self) -> usize {
        self.nodes.live()
    }

    /// Stores the retained message of `topic`, returning the one it replaces.
    pub fn insert(&mut self, topic: &str, value: T) -> Option<T> {
        debug_assert!(validate_topic_name(topic).is_ok(), "bad topic {topic:?}");
        let mut id = ROOT;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            id = match self.nodes[id].children.get(level) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.alloc();
                    self.nodes[id].children.insert(level.into(), child);
                    child
                }
            };
        }
        let old = self.nodes[id].value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&T> {
        let mut id = ROOT;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            id = *self.nodes[id].children.get(level)?;
        }
        self.nodes[id].value.as_ref()
    }

    /// Removes the retained message of `topic` (a PUBLISH with RETAIN and an empty payload,
    /// MQTT-3.3.1-6, or expiry), pruning the nodes it leaves empty.
    pub fn remove(&mut self, topic: &str) -> Option<T> {
        let mut path: SmallVec<[(NodeId, &str, NodeId); 16]> = SmallVec::new();
        let mut id = ROOT;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            let child = *self.nodes[id].children.get(level)?;
            path.push((id, level, child));
            id = child;
        }
        let old = self.nodes[id].value.take()?;
        self.len -= 1;
        for &(parent, level, child) in path.iter().rev() {
            let node = &self.nodes[child];
            if node.value.is_some() || !node.children.is_empty() {
                break;
            }
            let parent_node = &mut self.nodes[parent];
            parent_node.children.remove(level);
            shrink_map(&mut parent_node.children);
            self.nodes.free(child);
        }
        Some(old)
    }

    /// Calls `f(topic, message)` for every retained message whose topic matches `filter`, in
    /// no particular order.
    ///
    /// `filter` is a valid plain filter (for `$share/{group}/{filter}` the session sends no
    /// retained messages at all, section 4.8.2). `+` matches one level, `#` the rest including
    /// its parent level, and neither matches a first level starting with `$` (MQTT-4.7.2-1).
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &T)) {
        let mut topic = String::new();
        // (node, what to match below it, its depth, topic length before its level, its level)
        let mut stack: Vec<(NodeId, Walk<'_>, usize, usize, &str)> = Vec::new();
        stack.push((ROOT, Walk::Filter(Some(filter)), 0, 0, ""));
        while let Some((id, walk, depth, parent_len, level)) = stack.pop() {
            topic.truncate(parent_len);
            if depth > 1 {
                topic.push('/');
            }
            topic.push_str(level);
            let node = &self.nodes[id];
            let here = topic.len();
            // Children reached through a wildcard; `$` levels are not, at the top (4.7.2-1).
            let wild = node
                .children
                .iter()
                .filter(|(level, _)| depth > 0 || !level.starts_with('$'));
            match walk {
                Walk::Filter(None) => {
                    if let Some(v) = &node.value {
                        f(&topic, v);
                    }
                }
                Walk::Filter(Some(rest)) => match split_level(rest) {
                    ("#", None) => {
                        // "sport/#" matches "sport" itself.
                        if let Some(v) = &node.value {
                            f(&topic, v);
                        }
                        for (l, &c) in wild {
                            stack.push((c, Walk::All, depth + 1, here, l));
                        }
                    }
                    ("+", tail) => {
                        for (l, &c) in wild {
                            stack.push((c, Walk::Filter(tail), depth + 1, here, l));
                        }
                    }
                    (literal, tail) => {
                        if let Some((l, &c)) = node.children.get_key_value(literal) {
                            stack.push((c, Walk::Filter(tail), depth + 1, here, l));
                        }
                    }
                },
                Walk::All => {
                    if let Some(v) = &node.value {
                        f(&topic, v);
                    }
                    for (l, &c) in &node.children {
                        stack.push((c, Walk::All, depth + 1, here, l));
                    }
                }
            }
        }
    }

    /// Keeps only the messages for which `keep(topic, message)` is true (for dropping expired
    /// ones), pruning the nodes left empty.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &T) -> bool) {
        let mut doomed: Vec<String> = Vec::new();
        self.for_each_all(|topic, v| {
            if !keep(topic, v) {
                doomed.push(topic.to_owned());
            }
        });
        for topic in doomed {
            self.remove(&topic);
        }
    }

    /// Every message, `$` topics included.
    fn for_each_all(&self, mut f: impl FnMut(&str, &T)) {
        let mut topic = String::new();
        let mut stack: Vec<(NodeId, usize, usize, &str)> = vec![(ROOT, 0, 0, "")];
        while let Some((id, depth, parent_len, level)) = stack.pop() {
            topic.truncate(parent_len);
            if depth > 1 {
                topic.push('/');
            }
            topic.push_str(level);
            let node = &self.nodes[id];
            if let Some(v) = &node.value {
                f(&topic, v);
            }
            let here = topic.len();
            for (l, &c) in &node.children {
                stack.push((c, depth + 1, here, l));
            }
        }
    }
}
