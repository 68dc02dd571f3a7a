//! CONNECT and CONNACK: the handshake, client identifiers, protocol levels, sessions (present
//! flag, clean start, expiry, takeover), keep alive, the CONNECT timeout and broker shutdown.

use std::time::Duration;

use moat::codec::ProtocolVersion::{self, V5, V311};
use moat::codec::{Connect, Disconnect, Packet, QoS, ReasonCode};

use crate::harness::{self, RawClient, Rumqtt4, Rumqtt5, raw_connect_packet, raw_publish};

/// A CONNECT that asks for a session that outlives the connection: clean session 0 in 3.1.1,
/// and in 5.0 clean start 0 with a session expiry of `expiry` seconds.
fn persistent(version: ProtocolVersion, client_id: &str, expiry: u32) -> Connect {
    let mut c = raw_connect_packet(version, client_id, false);
    if version == V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

/// Sends a normal DISCONNECT and waits for the broker to close the connection.
async fn disconnect(client: &mut RawClient) {
    client
        .send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
    assert_eq!(client.closed().await, vec![], "nothing after DISCONNECT");
}

/// Publishes at QoS 1 from `publisher` and returns the PUBACK's reason code.
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

/// The raw bytes of a CONNECT with any protocol name and level (and a 3.1.1-style body:
/// clean session, keep alive 0, client id "a").
fn connect_bytes(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, 0x02, 0x00, 0x00, 0x00, 0x01, b'a']);
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

// --- CONNACK ---------------------------------------------------------------------------------

/// MQTT-3.1.4-5, MQTT-3.2.2-2, section 3.2.2.3: a v5 CONNACK accepting a clean start has
/// reason 0x00, Session Present 0, and advertises the configured Receive Maximum (3.2.2.3.3),
/// Maximum Packet Size (3.2.2.3.6) and Topic Alias Maximum (3.2.2.3.8). A client that chose its
/// own identifier gets no Assigned Client Identifier, and one granted the session expiry it asked
/// for gets no Session Expiry Interval back (3.2.2.3.2).
#[tokio::test]
async fn v5_connack_advertises_configured_limits() {
    let b = harness::start_with(|c| {
        c.limits.receive_maximum = 10;
        c.limits.max_packet_size = 4096;
        c.limits.topic_alias_maximum = 5;
    })
    .await;
    let (_c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "limits", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(10));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert_eq!(p.assigned_client_identifier, None);
    assert_eq!(p.session_expiry_interval, None);
    assert_eq!(p.server_keep_alive, None);
    // QoS 2 and retain are supported: absent means available (3.2.2.3.4, 3.2.2.3.5).
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.retain_available, None);
}

/// MQTT-3.2.2-9, section 3.2.2.3.5: a server that does not support QoS 2 or retained messages
/// says so in CONNACK (Maximum QoS 1, Retain Available 0).
#[tokio::test]
async fn v5_connack_reports_maximum_qos_and_retain_unavailable() {
    let b = harness::start_with(|c| {
        c.limits.maximum_qos = QoS::AtLeastOnce;
        c.limits.retain_available = false;
    })
    .await;
    let (_c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "caps", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(ack.properties.retain_available, Some(0));
}

/// Section 3.2.2.3.2: when the server grants a shorter session expiry than asked for
/// (`limits.max_session_expiry`), CONNACK carries the value it uses.
#[tokio::test]
async fn v5_connack_reports_capped_session_expiry() {
    let b = harness::start_with(|c| c.limits.max_session_expiry = 10).await;
    let (_c, ack) = RawClient::handshake(b.addr, persistent(V5, "capped", 100)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack.properties.session_expiry_interval, Some(10));
}

/// 3.1.1 MQTT-3.2.2-1, MQTT-3.2.0-1 (3.1.1 section 3.2): a 3.1.1 CONNACK is exactly
/// `20 02 00 00` for an accepted clean session.
#[tokio::test]
async fn v311_connack_is_return_code_0_without_session_present() {
    let b = harness::start().await;
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, "plain", true,
    ))))
    .await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    assert_eq!(c.read_to_close().await, [0x20, 0x02, 0x00, 0x00]);
}

