//! Plugins written in Python and JavaScript, end to end: the `tenant-isolation` examples of
//! `plugins/examples/` (built by [`crate::guests`]) behind a real broker, driven by real
//! clients. Every scenario runs once per language (`polyglot::python::*`,
//! `polyglot::js::*`): passwords, publishes and subscriptions inside and outside the tenant
//! with their reason codes in MQTT 5 and 3.1.1, isolation between tenants, configuration
//! errors; and one chain of a Python, a JavaScript and a Rust plugin with `next` between them.

use std::sync::atomic::Ordering;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions};
use moat::config::PluginConfig;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
use serde_json::{Value, json};

use crate::guests::Guest;
use crate::harness::{
    RawClient, Rumqtt4, Rumqtt5, TestBroker, raw_connect_packet, raw_publish, start_with,
};
use crate::plugins::{expected, logged_in, login, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
const BOTH: [ProtocolVersion; 2] = [V5, V311];

/// Three users in two tenants.
fn tenants() -> Value {
    json!({
        "users": {
            "alice": {"password": "alice-secret", "tenant": "acme"},
            "anna": {"password": "anna-secret", "tenant": "acme"},
            "bob": {"password": "bob-secret", "tenant": "globex"},
        },
        "cache_seconds": 60,
    })
}

/// A broker whose only plugin is `guest`'s tenant-isolation with [`tenants`].
async fn start(guest: Guest) -> TestBroker {
    start_chain(vec![guest.plugin("tenants", tenants()).await]).await
}

/// A broker running `plugins`, in order, that answers refused logins at once (these tests
/// refuse many from one address; the delay has its own test in `limits.rs`).
async fn start_chain(plugins: Vec<PluginConfig>) -> TestBroker {
    start_with(|c| {
        c.plugin_chain = plugins;
        c.limits.auth_failure_delay_max = std::time::Duration::ZERO;
    })
    .await
}

/// The plugin's own counters (`host.count`), by name.
fn counter(b: &TestBroker, slot: usize, name: &str) -> u64 {
    let generation = b.broker.plugins().expect("a chain").slots()[slot].generation();
    let counters = generation.ctx.counters();
    counters
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| *v)
}

/// How many calls a plugin of the chain has answered.
fn calls(b: &TestBroker, slot: usize) -> u64 {
    let generation = b.broker.plugins().expect("a chain").slots()[slot].generation();
    generation.stats.calls.load(Ordering::Relaxed)
}

/// A QoS 1 PUBLISH from a raw client, and the reason code of its PUBACK.
async fn puback(c: &mut RawClient, packet_id: u16, topic: &str) -> ReasonCode {
    c.send(&raw_publish(topic, b"x", QoS::AtLeastOnce, Some(packet_id)))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.packet_id, packet_id);
            a.reason_code
        }
        other => panic!("expected PUBACK for {topic}, got {other:?}"),
    }
}

