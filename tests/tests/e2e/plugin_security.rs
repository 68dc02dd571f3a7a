//! The rules the broker enforces whatever a plugin says, and the attacks a policy must hold
//! against: a session hijacked by client identifier, a will published after its topic was
//! revoked, writes to `$SYS`, placeholder injection, a wildcard subscription reading a denied
//! topic, a revocation hidden by a cached allow, guessable assigned identifiers, and an
//! identity that outlives its expiry.

use std::time::Duration;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode, Will};
use moat::config::{ForeignSession, KvGrant};
use serde_json::json;

use crate::harness::{RawClient, raw_connect_packet, raw_publish, start_with};
use crate::plugins::{expected, logged_in, login, start_chain, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn users() -> serde_json::Value {
    json!({"alice": {"password": "a"}, "bob": {"password": "b"},
           "a/#": {"password": "x"}, "+": {"password": "x"},
           "brief": {"password": "t", "expires_in": 1}})
}

/// A persistent session belongs to the principal that created it: another principal with the
/// same client identifier is refused (0x87; 3.1.1: 5) and the owner's session is untouched;
/// with `foreign_session = "replace"` the intruder gets a fresh session, never the owner's.
#[tokio::test]
async fn a_session_cannot_be_taken_over_by_another_principal() {
    let policy = || {
        test_policy(
            "acl",
            json!({"auth": {"users": users()},
            "publish": [{"filter": "#", "verdict": "allow"}], "subscribe": [{"filter": "#", "verdict": "allow"}]}),
        )
    };
    let b = start_chain(vec![policy()]).await;
    for version in [V5, V311] {
        let mut owner = login(version, "dev-1", "alice", "a");
        owner.clean_start = false;
        if version == V5 {
            owner.properties.session_expiry_interval = Some(600);
        }
        let (mut alice, ack) = RawClient::handshake(b.addr, owner.clone()).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        alice
            .subscribe_one(1, "inbox/alice", QoS::AtLeastOnce)
            .await;
        drop(alice);
        let mut intruder = login(version, "dev-1", "bob", "b");
        intruder.clean_start = false;
        let (_, ack) = RawClient::handshake(b.addr, intruder).await;
        assert_eq!(
            ack.reason_code,
            expected(version, ReasonCode::NOT_AUTHORIZED, 5),
            "{version:?}"
        );
        // The owner still finds its session.
        let (_, ack) = RawClient::handshake(b.addr, owner).await;
        assert!(
            ack.session_present,
            "{version:?}: the owner's session survived"
        );
    }
    b.stop().await;

    let b = start_with(|c| {
        c.plugin_chain = vec![policy()];
        c.security.foreign_session = ForeignSession::Replace;
    })
    .await;
    let mut owner = login(V5, "dev-2", "alice", "a");
    owner.clean_start = false;
    owner.properties.session_expiry_interval = Some(600);
    let (mut alice, _) = RawClient::handshake(b.addr, owner).await;
    alice
        .subscribe_one(1, "inbox/alice", QoS::AtLeastOnce)
        .await;
    drop(alice);
    let mut p = logged_in(&b, V5, "p", "bob", "b").await;
    p.send(&raw_publish(
        "inbox/alice",
        b"private",
        QoS::AtLeastOnce,
        Some(1),
    ))
    .await;
    p.recv().await;
    let mut intruder = login(V5, "dev-2", "bob", "b");
    intruder.clean_start = false;
    let (mut bob, ack) = RawClient::handshake(b.addr, intruder).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present, "a fresh session, not alice's");
    bob.expect_nothing(Duration::from_millis(300)).await;
    b.stop().await;
}