/// MQTT-3.1.4-5: ordinary clients (rumqttc, 3.1.1 and 5.0) connect and get a successful
/// CONNACK without Session Present.
#[tokio::test]
async fn rumqttc_clients_connect_with_both_protocol_versions() {
    let b = harness::start().await;
    let _v4 = Rumqtt4::connect(b.addr, "rumqttc-v4", |_| {}).await;
    let (_v5, ack) = Rumqtt5::connect(b.addr, "rumqttc-v5", |_| {}).await;
    assert!(!ack.session_present);
    harness::eventually("two clients connected", || {
        b.broker.metrics().clients_connected == 2
    })
    .await;
}

// --- Client identifiers ----------------------------------------------------------------------

/// MQTT-3.1.3-6, MQTT-3.1.3-7, MQTT-3.2.2-16: a v5 client with an empty client identifier is
/// accepted (with clean start 1, or 0 and a session expiry), gets a non-empty Assigned Client Identifier that no
/// other session uses, and the broker treats it as that client's identifier: connecting with it
/// takes the session over.
#[tokio::test]
async fn v5_empty_client_id_gets_a_unique_assigned_identifier() {
    let b = harness::start().await;
    let (_a, ack_a) = RawClient::handshake(b.addr, raw_connect_packet(V5, "", true)).await;
    let (mut c_b, ack_b) = RawClient::handshake(b.addr, persistent(V5, "", 60)).await;
    assert_eq!(ack_a.reason_code, ReasonCode::SUCCESS);
    assert_eq!(ack_b.reason_code, ReasonCode::SUCCESS);
    let id_a = ack_a
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    let id_b = ack_b
        .properties
        .assigned_client_identifier
        .clone()
        .expect("assigned id");
    assert!(!id_a.is_empty() && !id_b.is_empty());
    assert_ne!(id_a, id_b, "assigned identifiers are unique");

    // Process the CONNECT as if the client had sent the assigned id (MQTT-3.1.3-7).
    let (_c2, ack) = RawClient::handshake(b.addr, persistent(V5, &id_b, 60)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(
        ack.session_present,
        "the assigned id names the live session"
    );
    c_b.expect_disconnect(ReasonCode::SESSION_TAKEN_OVER).await;
}

/// 3.1.1 MQTT-3.1.3-6: a 3.1.1 client may send an empty client identifier with clean
/// session 1; it is accepted with return code 0.
#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let b = harness::start().await;
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, "", true,
    ))))
    .await;
    c.send(&Packet::PingReq).await;
    c.send(&Packet::Disconnect(Disconnect::new(
        ReasonCode::NORMAL_DISCONNECTION,
    )))
    .await;
    // CONNACK (accepted), then PINGRESP: the client was served.
    assert_eq!(
        c.read_to_close().await,
        [0x20, 0x02, 0x00, 0x00, 0xD0, 0x00]
    );
}

/// 3.1.1 MQTT-3.1.3-8, MQTT-3.1.3-7, MQTT-3.1.3-9: an empty client identifier with clean
/// session 0 is refused with CONNACK return code 0x02 (identifier rejected), then the connection
/// is closed.
#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_refused_with_code_2() {
    let b = harness::start().await;
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, "", false,
    ))))
    .await;
    assert_eq!(c.read_to_close().await, [0x20, 0x02, 0x00, 0x02]);
    assert_eq!(b.broker.metrics().clients_total, 0);
}

// --- Protocol name and level -----------------------------------------------------------------

