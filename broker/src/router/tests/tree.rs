//! [`SubscriptionTree`]: overlap merging, No Local, shared round-robin, replacement,
//! pruning, the `$` rule, and agreement with [`matches()`].

use std::collections::{BTreeMap, BTreeSet};

use smallvec::SmallVec;

use super::{Lcg, opts, random_filter, random_topic};
use crate::codec::{QoS, SubscriptionOptions};
use crate::router::{Route, SubscriptionTree};
use crate::topic::matches;

fn route(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<Route<&'static str>> {
    let mut out = Vec::new();
    tree.route(topic, None, &mut out);
    out
}

/// Subscribers that receive `topic`, sorted, with repeats.
fn receivers(tree: &SubscriptionTree<&'static str>, topic: &str) -> Vec<&'static str> {
    let mut v: Vec<_> = route(tree, topic)
        .into_iter()
        .map(|r| r.subscriber)
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn overlapping_subscriptions_make_one_route() {
    let mut tree = SubscriptionTree::new();
    tree.subscribe("sport/tennis/+", "a", opts(QoS::AtMostOnce), Some(1));
    tree.subscribe("sport/#", "a", opts(QoS::ExactlyOnce), Some(2));
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtLeastOnce)
    };
    tree.subscribe("sport/tennis/player1", "a", rap, None);
    tree.subscribe("+/tennis/player1", "a", opts(QoS::AtMostOnce), Some(1));
    tree.subscribe("sport/tennis/player1", "b", opts(QoS::AtLeastOnce), Some(9));

    let mut routes = route(&tree, "sport/tennis/player1");
    routes.sort_by_key(|r| r.subscriber);
    assert_eq!(routes.len(), 2);
    let a = &routes[0];
    assert_eq!(a.subscriber, "a");
    // MQTT-3.3.4-2: the highest QoS; MQTT-3.3.4-3: every identifier (1 only once).
    assert_eq!(a.qos, QoS::ExactlyOnce);
    assert!(a.retain_as_published);
    let mut ids = a.identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids.as_slice(), &[1, 2]);
    assert_eq!(
        routes[1],
        Route {
            subscriber: "b",
            qos: QoS::AtLeastOnce,
            retain_as_published: false,
            identifiers: SmallVec::from_slice(&[9]),
        }
    );

    // Only "sport/#" matches here, at QoS 2, no retain-as-published.
    let routes = route(&tree, "sport/golf");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].qos, QoS::ExactlyOnce);
    assert!(!routes[0].retain_as_published);
    assert_eq!(routes[0].identifiers.as_slice(), &[2]);
}

#[test]
fn many_overlaps_merge_through_the_largest_lists_index() {
    // 40 subscribers × 2 overlapping filters = 80 matches, above the linear-scan limit.
    let mut tree = SubscriptionTree::new();
    for i in 0..40u32 {
        tree.subscribe("a/+", i, opts(QoS::AtMostOnce), Some(i + 1));
        tree.subscribe("a/#", i, opts(QoS::AtLeastOnce), Some(i + 1000));
    }
    let mut out = Vec::new();
    tree.route("a/b", None, &mut out);
    assert_eq!(out.len(), 40);
    for r in &out {
        assert_eq!(r.qos, QoS::AtLeastOnce);
        let mut ids = r.identifiers.to_vec();
        ids.sort_unstable();
        assert_eq!(ids, [r.subscriber + 1, r.subscriber + 1000]);
    }
}

#[test]
fn route_appends_and_keeps_existing_entries() {
    let mut tree = SubscriptionTree::new();
    tree.subscribe("a/+", "x", opts(QoS::AtMostOnce), None);
    tree.subscribe("a/#", "x", opts(QoS::AtLeastOnce), None);
    let mut out = Vec::new();
    tree.route("a/b", None, &mut out);
    tree.route("a/b", None, &mut out);
    // The second call must not merge into the first call's Route.
    assert_eq!(out.len(), 2);
}

