//! Will messages: when they are published (abnormal close, keep alive, protocol error,
//! DISCONNECT 0x04, session takeover) and when not (normal DISCONNECT, reconnect within the
//! will delay), and how (QoS, retain, delay, properties).

use std::time::Duration;

use bytes::Bytes;
use moat::codec::ProtocolVersion::{self, V5, V311};
use moat::codec::{
    ConnAck, Connect, Disconnect, Packet, Properties, PubResponse, Publish, QoS, ReasonCode, Will,
};

use crate::harness::{self, RawClient, Rumqtt4, Rumqtt5, raw_connect_packet};

/// How long "the will is not published" is watched for, when nothing is delayed.
const QUIET: Duration = Duration::from_millis(500);

/// A clean-start CONNECT carrying a will on `topic` with payload "gone: {client_id}".
fn with_will(version: ProtocolVersion, client_id: &str, topic: &str, qos: QoS) -> Connect {
    let mut c = raw_connect_packet(version, client_id, true);
    c.will = Some(Will {
        topic: topic.into(),
        payload: Bytes::from(format!("gone: {client_id}")),
        qos,
        retain: false,
        properties: Properties::default(),
    });
    c
}

/// A v5 CONNECT with a will (topic `topic`), a session expiry and a will delay, in seconds.
fn with_delayed_will(client_id: &str, topic: &str, session_expiry: u32, delay: u32) -> Connect {
    let mut c = with_will(V5, client_id, topic, QoS::AtLeastOnce);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(session_expiry);
    c.will.as_mut().unwrap().properties.will_delay_interval = Some(delay);
    c
}

/// A raw subscriber to `filter` at QoS 2.
async fn subscriber(b: &harness::TestBroker, version: ProtocolVersion, filter: &str) -> RawClient {
    let mut sub = RawClient::connected(b.addr, version, &format!("sub-{filter}"), true).await;
    sub.subscribe_one(1, filter, QoS::ExactlyOnce).await;
    sub
}

/// Waits for the will of `client_id` and checks its topic, payload and RETAIN 0.
async fn expect_will(sub: &mut RawClient, topic: &str, client_id: &str) -> Publish {
    let p = sub.expect_publish().await;
    assert_eq!(&*p.topic, topic);
    assert_eq!(p.payload, format!("gone: {client_id}").as_bytes());
    assert!(!p.retain, "sent for an established subscription: RETAIN 0");
    if let Some(id) = p.packet_id {
        match p.qos {
            QoS::AtLeastOnce => sub.send(&Packet::PubAck(PubResponse::success(id))).await,
            _ => sub.send(&Packet::PubRec(PubResponse::success(id))).await,
        }
    }
    p
}

async fn normal_disconnect(c: &mut RawClient) {
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    assert_eq!(c.closed().await, vec![]);
}

// --- Published or not ------------------------------------------------------------------------

/// MQTT-3.1.2-8 (3.1.1 and 5.0), section 3.1.2.5: an ordinary client (rumqttc, both versions)
/// whose connection drops without DISCONNECT has its will, stored with its session
/// (MQTT-3.1.2-7), published at the will QoS and without RETAIN (MQTT-3.1.2-14; 3.1.1
/// MQTT-3.1.2-16).
#[tokio::test]
async fn will_is_published_when_connection_drops_without_disconnect() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/drop/+").await;

    let v4 = Rumqtt4::connect(b.addr, "drop4", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "w/drop/4",
            "gone: drop4",
            rumqttc::QoS::AtLeastOnce,
            false,
        ));
    })
    .await;
    drop(v4);
    let p = expect_will(&mut sub, "w/drop/4", "drop4").await;
    assert_eq!(p.qos, QoS::AtLeastOnce);

    let (v5, _) = Rumqtt5::connect(b.addr, "drop5", |o| {
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            "w/drop/5",
            "gone: drop5",
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
            false,
            None,
        ));
    })
    .await;
    drop(v5);
    let p = expect_will(&mut sub, "w/drop/5", "drop5").await;
    assert_eq!(p.qos, QoS::ExactlyOnce);
    assert_eq!(b.broker.metrics().retained_messages, 0);
}

async fn no_will_after_normal_disconnect(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = subscriber(&b, version, "w/normal").await;
    let (mut c, _) = RawClient::handshake(
        b.addr,
        with_will(version, "normal", "w/normal", QoS::AtLeastOnce),
    )
    .await;
    normal_disconnect(&mut c).await;
    sub.expect_nothing(QUIET).await;
}

