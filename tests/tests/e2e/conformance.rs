//! Conformance checks that cut across the area modules: packet identifiers and the QoS state
//! machines seen packet by packet, SUBACK and UNSUBACK byte by byte, CONNACK ordering and
//! reason codes, session state, DISCONNECT sent by the broker, UNSUBSCRIBE semantics, shared
//! subscriptions when a member fails, flow control, ordering, and two rules that need a store
//! or policy of the test's own (payload field order, transient errors).
//!
//! Every test cites the normative statements it checks; docs/conformance.md maps them back.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use moat::codec::ProtocolVersion::{self, V5, V311};
use moat::codec::{
    self, Connect, Disconnect, Packet, Properties, PropertyValues, PubResponse, Publish, QoS,
    ReasonCode, RetainHandling, Subscribe, Unsubscribe, Will,
};
use moat::pending::Pending;
use moat::policy::{
    AllowAll, AuthOutcome, ClientInfo, Credentials, Identity, Policy, PublishKind,
    SubscribeVerdict, Verdict,
};
use moat::store::{Change, MemoryStore, Snapshot, Store, StoreError};
use moat::{Broker, Config};

use crate::harness::flows::{Peer, QUIET, opts, opts_rh, publish_packet, text};
use crate::harness::{self, RawClient, TestBroker, raw_connect_packet, raw_publish};

// --- Helpers -----------------------------------------------------------------------------------

/// A CONNECT asking for a session that outlives the connection: clean session 0 in 3.1.1, clean
/// start 0 and a Session Expiry Interval of 60 s in 5.0.
fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut c = raw_connect_packet(version, client_id, false);
    if version == V5 {
        c.properties.session_expiry_interval = Some(60);
    }
    c
}

/// A PUBLISH for the raw client with the DUP flag as given.
fn publish_dup(topic: &str, payload: &[u8], qos: QoS, id: Option<u16>, dup: bool) -> Packet {
    let mut p = raw_publish(topic, payload, qos, id);
    if let Packet::Publish(p) = &mut p {
        p.dup = dup;
    }
    p
}

/// A SUBSCRIBE for the raw client.
fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: filters.iter().map(|&(f, q)| (f.into(), opts(q))).collect(),
        properties: Properties::default(),
    })
}

/// An UNSUBSCRIBE for the raw client.
fn unsubscribe_packet(packet_id: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        packet_id,
        filters: filters.iter().map(|&f| f.into()).collect(),
        properties: Properties::default(),
    })
}

/// Packets encoded back to back, as one write.
fn pipelined(version: ProtocolVersion, packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        codec::encode(p, version, &mut out);
    }
    out.to_vec()
}

/// Publishes at QoS 1 from a raw client and returns the PUBACK.
async fn publish_qos1(c: &mut RawClient, id: u16, topic: &str, payload: &[u8]) -> PubResponse {
    c.send(&raw_publish(topic, payload, QoS::AtLeastOnce, Some(id)))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) if a.packet_id == id => a,
        other => panic!("expected PUBACK {id}, got {other:?}"),
    }
}

/// Completes the receiving side of a delivery to a raw client: PUBACK for QoS 1; PUBREC,
/// (PUBREL), PUBCOMP for QoS 2.
async fn complete(c: &mut RawClient, p: &Publish) {
    let Some(id) = p.packet_id else { return };
    match p.qos {
        QoS::AtLeastOnce => c.send(&Packet::PubAck(PubResponse::success(id))).await,
        QoS::ExactlyOnce => {
            c.send(&Packet::PubRec(PubResponse::success(id))).await;
            assert_eq!(
                c.recv().await,
                Some(Packet::PubRel(PubResponse::success(id)))
            );
            c.send(&Packet::PubComp(PubResponse::success(id))).await;
        }
        QoS::AtMostOnce => {}
    }
}

/// A broker like [`harness::start`] but with a store and policy of the test's own.
async fn start_custom(store: Arc<dyn Store>, policy: Arc<dyn Policy>) -> TestBroker {
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    let broker = Broker::start_with(config, store, policy)
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    TestBroker { broker, addr }
}

// --- Strings ----------------------------------------------------------------------------------

/// MQTT-1.5.4-3 (3.1.1 MQTT-1.5.3-3): the bytes EF BB BF are the character U+FEFF, which a
/// receiver keeps: a topic that starts with it is not the topic without it, it reaches its
/// subscriber with the three bytes intact, and (5.0) a user property keeps it in name and value.
#[tokio::test]
async fn byte_order_mark_in_strings_is_kept() {
    let b = harness::start().await;
    let bom_topic = "\u{FEFF}bom/t";
    for version in [V311, V5] {
        let mut with = Peer::connect(b.addr, version, "bom-with").await;
        with.subscribe(bom_topic, QoS::AtLeastOnce).await;
        let mut without = Peer::connect(b.addr, version, "bom-without").await;
        without.subscribe("bom/t", QoS::AtLeastOnce).await;
        let mut publisher = Peer::connect(b.addr, version, "bom-pub").await;
        let mut p = publish_packet(bom_topic, b"marked", QoS::AtLeastOnce, false);
        p.properties.user_properties = vec![("\u{FEFF}k".into(), "\u{FEFF}v".into())];
        publisher.publish(p).await;
        publisher
            .send_message("bom/t", b"plain", QoS::AtLeastOnce, false)
            .await;
        publisher
            .send_message(bom_topic, b"marked again", QoS::AtLeastOnce, false)
            .await;

        let got = with.recv_publish().await;
        assert_eq!(
            &got.topic.as_bytes()[..],
            b"\xEF\xBB\xBFbom/t",
            "{version:?}"
        );
        assert_eq!(&got.payload[..], b"marked", "{version:?}");
        if version == V5 {
            let props: Vec<(&[u8], &[u8])> = got
                .properties
                .user_properties
                .iter()
                .map(|(k, v)| (&k.as_bytes()[..], &v.as_bytes()[..]))
                .collect();
            assert_eq!(
                props,
                [(&b"\xEF\xBB\xBFk"[..], &b"\xEF\xBB\xBFv"[..])],
                "{got:?}"
            );
        }
        // The message on "bom/t" would have come between the two (one publisher, in order).
        assert_eq!(&with.recv_publish().await.payload[..], b"marked again");
        let got = without.recv_publish().await;
        assert_eq!(text(&got), ("bom/t".into(), "plain".into()), "{version:?}");

        for c in [with, without, publisher] {
            c.disconnect().await;
        }
    }
}

// --- Packet identifiers, SUBACK and UNSUBACK ---------------------------------------------------

/// MQTT-2.2.1-6, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.9.3-1, MQTT-3.10.4-4, MQTT-3.10.4-5,
/// MQTT-3.10.4-6, MQTT-2.2.2-1 (3.1.1: MQTT-2.3.1-7, MQTT-3.8.4-1, MQTT-3.8.4-2, MQTT-3.10.4-4,
/// MQTT-3.10.4-5, MQTT-3.10.4-6): pipelined SUBSCRIBE and UNSUBSCRIBE packets are each answered,
/// in order, by one SUBACK or UNSUBACK carrying the request's packet identifier (1, 0x1234,
/// 0xFFFF...), also when nothing was unsubscribed; a SUBACK has one code per filter in order;
/// one UNSUBSCRIBE with three filters gets one UNSUBACK. Checked byte by byte, so the v5
/// packets also show their Property Length of 0.
#[tokio::test]
async fn suback_and_unsuback_answer_each_request_with_its_packet_identifier() {
    let b = harness::start().await;
    for version in [V311, V5] {
        let mut c = RawClient::connected(b.addr, version, "acks", true).await;
        let requests = [
            subscribe_packet(1, &[("sa/1", QoS::AtLeastOnce)]),
            subscribe_packet(
                0x1234,
                &[("sa/+", QoS::AtMostOnce), ("sa/#", QoS::ExactlyOnce)],
            ),
            subscribe_packet(0xFFFF, &[("a/#/b", QoS::AtMostOnce)]),
            unsubscribe_packet(0x00FF, &["sa/1"]),
            unsubscribe_packet(0xABCD, &["never/subscribed"]),
            unsubscribe_packet(0x0102, &["sa/+", "nope", "sa/#"]),
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
        ];
        c.send_bytes(&pipelined(version, &requests)).await;
        let mut frames = Vec::new();
        while let Some(f) = c.recv_frame().await {
            frames.push(f.to_vec());
        }
        let want: Vec<Vec<u8>> = match version {
            V311 => vec![
                vec![0x90, 0x03, 0x00, 0x01, 0x01],
                vec![0x90, 0x04, 0x12, 0x34, 0x00, 0x02],
                vec![0x90, 0x03, 0xFF, 0xFF, 0x80],
                vec![0xB0, 0x02, 0x00, 0xFF],
                vec![0xB0, 0x02, 0xAB, 0xCD],
                vec![0xB0, 0x02, 0x01, 0x02],
            ],
            V5 => vec![
                vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x01],
                vec![0x90, 0x05, 0x12, 0x34, 0x00, 0x00, 0x02],
                vec![0x90, 0x04, 0xFF, 0xFF, 0x00, 0x8F],
                vec![0xB0, 0x04, 0x00, 0xFF, 0x00, 0x00],
                vec![0xB0, 0x04, 0xAB, 0xCD, 0x00, 0x11],
                vec![0xB0, 0x06, 0x01, 0x02, 0x00, 0x00, 0x11, 0x00],
            ],
        };
        assert_eq!(frames, want, "{version:?}");
    }
}

