//! Quality of service: QoS 0/1/2 flows end to end, downgrade to the subscription's QoS,
//! exactly-once delivery, the in-flight window, redelivery after reconnect, offline queueing
//! and its bound, acknowledgement reason codes, and `$` topics.

use std::time::Duration;

use moat::codec::ProtocolVersion::{self, V5, V311};
use moat::codec::{Connect, Disconnect, Packet, PubResponse, Publish, QoS, ReasonCode};
use moat::config::QueueOverflow;
use moat::metrics::DropCause;

use crate::harness::{self, RawClient, Rumqtt4, Rumqtt5, raw_connect_packet, raw_publish};

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// A CONNECT asking for a session that outlives the connection (clean session 0; 5.0: clean
/// start 0 and a session expiry of 60 s).
fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut c = raw_connect_packet(version, client_id, false);
    if version == V5 {
        c.properties.session_expiry_interval = Some(60);
    }
    c
}

fn publish(topic: &str, payload: &[u8], qos: QoS, id: Option<u16>, dup: bool) -> Packet {
    let mut p = raw_publish(topic, payload, qos, id);
    if let Packet::Publish(p) = &mut p {
        p.dup = dup;
    }
    p
}

/// Publishes at QoS 1 and returns the PUBACK's reason code.
async fn publish_qos1(publisher: &mut RawClient, id: u16, topic: &str, payload: &[u8]) -> u8 {
    publisher
        .send(&raw_publish(topic, payload, QoS::AtLeastOnce, Some(id)))
        .await;
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(ack.packet_id, id);
            ack.reason_code.0
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// Publishes at QoS 2 through PUBREC, PUBREL and PUBCOMP; returns the PUBREC's reason code.
async fn publish_qos2(publisher: &mut RawClient, id: u16, topic: &str, payload: &[u8]) -> u8 {
    publisher
        .send(&raw_publish(topic, payload, QoS::ExactlyOnce, Some(id)))
        .await;
    let rec = match publisher.recv().await {
        Some(Packet::PubRec(r)) => r,
        other => panic!("expected PUBREC, got {other:?}"),
    };
    assert_eq!(rec.packet_id, id);
    if rec.reason_code.is_error() {
        return rec.reason_code.0;
    }
    publisher
        .send(&Packet::PubRel(PubResponse::success(id)))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubComp(PubResponse::success(id)))
    );
    rec.reason_code.0
}

/// Completes the receiver's side of a delivery: PUBACK for QoS 1, PUBREC / PUBREL / PUBCOMP
/// for QoS 2.
async fn acknowledge(client: &mut RawClient, p: &Publish) {
    let Some(id) = p.packet_id else { return };
    match p.qos {
        QoS::AtLeastOnce => client.send(&Packet::PubAck(PubResponse::success(id))).await,
        QoS::ExactlyOnce => {
            client.send(&Packet::PubRec(PubResponse::success(id))).await;
            assert_eq!(
                client.recv().await,
                Some(Packet::PubRel(PubResponse::success(id)))
            );
            client
                .send(&Packet::PubComp(PubResponse::success(id)))
                .await;
        }
        QoS::AtMostOnce => {}
    }
}

async fn disconnect(client: &mut RawClient) {
    client
        .send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
    assert_eq!(client.closed().await, vec![]);
}

// --- End to end with ordinary clients --------------------------------------------------------

/// Sections 4.3.1 to 4.3.3 (3.1.1 and 5.0 alike): with an ordinary 3.1.1 client (rumqttc), a
/// message published at QoS 0, 1 and 2 reaches a QoS 2 subscriber at that QoS with its payload,
/// and the publisher's QoS 1 and 2 flows complete (PUBACK; PUBREC, PUBCOMP).
#[tokio::test]
async fn qos_0_1_2_end_to_end_v311() {
    use rumqttc::{Packet as P, QoS as Q};
    let b = harness::start().await;
    let mut sub = Rumqtt4::connect(b.addr, "e2e-sub4", |_| {}).await;
    sub.subscribe("e2e4/#", Q::ExactlyOnce).await;
    let mut publisher = Rumqtt4::connect(b.addr, "e2e-pub4", |_| {}).await;
    for (topic, qos) in [
        ("e2e4/0", Q::AtMostOnce),
        ("e2e4/1", Q::AtLeastOnce),
        ("e2e4/2", Q::ExactlyOnce),
    ] {
        publisher
            .client
            .publish(topic, qos, false, format!("payload of {topic}"))
            .await
            .unwrap();
    }
    let (mut acked, mut completed) = (false, false);
    while !(acked && completed) {
        match publisher.next().await {
            Some(P::PubAck(_)) => acked = true,
            Some(P::PubComp(_)) => completed = true,
            Some(_) => {}
            None => panic!("publisher disconnected"),
        }
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        got.push((
            p.topic.clone(),
            p.qos,
            String::from_utf8(p.payload.to_vec()).unwrap(),
        ));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            (
                "e2e4/0".to_owned(),
                Q::AtMostOnce,
                "payload of e2e4/0".to_owned()
            ),
            (
                "e2e4/1".to_owned(),
                Q::AtLeastOnce,
                "payload of e2e4/1".to_owned()
            ),
            (
                "e2e4/2".to_owned(),
                Q::ExactlyOnce,
                "payload of e2e4/2".to_owned()
            ),
        ]
    );
}

