//! The bundled `ldap` plugin behind a real broker, against a real slapd, with real MQTT
//! clients (the raw client for exact reason codes, `mosquitto_pub`/`mosquitto_sub`): logins
//! and every refusal's CONNACK code, topics by group, the directory killed and restarted, a
//! member removed while connected, and a chain of static-acl (service accounts) then ldap.

use std::time::{Duration, Instant};

use moat::codec::{ProtocolVersion, QoS, ReasonCode};
use moat::config::{Grants, PluginConfig};
use serde_json::{Value, json};

use super::slapd::Slapd;
use super::unit::{directory, grants, search_then_bind, with};
use crate::harness::{RawClient, TestBroker, WAIT, start_with};
use crate::plugins::{expected, login};
use crate::static_acl::mosquitto_passwd;
use crate::static_acl_broker::{connack, puback};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// The `[[plugin]]` of the bundled ldap plugin with `config` and `grants`.
fn ldap_plugin(config: Value, grants: Grants) -> PluginConfig {
    let Value::Object(config) = config else {
        unreachable!()
    };
    PluginConfig {
        name: "directory".into(),
        bundled: Some("ldap".into()),
        grants,
        config,
        // Generous: rechecks call the directory, and the tests share two busy cores.
        authorize_timeout_ms: 2000,
        ..PluginConfig::default()
    }
}

/// A broker with `plugins`, without the growing delay of refusals from one address (the tests
/// refuse a dozen logins from 127.0.0.1 in a row; the delay is the admission tests' concern).
async fn broker(plugins: Vec<PluginConfig>) -> TestBroker {
    start_with(|c| {
        c.plugin_chain = plugins;
        c.limits.auth_failure_delay_max = Duration::ZERO;
    })
    .await
}