/// 3.1.1 MQTT-3.1.2-2, 5.0 MQTT-3.1.2-2: a protocol level the broker does not speak (3, or
/// MQTT 3.1's "MQIsdp") is answered with CONNACK return code 0x01 (unacceptable protocol
/// version) and the connection is closed. The answer is in 3.1.1 form, since the client speaks
/// neither 3.1.1 nor 5.0.
#[tokio::test]
async fn old_protocol_level_is_refused_with_return_code_1() {
    let b = harness::start().await;
    for (name, level) in [(&b"MQTT"[..], 3u8), (&b"MQIsdp"[..], 3)] {
        let mut c = RawClient::connect(b.addr, V311).await;
        c.send_bytes(&connect_bytes(name, level)).await;
        assert_eq!(
            c.read_to_close().await,
            [0x20, 0x02, 0x00, 0x01],
            "protocol {:?} level {level}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// 5.0 MQTT-3.1.2-2: a protocol level above 5 is refused with CONNACK "unsupported protocol
/// version" (return code 0x01 in 3.1.1 form or reason 0x84 in 5.0 form) and closed.
#[tokio::test]
async fn future_protocol_level_is_refused_with_unsupported_protocol_version() {
    let b = harness::start().await;
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send_bytes(&connect_bytes(b"MQTT", 6)).await;
    let answer = c.read_to_close().await;
    assert!(
        answer == [0x20, 0x02, 0x00, 0x01] || answer == [0x20, 0x03, 0x00, 0x84, 0x00],
        "got {answer:02x?}"
    );
    assert_eq!(b.broker.metrics().clients_total, 0);
}

// --- First and second CONNECT ----------------------------------------------------------------

/// MQTT-3.1.0-1 (3.1.1 and 5.0): the first packet must be CONNECT; anything else closes the
/// connection without an answer.
#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection() {
    let b = harness::start().await;
    let cases: [(&str, &[u8]); 5] = [
        ("PINGREQ", &[0xC0, 0x00]),
        ("PUBLISH", &[0x30, 0x05, 0x00, 0x01, b'a', b'h', b'i']),
        (
            "SUBSCRIBE",
            &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ),
        ("DISCONNECT", &[0xE0, 0x00]),
        ("CONNACK", &[0x20, 0x02, 0x00, 0x00]),
    ];
    for (name, bytes) in cases {
        let mut c = RawClient::connect(b.addr, V311).await;
        c.send_bytes(bytes).await;
        assert_eq!(c.read_to_close().await, [0u8; 0], "first packet {name}");
    }
    assert_eq!(b.broker.metrics().clients_total, 0);
}

async fn second_connect_is_a_protocol_error(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut c = RawClient::connected(b.addr, version, "twice", true).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        version, "twice", true,
    ))))
    .await;
    c.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
}

/// MQTT-3.1.0-2: a second CONNECT is a Protocol Error; a v5 client gets DISCONNECT 0x82
/// (section 4.13) and the connection closes.
#[tokio::test]
async fn second_connect_is_a_protocol_error_v5() {
    second_connect_is_a_protocol_error(V5).await;
}

/// 3.1.1 MQTT-3.1.0-2: a second CONNECT is a protocol violation and closes the connection.
#[tokio::test]
async fn second_connect_closes_the_connection_v311() {
    second_connect_is_a_protocol_error(V311).await;
}

// --- Session present and clean start --------------------------------------------------------

async fn session_present_reflects_stored_session(version: ProtocolVersion) {
    let b = harness::start().await;
    // No session yet: Session Present 0 even with clean start 0.
    let (mut c, ack) = RawClient::handshake(b.addr, persistent(version, "sp", 60)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present, "first connection has no session");
    disconnect(&mut c).await;

    // The session was kept: resumed with Session Present 1.
    let (mut c, ack) = RawClient::handshake(b.addr, persistent(version, "sp", 60)).await;
    assert!(ack.session_present, "stored session resumed");
    disconnect(&mut c).await;

    // Clean start 1 discards it: Session Present 0.
    let mut clean = persistent(version, "sp", 60);
    clean.clean_start = true;
    let (_c, ack) = RawClient::handshake(b.addr, clean).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present, "clean start");
}

/// MQTT-3.2.2-2, MQTT-3.2.2-3, MQTT-3.1.2-6: Session Present is 0 for clean start 1 and for a
/// new session, and 1 when a stored session is resumed; clean start 0 without a stored session
/// creates one (it is there to resume next time).
#[tokio::test]
async fn session_present_reflects_stored_session_v5() {
    session_present_reflects_stored_session(V5).await;
}

