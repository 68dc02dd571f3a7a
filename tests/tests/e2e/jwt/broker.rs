//! The jwt plugin behind a real broker, with real clients, its key set served by a JWKS server
//! on a loopback port and fetched through the `http` capability.

use std::time::Duration;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::{Grants, HttpGrant, KvGrant, OnFailure, PluginConfig};
use serde_json::{Value, json};

use super::support::{JwksServer, Signer, claims, jwk, sign};
use crate::harness::{RawClient, Rumqtt4, Rumqtt5, TestBroker, raw_publish, start_with};
use crate::plugins::{expected, login};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// The bundled jwt plugin named `name` with `config`, granted `kv` and `http` to `server`.
fn jwt_plugin(name: &str, server: Option<&JwksServer>, config: Value) -> PluginConfig {
    let Value::Object(config) = config else {
        panic!("a plugin config is a JSON object");
    };
    PluginConfig {
        name: name.into(),
        bundled: Some("jwt".into()),
        grants: Grants {
            kv: Some(KvGrant::default()),
            http: server.map(|s| HttpGrant {
                allow: vec![s.origin()],
                ..HttpGrant::default()
            }),
            ..Grants::default()
        },
        config,
        ..PluginConfig::default()
    }
}

async fn broker(plugins: Vec<PluginConfig>) -> TestBroker {
    start_with(|c| c.plugin_chain = plugins).await
}

/// A JWKS server with `rsa1` as `k1`, and a broker whose jwt plugin fetches it, with `extra`
/// settings.
async fn serving(extra: Value) -> (JwksServer, TestBroker) {
    let jwks = JwksServer::start(vec![jwk("rsa1", "k1", Some("RS256"))]).await;
    let mut config = json!({"jwks_url": jwks.url()});
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
    let b = broker(vec![jwt_plugin("jwt", Some(&jwks), config)]).await;
    (jwks, b)
}