/// MQTT-3.1.2-10, MQTT-3.14.4-3: DISCONNECT with reason 0x00 discards the will; it is not
/// published.
#[tokio::test]
async fn will_is_not_published_after_normal_disconnect_v5() {
    no_will_after_normal_disconnect(V5).await;
}

/// 3.1.1 MQTT-3.1.2-10, MQTT-3.14.4-3: DISCONNECT discards the will.
#[tokio::test]
async fn will_is_not_published_after_normal_disconnect_v311() {
    no_will_after_normal_disconnect(V311).await;
}

/// Section 3.14.2.1 (reason 0x04, Disconnect with Will Message), MQTT-3.1.2-8: a v5 client
/// that disconnects with 0x04 has its will published.
#[tokio::test]
async fn v5_will_is_published_on_disconnect_with_will_message() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/04").await;
    let (mut c, _) =
        RawClient::handshake(b.addr, with_will(V5, "dww", "w/04", QoS::AtMostOnce)).await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::DISCONNECT_WITH_WILL,
    )))
    .await;
    assert_eq!(c.closed().await, vec![]);
    let p = expect_will(&mut sub, "w/04", "dww").await;
    assert_eq!(p.qos, QoS::AtMostOnce);
}

/// MQTT-3.1.2-8 and MQTT-3.14.4-3 (only "DISCONNECT with a Reason Code of 0x00" discards the
/// will), section 3.1.2.5 ("The Client closes the Network Connection without first sending a
/// DISCONNECT packet with a Reason Code 0x00"): a v5 client that disconnects with an error
/// reason code (0x80 Unspecified error, 0x83 Implementation specific error) has its will
/// published.
#[tokio::test]
async fn v5_will_is_published_on_disconnect_with_error_reason_code() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/err/+").await;
    for (i, reason) in [
        ReasonCode::UNSPECIFIED_ERROR,
        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("err{i}");
        let topic = format!("w/err/{i}");
        let (mut c, _) =
            RawClient::handshake(b.addr, with_will(V5, &id, &topic, QoS::AtMostOnce)).await;
        c.send(&Packet::Disconnect(Disconnect::new(reason))).await;
        assert_eq!(c.closed().await, vec![]);
        expect_will(&mut sub, &topic, &id).await;
    }
}

async fn will_on_keep_alive_timeout(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = subscriber(&b, version, "w/ka").await;
    let mut connect = with_will(version, "ka", "w/ka", QoS::AtLeastOnce);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::handshake(b.addr, connect).await;
    c.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
    expect_will(&mut sub, "w/ka", "ka").await;
}

/// MQTT-3.1.2-8, MQTT-3.1.2-22, section 3.1.2.5 ("The Client fails to communicate within the
/// Keep Alive time"): the will is published when the broker closes a silent connection.
#[tokio::test]
async fn will_is_published_on_keep_alive_timeout_v5() {
    will_on_keep_alive_timeout(V5).await;
}

/// 3.1.1 MQTT-3.1.2-8, MQTT-3.1.2-24: the will is published on keep alive timeout.
#[tokio::test]
async fn will_is_published_on_keep_alive_timeout_v311() {
    will_on_keep_alive_timeout(V311).await;
}

async fn will_on_protocol_error(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = subscriber(&b, version, "w/bad").await;
    let (mut c, _) =
        RawClient::handshake(b.addr, with_will(version, "bad", "w/bad", QoS::AtLeastOnce)).await;
    c.send_bytes(&[0x20, 0x02, 0x00, 0x00]).await; // CONNACK: only servers send it
    c.closed().await;
    expect_will(&mut sub, "w/bad", "bad").await;
}

/// MQTT-3.1.2-8, section 3.1.2.5 ("The Server closes the Network Connection without first
/// receiving a DISCONNECT packet with a Reason Code 0x00"): a connection closed for a protocol
/// error has its will published.
#[tokio::test]
async fn will_is_published_when_broker_closes_for_protocol_error_v5() {
    will_on_protocol_error(V5).await;
}

/// 3.1.1 MQTT-3.1.2-8 (3.1.1 section 3.1.2.5: "The Server closes the Network Connection
/// because of a protocol error"): the will is published.
#[tokio::test]
async fn will_is_published_when_broker_closes_for_protocol_error_v311() {
    will_on_protocol_error(V311).await;
}

// --- QoS and retain --------------------------------------------------------------------------

