//! The plugin chain end to end: real Wasm plugins (`plugins/testing/test-policy`, configured
//! per test) behind a real broker, driven by real clients. Each hook allows, denies and falls
//! through; each refusal produces the reason code of its packet in MQTT 5 and 3.1.1; a chain
//! runs out into `plugins.exhausted`.

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::{Exhausted, PluginConfig};
use serde_json::{Value, json};

use crate::harness::{RawClient, TestBroker, raw_connect_packet, raw_publish, start_with};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
const BOTH: [ProtocolVersion; 2] = [V5, V311];

/// The test plugins' components.
pub mod components {
    include!(concat!(env!("OUT_DIR"), "/test_plugins.rs"));
}

/// A `[[plugin]]` running `test-policy` with `config`.
pub fn test_policy(name: &str, config: Value) -> PluginConfig {
    let Value::Object(config) = config else {
        panic!("a plugin config is a JSON object");
    };
    PluginConfig {
        name: name.into(),
        wasm: Some(components::TEST_POLICY.into()),
        config,
        ..PluginConfig::default()
    }
}

/// A broker running `plugins`, in order.
pub async fn start_chain(plugins: Vec<PluginConfig>) -> TestBroker {
    start_with(|c| c.plugin_chain = plugins).await
}

/// A CONNECT with a user name and password.
pub fn login(
    version: ProtocolVersion,
    client_id: &str,
    user: &str,
    password: &str,
) -> moat::codec::Connect {
    let mut c = raw_connect_packet(version, client_id, true);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(password.as_bytes()));
    c
}

/// A connected raw client logged in as `user`.
pub async fn logged_in(
    b: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    user: &str,
    password: &str,
) -> RawClient {
    let (c, ack) = RawClient::handshake(b.addr, login(version, id, user, password)).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "{user} logs in: {ack:?}"
    );
    c
}