/// Sections 4.3.1 to 4.3.3: the same with ordinary 5.0 clients (rumqttc v5), where PUBACK and
/// PUBREC report Success (0x00) since there is a subscriber.
#[tokio::test]
async fn qos_0_1_2_end_to_end_v5() {
    use rumqttc::v5::mqttbytes::QoS as Q;
    use rumqttc::v5::mqttbytes::v5::{Packet as P, PubAckReason, PubRecReason};
    let b = harness::start().await;
    let (mut sub, _) = Rumqtt5::connect(b.addr, "e2e-sub5", |_| {}).await;
    sub.subscribe("e2e5/#", Q::ExactlyOnce).await;
    let (mut publisher, _) = Rumqtt5::connect(b.addr, "e2e-pub5", |_| {}).await;
    for (topic, qos) in [
        ("e2e5/0", Q::AtMostOnce),
        ("e2e5/1", Q::AtLeastOnce),
        ("e2e5/2", Q::ExactlyOnce),
    ] {
        publisher
            .client
            .publish(topic, qos, false, format!("payload of {topic}"))
            .await
            .unwrap();
    }
    let (mut acked, mut completed) = (false, false);
    while !(acked && completed) {
        match publisher.next().await {
            Some(P::PubAck(a)) => {
                assert_eq!(a.reason, PubAckReason::Success);
                acked = true;
            }
            Some(P::PubRec(r)) => assert_eq!(r.reason, PubRecReason::Success),
            Some(P::PubComp(_)) => completed = true,
            Some(_) => {}
            None => panic!("publisher disconnected"),
        }
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.next_publish().await;
        got.push((
            String::from_utf8(p.topic.to_vec()).unwrap(),
            p.qos,
            String::from_utf8(p.payload.to_vec()).unwrap(),
        ));
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            (
                "e2e5/0".to_owned(),
                Q::AtMostOnce,
                "payload of e2e5/0".to_owned()
            ),
            (
                "e2e5/1".to_owned(),
                Q::AtLeastOnce,
                "payload of e2e5/1".to_owned()
            ),
            (
                "e2e5/2".to_owned(),
                Q::ExactlyOnce,
                "payload of e2e5/2".to_owned()
            ),
        ]
    );
}

// --- Downgrade -------------------------------------------------------------------------------

async fn delivery_qos_is_the_minimum(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, version, "dg-sub", true).await;
    for (i, (filter, qos)) in [
        ("dg/0", QoS::AtMostOnce),
        ("dg/1", QoS::AtLeastOnce),
        ("dg/2", QoS::ExactlyOnce),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            sub.subscribe_one(i as u16 + 1, filter, qos).await,
            [ReasonCode(qos as u8)]
        );
    }
    let mut publisher = RawClient::connected(b.addr, version, "dg-pub", true).await;
    // (topic, published QoS) -> delivered QoS = min(published, granted).
    let sent = [
        ("dg/0", QoS::ExactlyOnce, QoS::AtMostOnce),
        ("dg/0", QoS::AtLeastOnce, QoS::AtMostOnce),
        ("dg/1", QoS::ExactlyOnce, QoS::AtLeastOnce),
        ("dg/1", QoS::AtMostOnce, QoS::AtMostOnce),
        ("dg/2", QoS::AtLeastOnce, QoS::AtLeastOnce),
        ("dg/2", QoS::AtMostOnce, QoS::AtMostOnce),
    ];
    for (i, (topic, qos, _)) in sent.iter().enumerate() {
        let id = i as u16 + 1;
        let payload = format!("{i}");
        match qos {
            QoS::AtMostOnce => {
                publisher
                    .send(&raw_publish(topic, payload.as_bytes(), *qos, None))
                    .await
            }
            QoS::AtLeastOnce => {
                publish_qos1(&mut publisher, id, topic, payload.as_bytes()).await;
            }
            QoS::ExactlyOnce => {
                publish_qos2(&mut publisher, id, topic, payload.as_bytes()).await;
            }
        }
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let p = sub.expect_publish().await;
        assert_eq!(
            p.packet_id.is_some(),
            p.qos != QoS::AtMostOnce,
            "packet id exactly for QoS > 0 (MQTT-2.2.1-2): {p:?}"
        );
        acknowledge(&mut sub, &p).await;
        let i: usize = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
        got.push((i, p.topic.to_string(), p.qos));
    }
    got.sort();
    let want: Vec<_> = sent
        .iter()
        .enumerate()
        .map(|(i, (t, _, q))| (i, t.to_string(), *q))
        .collect();
    assert_eq!(got, want);
}

/// MQTT-3.8.4-8: a message is delivered at the minimum of its QoS and the subscription's
/// granted QoS (never upgraded).
#[tokio::test]
async fn delivery_qos_is_downgraded_to_subscription_qos_v5() {
    delivery_qos_is_the_minimum(V5).await;
}

