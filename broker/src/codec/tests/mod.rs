//! Tests of the codec's public API, shared fixtures first.
//!
//! * `roundtrip`: every packet type, both versions, rich properties; short forms; byte vectors.
//! * `malformed`: a table of invalid packets and the error each must produce, by spec statement.
//! * `robustness`: every prefix and thousands of mutations of valid packets, decoded without
//!   panicking; whatever still decodes must survive a second round trip.
//! * `framing`: `check` on remaining length boundaries, `TooLarge`, `connect_version`.

mod framing;
mod malformed;
mod robustness;
mod roundtrip;

use super::*;
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

fn bs(s: &str) -> ByteString {
    ByteString::from(s)
}

fn user_props() -> Vec<(ByteString, ByteString)> {
    vec![
        (bs("région"), bs("Île-de-France")),
        (bs("k"), bs("")),
        (bs("k"), bs("repeated keys keep their order 🦀")),
    ]
}

/// Will properties with every property the will allows (section 3.1.3.2).
pub(super) fn will_props() -> Properties {
    Properties::from(PropertyValues {
        will_delay_interval: Some(30),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some(bs("text/plain; charset=utf-8")),
        response_topic: Some(bs("replies/température")),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        user_properties: user_props(),
        ..Default::default()
    })
}

/// Sample packets. Those with `v5_only` set cannot be expressed in 3.1.1 (they are invalid
/// there, not just lossy).
pub(super) struct Sample {
    pub packet: Packet,
    pub v5_only: bool,
}

fn s(packet: Packet) -> Sample {
    Sample {
        packet,
        v5_only: false,
    }
}

fn v5(packet: Packet) -> Sample {
    Sample {
        packet,
        v5_only: true,
    }
}

/// One or more packets of every type, with every property their type allows.
pub(super) fn samples() -> Vec<Sample> {
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: bs("client-⚡-1"),
        will: Some(Will {
            topic: bs("status/client-1"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: will_props(),
        }),
        username: Some(bs("alice")),
        password: Some(Bytes::from_static(b"s3cr\x00t")),
        properties: Properties::from(PropertyValues {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            maximum_packet_size: Some(1 << 20),
            topic_alias_maximum: Some(10),
            request_response_information: Some(1),
            request_problem_information: Some(0),
            user_properties: user_props(),
            authentication_method: Some(bs("SCRAM-SHA-256")),
            authentication_data: Some(Bytes::from_static(b"n,,n=alice")),
            ..Default::default()
        }),
    };
    let minimal_connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 0,
        client_id: bs(""),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    let password_only = Connect {
        password: Some(Bytes::from_static(b"token")),
        will: Some(Will {
            topic: bs("w"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }),
        ..minimal_connect.clone()
    };
    let connack_props = Properties::from(PropertyValues {
        session_expiry_interval: Some(0),
        receive_maximum: Some(100),
        maximum_qos: Some(1),
        retain_available: Some(0),
        maximum_packet_size: Some(65_536),
        assigned_client_identifier: Some(bs("auto-7f3a")),
        topic_alias_maximum: Some(16),
        reason_string: Some(bs("welcome")),
        user_properties: user_props(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(0),
        shared_subscription_available: Some(1),
        server_keep_alive: Some(30),
        response_information: Some(bs("responses/")),
        server_reference: Some(bs("other.example:1883")),
        authentication_method: Some(bs("SCRAM-SHA-256")),
        authentication_data: Some(Bytes::from_static(b"r=nonce")),
        ..Default::default()
    });
    let publish_props = Properties::from(PropertyValues {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(7),
        topic_alias: Some(5),
        response_topic: Some(bs("reply/1")),
        correlation_data: Some(Bytes::from_static(b"req-42")),
        user_properties: user_props(),
        subscription_identifiers: vec![1, 268_435_455, 42],
        content_type: Some(bs("application/json")),
        ..Default::default()
    });
    let ack_props = Properties::from(PropertyValues {
        reason_string: Some(bs("because")),
        user_properties: user_props(),
        ..Default::default()
    });
    let publish = |qos, dup, retain, topic: &str, id, properties, payload: &'static [u8]| {
        Packet::Publish(Publish {
            dup,
            qos,
            retain,
            topic: bs(topic),
            packet_id: id,
            properties,
            payload: Bytes::from_static(payload),
        })
    };
    let opts = |qos, no_local, retain_as_published, retain_handling| SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    };
    let response = |id, code, properties| PubResponse {
        packet_id: id,
        reason_code: ReasonCode(code),
        properties,
    };
    vec![
        s(Packet::Connect(Box::new(connect))),
        s(Packet::Connect(Box::new(minimal_connect))),
        // 5.0 allows a password without a user name (section 3.1.2.9); 3.1.1 does not.
        v5(Packet::Connect(Box::new(password_only))),
        s(Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: connack_props,
        })),
        s(Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::NOT_AUTHORIZED,
            properties: Properties::from(PropertyValues {
                reason_string: Some(bs("no")),
                ..Default::default()
            }),
        })),
        s(Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::SERVER_BUSY,
            properties: Properties::default(),
        })),
        s(publish(
            QoS::AtMostOnce,
            false,
            false,
            "a/b",
            None,
            Properties::default(),
            b"",
        )),
        s(publish(
            QoS::AtLeastOnce,
            true,
            true,
            "sensors/température/°C",
            Some(1),
            Properties::default(),
            &[0u8; 64],
        )),
        s(publish(
            QoS::ExactlyOnce,
            false,
            true,
            "$SYS/x",
            Some(65_535),
            publish_props.clone(),
            b"{\"v\":1}",
        )),
        // An empty topic is valid in 5.0 only together with a Topic Alias (section 3.3.2.1).
        v5(publish(
            QoS::AtLeastOnce,
            false,
            false,
            "",
            Some(9),
            Properties::from(PropertyValues {
                topic_alias: Some(5),
                ..Default::default()
            }),
            b"aliased",
        )),
        s(Packet::PubAck(PubResponse::success(1))),
        s(Packet::PubAck(response(2, 0x10, Properties::default()))),
        s(Packet::PubAck(response(3, 0x97, ack_props.clone()))),
        s(Packet::PubRec(response(4, 0x80, ack_props.clone()))),
        s(Packet::PubRec(PubResponse::success(5))),
        s(Packet::PubRel(response(6, 0x92, Properties::default()))),
        s(Packet::PubRel(PubResponse::success(7))),
        s(Packet::PubComp(response(8, 0x00, ack_props.clone()))),
        s(Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                (
                    bs("a/+/c"),
                    opts(QoS::AtMostOnce, false, false, RetainHandling::OnSubscribe),
                ),
                (
                    bs("#"),
                    opts(
                        QoS::AtLeastOnce,
                        true,
                        true,
                        RetainHandling::OnNewSubscription,
                    ),
                ),
                (
                    bs("$share/g/x/#"),
                    opts(QoS::ExactlyOnce, false, true, RetainHandling::Never),
                ),
            ],
            properties: Properties::from(PropertyValues {
                subscription_identifiers: vec![268_435_455],
                user_properties: user_props(),
                ..Default::default()
            }),
        })),
        s(Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: [0x00, 0x01, 0x02, 0x80, 0x8F, 0xA2]
                .into_iter()
                .map(ReasonCode)
                .collect(),
            properties: ack_props.clone(),
        })),
        s(Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec![bs("a/+/c"), bs("#"), bs("über/alles")],
            properties: Properties::from(PropertyValues {
                user_properties: user_props(),
                ..Default::default()
            }),
        })),
        s(Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            reason_codes: [0x00, 0x11, 0x87].into_iter().map(ReasonCode).collect(),
            properties: ack_props.clone(),
        })),
        s(Packet::PingReq),
        s(Packet::PingResp),
        s(Packet::Disconnect(Disconnect::new(
            ReasonCode::NORMAL_DISCONNECTION,
        ))),
        s(Packet::Disconnect(Disconnect::new(
            ReasonCode::DISCONNECT_WITH_WILL,
        ))),
        s(Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SESSION_TAKEN_OVER,
            properties: Properties::from(PropertyValues {
                session_expiry_interval: Some(0),
                reason_string: Some(bs("taken over")),
                server_reference: Some(bs("b.example")),
                user_properties: user_props(),
                ..Default::default()
            }),
        })),
        v5(Packet::Auth(Auth {
            reason_code: ReasonCode::SUCCESS,
            properties: Properties::default(),
        })),
        v5(Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: Properties::from(PropertyValues {
                authentication_method: Some(bs("SCRAM-SHA-256")),
                authentication_data: Some(Bytes::from_static(b"c=biws,r=nonce")),
                reason_string: Some(bs("step 2")),
                user_properties: user_props(),
                ..Default::default()
            }),
        })),
    ]
}