/// MQTT-3.1.2-12 (3.1.1 MQTT-3.1.2-14), MQTT-3.8.4-8: the will is published at its Will QoS,
/// then delivered at the minimum of that and the subscription's QoS.
#[tokio::test]
async fn will_qos_is_honoured() {
    let b = harness::start().await;
    for version in [V5, V311] {
        let mut sub2 = RawClient::connected(b.addr, version, "wq-sub2", true).await;
        sub2.subscribe_one(1, "w/q/+", QoS::ExactlyOnce).await;
        let mut sub1 = RawClient::connected(b.addr, version, "wq-sub1", true).await;
        sub1.subscribe_one(1, "w/q/+", QoS::AtLeastOnce).await;
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let id = format!("wq{i}");
            let topic = format!("w/q/{i}");
            let (c, _) = RawClient::handshake(b.addr, with_will(version, &id, &topic, qos)).await;
            drop(c);
            let p = expect_will(&mut sub2, &topic, &id).await;
            assert_eq!(p.qos, qos, "{version:?}: QoS 2 subscriber");
            let p = expect_will(&mut sub1, &topic, &id).await;
            assert_eq!(
                p.qos,
                qos.min(QoS::AtLeastOnce),
                "{version:?}: QoS 1 subscriber"
            );
        }
    }
}

async fn will_retain_stores_a_retained_message(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut live = subscriber(&b, version, "w/ret").await;
    let mut connect = with_will(version, "ret", "w/ret", QoS::AtLeastOnce);
    connect.will.as_mut().unwrap().retain = true;
    let (c, _) = RawClient::handshake(b.addr, connect).await;
    drop(c);
    expect_will(&mut live, "w/ret", "ret").await;
    harness::eventually("the will is retained", || {
        b.broker.metrics().retained_messages == 1
    })
    .await;

    // A subscriber that comes later gets it as a retained message.
    let mut late = RawClient::connected(b.addr, version, "late", true).await;
    late.subscribe_one(1, "w/ret", QoS::AtLeastOnce).await;
    let p = late.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("w/ret", &b"gone: ret"[..]));
    assert!(p.retain, "delivered as retained (MQTT-3.3.1-8)");
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

/// MQTT-3.1.2-15: a will with Will Retain 1 is published as a retained message: stored, and
/// sent with RETAIN 1 to a later subscriber.
#[tokio::test]
async fn will_retain_flag_stores_a_retained_message_v5() {
    will_retain_stores_a_retained_message(V5).await;
}

/// 3.1.1 MQTT-3.1.2-17: a will with Will Retain 1 is published as a retained message.
#[tokio::test]
async fn will_retain_flag_stores_a_retained_message_v311() {
    will_retain_stores_a_retained_message(V311).await;
}

/// Section 3.1.3.2 (will properties are "sent with the Will Message when it is published"),
/// MQTT-3.1.3-10: a v5 will keeps its content type, response topic, correlation data, payload
/// format indicator and user properties, in order.
#[tokio::test]
async fn v5_will_properties_are_forwarded() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/props").await;
    let mut connect = with_will(V5, "props", "w/props", QoS::AtLeastOnce);
    let p = &mut connect.will.as_mut().unwrap().properties;
    p.content_type = Some("text/plain".into());
    p.response_topic = Some("w/reply".into());
    p.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
    p.payload_format_indicator = Some(1);
    p.user_properties = vec![
        ("k".into(), "2".into()),
        ("a".into(), "1".into()),
        ("k".into(), "0".into()),
    ];
    let (c, _) = RawClient::handshake(b.addr, connect).await;
    drop(c);
    let will = expect_will(&mut sub, "w/props", "props").await;
    let p = will.properties;
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("w/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(p.payload_format_indicator, Some(1));
    let users: Vec<(&str, &str)> = p
        .user_properties
        .iter()
        .map(|(k, v)| (&**k, &**v))
        .collect();
    assert_eq!(users, [("k", "2"), ("a", "1"), ("k", "0")]);
    assert_eq!(p.will_delay_interval, None, "not a PUBLISH property");
}