/// 3.1.1 MQTT-3.8.4-6: a message is delivered at the minimum of its QoS and the subscription's
/// granted QoS.
#[tokio::test]
async fn delivery_qos_is_downgraded_to_subscription_qos_v311() {
    delivery_qos_is_the_minimum(V311).await;
}

/// MQTT-3.2.2-10, section 3.9.3 (3.1.1 MQTT-3.8.4-6): with `limits.maximum_qos = 1` a
/// SUBSCRIBE asking for QoS 2 is accepted and granted QoS 1, and QoS 1 is what it gets.
#[tokio::test]
async fn subscription_is_granted_at_most_the_maximum_qos() {
    let b = harness::start_with(|c| c.limits.maximum_qos = QoS::AtLeastOnce).await;
    for version in [V5, V311] {
        let mut sub = RawClient::connected(b.addr, version, "mq-sub", true).await;
        assert_eq!(
            sub.subscribe_one(1, "mq/t", QoS::ExactlyOnce).await,
            [ReasonCode::GRANTED_QOS_1]
        );
        let mut publisher = RawClient::connected(b.addr, version, "mq-pub", true).await;
        publish_qos1(&mut publisher, 1, "mq/t", b"x").await;
        assert_eq!(sub.expect_publish().await.qos, QoS::AtLeastOnce);
    }
}

/// MQTT-3.2.2-11, section 3.2.2.3.4: a v5 PUBLISH above the Maximum QoS the broker announced is
/// a Protocol Error answered with DISCONNECT 0x9B (QoS not supported).
#[tokio::test]
async fn v5_publish_above_maximum_qos_gets_qos_not_supported() {
    let b = harness::start_with(|c| c.limits.maximum_qos = QoS::AtLeastOnce).await;
    let mut c = RawClient::connected(b.addr, V5, "mq2", true).await;
    c.send(&raw_publish("mq/t", b"x", QoS::ExactlyOnce, Some(1)))
        .await;
    c.expect_disconnect(ReasonCode::QOS_NOT_SUPPORTED).await;
}

// --- Exactly once ----------------------------------------------------------------------------

async fn qos2_resent_publish_is_delivered_once(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, version, "x2-sub", true).await;
    sub.subscribe_one(1, "x2/t", QoS::ExactlyOnce).await;
    let mut publisher = RawClient::connected(b.addr, version, "x2-pub", true).await;

    publisher
        .send(&publish("x2/t", b"once", QoS::ExactlyOnce, Some(7), false))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubRec(PubResponse::success(7)))
    );
    // The publisher did not see the PUBREC (say) and resends with DUP before PUBREL.
    publisher
        .send(&publish("x2/t", b"once", QoS::ExactlyOnce, Some(7), true))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubRec(PubResponse::success(7))),
        "the duplicate is acknowledged with PUBREC too"
    );
    publisher
        .send(&Packet::PubRel(PubResponse::success(7)))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubComp(PubResponse::success(7))),
        "PUBREL is answered with PUBCOMP carrying its packet id"
    );

    let p = sub.expect_publish().await;
    assert_eq!(
        (&p.payload[..], p.qos, p.dup),
        (&b"once"[..], QoS::ExactlyOnce, false)
    );
    acknowledge(&mut sub, &p).await;

    // After PUBCOMP the same packet id starts a new message, delivered again.
    publish_qos2(&mut publisher, 7, "x2/t", b"again").await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"again", "the duplicate was not forwarded");
    acknowledge(&mut sub, &p).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.3.3-10, MQTT-4.3.3-11, MQTT-4.3.3-12: a QoS 2 PUBLISH resent (DUP) before PUBREL is
/// acknowledged with PUBREC again but delivered once; PUBREL gets PUBCOMP; after PUBCOMP the
/// packet id names a new message.
#[tokio::test]
async fn qos2_publish_resent_before_pubrel_is_delivered_once_v5() {
    qos2_resent_publish_is_delivered_once(V5).await;
}

/// 3.1.1 MQTT-4.3.3-2: the same exactly-once rules for 3.1.1.
#[tokio::test]
async fn qos2_publish_resent_before_pubrel_is_delivered_once_v311() {
    qos2_resent_publish_is_delivered_once(V311).await;
}