/// 3.1.1 MQTT-3.2.2-1, MQTT-3.2.2-2, MQTT-3.2.2-3, MQTT-3.1.2-4, MQTT-3.1.4-3: Session Present
/// is 0 for clean session 1 and for a new session, 1 when a stored session is resumed; clean
/// session 0 creates a session when there is none and keeps it after the disconnection.
#[tokio::test]
async fn session_present_reflects_stored_session_v311() {
    session_present_reflects_stored_session(V311).await;
}

async fn clean_start_discards_old_subscriptions(version: ProtocolVersion) {
    let b = harness::start().await;
    let (mut c, _) = RawClient::handshake(b.addr, persistent(version, "cs", 60)).await;
    assert_eq!(
        c.subscribe_one(1, "cs/old", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    disconnect(&mut c).await;

    let mut clean = persistent(version, "cs", 60);
    clean.clean_start = true;
    let (mut c, ack) = RawClient::handshake(b.addr, clean).await;
    assert!(!ack.session_present);
    c.subscribe_one(1, "cs/marker", QoS::AtLeastOnce).await;

    let mut publisher = RawClient::connected(b.addr, version, "cs-pub", true).await;
    let old = publish_qos1(&mut publisher, 1, "cs/old", b"old").await;
    if version == V5 {
        assert_eq!(old, 0x10, "no subscriber left for cs/old");
    }
    publish_qos1(&mut publisher, 2, "cs/marker", b"marker").await;
    // Had the old subscription survived, "cs/old" would arrive first.
    let p = c.expect_publish().await;
    assert_eq!(&*p.topic, "cs/marker");
}

/// MQTT-3.1.2-4, MQTT-3.1.4-4: clean start 1 discards the existing session, including its
/// subscriptions.
#[tokio::test]
async fn clean_start_discards_old_subscriptions_v5() {
    clean_start_discards_old_subscriptions(V5).await;
}

/// 3.1.1 MQTT-3.1.2-6, MQTT-3.1.4-3: clean session 1 discards the previous session and its
/// subscriptions.
#[tokio::test]
async fn clean_session_discards_old_subscriptions_v311() {
    clean_start_discards_old_subscriptions(V311).await;
}

// --- Session expiry (5.0) --------------------------------------------------------------------

/// Section 3.1.2.11.2: with Session Expiry Interval 0 (absent) the session ends when the
/// connection closes: a reconnect with clean start 0 finds no session and no subscriptions.
#[tokio::test]
async fn v5_session_with_expiry_0_ends_at_disconnect() {
    let b = harness::start().await;
    let mut c = RawClient::connected(b.addr, V5, "se0", false).await;
    c.subscribe_one(1, "se0/t", QoS::AtLeastOnce).await;
    disconnect(&mut c).await;
    harness::eventually("the session's subscription is removed", || {
        b.broker.metrics().subscriptions == 0
    })
    .await;

    let (_c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "se0", false)).await;
    assert!(!ack.session_present);
    let mut publisher = RawClient::connected(b.addr, V5, "se0-pub", true).await;
    assert_eq!(publish_qos1(&mut publisher, 1, "se0/t", b"x").await, 0x10);
}

/// MQTT-3.1.2-23, MQTT-3.1.2-5: a session with a Session Expiry Interval survives the
/// connection; reconnecting within the interval resumes it, with its subscription and the
/// message that arrived meanwhile.
#[tokio::test]
async fn v5_session_survives_reconnect_within_expiry() {
    let b = harness::start().await;
    let (mut c, _) = RawClient::handshake(b.addr, persistent(V5, "se2", 2)).await;
    c.subscribe_one(1, "se2/t", QoS::AtLeastOnce).await;
    disconnect(&mut c).await;

    let mut publisher = RawClient::connected(b.addr, V5, "se2-pub", true).await;
    assert_eq!(
        publish_qos1(&mut publisher, 1, "se2/t", b"while away").await,
        0x00,
        "the offline session still subscribes"
    );
    let (mut c, ack) = RawClient::handshake(b.addr, persistent(V5, "se2", 2)).await;
    assert!(ack.session_present);
    let p = c.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("se2/t", &b"while away"[..]));
}

