//! Round trips of every packet type in both versions, the short forms the encoder must choose,
//! hand-written byte vectors, and the zero-copy guarantee of PUBLISH decoding.

use super::*;

fn roundtrip(packet: &Packet, v: ProtocolVersion) -> Packet {
    let frame = encode_checked(packet, v);
    assert_eq!(check(&frame, u32::MAX), Ok(Some(frame.len())));
    assert_eq!(check(&frame[..frame.len() - 1], u32::MAX), Ok(None));
    decode(frame, decode_version(packet, v))
        .unwrap_or_else(|e| panic!("{v:?} round trip of {packet:?} failed: {e}"))
}

#[test]
fn every_packet_type_round_trips_in_v5_with_rich_properties() {
    let samples = samples();
    for sample in &samples {
        assert_eq!(
            roundtrip(&sample.packet, ProtocolVersion::V5),
            sample.packet
        );
    }
    // Every packet type is covered.
    let mut kinds: Vec<u8> = samples.iter().map(|s| first_byte(&s.packet) >> 4).collect();
    kinds.dedup();
    assert_eq!(kinds, (1..=15).collect::<Vec<u8>>());
}

#[test]
fn every_packet_type_round_trips_in_v311() {
    for sample in samples().iter().filter(|s| !s.v5_only) {
        let expected = as_v311(&sample.packet);
        // The rich v5 packet loses exactly what 3.1.1 cannot say...
        assert_eq!(roundtrip(&sample.packet, ProtocolVersion::V311), expected);
        // ...and what 3.1.1 can say survives unchanged.
        assert_eq!(roundtrip(&expected, ProtocolVersion::V311), expected);
    }
}

#[test]
fn v311_encoding_never_carries_properties() {
    for sample in samples().iter().filter(|s| !s.v5_only) {
        let stripped = as_v311(&sample.packet);
        assert_eq!(
            encode_checked(&sample.packet, ProtocolVersion::V311),
            encode_checked(&stripped, ProtocolVersion::V311),
            "{:?}",
            sample.packet
        );
    }
}

#[test]
fn short_forms_are_used() {
    let v5 = ProtocolVersion::V5;
    let cases: Vec<(Packet, &[u8])> = vec![
        // Section 3.4.2.1: Success without properties has remaining length 2.
        (
            Packet::PubAck(PubResponse::success(1)),
            &[0x40, 0x02, 0x00, 0x01],
        ),
        (
            Packet::PubRel(PubResponse::success(1)),
            &[0x62, 0x02, 0x00, 0x01],
        ),
        // Section 3.4.2.2.1: no properties, so no property length.
        (
            Packet::PubRec(PubResponse {
                packet_id: 2,
                reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
                properties: Properties::default(),
            }),
            &[0x50, 0x03, 0x00, 0x02, 0x10],
        ),
        // Section 3.14.2.1: Normal disconnection without properties has remaining length 0.
        (
            Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION)),
            &[0xE0, 0x00],
        ),
        (
            Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL)),
            &[0xE0, 0x01, 0x04],
        ),
        // Section 3.15.2.1.
        (
            Packet::Auth(Auth {
                reason_code: ReasonCode::SUCCESS,
                properties: Properties::default(),
            }),
            &[0xF0, 0x00],
        ),
        (Packet::PingReq, &[0xC0, 0x00]),
        (Packet::PingResp, &[0xD0, 0x00]),
    ];
    for (packet, bytes) in cases {
        assert_eq!(&encode_checked(&packet, v5)[..], bytes, "{packet:?}");
        assert_eq!(decode(Bytes::from_static(bytes), Some(v5)).unwrap(), packet);
    }
    // Properties the packet type does not allow are not written (no Topic Alias in PUBACK).
    let stray = Packet::PubAck(PubResponse {
        packet_id: 1,
        reason_code: ReasonCode::SUCCESS,
        properties: Properties::from(PropertyValues {
            topic_alias: Some(1),
            ..Default::default()
        }),
    });
    assert_eq!(&encode_checked(&stray, v5)[..], &[0x40, 0x02, 0x00, 0x01]);
    // 3.1.1 acknowledgements are always just the packet identifier.
    let ack = Packet::PubAck(PubResponse {
        packet_id: 9,
        reason_code: ReasonCode::QUOTA_EXCEEDED,
        properties: Properties::default(),
    });
    assert_eq!(
        &encode_checked(&ack, ProtocolVersion::V311)[..],
        &[0x40, 0x02, 0x00, 0x09]
    );
    let disconnect = Packet::Disconnect(Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN));
    assert_eq!(
        &encode_checked(&disconnect, ProtocolVersion::V311)[..],
        &[0xE0, 0x00]
    );
}