#[test]
fn no_local() {
    let mut tree = SubscriptionTree::new();
    let no_local = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    tree.subscribe("chat/#", "alice", no_local, Some(1));
    tree.subscribe("chat/#", "bob", no_local, None);
    tree.subscribe("chat/room", "carol", opts(QoS::AtMostOnce), None);

    let mut out = Vec::new();
    tree.route("chat/room", Some(&"alice"), &mut out);
    let mut who: Vec<_> = out.iter().map(|r| r.subscriber).collect();
    who.sort_unstable();
    // MQTT-3.8.3-3: not back to alice.
    assert_eq!(who, ["bob", "carol"]);

    // A publisher's overlapping subscription without No Local still delivers, on its own terms.
    tree.subscribe("chat/+", "alice", opts(QoS::AtMostOnce), Some(2));
    out.clear();
    tree.route("chat/room", Some(&"alice"), &mut out);
    let alice: Vec<_> = out.iter().filter(|r| r.subscriber == "alice").collect();
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].qos, QoS::AtMostOnce);
    assert_eq!(alice[0].identifiers.as_slice(), &[2]);

    // Other publishers, or none (a will, $SYS), reach everyone.
    assert_eq!(receivers(&tree, "chat/room"), ["alice", "bob", "carol"]);
}

#[test]
fn shared_round_robin_is_exact() {
    let mut tree = SubscriptionTree::new();
    for member in ["m1", "m2", "m3"] {
        assert!(!tree.subscribe(
            "$share/workers/jobs/+",
            member,
            opts(QoS::AtLeastOnce),
            None
        ));
    }
    assert_eq!(tree.len(), 3);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for i in 0..300 {
        out.clear();
        tree.route(&format!("jobs/{i}"), None, &mut out);
        assert_eq!(out.len(), 1, "exactly one member per message");
        *counts.entry(out[0].subscriber).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("m1", 100), ("m2", 100), ("m3", 100)])
    );
}

#[test]
fn shared_routes_are_separate() {
    let mut tree = SubscriptionTree::new();
    tree.subscribe("$share/g1/t/#", "a", opts(QoS::ExactlyOnce), Some(5));
    tree.subscribe("$share/g2/t/#", "a", opts(QoS::AtMostOnce), Some(6));
    tree.subscribe("$share/g1/t/x", "a", opts(QoS::AtLeastOnce), None);
    tree.subscribe("t/x", "a", opts(QoS::AtMostOnce), Some(7));
    assert_eq!(tree.len(), 4);
    // Every matching share delivers once, and the ordinary subscription once more, unmerged.
    let routes = route(&tree, "t/x");
    assert_eq!(routes.len(), 4);
    assert_eq!(
        routes[0].identifiers.as_slice(),
        &[7],
        "ordinary routes come first"
    );
    let mut shared: Vec<_> = routes[1..]
        .iter()
        .map(|r| (r.qos, r.identifiers.to_vec()))
        .collect();
    shared.sort();
    assert_eq!(
        shared,
        [
            (QoS::AtMostOnce, vec![6]),
            (QoS::AtLeastOnce, vec![]),
            (QoS::ExactlyOnce, vec![5]),
        ]
    );
    // Shared No Local is a protocol error, so the router ignores it rather than skip a member.
    tree.subscribe(
        "$share/g3/t/x",
        "a",
        SubscriptionOptions {
            no_local: true,
            ..opts(QoS::AtMostOnce)
        },
        None,
    );
    let mut out = Vec::new();
    tree.route("t/x", Some(&"a"), &mut out);
    assert_eq!(out.len(), 5);
}

#[test]
fn subscribe_replaces() {
    let mut tree = SubscriptionTree::new();
    assert!(!tree.subscribe("a/b", "x", opts(QoS::AtMostOnce), Some(1)));
    // MQTT-3.8.4-3: same filter, same subscriber: replaced, new options and identifier.
    assert!(tree.subscribe("a/b", "x", opts(QoS::ExactlyOnce), Some(2)));
    assert!(tree.subscribe("a/b", "x", opts(QoS::AtLeastOnce), None));
    assert_eq!(tree.len(), 1);
    let routes = route(&tree, "a/b");
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].qos, QoS::AtLeastOnce);
    assert!(routes[0].identifiers.is_empty());
    // A different filter or subscriber is a new subscription.
    assert!(!tree.subscribe("a/+", "x", opts(QoS::AtMostOnce), None));
    assert!(!tree.subscribe("a/b", "y", opts(QoS::AtMostOnce), None));
    // Shared: keyed by group and filter.
    assert!(!tree.subscribe("$share/g/a/b", "x", opts(QoS::AtMostOnce), None));
    assert!(tree.subscribe("$share/g/a/b", "x", opts(QoS::AtLeastOnce), None));
    assert!(!tree.subscribe("$share/h/a/b", "x", opts(QoS::AtMostOnce), None));
    assert_eq!(tree.len(), 5);
}

