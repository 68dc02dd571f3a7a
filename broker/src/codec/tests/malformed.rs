//! A table of invalid packets, each with the error class the specification assigns to it.
//! Row names cite the normative statement (5.0 numbering unless marked 3.1.1) or the section.

use super::*;
use ProtocolVersion::{V5, V311};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum K {
    Malformed,
    Protocol,
    Unsupported,
}

fn kind(e: &DecodeError) -> K {
    match e {
        DecodeError::Malformed(_) => K::Malformed,
        DecodeError::Protocol(_) => K::Protocol,
        DecodeError::UnsupportedProtocol(_) => K::Unsupported,
        DecodeError::TooLarge { .. } => panic!("decode never reports TooLarge"),
    }
}

/// A length-prefixed string or binary field.
fn st(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A property block (all test blocks are shorter than 128 bytes).
fn props(p: &[u8]) -> Vec<u8> {
    cat(&[&[p.len() as u8], p])
}

/// A 3.1.1 CONNECT with the given connect flags and payload.
fn connect_v3(flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x10, &cat(&[&st(b"MQTT"), &[4, flags, 0, 60], payload]))
}

/// A 5.0 CONNECT with the given connect flags, properties and payload.
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[
            &st(b"MQTT"),
            &[5, flags, 0, 60],
            &props(properties),
            payload,
        ]),
    )
}

/// A 5.0 PUBLISH QoS 1, id 1, topic "t", with the given properties and payload "x".
fn publish_v5(properties: &[u8]) -> Vec<u8> {
    frame(0x32, &cat(&[&st(b"t"), &[0, 1], &props(properties), b"x"]))
}