/// Asserts that `user` logging in with `password` is refused as bad credentials (0x86; 3.1.1
/// return code 4) and the connection closed.
pub async fn login_refused(
    b: &TestBroker,
    version: ProtocolVersion,
    id: &str,
    user: &str,
    password: &str,
) {
    let (mut c, ack) = RawClient::handshake(b.addr, login(version, id, user, password)).await;
    assert_eq!(
        ack.reason_code,
        expected(version, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
        "{version:?} {user}"
    );
    assert!(c.closed().await.is_empty());
}

/// The CONNACK refusal a client sees: `v5` in MQTT 5; in 3.1.1 the return code `v311`, which
/// the raw client decodes to its MQTT 5 equivalent (2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87).
pub fn expected(version: ProtocolVersion, v5: ReasonCode, v311: u8) -> ReasonCode {
    match (version, v311) {
        (V5, _) => v5,
        (V311, 2) => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        (V311, 3) => ReasonCode::SERVER_UNAVAILABLE,
        (V311, 4) => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        (V311, 5) => ReasonCode::NOT_AUTHORIZED,
        _ => panic!("not a 3.1.1 refusal: {v311}"),
    }
}

/// Authenticate: the first plugin allows its users, denies a wrong password, says `next` for
/// users it does not know; the second decides those; MQTT-3.2.2-7 (the connection closes
/// after a refusing CONNACK) in both protocol versions.
#[tokio::test]
async fn authenticate_allows_denies_and_falls_through_the_chain() {
    let b = start_chain(vec![
        test_policy(
            "first",
            json!({"auth": {"users": {"alice": {"password": "a"}}, "unknown": "next"},
            "publish": [{"filter": "#", "verdict": "allow"}]}),
        ),
        test_policy(
            "second",
            json!({"auth": {"users": {"bob": {"password": "b"}}},
            "publish": [{"filter": "#", "verdict": "allow"}]}),
        ),
    ])
    .await;
    for version in BOTH {
        logged_in(&b, version, "a", "alice", "a").await;
        logged_in(&b, version, "b", "bob", "b").await;
        for (user, password) in [("alice", "wrong"), ("mallory", "m")] {
            login_refused(&b, version, "m", user, password).await;
        }
    }
    b.stop().await;
}

/// A chain in which every plugin says `next` denies (0x87 / 3.1.1 return code 5) unless
/// `plugins.exhausted = "allow"`.
#[tokio::test]
async fn an_exhausted_chain_denies_unless_configured_to_allow() {
    let silent = || test_policy("silent", json!({}));
    let b = start_chain(vec![silent()]).await;
    for version in BOTH {
        let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(version, "x", true)).await;
        assert_eq!(
            ack.reason_code,
            expected(version, ReasonCode::NOT_AUTHORIZED, 5)
        );
    }
    b.stop().await;
    let b = start_with(|c| {
        c.plugin_chain = vec![silent()];
        c.plugins.exhausted = Exhausted::Allow;
    })
    .await;
    let mut c = RawClient::connected(b.addr, V5, "x", true).await;
    assert_eq!(
        c.subscribe_one(1, "t", QoS::AtLeastOnce).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    b.stop().await;
}

/// on-connect is a pre-check: a banned client id is refused with 0x8A (3.1.1: 5) before any
/// authentication, and its `next` lets the others go on to authenticate.
#[tokio::test]
async fn on_connect_refuses_banned_clients_before_authentication() {
    let b = start_chain(vec![test_policy(
        "gate",
        json!({"banned": ["evil/#", "evil"], "auth": {"anonymous": "allow"}}),
    )])
    .await;
    for version in BOTH {
        let (_, ack) =
            RawClient::handshake(b.addr, raw_connect_packet(version, "evil", true)).await;
        assert_eq!(
            ack.reason_code,
            expected(version, ReasonCode::BANNED, 5),
            "{version:?}"
        );
        RawClient::connected(b.addr, version, "good", true).await;
    }
    b.stop().await;
}

/// A refused PUBLISH: MQTT 5 QoS 1 gets PUBACK 0x87 (QoS 2: PUBREC 0x87); 3.1.1 QoS 1 is
/// acknowledged and dropped, as Mosquitto does; nothing reaches the subscriber. Allowed topics
/// are delivered.
#[tokio::test]
async fn a_refused_publish_is_answered_with_its_reason_and_not_routed() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"anonymous": "allow"},
               "publish": [{"filter": "locked/#", "verdict": "deny"}, {"filter": "#", "verdict": "allow", "cache": 60}],
               "subscribe": [{"filter": "#", "verdict": "allow"}]}),
    )])
    .await;
    let mut sub = RawClient::connected(b.addr, V5, "sub", true).await;
    sub.subscribe_one(1, "#", QoS::AtLeastOnce).await;
    for version in BOTH {
        let mut p = RawClient::connected(b.addr, version, "pub", true).await;
        p.send(&raw_publish("locked/door", b"x", QoS::AtLeastOnce, Some(7)))
            .await;
        match p.recv().await {
            Some(Packet::PubAck(a)) => {
                let want = if version == V5 {
                    ReasonCode::NOT_AUTHORIZED
                } else {
                    ReasonCode::SUCCESS
                };
                assert_eq!((a.packet_id, a.reason_code), (7, want), "{version:?}");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        if version == V5 {
            p.send(&raw_publish("locked/door", b"x", QoS::ExactlyOnce, Some(8)))
                .await;
            match p.recv().await {
                Some(Packet::PubRec(r)) => assert_eq!(r.reason_code, ReasonCode::NOT_AUTHORIZED),
                other => panic!("expected PUBREC, got {other:?}"),
            }
        }
        p.send(&raw_publish("open/door", b"y", QoS::AtMostOnce, None))
            .await;
        let got = sub.expect_publish().await;
        assert_eq!(
            &*got.topic, "open/door",
            "only the allowed message arrives ({version:?})"
        );
    }
    b.stop().await;
}

/// A refused SUBSCRIBE gets 0x87 (3.1.1: 0x80) for that filter only; the others in the same
/// packet are granted; a plugin's reason maps to the SUBACK code (topic-invalid: 0x8F).
#[tokio::test]
async fn a_refused_subscription_fails_only_its_own_filter() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"anonymous": "allow"},
               "subscribe": [{"filter": "secret/#", "verdict": "deny"},
                             {"filter": "odd/#", "verdict": "deny", "reason": "topic-invalid"},
                             {"filter": "#", "verdict": "allow"}]}),
    )])
    .await;
    for version in BOTH {
        let mut c = RawClient::connected(b.addr, version, "s", true).await;
        let options = moat::codec::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        c.send(&Packet::Subscribe(moat::codec::Subscribe {
            packet_id: 3,
            filters: vec![
                ("open/a".into(), options),
                ("secret/x".into(), options),
                ("odd/y".into(), options),
            ],
            properties: Default::default(),
        }))
        .await;
        let Some(Packet::SubAck(ack)) = c.recv().await else {
            panic!("expected SUBACK")
        };
        let refused = |v5| {
            if version == V5 {
                v5
            } else {
                ReasonCode::UNSPECIFIED_ERROR
            }
        };
        assert_eq!(
            ack.reason_codes,
            vec![
                ReasonCode::GRANTED_QOS_1,
                refused(ReasonCode::NOT_AUTHORIZED),
                refused(ReasonCode::TOPIC_FILTER_INVALID)
            ],
            "{version:?}"
        );
    }
    b.stop().await;
}

