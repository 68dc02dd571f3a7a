//! Every listener limit and broker quota, end to end: the reason code the client over the
//! limit gets, the metric that counts it (`$SYS/broker/limits/<name>`), and that the other
//! clients carry on. Clients from other addresses come from 127.0.0.2 and 127.0.0.3 (the
//! whole 127/8 is loopback).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat::codec::{Packet, ProtocolVersion, Publish, QoS, ReasonCode};
use moat::config::{ListenerConfig, Protocol};
use moat::metrics::Limit;
use tokio::net::TcpSocket;

use crate::harness::{self, RawClient, TestBroker, WAIT, raw_connect_packet, raw_publish};
use crate::tls::{Recorder, listener, start_full, start_with_listeners};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A raw client connected from source address `from` (e.g. "127.0.0.2").
async fn from(from: &str, to: SocketAddr, version: ProtocolVersion) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(to).await.unwrap();
    stream.set_nodelay(true).unwrap();
    RawClient::over(stream, version)
}

/// The CONNACK reason code a client with `id` gets from address `source`.
async fn connack_from(source: &str, to: SocketAddr, id: &str) -> (RawClient, ReasonCode) {
    let mut c = from(source, to, V5).await;
    let ack = c.connack(raw_connect_packet(V5, id, true)).await;
    (c, ack.reason_code)
}

/// `a` and `b` still exchange a message.
async fn still_talk(a: &mut RawClient, b: &mut RawClient, topic: &str) {
    a.subscribe_one(90, topic, QoS::AtMostOnce).await;
    b.send(&raw_publish(topic, b"still here", QoS::AtMostOnce, None))
        .await;
    match a.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"still here"),
        other => panic!("connected clients were disturbed: {other:?}"),
    }
}

fn limited(b: &TestBroker, limit: Limit) -> u64 {
    b.broker.metrics().limited(limit)
}

/// `limits.max_connections`: the third client hears 0x89 Server busy (3.1.1: return code 3),
/// the two connected ones carry on, and a place that frees up can be taken again.
#[tokio::test]
async fn max_connections_answers_server_busy_and_spares_connected_clients() {
    let b = harness::start_with(|c| c.limits.max_connections = Some(2)).await;
    let (mut one, r1) = connack_from("127.0.0.1", b.addr, "one").await;
    let (mut two, r2) = connack_from("127.0.0.2", b.addr, "two").await;
    assert_eq!((r1, r2), (ReasonCode::SUCCESS, ReasonCode::SUCCESS));
    let (_, r3) = connack_from("127.0.0.3", b.addr, "three").await;
    assert_eq!(r3, ReasonCode::SERVER_BUSY);
    let (mut old, ack) = RawClient::handshake(
        b.addr,
        raw_connect_packet(ProtocolVersion::V311, "old", true),
    )
    .await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SERVER_UNAVAILABLE,
        "3.1.1 code 3"
    );
    assert!(old.closed().await.is_empty());
    assert_eq!(limited(&b, Limit::Connections), 2);
    still_talk(&mut one, &mut two, "busy/t").await;

    drop(one);
    harness::eventually("a place is free again", || {
        b.broker.shared().admission.open() < 2
    })
    .await;
    let (_, r) = connack_from("127.0.0.3", b.addr, "three").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    b.stop().await;
}

/// A listener's `max_connections` holds for that listener only.
#[tokio::test]
async fn a_listener_limit_leaves_other_listeners_open() {
    let small = ListenerConfig {
        name: "small".into(),
        max_connections: Some(1),
        ..listener(Protocol::Tcp, None)
    };
    let b = start_with_listeners(vec![small, listener(Protocol::Tcp, None)]).await;
    let other = b.broker.listeners()[1].1;
    let (mut first, r) = connack_from("127.0.0.1", b.addr, "first").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    let (_, r) = connack_from("127.0.0.1", b.addr, "second").await;
    assert_eq!(r, ReasonCode::SERVER_BUSY);
    assert_eq!(limited(&b, Limit::ListenerConnections), 1);
    let (mut elsewhere, r) = connack_from("127.0.0.1", other, "elsewhere").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    still_talk(&mut first, &mut elsewhere, "listener/t").await;
    b.stop().await;
}

