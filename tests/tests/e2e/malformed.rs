//! Malformed packets and protocol errors: raw byte sequences sent after (or as) CONNECT.
//!
//! MQTT 5 clients must be told why with DISCONNECT (or CONNACK) and a reason code before the
//! connection closes (MQTT-4.13.1-1, section 4.13); MQTT 3.1.1 has no way to say why, so a
//! 3.1.1 client is simply disconnected (3.1.1 section 4.8: "the Server MUST close the Network
//! Connection"). Either way only the offending connection is affected.

use moat::codec::ProtocolVersion::{self, V5, V311};
use moat::codec::{ConnAck, Packet, QoS, ReasonCode};

use crate::harness::{self, RawClient, Rumqtt4, raw_connect_packet, raw_publish};

// --- Byte builders ---------------------------------------------------------------------------

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A packet: first byte, Variable Byte Integer remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary field.
fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// A v5 property block: length, then the properties.
fn props(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(p.len(), &mut out);
    out.extend_from_slice(p);
    out
}

/// A v5 PUBLISH with fixed header `flags`, `topic`, optional packet id and raw properties.
fn publish5(flags: u8, topic: &[u8], id: Option<u16>, properties: &[u8]) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend(props(properties));
    body.extend_from_slice(b"payload");
    frame(0x30 | flags, &body)
}

/// A 3.1.1 PUBLISH.
fn publish4(flags: u8, topic: &[u8], id: Option<u16>) -> Vec<u8> {
    let mut body = string(topic);
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(b"payload");
    frame(0x30 | flags, &body)
}

/// A SUBSCRIBE with one filter `a/b` and `options`, for either version.
fn subscribe(
    version: ProtocolVersion,
    first: u8,
    id: u16,
    properties: &[u8],
    options: u8,
) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    if version == V5 {
        body.extend(props(properties));
    }
    body.extend(string(b"a/b"));
    body.push(options);
    frame(first, &body)
}

/// A v5 CONNECT: protocol "MQTT" level 5, `flags`, keep alive 0, raw `properties`, and `payload`
/// (client id onwards) as given.
fn connect5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[5, flags, 0, 0]);
    body.extend(props(properties));
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A 3.1.1 CONNECT: protocol "MQTT" level 4, `flags`, keep alive 0, `payload` as given.
fn connect4(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[4, flags, 0, 0]);
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

// --- Packets after CONNECT -------------------------------------------------------------------

/// One malformed or forbidden packet, as bytes for each protocol version it applies to, and the
/// reason code a v5 client must get in DISCONNECT.
struct Case {
    name: &'static str,
    v5: Option<Vec<u8>>,
    v311: Option<Vec<u8>>,
    reason: ReasonCode,
}

fn case(name: &'static str, v5: Option<Vec<u8>>, v311: Option<Vec<u8>>, reason: u8) -> Case {
    Case {
        name,
        v5,
        v311,
        reason: ReasonCode(reason),
    }
}

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;