/// What a packet becomes after a trip through MQTT 3.1.1: no properties, no v5-only fields,
/// reason codes reduced to what 3.1.1 can say.
pub(super) fn as_v311(packet: &Packet) -> Packet {
    let mut p = packet.clone();
    match &mut p {
        Packet::Connect(c) => {
            c.protocol = ProtocolVersion::V311;
            c.properties = Properties::default();
            if let Some(w) = &mut c.will {
                w.properties = Properties::default();
            }
        }
        Packet::ConnAck(c) => {
            c.properties = Properties::default();
            c.reason_code = reason::connack_from_v311(connack_v311_return_code(c.reason_code))
                .expect("mapped codes are valid");
        }
        Packet::Publish(x) => x.properties = Properties::default(),
        Packet::PubAck(x) | Packet::PubRec(x) | Packet::PubRel(x) | Packet::PubComp(x) => {
            *x = PubResponse::success(x.packet_id);
        }
        Packet::Subscribe(x) => {
            x.properties = Properties::default();
            for (_, o) in &mut x.filters {
                *o = SubscriptionOptions {
                    qos: o.qos,
                    ..Default::default()
                };
            }
        }
        Packet::SubAck(x) => {
            x.properties = Properties::default();
            for c in &mut x.reason_codes {
                *c = ReasonCode(reason::suback_v311_code(*c));
            }
        }
        Packet::Unsubscribe(x) => x.properties = Properties::default(),
        Packet::UnsubAck(x) => {
            x.properties = Properties::default();
            x.reason_codes.clear();
        }
        Packet::Disconnect(d) => *d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION),
        Packet::PingReq | Packet::PingResp | Packet::Auth(_) => {}
    }
    p
}

/// The version to pass to `decode` for a packet: `None` for CONNECT.
pub(super) fn decode_version(packet: &Packet, v: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(v),
    }
}

/// Encodes and checks that `encoded_len` agrees and that `encode` appends.
pub(super) fn encode_checked(packet: &Packet, v: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::new();
    out.put_slice(b"earlier bytes");
    encode(packet, v, &mut out);
    let frame = out.split_off(13).freeze();
    assert_eq!(&out[..], b"earlier bytes");
    assert_eq!(
        frame.len(),
        encoded_len(packet, v),
        "encoded_len of {packet:?}"
    );
    frame
}

/// Builds a frame from a first byte and a body, computing the remaining length.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first);
    primitives::Sink::varint(&mut out, body.len());
    out.put_slice(body);
    out.to_vec()
}
