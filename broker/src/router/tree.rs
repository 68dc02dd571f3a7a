//! [`SubscriptionTree`]: every subscription of every session, as a trie of topic levels, and
//! the routing of one PUBLISH to the subscribers that should receive it.
//!
//! A node stands for one filter prefix. Its children are the literal next levels (a `HashMap`
//! keyed by the level string), plus two wildcard slots: `plus` for a `+` level and `hash` for a
//! final `#`. The subscriptions whose filter ends at a node are stored on it: ordinary ones in
//! one [`SubList`], shared ones in one [`ShareGroup`] per share name. Routing a topic of `n`
//! levels visits at most the nodes of filters that match it, never the whole tree.
//!
//! Nodes live in an [`Arena`] so that nothing recurses (see `arena.rs`); unsubscribing prunes
//! every node left empty, so after any churn the tree holds exactly the nodes its current
//! subscriptions need.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

use smallvec::SmallVec;

use crate::codec::{QoS, SubscriptionOptions};
use crate::topic::{parse_shared, split_level, validate_topic_filter};

use super::arena::{Arena, NodeId, ROOT, shrink_map, shrink_vec};
use super::merge::{new_route, push_ordinary};
use super::sublist::{SubList, Subscription};

/// One delivery of a PUBLISH, decided by [`SubscriptionTree::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<S> {
    pub subscriber: S,
    /// The granted QoS of the subscription (the highest one, when several of the subscriber's
    /// ordinary subscriptions match). The caller sends at the minimum of this and the message's
    /// QoS (MQTT-3.8.4-8 and section 3.3.4).
    pub qos: QoS,
    /// Keep the message's RETAIN flag when forwarding it (MQTT-3.3.1-12 and -13).
    pub retain_as_published: bool,
    /// The subscription identifiers to put in the forwarded PUBLISH (MQTT-3.3.4-3): one per
    /// matching subscription that has one, without repeats.
    pub identifiers: SmallVec<[u32; 2]>,
}

/// The members of one shared subscription `$share/{name}/{filter}` (section 4.8.2).
#[derive(Debug)]
struct ShareGroup<S> {
    name: Box<str>,
    members: SubList<S>,
    /// Round-robin position; atomic so that routing needs only `&self`.
    cursor: AtomicUsize,
}

impl<S: Clone + Eq + Hash> ShareGroup<S> {
    /// The member to receive the next message.
    fn next_member(&self) -> &Subscription<S> {
        let members = self.members.as_slice();
        let turn = self.cursor.fetch_add(1, Ordering::Relaxed);
        &members[turn % members.len()]
    }
}

#[derive(Debug)]
struct Node<S> {
    /// Literal next levels.
    children: HashMap<Box<str>, NodeId>,
    /// The `+` next level.
    plus: Option<NodeId>,
    /// A final `#` level. That node never has children of its own.
    hash: Option<NodeId>,
    /// Ordinary subscriptions whose filter ends here.
    subs: SubList<S>,
    /// Shared subscriptions whose filter ends here, one entry per share name; never empty groups.
    shares: Vec<ShareGroup<S>>,
}

impl<S> Default for Node<S> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            hash: None,
            subs: SubList::default(),
            shares: Vec::new(),
        }
    }
}

impl<S: Clone + Eq + Hash> Node<S> {
    fn has_subscriptions(&self) -> bool {
        !self.subs.is_empty() || !self.shares.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.has_subscriptions()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }
}

/// How a node hangs from its parent.
#[derive(Debug, Clone, Copy)]
enum Edge<'a> {
    Literal(&'a str),
    Plus,
    Hash,
}

impl<'a> Edge<'a> {
    /// The edge for one filter level. `#` is the wildcard only as the last level; anywhere else
    /// (an invalid filter that slipped through) it is kept as a literal, which matches nothing.
    fn of(level: &'a str, last: bool) -> Self {
        match level {
            "+" => Edge::Plus,
            "#" if last => Edge::Hash,
            _ => Edge::Literal(level),
        }
    }
}

/// Which subscription list of a node a filter addresses: `None` for ordinary subscriptions,
/// `Some(name)` for the share group `name`.
type Group<'a> = Option<&'a str>;