/// The right password lets a user in; a wrong, empty or missing one is refused with 0x86
/// (3.1.1: return code 4) and counted; a user the plugin does not know, and a client without
/// a user name, are not its business: it says `next`, and the exhausted chain refuses with
/// 0x87 (3.1.1: 5).
async fn the_right_password_lets_in_and_a_wrong_one_is_refused(guest: Guest) {
    let b = start(guest).await;
    for version in BOTH {
        logged_in(&b, version, "a", "alice", "alice-secret").await;
        let mut no_password = login(version, "a", "alice", "");
        no_password.password = None;
        let refused = [
            (login(version, "a", "alice", "alice-secreT"), 0x86),
            (login(version, "a", "alice", "alice-secret!"), 0x86),
            (login(version, "a", "alice", "alice-secre"), 0x86),
            (login(version, "a", "alice", "bob-secret"), 0x86),
            (login(version, "a", "alice", ""), 0x86),
            (no_password, 0x86),
            (login(version, "m", "mallory", "alice-secret"), 0x87),
            (raw_connect_packet(version, "anon", true), 0x87),
        ];
        for (connect, code) in refused {
            let what = format!("{version:?} {:?} {:?}", connect.username, connect.password);
            let (mut c, ack) = RawClient::handshake(b.addr, connect).await;
            let want = match code {
                0x86 => expected(version, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
                _ => expected(version, ReasonCode::NOT_AUTHORIZED, 5),
            };
            assert_eq!(ack.reason_code, want, "{what}");
            assert!(c.closed().await.is_empty(), "{what}: closed after CONNACK");
        }
    }
    assert_eq!(counter(&b, 0, "logins"), 2);
    assert_eq!(counter(&b, 0, "bad-password"), 12);
    b.stop().await;
}

/// A user publishes anywhere in its tenant's subtree `tenants/<tenant>/#` (which, as `#` does,
/// includes `tenants/<tenant>` itself). Anywhere else is refused: PUBACK 0x87 in MQTT 5;
/// in 3.1.1, acknowledged and dropped. Nothing refused reaches a subscriber of the other
/// tenant; what is allowed reaches the tenant's own.
async fn publishes_inside_the_tenant_pass_and_outside_are_refused(guest: Guest) {
    let b = start(guest).await;
    let mut anna = logged_in(&b, V5, "anna", "anna", "anna-secret").await;
    let mut bob = logged_in(&b, V5, "bob", "bob", "bob-secret").await;
    for (c, filter) in [
        (&mut anna, "tenants/acme/#"),
        (&mut bob, "tenants/globex/#"),
    ] {
        assert_eq!(
            c.subscribe_one(1, filter, QoS::AtLeastOnce).await,
            vec![ReasonCode::GRANTED_QOS_1]
        );
    }
    let outside = [
        "tenants/globex/news",
        "tenants/acme-corp/news",
        "tenants/acmes",
        "tenants",
        "tenants//acme/news",
        "acme/news",
        "news",
    ];
    for version in BOTH {
        let mut alice = logged_in(&b, version, "alice", "alice", "alice-secret").await;
        for (i, topic) in outside.iter().enumerate() {
            let want = if version == V5 {
                ReasonCode::NOT_AUTHORIZED
            } else {
                ReasonCode::SUCCESS
            };
            assert_eq!(
                puback(&mut alice, 10 + i as u16, topic).await,
                want,
                "{version:?} {topic}"
            );
        }
        for (i, topic) in ["tenants/acme/news", "tenants/acme/a/b/c", "tenants/acme"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                puback(&mut alice, 30 + i as u16, topic).await,
                ReasonCode::SUCCESS,
                "{version:?} {topic}"
            );
            assert_eq!(&*anna.expect_publish().await.topic, *topic);
        }
    }
    // Everything alice published was acknowledged before this: had any of it been routed to
    // globex, bob would see it before his own message.
    let mut bob_pub = logged_in(&b, V311, "bob-pub", "bob", "bob-secret").await;
    bob_pub
        .send(&raw_publish(
            "tenants/globex/own",
            b"x",
            QoS::AtMostOnce,
            None,
        ))
        .await;
    assert_eq!(&*bob.expect_publish().await.topic, "tenants/globex/own");
    assert_eq!(counter(&b, 0, "denied-publish"), 2 * outside.len() as u64);
    b.stop().await;
}