/// MQTT-4.1.0-2, section 3.1.2.11.2: once the Session Expiry Interval has passed, the session is
/// gone: Session Present 0 and no subscriptions.
#[tokio::test]
async fn v5_session_is_gone_after_expiry() {
    let b = harness::start().await;
    let (mut c, _) = RawClient::handshake(b.addr, persistent(V5, "se1", 1)).await;
    c.subscribe_one(1, "se1/t", QoS::AtLeastOnce).await;
    disconnect(&mut c).await;
    assert_eq!(b.broker.metrics().clients_expired, 0);
    harness::eventually("the session expires", || {
        b.broker.metrics().clients_expired == 1
    })
    .await;

    let (_c, ack) = RawClient::handshake(b.addr, persistent(V5, "se1", 1)).await;
    assert!(!ack.session_present);
    let mut publisher = RawClient::connected(b.addr, V5, "se1-pub", true).await;
    assert_eq!(publish_qos1(&mut publisher, 1, "se1/t", b"x").await, 0x10);
}

/// Section 3.1.2.11.2 ("The Client and Server MUST store the Session State after the Network
/// Connection is closed", MQTT-3.1.2-23): the expiry interval counts from the latest
/// disconnection, so a session resumed and left again is not expired by the first timer.
#[tokio::test]
async fn v5_session_expiry_counts_from_the_latest_disconnect() {
    let b = harness::start().await;
    let (mut c, _) = RawClient::handshake(b.addr, persistent(V5, "ser", 2)).await;
    disconnect(&mut c).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (mut c, ack) = RawClient::handshake(b.addr, persistent(V5, "ser", 2)).await;
    assert!(ack.session_present);
    disconnect(&mut c).await;
    // Past the first disconnection's 2 s, within the second's.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (_c, ack) = RawClient::handshake(b.addr, persistent(V5, "ser", 2)).await;
    assert!(ack.session_present, "expired by a stale timer");
    assert_eq!(b.broker.metrics().clients_expired, 0);
}

/// Section 3.14.2.2.2: the client may set the Session Expiry Interval to 0 in DISCONNECT,
/// ending a session that would otherwise have been kept.
#[tokio::test]
async fn v5_disconnect_with_session_expiry_0_ends_the_session() {
    let b = harness::start().await;
    let (mut c, _) = RawClient::handshake(b.addr, persistent(V5, "sed", 60)).await;
    c.subscribe_one(1, "sed/t", QoS::AtLeastOnce).await;
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    d.properties.session_expiry_interval = Some(0);
    c.send(&Packet::Disconnect(d)).await;
    assert_eq!(c.closed().await, vec![]);
    harness::eventually("the session's subscription is removed", || {
        b.broker.metrics().subscriptions == 0
    })
    .await;
    let (_c, ack) = RawClient::handshake(b.addr, persistent(V5, "sed", 60)).await;
    assert!(!ack.session_present);
}

/// Section 3.1.2.11.2: a session with expiry 0 ends when its connection closes, so a client
/// that reconnects immediately with clean start 0 must never find it (Session Present 0),
/// however quickly it comes back.
#[tokio::test]
async fn v5_session_with_expiry_0_is_never_resumed_by_an_immediate_reconnect() {
    let b = harness::start().await;
    for round in 0..30 {
        let (mut c, ack) =
            RawClient::handshake(b.addr, raw_connect_packet(V5, "quick", false)).await;
        assert!(!ack.session_present, "round {round}: session resumed");
        c.send(&Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        )))
        .await;
        c.closed().await;
    }
}

// --- Session takeover ------------------------------------------------------------------------