/// All subscriptions of all sessions, for routing PUBLISH packets.
///
/// `S` is the handle the caller uses for a session (a client id, an index, an `Arc`); it is
/// cloned into each subscription and into each [`Route`], so it should be cheap to clone.
///
/// The tree is not internally synchronised except for the round-robin cursors: share it as
/// `RwLock<SubscriptionTree<S>>`, routing under the read lock.
///
/// Filters passed to [`subscribe`](Self::subscribe) and [`unsubscribe`](Self::unsubscribe) must
/// have been checked by the session with [`parse_shared`] and [`validate_topic_filter`] (so it
/// can answer 0x8F). One that fails them trips a debug assertion; in release builds its
/// misplaced wildcards (and an incomplete `$share` prefix) are stored as literal text, so it can
/// only match a topic spelled exactly like it, never a whole subtree.
#[derive(Debug)]
pub struct SubscriptionTree<S> {
    nodes: Arena<Node<S>>,
    len: usize,
}

impl<S: Clone + Eq + Hash> Default for SubscriptionTree<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Eq + Hash> SubscriptionTree<S> {
    pub fn new() -> Self {
        SubscriptionTree {
            nodes: Arena::with_root(),
            len: 0,
        }
    }

    /// Number of subscriptions; each member of a shared group counts once.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes, the root included (so 1 for an empty tree). For metrics and tests.
    pub fn node_count(&self) -> usize {
        self.nodes.live()
    }

