//! The broker's `$SYS/broker/...` status topics (Mosquitto's names; see `moat::sys`), with
//! `sys.interval` set to one second: published periodically, retained, and read-only for
//! clients. Topics starting with `$` are matched only by filters that name their first level
//! (MQTT-4.7.2-1; routing.rs checks the wildcard side).

use std::collections::HashMap;
use std::time::Duration;

use moat::codec::{ProtocolVersion, Publish, QoS, ReasonCode};

use crate::harness::flows::{Peer, text};
use crate::harness::{self, TestBroker};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

async fn start_sys() -> TestBroker {
    harness::start_with(|c| c.sys.interval = Duration::from_secs(1)).await
}

fn version_payload() -> String {
    // The test crate and the broker share the workspace version.
    format!("moat {}", env!("CARGO_PKG_VERSION"))
}

/// Receives `$SYS` messages until `done` returns a value for one (panics after the wait).
async fn until<T>(c: &mut Peer, mut done: impl FnMut(&Publish) -> Option<T>) -> T {
    loop {
        let p = c.recv_publish().await;
        assert!(p.topic.starts_with("$SYS/broker/"), "{p:?}");
        if let Some(t) = done(&p) {
            return t;
        }
    }
}

/// A live (not retained) update of `topic`, as text.
fn live(p: &Publish, topic: &str) -> Option<String> {
    (!p.retain && p.topic == topic).then(|| text(p).1)
}

/// A `$SYS/#` subscriber receives the version, the uptime, the number of connected clients
/// and the count of received messages, updated every interval.
#[tokio::test]
async fn sys_topics_report_version_uptime_clients_and_growing_counters() {
    let broker = start_sys().await;
    let mut sys = Peer::connect(broker.addr, V5, "sys-watch").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;

    // A whole update made after the subscription: it starts with a live version message.
    let version = until(&mut sys, |p| live(p, "$SYS/broker/version")).await;
    assert_eq!(version, version_payload());
    let mut seen: HashMap<String, String> = HashMap::new();
    let received_before: u64 = until(&mut sys, |p| {
        if !p.retain {
            seen.insert(p.topic.to_string(), text(p).1);
        }
        live(p, "$SYS/broker/messages/received").and_then(|n| n.parse().ok())
    })
    .await;
    assert_eq!(seen["$SYS/broker/clients/connected"], "1");
    let uptime = &seen["$SYS/broker/uptime"];
    let secs = uptime
        .strip_suffix(" seconds")
        .and_then(|n| n.parse::<u64>().ok());
    assert!(secs.is_some(), "uptime payload {uptime:?}");

    // Another client connects and sends some packets: both show in the next updates.
    let mut other = Peer::connect(broker.addr, V311, "sys-other").await;
    for i in 0..5 {
        other
            .send_message(
                "plain/topic",
                format!("{i}").as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    let connected = until(&mut sys, |p| {
        live(p, "$SYS/broker/clients/connected").filter(|n| n != "1")
    })
    .await;
    assert_eq!(connected, "2");
    // Updates go on until one counts the five publications; each update is one snapshot, and
    // `messages/received` comes before `publish/messages/received` in it.
    let mut tick: HashMap<String, String> = HashMap::new();
    let publishes: u64 = until(&mut sys, |p| {
        tick.insert(p.topic.to_string(), text(p).1);
        live(p, "$SYS/broker/publish/messages/received")
            .and_then(|n| n.parse().ok())
            .filter(|&n| n >= 5)
    })
    .await;
    assert_eq!(publishes, 5, "publish/messages/received");
    let received_after: u64 = tick["$SYS/broker/messages/received"].parse().unwrap();
    // CONNECT and five PUBLISH packets at least.
    assert!(
        received_after >= received_before + 6,
        "messages/received went from {received_before} to {received_after}"
    );

    // When the other client leaves, the count goes back down.
    other.disconnect().await;
    let connected = until(&mut sys, |p| {
        live(p, "$SYS/broker/clients/connected").filter(|n| n != "2")
    })
    .await;
    assert_eq!(connected, "1");
}

/// `$SYS` topics are retained: a client that subscribes later gets the last values at once,
/// with RETAIN set (as any retained message, MQTT-3.3.1-9 / 3.1.1: MQTT-3.3.1-8).
#[tokio::test]
async fn sys_topics_are_retained_for_late_subscribers() {
    let broker = start_sys().await;
    // Wait until the first update has been published.
    let mut probe = Peer::connect(broker.addr, V5, "sys-probe").await;
    probe
        .subscribe("$SYS/broker/version", QoS::AtMostOnce)
        .await;
    assert_eq!(text(&probe.recv_publish().await).1, version_payload());

    for version in [V311, V5] {
        let mut late = Peer::connect(broker.addr, version, "sys-late").await;
        let codes = late
            .subscribe_many(&[
                ("$SYS/broker/version", harness::flows::opts(QoS::AtMostOnce)),
                ("$SYS/broker/uptime", harness::flows::opts(QoS::AtMostOnce)),
                (
                    "$SYS/broker/clients/+",
                    harness::flows::opts(QoS::AtMostOnce),
                ),
            ])
            .await;
        assert_eq!(codes, [0, 0, 0]);
        // A live update may slip in as well; the retained copies must all come.
        let mut retained: HashMap<String, String> = HashMap::new();
        while !["version", "uptime", "clients/connected", "clients/total"]
            .iter()
            .all(|t| retained.contains_key(&format!("$SYS/broker/{t}")))
        {
            let p = late.recv_publish().await;
            if p.retain {
                retained.insert(p.topic.to_string(), text(&p).1);
            }
        }
        assert_eq!(
            retained["$SYS/broker/version"],
            version_payload(),
            "{version:?}"
        );
        late.disconnect().await;
    }
}

/// A client cannot publish to `$SYS` topics: the broker refuses it (MQTT 5: PUBACK 0x87 Not
/// authorized; 3.1.1 has no negative acknowledgement, so the message is acknowledged and
/// dropped), forwards nothing and keeps its own retained value.
#[tokio::test]
async fn clients_cannot_overwrite_sys_topics() {
    let broker = start_sys().await;
    let mut watch = Peer::connect(broker.addr, V5, "sys-guard-watch").await;
    watch
        .subscribe("$SYS/broker/version", QoS::AtLeastOnce)
        .await;

    let mut v5 = Peer::connect(broker.addr, V5, "sys-forger-5").await;
    let ack = v5
        .send_message("$SYS/broker/version", b"forged", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    v5.send_message("$SYS/broker/version", b"forged", QoS::AtMostOnce, true)
        .await;
    let rec = v5
        .send_message("$SYS/broker/version", b"forged", QoS::ExactlyOnce, true)
        .await
        .unwrap();
    assert_eq!(rec.reason_code, ReasonCode::NOT_AUTHORIZED);
    let mut v311 = Peer::connect(broker.addr, V311, "sys-forger-311").await;
    let ack = v311
        .send_message("$SYS/broker/version", b"forged", QoS::AtLeastOnce, true)
        .await
        .unwrap();
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "3.1.1 acknowledges and drops"
    );

    // Everything the watcher gets up to the next live update is the broker's own.
    loop {
        let p = watch.recv_publish().await;
        assert_eq!(text(&p).1, version_payload(), "{p:?}");
        if !p.retain {
            break;
        }
    }
    let mut late = Peer::connect(broker.addr, V311, "sys-guard-late").await;
    late.subscribe("$SYS/broker/version", QoS::AtLeastOnce)
        .await;
    let p = late.recv_publish().await;
    assert_eq!(text(&p).1, version_payload());
}

/// With `sys.interval = 0` (the test default) there are no `$SYS` topics at all.
#[tokio::test]
async fn no_sys_topics_when_disabled() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "sys-off").await;
    c.subscribe("$SYS/#", QoS::AtMostOnce).await;
    c.subscribe("marker", QoS::AtMostOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "sys-off-pub").await;
    // Long enough for an update to have happened had `$SYS` been on with a 1 s interval.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    publisher
        .send_message("marker", b"m", QoS::AtMostOnce, false)
        .await;
    assert_eq!(c.recv_publish().await.topic, "marker");
    assert_eq!(broker.broker.metrics().retained_messages, 0);
}