/// MQTT-4.3.3-11, section 3.7.2.1: PUBREL for a packet id the broker does not know is still
/// answered with PUBCOMP (v5: reason 0x92, Packet Identifier not found; 3.1.1: plain PUBCOMP).
#[tokio::test]
async fn pubrel_for_unknown_packet_id_gets_pubcomp() {
    let b = harness::start().await;
    for (version, reason) in [
        (V5, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
        (V311, ReasonCode::SUCCESS),
    ] {
        let mut c = RawClient::connected(b.addr, version, "rel", true).await;
        c.send(&Packet::PubRel(PubResponse::success(99))).await;
        match c.recv().await {
            Some(Packet::PubComp(r)) => {
                assert_eq!((r.packet_id, r.reason_code), (99, reason), "{version:?}")
            }
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
    }
}

/// MQTT-2.2.1-5, MQTT-3.3.4-1, MQTT-4.3.2-4, MQTT-4.3.3-8 (3.1.1 MQTT-2.3.1-6): the broker
/// answers a PUBLISH as its QoS requires, and PUBACK, PUBREC and PUBCOMP carry the packet
/// identifier of the PUBLISH or PUBREL they answer; a QoS 0 PUBLISH gets no answer (the next
/// packet is the PINGRESP asked for after it).
#[tokio::test]
async fn acknowledgements_carry_the_packet_identifier() {
    let b = harness::start().await;
    for version in [V5, V311] {
        let mut c = RawClient::connected(b.addr, version, "ids", true).await;
        c.send(&raw_publish("ids/t", b"x", QoS::AtMostOnce, None))
            .await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp), "{version:?}");
        publish_qos1(&mut c, 4242, "ids/t", b"x").await;
        publish_qos2(&mut c, 65535, "ids/t", b"x").await;
    }
}

/// Section 3.3.4 ("If it receives more than Receive Maximum QoS 1 and QoS 2 PUBLISH packets
/// where it has not sent a PUBACK or PUBCOMP in response, the Server uses a DISCONNECT packet
/// with Reason Code 0x93"), MQTT-3.3.4-7: with Receive Maximum 2, a third unfinished QoS 2
/// PUBLISH gets DISCONNECT 0x93.
#[tokio::test]
async fn v5_client_exceeding_receive_maximum_gets_disconnect() {
    let b = harness::start_with(|c| c.limits.receive_maximum = 2).await;
    let mut c = RawClient::connected(b.addr, V5, "rm", true).await;
    for id in 1..=2 {
        c.send(&raw_publish("rm/t", b"x", QoS::ExactlyOnce, Some(id)))
            .await;
        assert!(matches!(c.recv().await, Some(Packet::PubRec(r)) if r.packet_id == id));
    }
    c.send(&raw_publish("rm/t", b"x", QoS::ExactlyOnce, Some(3)))
        .await;
    c.expect_disconnect(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)
        .await;
}

// --- In-flight window ------------------------------------------------------------------------

/// MQTT-3.3.4-9, MQTT-4.9.0-1, MQTT-4.9.0-2: a subscriber with Receive Maximum 2 that does not
/// acknowledge gets exactly 2 QoS 1 messages (the initial send quota is its Receive Maximum);
/// each PUBACK lets exactly one more through, in order.
#[tokio::test]
async fn v5_inflight_window_follows_client_receive_maximum() {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(V5, "win", true);
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    sub.subscribe_one(1, "win/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "win-pub", true).await;
    for i in 0..4u16 {
        publish_qos1(&mut publisher, i + 1, "win/t", format!("m{i}").as_bytes()).await;
    }
    let m0 = sub.expect_publish().await;
    let m1 = sub.expect_publish().await;
    assert_eq!((&m0.payload[..], &m1.payload[..]), (&b"m0"[..], &b"m1"[..]));
    sub.expect_nothing(QUIET).await;

    acknowledge(&mut sub, &m0).await;
    let m2 = sub.expect_publish().await;
    assert_eq!(&m2.payload[..], b"m2");
    sub.expect_nothing(QUIET).await;

    acknowledge(&mut sub, &m1).await;
    let m3 = sub.expect_publish().await;
    assert_eq!(&m3.payload[..], b"m3");
    sub.expect_nothing(QUIET).await;
}

/// Section 4.9 (the send quota returns on PUBCOMP, not on PUBREC), MQTT-3.3.4-9: with Receive
/// Maximum 1 and QoS 2, the second message waits until the first one's PUBCOMP.
#[tokio::test]
async fn v5_qos2_inflight_slot_is_freed_by_pubcomp_not_pubrec() {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(V5, "win2", true);
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    sub.subscribe_one(1, "win2/t", QoS::ExactlyOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "win2-pub", true).await;
    publish_qos2(&mut publisher, 1, "win2/t", b"first").await;
    publish_qos2(&mut publisher, 2, "win2/t", b"second").await;

    let first = sub.expect_publish().await;
    assert_eq!(&first.payload[..], b"first");
    let id = first.packet_id.unwrap();
    sub.send(&Packet::PubRec(PubResponse::success(id))).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubRel(PubResponse::success(id)))
    );
    sub.expect_nothing(QUIET).await;
    sub.send(&Packet::PubComp(PubResponse::success(id))).await;
    let second = sub.expect_publish().await;
    assert_eq!(&second.payload[..], b"second");
}

/// `limits.max_inflight` bounds the window for 3.1.1 clients (which cannot announce a Receive
/// Maximum): with 2, an unacknowledging subscriber gets 2 QoS 1 messages until it acknowledges.
#[tokio::test]
async fn v311_inflight_window_follows_max_inflight() {
    let b = harness::start_with(|c| c.limits.max_inflight = 2).await;
    let mut sub = RawClient::connected(b.addr, V311, "win4", true).await;
    sub.subscribe_one(1, "win4/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, V311, "win4-pub", true).await;
    for i in 0..3u16 {
        publish_qos1(&mut publisher, i + 1, "win4/t", format!("m{i}").as_bytes()).await;
    }
    let m0 = sub.expect_publish().await;
    let _m1 = sub.expect_publish().await;
    sub.expect_nothing(QUIET).await;
    acknowledge(&mut sub, &m0).await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"m2");
}