/// `limits.max_connections_per_ip`: a second connection from one address hears 0x97 Quota
/// exceeded; another address is not affected.
#[tokio::test]
async fn max_connections_per_ip_answers_quota_exceeded() {
    let b = harness::start_with(|c| c.limits.max_connections_per_ip = Some(1)).await;
    let (mut a, r) = connack_from("127.0.0.2", b.addr, "a").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    let (_, r) = connack_from("127.0.0.2", b.addr, "a2").await;
    assert_eq!(r, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(limited(&b, Limit::IpConnections), 1);
    let (mut c, r) = connack_from("127.0.0.3", b.addr, "c").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    still_talk(&mut a, &mut c, "per-ip/t").await;
    b.stop().await;
}

/// `limits.connection_rate_per_ip`: beyond the burst, a new connection from the same
/// address hears 0x9F Connection rate exceeded; another address is not affected.
#[tokio::test]
async fn connection_rate_per_ip_answers_rate_exceeded() {
    let b = harness::start_with(|c| c.limits.connection_rate_per_ip = Some(2)).await;
    for id in ["r1", "r2"] {
        let (_, r) = connack_from("127.0.0.2", b.addr, id).await;
        assert_eq!(r, ReasonCode::SUCCESS);
    }
    let (_, r) = connack_from("127.0.0.2", b.addr, "r3").await;
    assert_eq!(r, ReasonCode::CONNECTION_RATE_EXCEEDED);
    assert_eq!(limited(&b, Limit::IpConnectionRate), 1);
    let (_, r) = connack_from("127.0.0.3", b.addr, "other").await;
    assert_eq!(r, ReasonCode::SUCCESS);
    b.stop().await;
}

/// A listener's own `connect_timeout` closes a silent connection (slowloris) and counts it;
/// a client that sends CONNECT in time on the same listener is served.
#[tokio::test]
async fn a_listener_connect_timeout_closes_silent_connections() {
    let l = ListenerConfig {
        connect_timeout: Some(Duration::from_secs(1)),
        ..listener(Protocol::Tcp, None)
    };
    let b = start_with_listeners(vec![l]).await;
    let mut silent = RawClient::connect(b.addr, V5).await;
    let mut good = RawClient::connected(b.addr, V5, "good", true).await;
    let started = Instant::now();
    assert!(silent.closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(limited(&b, Limit::ConnectTimeout), 1);
    good.send(&Packet::PingReq).await;
    assert_eq!(good.recv().await, Some(Packet::PingResp));
    b.stop().await;
}

/// `limits.max_packet_size`: a larger PUBLISH closes its connection with DISCONNECT 0x95
/// (MQTT-3.2.2-15 family: the server's Maximum Packet Size); others are unaffected.
#[tokio::test]
async fn an_oversized_packet_gets_packet_too_large() {
    let b = harness::start_with(|c| c.limits.max_packet_size = 1024).await;
    let mut big = RawClient::connected(b.addr, V5, "big", true).await;
    let mut sub = RawClient::connected(b.addr, V5, "sub", true).await;
    let mut other = RawClient::connected(b.addr, V5, "other", true).await;
    big.send(&raw_publish("t", &[0u8; 2000], QoS::AtMostOnce, None))
        .await;
    let seen = big.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::PACKET_TOO_LARGE),
        "{seen:?}"
    );
    assert_eq!(limited(&b, Limit::PacketTooLarge), 1);
    still_talk(&mut sub, &mut other, "size/t").await;
    b.stop().await;
}

/// `limits.max_subscriptions_per_client`: the filter beyond it gets 0x97 in the SUBACK and is
/// counted; the session keeps its other subscriptions.
#[tokio::test]
async fn subscriptions_beyond_the_cap_get_quota_exceeded() {
    let b = harness::start_with(|c| c.limits.max_subscriptions_per_client = 1).await;
    let mut c = RawClient::connected(b.addr, V5, "subs", true).await;
    assert_eq!(
        c.subscribe_one(1, "a", QoS::AtMostOnce).await,
        [ReasonCode::GRANTED_QOS_0]
    );
    assert_eq!(
        c.subscribe_one(2, "b", QoS::AtMostOnce).await,
        [ReasonCode::QUOTA_EXCEEDED]
    );
    assert_eq!(limited(&b, Limit::Subscriptions), 1);
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    p.send(&raw_publish("a", b"x", QoS::AtMostOnce, None)).await;
    assert!(matches!(c.recv().await, Some(Packet::Publish(_))));
    b.stop().await;
}

