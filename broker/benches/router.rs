//! Benchmarks of the subscription router and the retained index at broker scale.
//!
//! The tree holds 100 000 subscriptions shaped like a device fleet: 20 000 devices in 200
//! sites, each with exact subscriptions to its telemetry and command topics, dashboards on
//! `fleet/{site}/{device}/#`, per-site analytics on `fleet/{site}/+/...`, site-wide `#`
//! watchers on a few sites, fleet-wide `fleet/+/+/alarm` watchers and four shared ingest
//! groups on `$share/ingest{g}/fleet/+/+/telemetry`. `route` is then timed for a few topic
//! shapes, reusing one output `Vec` as the broker does.
//!
//! Run with `cargo bench -p moat --bench router` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use moat::codec::{QoS, SubscriptionOptions};
use moat::router::{RetainedIndex, SubscriptionTree};

const SITES: u32 = 200;
const DEVICES_PER_SITE: u32 = 100;

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

fn build_tree() -> SubscriptionTree<u32> {
    let mut tree = SubscriptionTree::new();
    let q1 = opts(QoS::AtLeastOnce);
    for site in 0..SITES {
        for dev in 0..DEVICES_PER_SITE {
            let device = site * DEVICES_PER_SITE + dev;
            let base = format!("fleet/site{site}/dev{dev}");
            // 20 000 × (2 + 1) exact subscriptions.
            tree.subscribe(&format!("{base}/telemetry"), 1_000_000 + device, q1, None);
            tree.subscribe(
                &format!("{base}/telemetry"),
                2_000_000 + device,
                q1,
                Some(7),
            );
            tree.subscribe(&format!("{base}/cmd"), device, q1, None);
            // 20 000 dashboards, each watching four devices.
            tree.subscribe(&format!("{base}/#"), 3_000_000 + device / 4, q1, Some(1));
        }
        // 200 × 50 analytics clients and 200 × 20 status monitors.
        for j in 0..50 {
            tree.subscribe(
                &format!("fleet/site{site}/+/telemetry"),
                4_000_000 + j,
                q1,
                None,
            );
        }
        for j in 0..20 {
            tree.subscribe(
                &format!("fleet/site{site}/+/status"),
                5_000_000 + j,
                q1,
                None,
            );
        }
        // 20 × 240 site-wide watchers.
        if site < 20 {
            for j in 0..240 {
                tree.subscribe(&format!("fleet/site{site}/#"), 6_000_000 + j, q1, None);
            }
        }
    }
    for j in 0..1000 {
        tree.subscribe("fleet/+/+/alarm", 7_000_000 + j, q1, None);
    }
    for g in 0..4 {
        for m in 0..50 {
            let filter = format!("$share/ingest{g}/fleet/+/+/telemetry");
            tree.subscribe(&filter, 8_000_000 + g * 100 + m, q1, None);
        }
    }
    assert_eq!(tree.len(), 100_000);
    tree
}

fn route_benches(c: &mut Criterion) {
    let tree = build_tree();
    let shapes = [
        ("exact hit (2 routes)", "fleet/site150/dev42/cmd"),
        (
            "telemetry fan-out (57 routes)",
            "fleet/site150/dev42/telemetry",
        ),
        ("wildcard-heavy (1241 routes)", "fleet/site3/dev7/alarm"),
        ("miss at the root", "other/site1/dev1/telemetry"),
        ("miss below wildcards", "fleet/site999/dev1/cmd"),
        ("$SYS topic", "$SYS/broker/clients/connected"),
    ];
    let mut group = c.benchmark_group("route");
    let mut out = Vec::with_capacity(2048);
    for (name, topic) in shapes {
        out.clear();
        tree.route(topic, None, &mut out);
        let expected: usize = name
            .split_once('(')
            .and_then(|(_, n)| n.split_once(' '))
            .map_or(0, |(n, _)| n.parse().expect("route count in the name"));
        assert_eq!(out.len(), expected, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                tree.route(black_box(topic), None, &mut out);
                black_box(out.len())
            })
        });
    }
    group.finish();

    let mut tree = tree;
    c.bench_function("subscribe + unsubscribe (100k tree)", |b| {
        b.iter(|| {
            tree.subscribe(
                black_box("fleet/site7/+/firmware"),
                9_000_000,
                opts(QoS::AtMostOnce),
                None,
            );
            tree.unsubscribe(black_box("fleet/site7/+/firmware"), &9_000_000)
        })
    });
}

fn retained_benches(c: &mut Criterion) {
    let mut index = RetainedIndex::new();
    for site in 0..SITES {
        for dev in 0..DEVICES_PER_SITE {
            index.insert(&format!("fleet/site{site}/dev{dev}/status"), site ^ dev);
        }
    }
    let mut group = c.benchmark_group("retained (20k topics)");
    for (name, filter) in [
        ("one site, 100 hits", "fleet/site17/+/status"),
        ("one device everywhere, 200 hits", "fleet/+/dev42/status"),
        ("exact, 1 hit", "fleet/site17/dev42/status"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0u32;
                index.for_each_match(black_box(filter), |_, v| n = n.wrapping_add(*v));
                black_box(n)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route_benches, retained_benches);
criterion_main!(benches);