/// A will on a `$` topic is refused at CONNECT (clients may not publish to `$` topics,
/// section 4.7.2; MQTT-3.1.4-2, MQTT-3.2.2-7): v5 CONNACK 0x87 (Not authorized), 3.1.1
/// return code 5, then close.
#[tokio::test]
async fn will_on_dollar_topic_is_refused_at_connect() {
    let b = harness::start().await;
    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(with_will(
        V5,
        "dollar",
        "$SYS/will",
        QoS::AtMostOnce,
    ))))
    .await;
    let seen = c.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(ConnAck { session_present: false, reason_code, .. })] if *reason_code == ReasonCode::NOT_AUTHORIZED),
        "got {seen:?}"
    );
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(with_will(
        V311,
        "dollar",
        "$foo",
        QoS::AtMostOnce,
    ))))
    .await;
    assert_eq!(c.read_to_close().await, [0x20, 0x02, 0x00, 0x05]);
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// MQTT-3.2.2-12, MQTT-3.2.2-13: a will the broker cannot honour is refused at CONNECT: Will
/// QoS above `limits.maximum_qos` with CONNACK 0x9B (QoS not supported), Will Retain when
/// `limits.retain_available = false` with CONNACK 0x9A (Retain not supported).
#[tokio::test]
async fn v5_will_beyond_server_capabilities_is_refused() {
    let b = harness::start_with(|c| {
        c.limits.maximum_qos = QoS::AtLeastOnce;
        c.limits.retain_available = false;
    })
    .await;
    let too_high = with_will(V5, "cap-q", "w/cap", QoS::ExactlyOnce);
    let mut retained = with_will(V5, "cap-r", "w/cap", QoS::AtMostOnce);
    retained.will.as_mut().unwrap().retain = true;
    for (connect, reason) in [
        (too_high, ReasonCode::QOS_NOT_SUPPORTED),
        (retained, ReasonCode::RETAIN_NOT_SUPPORTED),
    ] {
        let mut c = RawClient::connect(b.addr, V5).await;
        c.send(&Packet::Connect(Box::new(connect))).await;
        let seen = c.closed().await;
        assert!(
            matches!(seen.as_slice(), [Packet::ConnAck(a)] if a.reason_code == reason && !a.session_present),
            "wanted CONNACK {:#04x}, got {seen:?}",
            reason.0
        );
    }
}

// --- Will delay (5.0) ------------------------------------------------------------------------

/// MQTT-3.1.2-8, section 3.1.3.2.2: with Will Delay Interval 1 s (and a longer session
/// expiry), the will is published after the delay, not at the close.
#[tokio::test]
async fn v5_will_is_published_after_will_delay() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/delay").await;
    let (c, _) = RawClient::handshake(b.addr, with_delayed_will("delay", "w/delay", 10, 1)).await;
    drop(c);
    sub.expect_nothing(QUIET).await;
    expect_will(&mut sub, "w/delay", "delay").await;
}

/// MQTT-3.1.3-9: a client that reconnects to its session (clean start 0) before the Will Delay
/// Interval has passed cancels the will.
#[tokio::test]
async fn v5_will_is_not_published_if_client_reconnects_within_delay() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/back").await;
    let (c, _) = RawClient::handshake(b.addr, with_delayed_will("back", "w/back", 10, 1)).await;
    drop(c);
    let mut again = raw_connect_packet(V5, "back", false);
    again.properties.session_expiry_interval = Some(10);
    let (_c, ack) = RawClient::handshake(b.addr, again).await;
    assert!(ack.session_present);
    // Well past the 1 s delay.
    sub.expect_nothing(Duration::from_millis(2000)).await;
}

/// Section 3.1.3.2.2 ("until the Will Delay Interval has passed or the Session ends, whichever
/// happens first"), MQTT-3.1.2-8: with Session Expiry 0 the session ends at the close, so a
/// will with a 30 s delay is published at once.
#[tokio::test]
async fn v5_will_delay_is_cut_short_when_the_session_ends_at_close() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/short").await;
    let (c, _) = RawClient::handshake(b.addr, with_delayed_will("short", "w/short", 0, 30)).await;
    drop(c);
    expect_will(&mut sub, "w/short", "short").await;
}

/// Section 3.1.3.2.2: a will whose delay (30 s) outlasts the session (expiry 1 s) is published
/// when the session expires.
#[tokio::test]
async fn v5_will_is_published_when_the_session_expires_before_the_delay() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/exp").await;
    let (c, _) = RawClient::handshake(b.addr, with_delayed_will("exp", "w/exp", 1, 30)).await;
    drop(c);
    expect_will(&mut sub, "w/exp", "exp").await;
}