#[test]
fn v5_acks_with_explicit_empty_properties_decode() {
    // A sender may also use the long forms.
    let v5 = Some(ProtocolVersion::V5);
    let long = decode(
        Bytes::from_static(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x00]),
        v5,
    )
    .unwrap();
    assert_eq!(long, Packet::PubAck(PubResponse::success(1)));
    let long = decode(Bytes::from_static(&[0xE0, 0x02, 0x00, 0x00]), v5).unwrap();
    assert_eq!(
        long,
        Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION))
    );
}

#[test]
fn connack_return_codes_map_between_versions() {
    let v3 = ProtocolVersion::V311;
    // 3.1.1 return codes 0..=5 decode to their v5 equivalents (section 3.2.2.3 of 3.1.1).
    for (rc, v5) in [
        (0u8, 0x00u8),
        (1, 0x84),
        (2, 0x85),
        (3, 0x88),
        (4, 0x86),
        (5, 0x87),
    ] {
        let frame = Bytes::from(vec![0x20, 0x02, 0x00, rc]);
        let packet = decode(frame.clone(), Some(v3)).unwrap();
        assert_eq!(
            packet,
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode(v5),
                properties: Properties::default(),
            })
        );
        assert_eq!(encode_checked(&packet, v3), frame);
    }
    // Codes without an exact equivalent.
    for (v5, rc) in [
        (0x89u8, 3u8),
        (0x8A, 5),
        (0x8C, 5),
        (0x97, 3),
        (0x80, 3),
        (0x9F, 3),
    ] {
        let packet = Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode(v5),
            properties: Properties::default(),
        });
        // Session present is cleared with a non-zero code (3.1.1: MQTT-3.2.2-4).
        assert_eq!(&encode_checked(&packet, v3)[..], &[0x20, 0x02, 0x00, rc]);
    }
}

#[test]
fn v311_suback_codes_collapse_to_0x80() {
    let packet = Packet::SubAck(SubAck {
        packet_id: 3,
        reason_codes: [0x00, 0x02, 0x8F, 0x87, 0x9E]
            .into_iter()
            .map(ReasonCode)
            .collect(),
        properties: Properties::default(),
    });
    assert_eq!(
        &encode_checked(&packet, ProtocolVersion::V311)[..],
        &[0x90, 0x07, 0x00, 0x03, 0x00, 0x02, 0x80, 0x80, 0x80]
    );
}

#[test]
fn hand_written_connect_vectors() {
    // 3.1.1: "MQTT", level 4, clean session, keep alive 60, client id "abcd".
    let v311 = Bytes::from_static(&[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x04, b'a',
        b'b', b'c', b'd',
    ]);
    // 5.0: the same with a property length of 0.
    let v5 = Bytes::from_static(&[
        0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x04,
        b'a', b'b', b'c', b'd',
    ]);
    for (frame, version) in [(v311, ProtocolVersion::V311), (v5, ProtocolVersion::V5)] {
        let packet = decode(frame.clone(), None).unwrap();
        let Packet::Connect(c) = &packet else {
            panic!("not a CONNECT: {packet:?}")
        };
        assert_eq!(c.protocol, version);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(&*c.client_id, "abcd");
        assert_eq!(encode_checked(&packet, version), frame);
        assert_eq!(connect_version(&frame), Some(version));
    }
}

#[test]
fn publish_decoding_copies_neither_topic_nor_payload() {
    for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: bs("a/b/c"),
            packet_id: Some(7),
            properties: Properties::default(),
            payload: Bytes::from_static(&[0xAB; 64]),
        });
        let frame = encode_checked(&packet, v);
        let range = frame.as_ptr_range();
        let Packet::Publish(p) = decode(frame.clone(), Some(v)).unwrap() else {
            panic!()
        };
        assert!(range.contains(&p.topic.as_bytes().as_ptr()));
        assert!(range.contains(&p.payload.as_ptr()));
        assert_eq!(p.payload.len(), 64);
    }
}

#[test]
fn encoder_sanitises_what_would_be_invalid() {
    let v5 = ProtocolVersion::V5;
    // DUP is dropped from a QoS 0 PUBLISH (MQTT-3.3.1-2), and a stray packet id is not written.
    let packet = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: bs("t"),
        packet_id: Some(3),
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        &encode_checked(&packet, v5)[..],
        &[0x30, 0x04, 0x00, 0x01, b't', 0x00]
    );
    // Only one subscription identifier fits in a SUBSCRIBE (section 3.8.2.1.2).
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(bs("t"), SubscriptionOptions::default())],
        properties: Properties::from(PropertyValues {
            subscription_identifiers: vec![5, 6],
            ..Default::default()
        }),
    });
    let Packet::Subscribe(back) = decode(encode_checked(&packet, v5), Some(v5)).unwrap() else {
        panic!()
    };
    assert_eq!(back.properties.subscription_identifiers, vec![5]);
}
