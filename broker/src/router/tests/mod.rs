//! Tests of the subscription tree (`tree.rs`) and the retained index (`retained.rs`), with
//! randomised cross-checks of both against [`crate::topic::matches()`], the reference matching
//! semantics. Shared helpers live here.

mod retained;
mod tree;

use super::{RetainedIndex, SubscriptionTree};
use crate::codec::{QoS, SubscriptionOptions};
use crate::topic::parse_shared;

pub(super) fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// A tiny deterministic generator, so the cross-check needs no dependency.
pub(super) struct Lcg(u64);

impl Lcg {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

pub(super) fn random_topic(rng: &mut Lcg) -> String {
    const LEVELS: [&str; 5] = ["a", "b", "", "$x", "c"];
    let n = 1 + rng.below(4);
    let topic = (0..n)
        .map(|_| LEVELS[rng.below(LEVELS.len())])
        .collect::<Vec<_>>()
        .join("/");
    // A lone empty level is no topic at all (MQTT-4.7.3-1).
    if topic.is_empty() {
        "/".to_owned()
    } else {
        topic
    }
}

pub(super) fn random_filter(rng: &mut Lcg) -> String {
    const LEVELS: [&str; 6] = ["a", "b", "", "$x", "+", "+"];
    let n = 1 + rng.below(4);
    let mut levels: Vec<&str> = (0..n).map(|_| LEVELS[rng.below(LEVELS.len())]).collect();
    if rng.below(3) == 0 {
        levels.push("#");
    }
    let filter = levels.join("/");
    if filter.is_empty() {
        "/".to_owned()
    } else {
        filter
    }
}

#[test]
fn deep_filters_do_not_overflow_the_stack() {
    // 30000 levels: recursion per level would overflow a 2 MiB thread stack.
    let deep_filter = vec!["+"; 30_000].join("/");
    let deep_topic = vec!["x"; 30_000].join("/");
    assert!(parse_shared(&deep_filter).unwrap().is_none());
    let run = move || {
        let mut tree = SubscriptionTree::new();
        tree.subscribe(&deep_filter, 1u8, opts(QoS::AtMostOnce), None);
        let mut out = Vec::new();
        tree.route(&deep_topic, None, &mut out);
        assert_eq!(out.len(), 1);
        let mut index = RetainedIndex::new();
        index.insert(&deep_topic, ());
        let mut n = 0;
        index.for_each_match(&deep_filter, |_, _| n += 1);
        assert_eq!(n, 1);
        index.retain(|_, _| true);
        drop(index);
        assert!(tree.unsubscribe(&deep_filter, &1));
        assert_eq!(tree.node_count(), 1);
        // A tree dropped while still deep must not recurse either.
        tree.subscribe(&deep_filter, 1u8, opts(QoS::AtMostOnce), None);
    };
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn shareable_across_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SubscriptionTree<std::sync::Arc<str>>>();
    send_sync::<RetainedIndex<bytes::Bytes>>();
}