/// MQTT-2.2.2-1: a PUBLISH the broker sends without properties still carries a Property Length,
/// set to 0 (checked byte by byte, at QoS 0 and 1).
#[tokio::test]
async fn v5_publish_without_properties_has_property_length_0() {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, V5, "pl0", true).await;
    sub.subscribe_one(1, "pl/t", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "pl0-pub").await;
    publisher
        .send_message("pl/t", b"x", QoS::AtMostOnce, false)
        .await;
    publisher
        .send_message("pl/t", b"y", QoS::AtLeastOnce, false)
        .await;
    let f = sub.recv_frame().await.expect("QoS 0 PUBLISH");
    assert_eq!(
        &f[..],
        [0x30, 0x08, 0x00, 0x04, b'p', b'l', b'/', b't', 0x00, b'x']
    );
    let f = sub.recv_frame().await.expect("QoS 1 PUBLISH");
    assert_eq!(&f[..8], [0x32, 0x0A, 0x00, 0x04, b'p', b'l', b'/', b't']);
    let id = u16::from_be_bytes([f[8], f[9]]);
    assert_ne!(id, 0);
    assert_eq!(
        &f[10..],
        [0x00, b'y'],
        "property length 0, then the payload"
    );
    sub.send(&Packet::PubAck(PubResponse::success(id))).await;
}

async fn server_packet_identifiers(version: ProtocolVersion) {
    let b = harness::start_with(|c| c.limits.max_inflight = 10).await;
    let mut sub = RawClient::connected(b.addr, version, "pid-sub", true).await;
    sub.subscribe_one(1, "pid/1", QoS::AtLeastOnce).await;
    sub.subscribe_one(2, "pid/2", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, version, "pid-pub").await;
    let qos_of = |i: usize| {
        if i.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        }
    };
    for i in 0..10 {
        let topic = format!("pid/{}", qos_of(i) as u8);
        publisher
            .send_message(&topic, i.to_string().as_bytes(), qos_of(i), false)
            .await;
    }
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(sub.expect_publish().await);
    }
    first.sort_by_key(|p| {
        std::str::from_utf8(&p.payload)
            .unwrap()
            .parse::<usize>()
            .unwrap()
    });
    let mut in_use = HashSet::new();
    for (i, p) in first.iter().enumerate() {
        assert_eq!((p.qos, p.dup), (qos_of(i), false), "{version:?}: {p:?}");
        let id = p.packet_id.expect("a packet identifier for QoS > 0");
        assert_ne!(id, 0, "{version:?}: {p:?}");
        assert!(in_use.insert(id), "{version:?}: id {id} used twice");
    }
    // Complete the first five; five more are sent while the other five are still in flight.
    for p in &first[..5] {
        complete(&mut sub, p).await;
        in_use.remove(&p.packet_id.unwrap());
    }
    for i in 10..15 {
        let topic = format!("pid/{}", qos_of(i) as u8);
        publisher
            .send_message(&topic, i.to_string().as_bytes(), qos_of(i), false)
            .await;
    }
    let mut second = Vec::new();
    for _ in 10..15 {
        let p = sub.expect_publish().await;
        let id = p.packet_id.expect("a packet identifier for QoS > 0");
        assert_ne!(id, 0, "{version:?}: {p:?}");
        assert!(
            in_use.insert(id),
            "{version:?}: id {id} is still in use by an unacknowledged message"
        );
        second.push(p);
    }
    for p in &second {
        complete(&mut sub, p).await;
    }
    for p in &first[5..] {
        complete(&mut sub, p).await;
    }
    sub.expect_nothing(QUIET).await;
}

/// MQTT-2.2.1-4, MQTT-4.3.2-1, MQTT-4.3.3-1 (3.1.1: MQTT-2.3.1-4, MQTT-4.3.2-1, MQTT-4.3.3-1):
/// every QoS 1 and QoS 2 PUBLISH the broker sends has a non-zero packet identifier that no
/// other unacknowledged message of the session uses: ten in flight at once are all distinct,
/// and the next five avoid the five still unacknowledged.
#[tokio::test]
async fn server_packet_identifiers_are_non_zero_and_not_in_use() {
    server_packet_identifiers(V5).await;
    server_packet_identifiers(V311).await;
}

// --- QoS flows ---------------------------------------------------------------------------------

async fn first_delivery_flags(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub0 = RawClient::connected(b.addr, version, "dup-0", true).await;
    sub0.subscribe_one(1, "dup/#", QoS::AtMostOnce).await;
    let mut sub2 = RawClient::connected(b.addr, version, "dup-2", true).await;
    sub2.subscribe_one(1, "dup/#", QoS::ExactlyOnce).await;

    let mut publisher = RawClient::connected(b.addr, version, "dup-pub", true).await;
    publisher
        .send(&publish_dup("dup/0", b"0", QoS::AtMostOnce, None, false))
        .await;
    // The publisher marks its QoS 1 and 2 messages as resends (DUP 1), but they are new to
    // the broker.
    publisher
        .send(&publish_dup("dup/1", b"1", QoS::AtLeastOnce, Some(1), true))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    publisher
        .send(&publish_dup("dup/2", b"2", QoS::ExactlyOnce, Some(2), true))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 2));
    publisher
        .send(&Packet::PubRel(PubResponse::success(2)))
        .await;
    assert!(matches!(publisher.recv().await, Some(Packet::PubComp(r)) if r.packet_id == 2));

    let mut got0 = Vec::new();
    for _ in 0..3 {
        got0.push(sub0.expect_publish().await);
    }
    got0.sort_by(|a, b| a.topic.cmp(&b.topic));
    for p in &got0 {
        assert_eq!(
            (p.qos, p.dup, p.packet_id),
            (QoS::AtMostOnce, false, None),
            "{version:?}: QoS 0 delivery {p:?}"
        );
    }
    let mut got2 = Vec::new();
    for _ in 0..3 {
        let p = sub2.expect_publish().await;
        complete(&mut sub2, &p).await;
        got2.push(p);
    }
    got2.sort_by(|a, b| a.topic.cmp(&b.topic));
    for (p, qos) in got2
        .iter()
        .zip([QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    {
        assert_eq!((p.qos, p.dup), (qos, false), "{version:?}: {p:?}");
        assert_eq!(p.packet_id.is_some(), qos != QoS::AtMostOnce, "{p:?}");
    }
}

/// MQTT-4.3.1-1, MQTT-4.3.2-2, MQTT-4.3.3-2, MQTT-3.3.1-3 (3.1.1: MQTT-4.3.1-1, MQTT-4.3.2-1,
/// MQTT-4.3.3-1, MQTT-3.3.1-3): the broker sends a first delivery at QoS 0 with DUP 0 and no
/// packet identifier, and at QoS 1 and 2 with a packet identifier and DUP 0, even when the
/// publisher's copy had DUP 1.
#[tokio::test]
async fn first_deliveries_have_dup_0_at_every_qos() {
    first_delivery_flags(V5).await;
    first_delivery_flags(V311).await;
}

async fn qos1_identifier_reuse(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, version, "reuse-sub", true).await;
    sub.subscribe_one(1, "reuse/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, version, "reuse-pub", true).await;
    for (payload, dup) in [(&b"one"[..], false), (b"one", true), (b"two", false)] {
        publisher
            .send(&publish_dup(
                "reuse/t",
                payload,
                QoS::AtLeastOnce,
                Some(7),
                dup,
            ))
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!((a.packet_id, a.reason_code), (7, ReasonCode::SUCCESS))
            }
            other => panic!("{version:?}: expected PUBACK 7, got {other:?}"),
        }
    }
    for want in [&b"one"[..], b"one", b"two"] {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], want, "{version:?}");
        complete(&mut sub, &p).await;
    }
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.3.2-4, MQTT-4.3.2-5 (3.1.1 MQTT-4.3.2-2): the broker answers each QoS 1 PUBLISH with
/// a PUBACK carrying its packet identifier, and once it has sent that PUBACK a PUBLISH with the
/// same identifier is a new message, whether its DUP flag is set or not: all three are
/// forwarded.
#[tokio::test]
async fn qos1_packet_identifier_is_a_new_message_after_puback() {
    qos1_identifier_reuse(V5).await;
    qos1_identifier_reuse(V311).await;
}

