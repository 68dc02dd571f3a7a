//! The operator's bans (`POST /clients/ID/ban`): durable state, kept in the store with
//! sessions and retained messages, so a ban outlives a restart until it is lifted; and a ban
//! reaches a client that was past the handshake's ban check but not yet connected.

use std::path::Path;

use moat::codec::{Packet, ProtocolVersion, ReasonCode};
use moat::config::StorageBackend;
use serde_json::json;

use crate::enhanced_auth::{METHOD, answer_as, expect_challenge};
use crate::harness::{RawClient, TestBroker, raw_connect_packet, test_config};
use crate::plugins::{start_chain, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A broker as the `moat` command runs it, with its database in `data`.
async fn open(data: &Path) -> TestBroker {
    let mut config = test_config();
    config.storage.backend = StorageBackend::Disk;
    config.storage.dir = Some(data.to_owned());
    let broker = moat::Broker::open(config).await.expect("broker starts");
    let addr = broker.local_addr();
    TestBroker { broker, addr }
}

#[tokio::test]
async fn a_ban_outlives_a_restart_until_it_is_lifted() {
    let data = tempfile::tempdir().unwrap();
    let b = open(data.path()).await;
    let mut c = RawClient::connected(b.addr, V5, "mallory", true).await;
    b.broker.control().unwrap().ban("mallory").await.unwrap();
    // 0x8A Banned is a CONNACK code only (MQTT-3.14.2-1): a connected client hears 0x98.
    c.expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION).await;
    b.stop().await;

    let b = open(data.path()).await;
    let control = b.broker.control().unwrap();
    assert_eq!(control.bans(), ["mallory"]);
    let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "mallory", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED, "still banned");
    assert!(control.unban("mallory").await.unwrap());
    b.stop().await;

    let b = open(data.path()).await;
    assert!(b.broker.control().unwrap().bans().is_empty());
    RawClient::connected(b.addr, V5, "mallory", true).await;
    b.stop().await;
}

/// A client holds its handshake open (enhanced authentication, past the ban check) while the
/// operator bans its id: once connected it is disconnected (0x98), and refused (0x8A) when it
/// comes back.
#[tokio::test]
async fn a_ban_during_the_handshake_disconnects_the_client_once_connected() {
    let b = start_chain(vec![test_policy(
        "auth",
        json!({"auth": {"method": METHOD, "users": {"alice": {"password": "unused"}}}}),
    )])
    .await;
    let mut connect = raw_connect_packet(V5, "mallory", true);
    connect.properties.authentication_method = Some(METHOD.into());
    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(connect.clone()))).await;
    expect_challenge(&mut c).await;

    b.broker.control().unwrap().ban("mallory").await.unwrap();
    match answer_as(&mut c, "alice").await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c.expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (_, ack) = RawClient::handshake(b.addr, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);
    b.stop().await;
}