/// A will is checked at CONNECT (a will topic the policy refuses refuses the connection,
/// 0x87; 3.1.1: 5) and again when it is published: a will whose topic was revoked after the
/// client connected is not published.
#[tokio::test]
async fn a_will_is_checked_at_connect_and_again_when_published() {
    let b = start_with(|c| {
        c.plugin_chain = vec![{
            let mut p = test_policy("acl", json!({"auth": {"users": users()},
                "revoke_topic": "admin/revoke",
                "publish": [{"filter": "forbidden/#", "verdict": "deny"}, {"filter": "#", "verdict": "allow", "cache": 3600}],
                "subscribe": [{"filter": "#", "verdict": "allow"}]}));
            p.grants.kv = Some(KvGrant::default());
            p
        }];
    })
    .await;
    let will = |topic: &str| Will {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    };
    for version in [V5, V311] {
        let mut c = login(version, "w", "alice", "a");
        c.will = Some(will("forbidden/w"));
        let (_, ack) = RawClient::handshake(b.addr, c).await;
        assert_eq!(
            ack.reason_code,
            expected(version, ReasonCode::NOT_AUTHORIZED, 5),
            "{version:?}"
        );
    }
    let mut watcher = logged_in(&b, V5, "watch", "bob", "b").await;
    watcher.subscribe_one(1, "wills/#", QoS::AtMostOnce).await;
    // Allowed at CONNECT...
    let mut c = login(V5, "dying", "alice", "a");
    c.will = Some(will("wills/dying"));
    let (dying, ack) = RawClient::handshake(b.addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // ...revoked before it is due (the plugin stores the revocation and invalidates)...
    let mut admin = logged_in(&b, V5, "admin", "bob", "b").await;
    admin
        .send(&raw_publish(
            "admin/revoke/wills/dying",
            b"",
            QoS::AtLeastOnce,
            Some(1),
        ))
        .await;
    admin.recv().await;
    // ...so the dropped connection's will is not published.
    drop(dying);
    watcher.expect_nothing(Duration::from_millis(500)).await;
    // A will that is still allowed is published, so the silence above is the policy's doing.
    let mut c = login(V5, "dying-2", "alice", "a");
    c.will = Some(will("wills/other"));
    let (dying, _) = RawClient::handshake(b.addr, c).await;
    drop(dying);
    assert_eq!(&*watcher.expect_publish().await.topic, "wills/other");
    b.stop().await;
}

/// `$` topics are never writable by clients, whatever a plugin allows; reads of `$SYS` go
/// through the plugin like any subscription.
#[tokio::test]
async fn sys_topics_cannot_be_written_and_their_reads_are_authorized() {
    let b = start_chain(vec![test_policy("acl", json!({"auth": {"users": users()},
        "publish": [{"filter": "#", "verdict": "allow"}, {"filter": "$SYS/#", "verdict": "allow"}],
        "subscribe": [{"filter": "$SYS/#", "verdict": "allow", "role": "admin"}, {"filter": "#", "verdict": "allow"}]}))])
    .await;
    let mut c = logged_in(&b, V5, "c", "alice", "a").await;
    c.send(&raw_publish(
        "$SYS/broker/version",
        b"fake",
        QoS::AtLeastOnce,
        Some(1),
    ))
    .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // alice has no admin role: the $SYS rule does not apply, and `#` does not cover `$SYS`
    // (MQTT-4.7.2-1), so the chain runs out and denies.
    assert_eq!(
        c.subscribe_one(2, "$SYS/#", QoS::AtMostOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    b.stop().await;
}

/// Placeholders cannot be injected: with the rule `devices/%u/#`, a user called `a/#` does not
/// get `devices/a/#` and a user called `+` does not get everybody's devices; a plain user gets
/// exactly their own subtree.
#[tokio::test]
async fn a_user_name_with_wildcards_does_not_widen_a_placeholder_rule() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"users": users()},
        "subscribe": [{"filter": "devices/%u/#", "verdict": "allow"}]}),
    )])
    .await;
    let mut alice = logged_in(&b, V5, "alice", "alice", "a").await;
    assert_eq!(
        alice
            .subscribe_one(1, "devices/alice/#", QoS::AtMostOnce)
            .await,
        vec![ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(
        alice
            .subscribe_one(2, "devices/bob/#", QoS::AtMostOnce)
            .await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        alice.subscribe_one(3, "devices/#", QoS::AtMostOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    for (user, filter) in [
        ("a/#", "devices/a/#"),
        ("+", "devices/+/#"),
        ("+", "devices/bob/#"),
    ] {
        let mut evil = logged_in(&b, V5, "evil", user, "x").await;
        assert_eq!(
            evil.subscribe_one(1, filter, QoS::AtMostOnce).await,
            vec![ReasonCode::NOT_AUTHORIZED],
            "user {user:?} must not get {filter}"
        );
    }
    b.stop().await;
}

/// "Allow, but check each delivery": a subscription to `#` receives what the deliver hook
/// allows and never a topic a finer rule denies (the read check Mosquitto does per delivery).
#[tokio::test]
async fn a_wildcard_subscription_never_receives_a_denied_topic() {
    let b = start_chain(vec![test_policy("acl", json!({"auth": {"users": users()},
        "publish": [{"filter": "#", "verdict": "allow", "cache": 60}],
        "subscribe": [{"filter": "#", "verdict": "allow", "check_each_delivery": true}],
        "deliver": [{"filter": "secret/#", "verdict": "deny"}, {"filter": "#", "verdict": "allow", "cache": 60}]}))])
    .await;
    for version in [V5, V311] {
        let mut sub = logged_in(&b, version, "watcher", "alice", "a").await;
        assert_eq!(
            sub.subscribe_one(1, "#", QoS::AtMostOnce).await,
            vec![ReasonCode::GRANTED_QOS_0]
        );
        let mut p = logged_in(&b, version, "pub", "bob", "b").await;
        for topic in ["public/a", "secret/b", "public/c", "secret/b", "public/d"] {
            p.send(&raw_publish(topic, b"x", QoS::AtMostOnce, None))
                .await;
        }
        for want in ["public/a", "public/c", "public/d"] {
            assert_eq!(&*sub.expect_publish().await.topic, want, "{version:?}");
        }
        sub.expect_nothing(Duration::from_millis(300)).await;
    }
    b.stop().await;
}

/// A revocation takes effect at once although the session cached an allow for an hour: the
/// plugin calls `invalidate`, which makes every decision it took part in stale.
#[tokio::test]
async fn a_revocation_takes_effect_despite_a_cached_allow() {
    let b = start_with(|c| {
        c.plugin_chain = vec![{
            let mut p = test_policy(
                "acl",
                json!({"auth": {"users": users()},
                "revoke_topic": "admin/revoke",
                "publish": [{"filter": "#", "verdict": "allow", "cache": 3600}]}),
            );
            p.grants.kv = Some(KvGrant::default());
            p
        }];
    })
    .await;
    let mut c = logged_in(&b, V5, "c", "alice", "a").await;
    let publish = async |c: &mut RawClient, id: u16| {
        c.send(&raw_publish("data/x", b"x", QoS::AtLeastOnce, Some(id)))
            .await;
        match c.recv().await {
            Some(Packet::PubAck(a)) => a.reason_code,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_eq!(
        publish(&mut c, 1).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        publish(&mut c, 2).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "now cached"
    );
    let mut admin = logged_in(&b, V5, "admin", "bob", "b").await;
    admin
        .send(&raw_publish(
            "admin/revoke/data/x",
            b"",
            QoS::AtLeastOnce,
            Some(1),
        ))
        .await;
    admin.recv().await;
    assert_eq!(
        publish(&mut c, 3).await,
        ReasonCode::NOT_AUTHORIZED,
        "revoked despite the cache"
    );
    b.stop().await;
}

/// MQTT-3.1.3-6 / MQTT-3.2.2-16: an assigned client identifier is returned in CONNACK; moat's
/// are 128 random bits, so nobody can guess another client's and take its session.
#[tokio::test]
async fn assigned_client_identifiers_are_random() {
    let b = start_with(|_| {}).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "", true)).await;
        let id = ack
            .properties
            .assigned_client_identifier
            .clone()
            .expect("an assigned id")
            .to_string();
        let hex = id.strip_prefix("moat-").expect("moat-<hex>");
        assert_eq!(hex.len(), 32, "{id}");
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1]);
    b.stop().await;
}

/// An identity that expires closes its connection: MQTT 5 clients hear DISCONNECT 0xA0
/// (Maximum connect time), 3.1.1 clients are closed.
#[tokio::test]
async fn a_connection_closes_when_its_identity_expires() {
    let b = start_chain(vec![test_policy(
        "acl",
        json!({"auth": {"users": users()}}),
    )])
    .await;
    for version in [V5, V311] {
        let mut c = logged_in(&b, version, "brief", "brief", "t").await;
        c.expect_disconnect(ReasonCode::MAXIMUM_CONNECT_TIME).await;
    }
    b.stop().await;
}