async fn qos2_sender_flow(version: ProtocolVersion) {
    let b = harness::start_with(|c| c.limits.max_inflight = 1).await;
    let mut sub = RawClient::connected(b.addr, version, "q2s", true).await;
    sub.subscribe_one(1, "q2s/t", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, version, "q2s-pub").await;
    publisher
        .send_message("q2s/t", b"first", QoS::ExactlyOnce, false)
        .await;
    publisher
        .send_message("q2s/t", b"second", QoS::ExactlyOnce, false)
        .await;

    let first = sub.expect_publish().await;
    assert_eq!(
        (&first.payload[..], first.qos, first.dup),
        (&b"first"[..], QoS::ExactlyOnce, false),
        "{version:?}"
    );
    let id = first.packet_id.expect("packet identifier");
    assert_ne!(id, 0);
    // Unacknowledged until PUBREC: no PUBREL yet, and the window of one stays closed.
    sub.expect_nothing(QUIET).await;
    sub.send(&Packet::PubRec(PubResponse::success(id))).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubRel(PubResponse::success(id))),
        "{version:?}: PUBREL with the PUBLISH's identifier"
    );
    // The PUBREL is unacknowledged until PUBCOMP: the PUBLISH is not sent again and the next
    // message still waits.
    sub.expect_nothing(QUIET).await;
    sub.send(&Packet::PubComp(PubResponse::success(id))).await;
    let second = sub.expect_publish().await;
    assert_eq!(
        (&second.payload[..], second.qos, second.dup),
        (&b"second"[..], QoS::ExactlyOnce, false),
        "{version:?}"
    );
    assert!(second.packet_id.is_some_and(|id| id != 0));
    complete(&mut sub, &second).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.3.3-2, MQTT-4.3.3-3, MQTT-4.3.3-4, MQTT-4.3.3-5, MQTT-4.3.3-6 (3.1.1 MQTT-4.3.3-1):
/// as a QoS 2 sender the broker sends the PUBLISH with QoS 2 and DUP 0, treats it as
/// unacknowledged until the PUBREC (with an in-flight window of one, the next message waits),
/// answers the PUBREC with a PUBREL carrying the same identifier, treats that as
/// unacknowledged until the PUBCOMP, and never sends the PUBLISH again once it has released it.
#[tokio::test]
async fn qos2_sender_releases_on_pubrec_and_completes_on_pubcomp() {
    qos2_sender_flow(V5).await;
    qos2_sender_flow(V311).await;
}

/// MQTT-4.3.3-7 (sender) and MQTT-4.3.3-13 (receiver): message expiry does not interrupt a
/// QoS 2 exchange. A message sent to a subscriber and left without PUBREC is sent again (DUP 1)
/// on reconnection although its 1 s expiry has passed; and a publisher whose QoS 2 message
/// expired before it sent PUBREL still gets PUBCOMP 0x00 for it.
#[tokio::test]
async fn v5_qos2_exchange_continues_after_the_message_expires() {
    let b = harness::start().await;
    let expiring = || {
        Properties::from(PropertyValues {
            message_expiry_interval: Some(1),
            ..PropertyValues::default()
        })
    };
    // Sender side: the broker delivers an expiring message that is never acknowledged.
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(V5, "q2x-sub")).await;
    sub.subscribe_one(1, "q2x/t", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "q2x-pub").await;
    let mut p = publish_packet("q2x/t", b"short-lived", QoS::ExactlyOnce, false);
    p.properties = expiring();
    publisher.publish(p).await;
    let first = sub.expect_publish().await;
    assert_eq!(&first.payload[..], b"short-lived");

    // Receiver side: the broker got an expiring QoS 2 message; PUBREL comes late.
    let mut late = RawClient::connected(b.addr, V5, "q2x-late", true).await;
    let mut p = publish_packet("q2x/other", b"short-lived", QoS::ExactlyOnce, false);
    p.properties = expiring();
    p.packet_id = Some(31);
    late.send(&Packet::Publish(p)).await;
    assert!(matches!(late.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 31));

    tokio::time::sleep(Duration::from_millis(1300)).await;

    late.send(&Packet::PubRel(PubResponse::success(31))).await;
    assert_eq!(
        late.recv().await,
        Some(Packet::PubComp(PubResponse::success(31))),
        "PUBCOMP 0x00 for the expired message"
    );

    drop(sub);
    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(V5, "q2x-sub")).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert_eq!(
        (&again.payload[..], again.dup, again.packet_id),
        (&b"short-lived"[..], true, first.packet_id),
        "resent although expired"
    );
    complete(&mut sub, &again).await;
}

/// MQTT-4.3.3-9, MQTT-4.3.3-8: after the broker answered a QoS 2 PUBLISH with a PUBREC of 0x80
/// or more, a PUBLISH with the same packet identifier is a new message: it is accepted
/// (PUBREC 0x00 with that identifier), completed and forwarded.
#[tokio::test]
async fn v5_qos2_identifier_refused_with_error_pubrec_starts_a_new_message() {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, V5, "q2e-sub", true).await;
    sub.subscribe_one(1, "q2e/t", QoS::ExactlyOnce).await;
    let mut c = RawClient::connected(b.addr, V5, "q2e", true).await;
    let refused = [
        {
            // Payload Format Indicator 1 with a payload that is not UTF-8: 0x99.
            let mut p = publish_packet("q2e/t", &[0xFF], QoS::ExactlyOnce, false);
            p.properties.payload_format_indicator = Some(1);
            (p, ReasonCode::PAYLOAD_FORMAT_INVALID)
        },
        // A `$` topic: 0x87.
        (
            publish_packet("$q2e/t", b"x", QoS::ExactlyOnce, false),
            ReasonCode::NOT_AUTHORIZED,
        ),
    ];
    for (i, (mut bad, reason)) in refused.into_iter().enumerate() {
        bad.packet_id = Some(5);
        c.send(&Packet::Publish(bad)).await;
        match c.recv().await {
            Some(Packet::PubRec(r)) => assert_eq!((r.packet_id, r.reason_code), (5, reason)),
            other => panic!("expected PUBREC 5, got {other:?}"),
        }
        let payload = format!("new {i}");
        c.send(&raw_publish(
            "q2e/t",
            payload.as_bytes(),
            QoS::ExactlyOnce,
            Some(5),
        ))
        .await;
        assert_eq!(
            c.recv().await,
            Some(Packet::PubRec(PubResponse::success(5))),
            "a new message, not a duplicate"
        );
        c.send(&Packet::PubRel(PubResponse::success(5))).await;
        assert_eq!(
            c.recv().await,
            Some(Packet::PubComp(PubResponse::success(5)))
        );
        let p = sub.expect_publish().await;
        assert_eq!(p.payload, payload.as_bytes());
        complete(&mut sub, &p).await;
    }
    sub.expect_nothing(QUIET).await;
}

async fn ordered_delivery(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = Peer::connect(b.addr, version, "ord-sub").await;
    sub.subscribe("ord/t", QoS::ExactlyOnce).await;
    let qos_of = |i: u16| match i % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    // 60 PUBLISH packets in one write, then the acknowledgements.
    let mut publisher = RawClient::connected(b.addr, version, "ord-pub", true).await;
    let packets: Vec<Packet> = (0..60u16)
        .map(|i| {
            let qos = qos_of(i);
            let id = (qos != QoS::AtMostOnce).then_some(i + 1);
            raw_publish("ord/t", i.to_string().as_bytes(), qos, id)
        })
        .collect();
    publisher.send_bytes(&pipelined(version, &packets)).await;
    let mut acks = 0;
    while acks < 40 {
        match publisher.recv().await {
            Some(Packet::PubAck(_)) | Some(Packet::PubComp(_)) => acks += 1,
            Some(Packet::PubRec(r)) => {
                publisher
                    .send(&Packet::PubRel(PubResponse::success(r.packet_id)))
                    .await
            }
            other => panic!("{version:?}: unexpected {other:?}"),
        }
    }

    let got: Vec<(u16, QoS)> = sub
        .recv_publishes(60)
        .await
        .iter()
        .map(|p| (text(p).1.parse().unwrap(), p.qos))
        .collect();
    sub.assert_no_publish().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let seq: Vec<u16> = got.iter().filter(|g| g.1 == qos).map(|g| g.0).collect();
        let want: Vec<u16> = (0..60).filter(|&i| qos_of(i) == qos).collect();
        assert_eq!(seq, want, "{version:?}: {qos:?} messages in the order sent");
    }
}

/// MQTT-4.6.0-5, MQTT-4.6.0-6, MQTT-4.2-1 (3.1.1: MQTT-4.6.0-5, MQTT-4.6.0-6, MQTT-7.1.1-1):
/// topics are ordered by default: 60 messages one client sends to one topic in a single write,
/// at QoS 0, 1 and 2 in turn, reach a subscriber over the TCP byte stream all of them, and for
/// each QoS in the order they were sent.
#[tokio::test]
async fn messages_from_one_client_are_forwarded_in_order() {
    ordered_delivery(V5).await;
    ordered_delivery(V311).await;
}

// --- CONNACK ----------------------------------------------------------------------------------