async fn takeover_carries_the_session_over(version: ProtocolVersion) {
    let b = harness::start().await;
    let (mut first, _) = RawClient::handshake(b.addr, persistent(version, "to", 60)).await;
    first.subscribe_one(1, "to/t", QoS::AtLeastOnce).await;

    let (mut second, ack) = RawClient::handshake(b.addr, persistent(version, "to", 60)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(ack.session_present, "the live session is taken over");
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;

    let mut publisher = RawClient::connected(b.addr, version, "to-pub", true).await;
    publish_qos1(&mut publisher, 1, "to/t", b"to second").await;
    let p = second.expect_publish().await;
    assert_eq!(&p.payload[..], b"to second");
    assert_eq!(b.broker.metrics().clients_connected, 2);
}

/// MQTT-3.1.4-3, MQTT-3.1.2-5: a second connection with the same client id makes the broker
/// send the first DISCONNECT 0x8E (Session taken over) and close it; with clean start 0 the
/// session, and its subscriptions, carry over (Session Present 1).
#[tokio::test]
async fn takeover_disconnects_first_connection_and_keeps_session_v5() {
    takeover_carries_the_session_over(V5).await;
}

/// 3.1.1 MQTT-3.1.4-2: a second connection with the same client id closes the first; with
/// clean session 0 the session carries over.
#[tokio::test]
async fn takeover_disconnects_first_connection_and_keeps_session_v311() {
    takeover_carries_the_session_over(V311).await;
}

/// MQTT-3.1.4-3, MQTT-3.1.2-4: a takeover with clean start 1 still closes the first connection
/// (0x8E) but starts a new session without the old subscriptions.
#[tokio::test]
async fn takeover_with_clean_start_discards_the_session_v5() {
    let b = harness::start().await;
    let (mut first, _) = RawClient::handshake(b.addr, persistent(V5, "toc", 60)).await;
    first.subscribe_one(1, "toc/t", QoS::AtLeastOnce).await;

    let (_second, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "toc", true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(!ack.session_present);
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    let mut publisher = RawClient::connected(b.addr, V5, "toc-pub", true).await;
    assert_eq!(publish_qos1(&mut publisher, 1, "toc/t", b"x").await, 0x10);
}

async fn takeover_of_session_ending_at_close(version: ProtocolVersion) {
    let b = harness::start().await;
    // Clean session 1 / Session Expiry 0: the session lasts as long as this connection.
    let mut first = RawClient::connected(b.addr, version, "tz", true).await;
    first.subscribe_one(1, "tz/old", QoS::AtLeastOnce).await;

    let (mut second, ack) = RawClient::handshake(b.addr, persistent(version, "tz", 60)).await;
    first
        .expect_disconnect(ReasonCode::SESSION_TAKEN_OVER)
        .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert!(
        !ack.session_present,
        "the old session ended with its connection"
    );
    second.subscribe_one(1, "tz/marker", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, version, "tz-pub", true).await;
    publish_qos1(&mut publisher, 1, "tz/old", b"old").await;
    publish_qos1(&mut publisher, 2, "tz/marker", b"marker").await;
    assert_eq!(&*second.expect_publish().await.topic, "tz/marker");
}

/// MQTT-3.1.4-3, section 3.1.2.11.2 ("If it is set to 0 ... the Session ends when the Network
/// Connection is closed"), MQTT-3.2.2-3; section 3.1.4 (non-normative: "If the Session Expiry
/// Interval of the existing Network Connection is 0 ... the original Session is ended on the
/// takeover"): taking over a connection whose session expiry is 0 ends that session, so the
/// new connection (clean start 0) starts a new one: Session Present 0, no old subscriptions.
#[tokio::test]
async fn takeover_of_session_with_expiry_0_starts_a_new_session_v5() {
    takeover_of_session_ending_at_close(V5).await;
}

/// 3.1.1 section 3.1.2.4 ("If CleanSession is set to 1 ... This Session lasts as long as the
/// Network Connection"), MQTT-3.1.4-2, MQTT-3.2.2-2/-3: taking over a clean session 1
/// connection ends its session; a clean session 0 newcomer gets Session Present 0 and none of
/// the old subscriptions.
#[tokio::test]
async fn takeover_of_clean_session_starts_a_new_session_v311() {
    takeover_of_session_ending_at_close(V311).await;
}

// --- Refused CONNECT -------------------------------------------------------------------------

/// MQTT-4.12.0-1, MQTT-3.14.0-1, section 3.1.2.11.9: a CONNECT naming an Authentication Method
/// the broker does not support is refused with CONNACK 0x8C (Bad authentication method), and no
/// DISCONNECT, and closed.
#[tokio::test]
async fn v5_unsupported_authentication_method_is_refused() {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(V5, "auth", true);
    connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(connect))).await;
    let seen = c.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(a)] if a.reason_code == ReasonCode::BAD_AUTHENTICATION_METHOD && !a.session_present),
        "got {seen:?}"
    );
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// MQTT-3.1.4-6 (3.1.1 MQTT-3.1.4-5 family): packets a client sends right behind a CONNECT
/// that is refused are not processed: a PUBLISH in the same write is not delivered.
#[tokio::test]
async fn data_after_a_refused_connect_is_not_processed() {
    let b = harness::start().await;
    let mut sub = RawClient::connected(b.addr, V311, "ref-sub", true).await;
    sub.subscribe_one(1, "ref/t", QoS::AtMostOnce).await;

    let mut out = bytes::BytesMut::new();
    for packet in [
        Packet::Connect(Box::new(raw_connect_packet(V311, "", false))),
        raw_publish("ref/t", b"sneaked in", QoS::AtMostOnce, None),
    ] {
        moat::codec::encode(&packet, V311, &mut out);
    }
    let mut c = RawClient::connect(b.addr, V311).await;
    c.send_bytes(&out).await;
    assert_eq!(c.read_to_close().await, [0x20, 0x02, 0x00, 0x02]);
    sub.expect_nothing(Duration::from_millis(300)).await;
}