#[test]
fn unsubscribe_prunes_to_the_root() {
    let mut tree = SubscriptionTree::new();
    let filters = [
        "a/b/c",
        "a/b",
        "a/+/c",
        "a/#",
        "#",
        "+",
        "/",
        "a//b",
        "$SYS/#",
        "$share/g/a/b/c",
        "$share/h/a/b/c",
        "$share/g/+/#",
    ];
    for (i, f) in filters.iter().enumerate() {
        tree.subscribe(f, "x", opts(QoS::AtMostOnce), None);
        tree.subscribe(f, "y", opts(QoS::AtMostOnce), Some(i as u32 + 1));
    }
    assert_eq!(tree.len(), 2 * filters.len());
    assert!(tree.node_count() > 1);
    assert!(!tree.unsubscribe("a/b/c/d", &"x"), "never subscribed");
    assert!(!tree.unsubscribe("a/b", &"z"), "never subscribed");
    assert!(!tree.unsubscribe("$share/zz/a/b/c", &"x"), "no such group");
    for f in filters {
        assert!(tree.unsubscribe(f, &"x"), "{f}");
        assert!(!tree.unsubscribe(f, &"x"), "{f} twice");
    }
    assert_eq!(tree.len(), filters.len());
    assert_eq!(
        route(&tree, "a/b/c").len(),
        1 + 3,
        "y merged, plus three shares"
    );
    for f in filters.iter().rev() {
        assert!(tree.unsubscribe(f, &"y"), "{f}");
    }
    assert_eq!(tree.len(), 0);
    assert!(tree.is_empty());
    assert_eq!(tree.node_count(), 1);
    assert!(route(&tree, "a/b/c").is_empty());
}

#[test]
fn churn_does_not_leak_nodes() {
    let mut tree = SubscriptionTree::new();
    for round in 0..3u32 {
        for i in 0..500u32 {
            let f = format!("fleet/{}/{}/+/#", i % 17, i + round);
            tree.subscribe(&f, i, opts(QoS::AtMostOnce), None);
            tree.subscribe("fleet/#", i, opts(QoS::AtMostOnce), None);
        }
        let peak = tree.node_count();
        for i in 0..500u32 {
            let f = format!("fleet/{}/{}/+/#", i % 17, i + round);
            assert!(tree.unsubscribe(&f, &i));
            assert!(tree.unsubscribe("fleet/#", &i));
        }
        assert!(peak > 1000);
        assert_eq!(tree.node_count(), 1);
        assert!(tree.is_empty());
    }
}

#[test]
fn dollar_topics() {
    let mut tree = SubscriptionTree::new();
    tree.subscribe("#", "hash", opts(QoS::AtMostOnce), None);
    tree.subscribe("+/monitor/Clients", "plus", opts(QoS::AtMostOnce), None);
    tree.subscribe("+/#", "plushash", opts(QoS::AtMostOnce), None);
    tree.subscribe("$SYS/#", "sys", opts(QoS::AtMostOnce), None);
    tree.subscribe("$SYS/monitor/+", "sysplus", opts(QoS::AtMostOnce), None);
    tree.subscribe("$share/g/#", "shared", opts(QoS::AtMostOnce), None);
    // MQTT-4.7.2-1.
    assert_eq!(receivers(&tree, "$SYS/monitor/Clients"), ["sys", "sysplus"]);
    assert_eq!(receivers(&tree, "$SYS"), ["sys"]);
    assert_eq!(
        receivers(&tree, "x/monitor/Clients"),
        ["hash", "plus", "plushash", "shared"]
    );
    // Only the first level is special.
    assert_eq!(receivers(&tree, "x/$SYS"), ["hash", "plushash", "shared"]);
}