async fn connack_first_and_once(version: ProtocolVersion) {
    let b = harness::start().await;
    // A stored session with a message in flight and one queued, and a retained message.
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "cf")).await;
    sub.subscribe_one(1, "cf/t", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(b.addr, version, "cf-pub").await;
    publisher
        .send_message("cf/t", b"in flight", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"in flight");
    drop(sub);
    harness::eventually("the subscriber is offline", || {
        b.broker.metrics().clients_connected == 1
    })
    .await;
    publisher
        .send_message("cf/t", b"queued", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("cf/r", b"retained", QoS::AtLeastOnce, true)
        .await;

    // CONNECT, SUBSCRIBE and PINGREQ in one write: CONNACK must still come first.
    let mut c = RawClient::connect(b.addr, version).await;
    c.send_bytes(&pipelined(
        version,
        &[
            Packet::Connect(Box::new(persistent(version, "cf"))),
            subscribe_packet(9, &[("cf/r", QoS::AtLeastOnce)]),
            Packet::PingReq,
        ],
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
            assert!(ack.session_present);
        }
        other => panic!("{version:?}: the first packet must be CONNACK, got {other:?}"),
    }
    let mut payloads = BTreeSet::new();
    let (mut suback, mut pingresp) = (false, false);
    while payloads.len() < 3 || !suback || !pingresp {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                complete(&mut c, &p).await;
                payloads.insert(String::from_utf8(p.payload.to_vec()).unwrap());
            }
            Some(Packet::SubAck(a)) if a.packet_id == 9 => suback = true,
            Some(Packet::PingResp) => pingresp = true,
            other => panic!("{version:?}: unexpected {other:?} (a second CONNACK?)"),
        }
    }
    assert_eq!(
        payloads,
        ["in flight", "queued", "retained"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    c.expect_nothing(QUIET).await;
}

/// MQTT-3.2.0-1, MQTT-3.2.0-2 (3.1.1 MQTT-3.2.0-1): however much the broker has to send at
/// once (a message to resend, a queued one, the retained message for a SUBSCRIBE and the
/// PINGRESP of packets pipelined behind CONNECT), CONNACK is the first packet, and there is
/// only one.
#[tokio::test]
async fn connack_is_the_first_packet_and_is_sent_once() {
    connack_first_and_once(V5).await;
    connack_first_and_once(V311).await;
}

/// The reason codes section 3.2.2.2 allows in CONNACK.
const CONNACK_REASON_CODES: [u8; 22] = [
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

/// MQTT-3.2.2-8, MQTT-3.1.3-8, MQTT-3.14.0-1, MQTT-4.13.2-1: every way moat refuses a v5
/// CONNECT answers with a CONNACK whose reason code is one of the Connect Reason Codes (and the
/// specific one for the case), sends no DISCONNECT, and closes the connection.
#[tokio::test]
async fn v5_refusing_connack_uses_a_connect_reason_code() {
    let b = harness::start_with(|c| {
        c.limits.max_client_id_length = 23;
        c.limits.max_packet_size = 256;
        c.limits.maximum_qos = QoS::AtLeastOnce;
        c.limits.retain_available = false;
    })
    .await;
    let will = |topic: &str, qos: QoS, retain: bool| Will {
        topic: topic.into(),
        payload: Bytes::from_static(b"bye"),
        qos,
        retain,
        properties: Properties::default(),
    };
    let mut cases: Vec<(&str, Vec<u8>, u8)> = Vec::new();
    let mut add = |name, tweak: &dyn Fn(&mut Connect), code| {
        let mut c = raw_connect_packet(V5, "refused", true);
        tweak(&mut c);
        cases.push((name, pipelined(V5, &[Packet::Connect(Box::new(c))]), code));
    };
    add(
        "client identifier longer than max_client_id_length",
        &|c| c.client_id = "x".repeat(24).into(),
        0x85,
    );
    add(
        "unknown authentication method",
        &|c| c.properties.authentication_method = Some("SCRAM-SHA-1".into()),
        0x8C,
    );
    add(
        "CONNECT larger than the maximum packet size",
        &|c| c.password = Some(Bytes::from(vec![b'p'; 300])),
        0x95,
    );
    add(
        "will QoS above the maximum",
        &|c| c.will = Some(will("w/t", QoS::ExactlyOnce, false)),
        0x9B,
    );
    add(
        "will retain unavailable",
        &|c| c.will = Some(will("w/t", QoS::AtMostOnce, true)),
        0x9A,
    );
    add(
        "will on a $ topic",
        &|c| c.will = Some(will("$w/t", QoS::AtMostOnce, false)),
        0x87,
    );
    // Reserved connect flag set: malformed.
    let mut malformed = pipelined(
        V5,
        &[Packet::Connect(Box::new(raw_connect_packet(V5, "m", true)))],
    );
    malformed[9] |= 0x01;
    cases.push(("reserved connect flag", malformed, 0x81));
    let mut receive_max_0 = raw_connect_packet(V5, "rm0", true);
    receive_max_0.properties.receive_maximum = Some(0);
    cases.push((
        "Receive Maximum 0",
        pipelined(V5, &[Packet::Connect(Box::new(receive_max_0))]),
        0x82,
    ));

    let mut failures = Vec::new();
    for (name, bytes, code) in cases {
        let mut c = RawClient::connect(b.addr, V5).await;
        c.send_bytes(&bytes).await;
        let seen = c.closed().await;
        match seen.as_slice() {
            [Packet::ConnAck(ack)]
                if CONNACK_REASON_CODES.contains(&ack.reason_code.0)
                    && ack.reason_code.0 == code
                    && !ack.session_present => {}
            _ => failures.push(format!(
                "{name}: wanted CONNACK {code:#04x} then close, got {seen:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// MQTT-3.2.2-8: a CONNECT that loses its session to an even newer connection while it waits
/// for the old connection to let go of it must still be answered with a Connect Reason Code
/// (0x8E Session taken over is a DISCONNECT code, not a CONNACK one); or be accepted and then
/// disconnected.
///
/// The first connection is kept busy for about a second by a write buffer its client does not
/// read (the broker gives up flushing after 1 s), so the second and third CONNECT for the same
/// client identifier queue up behind it.
#[tokio::test]
async fn v5_connect_superseded_while_waiting_for_its_session_gets_a_connect_reason_code() {
    let b = harness::start().await;
    let mut first = RawClient::connected(b.addr, V5, "race", true).await;
    first.subscribe_one(1, "race/t", QoS::AtMostOnce).await;
    // Fill the first client's socket and the broker's write buffer: the client never reads.
    let mut publisher = RawClient::connected(b.addr, V5, "race-pub", true).await;
    let big = vec![b'x'; 100_000];
    let flood: Vec<Packet> = (0..300)
        .map(|_| raw_publish("race/t", &big, QoS::AtMostOnce, None))
        .collect();
    publisher.send_bytes(&pipelined(V5, &flood)).await;
    publisher.send(&Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Packet::PingResp));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut second = RawClient::connect(b.addr, V5).await;
    second
        .send(&Packet::Connect(Box::new(raw_connect_packet(
            V5, "race", true,
        ))))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = RawClient::connect(b.addr, V5).await;
    third
        .send(&Packet::Connect(Box::new(raw_connect_packet(
            V5, "race", true,
        ))))
        .await;

    match third.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
        other => panic!("the newest connection is accepted, got {other:?}"),
    }
    // Read raw frames: a CONNACK with a reason code CONNACK may not use does not decode.
    let mut frames = Vec::new();
    while let Some(f) = second.recv_frame().await {
        frames.push(f.to_vec());
    }
    match frames.as_slice() {
        [connack] if connack[0] == 0x20 => assert!(
            CONNACK_REASON_CODES.contains(&connack[3]) && connack[3] != 0,
            "CONNACK reason {:#04x} is not a Connect Reason Code: {connack:02x?}",
            connack[3]
        ),
        [connack, disconnect] if connack[0] == 0x20 && disconnect[0] == 0xE0 => {
            assert_eq!(connack[3], 0x00, "{frames:02x?}");
            assert_eq!(disconnect.get(2), Some(&0x8E), "{frames:02x?}");
        }
        _ => panic!("expected a CONNACK (and a DISCONNECT), got {frames:02x?}"),
    }
    drop(first);
}

/// MQTT-4.12.0-6: a client that sent no Authentication Method gets none back in CONNACK, no
/// Authentication Data, and no AUTH packet: the next packet after CONNACK is the PINGRESP it
/// asks for.
#[tokio::test]
async fn v5_no_auth_exchange_without_an_authentication_method() {
    let b = harness::start().await;
    let (mut c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "noauth", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.authentication_method, None);
    assert_eq!(ack.properties.authentication_data, None);
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}

// --- Client identifiers and CONNECT payload ---------------------------------------------------

/// MQTT-3.1.3-5 (3.1.1 MQTT-3.1.3-5): client identifiers of 1 to 23 bytes of 0-9, a-z and A-Z
/// are accepted, even by a broker configured with the smallest `max_client_id_length` (23).
#[tokio::test]
async fn short_alphanumeric_client_identifiers_are_accepted() {
    let b = harness::start_with(|c| c.limits.max_client_id_length = 23).await;
    for version in [V311, V5] {
        for id in [
            "a",
            "Z",
            "0",
            "0123456789abcdefghijXYZ",
            "ABCDEFGHIJKLMNOPQRSTUVW",
        ] {
            let (_c, ack) =
                RawClient::handshake(b.addr, raw_connect_packet(version, id, true)).await;
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{version:?} {id:?}");
        }
    }
}

/// MQTT-3.1.3-8 (3.1.1 MQTT-3.1.3-9): a client identifier the broker does not accept (longer
/// than `max_client_id_length`) is refused with CONNACK 0x85 (3.1.1: return code 0x02), and the
/// connection is closed.
#[tokio::test]
async fn refused_client_identifier_gets_0x85_and_the_connection_closes() {
    let b = harness::start_with(|c| c.limits.max_client_id_length = 23).await;
    let long = "0123456789abcdefghijXYZw";
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, long, true,
    ))))
    .await;
    assert_eq!(c.read_to_close().await, [0x20, 0x02, 0x00, 0x02]);
    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V5, long, true,
    ))))
    .await;
    let seen = c.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(a)] if a.reason_code == ReasonCode::CLIENT_IDENTIFIER_NOT_VALID && !a.session_present),
        "{seen:?}"
    );
    assert_eq!(b.broker.metrics().clients_total, 0);
}