/// A subscription is allowed only if its filter lies within the tenant's subtree (a subset
/// test, not an overlap test): wildcards below the tenant's level are fine, a wildcard at or
/// above it is refused, however much of the tenant it would also cover. Refusals are per
/// filter: SUBACK 0x87 in MQTT 5, 0x80 in 3.1.1.
async fn subscriptions_must_lie_within_the_tenant(guest: Guest) {
    let b = start(guest).await;
    let filters = [
        ("tenants/acme/#", true),
        ("tenants/acme/+/temperature", true),
        ("tenants/acme", true),
        ("$share/workers/tenants/acme/jobs/#", true),
        ("tenants/#", false),
        ("tenants/+/news", false),
        ("tenants/+", false),
        ("#", false),
        ("+/acme/#", false),
        ("tenants/globex/#", false),
        ("tenants/acme-corp/#", false),
        ("$share/workers/tenants/#", false),
    ];
    for version in BOTH {
        let mut c = logged_in(&b, version, "alice", "alice", "alice-secret").await;
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 5,
            filters: filters
                .iter()
                .map(|(f, _)| ((*f).into(), options))
                .collect(),
            properties: Default::default(),
        }))
        .await;
        let Some(Packet::SubAck(ack)) = c.recv().await else {
            panic!("expected SUBACK")
        };
        let refused = match version {
            V5 => ReasonCode::NOT_AUTHORIZED,
            _ => ReasonCode::UNSPECIFIED_ERROR,
        };
        let want: Vec<_> = filters
            .iter()
            .map(|(_, ok)| {
                if *ok {
                    ReasonCode::GRANTED_QOS_1
                } else {
                    refused
                }
            })
            .collect();
        assert_eq!(ack.reason_codes, want, "{version:?}");
    }
    b.stop().await;
}

/// Isolation with off-the-shelf clients (rumqttc, both protocol versions): a user of one
/// tenant cannot widen its subscription over the other tenants, cannot publish into them,
/// and a message published in tenant A never reaches tenant B's wildcard subscriber.
async fn a_message_in_one_tenant_never_reaches_another(guest: Guest) {
    use rumqttc::SubscribeReasonCode as Code4;
    let b = start(guest).await;
    let mut bob = Rumqtt4::connect(b.addr, "bob", |o| {
        o.set_credentials("bob", "bob-secret");
    })
    .await;
    for filter in ["#", "tenants/#", "tenants/+/news"] {
        bob.client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        loop {
            match bob.next().await {
                Some(rumqttc::Packet::SubAck(ack)) => {
                    assert_eq!(ack.return_codes, vec![Code4::Failure], "{filter}");
                    break;
                }
                Some(_) => {}
                None => panic!("bob's connection closed"),
            }
        }
    }
    bob.subscribe("tenants/globex/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let v5 = |user: &'static str, password: &'static str| {
        move |o: &mut rumqttc::v5::MqttOptions| {
            o.set_credentials(user, password);
        }
    };
    let (mut anna, _) = Rumqtt5::connect(b.addr, "anna", v5("anna", "anna-secret")).await;
    anna.subscribe("tenants/acme/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let (mut alice, _) = Rumqtt5::connect(b.addr, "alice", v5("alice", "alice-secret")).await;
    for (topic, want) in [
        ("tenants/acme/news", PubAckReason::Success),
        ("tenants/globex/news", PubAckReason::NotAuthorized),
    ] {
        alice
            .client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                "from acme",
            )
            .await
            .unwrap();
        loop {
            match alice.next().await {
                Some(P5::PubAck(ack)) => {
                    assert_eq!(ack.reason, want, "{topic}");
                    break;
                }
                Some(_) => {}
                None => panic!("alice's connection closed"),
            }
        }
    }
    let got = anna.next_publish().await;
    assert_eq!(&got.topic[..], b"tenants/acme/news");
    // alice's publishes were acknowledged, so routed, before this one.
    bob.client
        .publish(
            "tenants/globex/own",
            rumqttc::QoS::AtLeastOnce,
            false,
            "from globex",
        )
        .await
        .unwrap();
    assert_eq!(bob.next_publish().await.topic, "tenants/globex/own");
    b.stop().await;
}

