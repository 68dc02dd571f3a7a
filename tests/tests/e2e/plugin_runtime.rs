//! The plugin runtime around the hooks: which contract versions load, the instance pool
//! (calls in parallel, a full pool failing closed), many clients at once, integrity pins, the
//! compile cache's safety checks, and the start-up refusal of an anonymous non-loopback
//! listener.

use std::sync::atomic::Ordering;
use std::time::Duration;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::{ListenerConfig, PluginConfig};
use moat::{Broker, StartError};
use serde_json::json;

use crate::harness::{RawClient, raw_publish, test_config};
use crate::plugins::{components, logged_in, start_chain, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// What `Broker::start` says about a configuration it refuses.
async fn refusal(config: moat::Config) -> String {
    match Broker::start(config).await {
        Ok(_) => panic!("the broker started"),
        Err(e) => e.to_string(),
    }
}

/// The host implements moat:policy@0.1.0 and accepts any 0.1.x: a plugin built against
/// 0.1.7 loads and answers.
#[tokio::test]
async fn a_plugin_built_for_a_later_0_1_patch_is_accepted() {
    let patch = PluginConfig {
        name: "patch".into(),
        wasm: Some(components::WIT_PATCH.into()),
        ..PluginConfig::default()
    };
    let b = start_chain(vec![patch]).await;
    let (_, ack) = RawClient::handshake(b.addr, crate::plugins::login(V5, "p", "patch", "")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "the 0.1.7 plugin let its user in"
    );
    b.stop().await;
}

/// A plugin built for another series of the contract (here 0.2.0) is refused before it is
/// linked, with a message naming the plugin and both versions.
#[tokio::test]
async fn a_plugin_built_for_another_contract_series_is_refused_at_start() {
    let component = wat::parse_str(
        r#"(component
            (core module $m (func (export "f")))
            (core instance $i (instantiate $m))
            (func $f (canon lift (core func $i "f")))
            (instance $hooks (export "init" (func $f)))
            (export "moat:policy/hooks@0.2.0" (instance $hooks)))"#,
    )
    .expect("a valid component");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.wasm");
    std::fs::write(&path, component).unwrap();
    let mut config = test_config();
    config.plugin_chain = vec![PluginConfig {
        name: "future".into(),
        wasm: Some(path),
        ..PluginConfig::default()
    }];
    let why = refusal(config).await;
    assert!(why.contains("plugin `future`"), "{why}");
    assert!(
        why.contains("moat:policy@0.2.0") && why.contains("0.1.x"),
        "{why}"
    );
}

/// Calls do not queue behind one lock: two slow calls from two clients run at the same time,
/// on two instances of the pool.
#[tokio::test]
async fn calls_run_in_parallel_on_separate_instances() {
    let mut slow = test_policy(
        "slow",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "publish", "when": "slow/#", "kind": "spin:400"}],
               "publish": [{"filter": "#", "verdict": "allow"}]}),
    );
    slow.authorize_timeout_ms = 5_000;
    slow.cpu_budget_ms = 5_000;
    slow.max_instances = 4;
    let b = start_chain(vec![slow]).await;
    let mut clients = Vec::new();
    for i in 0..2 {
        clients.push(RawClient::connected(b.addr, V5, &format!("c{i}"), true).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&raw_publish(
            &format!("slow/{i}"),
            b"x",
            QoS::AtLeastOnce,
            Some(1),
        ))
        .await;
    }
    for c in &mut clients {
        assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));
    }
    let stats = &b.broker.plugins().unwrap().slots()[0].generation().stats;
    assert!(
        stats.max_in_flight.load(Ordering::Relaxed) >= 2,
        "the two calls overlapped (max in flight {})",
        stats.max_in_flight.load(Ordering::Relaxed)
    );
    b.stop().await;
}

/// With every instance busy, a call waits for one until its deadline, then fails closed; the
/// busy call finishes normally.
#[tokio::test]
async fn a_call_that_finds_the_pool_busy_until_its_deadline_fails_closed() {
    let mut one = test_policy(
        "one",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "publish", "when": "slow", "kind": "spin:1500"}],
               "publish": [{"filter": "#", "verdict": "allow"}]}),
    );
    one.max_instances = 1;
    one.cpu_budget_ms = 5_000;
    one.authorize_timeout_ms = 3_000;
    let b = start_chain(vec![one]).await;
    let mut slow = RawClient::connected(b.addr, V5, "slow", true).await;
    let mut quick = RawClient::connected(b.addr, V5, "quick", true).await;
    slow.send(&raw_publish("slow", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 3 s of waiting for the one instance, which is busy for 1.5 s: this one gets it...
    quick
        .send(&raw_publish("fast", b"x", QoS::AtLeastOnce, Some(2)))
        .await;
    for (c, want) in [(&mut slow, 1), (&mut quick, 2)] {
        match c.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(
                    (a.packet_id, a.reason_code),
                    (want, ReasonCode::NO_MATCHING_SUBSCRIBERS)
                );
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    b.stop().await;

    // ...but one that may wait only 200 ms does not. (The busy call here is an authentication,
    // whose timeout is longer, so it keeps the one instance for its whole 1.5 s.)
    let mut one = test_policy(
        "one",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "authenticate", "when": "slow", "kind": "spin:1500"}],
               "publish": [{"filter": "#", "verdict": "allow"}]}),
    );
    one.max_instances = 1;
    one.cpu_budget_ms = 5_000;
    one.authenticate_timeout_ms = 5_000;
    one.authorize_timeout_ms = 200;
    let b = start_chain(vec![one]).await;
    let mut quick = RawClient::connected(b.addr, V5, "quick", true).await;
    let addr = b.addr;
    let slow = tokio::spawn(async move { RawClient::connected(addr, V5, "slow", true).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    quick
        .send(&raw_publish("fast", b"x", QoS::AtLeastOnce, Some(2)))
        .await;
    match quick.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::UNSPECIFIED_ERROR),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    slow.await.unwrap();
    b.stop().await;
}