async fn client_id_selects_session(version: ProtocolVersion) {
    let b = harness::start().await;
    for (id, filter) in [("idA", "ids/a"), ("idB", "ids/b")] {
        let (mut c, _) = RawClient::handshake(b.addr, persistent(version, id)).await;
        c.subscribe_one(1, filter, QoS::AtLeastOnce).await;
        c.send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
        c.closed().await;
    }
    let mut publisher = RawClient::connected(b.addr, version, "ids-pub", true).await;
    publish_qos1(&mut publisher, 1, "ids/a", b"for A").await;
    publish_qos1(&mut publisher, 2, "ids/b", b"for B").await;
    // Identifiers are compared exactly: "ida" is another client with no session.
    let (_c, ack) = RawClient::handshake(b.addr, persistent(version, "ida")).await;
    assert!(!ack.session_present, "{version:?}");
    for (id, topic, payload) in [("idB", "ids/b", "for B"), ("idA", "ids/a", "for A")] {
        let (mut c, ack) = RawClient::handshake(b.addr, persistent(version, id)).await;
        assert!(ack.session_present, "{version:?} {id}");
        let p = c.expect_publish().await;
        assert_eq!(
            (&*p.topic, &p.payload[..]),
            (topic, payload.as_bytes()),
            "{version:?} {id}"
        );
        complete(&mut c, &p).await;
        c.expect_nothing(QUIET).await;
    }
}

/// MQTT-3.1.3-2 (3.1.1 MQTT-3.1.3-2): the broker finds a session by its client identifier:
/// each of two offline clients gets back its own subscription and the message that matched it,
/// and an identifier differing only in case finds no session.
#[tokio::test]
async fn client_identifier_selects_the_session() {
    client_id_selects_session(V5).await;
    client_id_selects_session(V311).await;
}

/// A policy that allows everything and records the user names and passwords it is shown.
#[derive(Default)]
struct RecordingPolicy {
    seen: Mutex<Vec<(Option<String>, Option<Bytes>)>>,
}

impl Policy for RecordingPolicy {
    fn on_connect(&self, client: &Arc<ClientInfo>) -> Pending<Verdict> {
        AllowAll.on_connect(client)
    }

    fn authenticate(
        &self,
        client: &Arc<ClientInfo>,
        credentials: Credentials,
    ) -> Pending<AuthOutcome> {
        self.seen.lock().unwrap().push((
            client.username.as_ref().map(|u| u.to_string()),
            credentials.password.clone(),
        ));
        AllowAll.authenticate(client, credentials)
    }

    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: Bytes,
        data: Bytes,
    ) -> Pending<AuthOutcome> {
        AllowAll.continue_auth(client, state, data)
    }

    fn authorize_publish(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        kind: PublishKind,
        message: &Arc<moat::message::Message>,
    ) -> Pending<Verdict> {
        AllowAll.authorize_publish(client, identity, kind, message)
    }

    fn authorize_subscribe(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        filter: &bytestring::ByteString,
        qos: QoS,
    ) -> Pending<SubscribeVerdict> {
        AllowAll.authorize_subscribe(client, identity, filter, qos)
    }

    fn authorize_deliver(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        topic: &bytestring::ByteString,
    ) -> Pending<Verdict> {
        AllowAll.authorize_deliver(client, identity, topic)
    }
}

/// A hand-built CONNECT with every payload field, in the order section 3.1.3 gives.
fn full_connect(version: ProtocolVersion, client_id: &str) -> Vec<u8> {
    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    // Level; flags: user name, password, will retain 0, will QoS 1, will, clean start.
    body.extend_from_slice(&[
        version.level(),
        0x80 | 0x40 | 0x08 | 0x04 | 0x02,
        0x00,
        0x00,
    ]);
    if version == V5 {
        body.push(0); // CONNECT properties
    }
    string(client_id.as_bytes(), &mut body);
    if version == V5 {
        // Will properties: Content Type "text/plain".
        body.extend_from_slice(&[13, 0x03]);
        string(b"text/plain", &mut body);
    }
    string(b"order/will", &mut body);
    string(b"will payload", &mut body);
    string(b"the user", &mut body);
    string(b"the password", &mut body);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// MQTT-3.1.3-1, MQTT-3.1.2-7 (3.1.1 MQTT-3.1.3-1): the payload fields are read in the order
/// Client Identifier, (5.0: Will Properties), Will Topic, Will Payload, User Name, Password: a
/// CONNECT carrying all of them is accepted, the policy is shown the user name and password,
/// and the will stored with the session is published, with its properties, when the
/// connection drops.
#[tokio::test]
async fn connect_payload_fields_are_read_in_order() {
    let policy = Arc::new(RecordingPolicy::default());
    let b = start_custom(Arc::new(MemoryStore::new()), policy.clone()).await;
    let mut sub = RawClient::connected(b.addr, V5, "order-sub", true).await;
    sub.subscribe_one(1, "order/will", QoS::AtLeastOnce).await;
    for version in [V311, V5] {
        let mut c = RawClient::connect(b.addr, version).await;
        c.send_bytes(&full_connect(version, "order")).await;
        match c.recv().await {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::SUCCESS),
            other => panic!("{version:?}: expected CONNACK, got {other:?}"),
        }
        let seen = policy.seen.lock().unwrap().pop();
        assert_eq!(
            seen,
            Some((
                Some("the user".to_owned()),
                Some(Bytes::from_static(b"the password"))
            )),
            "{version:?}"
        );
        drop(c);
        let p = sub.expect_publish().await;
        assert_eq!(
            (&*p.topic, &p.payload[..], p.qos),
            ("order/will", &b"will payload"[..], QoS::AtLeastOnce),
            "{version:?}"
        );
        let content_type = (version == V5).then_some("text/plain");
        assert_eq!(p.properties.content_type.as_deref(), content_type);
        complete(&mut sub, &p).await;
    }
}

// --- Sessions ----------------------------------------------------------------------------------

async fn session_kept_while_connected(version: ProtocolVersion, b: &TestBroker) {
    let mut connect = raw_connect_packet(version, &format!("alive-{version:?}"), true);
    if version == V5 {
        // A session that would expire 1 s after a disconnection.
        connect.properties.session_expiry_interval = Some(1);
    }
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    let topic = format!("alive/{version:?}");
    sub.subscribe_one(1, &topic, QoS::AtLeastOnce).await;
    let mut publisher =
        RawClient::connected(b.addr, version, &format!("alive-pub-{version:?}"), true).await;
    publish_qos1(&mut publisher, 1, &topic, b"m1").await;
    publish_qos1(&mut publisher, 2, &topic, b"m2").await;
    let m1 = sub.expect_publish().await;
    assert_eq!(&m1.payload[..], b"m1");

    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Still there: the message in flight, the one queued behind it, and the subscription.
    publish_qos1(&mut publisher, 3, &topic, b"m3").await;
    sub.send(&Packet::PubAck(PubResponse::success(m1.packet_id.unwrap())))
        .await;
    for want in [&b"m2"[..], b"m3"] {
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], want, "{version:?}");
        complete(&mut sub, &p).await;
    }
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.1.0-1 (3.1.1: MQTT-4.1.0-1, MQTT-4.1.0-2): session state is kept for as long as the
/// connection is open, whatever the Session Expiry Interval (1 s here) or Clean Session: 1.5 s
/// later the unacknowledged message, the message queued behind it (in-flight window of one) and
/// the subscription are all still there.
#[tokio::test]
async fn session_state_is_kept_while_the_connection_is_open() {
    let b = harness::start_with(|c| c.limits.max_inflight = 1).await;
    tokio::join!(
        session_kept_while_connected(V5, &b),
        session_kept_while_connected(V311, &b)
    );
}