/// A plugin's own topics (`$SYS/broker/plugins/<name>/...`) go with it: the update after it
/// is unloaded clears its retained topics (an empty retained message), so a late subscriber
/// finds nothing of a plugin that no longer runs. The other plugin's topics stay.
#[tokio::test]
async fn an_unloaded_plugins_sys_topics_are_cleared() {
    use crate::plugins::test_policy;
    use serde_json::json;
    let broker = harness::start_with(|c| {
        c.sys.interval = Duration::from_secs(1);
        c.plugin_chain = vec![
            test_policy(
                "gate",
                json!({"auth": {"anonymous": "allow"},
                       "subscribe": [{"filter": "$SYS/#", "verdict": "allow"}]}),
            ),
            test_policy("extra", json!({})),
        ];
    })
    .await;
    let mut watch = Peer::connect(broker.addr, V5, "sys-plugins").await;
    watch
        .subscribe("$SYS/broker/plugins/extra/generation", QoS::AtMostOnce)
        .await;
    assert_eq!(text(&watch.recv_publish().await).1, "1");

    broker
        .broker
        .control()
        .unwrap()
        .unload("extra")
        .await
        .unwrap();
    until(&mut watch, |p| p.payload.is_empty().then_some(())).await;

    let mut late = Peer::connect(broker.addr, V5, "sys-plugins-late").await;
    late.subscribe("$SYS/broker/plugins/#", QoS::AtMostOnce)
        .await;
    let mut seen = Vec::new();
    while let Some(p) = late.recv_publish_within(Duration::from_millis(500)).await {
        seen.push(p.topic.to_string());
    }
    assert!(
        seen.iter()
            .any(|t| t.starts_with("$SYS/broker/plugins/gate/")),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|t| t.starts_with("$SYS/broker/plugins/extra/")),
        "{seen:?}"
    );
}