// --- Redelivery ------------------------------------------------------------------------------

async fn unacked_publish_is_redelivered_with_dup(version: ProtocolVersion, qos: QoS) {
    let b = harness::start().await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "rd")).await;
    sub.subscribe_one(1, "rd/t", qos).await;
    let mut publisher = RawClient::connected(b.addr, version, "rd-pub", true).await;
    match qos {
        QoS::AtLeastOnce => publish_qos1(&mut publisher, 1, "rd/t", b"unacked").await,
        _ => publish_qos2(&mut publisher, 1, "rd/t", b"unacked").await,
    };
    let first = sub.expect_publish().await;
    assert!(!first.dup, "first delivery has DUP 0 (MQTT-3.3.1-3)");
    drop(sub); // no acknowledgement, no DISCONNECT

    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(version, "rd")).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup, "redelivery has DUP 1: {again:?}");
    assert_eq!(again.packet_id, first.packet_id, "original packet id");
    assert_eq!(
        (&again.topic, &again.payload, again.qos),
        (&first.topic, &first.payload, first.qos)
    );
    acknowledge(&mut sub, &again).await;
    sub.expect_nothing(QUIET).await;
    disconnect(&mut sub).await;

    // Acknowledged now: nothing to resend on the next reconnect.
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "rd")).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.4.0-1, MQTT-3.3.1-1, MQTT-4.3.2-3: an unacknowledged QoS 1 message is sent again when
/// the persistent session resumes, with DUP 1 and its original packet id; once acknowledged, it
/// is not.
#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_after_reconnect_v5() {
    unacked_publish_is_redelivered_with_dup(V5, QoS::AtLeastOnce).await;
}

/// 3.1.1 MQTT-4.4.0-1, MQTT-3.3.1-1, MQTT-4.3.2-1: the same for a 3.1.1 clean session 0
/// subscriber.
#[tokio::test]
async fn unacked_qos1_is_redelivered_with_dup_after_reconnect_v311() {
    unacked_publish_is_redelivered_with_dup(V311, QoS::AtLeastOnce).await;
}

/// MQTT-4.4.0-1, MQTT-3.3.1-1, MQTT-4.3.3-3: a QoS 2 PUBLISH never answered with PUBREC is sent
/// again with DUP 1 and its original packet id.
#[tokio::test]
async fn unacked_qos2_is_redelivered_with_dup_after_reconnect_v5() {
    unacked_publish_is_redelivered_with_dup(V5, QoS::ExactlyOnce).await;
}

/// 3.1.1 MQTT-4.4.0-1, MQTT-4.3.3-1: the same for QoS 2 and a 3.1.1 subscriber.
#[tokio::test]
async fn unacked_qos2_is_redelivered_with_dup_after_reconnect_v311() {
    unacked_publish_is_redelivered_with_dup(V311, QoS::ExactlyOnce).await;
}

/// MQTT-4.6.0-1, MQTT-4.4.0-1, MQTT-3.3.1-1: on resuming, the messages that were in flight
/// are resent first, in their original order and with DUP 1, and the messages queued behind
/// them follow in order with DUP 0.
#[tokio::test]
async fn redelivery_keeps_order_ahead_of_queued_messages() {
    let b = harness::start().await;
    let mut connect = persistent(V5, "ro");
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = RawClient::handshake(b.addr, connect.clone()).await;
    sub.subscribe_one(1, "ro/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "ro-pub", true).await;
    for i in 0..4u16 {
        publish_qos1(&mut publisher, i + 1, "ro/t", format!("m{i}").as_bytes()).await;
    }
    let m0 = sub.expect_publish().await;
    let m1 = sub.expect_publish().await;
    assert_eq!((&m0.payload[..], &m1.payload[..]), (&b"m0"[..], &b"m1"[..]));
    drop(sub); // m0 and m1 in flight, m2 and m3 queued

    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.expect_publish().await;
        got.push((String::from_utf8(p.payload.to_vec()).unwrap(), p.dup));
        acknowledge(&mut sub, &p).await;
    }
    assert_eq!(
        got,
        [
            ("m0".to_owned(), true),
            ("m1".to_owned(), true),
            ("m2".to_owned(), false),
            ("m3".to_owned(), false),
        ]
    );
    sub.expect_nothing(QUIET).await;
}