/// MQTT-4.5.0-1 (3.1.1 MQTT-4.5.0-1): a message the broker accepted is added to the session of
/// every client with a matching subscription: connected or not, 3.1.1 or 5.0, through whichever
/// filter matches.
#[tokio::test]
async fn accepted_message_reaches_every_matching_session() {
    let b = harness::start().await;
    let mut online = Vec::new();
    for (version, id, filter) in [(V5, "all-on5", "all/#"), (V311, "all-on4", "all/+/x")] {
        let mut c = RawClient::connected(b.addr, version, id, true).await;
        c.subscribe_one(1, filter, QoS::AtLeastOnce).await;
        online.push(c);
    }
    for (version, id, filter) in [(V5, "all-off5", "all/a/x"), (V311, "all-off4", "+/a/#")] {
        let (mut c, _) = RawClient::handshake(b.addr, persistent(version, id)).await;
        c.subscribe_one(1, filter, QoS::AtLeastOnce).await;
        c.send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
        c.closed().await;
    }
    let mut publisher = RawClient::connected(b.addr, V5, "all-pub", true).await;
    publish_qos1(&mut publisher, 1, "all/a/x", b"to all").await;
    for c in &mut online {
        let p = c.expect_publish().await;
        assert_eq!(&p.payload[..], b"to all");
    }
    for (version, id) in [(V5, "all-off5"), (V311, "all-off4")] {
        let (mut c, _) = RawClient::handshake(b.addr, persistent(version, id)).await;
        let p = c.expect_publish().await;
        assert_eq!(&p.payload[..], b"to all", "{id}");
    }
}

/// 3.1.1 MQTT-3.1.2-5: while a Clean Session 0 client is away, the QoS 1 and QoS 2 messages
/// matching its subscriptions are stored in its session and delivered when it comes back.
#[tokio::test]
async fn offline_qos1_and_qos2_messages_are_stored_v311() {
    let b = harness::start().await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(V311, "off12")).await;
    sub.subscribe_one(1, "off12/#", QoS::ExactlyOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    sub.closed().await;
    let mut publisher = Peer::connect(b.addr, V311, "off12-pub").await;
    publisher
        .send_message("off12/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("off12/2", b"two", QoS::ExactlyOnce, false)
        .await;
    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(V311, "off12")).await;
    assert!(ack.session_present);
    for (payload, qos) in [(&b"one"[..], QoS::AtLeastOnce), (b"two", QoS::ExactlyOnce)] {
        let p = sub.expect_publish().await;
        assert_eq!((&p.payload[..], p.qos), (payload, qos));
        complete(&mut sub, &p).await;
    }
}

/// 3.1.1 MQTT-3.1.2-7: retained messages are not part of a session: one published by a Clean
/// Session 1 client is still there after that client's session has ended.
#[tokio::test]
async fn retained_message_outlives_its_publishers_session_v311() {
    let b = harness::start().await;
    let mut publisher = Peer::connect(b.addr, V311, "ret-gone").await;
    publisher
        .send_message("outlive/t", b"still here", QoS::AtLeastOnce, true)
        .await;
    publisher.disconnect().await;
    harness::eventually("the publisher's session ended", || {
        b.broker.metrics().clients_connected == 0
    })
    .await;
    let mut sub = Peer::connect(b.addr, V311, "ret-later").await;
    sub.subscribe("outlive/t", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (text(&p).1.as_str(), p.retain),
        ("still here", true),
        "{p:?}"
    );
}

/// 3.1.1 MQTT-3.3.1-7: a retained QoS 0 PUBLISH replaces the message retained for its topic
/// (here a QoS 1 one): a later subscriber gets the QoS 0 message.
#[tokio::test]
async fn retained_qos0_message_replaces_the_retained_message_v311() {
    let b = harness::start().await;
    let mut publisher = Peer::connect(b.addr, V311, "rq0-pub").await;
    publisher
        .send_message("rq0/t", b"old", QoS::AtLeastOnce, true)
        .await;
    publisher
        .send_message("rq0/t", b"new", QoS::AtMostOnce, true)
        .await;
    let mut sub = Peer::connect(b.addr, V311, "rq0-sub").await;
    sub.subscribe("rq0/t", QoS::AtLeastOnce).await;
    let p = sub.recv_publish().await;
    assert_eq!(
        (text(&p).1.as_str(), p.qos, p.retain),
        ("new", QoS::AtMostOnce, true)
    );
    sub.assert_no_publish().await;
}

/// 3.1.1 MQTT-3.1.2-12: a client that sent no will (Will Flag 0) and whose connection drops
/// has nothing published for it.
#[tokio::test]
async fn no_will_is_published_without_the_will_flag_v311() {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, V311, "nowill-sub", true).await;
    sub.subscribe_one(1, "#", QoS::AtLeastOnce).await;
    let c = RawClient::connected(b.addr, V311, "nowill", true).await;
    drop(c);
    harness::eventually("the client is gone", || {
        b.broker.metrics().clients_connected == 1
    })
    .await;
    sub.expect_nothing(QUIET).await;
}

/// A store that refuses to accept messages (as a full disk would) and accepts everything else.
struct RefusingStore;

impl Store for RefusingStore {
    fn load(&self) -> Pending<Result<Snapshot, StoreError>> {
        Ok(Snapshot::default()).into()
    }

    fn apply(&self, change: Change) -> Pending<Result<(), StoreError>> {
        match change {
            Change::Accepted { .. } => Err(StoreError("disk full".into())).into(),
            _ => Ok(()).into(),
        }
    }
}

/// 3.1.1 MQTT-4.8.0-2: a transient error while the broker processes a packet (the store
/// cannot record a QoS 1 message) closes the connection the packet came on, without a PUBACK;
/// the message is not forwarded and other connections carry on.
#[tokio::test]
async fn transient_error_closes_the_connection_v311() {
    let b = start_custom(Arc::new(RefusingStore), Arc::new(AllowAll)).await;
    let mut sub = RawClient::connected(b.addr, V311, "te-sub", true).await;
    sub.subscribe_one(1, "te/t", QoS::AtLeastOnce).await;
    let mut c = RawClient::connected(b.addr, V311, "te", true).await;
    c.send(&raw_publish("te/t", b"x", QoS::AtLeastOnce, Some(1)))
        .await;
    assert_eq!(c.closed().await, vec![], "closed without a PUBACK");
    sub.send(&Packet::PingReq).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PingResp),
        "nothing forwarded"
    );
}

// --- UNSUBSCRIBE ---------------------------------------------------------------------------------

/// Publishes `payload` at QoS 1 to each topic in turn.
async fn publish_each(publisher: &mut Peer, topics: &[&str], payload: &[u8]) {
    for t in topics {
        publisher
            .send_message(t, payload, QoS::AtLeastOnce, false)
            .await;
    }
}

async fn unsubscribe_exact_match(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut c = Peer::connect(b.addr, version, "cc").await;
    let q1 = opts(QoS::AtLeastOnce);
    assert_eq!(
        c.subscribe_many(&[("cc/+", q1), ("cc/b", q1), ("cc/marker", q1)])
            .await,
        [1, 1, 1]
    );
    let mut publisher = Peer::connect(b.addr, version, "cc-pub").await;
    // No filter here is character for character one of the session's: nothing is removed.
    let ack = c
        .unsubscribe(&["cc/#", "cc/B", "cc/b/", "+/b", "cc/+/", "cc/ b"])
        .await;
    match version {
        V5 => assert_eq!(ack.reason_codes, [ReasonCode::NO_SUBSCRIPTION_EXISTED; 6]),
        V311 => assert!(ack.reason_codes.is_empty()),
    }
    publish_each(&mut publisher, &["cc/b", "cc/c", "cc/marker"], b"1").await;
    let got: Vec<String> = c
        .recv_publishes(3)
        .await
        .iter()
        .map(|p| p.topic.to_string())
        .collect();
    assert_eq!(got, ["cc/b", "cc/c", "cc/marker"], "{version:?}");

    // Two exact matches in one UNSUBSCRIBE: both removed, one UNSUBACK.
    let ack = c.unsubscribe(&["cc/+", "cc/b"]).await;
    match version {
        V5 => assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS; 2]),
        V311 => assert!(ack.reason_codes.is_empty()),
    }
    c.raw.send(&Packet::PingReq).await;
    assert_eq!(
        c.raw.recv().await,
        Some(Packet::PingResp),
        "{version:?}: a single UNSUBACK"
    );
    publish_each(&mut publisher, &["cc/b", "cc/c", "cc/marker"], b"2").await;
    let p = c.recv_publish().await;
    assert_eq!(text(&p), ("cc/marker".into(), "2".into()), "{version:?}");
}

/// MQTT-3.10.4-1, MQTT-3.10.4-2, MQTT-3.10.4-6 (3.1.1: MQTT-3.10.4-1, MQTT-3.10.4-2,
/// MQTT-3.10.4-6): UNSUBSCRIBE filters are compared character by character with the session's
/// filters, without wildcard matching or case folding: only an exact match removes a
/// subscription, after which its messages stop; several filters in one UNSUBSCRIBE are each
/// handled, with one UNSUBACK.
#[tokio::test]
async fn unsubscribe_removes_only_character_for_character_matches() {
    unsubscribe_exact_match(V5).await;
    unsubscribe_exact_match(V311).await;
}

