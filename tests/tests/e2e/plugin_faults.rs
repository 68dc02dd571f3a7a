//! Plugins that misbehave: they trap, loop forever, eat memory, answer beyond the contract's
//! caps, take too long, are not WebAssembly, or refuse their configuration. Each time the
//! decision fails closed, the failure is counted against the plugin (and logged with its
//! name), the instance is replaced, and every other client goes on as before.

use std::sync::atomic::Ordering;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::{OnFailure, PluginConfig};
use moat::policy::wasm::Stats;
use serde_json::{Value, json};

use crate::harness::{RawClient, TestBroker, raw_connect_packet, raw_publish, test_config};
use crate::plugins::{expected, start_chain, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// A plugin that allows everyone and every topic but `fault/...`, where it fails as `kind`.
fn faulty(kind: &str) -> PluginConfig {
    test_policy(
        "faulty",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "publish", "when": "fault/#", "kind": kind}],
               "publish": [{"filter": "#", "verdict": "allow"}],
               "subscribe": [{"filter": "#", "verdict": "allow"}]}),
    )
}

fn stats(b: &TestBroker) -> std::sync::Arc<moat::policy::wasm::Generation> {
    b.broker.plugins().unwrap().slots()[0].generation()
}

fn load(s: &Stats) -> (u64, u64, u64) {
    (
        s.traps.load(Ordering::Relaxed),
        s.deadline_hits.load(Ordering::Relaxed),
        s.malformed.load(Ordering::Relaxed),
    )
}

/// Publishes QoS 1 and returns the PUBACK's reason code.
async fn publish(c: &mut RawClient, topic: &str, id: u16) -> ReasonCode {
    c.send(&raw_publish(topic, b"x", QoS::AtLeastOnce, Some(id)))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// The shared shape of the runtime-fault tests: the faulting publish is refused (0x80), the
/// same client and another are served normally afterwards, and the failure was counted where
/// `counted` says.
async fn fails_closed_and_recovers(plugin: PluginConfig, counted: fn((u64, u64, u64)) -> bool) {
    let b = start_chain(vec![plugin]).await;
    let mut bystander = RawClient::connected(b.addr, V5, "bystander", true).await;
    bystander.subscribe_one(1, "ok/#", QoS::AtLeastOnce).await;
    let mut c = RawClient::connected(b.addr, V5, "victim", true).await;
    assert_eq!(
        publish(&mut c, "fault/now", 1).await,
        ReasonCode::UNSPECIFIED_ERROR
    );
    assert!(
        counted(load(&stats(&b).stats)),
        "counted: {:?}",
        load(&stats(&b).stats)
    );
    // The broker and the plugin serve on: a fresh instance answers the same client...
    assert_eq!(publish(&mut c, "ok/after", 2).await, ReasonCode::SUCCESS);
    // ...and the other client got the message.
    assert_eq!(&*bystander.expect_publish().await.topic, "ok/after");
    b.stop().await;
}

#[tokio::test]
async fn a_trapping_plugin_fails_closed_and_is_replaced() {
    fails_closed_and_recovers(faulty("trap"), |(traps, _, _)| traps == 1).await;
}

#[tokio::test]
async fn an_endless_loop_is_stopped_by_the_cpu_budget() {
    let mut p = faulty("loop");
    p.cpu_budget_ms = 20;
    // The wall-clock timeout is far away: it is the CPU budget that stops the loop.
    p.authorize_timeout_ms = 30_000;
    let started = std::time::Instant::now();
    fails_closed_and_recovers(p, |(_, deadline_hits, _)| deadline_hits == 1).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[tokio::test]
async fn a_memory_hog_is_stopped_at_its_cap() {
    let mut p = faulty("hog");
    p.memory_limit_mib = 16;
    fails_closed_and_recovers(p, |(traps, _, _)| traps == 1).await;
}

#[tokio::test]
async fn a_plugin_that_outlives_its_timeout_fails_closed() {
    let mut p = faulty("spin:500");
    p.cpu_budget_ms = 10_000;
    p.authorize_timeout_ms = 100;
    fails_closed_and_recovers(p, |(_, deadline_hits, _)| deadline_hits == 1).await;
}

/// Answers beyond the contract's caps (a 1 MiB principal, a 1 MiB denial message) are
/// malformed: the connection is refused with 0x88 Server unavailable (3.1.1: 3), not let in.
#[tokio::test]
async fn an_oversized_answer_is_malformed_and_fails_closed() {
    let b = start_chain(vec![test_policy(
        "huge",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "authenticate", "when": "big-principal", "kind": "huge-principal"},
                          {"hook": "authenticate", "when": "big-message", "kind": "huge-message"}]}),
    )])
    .await;
    for (version, id) in [(V5, "big-principal"), (V311, "big-message")] {
        let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(version, id, true)).await;
        assert_eq!(
            ack.reason_code,
            expected(version, ReasonCode::SERVER_UNAVAILABLE, 3),
            "{id}"
        );
    }
    assert_eq!(
        load(&stats(&b).stats).2,
        2,
        "both answers counted as malformed"
    );
    RawClient::connected(b.addr, V5, "normal", true).await;
    b.stop().await;
}