/// `limits.max_topic_levels` and `max_topic_length`: a PUBLISH to a deeper or longer topic
/// closes with 0x90 Topic Name invalid, a SUBSCRIBE to such a filter gets 0x8F; counted.
#[tokio::test]
async fn topics_beyond_the_level_and_length_limits_are_refused() {
    let b = harness::start_with(|c| {
        c.limits.max_topic_levels = 3;
        c.limits.max_topic_length = 20;
    })
    .await;
    let mut c = RawClient::connected(b.addr, V5, "topics", true).await;
    assert_eq!(
        c.subscribe_one(1, "a/b/c/d", QoS::AtMostOnce).await,
        [ReasonCode::TOPIC_FILTER_INVALID]
    );
    assert_eq!(
        c.subscribe_one(2, "a/bbbbbbbbbbbbbbbbbbbbbbbbb", QoS::AtMostOnce)
            .await,
        [ReasonCode::TOPIC_FILTER_INVALID]
    );
    assert_eq!(
        c.subscribe_one(3, "a/+/c", QoS::AtMostOnce).await,
        [ReasonCode::GRANTED_QOS_0]
    );
    let mut deep = RawClient::connected(b.addr, V5, "deep", true).await;
    deep.send(&raw_publish("a/b/c/d", b"x", QoS::AtMostOnce, None))
        .await;
    let seen = deep.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::TOPIC_NAME_INVALID),
        "{seen:?}"
    );
    assert_eq!(limited(&b, Limit::TopicLimits), 3);
    let mut ok = RawClient::connected(b.addr, V5, "ok", true).await;
    ok.send(&raw_publish("a/b/c", b"fine", QoS::AtMostOnce, None))
        .await;
    assert!(matches!(c.recv().await, Some(Packet::Publish(_))));
    b.stop().await;
}

/// Receives `n` PUBLISH payloads.
async fn payloads(c: &mut RawClient, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(WAIT * 2, c.recv()).await.unwrap() {
            Some(Packet::Publish(p)) => got.push(p.payload.to_vec()),
            Some(_) => {}
            None => panic!("closed after {} messages", got.len()),
        }
    }
    got
}

/// `limits.publish_rate_per_client`: a client publishing faster is slowed to the rate (the
/// burst passes at once, the rest at 5 a second), nothing is lost, and a second publisher
/// meanwhile is not held up.
#[tokio::test]
async fn publish_rate_slows_a_fast_publisher_without_losing_or_delaying_others() {
    let b = harness::start_with(|c| c.limits.publish_rate_per_client = Some(5)).await;
    let mut sub = RawClient::connected(b.addr, V5, "sub", true).await;
    sub.subscribe_one(1, "rate/#", QoS::AtMostOnce).await;
    let mut fast = RawClient::connected(b.addr, V5, "fast", true).await;
    let mut calm = RawClient::connected(b.addr, V5, "calm", true).await;
    let started = Instant::now();
    for i in 0..15u8 {
        fast.send(&raw_publish("rate/fast", &[i], QoS::AtMostOnce, None))
            .await;
    }
    // The burst of 5 arrives; then the calm client's message overtakes the throttled rest.
    let first = payloads(&mut sub, 5).await;
    calm.send(&raw_publish("rate/calm", b"calm", QoS::AtMostOnce, None))
        .await;
    let rest = payloads(&mut sub, 11).await;
    let calm_at = rest
        .iter()
        .position(|p| p == b"calm")
        .expect("calm delivered");
    assert!(
        calm_at < 10,
        "the calm publisher waited behind the fast one: {calm_at}"
    );
    let fast_all: Vec<u8> = first
        .iter()
        .chain(&rest)
        .filter(|p| p.len() == 1)
        .map(|p| p[0])
        .collect();
    assert_eq!(
        fast_all,
        (0..15).collect::<Vec<u8>>(),
        "nothing lost, in order"
    );
    // 10 messages beyond the burst at 5 a second: about 2 s (lower bound only).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(limited(&b, Limit::PublishRate) >= 9);
    b.stop().await;
}

/// `limits.publish_bytes_per_client`: payload bytes per second, a packet larger than the
/// rate still gets through (after its wait).
#[tokio::test]
async fn publish_bytes_rate_slows_large_payloads() {
    let b = harness::start_with(|c| c.limits.publish_bytes_per_client = Some(1000)).await;
    let mut sub = RawClient::connected(b.addr, V5, "sub", true).await;
    sub.subscribe_one(1, "bytes", QoS::AtMostOnce).await;
    let mut p = RawClient::connected(b.addr, V5, "p", true).await;
    let started = Instant::now();
    for _ in 0..3 {
        p.send(&raw_publish("bytes", &[7u8; 800], QoS::AtMostOnce, None))
            .await;
    }
    p.send(&raw_publish("bytes", &[8u8; 1500], QoS::AtMostOnce, None))
        .await;
    let got = payloads(&mut sub, 4).await;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        [800, 800, 800, 1500]
    );
    // 3900 bytes against a burst of 1000 at 1000/s: about 2.9 s.
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
    assert!(limited(&b, Limit::PublishRate) >= 3);
    b.stop().await;
}