async fn completes_after_unsubscribe(version: ProtocolVersion) {
    let b = harness::start().await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "uc")).await;
    sub.subscribe_one(1, "uc/1", QoS::AtLeastOnce).await;
    sub.subscribe_one(2, "uc/2", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, version, "uc-pub").await;
    publisher
        .send_message("uc/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("uc/2", b"two", QoS::ExactlyOnce, false)
        .await;
    let mut started = [sub.expect_publish().await, sub.expect_publish().await];
    started.sort_by(|a, b| a.topic.cmp(&b.topic));
    let [one, two] = started;
    let (id1, id2) = (one.packet_id.unwrap(), two.packet_id.unwrap());

    sub.send(&unsubscribe_packet(3, &["uc/1", "uc/2"])).await;
    assert!(matches!(sub.recv().await, Some(Packet::UnsubAck(a)) if a.packet_id == 3));
    // The QoS 2 delivery goes on: PUBREC is answered with PUBREL.
    sub.send(&Packet::PubRec(PubResponse::success(id2))).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubRel(PubResponse::success(id2)))
    );
    drop(sub); // neither PUBACK nor PUBCOMP

    // Both deliveries are still owed on the resumed session.
    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(version, "uc")).await;
    assert!(ack.session_present);
    let mut resent = [sub.recv().await, sub.recv().await];
    resent.sort_by_key(|p| matches!(p, Some(Packet::PubRel(_))));
    match &resent[0] {
        Some(Packet::Publish(p)) => assert_eq!(
            (&*p.topic, p.dup, p.packet_id),
            ("uc/1", true, Some(id1)),
            "{version:?}"
        ),
        other => panic!("{version:?}: expected the QoS 1 PUBLISH again, got {other:?}"),
    }
    assert_eq!(
        resent[1],
        Some(Packet::PubRel(PubResponse::success(id2))),
        "{version:?}"
    );
    sub.send(&Packet::PubAck(PubResponse::success(id1))).await;
    sub.send(&Packet::PubComp(PubResponse::success(id2))).await;
    // And no new messages for the removed filters.
    publisher
        .send_message("uc/1", b"after", QoS::AtLeastOnce, false)
        .await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-3.10.4-3, MQTT-3.10.4-2 (3.1.1: MQTT-3.10.4-3, MQTT-3.10.4-2): QoS 1 and QoS 2
/// deliveries that had started when their subscriptions were removed are completed: the
/// PUBREC still gets its PUBREL, and after a reconnection the unacknowledged PUBLISH and the
/// unanswered PUBREL are sent again; new messages for the removed filters are not.
#[tokio::test]
async fn deliveries_started_before_unsubscribe_are_completed() {
    completes_after_unsubscribe(V5).await;
    completes_after_unsubscribe(V311).await;
}

/// MQTT-3.8.4-4, MQTT-3.8.4-3: a SUBSCRIBE that replaces a subscription with Retain Handling 0
/// sends the retained message again, and loses no message: the one in flight and the two
/// queued behind it (Receive Maximum 1) all still arrive, once each.
#[tokio::test]
async fn v5_replacing_a_subscription_resends_retained_and_loses_nothing() {
    let b = harness::start().await;
    let mut publisher = Peer::connect(b.addr, V5, "rs-pub").await;
    publisher
        .send_message("rs/t", b"retained", QoS::AtLeastOnce, true)
        .await;
    let mut connect = raw_connect_packet(V5, "rs", true);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    let subscribe = |id| {
        Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: vec![(
                "rs/t".into(),
                opts_rh(QoS::AtLeastOnce, RetainHandling::OnSubscribe),
            )],
            properties: Properties::default(),
        })
    };
    sub.send(&subscribe(1)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(a)) if a.packet_id == 1));
    let first = sub.expect_publish().await;
    assert_eq!((&first.payload[..], first.retain), (&b"retained"[..], true));
    // Not acknowledged: live messages queue behind it.
    publisher
        .send_message("rs/t", b"live 1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("rs/t", b"live 2", QoS::AtLeastOnce, false)
        .await;
    sub.send(&subscribe(2)).await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(a)) if a.packet_id == 2));
    sub.send(&Packet::PubAck(PubResponse::success(
        first.packet_id.unwrap(),
    )))
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish().await;
        complete(&mut sub, &p).await;
        got.push((String::from_utf8(p.payload.to_vec()).unwrap(), p.retain));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("live 1".to_owned(), false),
            ("live 2".to_owned(), false),
            ("retained".to_owned(), true)
        ]
    );
    sub.expect_nothing(QUIET).await;
}

// --- DISCONNECT from the broker ---------------------------------------------------------------

/// Checks what a v5 client saw before the broker closed: PUBLISH packets, then one DISCONNECT
/// with `reason` and no Session Expiry Interval, as the last packet.
fn assert_ends_with_disconnect(what: &str, seen: &[Packet], reason: ReasonCode) {
    let Some((Packet::Disconnect(d), before)) = seen.split_last() else {
        panic!("{what}: expected DISCONNECT then close, got {seen:?}");
    };
    assert_eq!(d.reason_code, reason, "{what}: {d:?}");
    assert_eq!(d.properties.session_expiry_interval, None, "{what}: {d:?}");
    assert!(
        before.iter().all(|p| matches!(p, Packet::Publish(_))),
        "{what}: {seen:?}"
    );
}

/// MQTT-3.14.2-2, MQTT-3.14.4-1, MQTT-3.14.4-2, MQTT-4.13.2-1: a DISCONNECT the broker sends
/// (session taken over while messages were streaming, protocol error, keep alive timeout,
/// shutdown) never carries a Session Expiry Interval, even to a client whose session has one;
/// it is the last packet on the connection, which the broker then closes.
#[tokio::test]
async fn v5_disconnect_from_the_broker_is_last_and_has_no_session_expiry() {
    let b = harness::start().await;
    let mut keep_alive = persistent(V5, "sd-ka");
    keep_alive.keep_alive = 1;
    let (mut ka, _) = RawClient::handshake(b.addr, keep_alive).await;

    let (mut taken, _) = RawClient::handshake(b.addr, persistent(V5, "sd-to")).await;
    taken.subscribe_one(1, "sd/t", QoS::AtMostOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "sd-pub", true).await;
    let stream: Vec<Packet> = (0..50)
        .map(|i: u32| raw_publish("sd/t", i.to_string().as_bytes(), QoS::AtMostOnce, None))
        .collect();
    publisher.send_bytes(&pipelined(V5, &stream)).await;
    let (_new, _) = RawClient::handshake(b.addr, persistent(V5, "sd-to")).await;
    assert_ends_with_disconnect(
        "takeover",
        &taken.closed().await,
        ReasonCode::SESSION_TAKEN_OVER,
    );

    let (mut bad, _) = RawClient::handshake(b.addr, persistent(V5, "sd-pe")).await;
    bad.send_bytes(&[0x20, 0x03, 0x00, 0x00, 0x00]).await; // CONNACK from a client
    assert_ends_with_disconnect(
        "protocol error",
        &bad.closed().await,
        ReasonCode::PROTOCOL_ERROR,
    );

    assert_ends_with_disconnect(
        "keep alive",
        &ka.closed().await,
        ReasonCode::KEEP_ALIVE_TIMEOUT,
    );

    let (mut last, _) = RawClient::handshake(b.addr, persistent(V5, "sd-sd")).await;
    let stop = tokio::spawn(b.stop());
    assert_ends_with_disconnect(
        "shutdown",
        &last.closed().await,
        ReasonCode::SERVER_SHUTTING_DOWN,
    );
    stop.await.unwrap();
}

// --- Flow control ------------------------------------------------------------------------------

/// MQTT-3.3.4-10, MQTT-4.9.0-3: while its send quota towards a client is zero (Receive Maximum
/// 1, one QoS 1 message unacknowledged, another waiting), the broker still answers everything
/// else at once: PINGREQ, SUBSCRIBE, UNSUBSCRIBE, the client's own QoS 1 and QoS 2 PUBLISH
/// flows and a PUBREL. The waiting message follows the PUBACK.
#[tokio::test]
async fn v5_other_packets_flow_while_the_send_quota_is_zero() {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(V5, "fq", true);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    sub.subscribe_one(1, "fq/t", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "fq-pub").await;
    publisher
        .send_message("fq/t", b"m0", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("fq/t", b"m1", QoS::AtLeastOnce, false)
        .await;
    let m0 = sub.expect_publish().await;
    assert_eq!(&m0.payload[..], b"m0");

    sub.send(&Packet::PingReq).await;
    assert_eq!(sub.recv().await, Some(Packet::PingResp));
    assert_eq!(
        sub.subscribe_one(2, "fq/other", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    sub.send(&unsubscribe_packet(3, &["fq/other"])).await;
    assert!(matches!(sub.recv().await, Some(Packet::UnsubAck(a)) if a.packet_id == 3));
    let ack = publish_qos1(&mut sub, 4, "fq/mine", b"x").await;
    assert_eq!(ack.reason_code, ReasonCode::NO_MATCHING_SUBSCRIBERS);
    sub.send(&raw_publish("fq/mine", b"y", QoS::ExactlyOnce, Some(5)))
        .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 5));
    sub.send(&Packet::PubRel(PubResponse::success(5))).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubComp(PubResponse::success(5)))
    );

    sub.send(&Packet::PubAck(PubResponse::success(m0.packet_id.unwrap())))
        .await;
    let m1 = sub.expect_publish().await;
    assert_eq!(&m1.payload[..], b"m1");
}