/// `on_failure = "next"`: a failing plugin is skipped as if it had said `next`; the chain
/// goes on and never turns the failure into an allow on its own.
#[tokio::test]
async fn a_failing_plugin_set_to_next_passes_the_question_on() {
    let mut first = faulty("trap");
    first.on_failure = OnFailure::Next;
    let second = |verdict: &str| {
        test_policy(
            "second",
            json!({"publish": [{"filter": "fault/#", "verdict": verdict}]}),
        )
    };
    for (verdict, want) in [
        ("deny", ReasonCode::NOT_AUTHORIZED),
        ("allow", ReasonCode::NO_MATCHING_SUBSCRIBERS),
    ] {
        let b = start_chain(vec![first.clone(), second(verdict)]).await;
        let mut c = RawClient::connected(b.addr, V5, "c", true).await;
        assert_eq!(
            publish(&mut c, "fault/x", 1).await,
            want,
            "second plugin says {verdict}"
        );
        b.stop().await;
    }
    let b = start_chain(vec![first.clone(), test_policy("silent", json!({}))]).await;
    let mut c = RawClient::connected(b.addr, V5, "c", true).await;
    assert_eq!(
        publish(&mut c, "fault/x", 1).await,
        ReasonCode::NOT_AUTHORIZED,
        "exhausted: deny"
    );
    b.stop().await;
}

/// A plugin that traps on every call is throttled: after a burst of replacements its calls
/// fail at once instead of instantiating again and again.
#[tokio::test]
async fn a_plugin_that_keeps_trapping_is_throttled() {
    let b = start_chain(vec![faulty("trap")]).await;
    let mut c = RawClient::connected(b.addr, V5, "c", true).await;
    for id in 1..=40 {
        assert_eq!(
            publish(&mut c, "fault/x", id).await,
            ReasonCode::UNSPECIFIED_ERROR
        );
    }
    let created = stats(&b).stats.instances_created.load(Ordering::Relaxed);
    assert!(created <= 20, "{created} instances for 40 traps");
    b.stop().await;
}

/// A burst of slow connects grows the instance pool to `max_instances` without being taken for
/// a failing plugin: only instances that replace failed ones draw on the replacement budget
/// (ten at once, then two a second), so a connect storm is served, not refused with 0x88.
#[tokio::test]
async fn a_connect_storm_grows_the_pool_without_throttling() {
    const CLIENTS: usize = 16;
    let mut plugin = test_policy(
        "slow",
        json!({"auth": {"anonymous": "allow"},
               "faults": [{"hook": "connect", "when": "#", "kind": "spin:300"}],
               "publish": [{"filter": "#", "verdict": "allow"}]}),
    );
    plugin.max_instances = CLIENTS as u32;
    // Sixteen calls share the test's workers: give each the CPU its wall-clock spin may use.
    plugin.cpu_budget_ms = 10_000;
    plugin.authenticate_timeout_ms = 20_000;
    let b = start_chain(vec![plugin]).await;
    let storm = (0..CLIENTS).map(|i| {
        let addr = b.addr;
        tokio::spawn(async move {
            let (_client, ack) =
                RawClient::handshake(addr, raw_connect_packet(V5, &format!("c{i}"), true)).await;
            ack.reason_code
        })
    });
    for (i, code) in futures_util::future::join_all(storm)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(code.unwrap(), ReasonCode::SUCCESS, "client c{i}");
    }
    let created = stats(&b).stats.instances_created.load(Ordering::Relaxed);
    assert!(created > 11, "the storm overlapped: {created} instances");
    b.stop().await;
}

/// What the broker says when it refuses to start with `plugin`.
async fn start_refusal(plugin: PluginConfig) -> String {
    let mut config = test_config();
    config.plugin_chain = vec![plugin];
    match moat::Broker::start(config).await {
        Ok(_) => panic!("started"),
        Err(e) => e.to_string(),
    }
}

/// A file that is not WebAssembly, or a component whose `init` refuses its configuration,
/// stops the start with a message naming the plugin and why.
#[tokio::test]
async fn a_plugin_that_cannot_load_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\x00asm but not really").unwrap();
    let why = start_refusal(PluginConfig {
        name: "junk".into(),
        wasm: Some(junk),
        ..PluginConfig::default()
    })
    .await;
    assert!(
        why.contains("plugin `junk`") && why.contains("not a valid WebAssembly component"),
        "{why}"
    );

    let why = start_refusal(test_policy(
        "picky",
        json!({"init_error": "no rules given"}),
    ))
    .await;
    assert!(
        why.contains("plugin `picky`") && why.contains("no rules given"),
        "{why}"
    );

    let why = start_refusal(test_policy("typo", json!({"no_such_key": Value::Null}))).await;
    assert!(
        why.contains("plugin `typo`") && why.contains("no_such_key"),
        "{why}"
    );
}
