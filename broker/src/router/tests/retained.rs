//! [`RetainedIndex`]: wildcard lookups, replacement, removal, `retain`, pruning, and agreement
//! with [`matches()`].

use std::collections::BTreeSet;

use super::{Lcg, random_filter, random_topic};
use crate::router::RetainedIndex;
use crate::topic::matches;

#[test]
fn retained_wildcard_lookups() {
    let topics = [
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player2",
        "sport/",
        "sport/golf",
        "/finance",
        "finance",
        "$SYS/monitor/Clients",
        "$SYS",
        "a//b",
    ];
    let mut index = RetainedIndex::new();
    for (i, t) in topics.iter().enumerate() {
        assert_eq!(index.insert(t, i), None);
    }
    assert_eq!(index.len(), topics.len());
    #[rustfmt::skip]
    let cases: &[(&str, &[&str])] = &[
        ("sport/tennis/player1", &["sport/tennis/player1"]),
        ("sport/tennis/player1/#", &["sport/tennis/player1", "sport/tennis/player1/ranking"]),
        ("sport/#", &["sport", "sport/", "sport/golf", "sport/tennis", "sport/tennis/player1",
                      "sport/tennis/player1/ranking", "sport/tennis/player2"]),
        ("sport/tennis/+", &["sport/tennis/player1", "sport/tennis/player2"]),
        ("sport/+", &["sport/", "sport/golf", "sport/tennis"]),
        ("+/+", &["/finance", "sport/", "sport/golf", "sport/tennis"]),
        ("/+", &["/finance"]),
        ("+", &["finance", "sport"]),
        ("+/tennis/#", &["sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
                         "sport/tennis/player2"]),
        ("a/+/b", &["a//b"]),
        // MQTT-4.7.2-1.
        ("#", &["/finance", "a//b", "finance", "sport", "sport/", "sport/golf", "sport/tennis",
                "sport/tennis/player1", "sport/tennis/player1/ranking", "sport/tennis/player2"]),
        ("+/monitor/Clients", &[]),
        ("$SYS/#", &["$SYS", "$SYS/monitor/Clients"]),
        ("$SYS/monitor/+", &["$SYS/monitor/Clients"]),
        ("nothing/#", &[]),
        ("sport/tennis/player3", &[]),
    ];
    for &(filter, want) in cases {
        let mut got = Vec::new();
        index.for_each_match(filter, |topic, &i| {
            assert_eq!(topics[i], topic);
            got.push(topic.to_owned());
        });
        got.sort();
        assert_eq!(got, want, "filter {filter:?}");
        // Same answer as the reference semantics.
        let mut reference: Vec<&str> = topics
            .iter()
            .copied()
            .filter(|t| matches(filter, t))
            .collect();
        reference.sort();
        assert_eq!(reference, want, "reference for {filter:?}");
    }
}

#[test]
fn retained_replace_remove_retain() {
    let mut index = RetainedIndex::new();
    assert!(index.is_empty());
    assert_eq!(index.insert("a/b/c", 1), None);
    assert_eq!(index.insert("a/b/c", 2), Some(1));
    assert_eq!(index.insert("a/b", 3), None);
    assert_eq!(index.insert("a/x/y/z", 4), None);
    assert_eq!(index.insert("$SYS/up", 5), None);
    assert_eq!(index.len(), 4);
    assert_eq!(index.get("a/b/c"), Some(&2));
    assert_eq!(index.get("a/b/c/d"), None);
    assert_eq!(index.get("a/x"), None, "an inner node holds no message");
    assert_eq!(index.remove("a/x"), None);
    assert_eq!(index.remove("a/b/c"), Some(2));
    assert_eq!(index.remove("a/b/c"), None);
    assert_eq!(index.get("a/b"), Some(&3));

    // Drop the odd values, `$` topics included.
    let mut seen = BTreeSet::new();
    index.retain(|topic, &v| {
        seen.insert(topic.to_owned());
        v % 2 == 0
    });
    assert_eq!(
        seen,
        BTreeSet::from(["$SYS/up", "a/b", "a/x/y/z"].map(String::from))
    );
    assert_eq!(index.len(), 1);
    assert_eq!(index.get("a/x/y/z"), Some(&4));
    assert_eq!(index.get("$SYS/up"), None);
    assert_eq!(index.remove("a/x/y/z"), Some(4));
    assert!(index.is_empty());
    assert_eq!(index.node_count(), 1);
}

#[test]
fn retained_agrees_with_matches() {
    let mut rng = Lcg(11);
    let mut index = RetainedIndex::new();
    let mut all = BTreeSet::new();
    for _ in 0..300 {
        let t = random_topic(&mut rng);
        index.insert(&t, ());
        all.insert(t);
    }
    assert_eq!(index.len(), all.len());
    for _ in 0..300 {
        let filter = random_filter(&mut rng);
        let mut got = BTreeSet::new();
        index.for_each_match(&filter, |t, _| {
            assert!(got.insert(t.to_owned()), "{t:?} reported twice");
        });
        let want: BTreeSet<String> = all
            .iter()
            .filter(|t| matches(&filter, t))
            .cloned()
            .collect();
        assert_eq!(got, want, "filter {filter:?}");
    }
    index.retain(|_, _| false);
    assert!(index.is_empty());
    assert_eq!(index.node_count(), 1);
}