/// Many clients publishing at once through an uncached chain: every decision is the right one
/// and every allowed message arrives, nothing more.
#[tokio::test]
async fn many_clients_publishing_at_once_get_every_decision_right() {
    const CLIENTS: usize = 12;
    const EACH: u16 = 40;
    let mut acl = test_policy(
        "acl",
        json!({"auth": {"users": {"sub": {"password": "s"}}, "anonymous": "allow"},
               "publish": [{"filter": "open/#", "verdict": "allow"}, {"filter": "shut/#", "verdict": "deny"}],
               "subscribe": [{"filter": "#", "verdict": "allow"}]}),
    );
    acl.max_instances = 4;
    let b = start_chain(vec![acl]).await;
    let mut sub = logged_in(&b, V5, "sub", "sub", "s").await;
    sub.subscribe_one(1, "#", QoS::AtLeastOnce).await;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connected(addr, V5, &format!("p{i}"), true).await;
            for id in 1..=EACH {
                let topic = if id % 2 == 0 { "open/x" } else { "shut/x" };
                c.send(&raw_publish(topic, b"x", QoS::AtLeastOnce, Some(id)))
                    .await;
            }
            let mut codes = Vec::new();
            for _ in 1..=EACH {
                match c.recv().await {
                    Some(Packet::PubAck(a)) => codes.push((a.packet_id, a.reason_code)),
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
            codes
        }));
    }
    for t in tasks {
        for (id, code) in t.await.unwrap() {
            let want = if id % 2 == 0 {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NOT_AUTHORIZED
            };
            assert_eq!(code, want, "packet {id}");
        }
    }
    let mut got = 0;
    while let Some(Packet::Publish(p)) = sub.recv_within(Duration::from_millis(500)).await {
        assert_eq!(&*p.topic, "open/x");
        if let Some(id) = p.packet_id {
            sub.send(&Packet::PubAck(moat::codec::PubResponse::success(id)))
                .await;
        }
        got += 1;
    }
    assert_eq!(got, CLIENTS * usize::from(EACH) / 2);
    b.stop().await;
}

/// `sha256` pins a plugin's bytes: a mismatch is refused at start, naming the plugin and both
/// digests; the right digest loads.
#[tokio::test]
async fn a_pinned_digest_must_match_the_component() {
    let bytes = std::fs::read(components::TEST_POLICY).unwrap();
    let mut wrong = test_policy("pinned", json!({}));
    wrong.sha256 = Some("0".repeat(64));
    let mut config = test_config();
    config.plugin_chain = vec![wrong];
    let why = refusal(config).await;
    assert!(
        why.contains("plugin `pinned`") && why.contains("SHA-256"),
        "{why}"
    );
    let mut right = test_policy("pinned", json!({"auth": {"anonymous": "allow"}}));
    right.sha256 = Some(moat::policy::wasm::sha256_hex(&bytes));
    let b = start_chain(vec![right]).await;
    RawClient::connected(b.addr, V5, "c", true).await;
    b.stop().await;
}

/// The compile cache holds native code: a cache directory that others may write is refused
/// at start.
#[tokio::test]
async fn a_compile_cache_others_may_write_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut config = test_config();
    config.plugins.cache_dir = Some(cache);
    let why = refusal(config).await;
    assert!(why.contains("group or others may write"), "{why}");
}

/// A listener on a non-loopback address whose clients would get in without credentials stops
/// the start: with the default chain (nothing authenticates there), or with a chain that lets
/// an anonymous client in. An authenticating chain passes this check. (The addresses are never
/// bound: the check comes first, and the passing case uses a documentation address that
/// cannot be bound, so the start fails later, at the bind.)
#[tokio::test]
async fn an_anonymous_non_loopback_listener_is_refused_at_start() {
    let lan = |config: &mut moat::Config| {
        config.listeners.push(ListenerConfig {
            name: "lan".into(),
            bind: "192.0.2.1:1883".parse().unwrap(),
            ..Default::default()
        });
    };
    let mut config = test_config();
    lan(&mut config);
    let why = refusal(config).await;
    assert!(
        why.contains("listener `lan`") && why.contains("no plugin authenticates"),
        "{why}"
    );

    let mut config = test_config();
    lan(&mut config);
    config.plugin_chain = vec![test_policy("open", json!({"auth": {"anonymous": "allow"}}))];
    let why = refusal(config).await;
    assert!(why.contains("without credentials"), "{why}");

    let mut config = test_config();
    lan(&mut config);
    config.plugin_chain = vec![test_policy(
        "closed",
        json!({"auth": {"users": {"u": {"password": "p"}}}}),
    )];
    match Broker::start(config).await {
        Err(StartError::Listener { name, .. }) => {
            assert_eq!(name, "lan", "failed at the bind, after the check")
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("192.0.2.1 cannot be bound"),
    }

    let mut config = test_config();
    lan(&mut config);
    config.security.allow_anonymous_remote = true;
    match Broker::start(config).await {
        Err(StartError::Listener { name, .. }) => assert_eq!(name, "lan"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("192.0.2.1 cannot be bound"),
    }
}