    /// Adds a subscription. `filter` may be a shared filter `$share/{group}/{filter}`.
    ///
    /// Returns true if this subscriber already had a subscription with this exact filter (for a
    /// shared filter: the same group and filter); it is replaced, taking the new options and
    /// identifier (MQTT-3.8.4-3). The session uses this for Retain Handling 1 (send retained
    /// messages only for a new subscription).
    pub fn subscribe(
        &mut self,
        filter: &str,
        subscriber: S,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let (group, filter) = split_shared(filter);
        let mut id = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            id = self.child_or_insert(id, Edge::of(level, tail.is_none()));
        }
        let sub = Subscription {
            subscriber,
            options,
            identifier,
        };
        let node = &mut self.nodes[id];
        let replaced = match group {
            None => node.subs.upsert(sub),
            Some(name) => match node.shares.iter_mut().find(|g| &*g.name == name) {
                Some(g) => g.members.upsert(sub),
                None => {
                    let mut members = SubList::default();
                    members.upsert(sub);
                    node.shares.push(ShareGroup {
                        name: name.into(),
                        members,
                        cursor: AtomicUsize::new(0),
                    });
                    false
                }
            },
        };
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Removes this subscriber's subscription to `filter` (shared filters included), pruning the
    /// nodes it leaves empty. Returns true if there was one (else the UNSUBACK says 0x11).
    pub fn unsubscribe(&mut self, filter: &str, subscriber: &S) -> bool {
        let (group, filter) = split_shared(filter);
        // The nodes along the filter, each with the edge from its parent.
        let mut path: SmallVec<[(NodeId, Edge<'_>, NodeId); 16]> = SmallVec::new();
        let mut id = ROOT;
        let mut rest = Some(filter);
        while let Some(r) = rest {
            let (level, tail) = split_level(r);
            rest = tail;
            let edge = Edge::of(level, tail.is_none());
            let Some(child) = self.child(id, edge) else {
                return false;
            };
            path.push((id, edge, child));
            id = child;
        }
        let node = &mut self.nodes[id];
        let removed = match group {
            None => node.subs.remove(subscriber),
            Some(name) => match node.shares.iter().position(|g| &*g.name == name) {
                Some(i) => {
                    let removed = node.shares[i].members.remove(subscriber);
                    if node.shares[i].members.is_empty() {
                        node.shares.swap_remove(i);
                        shrink_vec(&mut node.shares);
                    }
                    removed
                }
                None => false,
            },
        };
        if !removed {
            return false;
        }
        self.len -= 1;
        for &(parent, edge, child) in path.iter().rev() {
            if !self.nodes[child].is_empty() {
                break;
            }
            let parent_node = &mut self.nodes[parent];
            match edge {
                Edge::Plus => parent_node.plus = None,
                Edge::Hash => parent_node.hash = None,
                Edge::Literal(level) => {
                    parent_node.children.remove(level);
                    shrink_map(&mut parent_node.children);
                }
            }
            self.nodes.free(child);
        }
        true
    }

    /// Appends to `out` the deliveries of a message published to `topic` by `publisher`.
    ///
    /// * Ordinary subscriptions: one [`Route`] per subscriber, however many of its
    ///   subscriptions match: the highest granted QoS among them (MQTT-3.3.4-2), all their
    ///   subscription identifiers (MQTT-3.3.4-3), and Retain As Published if any of them has it.
    ///   A subscription with No Local is skipped when its subscriber is the publisher
    ///   (MQTT-3.8.3-3); the subscriber's other matching subscriptions still count.
    /// * Shared subscriptions: for each matching share (name and filter), exactly one member,
    ///   taken round-robin, gets its own [`Route`] with that subscription's QoS and identifier.
    ///   It is never merged with the member's ordinary Route, nor with its Routes from other
    ///   shares: each share is a separate stream of messages that the client asked for, and
    ///   merging would need a per-message lookup across all of them for a case (one client in
    ///   a share group and also subscribed directly) that is legitimately a second delivery.
    ///   No Local does not apply: it is a Protocol Error on a shared subscription (MQTT-3.8.3-4),
    ///   so the session refuses it before it gets here.
    ///
    /// A filter whose first level is `+` or `#` does not match a topic starting with `$`
    /// (MQTT-4.7.2-1). `topic` must be a valid topic name.
    ///
    /// Ordinary Routes come first, then shared ones; order is otherwise unspecified. Routes
    /// already in `out` are left alone. Nothing is allocated beyond growing `out` unless more
    /// than 8 filters match, or several filters match and more than 32 subscribers outside the
    /// largest matching list must be merged (then a temporary map does it; see `merge.rs`).
    pub fn route(&self, topic: &str, publisher: Option<&S>, out: &mut Vec<Route<S>>) {
        let matched = self.matching_nodes(topic);

        let lists: SmallVec<[&SubList<S>; 8]> = matched
            .iter()
            .map(|&id| &self.nodes[id].subs)
            .filter(|list| !list.is_empty())
            .collect();
        push_ordinary(&lists, publisher, out);

        for &id in &matched {
            for group in &self.nodes[id].shares {
                out.push(new_route(group.next_member()));
            }
        }
    }

    /// The nodes holding subscriptions whose filter matches `topic`; each appears once.
    fn matching_nodes(&self, topic: &str) -> SmallVec<[NodeId; 8]> {
        let dollar = topic.starts_with('$');
        let mut matched: SmallVec<[NodeId; 8]> = SmallVec::new();
        // Nodes still to visit, with the part of the topic below them (`None`: all consumed).
        let mut stack: SmallVec<[(NodeId, Option<&str>); 16]> = SmallVec::new();
        stack.push((ROOT, Some(topic)));
        while let Some((id, rest)) = stack.pop() {
            let node = &self.nodes[id];
            // MQTT-4.7.2-1: no wildcard in the first level for `$` topics.
            let wildcards = !(dollar && id == ROOT);
            // A final `#` matches what is left of the topic, including nothing ("sport/#"
            // matches "sport").
            if wildcards && let Some(hash) = node.hash {
                matched.push(hash);
            }
            match rest {
                None => {
                    if node.has_subscriptions() {
                        matched.push(id);
                    }
                }
                Some(r) => {
                    let (level, tail) = split_level(r);
                    if let Some(&child) = node.children.get(level) {
                        stack.push((child, tail));
                    }
                    if wildcards && let Some(plus) = node.plus {
                        stack.push((plus, tail));
                    }
                }
            }
        }
        matched
    }

    fn child(&self, id: NodeId, edge: Edge<'_>) -> Option<NodeId> {
        let node = &self.nodes[id];
        match edge {
            Edge::Plus => node.plus,
            Edge::Hash => node.hash,
            Edge::Literal(level) => node.children.get(level).copied(),
        }
    }

    fn child_or_insert(&mut self, id: NodeId, edge: Edge<'_>) -> NodeId {
        if let Some(child) = self.child(id, edge) {
            return child;
        }
        let child = self.nodes.alloc();
        let node = &mut self.nodes[id];
        match edge {
            Edge::Plus => node.plus = Some(child),
            Edge::Hash => node.hash = Some(child),
            Edge::Literal(level) => {
                node.children.insert(level.into(), child);
            }
        }
        child
    }
}

/// Splits a subscription's filter into its share group (if shared) and the filter to match.
fn split_shared(filter: &str) -> (Group<'_>, &str) {
    debug_assert!(
        validate_topic_filter(filter).is_ok(),
        "invalid topic filter {filter:?} reached the router"
    );
    match parse_shared(filter) {
        Ok(Some(shared)) => (Some(shared.group), shared.filter),
        Ok(None) => (None, filter),
        Err(e) => {
            debug_assert!(
                false,
                "invalid shared filter {filter:?} reached the router: {e}"
            );
            (None, filter)
        }
    }
}