async fn pubrel_is_resent_after_reconnect(version: ProtocolVersion) {
    let b = harness::start().await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "rl")).await;
    sub.subscribe_one(1, "rl/t", QoS::ExactlyOnce).await;
    let mut publisher = RawClient::connected(b.addr, version, "rl-pub", true).await;
    publish_qos2(&mut publisher, 1, "rl/t", b"x").await;
    let p = sub.expect_publish().await;
    let id = p.packet_id.unwrap();
    sub.send(&Packet::PubRec(PubResponse::success(id))).await;
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubRel(PubResponse::success(id)))
    );
    drop(sub); // PUBCOMP never sent

    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(version, "rl")).await;
    assert!(ack.session_present);
    assert_eq!(
        sub.recv().await,
        Some(Packet::PubRel(PubResponse::success(id))),
        "PUBREL resent, and not the PUBLISH"
    );
    sub.send(&Packet::PubComp(PubResponse::success(id))).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.4.0-1, MQTT-4.3.3-4, MQTT-4.3.3-5, MQTT-4.3.3-6: after PUBREC the broker owes PUBREL
/// (with the same packet id); if PUBCOMP did not arrive it resends the PUBREL, and not the
/// PUBLISH, when the session resumes.
#[tokio::test]
async fn pubrel_is_resent_after_reconnect_v5() {
    pubrel_is_resent_after_reconnect(V5).await;
}

/// 3.1.1 MQTT-4.4.0-1, MQTT-4.3.3-1: the same for 3.1.1.
#[tokio::test]
async fn pubrel_is_resent_after_reconnect_v311() {
    pubrel_is_resent_after_reconnect(V311).await;
}

async fn publisher_resend_after_reconnect_is_delivered_once(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, version, "pr-sub", true).await;
    sub.subscribe_one(1, "pr/t", QoS::ExactlyOnce).await;
    let (mut publisher, _) = RawClient::handshake(b.addr, persistent(version, "pr")).await;
    publisher
        .send(&publish("pr/t", b"once", QoS::ExactlyOnce, Some(9), false))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubRec(PubResponse::success(9)))
    );
    drop(publisher); // PUBREC lost with the connection

    // The publisher resumes its session and resends the PUBLISH (DUP), then PUBREL.
    let (mut publisher, ack) = RawClient::handshake(b.addr, persistent(version, "pr")).await;
    assert!(ack.session_present);
    publisher
        .send(&publish("pr/t", b"once", QoS::ExactlyOnce, Some(9), true))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubRec(PubResponse::success(9)))
    );
    publisher
        .send(&Packet::PubRel(PubResponse::success(9)))
        .await;
    assert_eq!(
        publisher.recv().await,
        Some(Packet::PubComp(PubResponse::success(9))),
        "the packet id is still known to the resumed session"
    );

    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"once");
    acknowledge(&mut sub, &p).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-4.4.0-1 (the client resends too), MQTT-4.3.3-10: the broker keeps the inbound QoS 2
/// state in the session, so a publisher that reconnects and resends its QoS 2 PUBLISH with
/// DUP gets PUBREC and PUBCOMP, and subscribers get the message once.
#[tokio::test]
async fn qos2_publish_resent_after_publisher_reconnect_is_delivered_once_v5() {
    publisher_resend_after_reconnect_is_delivered_once(V5).await;
}

/// 3.1.1 MQTT-4.4.0-1, MQTT-4.3.3-2: the same for a 3.1.1 publisher with clean session 0.
#[tokio::test]
async fn qos2_publish_resent_after_publisher_reconnect_is_delivered_once_v311() {
    publisher_resend_after_reconnect_is_delivered_once(V311).await;
}

/// MQTT-4.4.0-2, section 4.9: a v5 PUBACK or PUBREC with a reason code of 0x80 or more
/// acknowledges the message: no PUBREL follows, its in-flight slot is freed, and it is not
/// resent when the session resumes.
#[tokio::test]
async fn v5_error_acknowledgement_ends_the_delivery() {
    let b = harness::start().await;
    let mut connect = persistent(V5, "nack");
    connect.properties.receive_maximum = Some(1);
    let (mut sub, _) = RawClient::handshake(b.addr, connect.clone()).await;
    sub.subscribe_one(1, "nack/1", QoS::AtLeastOnce).await;
    sub.subscribe_one(2, "nack/2", QoS::ExactlyOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "nack-pub", true).await;
    publish_qos1(&mut publisher, 1, "nack/1", b"one").await;
    publish_qos2(&mut publisher, 2, "nack/2", b"two").await;
    publish_qos1(&mut publisher, 3, "nack/1", b"three").await;

    let refuse = |id| PubResponse {
        packet_id: id,
        reason_code: ReasonCode::UNSPECIFIED_ERROR,
        properties: Default::default(),
    };
    let one = sub.expect_publish().await;
    assert_eq!(&one.payload[..], b"one");
    sub.send(&Packet::PubAck(refuse(one.packet_id.unwrap())))
        .await;
    let two = sub.expect_publish().await;
    assert_eq!(&two.payload[..], b"two");
    sub.send(&Packet::PubRec(refuse(two.packet_id.unwrap())))
        .await;
    // No PUBREL: the next packet is the next message, which the freed slot lets through.
    let three = sub.expect_publish().await;
    assert_eq!(&three.payload[..], b"three");
    acknowledge(&mut sub, &three).await;
    drop(sub);

    let (mut sub, ack) = RawClient::handshake(b.addr, connect).await;
    assert!(ack.session_present);
    sub.expect_nothing(QUIET).await;
}