// --- Keep alive ------------------------------------------------------------------------------

async fn silent_client_is_disconnected_after_keep_alive(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(version, "ka", true);
    connect.keep_alive = 1;
    let (mut c, ack) = RawClient::handshake(b.addr, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    // No Server Keep Alive: the client's own 1 s applies.
    assert_eq!(ack.properties.server_keep_alive, None);
    // Say nothing: the broker closes after 1.5 s.
    c.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
}

/// MQTT-3.1.2-22, MQTT-3.2.2-22, section 4.13: a v5 client that sends nothing for one and a
/// half times its Keep Alive (CONNACK had no Server Keep Alive, so its own) is disconnected; the
/// broker says why with DISCONNECT 0x8D (Keep Alive timeout).
#[tokio::test]
async fn silent_client_is_disconnected_after_keep_alive_v5() {
    silent_client_is_disconnected_after_keep_alive(V5).await;
}

/// 3.1.1 MQTT-3.1.2-24: a client that sends nothing for one and a half times its Keep Alive
/// is disconnected.
#[tokio::test]
async fn silent_client_is_disconnected_after_keep_alive_v311() {
    silent_client_is_disconnected_after_keep_alive(V311).await;
}

async fn pingreq_keeps_the_connection_alive(version: ProtocolVersion) {
    let b = harness::start().await;
    let mut connect = raw_connect_packet(version, "ping", true);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::handshake(b.addr, connect).await;
    // 2.5 s in all, well past 1.5 x keep alive, with a PINGREQ every 0.5 s.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.send(&Packet::PingReq).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp), "ping {i}");
    }
    assert_eq!(b.broker.metrics().clients_connected, 1);
}

/// MQTT-3.12.4-1, MQTT-3.1.2-20: every PINGREQ is answered with PINGRESP, and a client that
/// pings within its keep alive stays connected.
#[tokio::test]
async fn pingreq_gets_pingresp_and_keeps_the_connection_v5() {
    pingreq_keeps_the_connection_alive(V5).await;
}

/// 3.1.1 MQTT-3.12.4-1: every PINGREQ is answered with PINGRESP, and pings keep the
/// connection alive.
#[tokio::test]
async fn pingreq_gets_pingresp_and_keeps_the_connection_v311() {
    pingreq_keeps_the_connection_alive(V311).await;
}