/// A plugin's reason maps onto the PUBACK's code: quota-exceeded is 0x97, and its message is
/// the reason string when the client asked for problem information.
#[tokio::test]
async fn a_publish_denial_carries_the_plugins_reason_and_message() {
    let b = start_chain(vec![test_policy(
        "quota",
        json!({"auth": {"anonymous": "allow"},
               "publish": [{"filter": "metered/#", "verdict": "deny", "reason": "quota-exceeded", "message": "monthly quota used"}]}),
    )])
    .await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    p.send(&raw_publish("metered/x", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::QUOTA_EXCEEDED);
            assert_eq!(
                a.properties.reason_string.as_deref(),
                Some("monthly quota used")
            );
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    b.stop().await;
}

/// `hooks` and `listeners` narrow what a plugin is asked: a plugin told to serve only
/// authenticate is never asked about publishes, so those fall to the next plugin.
#[tokio::test]
async fn hooks_and_listeners_narrow_what_a_plugin_is_asked() {
    let mut narrow = test_policy(
        "narrow",
        json!({"auth": {"anonymous": "allow"}, "publish": [{"filter": "#", "verdict": "deny"}]}),
    );
    narrow.hooks = Some(vec![moat::config::HookName::Authenticate]);
    let mut elsewhere = test_policy(
        "elsewhere",
        json!({"publish": [{"filter": "#", "verdict": "deny"}]}),
    );
    elsewhere.listeners = Some(vec!["no-such-listener-is-used".into()]);
    let last = test_policy(
        "last",
        json!({"publish": [{"filter": "#", "verdict": "allow"}]}),
    );
    let b = start_with(|c| {
        c.listeners.push(moat::config::ListenerConfig {
            name: "no-such-listener-is-used".into(),
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        });
        c.plugin_chain = vec![narrow, elsewhere, last];
    })
    .await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    p.send(&raw_publish("t", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    match p.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    b.stop().await;
}

/// The default chain (no `[[plugin]]`): anonymous clients on a loopback listener may connect,
/// publish and subscribe; the bundled allow-anonymous plugin answers.
#[tokio::test]
async fn the_default_chain_lets_anonymous_clients_in_on_loopback() {
    let b = start_with(|_| {}).await;
    let chain = b.broker.plugins().expect("a chain");
    assert_eq!(chain.slots().len(), 1);
    assert_eq!(&*chain.slots()[0].name, "allow-anonymous");
    let mut c = RawClient::connected(b.addr, V5, "anon", true).await;
    assert_eq!(
        c.subscribe_one(1, "a/#", QoS::AtMostOnce).await,
        vec![ReasonCode::GRANTED_QOS_0]
    );
    c.send(&raw_publish("a/b", b"hi", QoS::AtMostOnce, None))
        .await;
    assert_eq!(&*c.expect_publish().await.topic, "a/b");
    b.stop().await;
}

/// Cached decisions: a plugin's allow with a lifetime is reused, so a second publish to the
/// same topic does not call the plugin again.
#[tokio::test]
async fn an_allow_with_a_lifetime_is_reused_by_the_session() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"anonymous": "allow"}, "publish": [{"filter": "#", "verdict": "allow", "cache": 60}]}),
    )])
    .await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    let calls = || {
        b.broker.plugins().unwrap().slots()[0]
            .generation()
            .stats
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    p.send(&raw_publish("t", b"1", QoS::AtLeastOnce, Some(1)))
        .await;
    p.recv().await;
    let after_first = calls();
    for id in 2..12 {
        p.send(&raw_publish("t", b"n", QoS::AtLeastOnce, Some(id)))
            .await;
        p.recv().await;
    }
    assert_eq!(
        calls(),
        after_first,
        "ten more publishes to t, no more plugin calls"
    );
    p.send(&raw_publish("u", b"1", QoS::AtLeastOnce, Some(20)))
        .await;
    p.recv().await;
    assert_eq!(
        calls(),
        after_first + 1,
        "another topic is another question"
    );
    b.stop().await;
}