fn cases() -> Vec<Case> {
    vec![
        // Fixed header flags (MQTT-2.1.3-1; PUBLISH MQTT-3.3.1-2, MQTT-3.3.1-4; PUBREL
        // MQTT-3.6.1-1; SUBSCRIBE MQTT-3.8.1-1; UNSUBSCRIBE MQTT-3.10.1-1; DISCONNECT
        // MQTT-3.14.1-1): Malformed.
        case(
            "PUBLISH with QoS 3",
            Some(publish5(0b0110, b"a/b", Some(1), &[])),
            Some(publish4(0b0110, b"a/b", Some(1))),
            MALFORMED,
        ),
        case(
            "PUBLISH QoS 0 with DUP",
            Some(publish5(0b1000, b"a/b", None, &[])),
            Some(publish4(0b1000, b"a/b", None)),
            MALFORMED,
        ),
        case(
            "SUBSCRIBE with flags 0000",
            Some(subscribe(V5, 0x80, 1, &[], 0)),
            Some(subscribe(V311, 0x80, 1, &[], 0)),
            MALFORMED,
        ),
        case(
            "PUBREL with flags 0000",
            Some(vec![0x60, 0x02, 0x00, 0x01]),
            Some(vec![0x60, 0x02, 0x00, 0x01]),
            MALFORMED,
        ),
        case(
            "UNSUBSCRIBE with flags 0000",
            Some(frame(0xA0, &[0x00, 0x01, 0x00, 0x00, 0x01, b'a'])),
            Some(frame(0xA0, &[0x00, 0x01, 0x00, 0x01, b'a'])),
            MALFORMED,
        ),
        case(
            "PINGREQ with flags 0001",
            Some(vec![0xC1, 0x00]),
            Some(vec![0xC1, 0x00]),
            MALFORMED,
        ),
        case(
            "DISCONNECT with flags 0001",
            Some(vec![0xE1, 0x00]),
            Some(vec![0xE1, 0x00]),
            MALFORMED,
        ),
        case(
            "reserved packet type 0",
            Some(vec![0x00, 0x00]),
            Some(vec![0x00, 0x00]),
            MALFORMED,
        ),
        // Remaining length (MQTT-1.5.5-1, section 2.1.4).
        case(
            "remaining length of five bytes",
            Some(vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            Some(vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            MALFORMED,
        ),
        case(
            "remaining length not in its shortest form",
            Some(vec![0xC0, 0x80, 0x00]),
            Some(vec![0xC0, 0x80, 0x00]),
            MALFORMED,
        ),
        case(
            "remaining length longer than the packet (PINGREQ of 1 byte)",
            Some(vec![0xC0, 0x01, 0x00]),
            Some(vec![0xC0, 0x01, 0x00]),
            MALFORMED,
        ),
        case(
            "remaining length shorter than the packet (PUBACK of 1 byte)",
            Some(vec![0x40, 0x01, 0x00]),
            Some(vec![0x40, 0x01, 0x00]),
            MALFORMED,
        ),
        case(
            "PUBLISH shorter than its topic length",
            Some(frame(0x30, &[0x00, 0x09, b'a'])),
            Some(frame(0x30, &[0x00, 0x09, b'a'])),
            MALFORMED,
        ),
        // Strings (MQTT-1.5.4-1, MQTT-1.5.4-2, MQTT-3.3.2-1).
        case(
            "topic is not valid UTF-8",
            Some(publish5(0, &[0xC3, 0x28], None, &[])),
            Some(publish4(0, &[0xC3, 0x28], None)),
            MALFORMED,
        ),
        case(
            "topic is an encoded surrogate",
            Some(publish5(0, &[0xED, 0xA0, 0x80], None, &[])),
            Some(publish4(0, &[0xED, 0xA0, 0x80], None)),
            MALFORMED,
        ),
        case(
            "topic contains U+0000",
            Some(publish5(0, b"a\0b", None, &[])),
            Some(publish4(0, b"a\0b", None)),
            MALFORMED,
        ),
        // Topic names (MQTT-3.3.2-2, MQTT-4.7.0-1, MQTT-4.7.3-1; 5.0 section 3.3.2.1).
        case(
            "PUBLISH topic with +",
            Some(publish5(0, b"a/+", None, &[])),
            Some(publish4(0, b"a/+", None)),
            PROTOCOL_ERROR,
        ),
        case(
            "PUBLISH topic with #",
            Some(publish5(0b0010, b"a/#", Some(1), &[])),
            Some(publish4(0b0010, b"a/#", Some(1))),
            PROTOCOL_ERROR,
        ),
        case(
            "PUBLISH with empty topic and no alias",
            Some(publish5(0, b"", None, &[])),
            Some(publish4(0, b"", None)),
            PROTOCOL_ERROR,
        ),
        // Packet identifiers (MQTT-2.2.1-3; 3.1.1 MQTT-2.3.1-1).
        case(
            "PUBLISH QoS 1 with packet id 0",
            Some(publish5(0b0010, b"a/b", Some(0), &[])),
            Some(publish4(0b0010, b"a/b", Some(0))),
            PROTOCOL_ERROR,
        ),
        case(
            "SUBSCRIBE with packet id 0",
            Some(subscribe(V5, 0x82, 0, &[], 0)),
            Some(subscribe(V311, 0x82, 0, &[], 0)),
            PROTOCOL_ERROR,
        ),
        // Properties (section 2.2.2.2; "It is a Protocol Error to include ... more than once").
        case(
            "PUBLISH with Message Expiry Interval twice",
            Some(publish5(
                0,
                b"a/b",
                None,
                &[0x02, 0, 0, 0, 9, 0x02, 0, 0, 0, 9],
            )),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "PUBLISH with a property not valid in PUBLISH (Session Expiry)",
            Some(publish5(0, b"a/b", None, &[0x11, 0, 0, 0, 9])),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH with an unknown property identifier",
            Some(publish5(0, b"a/b", None, &[0x7F, 0])),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH property length beyond the packet",
            Some(frame(0x30, &[0x00, 0x01, b'a', 0x20, 0x01])),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH with a user property name that is not UTF-8 (MQTT-1.5.7-1)",
            Some(publish5(
                0,
                b"a/b",
                None,
                &[0x26, 0x00, 0x02, 0xC3, 0x28, 0x00, 0x01, b'v'],
            )),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH with a user property value containing U+0000 (MQTT-1.5.7-1)",
            Some(publish5(
                0,
                b"a/b",
                None,
                &[0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0x00],
            )),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH with a Response Topic that is not UTF-8 (MQTT-3.3.2-13)",
            Some(publish5(0, b"a/b", None, &[0x08, 0x00, 0x02, 0xC3, 0x28])),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH with a Content Type that is not UTF-8 (MQTT-3.3.2-19)",
            Some(publish5(0, b"a/b", None, &[0x03, 0x00, 0x02, 0xC3, 0x28])),
            None,
            MALFORMED,
        ),
        case(
            "PUBLISH from a client with a Subscription Identifier (MQTT-3.3.4-6)",
            Some(publish5(0, b"a/b", None, &[0x0B, 0x01])),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "PUBLISH with Payload Format Indicator 2",
            Some(publish5(0, b"a/b", None, &[0x01, 2])),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "PUBLISH with a wildcard in the Response Topic (MQTT-3.3.2-14)",
            Some(publish5(0, b"a/b", None, &[0x08, 0x00, 0x01, b'#'])),
            None,
            PROTOCOL_ERROR,
        ),
        // Topic aliases (section 3.3.2.3.4, section 3.3.4).
        case(
            "topic alias above the Topic Alias Maximum (MQTT-3.2.2-17)",
            Some(publish5(0, b"a/b", None, &[0x23, 0x00, 65])),
            None,
            0x94,
        ),
        case(
            "unknown topic alias with an empty topic",
            Some(publish5(0, b"", None, &[0x23, 0x00, 0x01])),
            None,
            PROTOCOL_ERROR,
        ),
        // SUBSCRIBE and UNSUBSCRIBE payloads (5.0 MQTT-3.8.3-2, MQTT-3.10.3-2, section
        // 3.8.3.1, MQTT-3.8.3-5; 3.1.1 MQTT-3.8.3-3, MQTT-3.10.3-2, MQTT-3-8.3-4).
        case(
            "SUBSCRIBE with no topic filter",
            Some(frame(0x82, &[0x00, 0x01, 0x00])),
            Some(frame(0x82, &[0x00, 0x01])),
            PROTOCOL_ERROR,
        ),
        case(
            "UNSUBSCRIBE with no topic filter",
            Some(frame(0xA2, &[0x00, 0x01, 0x00])),
            Some(frame(0xA2, &[0x00, 0x01])),
            PROTOCOL_ERROR,
        ),
        case(
            "SUBSCRIBE with a topic filter that is not UTF-8 (MQTT-3.8.3-1)",
            Some(frame(
                0x82,
                &[&[0x00, 0x01, 0x00][..], &string(&[0xC3, 0x28]), &[0x00]].concat(),
            )),
            Some(frame(
                0x82,
                &[&[0x00, 0x01][..], &string(&[0xC3, 0x28]), &[0x00]].concat(),
            )),
            MALFORMED,
        ),
        case(
            "SUBSCRIBE with maximum QoS 3",
            Some(subscribe(V5, 0x82, 1, &[], 0x03)),
            Some(subscribe(V311, 0x82, 1, &[], 0x03)),
            PROTOCOL_ERROR,
        ),
        case(
            "SUBSCRIBE with reserved option bits",
            Some(subscribe(V5, 0x82, 1, &[], 0xC0)),
            Some(subscribe(V311, 0x82, 1, &[], 0x04)),
            MALFORMED,
        ),
        case(
            "SUBSCRIBE with retain handling 3",
            Some(subscribe(V5, 0x82, 1, &[], 0x30)),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "SUBSCRIBE with Subscription Identifier 0",
            Some(subscribe(V5, 0x82, 1, &[0x0B, 0x00], 0)),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "No Local on a shared subscription (MQTT-3.8.3-4)",
            Some(frame(
                0x82,
                &[&[0x00, 0x01, 0x00][..], &string(b"$share/g/a"), &[0x04]].concat(),
            )),
            None,
            PROTOCOL_ERROR,
        ),
        // Packets only a server sends (a Protocol Error, section 4.13.1 / 3.1.1 section 4.8).
        case(
            "CONNACK from a client",
            Some(vec![0x20, 0x03, 0x00, 0x00, 0x00]),
            Some(vec![0x20, 0x02, 0x00, 0x00]),
            PROTOCOL_ERROR,
        ),
        case(
            "SUBACK from a client",
            Some(vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00]),
            Some(vec![0x90, 0x03, 0x00, 0x01, 0x00]),
            PROTOCOL_ERROR,
        ),
        case(
            "UNSUBACK from a client",
            Some(vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x00]),
            Some(vec![0xB0, 0x02, 0x00, 0x01]),
            PROTOCOL_ERROR,
        ),
        case(
            "PINGRESP from a client",
            Some(vec![0xD0, 0x00]),
            Some(vec![0xD0, 0x00]),
            PROTOCOL_ERROR,
        ),
        // AUTH (section 3.15.2.2.2; 3.1.1 has no packet type 15).
        case(
            "AUTH without an Authentication Method",
            Some(vec![0xF0, 0x02, 0x18, 0x00]),
            Some(vec![0xF0, 0x00]),
            PROTOCOL_ERROR,
        ),
        case(
            "AUTH after a CONNECT without an Authentication Method (MQTT-4.12.0-7)",
            Some(frame(
                0xF0,
                &[&[0x19][..], &props(&[&[0x15][..], &string(b"m")].concat())].concat(),
            )),
            None,
            PROTOCOL_ERROR,
        ),
        // Reason codes a client may not use (MQTT-3.4.2-1, MQTT-3.14.2-1).
        case(
            "PUBACK with a reason code not valid for PUBACK",
            Some(vec![0x40, 0x03, 0x00, 0x01, 0x01]),
            None,
            PROTOCOL_ERROR,
        ),
        case(
            "DISCONNECT with a reason code not valid for DISCONNECT",
            Some(vec![0xE0, 0x01, 0x01]),
            None,
            PROTOCOL_ERROR,
        ),
        // Section 3.14.2.2.2 (MQTT-3.14.2-2 family): CONNECT had Session Expiry 0.
        case(
            "DISCONNECT setting a Session Expiry Interval after CONNECT had 0",
            Some(frame(0xE0, &[0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x3C])),
            None,
            PROTOCOL_ERROR,
        ),
    ]
}

