//! MQTT 5 enhanced authentication (section 4.12) driven by a plugin: the AUTH exchange at
//! CONNECT, re-authentication on a live connection (section 4.12.1), and the protocol errors
//! around them. `test-policy` answers the method `TEST-CHALLENGE` with the challenge
//! "challenge" and accepts "response:<user>" for a user it knows.

use moat::codec::{
    Auth, Connect, Packet, Properties, PropertyValues, ProtocolVersion, QoS, ReasonCode,
};
use serde_json::json;

use crate::harness::{RawClient, TestBroker, raw_connect_packet, raw_publish};
use crate::plugins::{start_chain, test_policy};

pub(crate) const METHOD: &str = "TEST-CHALLENGE";

async fn broker() -> TestBroker {
    start_chain(vec![test_policy(
        "challenger",
        json!({"auth": {"method": METHOD, "anonymous": "allow",
                        "users": {"alice": {"password": "unused"}, "bob": {"password": "unused"}}},
               "publish": [{"filter": "#", "verdict": "allow"}]}),
    )])
    .await
}

fn auth(reason: ReasonCode, method: &str, data: &[u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code: reason,
        properties: Properties::from(PropertyValues {
            authentication_method: Some(method.into()),
            authentication_data: Some(bytes::Bytes::copy_from_slice(data)),
            ..PropertyValues::default()
        }),
    })
}

fn enhanced_connect(id: &str) -> Connect {
    let mut c = raw_connect_packet(ProtocolVersion::V5, id, true);
    c.properties.authentication_method = Some(METHOD.into());
    c
}

/// The next packet, which must be AUTH 0x18 with the method and the plugin's challenge.
pub(crate) async fn expect_challenge(c: &mut RawClient) {
    match c.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            assert_eq!(
                a.properties.authentication_data.as_deref(),
                Some(&b"challenge"[..])
            );
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
}

/// Answers the plugin's challenge as `user`; the broker's next packet.
pub(crate) async fn answer_as(c: &mut RawClient, user: &str) -> Option<Packet> {
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        format!("response:{user}").as_bytes(),
    ))
    .await;
    c.recv().await
}

async fn connected(b: &TestBroker, id: &str, user: &str) -> RawClient {
    let mut c = RawClient::connect(b.addr, ProtocolVersion::V5).await;
    c.send(&Packet::Connect(Box::new(enhanced_connect(id))))
        .await;
    expect_challenge(&mut c).await;
    match answer_as(&mut c, user).await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
            // The CONNACK that ends enhanced authentication carries its method.
            assert_eq!(
                ack.properties.authentication_method.as_deref(),
                Some(METHOD)
            );
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

/// The exchange at CONNECT: challenge, answer, CONNACK; a wrong answer is refused with the
/// plugin's reason (0x87); an AUTH with another method is a protocol error (MQTT-4.12.0-5:
/// 0x82); a method no plugin takes on is refused with 0x8C.
#[tokio::test]
async fn the_auth_exchange_at_connect_succeeds_or_fails_with_the_right_code() {
    let b = broker().await;
    let mut c = connected(&b, "ok", "alice").await;
    c.send(&raw_publish("t", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(_))));

    for (method, answer, want) in [
        (METHOD, &b"response:mallory"[..], ReasonCode::NOT_AUTHORIZED),
        ("OTHER", &b"response:alice"[..], ReasonCode::PROTOCOL_ERROR),
    ] {
        let mut c = RawClient::connect(b.addr, ProtocolVersion::V5).await;
        c.send(&Packet::Connect(Box::new(enhanced_connect("x"))))
            .await;
        expect_challenge(&mut c).await;
        c.send(&auth(ReasonCode::CONTINUE_AUTHENTICATION, method, answer))
            .await;
        match c.recv().await {
            Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, want, "{method}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        assert!(c.closed().await.is_empty());
    }

    let mut unknown = raw_connect_packet(ProtocolVersion::V5, "u", true);
    unknown.properties.authentication_method = Some("SCRAM-SHA-999".into());
    let (_, ack) = RawClient::handshake(b.addr, unknown).await;
    assert_eq!(ack.reason_code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    b.stop().await;
}

/// Re-authentication (section 4.12.1): AUTH 0x19 starts it, the plugin challenges, the client
/// answers, AUTH 0x00 ends it, and the connection served on throughout. Answering as another
/// principal, or wrongly, ends the connection with DISCONNECT (MQTT-4.12.1-2).
#[tokio::test]
async fn reauthentication_renews_or_ends_the_connection() {
    let b = broker().await;
    let mut c = connected(&b, "re", "alice").await;
    c.send(&auth(ReasonCode::REAUTHENTICATE, METHOD, b"")).await;
    expect_challenge(&mut c).await;
    c.send(&raw_publish("during", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    assert!(
        matches!(c.recv().await, Some(Packet::PubAck(_))),
        "served during re-authentication"
    );
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        b"response:alice",
    ))
    .await;
    match c.recv().await {
        Some(Packet::Auth(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }

    // Another principal: refused.
    c.send(&auth(ReasonCode::REAUTHENTICATE, METHOD, b"")).await;
    expect_challenge(&mut c).await;
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        b"response:bob",
    ))
    .await;
    c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;

    // A wrong answer: refused.
    let mut c = connected(&b, "re2", "alice").await;
    c.send(&auth(ReasonCode::REAUTHENTICATE, METHOD, b"")).await;
    expect_challenge(&mut c).await;
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        b"nonsense",
    ))
    .await;
    c.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    b.stop().await;
}

/// AUTH from a client that did not use enhanced authentication at CONNECT, or with another
/// method, or continuing nothing, is a protocol error (0x82).
#[tokio::test]
async fn auth_outside_an_exchange_is_a_protocol_error() {
    let b = broker().await;
    let mut plain = RawClient::connected(b.addr, ProtocolVersion::V5, "plain", true).await;
    plain
        .send(&auth(ReasonCode::REAUTHENTICATE, METHOD, b""))
        .await;
    plain.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;

    let mut c = connected(&b, "m", "alice").await;
    c.send(&auth(ReasonCode::REAUTHENTICATE, "OTHER", b""))
        .await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;

    let mut c = connected(&b, "n", "alice").await;
    c.send(&auth(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        b"response:alice",
    ))
    .await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
    b.stop().await;
}