/// Each plugin reports itself under `$SYS/broker/plugins/<name>/`: its generation, content
/// hash, calls and failures, and the counters it keeps with `host.count`.
#[tokio::test]
async fn plugins_report_their_calls_and_counters_under_sys() {
    let b = start_with(|c| {
        c.sys.interval = std::time::Duration::from_secs(1);
        c.plugin_chain = vec![{
            let mut p = test_policy(
                "acl",
                json!({"auth": {"anonymous": "allow"}, "revoke_topic": "admin/revoke",
                       "publish": [{"filter": "#", "verdict": "allow"}],
                       "subscribe": [{"filter": "$SYS/#", "verdict": "allow"}]}),
            );
            p.grants.kv = Some(moat::config::KvGrant::default());
            p
        }];
    })
    .await;
    let mut c = RawClient::connected(b.addr, V5, "c", true).await;
    c.send(&raw_publish(
        "admin/revoke/x",
        b"",
        QoS::AtLeastOnce,
        Some(1),
    ))
    .await;
    c.recv().await;
    c.subscribe_one(2, "$SYS/broker/plugins/acl/#", QoS::AtMostOnce)
        .await;
    // The first report may predate the revocation: read on until a report counts it.
    let mut seen = std::collections::HashMap::new();
    while seen
        .get("$SYS/broker/plugins/acl/counters/revocations")
        .is_none_or(|v| v != "1")
        || !seen.contains_key("$SYS/broker/plugins/acl/sha256")
        || !seen.contains_key("$SYS/broker/plugins/acl/calls")
    {
        let p = c.expect_publish().await;
        let value = String::from_utf8(p.payload.to_vec()).unwrap();
        seen.insert(p.topic.to_string(), value);
    }
    assert_eq!(seen["$SYS/broker/plugins/acl/counters/revocations"], "1");
    assert!(
        seen["$SYS/broker/plugins/acl/calls"]
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    let digest = moat::policy::wasm::sha256_hex(&std::fs::read(components::TEST_POLICY).unwrap());
    assert_eq!(seen["$SYS/broker/plugins/acl/sha256"], digest);
    b.stop().await;
}

/// A plugin that reads payloads (manifest `needs-payload`) sees them, and its decisions are
/// never cached, however long a lifetime it gives: the next message's payload may differ.
#[tokio::test]
async fn decisions_of_a_plugin_that_reads_payloads_are_never_cached() {
    let b = start_chain(vec![test_policy(
        "reader",
        json!({"auth": {"anonymous": "allow"}, "needs_payload": true,
               "publish": [{"filter": "#", "verdict": "allow", "cache": 3600}]}),
    )])
    .await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    let calls = || {
        b.broker.plugins().unwrap().slots()[0]
            .generation()
            .stats
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = calls();
    for id in 1..=5 {
        p.send(&raw_publish("t", b"x", QoS::AtLeastOnce, Some(id)))
            .await;
        p.recv().await;
    }
    assert_eq!(calls() - before, 5, "every publish asked the plugin");
    b.stop().await;
}

/// The policy is asked about the topic a topic alias stands for (section 3.3.2.3.4): a
/// PUBLISH that names a denied topic only through its alias is refused.
#[tokio::test]
async fn a_topic_alias_is_authorized_as_the_topic_it_stands_for() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"anonymous": "allow"},
               "publish": [{"filter": "secret/#", "verdict": "deny"}, {"filter": "#", "verdict": "allow", "cache": 60}]}),
    )])
    .await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    let aliased = |topic: &str, alias: u16, id: u16| {
        let Packet::Publish(mut publish) = raw_publish(topic, b"x", QoS::AtLeastOnce, Some(id))
        else {
            unreachable!()
        };
        publish.properties.topic_alias = Some(alias);
        Packet::Publish(publish)
    };
    // Alias 1 set to an allowed topic, alias 2 to a denied one; then both used alone.
    for (topic, alias, id, want) in [
        ("open/a", 1, 1, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        ("secret/a", 2, 2, ReasonCode::NOT_AUTHORIZED),
        ("", 1, 3, ReasonCode::NO_MATCHING_SUBSCRIBERS),
        ("", 2, 4, ReasonCode::NOT_AUTHORIZED),
    ] {
        p.send(&aliased(topic, alias, id)).await;
        match p.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, want, "alias {alias} ({topic:?})"),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    b.stop().await;
}