/// Good and bad logins, MQTT 5 and 3.1.1: the right password lets the user in; a wrong or
/// empty password, an unknown user and user names crafted to widen the search filter or change
/// the DN get 0x86 (3.1.1: return code 4) and the connection closes (MQTT-3.2.2-7).
#[tokio::test]
async fn directory_logins_admit_users_and_refuse_with_0x86() {
    let s = Slapd::start();
    let b = broker(vec![ldap_plugin(
        search_then_bind(),
        grants(directory(s.url())),
    )])
    .await;
    for version in [V5, V311] {
        assert_eq!(
            connack(&b, version, "alice", "alice-pw").await,
            ReasonCode::SUCCESS
        );
        for (user, password) in [
            ("alice", "bob-pw"),
            ("alice", ""),
            ("nobody", "alice-pw"),
            ("*", "alice-pw"),
            ("alice)(uid=*", "alice-pw"),
            ("*)(|(uid=*", "alice-pw"),
            ("alice,ou=people", "alice-pw"),
        ] {
            let (mut c, ack) =
                RawClient::handshake(b.addr, login(version, "c", user, password)).await;
            assert_eq!(
                ack.reason_code,
                expected(version, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
                "{version:?} {user:?}/{password:?}"
            );
            assert!(c.closed().await.is_empty());
        }
    }
    b.stop().await;
}

/// alice (operators) may publish under `plant/`; bob (viewers) may only subscribe to
/// `plant/+/status`, and gets what alice publishes there through mosquitto_sub.
#[tokio::test]
async fn groups_map_to_roles_and_roles_to_topics() {
    let s = Slapd::start();
    let b = broker(vec![ldap_plugin(
        search_then_bind(),
        grants(directory(s.url())),
    )])
    .await;
    let (mut bob, ack) = RawClient::handshake(b.addr, login(V5, "bob-1", "bob", "bob-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut bob, 1, "plant/1/valve").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        bob.subscribe_one(2, "plant/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        puback(&mut bob, 3, "users/bob/notes").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );

    let before = b.broker.metrics().subscriptions;
    let sub = crate::interop::mosquitto(
        "mosquitto_sub",
        &b,
        &[
            "-u",
            "bob",
            "-P",
            "bob-pw",
            "-q",
            "1",
            "-t",
            "plant/+/status",
            "-C",
            "1",
            "-W",
            "20",
        ],
    )
    .spawn()
    .expect("mosquitto_sub runs (is mosquitto-clients installed?)");
    crate::harness::eventually("mosquitto_sub has subscribed", || {
        b.broker.metrics().subscriptions > before
    })
    .await;
    let publish = crate::interop::mosquitto(
        "mosquitto_pub",
        &b,
        &[
            "-u",
            "alice",
            "-P",
            "alice-pw",
            "-q",
            "1",
            "-t",
            "plant/7/status",
            "-m",
            "open",
        ],
    )
    .output();
    let out = tokio::time::timeout(WAIT, publish).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = tokio::time::timeout(WAIT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "open");
    b.stop().await;
}

/// slapd killed: logins get 0x88 Server unavailable (3.1.1: 3), never an allow; restarted on
/// the same port: logins succeed again without touching the broker.
#[tokio::test]
async fn a_killed_directory_refuses_with_0x88_and_recovers_when_back() {
    let mut s = Slapd::start();
    let b = broker(vec![ldap_plugin(
        search_then_bind(),
        grants(directory(s.url())),
    )])
    .await;
    assert_eq!(
        connack(&b, V5, "alice", "alice-pw").await,
        ReasonCode::SUCCESS
    );
    s.kill();
    for version in [V5, V311] {
        assert_eq!(
            connack(&b, version, "alice", "alice-pw").await,
            expected(version, ReasonCode::SERVER_UNAVAILABLE, 3)
        );
    }
    s.restart();
    for version in [V5, V311] {
        assert_eq!(
            connack(&b, version, "alice", "alice-pw").await,
            ReasonCode::SUCCESS
        );
    }
    b.stop().await;
}

/// The stated revocation time: recheck_seconds (1) + cache_seconds (1). A member removed from
/// its group while connected is refused within it (checked with 1.5 s to spare for the busy
/// test machine), and a user removed from the directory cannot log in again at all.
#[tokio::test]
async fn a_removed_member_is_refused_within_recheck_plus_cache_seconds() {
    let s = Slapd::start();
    let b = broker(vec![ldap_plugin(
        search_then_bind(),
        grants(directory(s.url())),
    )])
    .await;
    let (mut alice, ack) =
        RawClient::handshake(b.addr, login(V5, "alice-1", "alice", "alice-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut alice, 1, "plant/1").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    s.modify(
        "dn: cn=operators,ou=groups,dc=example,dc=org\nchangetype: modify\n\
         delete: member\nmember: uid=alice,ou=people,dc=example,dc=org\n",
    );
    let removed = Instant::now();
    let limit = Duration::from_millis(2000 + 1500);
    let mut id = 2;
    loop {
        let code = puback(&mut alice, id, "plant/1").await;
        if code == ReasonCode::NOT_AUTHORIZED {
            break;
        }
        assert_eq!(code, ReasonCode::NO_MATCHING_SUBSCRIBERS);
        assert!(
            removed.elapsed() < limit,
            "still allowed {:?} after the removal",
            removed.elapsed()
        );
        id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Her own topics stay hers (the `user` role every directory user has).
    assert_eq!(
        puback(&mut alice, id + 1, "users/alice/x").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    s.modify("dn: uid=bob,ou=people,dc=example,dc=org\nchangetype: delete\n");
    assert_eq!(
        connack(&b, V5, "bob", "bob-pw").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    b.stop().await;
}

/// A chain for people and machines: static-acl knows the service accounts (and passes
/// everybody else on), the ldap plugin the people. Each decides only for its own clients
/// (`next` between them); with the directory down and `on_backend_error = "next"`, the service
/// accounts still work and the people are refused, not allowed.
#[tokio::test]
async fn static_acl_for_services_then_ldap_for_people() {
    let mut s = Slapd::start();
    let files = tempfile::tempdir().unwrap();
    let passwd = files.path().join("passwd");
    mosquitto_passwd(&passwd, "svc-meter", "meter-pw", true);
    let acl = files.path().join("acl");
    std::fs::write(&acl, "user svc-meter\ntopic write meters/#\n").unwrap();
    let Value::Object(static_config) = json!({
        "password_file": "passwd", "acl_file": "acl",
        "unknown_user": "next", "scope": "own",
    }) else {
        unreachable!()
    };
    let services = PluginConfig {
        name: "services".into(),
        bundled: Some("static-acl".into()),
        grants: crate::static_acl::grants(&[("passwd", passwd.as_path()), ("acl", acl.as_path())]),
        config: static_config,
        authorize_timeout_ms: 2000,
        ..PluginConfig::default()
    };
    let people = ldap_plugin(
        with(search_then_bind(), json!({"on_backend_error": "next"})),
        grants(directory(s.url())),
    );
    let b = broker(vec![services, people]).await;

    let (mut meter, ack) =
        RawClient::handshake(b.addr, login(V5, "m-1", "svc-meter", "meter-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (mut alice, ack) =
        RawClient::handshake(b.addr, login(V5, "a-1", "alice", "alice-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut meter, 1, "meters/7").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        puback(&mut meter, 2, "plant/1").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback(&mut alice, 1, "plant/1").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        puback(&mut alice, 2, "meters/7").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        connack(&b, V5, "svc-meter", "wrong").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );

    s.kill();
    assert_eq!(
        connack(&b, V5, "svc-meter", "meter-pw").await,
        ReasonCode::SUCCESS
    );
    let code = connack(&b, V5, "alice", "alice-pw").await;
    assert_ne!(code, ReasonCode::SUCCESS, "the directory is down");
    s.restart();
    assert_eq!(
        connack(&b, V5, "alice", "alice-pw").await,
        ReasonCode::SUCCESS
    );
    b.stop().await;
}