/// Runs every case for `version` on a broker of its own, each on a fresh connection, and
/// returns a description of each case that did not end as it should.
async fn run_cases(version: ProtocolVersion) -> Vec<String> {
    let b = harness::start().await;
    let mut failures = Vec::new();
    for (i, case) in cases().into_iter().enumerate() {
        let bytes = match version {
            V5 => case.v5,
            V311 => case.v311,
        };
        let Some(bytes) = bytes else { continue };
        let mut c = RawClient::connected(b.addr, version, &format!("bad-{i}"), true).await;
        c.send_bytes(&bytes).await;
        let seen = c.closed().await;
        let ok = match version {
            V5 => {
                matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason_code == case.reason)
            }
            V311 => seen.is_empty(),
        };
        if !ok {
            failures.push(format!(
                "{}: wanted {}, got {seen:?}",
                case.name,
                match version {
                    V5 => format!("DISCONNECT {:#04x} then close", case.reason.0),
                    V311 => "a bare close".to_owned(),
                }
            ));
        }
    }
    // Each bad connection ended, and only that one.
    assert_eq!(b.broker.metrics().clients_connected, 0);
    failures
}

/// MQTT-4.13.1-1, MQTT-4.13.2-1, section 4.13 and every statement cited in [`cases`]: after a
/// valid CONNECT, each malformed packet (0x81) or protocol error (0x82; 0x94 for an invalid
/// topic alias) gets DISCONNECT with that reason code, and the connection closes.
#[tokio::test]
async fn v5_malformed_packets_get_disconnect_with_reason_code() {
    let failures = run_cases(V5).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// 3.1.1 section 4.8 (MQTT-4.8.0-1) and the statements cited in [`cases`]: a 3.1.1 client that
/// sends a malformed packet or breaks a protocol rule is disconnected without a word.
#[tokio::test]
async fn v311_malformed_packets_close_the_connection() {
    let failures = run_cases(V311).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Section 3.3.4 ("A Topic Alias value of 0 or greater than the Maximum Topic Alias is a
/// Protocol Error, the receiver uses DISCONNECT with Reason Code of 0x94 (Topic Alias
/// invalid)"), MQTT-3.3.2-8: topic alias 0 gets DISCONNECT 0x94.
#[tokio::test]
async fn v5_topic_alias_0_gets_topic_alias_invalid() {
    let b = harness::start().await;
    let mut c = RawClient::connected(b.addr, V5, "alias0", true).await;
    c.send_bytes(&publish5(0, b"a/b", None, &[0x23, 0x00, 0x00]))
        .await;
    c.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID).await;
}

/// MQTT-3.2.2-18, section 3.3.4: with `limits.topic_alias_maximum = 0` the broker accepts no
/// topic alias at all: alias 1 is above the maximum (0x94).
#[tokio::test]
async fn v5_topic_alias_when_aliases_are_disabled_gets_topic_alias_invalid() {
    let b = harness::start_with(|c| c.limits.topic_alias_maximum = 0).await;
    let mut c = RawClient::connected(b.addr, V5, "alias-off", true).await;
    c.send_bytes(&publish5(0, b"a/b", None, &[0x23, 0x00, 0x01]))
        .await;
    c.expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID).await;
}

// --- Maximum packet size ---------------------------------------------------------------------

async fn packet_over_maximum_size_is_refused(version: ProtocolVersion) {
    let b = harness::start_with(|c| c.limits.max_packet_size = 64).await;
    let mut c = RawClient::connected(b.addr, version, "big", true).await;
    // Exactly 64 bytes with the fixed header (2), topic "a/b" (5), packet id (2) and, in
    // 5.0, the property length (1): accepted.
    let n = match version {
        V5 => 54,
        V311 => 55,
    };
    let fits = raw_publish("a/b", &vec![b'x'; n], QoS::AtLeastOnce, Some(1));
    assert_eq!(moat::codec::encoded_len(&fits, version), 64, "test setup");
    c.send(&fits).await;
    assert!(matches!(c.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 1));
    // One byte more: Packet too large.
    c.send(&raw_publish(
        "a/b",
        &vec![b'x'; n + 1],
        QoS::AtLeastOnce,
        Some(2),
    ))
    .await;
    c.expect_disconnect(ReasonCode::PACKET_TOO_LARGE).await;
}

/// MQTT-3.2.2-15, section 3.2.2.3.6: a packet larger than the Maximum Packet Size the broker
/// advertised gets DISCONNECT 0x95 (Packet too large); one of exactly that size is accepted.
#[tokio::test]
async fn v5_packet_over_maximum_packet_size_gets_packet_too_large() {
    packet_over_maximum_size_is_refused(V5).await;
}

/// A 3.1.1 client sending a packet over `limits.max_packet_size` is disconnected; one of
/// exactly that size is accepted.
#[tokio::test]
async fn v311_packet_over_maximum_packet_size_closes_the_connection() {
    packet_over_maximum_size_is_refused(V311).await;
}

/// Section 3.2.2.2 (reason 0x95 in CONNACK), MQTT-3.2.2-7: a v5 CONNECT larger than the
/// maximum packet size is refused with CONNACK 0x95 and the connection closed; a 3.1.1 one is
/// closed without an answer.
#[tokio::test]
async fn connect_over_maximum_packet_size_is_refused() {
    let b = harness::start_with(|c| c.limits.max_packet_size = 64).await;
    let long_id = "x".repeat(80);

    let mut c = RawClient::connect(b.addr, V5).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V5, &long_id, true,
    ))))
    .await;
    let seen = c.closed().await;
    assert!(
        matches!(seen.as_slice(), [Packet::ConnAck(ConnAck { session_present: false, reason_code, .. })] if *reason_code == ReasonCode::PACKET_TOO_LARGE),
        "got {seen:?}"
    );

    let mut c = RawClient::connect(b.addr, V311).await;
    c.send(&Packet::Connect(Box::new(raw_connect_packet(
        V311, &long_id, true,
    ))))
    .await;
    assert_eq!(c.read_to_close().await, [0u8; 0]);
    assert_eq!(b.broker.metrics().clients_total, 0);
}