/// A configuration the plugin refuses in `init` stops the broker's start, and the error names
/// the plugin and what is wrong.
async fn a_bad_configuration_stops_the_start_with_the_plugins_reason(guest: Guest) {
    let cases = [
        (
            json!({"users": {"eve": {"password": "x", "tenant": "a/b"}}}),
            "users.eve.tenant",
        ),
        (
            json!({"users": {"eve": {"password": "x", "tenant": "#"}}}),
            "users.eve.tenant",
        ),
        (json!({"users": {"eve": {"password": "x"}}}), "users.eve"),
        (
            json!({"users": {"eve": {"password": "", "tenant": "t"}}}),
            "users.eve.password",
        ),
        (json!({"user": {}}), "unknown key"),
        (json!({"cache_seconds": -1}), "cache_seconds"),
    ];
    for (config, wanted) in cases {
        let mut c = crate::harness::test_config();
        c.plugin_chain = vec![guest.plugin("tenants", config.clone()).await];
        let err = match moat::Broker::start(c).await {
            Ok(_) => panic!("{config} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("plugin `tenants`") && err.contains(wanted),
            "{config}: {err}"
        );
    }
}

/// Generates one test per language for each scenario above.
macro_rules! for_each_guest {
    ($($scenario:ident),* $(,)?) => {
        mod python {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Guest::Python).await
            })*
        }
        mod js {
            $(#[tokio::test]
            async fn $scenario() {
                super::$scenario(super::Guest::Js).await
            })*
        }
    };
}

for_each_guest!(
    the_right_password_lets_in_and_a_wrong_one_is_refused,
    publishes_inside_the_tenant_pass_and_outside_are_refused,
    subscriptions_must_lie_within_the_tenant,
    a_message_in_one_tenant_never_reaches_another,
    a_bad_configuration_stops_the_start_with_the_plugins_reason,
);

/// A chain of a Python, a JavaScript and a Rust plugin: each decides for its own users and
/// says `next` for the others' (it sees their session state empty), so every user is
/// answered by the plugin that authenticated it, and what none decides is refused.
#[tokio::test]
async fn python_javascript_and_rust_plugins_chain_with_next_between_them() {
    let python = Guest::Python
        .plugin(
            "python",
            json!({"users": {"alice": {"password": "alice-secret", "tenant": "acme"}}}),
        )
        .await;
    let js = Guest::Js
        .plugin(
            "js",
            json!({"users": {"carol": {"password": "carol-secret", "tenant": "initech"}}}),
        )
        .await;
    let rust = test_policy(
        "rust",
        json!({"auth": {"users": {"ops": {"password": "ops-secret"}}},
               "publish": [{"filter": "ops/#", "verdict": "allow"}]}),
    );
    let b = start_chain(vec![python, js, rust]).await;
    for version in BOTH {
        logged_in(&b, version, "alice", "alice", "alice-secret").await;
        logged_in(&b, version, "carol", "carol", "carol-secret").await;
        logged_in(&b, version, "ops", "ops", "ops-secret").await;
        for (user, password) in [("carol", "alice-secret"), ("mallory", "x")] {
            let (_, ack) = RawClient::handshake(b.addr, login(version, "x", user, password)).await;
            assert_eq!(
                ack.reason_code,
                expected(version, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
                "{version:?} {user}"
            );
        }
    }
    assert_eq!(
        counter(&b, 1, "bad-password"),
        2,
        "the JS plugin refused carol"
    );
    let (python, js, rust) = (0, 1, 2);
    let cases = [
        ("alice", "alice-secret", "tenants/acme/x", true, python),
        ("alice", "alice-secret", "tenants/initech/x", false, python),
        ("alice", "alice-secret", "ops/x", false, python),
        ("carol", "carol-secret", "tenants/initech/x", true, js),
        ("carol", "carol-secret", "tenants/acme/x", false, js),
        ("ops", "ops-secret", "ops/x", true, rust),
        // Nobody decides: the exhausted chain refuses.
        ("ops", "ops-secret", "tenants/acme/x", false, 3),
    ];
    for (i, (user, password, topic, allowed, decider)) in cases.into_iter().enumerate() {
        let mut c = logged_in(&b, V5, user, user, password).await;
        let before: Vec<u64> = (0..3).map(|s| calls(&b, s)).collect();
        let code = puback(&mut c, i as u16 + 1, topic).await;
        let want = if allowed {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::NOT_AUTHORIZED
        };
        assert_eq!(code, want, "{user} -> {topic}");
        let asked: Vec<bool> = (0..3).map(|s| calls(&b, s) > before[s]).collect();
        let want_asked: Vec<bool> = (0..3).map(|s| s <= decider).collect();
        assert_eq!(asked, want_asked, "{user} -> {topic}: plugins asked");
    }
    b.stop().await;
}