// --- Offline queueing ------------------------------------------------------------------------

async fn offline_messages_arrive_in_order(version: ProtocolVersion) {
    let b = harness::start().await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "oq")).await;
    sub.subscribe_one(1, "oq/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    let mut publisher = RawClient::connected(b.addr, version, "oq-pub", true).await;
    for i in 0..5u16 {
        publish_qos1(&mut publisher, i + 1, "oq/t", format!("m{i}").as_bytes()).await;
    }
    let (mut sub, ack) = RawClient::handshake(b.addr, persistent(version, "oq")).await;
    assert!(ack.session_present);
    for i in 0..5 {
        let p = sub.expect_publish().await;
        assert_eq!(
            p.payload,
            format!("m{i}").as_bytes(),
            "message {i} in order"
        );
        assert!(!p.dup, "first delivery");
        acknowledge(&mut sub, &p).await;
    }
    sub.expect_nothing(QUIET).await;
}

/// Section 4.1 (QoS 1 and 2 messages pending transmission are session state), MQTT-4.6.0-6:
/// messages published while a persistent subscriber is offline are delivered when it
/// reconnects, in the order they were published.
#[tokio::test]
async fn offline_messages_are_delivered_in_order_on_reconnect_v5() {
    offline_messages_arrive_in_order(V5).await;
}

/// 3.1.1 section 4.1, MQTT-4.6.0-6 (3.1.1 section 4.6): the same for a clean session 0
/// subscriber.
#[tokio::test]
async fn offline_messages_are_delivered_in_order_on_reconnect_v311() {
    offline_messages_arrive_in_order(V311).await;
}

/// Section 4.1 with ordinary clients: a rumqttc 3.1.1 client with clean session 0 receives
/// what was published while it was away.
#[tokio::test]
async fn offline_messages_reach_a_rumqttc_persistent_session() {
    let b = harness::start().await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = Rumqtt4::connect(b.addr, "rc-oq", persistent).await;
    sub.subscribe("rcoq/t", rumqttc::QoS::AtLeastOnce).await;
    sub.client.disconnect().await.unwrap();
    assert!(sub.next().await.is_none(), "closed after DISCONNECT");
    drop(sub);

    let mut publisher = RawClient::connected(b.addr, V311, "rc-oq-pub", true).await;
    publish_qos1(&mut publisher, 1, "rcoq/t", b"while away").await;
    let mut sub = Rumqtt4::connect(b.addr, "rc-oq", persistent).await;
    let p = sub.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("rcoq/t", &b"while away"[..])
    );
}

async fn bounded_queue_keeps(overflow: QueueOverflow, kept: [&str; 3]) {
    let b = harness::start_with(|c| {
        c.limits.max_queued_messages = 3;
        c.limits.queue_overflow = overflow;
    })
    .await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(V5, "bq")).await;
    sub.subscribe_one(1, "bq/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    let mut publisher = RawClient::connected(b.addr, V5, "bq-pub", true).await;
    for i in 0..6u16 {
        publish_qos1(&mut publisher, i + 1, "bq/t", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(b.broker.metrics().dropped_by(DropCause::QueueFull), 3);

    let (mut sub, _) = RawClient::handshake(b.addr, persistent(V5, "bq")).await;
    for want in kept {
        let p = sub.expect_publish().await;
        assert_eq!(p.payload, want.as_bytes());
        acknowledge(&mut sub, &p).await;
    }
    sub.expect_nothing(QUIET).await;
    assert_eq!(b.broker.metrics().dropped_by(DropCause::QueueFull), 3);
}

/// `limits.max_queued_messages = 3` with `drop-oldest`: of 6 messages queued for an offline
/// subscriber it gets the last 3, and the 3 dropped are counted as QueueFull.
#[tokio::test]
async fn bounded_queue_drop_oldest_keeps_the_newest_messages() {
    bounded_queue_keeps(QueueOverflow::DropOldest, ["m3", "m4", "m5"]).await;
}

/// `limits.max_queued_messages = 3` with `drop-newest`: the subscriber gets the first 3, and
/// the 3 dropped are counted as QueueFull.
#[tokio::test]
async fn bounded_queue_drop_newest_keeps_the_oldest_messages() {
    bounded_queue_keeps(QueueOverflow::DropNewest, ["m0", "m1", "m2"]).await;
}

async fn qos0_for_offline_session(version: ProtocolVersion, queue_qos0: bool) {
    let b = harness::start_with(|c| c.limits.queue_qos0_offline = queue_qos0).await;
    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "q0")).await;
    sub.subscribe_one(1, "q0/t", QoS::AtLeastOnce).await;
    disconnect(&mut sub).await;

    let mut publisher = RawClient::connected(b.addr, version, "q0-pub", true).await;
    publisher
        .send(&raw_publish("q0/t", b"zero", QoS::AtMostOnce, None))
        .await;
    publish_qos1(&mut publisher, 1, "q0/t", b"one").await;

    let (mut sub, _) = RawClient::handshake(b.addr, persistent(version, "q0")).await;
    if queue_qos0 {
        let p = sub.expect_publish().await;
        assert_eq!((&p.payload[..], p.qos), (&b"zero"[..], QoS::AtMostOnce));
    }
    let p = sub.expect_publish().await;
    assert_eq!((&p.payload[..], p.qos), (&b"one"[..], QoS::AtLeastOnce));
    acknowledge(&mut sub, &p).await;
    sub.expect_nothing(QUIET).await;
    assert_eq!(
        b.broker.metrics().publish_dropped(),
        0,
        "not counted as a drop"
    );
}