#[rustfmt::skip]
fn rows() -> Vec<(&'static str, Vec<u8>, Option<ProtocolVersion>, K)> {
    use K::*;
    let (v3, v5) = (Some(V311), Some(V5));
    let cid = st(b"c");
    vec![
        // --- Fixed header and framing (sections 1.5.5, 2.1) ---
        ("MQTT-1.5.5-1 five-byte remaining length", vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], v5, Malformed),
        ("MQTT-1.5.5-1 remaining length not in shortest form", vec![0xC0, 0x80, 0x00], v5, Malformed),
        ("remaining length larger than the frame", vec![0xC0, 0x01], v5, Malformed),
        ("frame longer than its remaining length", vec![0xC0, 0x00, 0x00], v5, Malformed),
        ("section 3.12.1 PINGREQ with a body", frame(0xC0, &[0]), v3, Malformed),
        ("section 3.13.1 PINGRESP with a body", frame(0xD0, &[0]), v5, Malformed),
        ("section 2.1.2 reserved packet type 0", frame(0x00, &[]), v5, Malformed),
        ("3.1.1 section 2.2.1 packet type 15 (AUTH) is forbidden", frame(0xF0, &[]), v3, Malformed),
        ("MQTT-2.1.3-1 PUBACK with flags 0b0001", frame(0x41, &[0, 1]), v3, Malformed),
        ("MQTT-3.6.1-1 PUBREL with flags 0b0000", frame(0x60, &[0, 1]), v5, Malformed),
        ("MQTT-3.8.1-1 SUBSCRIBE with flags 0b0000", frame(0x80, &cat(&[&[0, 1], &st(b"a"), &[0]])), v3, Malformed),
        ("MQTT-3.10.1-1 UNSUBSCRIBE with flags 0b0011", frame(0xA3, &cat(&[&[0, 1], &st(b"a")])), v3, Malformed),
        ("MQTT-3.14.1-1 DISCONNECT with flags", frame(0xE1, &[]), v5, Malformed),
        ("MQTT-3.15.1-1 AUTH with flags", frame(0xF2, &[]), v5, Malformed),
        ("MQTT-2.1.3-1 PINGREQ with flags", frame(0xC8, &[]), v3, Malformed),
        ("MQTT-2.1.3-1 CONNECT with flags", frame(0x11, &cat(&[&st(b"MQTT"), &[4, 2, 0, 60], &cid])), None, Malformed),
        // --- Connection state (section 3.1.0) ---
        ("MQTT-3.1.0-1 first packet is not CONNECT", frame(0xC0, &[]), None, Protocol),
        ("MQTT-3.1.0-1 PUBLISH before CONNECT", frame(0x30, &cat(&[&st(b"t"), b"x"])), None, Protocol),
        ("MQTT-3.1.0-2 second CONNECT", connect_v3(0x02, &cid), v3, Protocol),
        // --- CONNECT (section 3.1) ---
        ("MQTT-3.1.2-1 protocol name MQIsdp (MQTT 3.1)", frame(0x10, &cat(&[&st(b"MQIsdp"), &[3, 2, 0, 60], &cid])), None, Unsupported),
        ("MQTT-3.1.2-1 protocol name not MQTT", frame(0x10, &cat(&[&st(b"HTTP"), &[4, 2, 0, 60], &cid])), None, Unsupported),
        ("MQTT-3.1.2-2 protocol level 3 with name MQTT", frame(0x10, &cat(&[&st(b"MQTT"), &[3, 2, 0, 60], &cid])), None, Unsupported),
        ("MQTT-3.1.2-2 protocol level 6", frame(0x10, &cat(&[&st(b"MQTT"), &[6, 2, 0, 60], &cid])), None, Unsupported),
        ("CONNECT truncated inside the protocol name", frame(0x10, &[0, 4, b'M', b'Q']), None, Malformed),
        ("MQTT-3.1.2-3 reserved connect flag set", connect_v3(0x03, &cid), None, Malformed),
        ("MQTT-3.1.2-11 will QoS without will flag", connect_v5(0x0A, &[], &cid), None, Malformed),
        ("3.1.1 MQTT-3.1.2-13 will QoS without will flag", connect_v3(0x12, &cid), None, Malformed),
        ("MQTT-3.1.2-13 (3.1.1 MQTT-3.1.2-15) will retain without will flag", connect_v3(0x22, &cid), None, Malformed),
        ("MQTT-3.1.2-12 will QoS 3", connect_v5(0x1E, &[], &cat(&[&cid, &[0], &st(b"w"), &st(b"p")])), None, Malformed),
        ("3.1.1 MQTT-3.1.2-14 will QoS 3", connect_v3(0x1E, &cat(&[&cid, &st(b"w"), &st(b"p")])), None, Malformed),
        ("3.1.1 MQTT-3.1.2-22 password flag without user name flag", connect_v3(0x42, &cat(&[&cid, &st(b"pw")])), None, Malformed),
        ("MQTT-3.1.3-3 client identifier missing", connect_v3(0x02, &[]), None, Malformed),
        ("MQTT-3.1.2-9 will flag set but no will topic", connect_v3(0x06, &cid), None, Malformed),
        ("MQTT-3.1.2-17 user name flag set but no user name", connect_v5(0x82, &[], &cid), None, Malformed),
        ("MQTT-3.1.2-19 password flag set but no password", connect_v5(0x42, &[], &cid), None, Malformed),
        ("CONNECT with bytes after the password", connect_v3(0xC2, &cat(&[&cid, &st(b"u"), &st(b"p"), &[0]])), None, Malformed),
        ("MQTT-1.5.4-1 client identifier not UTF-8", connect_v3(0x02, &st(&[0xC3, 0x28])), None, Malformed),
        ("MQTT-1.5.4-1 client identifier with a UTF-16 surrogate", connect_v5(0x02, &[], &st(&[0xED, 0xA0, 0x80])), None, Malformed),
        ("MQTT-1.5.4-2 client identifier contains U+0000", connect_v3(0x02, &st(b"a\0b")), None, Malformed),
        ("MQTT-1.5.4-2 user name contains U+0000", connect_v3(0x82, &cat(&[&cid, &st(b"\0")])), None, Malformed),
        ("MQTT-4.7.0-1 will topic with a wildcard", connect_v3(0x06, &cat(&[&cid, &st(b"a/#"), &st(b"p")])), None, Protocol),
        ("MQTT-4.7.3-1 empty will topic", connect_v3(0x06, &cat(&[&cid, &st(b""), &st(b"p")])), None, Protocol),
        ("section 2.2.2.2 Topic Alias not valid in CONNECT", connect_v5(0x02, &[0x23, 0, 1], &cid), None, Malformed),
        ("section 2.2.2.2 unknown property identifier 0x7F", connect_v5(0x02, &[0x7F, 0], &cid), None, Malformed),
        ("section 2.2.2.2 property identifier 0", connect_v5(0x02, &[0x00], &cid), None, Malformed),
        ("section 3.1.2.11.2 Session Expiry Interval twice", connect_v5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2], &cid), None, Protocol),
        ("section 3.1.2.11.3 Receive Maximum 0", connect_v5(0x02, &[0x21, 0, 0], &cid), None, Protocol),
        ("section 3.1.2.11.4 Maximum Packet Size 0", connect_v5(0x02, &[0x27, 0, 0, 0, 0], &cid), None, Protocol),
        ("section 3.1.2.11.6 Request Response Information 2", connect_v5(0x02, &[0x19, 2], &cid), None, Protocol),
        ("section 3.1.2.11.7 Request Problem Information 2", connect_v5(0x02, &[0x17, 2], &cid), None, Protocol),
        ("section 3.1.2.11.10 Authentication Data without Authentication Method", connect_v5(0x02, &cat(&[&[0x16], &st(b"d")]), &cid), None, Protocol),
        ("section 3.1.2.11.9 Authentication Method twice", connect_v5(0x02, &cat(&[&[0x15], &st(b"a"), &[0x15], &st(b"a")]), &cid), None, Protocol),
        ("section 2.2.2.1 property length beyond the packet", frame(0x10, &cat(&[&st(b"MQTT"), &[5, 2, 0, 60, 0x05, 0x11]])), None, Malformed),
        ("section 2.2.2.2 property value truncated", connect_v5(0x02, &[0x11, 0, 0], &cid), None, Malformed),
        ("section 3.1.3.2 Session Expiry Interval not valid in will properties", connect_v5(0x06, &[], &cat(&[&cid, &props(&[0x11, 0, 0, 0, 1]), &st(b"w"), &st(b"p")])), None, Malformed),
        ("section 3.1.3.2.3 will Payload Format Indicator 2", connect_v5(0x06, &[], &cat(&[&cid, &props(&[0x01, 2]), &st(b"w"), &st(b"p")])), None, Protocol),
        ("section 3.1.3.2.2 Will Delay Interval twice", connect_v5(0x06, &[], &cat(&[&cid, &props(&[0x18, 0, 0, 0, 1, 0x18, 0, 0, 0, 1]), &st(b"w"), &st(b"p")])), None, Protocol),
        // --- CONNACK (section 3.2) ---
        ("MQTT-3.2.2-1 reserved connect acknowledge flags", frame(0x20, &[0x02, 0x00]), v3, Malformed),
        ("3.1.1 section 3.2.2.3 reserved return code 6", frame(0x20, &[0x00, 0x06]), v3, Protocol),
        ("3.1.1 MQTT-3.2.2-4 session present with a refusal", frame(0x20, &[0x01, 0x05]), v3, Protocol),
        ("MQTT-3.2.2-6 session present with a refusal", frame(0x20, &[0x01, 0x87, 0x00]), v5, Protocol),
        ("section 3.2.2.2 reason code 0x04 not valid in CONNACK", frame(0x20, &[0x00, 0x04, 0x00]), v5, Protocol),
        ("section 3.2.2.3 CONNACK without property length", frame(0x20, &[0x00, 0x00]), v5, Malformed),
        ("section 3.2.2.3.4 Maximum QoS 2", frame(0x20, &cat(&[&[0, 0], &props(&[0x24, 2])])), v5, Protocol),
        ("section 3.2.2.3.5 Retain Available 2", frame(0x20, &cat(&[&[0, 0], &props(&[0x25, 2])])), v5, Protocol),
        ("section 3.2.2.3.11 Wildcard Subscription Available 2", frame(0x20, &cat(&[&[0, 0], &props(&[0x28, 2])])), v5, Protocol),
        ("section 3.2.2.3.12 Subscription Identifiers Available 7", frame(0x20, &cat(&[&[0, 0], &props(&[0x29, 7])])), v5, Protocol),
        ("section 3.2.2.3.13 Shared Subscription Available 2", frame(0x20, &cat(&[&[0, 0], &props(&[0x2A, 2])])), v5, Protocol),
        ("section 2.2.2.2 Will Delay Interval not valid in CONNACK", frame(0x20, &cat(&[&[0, 0], &props(&[0x18, 0, 0, 0, 1])])), v5, Malformed),
        ("3.1.1 CONNACK with trailing bytes", frame(0x20, &[0, 0, 0]), v3, Malformed),
        // --- PUBLISH (section 3.3) ---
        ("MQTT-3.3.1-4 PUBLISH with QoS 3", frame(0x36, &cat(&[&st(b"t"), &[0, 1]])), v3, Malformed),
        ("MQTT-3.3.1-2 DUP set on a QoS 0 PUBLISH", frame(0x38, &cat(&[&st(b"t"), b"x"])), v3, Malformed),
        ("MQTT-3.3.2-2 '+' in a topic name", frame(0x30, &cat(&[&st(b"a/+/c"), &[0]])), v5, Protocol),
        ("MQTT-3.3.2-2 '#' in a topic name", frame(0x30, &cat(&[&st(b"a/#"), b"x"])), v3, Protocol),
        ("3.1.1 MQTT-4.7.3-1 empty topic name", frame(0x30, &cat(&[&st(b""), b"x"])), v3, Protocol),
        ("section 3.3.2.1 empty topic name without Topic Alias", frame(0x30, &cat(&[&st(b""), &[0], b"x"])), v5, Protocol),
        ("MQTT-2.2.1-3 QoS 1 PUBLISH with packet identifier 0", frame(0x32, &cat(&[&st(b"t"), &[0, 0]])), v3, Protocol),
        ("MQTT-3.3.2-1 topic name not UTF-8", frame(0x30, &cat(&[&st(&[b'a', 0xFF]), b"x"])), v3, Malformed),
        ("MQTT-1.5.4-2 topic name contains U+0000", frame(0x30, &cat(&[&st(b"a\0"), b"x"])), v3, Malformed),
        ("PUBLISH topic length beyond the packet", frame(0x30, &[0, 9, b'a']), v3, Malformed),
        ("MQTT-2.2.1-2 QoS 2 PUBLISH without packet identifier", frame(0x34, &st(b"t")), v3, Malformed),
        ("v5 PUBLISH without property length", frame(0x30, &st(b"t")), v5, Malformed),
        // Topic Alias 0 decodes: the session answers it with 0x94 (section 3.3.4), see e2e malformed tests.
        ("section 3.3.2.3.4 Topic Alias twice", publish_v5(&[0x23, 0, 1, 0x23, 0, 2]), v5, Protocol),
        ("section 3.3.2.3.2 Payload Format Indicator 2", publish_v5(&[0x01, 2]), v5, Protocol),
        ("section 3.3.2.3.6 Response Topic twice", publish_v5(&cat(&[&[0x08], &st(b"r"), &[0x08], &st(b"r")])), v5, Protocol),
        ("MQTT-3.3.2-14 Response Topic with a wildcard", publish_v5(&cat(&[&[0x08], &st(b"r/+")])), v5, Protocol),
        ("section 3.3.2.3.9 Content Type twice", publish_v5(&cat(&[&[0x03], &st(b"a"), &[0x03], &st(b"b")])), v5, Protocol),
        ("section 3.3.2.3.8 Subscription Identifier 0", publish_v5(&[0x0B, 0]), v5, Protocol),
        ("MQTT-1.5.5-1 Subscription Identifier of five bytes", publish_v5(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), v5, Malformed),
        ("section 2.2.2.2 Session Expiry Interval not valid in PUBLISH", publish_v5(&[0x11, 0, 0, 0, 1]), v5, Malformed),
        ("MQTT-1.5.4-1 user property value not UTF-8", publish_v5(&cat(&[&[0x26], &st(b"k"), &st(&[0xC0, 0x80])])), v5, Malformed),
        // --- PUBACK, PUBREC, PUBREL, PUBCOMP (sections 3.4 to 3.7) ---
        ("MQTT-2.2.1-3 PUBACK with packet identifier 0", frame(0x40, &[0, 0]), v3, Protocol),
        ("PUBACK truncated packet identifier", frame(0x40, &[0]), v5, Malformed),
        ("3.1.1 section 3.4.2 PUBACK with a reason code", frame(0x40, &[0, 1, 0]), v3, Malformed),
        ("MQTT-3.4.2-1 PUBACK reason code 0x92", frame(0x40, &[0, 1, 0x92]), v5, Protocol),
        ("MQTT-3.5.2-1 PUBREC reason code 0x04", frame(0x50, &[0, 1, 0x04]), v5, Protocol),
        ("MQTT-3.6.2-1 PUBREL reason code 0x10", frame(0x62, &[0, 1, 0x10]), v5, Protocol),
        ("MQTT-3.7.2-1 PUBCOMP reason code 0x80", frame(0x70, &[0, 1, 0x80]), v5, Protocol),
        ("section 2.2.2.2 Topic Alias not valid in PUBCOMP", frame(0x70, &cat(&[&[0, 1, 0], &props(&[0x23, 0, 1])])), v5, Malformed),
        ("section 3.5.2.2.2 PUBREC Reason String twice", frame(0x50, &cat(&[&[0, 1, 0x80], &props(&cat(&[&[0x1F], &st(b"a"), &[0x1F], &st(b"b")]))])), v5, Protocol),
        ("PUBACK with bytes after its properties", frame(0x40, &[0, 1, 0, 0, 0]), v5, Malformed),
        // --- SUBSCRIBE (section 3.8) ---
        ("3.1.1 MQTT-3.8.3-3 SUBSCRIBE without topic filters", frame(0x82, &[0, 1]), v3, Protocol),
        ("MQTT-3.8.3-2 SUBSCRIBE without topic filters", frame(0x82, &cat(&[&[0, 1], &props(&[0x0B, 1])])), v5, Protocol),
        ("MQTT-2.2.1-3 SUBSCRIBE with packet identifier 0", frame(0x82, &cat(&[&[0, 0], &st(b"a"), &[0]])), v3, Protocol),
        ("MQTT-3.8.3-5 reserved subscription option bits", frame(0x82, &cat(&[&[0, 1, 0], &st(b"a"), &[0x40]])), v5, Malformed),
        ("section 3.8.3.1 Retain Handling 3", frame(0x82, &cat(&[&[0, 1, 0], &st(b"a"), &[0x30]])), v5, Protocol),
        ("section 3.8.3.1 Maximum QoS 3", frame(0x82, &cat(&[&[0, 1, 0], &st(b"a"), &[0x03]])), v5, Protocol),
        ("MQTT-3.8.3-4 No Local on a shared subscription", frame(0x82, &cat(&[&[0, 1, 0], &st(b"$share/g/a"), &[0x04]])), v5, Protocol),
        ("3.1.1 MQTT-3-8.3-4 upper bits of the requested QoS set", frame(0x82, &cat(&[&[0, 1], &st(b"a"), &[0x04]])), v3, Malformed),
        ("3.1.1 MQTT-3-8.3-4 requested QoS 3", frame(0x82, &cat(&[&[0, 1], &st(b"a"), &[0x03]])), v3, Malformed),
        ("section 3.8.2.1.2 two Subscription Identifiers", frame(0x82, &cat(&[&[0, 1], &props(&[0x0B, 1, 0x0B, 2]), &st(b"a"), &[0]])), v5, Protocol),
        ("section 3.8.2.1.2 Subscription Identifier 0", frame(0x82, &cat(&[&[0, 1], &props(&[0x0B, 0]), &st(b"a"), &[0]])), v5, Protocol),
        ("section 2.2.2.2 Reason String not valid in SUBSCRIBE", frame(0x82, &cat(&[&[0, 1], &props(&cat(&[&[0x1F], &st(b"r")])), &st(b"a"), &[0]])), v5, Malformed),
        ("section 3.8.3 topic filter without options byte", frame(0x82, &cat(&[&[0, 1], &st(b"a")])), v3, Malformed),
        ("MQTT-1.5.4-2 topic filter contains U+0000", frame(0x82, &cat(&[&[0, 1], &st(b"a\0"), &[0]])), v3, Malformed),
        // --- SUBACK (section 3.9) ---
        ("3.1.1 MQTT-3.9.3-2 SUBACK return code 0x03", frame(0x90, &[0, 1, 0x03]), v3, Protocol),
        ("3.1.1 MQTT-3.9.3-2 SUBACK return code 0x8F", frame(0x90, &[0, 1, 0x8F]), v3, Protocol),
        ("MQTT-3.9.3-2 SUBACK reason code 0x11", frame(0x90, &[0, 1, 0, 0x11]), v5, Protocol),
        ("MQTT-3.8.4-6 SUBACK without reason codes", frame(0x90, &[0, 1, 0]), v5, Protocol),
        // --- UNSUBSCRIBE (section 3.10) ---
        ("MQTT-3.10.3-2 UNSUBSCRIBE without topic filters", frame(0xA2, &[0, 1]), v3, Protocol),
        ("MQTT-3.10.3-2 v5 UNSUBSCRIBE without topic filters", frame(0xA2, &[0, 1, 0]), v5, Protocol),
        ("section 2.2.2.2 Reason String not valid in UNSUBSCRIBE", frame(0xA2, &cat(&[&[0, 1], &props(&cat(&[&[0x1F], &st(b"r")])), &st(b"a")])), v5, Malformed),
        ("MQTT-3.10.3-1 topic filter not UTF-8", frame(0xA2, &cat(&[&[0, 1], &st(&[0xF8])])), v3, Malformed),
        // --- UNSUBACK (section 3.11) ---
        ("3.1.1 section 3.11 UNSUBACK with trailing bytes", frame(0xB0, &[0, 1, 0]), v3, Malformed),
        ("MQTT-3.11.3-2 UNSUBACK reason code 0x10", frame(0xB0, &[0, 1, 0, 0x10]), v5, Protocol),
        ("MQTT-2.2.1-3 UNSUBACK with packet identifier 0", frame(0xB0, &[0, 0]), v3, Protocol),
        // --- DISCONNECT (section 3.14) ---
        ("3.1.1 section 3.14 DISCONNECT with a body", frame(0xE0, &[0]), v3, Malformed),
        ("MQTT-3.14.2-1 DISCONNECT reason code 0x84", frame(0xE0, &[0x84]), v5, Protocol),
        ("section 3.14.2.2.2 Session Expiry Interval twice", frame(0xE0, &cat(&[&[0x00], &props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1])])), v5, Protocol),
        ("section 2.2.2.2 Topic Alias not valid in DISCONNECT", frame(0xE0, &cat(&[&[0x00], &props(&[0x23, 0, 1])])), v5, Malformed),
        // --- AUTH (section 3.15) ---
        ("section 3.15.2.2.1 AUTH reason code without property length", frame(0xF0, &[0x18]), v5, Malformed),
        ("MQTT-3.15.2-1 AUTH reason code 0x80", frame(0xF0, &cat(&[&[0x80], &props(&cat(&[&[0x15], &st(b"m")]))])), v5, Protocol),
        ("section 3.15.2.2.2 AUTH without Authentication Method", frame(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x1F], &st(b"r")]))])), v5, Protocol),
        ("section 3.15.2.2.3 AUTH data without method", frame(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x16], &st(b"d")]))])), v5, Protocol),
    ]
}