/// Section 3.1.3.2.2 (non-normative: "if Clean Start is 1 the Will Message is sent because the
/// Session ends"), MQTT-3.1.2-4: reconnecting with clean start 1 within the will delay ends the
/// old session, so its will is published (at once, not after the 30 s delay).
#[tokio::test]
async fn v5_reconnect_with_clean_start_within_delay_publishes_the_will() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/fresh").await;
    let (c, _) = RawClient::handshake(b.addr, with_delayed_will("fresh", "w/fresh", 60, 30)).await;
    drop(c);
    let (_c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "fresh", true)).await;
    assert!(!ack.session_present);
    expect_will(&mut sub, "w/fresh", "fresh").await;
}

// --- Session takeover ------------------------------------------------------------------------

async fn will_on_takeover(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut sub = subscriber(&b, version, "w/to").await;
    let mut first = with_will(version, "to", "w/to", QoS::AtLeastOnce);
    first.clean_start = false;
    if version == V5 {
        first.properties.session_expiry_interval = Some(60);
    }
    let (mut c1, _) = RawClient::handshake(b.addr, first).await;
    let mut second = raw_connect_packet(version, "to", false);
    if version == V5 {
        second.properties.session_expiry_interval = Some(60);
    }
    let (_c2, ack) = RawClient::handshake(b.addr, second).await;
    assert!(ack.session_present);
    c1.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
    expect_will(&mut sub, "w/to", "to").await;
    // The new connection has no will: nothing more.
    sub.expect_nothing(QUIET).await;
}

/// MQTT-3.1.4-3 ("If the existing Client has a Will Message, that Will Message is published as
/// described in section 3.1.2.5"), MQTT-3.1.2-8: a takeover closes the old connection without
/// DISCONNECT, so its will (delay 0) is published, even though the session carries over.
#[tokio::test]
async fn will_is_published_on_session_takeover_v5() {
    will_on_takeover(V5).await;
}

/// 3.1.1 MQTT-3.1.4-2, MQTT-3.1.2-8: the server disconnects the existing client, which sent
/// no DISCONNECT, so its will is published.
#[tokio::test]
async fn will_is_published_on_session_takeover_v311() {
    will_on_takeover(V311).await;
}

/// MQTT-3.1.3-9, section 3.1.3.2.2 (non-normative: "the Will Message for the existing
/// connection is sent unless the new connection specifies Clean Start of 0 and the Will Delay
/// is greater than zero"): a takeover with clean start 0 within a 1 s will delay cancels it.
#[tokio::test]
async fn v5_takeover_within_will_delay_cancels_the_will() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/tod").await;
    let (mut c1, _) = RawClient::handshake(b.addr, with_delayed_will("tod", "w/tod", 60, 1)).await;
    let mut second = raw_connect_packet(V5, "tod", false);
    second.properties.session_expiry_interval = Some(60);
    let (_c2, ack) = RawClient::handshake(b.addr, second).await;
    assert!(ack.session_present);
    c1.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
    sub.expect_nothing(Duration::from_millis(2000)).await;
}

/// Section 3.1.4 (non-normative: "If the Session Expiry Interval of the existing Network
/// Connection is 0 ... the original Session is ended on the takeover"), section 3.1.3.2.2: the
/// will of a connection with Session Expiry 0 is published on takeover despite its 30 s delay.
#[tokio::test]
async fn v5_takeover_of_session_with_expiry_0_publishes_the_delayed_will() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/toz").await;
    let (mut c1, _) = RawClient::handshake(b.addr, with_delayed_will("toz", "w/toz", 0, 30)).await;
    let mut second = raw_connect_packet(V5, "toz", false);
    second.properties.session_expiry_interval = Some(60);
    let (_c2, _) = RawClient::handshake(b.addr, second).await;
    c1.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
    expect_will(&mut sub, "w/toz", "toz").await;
}

/// Section 3.1.4 (non-normative: "if the new Network Connection has Clean Start set to 1 then
/// if the existing Network Connection has a Will Message it will be sent because the original
/// Session is ended on the takeover"): even with a 30 s will delay, the will is published.
#[tokio::test]
async fn v5_takeover_with_clean_start_publishes_the_delayed_will() {
    let b = harness::start().await;
    let mut sub = subscriber(&b, V5, "w/toc").await;
    let (mut c1, _) = RawClient::handshake(b.addr, with_delayed_will("toc", "w/toc", 60, 30)).await;
    let (_c2, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "toc", true)).await;
    assert!(!ack.session_present);
    c1.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
    expect_will(&mut sub, "w/toc", "toc").await;
}