/// The reason code of the PUBACK to a QoS 1 PUBLISH on `topic`.
async fn puback(c: &mut RawClient, topic: &str, packet_id: u16) -> ReasonCode {
    c.send(&raw_publish(
        topic,
        b"21",
        QoS::AtLeastOnce,
        Some(packet_id),
    ))
    .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// An RS256 token for `sub` signed with the fixture key `key` under the key id `kid`, allowed
/// to publish under `sensors/<client id>/` and subscribe under `commands/<client id>/`.
fn rs256(kid: &str, key: &str, sub: &str, exp_in: i64) -> String {
    sign(
        "RS256",
        Signer::Private(key),
        Some(kid),
        &claims(sub, exp_in, &["sensors/%c/#"], &["commands/%c/#"]),
    )
}

#[tokio::test]
async fn a_client_with_a_valid_rs256_token_publishes_only_where_its_claims_allow() {
    let (jwks, b) = serving(json!({})).await;
    let token = rs256("k1", "rsa1", "device-7", 600);

    // rumqttc, MQTT 5 and 3.1.1: the token as the password.
    let t = token.clone();
    let (v5, _) = Rumqtt5::connect(b.addr, "dev-7", move |o| {
        o.set_credentials("device-7", t);
    })
    .await;
    let t = token.clone();
    let v4 = Rumqtt4::connect(b.addr, "dev-8", move |o| {
        o.set_credentials("device-8", t);
    })
    .await;
    drop((v5, v4));

    // Byte-exact reason codes: allowed under sensors/<client id>/, 0x87 elsewhere.
    let mut c = crate::plugins::logged_in(&b, V5, "dev-7", "device-7", &token).await;
    // Allowed: accepted, with nobody subscribed (0x10 No matching subscribers).
    assert_eq!(
        puback(&mut c, "sensors/dev-7/temp", 1).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        puback(&mut c, "sensors/dev-8/temp", 2).await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        c.subscribe_one(3, "commands/dev-7/#", QoS::AtLeastOnce)
            .await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        c.subscribe_one(4, "commands/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(jwks.requests(), 1, "one fetch served every connection");
    b.stop().await;
}

#[tokio::test]
async fn a_bad_token_is_refused_with_bad_user_name_or_password() {
    let (_jwks, b) = serving(json!({})).await;
    let expired = rs256("k1", "rsa1", "device-7", -3600);
    let foreign = rs256("k1", "rsa2", "device-7", 600);
    for version in [V5, V311] {
        for token in [&expired, &foreign] {
            crate::plugins::login_refused(&b, version, "dev-7", "device-7", token).await;
        }
    }
    b.stop().await;
}

/// The identity expires with the token: the broker ends the session with DISCONNECT 0xA0
/// (Maximum connect time) when it does.
#[tokio::test]
async fn a_token_that_expires_during_the_session_ends_it_with_0xa0() {
    let (_jwks, b) = serving(json!({"leeway_seconds": 0})).await;
    let token = rs256("k1", "rsa1", "device-7", 2);
    let mut c = crate::plugins::logged_in(&b, V5, "dev-7", "device-7", &token).await;
    c.expect_disconnect(ReasonCode::MAXIMUM_CONNECT_TIME).await;
    b.stop().await;
}

/// The identity provider rotates its key: a token signed with the new key (a new `kid`) makes
/// the plugin fetch the key set again and is accepted.
#[tokio::test]
async fn a_rotated_key_is_picked_up_from_the_key_set() {
    let (jwks, b) = serving(json!({"jwks_min_refresh_seconds": 1})).await;
    crate::plugins::logged_in(&b, V5, "a", "a", &rs256("k1", "rsa1", "a", 600)).await;
    jwks.set_keys(vec![
        jwk("rsa1", "k1", Some("RS256")),
        jwk("rsa2", "k2", Some("RS256")),
    ]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    crate::plugins::logged_in(&b, V5, "b", "b", &rs256("k2", "rsa2", "b", 600)).await;
    crate::plugins::logged_in(&b, V5, "c", "c", &rs256("k1", "rsa1", "c", 600)).await;
    assert_eq!(jwks.requests(), 2);
    b.stop().await;
}

/// The key set's server is down: the plugin denies (0x88 Server unavailable, with the reason)
/// or, configured so, passes to the next plugin (here none, so the chain denies with 0x87);
/// never allows. When the server is back the plugin recovers on its own.
#[tokio::test]
async fn a_key_set_server_that_is_down_denies_or_passes_and_recovery_follows() {
    let jwks = JwksServer::start(vec![jwk("rsa1", "k1", Some("RS256"))]).await;
    jwks.stop().await;
    let config = |fallback: &str| {
        json!({"jwks_url": jwks.url(), "jwks_min_refresh_seconds": 1,
               "on_jwks_unavailable": fallback})
    };
    let token = rs256("k1", "rsa1", "a", 600);
    for (fallback, v5, v311) in [
        ("deny", ReasonCode::SERVER_UNAVAILABLE, 3),
        ("next", ReasonCode::NOT_AUTHORIZED, 5),
    ] {
        let b = broker(vec![jwt_plugin("jwt", Some(&jwks), config(fallback))]).await;
        for version in [V5, V311] {
            let (_, ack) = RawClient::handshake(b.addr, login(version, "a", "a", &token)).await;
            assert_eq!(
                ack.reason_code,
                expected(version, v5, v311),
                "{fallback} {version:?}"
            );
            if version == V5 && fallback == "deny" {
                let why = ack.properties.reason_string.clone().unwrap_or_default();
                assert!(why.contains("cannot fetch the key set"), "{why:?}");
            }
        }
        b.stop().await;
    }

    let b = broker(vec![jwt_plugin("jwt", Some(&jwks), config("deny"))]).await;
    let (_, ack) = RawClient::handshake(b.addr, login(V5, "a", "a", &token)).await;
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    jwks.resume().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    crate::plugins::logged_in(&b, V5, "a", "a", &token).await;
    b.stop().await;
}

/// Without an `http` grant the plugin cannot reach its key set: it denies with the reason, and
/// the broker logs the refused capability.
#[tokio::test]
async fn without_the_http_grant_the_key_set_is_unavailable() {
    let jwks = JwksServer::start(vec![jwk("rsa1", "k1", Some("RS256"))]).await;
    let mut plugin = jwt_plugin("jwt", None, json!({"jwks_url": jwks.url()}));
    plugin.on_failure = OnFailure::Deny;
    let b = broker(vec![plugin]).await;
    let (_, ack) =
        RawClient::handshake(b.addr, login(V5, "a", "a", &rs256("k1", "rsa1", "a", 600))).await;
    assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE);
    let why = ack.properties.reason_string.clone().unwrap_or_default();
    assert!(why.contains("plugin.grants.http"), "{why:?}");
    assert_eq!(jwks.requests(), 0);
    b.stop().await;
}