// --- Malformed CONNECT -----------------------------------------------------------------------

/// MQTT-3.1.4-1, MQTT-4.13.1-1, MQTT-3.2.2-7, MQTT-3.14.0-1, MQTT-4.13.2-1 and the statement
/// cited per case: a v5 CONNECT that is malformed gets CONNACK 0x81, one that breaks a protocol
/// rule CONNACK 0x82, and nothing else (no DISCONNECT), and the connection closes.
#[tokio::test]
async fn v5_malformed_connect_gets_connack_with_reason_code() {
    let b = harness::start().await;
    let id = string(b"c");
    let will = [&props(&[])[..], &string(b"w/t"), &string(b"bye")].concat();
    let with_will = [&id[..], &will].concat();
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "reserved flag set (MQTT-3.1.2-3)",
            connect5(0x03, &[], &id),
            MALFORMED,
        ),
        (
            "will QoS 3 (MQTT-3.1.2-12)",
            connect5(0x02 | 0x04 | 0x18, &[], &with_will),
            MALFORMED,
        ),
        (
            "will QoS without will flag (MQTT-3.1.2-11)",
            connect5(0x02 | 0x08, &[], &id),
            MALFORMED,
        ),
        (
            "will retain without will flag (MQTT-3.1.2-13)",
            connect5(0x02 | 0x20, &[], &id),
            MALFORMED,
        ),
        (
            "user name flag without a user name (MQTT-3.1.2-17)",
            connect5(0x02 | 0x80, &[], &id),
            MALFORMED,
        ),
        (
            "client id not UTF-8 (MQTT-3.1.3-4, MQTT-1.5.4-1)",
            connect5(0x02, &[], &string(&[0xC3, 0x28])),
            MALFORMED,
        ),
        (
            "trailing bytes after the payload",
            connect5(0x02, &[], &[&id[..], &[0xAA]].concat()),
            MALFORMED,
        ),
        (
            "user name flag 0 but a user name follows (MQTT-3.1.2-16)",
            connect5(0x02, &[], &[&id[..], &string(b"user")].concat()),
            MALFORMED,
        ),
        (
            "password flag 0 but a password follows (MQTT-3.1.2-18)",
            connect5(
                0x02 | 0x80,
                &[],
                &[&id[..], &string(b"user"), &string(b"pw")].concat(),
            ),
            MALFORMED,
        ),
        (
            "will topic not UTF-8 (MQTT-3.1.3-11)",
            connect5(
                0x02 | 0x04,
                &[],
                &[
                    &id[..],
                    &props(&[]),
                    &string(&[0xC3, 0x28]),
                    &string(b"bye"),
                ]
                .concat(),
            ),
            MALFORMED,
        ),
        (
            "user name not UTF-8 (MQTT-3.1.3-12)",
            connect5(
                0x02 | 0x80,
                &[],
                &[&id[..], &string(&[0xC3, 0x28])].concat(),
            ),
            MALFORMED,
        ),
        (
            "property not valid in CONNECT (Topic Alias)",
            connect5(0x02, &[0x23, 0x00, 0x01], &id),
            MALFORMED,
        ),
        (
            "Session Expiry Interval twice (3.1.2.11.2)",
            connect5(0x02, &[0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 10], &id),
            PROTOCOL_ERROR,
        ),
        (
            "Receive Maximum 0 (3.1.2.11.3)",
            connect5(0x02, &[0x21, 0x00, 0x00], &id),
            PROTOCOL_ERROR,
        ),
        (
            "Maximum Packet Size 0 (3.1.2.11.4)",
            connect5(0x02, &[0x27, 0, 0, 0, 0], &id),
            PROTOCOL_ERROR,
        ),
        (
            "Authentication Data without Authentication Method (3.1.2.11.10)",
            connect5(0x02, &[0x16, 0x00, 0x01, 0xAA], &id),
            PROTOCOL_ERROR,
        ),
        (
            "will topic with a wildcard (MQTT-3.3.2-2)",
            connect5(
                0x02 | 0x04,
                &[],
                &[&id[..], &props(&[]), &string(b"w/#"), &string(b"bye")].concat(),
            ),
            PROTOCOL_ERROR,
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, reason) in cases {
        let mut c = RawClient::connect(b.addr, V5).await;
        c.send_bytes(&bytes).await;
        let seen = c.closed().await;
        let ok = matches!(
            seen.as_slice(),
            [Packet::ConnAck(ConnAck { session_present: false, reason_code, .. })]
                if reason_code.0 == reason
        );
        if !ok {
            failures.push(format!(
                "{name}: wanted CONNACK {reason:#04x} then close, got {seen:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.broker.metrics().clients_total, 0);
}

/// 3.1.1 MQTT-3.1.4-1, MQTT-3.2.2-6 and the statement cited per case: a malformed 3.1.1
/// CONNECT closes the connection without a CONNACK (3.1.1 has no return code for it).
#[tokio::test]
async fn v311_malformed_connect_closes_the_connection() {
    let b = harness::start().await;
    let id = string(b"c");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "reserved flag set (3.1.1 MQTT-3.1.2-3)",
            connect4(0x03, &id),
        ),
        (
            "will QoS 3 (3.1.1 MQTT-3.1.2-14)",
            connect4(
                0x02 | 0x04 | 0x18,
                &[&id[..], &string(b"w/t"), &string(b"bye")].concat(),
            ),
        ),
        (
            "password without user name (3.1.1 MQTT-3.1.2-22)",
            connect4(0x02 | 0x40, &[&id[..], &string(b"pw")].concat()),
        ),
        (
            "client id not UTF-8 (3.1.1 MQTT-1.5.3-1, MQTT-3.1.3-4)",
            connect4(0x02, &string(&[0xC3, 0x28])),
        ),
        (
            "user name flag 0 but a user name follows (3.1.1 MQTT-3.1.2-18)",
            connect4(0x02, &[&id[..], &string(b"user")].concat()),
        ),
        (
            "password flag 0 but a password follows (3.1.1 MQTT-3.1.2-20)",
            connect4(
                0x02 | 0x80,
                &[&id[..], &string(b"user"), &string(b"pw")].concat(),
            ),
        ),
        (
            "will topic not UTF-8 (3.1.1 MQTT-3.1.3-10)",
            connect4(
                0x02 | 0x04,
                &[&id[..], &string(&[0xC3, 0x28]), &string(b"bye")].concat(),
            ),
        ),
        (
            "user name not UTF-8 (3.1.1 MQTT-3.1.3-11)",
            connect4(0x02 | 0x80, &[&id[..], &string(&[0xC3, 0x28])].concat()),
        ),
    ];
    for (name, bytes) in cases {
        let mut c = RawClient::connect(b.addr, V311).await;
        c.send_bytes(&bytes).await;
        assert_eq!(c.read_to_close().await, [0u8; 0], "{name}");
    }
    assert_eq!(b.broker.metrics().clients_total, 0);
}

// --- Isolation -------------------------------------------------------------------------------

/// A malformed packet closes only its own connection (section 4.13): a subscriber connected
/// meanwhile (an ordinary rumqttc client and a raw v5 one) keeps receiving.
#[tokio::test]
async fn malformed_client_does_not_affect_other_clients() {
    let b = harness::start().await;
    let mut v4 = Rumqtt4::connect(b.addr, "calm-v4", |_| {}).await;
    v4.subscribe("calm/t", rumqttc::QoS::AtLeastOnce).await;
    let mut raw = RawClient::connected(b.addr, V5, "calm-v5", true).await;
    raw.subscribe_one(1, "calm/t", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(b.addr, V5, "calm-pub", true).await;

    for (i, case) in cases().into_iter().enumerate() {
        for (version, bytes) in [(V5, case.v5), (V311, case.v311)] {
            let Some(bytes) = bytes else { continue };
            let mut bad =
                RawClient::connected(b.addr, version, &format!("bad-{i}-{version:?}"), true).await;
            bad.send_bytes(&bytes).await;
            bad.closed().await;
        }
        // Bytes that are not MQTT at all, as the first bytes of a connection. ("GE" reads as
        // a fixed header announcing 69 more bytes, so send at least that many.)
        let mut junk = RawClient::connect(b.addr, V311).await;
        junk.send_bytes(format!("GET / HTTP/1.1\r\nHost: x\r\n{:80}\r\n", "").as_bytes())
            .await;
        junk.read_to_close().await;

        let payload = format!("after {i}");
        publisher
            .send(&raw_publish(
                "calm/t",
                payload.as_bytes(),
                QoS::AtLeastOnce,
                Some(1),
            ))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
        let p = raw.expect_publish().await;
        assert_eq!(&p.payload[..], payload.as_bytes());
        raw.send(&Packet::PubAck(moat::codec::PubResponse::success(
            p.packet_id.unwrap(),
        )))
        .await;
        let p = v4.next_publish().await;
        assert_eq!(&p.payload[..], payload.as_bytes());
    }
    assert_eq!(b.broker.metrics().clients_connected, 3);
}