#[test]
fn tree_agrees_with_matches() {
    let mut rng = Lcg(7);
    let mut tree = SubscriptionTree::new();
    let mut subs: Vec<(String, u32, QoS)> = Vec::new();
    for _ in 0..400 {
        let filter = random_filter(&mut rng);
        let who = rng.below(12) as u32;
        let qos = QoS::from_u8(rng.below(3) as u8).unwrap();
        let existed = subs.iter().any(|(f, w, _)| f == &filter && *w == who);
        assert_eq!(tree.subscribe(&filter, who, opts(qos), None), existed);
        subs.retain(|(f, w, _)| !(f == &filter && *w == who));
        subs.push((filter, who, qos));
    }
    // Drop some, so pruning is exercised too.
    for i in (0..subs.len()).rev().step_by(3) {
        let (f, w, _) = subs.remove(i);
        assert!(tree.unsubscribe(&f, &w));
    }
    assert_eq!(tree.len(), subs.len());
    let mut out = Vec::new();
    for _ in 0..500 {
        let topic = random_topic(&mut rng);
        let mut want: BTreeMap<u32, QoS> = BTreeMap::new();
        for (f, w, qos) in &subs {
            if matches(f, &topic) {
                let best = want.entry(*w).or_insert(*qos);
                *best = (*best).max(*qos);
            }
        }
        out.clear();
        tree.route(&topic, None, &mut out);
        let got: BTreeMap<u32, QoS> = out.iter().map(|r| (r.subscriber, r.qos)).collect();
        assert_eq!(
            got.len(),
            out.len(),
            "one route per subscriber for {topic:?}"
        );
        assert_eq!(got, want, "topic {topic:?}");
    }
}

/// Large, overlapping lists with No Local and identifiers, against a direct computation: this
/// covers every merge strategy in `merge.rs` (single list, anchored, scan and map).
#[test]
fn merged_routes_agree_with_a_naive_reference() {
    const FILTERS: [&str; 8] = ["a/b", "a/+", "a/#", "+/b", "#", "+/+", "a/b/#", "b/+"];
    const TOPICS: [&str; 4] = ["a/b", "a/c", "b/b", "a"];
    let mut rng = Lcg(3);
    for round in 0..40 {
        let mut tree = SubscriptionTree::new();
        // (filter, subscriber) → (options, identifier)
        let mut subs: BTreeMap<(&str, u32), (SubscriptionOptions, Option<u32>)> = BTreeMap::new();
        let people = [4, 20, 80][round % 3];
        for _ in 0..people * 3 {
            let filter = FILTERS[rng.below(FILTERS.len())];
            let who = rng.below(people) as u32;
            let options = SubscriptionOptions {
                qos: QoS::from_u8(rng.below(3) as u8).unwrap(),
                no_local: rng.below(4) == 0,
                retain_as_published: rng.below(3) == 0,
                ..SubscriptionOptions::default()
            };
            let identifier = [None, Some(1), Some(who + 10)][rng.below(3)];
            tree.subscribe(filter, who, options, identifier);
            subs.insert((filter, who), (options, identifier));
        }
        for topic in TOPICS {
            let publisher = [None, Some(rng.below(people) as u32)][rng.below(2)];
            let mut want: BTreeMap<u32, (QoS, bool, BTreeSet<u32>)> = BTreeMap::new();
            for (&(filter, who), &(options, identifier)) in &subs {
                if !matches(filter, topic) || (options.no_local && publisher == Some(who)) {
                    continue;
                }
                let entry = want
                    .entry(who)
                    .or_insert((QoS::AtMostOnce, false, BTreeSet::new()));
                entry.0 = entry.0.max(options.qos);
                entry.1 |= options.retain_as_published;
                entry.2.extend(identifier);
            }
            let mut out = Vec::new();
            tree.route(topic, publisher.as_ref(), &mut out);
            let got: BTreeMap<u32, (QoS, bool, BTreeSet<u32>)> = out
                .iter()
                .map(|r| {
                    let ids: BTreeSet<u32> = r.identifiers.iter().copied().collect();
                    assert_eq!(ids.len(), r.identifiers.len(), "repeated identifier");
                    (r.subscriber, (r.qos, r.retain_as_published, ids))
                })
                .collect();
            assert_eq!(got.len(), out.len(), "one route per subscriber");
            assert_eq!(
                got, want,
                "round {round}, topic {topic:?}, publisher {publisher:?}"
            );
        }
    }
}