#[test]
fn invalid_packets_are_rejected_with_the_specified_error() {
    let rows = rows();
    assert!(rows.len() >= 40);
    let mut failures = Vec::new();
    for (name, bytes, version, expected) in &rows {
        match decode(Bytes::copy_from_slice(bytes), *version) {
            Ok(p) => failures.push(format!("{name}: decoded as {p:?}")),
            Err(e) if kind(&e) != *expected => {
                failures.push(format!("{name}: expected {expected:?}, got {e:?}"))
            }
            Err(e) => {
                if std::env::var_os("CODEC_SHOW_ROWS").is_some() {
                    eprintln!("{name:75} => {e}");
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn table_rows_are_valid_once_the_fault_is_removed() {
    // Guards against rows that fail for a reason other than the one they name: a few rows, fixed.
    let cid = st(b"c");
    let fixed: Vec<(Vec<u8>, Option<ProtocolVersion>)> = vec![
        (connect_v3(0x02, &cid), None),
        (connect_v5(0x02, &[0x21, 0, 1], &cid), None),
        (
            connect_v5(
                0x06,
                &[],
                &cat(&[&cid, &props(&[0x01, 1]), &st(b"w"), &st(b"p")]),
            ),
            None,
        ),
        (publish_v5(&[0x23, 0, 1]), Some(V5)),
        (
            frame(0x82, &cat(&[&[0, 1, 0], &st(b"$share/g/a"), &[0x00]])),
            Some(V5),
        ),
        (
            frame(0x82, &cat(&[&[0, 1], &st(b"a"), &[0x02]])),
            Some(V311),
        ),
        (
            frame(0xF0, &cat(&[&[0x18], &props(&cat(&[&[0x15], &st(b"m")]))])),
            Some(V5),
        ),
        (frame(0x20, &[0x01, 0x00, 0x00]), Some(V5)),
        (frame(0xE0, &[0x8E]), Some(V5)),
    ];
    for (bytes, version) in fixed {
        decode(Bytes::from(bytes.clone()), version)
            .unwrap_or_else(|e| panic!("{bytes:02x?} should decode: {e}"));
    }
}

/// Rows used as seeds by the robustness test.
pub(super) fn invalid_frames() -> Vec<(Vec<u8>, Option<ProtocolVersion>)> {
    rows().into_iter().map(|(_, b, v, _)| (b, v)).collect()
}