/// Section 4.1 / 3.1.2.4 (QoS 0 messages MAY be stored for an offline session): by default
/// (`queue_qos0_offline = false`) QoS 0 messages are not queued for an offline session; QoS 1
/// ones are.
#[tokio::test]
async fn qos0_is_not_queued_for_offline_session_by_default() {
    qos0_for_offline_session(V5, false).await;
    qos0_for_offline_session(V311, false).await;
}

/// With `queue_qos0_offline = true`, QoS 0 messages are queued for an offline session too, in
/// order with the QoS 1 ones.
#[tokio::test]
async fn qos0_is_queued_for_offline_session_when_configured() {
    qos0_for_offline_session(V5, true).await;
    qos0_for_offline_session(V311, true).await;
}

// --- Acknowledgement reason codes ------------------------------------------------------------

/// Sections 3.4.2.1 and 3.5.2.1: a v5 PUBACK (QoS 1) or PUBREC (QoS 2) for a message nobody
/// subscribes to carries reason 0x10 (No matching subscribers); with a subscriber, 0x00. The
/// 3.1.1 acknowledgement has no reason code and is just `40 02 <id>`.
#[tokio::test]
async fn puback_reports_no_matching_subscribers() {
    let b = harness::start().await;
    let mut c = RawClient::connected(b.addr, V5, "nm", true).await;
    assert_eq!(publish_qos1(&mut c, 1, "nobody/home", b"x").await, 0x10);
    assert_eq!(publish_qos2(&mut c, 2, "nobody/home", b"x").await, 0x10);

    let mut sub = RawClient::connected(b.addr, V5, "nm-sub", true).await;
    sub.subscribe_one(1, "nobody/home", QoS::AtMostOnce).await;
    assert_eq!(publish_qos1(&mut c, 3, "nobody/home", b"x").await, 0x00);
    assert_eq!(publish_qos2(&mut c, 4, "nobody/home", b"x").await, 0x00);

    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, "nm4", true,
    ))))
    .await;
    c.send(&raw_publish("nobody/else", b"x", QoS::AtLeastOnce, Some(5)))
        .await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    assert_eq!(
        c.read_to_close().await,
        [0x20, 0x02, 0x00, 0x00, 0x40, 0x02, 0x00, 0x05]
    );
}

// --- `$` topics ------------------------------------------------------------------------------

async fn dollar_topics_are_refused(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, version, "dl-sub", true).await;
    for (i, filter) in ["$SYS/#", "$foo/#", "#", "dl/marker"]
        .into_iter()
        .enumerate()
    {
        sub.subscribe_one(i as u16 + 1, filter, QoS::AtLeastOnce)
            .await;
    }
    let mut c = RawClient::connected(b.addr, version, "dl", true).await;
    let refused = match version {
        V5 => 0x87,
        V311 => 0x00, // 3.1.1 cannot refuse: acknowledged and dropped
    };
    assert_eq!(publish_qos1(&mut c, 1, "$SYS/x", b"fake").await, refused);
    assert_eq!(publish_qos1(&mut c, 2, "$foo/bar", b"fake").await, refused);
    assert_eq!(publish_qos2(&mut c, 3, "$SYS/y", b"fake").await, refused);
    let mut retained = raw_publish("$SYS/z", b"fake", QoS::AtMostOnce, None);
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    c.send(&retained).await;
    publish_qos1(&mut c, 4, "dl/marker", b"marker").await;

    // Had any `$` message been routed, it would arrive before the marker.
    let p = sub.expect_publish().await;
    assert_eq!(&*p.topic, "dl/marker");
    acknowledge(&mut sub, &p).await;
    sub.expect_nothing(QUIET).await;
    assert_eq!(b.broker.metrics().retained_messages, 0);
    assert_eq!(
        b.broker.metrics().clients_connected,
        2,
        "refusal is not a disconnect"
    );
}

/// Section 4.7.2 (topics beginning with `$` are the server's): a client's PUBLISH to `$SYS/x`
/// or any `$` topic is refused (QoS 1 PUBACK / QoS 2 PUBREC 0x87, Not authorized), neither
/// delivered to `$SYS/#` subscribers nor retained.
#[tokio::test]
async fn publishing_to_dollar_topics_is_refused_v5() {
    dollar_topics_are_refused(V5).await;
}

/// Section 4.7.2 of 3.1.1: a 3.1.1 client's PUBLISH to a `$` topic is acknowledged (3.1.1 has
/// no negative acknowledgement) but neither delivered nor retained.
#[tokio::test]
async fn publishing_to_dollar_topics_is_dropped_v311() {
    dollar_topics_are_refused(V311).await;
}