/// MQTT-3.5.2-2, MQTT-3.5.2-3, MQTT-3.6.2-2, MQTT-3.6.2-3, MQTT-3.7.2-2, MQTT-3.7.2-3,
/// MQTT-3.9.2-1, MQTT-3.9.2-2, MQTT-3.11.2-1, MQTT-3.11.2-2, MQTT-3.14.2-3, MQTT-3.14.2-4,
/// MQTT-3.1.2-24: a client with a Maximum Packet Size of 24 bytes still gets every
/// acknowledgement it is owed (PUBREC 0x99, whose reason string would make it 29 bytes; PUBREL
/// and PUBCOMP 0x92; SUBACK 0x8F; UNSUBACK 0x11) and the DISCONNECT for its protocol error, each
/// within 24 bytes, with no Reason String or User Properties that would not fit.
#[tokio::test]
async fn v5_acknowledgements_leave_out_diagnostics_to_fit_the_maximum_packet_size() {
    const LIMIT: u32 = 24;
    let b = harness::start().await;
    let mut connect = raw_connect_packet(V5, "fit", true);
    connect.properties.maximum_packet_size = Some(LIMIT);
    let (mut c, _) = RawClient::handshake(b.addr, connect).await;
    let fits = |p: &Packet| {
        let len = codec::encoded_len(p, V5);
        assert!(len <= LIMIT as usize, "{len}-byte packet: {p:?}");
        let props = match p {
            Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => &r.properties,
            Packet::SubAck(a) => &a.properties,
            Packet::UnsubAck(a) => &a.properties,
            Packet::Disconnect(d) => &d.properties,
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            props.reason_string.is_none() && props.user_properties.is_empty(),
            "{p:?}"
        );
    };

    let mut refused = publish_packet("fit/t", &[0xFF], QoS::ExactlyOnce, false);
    refused.properties.payload_format_indicator = Some(1);
    refused.packet_id = Some(1);
    c.send(&Packet::Publish(refused)).await;
    let p = c.recv().await.expect("PUBREC");
    assert!(
        matches!(&p, Packet::PubRec(r) if r.packet_id == 1 && r.reason_code == ReasonCode::PAYLOAD_FORMAT_INVALID),
        "{p:?}"
    );
    fits(&p);

    c.send(&Packet::PubRec(PubResponse::success(77))).await;
    let p = c.recv().await.expect("PUBREL");
    assert!(
        matches!(&p, Packet::PubRel(r) if r.packet_id == 77 && r.reason_code == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        "{p:?}"
    );
    fits(&p);

    c.send(&Packet::PubRel(PubResponse::success(78))).await;
    let p = c.recv().await.expect("PUBCOMP");
    assert!(
        matches!(&p, Packet::PubComp(r) if r.packet_id == 78 && r.reason_code == ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        "{p:?}"
    );
    fits(&p);

    c.send(&subscribe_packet(2, &[("fit/#/x", QoS::AtMostOnce)]))
        .await;
    let p = c.recv().await.expect("SUBACK");
    assert!(
        matches!(&p, Packet::SubAck(a) if a.packet_id == 2 && a.reason_codes == [ReasonCode::TOPIC_FILTER_INVALID]),
        "{p:?}"
    );
    fits(&p);

    c.send(&unsubscribe_packet(3, &["fit/none"])).await;
    let p = c.recv().await.expect("UNSUBACK");
    assert!(
        matches!(&p, Packet::UnsubAck(a) if a.packet_id == 3 && a.reason_codes == [ReasonCode::NO_SUBSCRIPTION_EXISTED]),
        "{p:?}"
    );
    fits(&p);

    c.send_bytes(&[0x20, 0x03, 0x00, 0x00, 0x00]).await; // CONNACK from a client
    let seen = c.closed().await;
    match seen.as_slice() {
        [p @ Packet::Disconnect(d)] if d.reason_code == ReasonCode::PROTOCOL_ERROR => fits(p),
        _ => panic!("expected DISCONNECT 0x82, got {seen:?}"),
    }
}

// --- Shared subscriptions ------------------------------------------------------------------------

/// A v5 shared-subscription member with a session of `expiry` seconds.
async fn member(b: &TestBroker, id: &str, expiry: u32, filter: &str, qos: QoS) -> RawClient {
    let mut connect = raw_connect_packet(V5, id, expiry == 0);
    if expiry > 0 {
        connect.properties.session_expiry_interval = Some(expiry);
    }
    let (mut c, _) = RawClient::handshake(b.addr, connect).await;
    c.subscribe_one(1, filter, qos).await;
    c
}

/// A member coming back to its stored session (whose subscription it keeps).
async fn rejoin(b: &TestBroker, id: &str) -> RawClient {
    let mut connect = raw_connect_packet(V5, id, false);
    connect.properties.session_expiry_interval = Some(60);
    let (c, ack) = RawClient::handshake(b.addr, connect).await;
    assert!(ack.session_present, "{id}: session resumed");
    c
}

/// MQTT-4.8.2-4: a QoS 2 message sent to a shared-subscription member whose connection drops
/// before it acknowledged is completed with that member when it reconnects (PUBLISH again with
/// DUP 1; after PUBREC, PUBREL again); the other member of the group never gets it.
#[tokio::test]
async fn v5_shared_qos2_delivery_is_completed_with_the_same_member() {
    let b = harness::start().await;
    let filter = "$share/g/sh4/t";
    let mut one = member(&b, "sh4-one", 60, filter, QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "sh4-pub").await;
    publisher
        .send_message("sh4/t", b"m", QoS::ExactlyOnce, false)
        .await;
    let first = one.expect_publish().await;
    let mut two = member(&b, "sh4-two", 0, filter, QoS::ExactlyOnce).await;
    drop(one);

    let mut one = rejoin(&b, "sh4-one").await;
    let again = one.expect_publish().await;
    assert_eq!(
        (&again.payload[..], again.dup, again.packet_id),
        (&b"m"[..], true, first.packet_id)
    );
    let id = again.packet_id.unwrap();
    one.send(&Packet::PubRec(PubResponse::success(id))).await;
    assert_eq!(
        one.recv().await,
        Some(Packet::PubRel(PubResponse::success(id)))
    );
    drop(one);
    let mut one = rejoin(&b, "sh4-one").await;
    assert_eq!(
        one.recv().await,
        Some(Packet::PubRel(PubResponse::success(id)))
    );
    one.send(&Packet::PubComp(PubResponse::success(id))).await;
    one.expect_nothing(QUIET).await;
    two.expect_nothing(QUIET).await;
}

/// MQTT-4.8.2-5: if that member's session ends (expiry 1 s) before it reconnects, the message
/// is not sent to another member; the group goes on with the next message.
#[tokio::test]
async fn v5_shared_delivery_to_an_expired_member_is_not_passed_on() {
    let b = harness::start().await;
    let filter = "$share/g/sh5/t";
    let mut one = member(&b, "sh5-one", 1, filter, QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "sh5-pub").await;
    publisher
        .send_message("sh5/t", b"lost with the session", QoS::ExactlyOnce, false)
        .await;
    one.expect_publish().await;
    let mut two = member(&b, "sh5-two", 0, filter, QoS::ExactlyOnce).await;
    drop(one);
    harness::eventually("the member's session expires", || {
        b.broker.metrics().clients_expired == 1
    })
    .await;
    publisher
        .send_message("sh5/t", b"next", QoS::ExactlyOnce, false)
        .await;
    let p = two.expect_publish().await;
    assert_eq!(&p.payload[..], b"next");
    complete(&mut two, &p).await;
    two.expect_nothing(QUIET).await;
}

/// MQTT-4.8.2-6: a shared-subscription member that answers with PUBACK or PUBREC 0x80 ends
/// the delivery: the message is not offered to the other member (nor sent again to it).
#[tokio::test]
async fn v5_shared_delivery_refused_by_a_member_is_not_offered_to_another() {
    let b = harness::start().await;
    let (f1, f2) = ("$share/g/sh6/1", "$share/g/sh6/2");
    let mut one = member(&b, "sh6-one", 0, f1, QoS::AtLeastOnce).await;
    one.subscribe_one(2, f2, QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(b.addr, V5, "sh6-pub").await;
    publisher
        .send_message("sh6/1", b"one", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("sh6/2", b"two", QoS::ExactlyOnce, false)
        .await;
    let mut got = [one.expect_publish().await, one.expect_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let mut two = member(&b, "sh6-two", 0, f1, QoS::AtLeastOnce).await;
    two.subscribe_one(2, f2, QoS::ExactlyOnce).await;
    let refuse = |id| PubResponse {
        packet_id: id,
        reason_code: ReasonCode::UNSPECIFIED_ERROR,
        properties: Properties::default(),
    };
    one.send(&Packet::PubAck(refuse(got[0].packet_id.unwrap())))
        .await;
    one.send(&Packet::PubRec(refuse(got[1].packet_id.unwrap())))
        .await;
    one.expect_nothing(QUIET).await;
    two.expect_nothing(QUIET).await;
}