fn retained(topic: &str, payload: &[u8], packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic.into(),
        packet_id: Some(packet_id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// The reason code of the PUBACK for a retained QoS 1 PUBLISH.
async fn retain(c: &mut RawClient, topic: &str, payload: &[u8], id: u16) -> ReasonCode {
    c.send(&retained(topic, payload, id)).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Retained quotas: the total count, and count and bytes per publishing client. Over a
/// quota the PUBACK says 0x97 and the message is neither retained nor routed; replacing,
/// clearing, and other clients' messages within their own quota go on.
#[tokio::test]
async fn retained_quotas_refuse_new_retained_messages_with_quota_exceeded() {
    let b = harness::start_with(|c| {
        c.limits.max_retained_messages = Some(3);
        c.limits.max_retained_messages_per_client = Some(2);
        c.limits.max_retained_bytes_per_client = Some(100);
    })
    .await;
    let ok = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    let quota = ReasonCode::QUOTA_EXCEEDED;
    let mut a = RawClient::connected(b.addr, V5, "a", true).await;
    assert_eq!(retain(&mut a, "r/1", b"x", 1).await, ok);
    assert_eq!(retain(&mut a, "r/2", &[0; 60], 2).await, ok);
    assert_eq!(
        retain(&mut a, "r/3", b"x", 3).await,
        quota,
        "per-client count"
    );
    assert_eq!(
        retain(&mut a, "r/2", &[0; 99], 4).await,
        ok,
        "replacing is fine"
    );
    assert_eq!(
        retain(&mut a, "r/2", &[0; 101], 5).await,
        quota,
        "per-client bytes"
    );
    let mut b2 = RawClient::connected(b.addr, V5, "b", true).await;
    assert_eq!(retain(&mut b2, "r/3", b"y", 1).await, ok, "another client");
    assert_eq!(retain(&mut b2, "r/4", b"y", 2).await, quota, "total count");
    assert_eq!(retain(&mut a, "r/1", b"", 6).await, ok, "clearing is fine");
    assert_eq!(retain(&mut b2, "r/4", b"y", 3).await, ok, "room again");
    assert_eq!(limited(&b, Limit::Retained), 3);
    // What a new subscriber finds: exactly the accepted messages.
    let mut s = RawClient::connected(b.addr, V5, "s", true).await;
    s.subscribe_one(1, "r/#", QoS::AtMostOnce).await;
    let mut got: Vec<_> = payloads(&mut s, 3).await.iter().map(Vec::len).collect();
    got.sort();
    assert_eq!(got, [1, 1, 99]);
    assert!(s.recv_within(Duration::from_millis(200)).await.is_none());
    b.stop().await;
}

/// `limits.max_persistent_sessions`: a CONNECT that would keep one more session gets CONNACK
/// 0x97; clean sessions and the existing persistent one still connect, and ending the
/// persistent session frees its place.
#[tokio::test]
async fn persistent_sessions_beyond_the_cap_get_quota_exceeded() {
    let b = harness::start_with(|c| c.limits.max_persistent_sessions = Some(1)).await;
    let persistent = |id: &str| {
        let mut c = raw_connect_packet(V5, id, false);
        c.properties.session_expiry_interval = Some(600);
        c
    };
    let (first, ack) = RawClient::handshake(b.addr, persistent("keeper")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    drop(first);
    let (_, ack) = RawClient::handshake(b.addr, persistent("second")).await;
    assert_eq!(ack.reason_code, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(limited(&b, Limit::PersistentSessions), 1);
    let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "clean", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let (_, ack) = RawClient::handshake(b.addr, persistent("keeper")).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "its own session resumes"
    );
    // Clean start with expiry 0 ends the kept session; its place is free again.
    let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "keeper", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    harness::eventually("the kept session ended", || {
        b.broker.shared().quotas.persistent_sessions() == 0
    })
    .await;
    let (_, ack) = RawClient::handshake(b.addr, persistent("second")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    b.stop().await;
}

/// Failed authentication from one address is answered later each time (0.1 s, 0.2 s, 0.4 s,
/// ...), counted; a good client from the same address meanwhile connects at once.
#[tokio::test]
async fn failed_authentication_is_slowed_down_per_address() {
    let policy = Arc::new(Recorder::default());
    let b = start_full(vec![listener(Protocol::Tcp, None)], policy, |_| {}).await;
    let mallory = |id: &str| {
        let mut c = raw_connect_packet(V5, id, true);
        c.username = Some("mallory".into());
        c
    };
    let started = Instant::now();
    for i in 0..3 {
        let (_, ack) = RawClient::handshake(b.addr, mallory(&format!("m{i}"))).await;
        assert_eq!(ack.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
    }
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(limited(&b, Limit::AuthFailureDelay), 3);

    // The fourth refusal waits 0.8 s; a good client from the same address is not held up.
    let mut m = RawClient::connect(b.addr, V5).await;
    m.send(&Packet::Connect(Box::new(mallory("m3")))).await;
    let (_, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "alice", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(
        m.recv_within(Duration::from_millis(50)).await.is_none(),
        "mallory's refusal came before alice's welcome"
    );
    match m.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.reason_code, ReasonCode::BAD_USER_NAME_OR_PASSWORD)
        }
        other => panic!("{other:?}"),
    }
    b.stop().await;
}