/// Section 3.2.2.3.14, MQTT-3.1.2-21: with `limits.max_keepalive = 60`, a v5 client asking
/// for more (120) or for none (0) is told Server Keep Alive 60; one asking for less (30) is
/// left alone.
#[tokio::test]
async fn v5_server_keep_alive_caps_the_clients_keep_alive() {
    let b = harness::start_with(|c| c.limits.max_keepalive = 60).await;
    for (asked, told) in [(120u16, Some(60u16)), (0, Some(60)), (30, None), (60, None)] {
        let mut connect = raw_connect_packet(V5, &format!("ska{asked}"), true);
        connect.keep_alive = asked;
        let (_c, ack) = RawClient::handshake(b.addr, connect).await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
        assert_eq!(ack.properties.server_keep_alive, told, "asked {asked}");
    }
}

/// Section 3.2.2.3.14, MQTT-3.1.2-22: the Server Keep Alive is the one the broker enforces: a
/// client that asked for no keep alive but was told 1 s is disconnected (0x8D) when silent.
#[tokio::test]
async fn v5_server_keep_alive_is_enforced() {
    let b = harness::start_with(|c| c.limits.max_keepalive = 1).await;
    let (mut c, ack) = RawClient::handshake(b.addr, raw_connect_packet(V5, "ska", true)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    c.expect_disconnect(ReasonCode::KEEP_ALIVE_TIMEOUT).await;
}

// --- CONNECT timeout and shutdown ------------------------------------------------------------

/// Section 3.1.4 (step 1): a connection that sends no CONNECT within `limits.connect_timeout`
/// is closed, whether it sends nothing or only part of a CONNECT.
#[tokio::test]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let b = harness::start_with(|c| c.limits.connect_timeout = Duration::from_secs(1)).await;
    let mut silent = RawClient::connect(b.addr, V311).await;
    let mut partial = RawClient::connect(b.addr, V311).await;
    partial.send_bytes(&[0x10, 0x10, 0x00, 0x04, b'M']).await;
    assert_eq!(silent.read_to_close().await, [0u8; 0]);
    assert_eq!(partial.read_to_close().await, [0u8; 0]);
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// Section 4.13, reason 0x8B: a broker shutting down tells v5 clients DISCONNECT 0x8B (Server
/// shutting down) and closes; 3.1.1 clients are simply closed.
#[tokio::test]
async fn graceful_shutdown_sends_v5_clients_server_shutting_down() {
    let b = harness::start().await;
    let mut v5 = RawClient::connected(b.addr, V5, "bye5", true).await;
    let mut v311 = RawClient::connected(b.addr, V311, "bye4", true).await;
    let stop = tokio::spawn(b.stop());
    v5.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN).await;
    v311.expect_disconnect(ReasonCode::SERVER_SHUTTING_DOWN)
        .await;
    stop.await.unwrap();
}

/// MQTT-3.1.4-3 with ordinary clients: a rumqttc client (3.1.1 or 5.0) whose client id is
/// taken by a second connection is disconnected. (rumqttc 0.25 cannot decode the one-byte
/// DISCONNECT body the broker sends, so the reason code is checked with the raw client above.)
#[tokio::test]
async fn rumqttc_clients_are_disconnected_when_taken_over() {
    let b = harness::start().await;
    let mut v4 = Rumqtt4::connect(b.addr, "rc-to4", |_| {}).await;
    let (mut v5, _) = Rumqtt5::connect(b.addr, "rc-to5", |_| {}).await;
    let _t4 = RawClient::connected(b.addr, V311, "rc-to4", true).await;
    let _t5 = RawClient::connected(b.addr, V5, "rc-to5", true).await;
    if let Some(p) = v4.next().await {
        panic!("unexpected packet {p:?}");
    }
    while let Some(p) = v5.next().await {
        assert!(
            matches!(p, rumqttc::v5::mqttbytes::v5::Packet::Disconnect(_)),
            "unexpected packet {p:?}"
        );
    }
}
