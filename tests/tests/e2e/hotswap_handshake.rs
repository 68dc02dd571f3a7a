//! A client whose CONNECT is being handled while the plugins change: the broker applies the
//! change to it as to every connected client, once its session is attached. The client holds
//! its handshake open deterministically with enhanced authentication (section 4.12): between
//! the broker's challenge and the client's answer, another plugin of the chain is replaced.
//! (Replacing the authenticating plugin itself, or changing the chain's layout, refuses the
//! exchange in progress instead: `policy::chain`.)

use std::time::Duration;

use moat::codec::{Connect, Packet, Properties, PropertyValues, ProtocolVersion, QoS, ReasonCode};
use serde_json::json;

use crate::enhanced_auth::{METHOD, answer_as, expect_challenge};
use crate::harness::{RawClient, TestBroker, raw_connect_packet, raw_publish};
use crate::hotswap::versioned;
use crate::plugins::{start_chain, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A CONNECT of the persistent session `midway` with enhanced authentication.
fn persistent() -> Connect {
    let mut c = raw_connect_packet(V5, "midway", false);
    c.properties = Properties::from(PropertyValues {
        session_expiry_interval: Some(300),
        authentication_method: Some(METHOD.into()),
        ..PropertyValues::default()
    });
    c
}

/// Sends [`persistent`] and waits for the plugin's challenge.
async fn challenged(b: &TestBroker) -> RawClient {
    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(persistent()))).await;
    expect_challenge(&mut c).await;
    c
}

/// Answers the challenge as alice; the CONNACK must accept, saying whether a session was
/// resumed.
async fn accepted(c: &mut RawClient) -> bool {
    match answer_as(c, "alice").await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
            ack.session_present
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// A persistent session subscribed to `v/0000000` (allowed by version 0000000 of `gate`
/// only) is resumed by a handshake during which `gate` was replaced by version 0000001: once
/// connected, its subscription is re-checked under the new generation and removed, and the
/// MQTT 5 client is told with DISCONNECT 0x87 (the default
/// `plugins.recheck_subscriptions = "disconnect"`).
#[tokio::test]
async fn a_session_resumed_during_a_change_has_its_subscriptions_rechecked() {
    let b = start_chain(vec![
        test_policy(
            "auth",
            json!({"auth": {"method": METHOD, "anonymous": "allow",
                            "users": {"alice": {"password": "unused"}}},
                   "publish": [{"filter": "#", "verdict": "allow"}]}),
        ),
        test_policy("gate", json!({"version_topic": "v"})),
    ])
    .await;

    // The session and its subscription, left while the client is away.
    let mut c = challenged(&b).await;
    accepted(&mut c).await;
    assert_eq!(
        c.subscribe_one(1, "v/0000000", QoS::AtMostOnce).await,
        [ReasonCode::SUCCESS]
    );
    drop(c);
    crate::harness::eventually("the first connection is gone", || {
        b.broker.metrics().clients_connected == 0
    })
    .await;

    // The client comes back and stops halfway through authenticating; meanwhile the
    // operator replaces `gate`.
    let mut c = challenged(&b).await;
    let control = b.broker.control().unwrap();
    control
        .replace("gate", Some(versioned("0000001")))
        .await
        .expect("the replacement serves");

    // The handshake ends; the resumed session's subscription is judged by the new version.
    assert!(accepted(&mut c).await, "the session was resumed");
    c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    crate::harness::eventually("the revoked subscription is gone", || {
        b.broker.metrics().subscriptions == 0
    })
    .await;

    // Nothing published there reaches the session any more.
    let mut again = challenged(&b).await;
    assert!(accepted(&mut again).await);
    let mut publisher = RawClient::connected(b.addr, V5, "publisher", true).await;
    publisher
        .send(&raw_publish("v/0000000", b"after", QoS::AtMostOnce, None))
        .await;
    again.expect_nothing(Duration::from_millis(300)).await;
    b.stop().await;
}
