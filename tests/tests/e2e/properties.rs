//! MQTT 5 properties end to end: topic aliases both ways, message expiry, the properties a
//! broker forwards unaltered (payload format, content type, response topic, correlation data,
//! user properties), the client's Maximum Packet Size, Request Problem Information and Request
//! Response Information. Byte-exact checks, so the raw client is used throughout.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use moat::codec::{
    self, Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, ReasonCode,
};

use crate::harness;
use crate::harness::flows::{Peer, connect_packet, publish_packet, text};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// A v5 peer whose CONNECT carries `properties`.
async fn connect_props(addr: std::net::SocketAddr, id: &str, properties: Properties) -> Peer {
    let mut connect = connect_packet(V5, id);
    connect.properties = properties;
    Peer::connect_with(addr, connect).await.0
}

/// A v5 peer with a persistent session (Session Expiry Interval 60 s).
async fn connect_persistent(addr: std::net::SocketAddr, id: &str, clean_start: bool) -> Peer {
    let mut connect = connect_packet(V5, id);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(60);
    Peer::connect_with(addr, connect).await.0
}

/// Topic, payload format indicator, content type, payload and QoS of one published message.
type FormatCase<'a> = (&'a str, Option<u8>, Option<&'a str>, &'a [u8], QoS);

fn with_props(mut p: Publish, properties: Properties) -> Publish {
    p.properties = properties;
    p
}

/// A client sets a topic alias with a topic, then publishes with the alias alone, then remaps
/// it: the broker resolves each alias (section 3.3.2.3.4, MQTT-3.3.2-12) and subscribers get
/// the full topic name, never the publisher's alias.
#[tokio::test]
async fn client_topic_alias_is_resolved_to_the_full_topic() {
    let broker = harness::start().await;
    let mut sub = Peer::connect(broker.addr, V5, "alias-in-sub").await;
    sub.subscribe("ta/#", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "alias-in-pub").await;
    let alias = |n| {
        Properties::from(PropertyValues {
            topic_alias: Some(n),
            ..PropertyValues::default()
        })
    };
    let steps: [(&str, u16, &[u8]); 5] = [
        ("ta/long/topic/name", 1, b"1"),
        ("", 1, b"2"),
        ("ta/other", 2, b"3"),
        ("ta/remapped", 1, b"4"),
        ("", 1, b"5"),
    ];
    for (topic, n, payload) in steps {
        let ack = publisher
            .publish(with_props(
                publish_packet(topic, payload, QoS::AtLeastOnce, false),
                alias(n),
            ))
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{topic:?} alias {n}");
    }
    publisher
        .publish(with_props(
            publish_packet("", b"6", QoS::AtMostOnce, false),
            alias(2),
        ))
        .await;

    let got: Vec<(String, String)> = sub
        .recv_publishes(6)
        .await
        .iter()
        .map(|p| {
            assert_eq!(p.properties.topic_alias, None, "{p:?}");
            text(p)
        })
        .collect();
    let want = [
        ("ta/long/topic/name", "1"),
        ("ta/long/topic/name", "2"),
        ("ta/other", "3"),
        ("ta/remapped", "4"),
        ("ta/remapped", "5"),
        ("ta/other", "6"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|&(t, p)| (t.into(), p.into())).collect();
    assert_eq!(got, want);
}

/// Resolves server-to-client topic aliases as a client must (section 3.3.2.3.4), checking
/// each alias is within the client's Topic Alias Maximum (MQTT-3.1.2-26, MQTT-3.3.2-11).
fn resolve(aliases: &mut HashMap<u16, String>, p: &Publish, max: u16) -> String {
    match p.properties.topic_alias {
        None => {
            assert!(!p.topic.is_empty(), "no topic and no alias: {p:?}");
            p.topic.to_string()
        }
        Some(a) => {
            assert!((1..=max).contains(&a), "alias {a} outside 1..={max}: {p:?}");
            if p.topic.is_empty() {
                aliases
                    .get(&a)
                    .unwrap_or_else(|| panic!("alias {a} used before it was set: {p:?}"))
                    .clone()
            } else {
                aliases.insert(a, p.topic.to_string());
                p.topic.to_string()
            }
        }
    }
}

/// When the client's CONNECT allows topic aliases, the broker uses them: the first message
/// on a topic sets an alias, the next one on that topic sends the alias with an empty topic.
/// Aliases stay within the client's maximum (MQTT-3.1.2-26) and are not carried over to a
/// new connection (MQTT-3.3.2-7).
#[tokio::test]
async fn broker_uses_topic_aliases_when_the_client_allows_them() {
    let broker = harness::start().await;
    let tam = Properties::from(PropertyValues {
        topic_alias_maximum: Some(2),
        ..PropertyValues::default()
    });
    let mut sub = connect_props(broker.addr, "alias-out", tam.clone()).await;
    sub.subscribe("tt/#", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "alias-out-pub").await;
    let topics = [
        "tt/a", "tt/a", "tt/b", "tt/b", "tt/c", "tt/c", "tt/a", "tt/c",
    ];
    for (i, t) in topics.iter().enumerate() {
        publisher
            .send_message(t, i.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let got = sub.recv_publishes(topics.len()).await;
    let mut aliases = HashMap::new();
    for (i, p) in got.iter().enumerate() {
        assert_eq!(resolve(&mut aliases, p, 2), topics[i], "message {i}: {p:?}");
        assert_eq!(text(p).1, i.to_string());
    }
    // The first message sets an alias with the full topic; the second uses it alone.
    let first = &got[0];
    assert_eq!(first.topic, "tt/a");
    let alias = first.properties.topic_alias.expect("an alias is set");
    assert_eq!(got[1].topic, "", "second message on tt/a: {:?}", got[1]);
    assert_eq!(got[1].properties.topic_alias, Some(alias));
    sub.disconnect().await;

    // A new connection starts without aliases: the topic is sent in full again.
    let mut sub = connect_props(broker.addr, "alias-out", tam).await;
    sub.subscribe("tt/#", QoS::AtLeastOnce).await;
    publisher
        .send_message("tt/a", b"again", QoS::AtLeastOnce, false)
        .await;
    let p = sub.recv_publish().await;
    assert_eq!(text(&p), ("tt/a".into(), "again".into()));
}

/// A client whose Topic Alias Maximum is 0 or absent never gets a topic alias
/// (MQTT-3.1.2-27).
#[tokio::test]
async fn no_topic_alias_for_a_client_that_allows_none() {
    let broker = harness::start().await;
    let zero = Properties::from(PropertyValues {
        topic_alias_maximum: Some(0),
        ..PropertyValues::default()
    });
    let mut subs = [
        connect_props(broker.addr, "alias-zero", zero).await,
        connect_props(broker.addr, "alias-absent", Properties::default()).await,
    ];
    for s in &mut subs {
        s.subscribe("na/t", QoS::AtLeastOnce).await;
    }
    let mut publisher = Peer::connect(broker.addr, V5, "alias-none-pub").await;
    for i in 0..3 {
        publisher
            .send_message("na/t", format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    for s in &mut subs {
        for p in s.recv_publishes(3).await {
            assert_eq!(p.topic, "na/t", "{p:?}");
            assert_eq!(p.properties.topic_alias, None, "{p:?}");
        }
    }
}

/// The Message Expiry Interval sent to a subscriber is the received one minus the time the
/// message waited in the broker (MQTT-3.3.2-6); sent at once, it is unchanged.
#[tokio::test]
async fn message_expiry_interval_is_counted_down() {
    let broker = harness::start().await;
    let mut online = Peer::connect(broker.addr, V5, "expiry-online").await;
    online.subscribe("ex/t", QoS::AtLeastOnce).await;
    let mut offline = connect_persistent(broker.addr, "expiry-offline", true).await;
    offline.subscribe("ex/t", QoS::AtLeastOnce).await;
    offline.disconnect().await;

    let mut publisher = Peer::connect(broker.addr, V5, "expiry-pub").await;
    let expiring = Properties::from(PropertyValues {
        message_expiry_interval: Some(10),
        ..PropertyValues::default()
    });
    publisher
        .publish(with_props(
            publish_packet("ex/t", b"counted", QoS::AtLeastOnce, false),
            expiring,
        ))
        .await;
    publisher
        .send_message("ex/t", b"forever", QoS::AtLeastOnce, false)
        .await;

    let p = online.recv_publish().await;
    assert_eq!(text(&p).1, "counted");
    let sent = p
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(
        (9..=10).contains(&sent),
        "sent at once with ~10 s left, got {sent}"
    );
    let p = online.recv_publish().await;
    assert_eq!(text(&p).1, "forever");
    assert_eq!(p.properties.message_expiry_interval, None);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut offline = connect_persistent(broker.addr, "expiry-offline", false).await;
    let p = offline.recv_publish().await;
    assert_eq!(text(&p).1, "counted");
    let left = p
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(
        (1..=8).contains(&left),
        "waited over 2 s of 10: expected at most 8 s left, got {left}"
    );
    let p = offline.recv_publish().await;
    assert_eq!(text(&p).1, "forever");
    assert_eq!(p.properties.message_expiry_interval, None);
}

/// A message whose expiry interval passes while the subscriber is offline is not delivered
/// when it comes back (MQTT-3.3.2-5); a message without expiry queued after it is.
#[tokio::test]
async fn message_expired_while_subscriber_offline_is_dropped() {
    let broker = harness::start().await;
    let mut sub = connect_persistent(broker.addr, "expired-offline", true).await;
    sub.subscribe("ex/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Peer::connect(broker.addr, V5, "expired-pub").await;
    publisher
        .publish(with_props(
            publish_packet("ex/t", b"gone", QoS::AtLeastOnce, false),
            Properties::from(PropertyValues {
                message_expiry_interval: Some(1),
                ..PropertyValues::default()
            }),
        ))
        .await;
    publisher
        .send_message("ex/t", b"kept", QoS::AtLeastOnce, false)
        .await;
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let mut sub = connect_persistent(broker.addr, "expired-offline", false).await;
    let p = sub.recv_publish().await;
    assert_eq!(text(&p), ("ex/t".into(), "kept".into()));
    sub.assert_no_publish().await;
}

/// Payload Format Indicator and Content Type reach subscribers unaltered (MQTT-3.3.2-4,
/// MQTT-3.3.2-20), for QoS 0 and 1 and for a retained copy.
#[tokio::test]
async fn payload_format_and_content_type_are_forwarded() {
    let broker = harness::start().await;
    let mut sub = Peer::connect(broker.addr, V5, "pfi-sub").await;
    sub.subscribe("pf/#", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "pfi-pub").await;
    let cases: [FormatCase; 3] = [
        (
            "pf/json",
            Some(1),
            Some("application/json; charset=utf-8"),
            br#"{"a":"\u00fc"}"#,
            QoS::AtLeastOnce,
        ),
        (
            "pf/bin",
            Some(0),
            Some("application/octet-stream"),
            &[0xff, 0x00, 0xfe],
            QoS::AtMostOnce,
        ),
        ("pf/none", None, Some(""), b"x", QoS::AtLeastOnce),
    ];
    for (topic, pfi, ct, payload, qos) in cases {
        let properties = Properties::from(PropertyValues {
            payload_format_indicator: pfi,
            content_type: ct.map(Into::into),
            ..PropertyValues::default()
        });
        publisher
            .publish(with_props(
                publish_packet(topic, payload, qos, true),
                properties,
            ))
            .await;
    }
    for (topic, pfi, ct, payload, qos) in cases {
        let p = sub.recv_publish().await;
        assert_eq!(
            (p.topic.as_ref(), &p.payload[..], p.qos),
            (topic, payload, qos)
        );
        assert_eq!(p.properties.payload_format_indicator, pfi, "{topic}");
        assert_eq!(p.properties.content_type.as_deref(), ct, "{topic}");
    }

    // The retained copy keeps them too.
    let mut late = Peer::connect(broker.addr, V5, "pfi-late").await;
    late.subscribe("pf/json", QoS::AtLeastOnce).await;
    let p = late.recv_publish().await;
    assert!(p.retain);
    assert_eq!(p.properties.payload_format_indicator, Some(1));
    assert_eq!(
        p.properties.content_type.as_deref(),
        Some("application/json; charset=utf-8")
    );
}

/// A PUBLISH that says its payload is UTF-8 (Payload Format Indicator 1) but is not is refused
/// with 0x99 Payload format invalid on PUBACK / PUBREC and not forwarded (section 3.3.2.3.2,
/// MQTT-3.3.2-4 family); QoS 0 has no acknowledgement and is dropped.
#[tokio::test]
async fn invalid_utf8_payload_with_format_indicator_is_refused_with_0x99() {
    let broker = harness::start().await;
    let mut sub = Peer::connect(broker.addr, V5, "bad-utf8-sub").await;
    sub.subscribe("u8/#", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "bad-utf8-pub").await;
    let utf8 = || {
        Properties::from(PropertyValues {
            payload_format_indicator: Some(1),
            ..PropertyValues::default()
        })
    };
    let bad: &[u8] = &[b'o', b'k', 0xC3, 0x28];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let ack = publisher
            .publish(with_props(
                publish_packet("u8/bad", bad, qos, false),
                utf8(),
            ))
            .await;
        if qos != QoS::AtMostOnce {
            let ack = ack.unwrap();
            assert_eq!(
                ack.reason_code,
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                "{qos:?}"
            );
        }
    }
    let ack = publisher
        .publish(with_props(
            publish_packet("u8/good", "grüße".as_bytes(), QoS::AtLeastOnce, false),
            utf8(),
        ))
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let p = sub.recv_publish().await;
    assert_eq!(text(&p), ("u8/good".into(), "grüße".into()));
    sub.assert_no_publish().await;
}

/// Response Topic and Correlation Data reach subscribers unaltered (MQTT-3.3.2-15,
/// MQTT-3.3.2-16): the request/response pattern works through the broker.
#[tokio::test]
async fn response_topic_and_correlation_data_are_forwarded() {
    let broker = harness::start().await;
    let mut responder = Peer::connect(broker.addr, V5, "rr-responder").await;
    responder.subscribe("rr/request", QoS::AtLeastOnce).await;
    let mut requester = Peer::connect(broker.addr, V5, "rr-requester").await;
    requester
        .subscribe("rr/reply/requester", QoS::AtLeastOnce)
        .await;

    let correlation = Bytes::from_static(&[0x00, 0xFF, 0x10, b'i', b'd', 0x00]);
    requester
        .publish(with_props(
            publish_packet("rr/request", b"ping?", QoS::AtLeastOnce, false),
            Properties::from(PropertyValues {
                response_topic: Some("rr/reply/requester".into()),
                correlation_data: Some(correlation.clone()),
                ..PropertyValues::default()
            }),
        ))
        .await;

    let req = responder.recv_publish().await;
    assert_eq!(
        req.properties.response_topic.as_deref(),
        Some("rr/reply/requester")
    );
    assert_eq!(req.properties.correlation_data.as_ref(), Some(&correlation));
    let reply_to = req.properties.response_topic.clone().unwrap();
    responder
        .publish(with_props(
            publish_packet(&reply_to, b"pong", QoS::AtLeastOnce, false),
            Properties::from(PropertyValues {
                correlation_data: req.properties.correlation_data.clone(),
                ..PropertyValues::default()
            }),
        ))
        .await;

    let reply = requester.recv_publish().await;
    assert_eq!(text(&reply), ("rr/reply/requester".into(), "pong".into()));
    assert_eq!(reply.properties.correlation_data, Some(correlation));
    assert_eq!(reply.properties.response_topic, None);
}

/// User Properties are forwarded unaltered and in order, repeated keys included
/// (MQTT-3.3.2-17, MQTT-3.3.2-18).
#[tokio::test]
async fn user_properties_are_forwarded_in_order() {
    let broker = harness::start().await;
    let mut sub = Peer::connect(broker.addr, V5, "up-sub").await;
    sub.subscribe("up/t", QoS::ExactlyOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "up-pub").await;
    let props: Vec<(&str, &str)> = vec![
        ("k", "1"),
        ("z", "last letter first"),
        ("k", "2"),
        ("", "empty name"),
        ("empty value", ""),
        ("ключ", "значение"),
        ("k", "1"),
    ];
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish(with_props(
                publish_packet("up/t", b"x", qos, false),
                Properties::from(PropertyValues {
                    user_properties: props.iter().map(|&(k, v)| (k.into(), v.into())).collect(),
                    ..PropertyValues::default()
                }),
            ))
            .await;
    }
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let p = sub.recv_publish().await;
        assert_eq!(p.qos, qos);
        let got: Vec<(&str, &str)> = p
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(got, props, "{qos:?}");
    }
}

/// A client with Maximum Packet Size 100 is not sent a PUBLISH that would be larger: the
/// broker discards it and goes on as if it had been sent (MQTT-3.1.2-24, MQTT-3.1.2-25), so
/// smaller messages after it still arrive, at QoS 0 and 1.
#[tokio::test]
async fn messages_over_the_client_maximum_packet_size_are_not_sent() {
    let broker = harness::start().await;
    let max = Properties::from(PropertyValues {
        maximum_packet_size: Some(100),
        ..PropertyValues::default()
    });
    let mut small = connect_props(broker.addr, "mps-small", max).await;
    small.subscribe("mps/#", QoS::AtLeastOnce).await;
    let mut big = Peer::connect(broker.addr, V5, "mps-big").await;
    big.subscribe("mps/#", QoS::AtLeastOnce).await;

    let mut publisher = Peer::connect(broker.addr, V5, "mps-pub").await;
    let large = vec![b'L'; 200];
    publisher
        .send_message("mps/t", &large, QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("mps/t", b"small-1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("mps/t", &large, QoS::AtMostOnce, false)
        .await;
    publisher
        .send_message("mps/t", b"small-2", QoS::AtMostOnce, false)
        .await;
    // Just at the limit: 2 bytes fixed header + 2 + 5 topic + 2 packet id + 1 properties length
    // + 88 payload = 100 bytes.
    let edge = vec![b'E'; 88];
    publisher
        .send_message("mps/t", &edge, QoS::AtLeastOnce, false)
        .await;

    let got: Vec<usize> = small
        .recv_publishes(3)
        .await
        .iter()
        .map(|p| {
            let len = codec::encoded_len(&Packet::Publish(p.clone()), V5);
            assert!(len <= 100, "a {len}-byte packet was sent: {p:?}");
            p.payload.len()
        })
        .collect();
    assert_eq!(got, [7, 7, 88]);
    small.assert_no_publish().await;

    // The client without a limit gets all five.
    let got: Vec<usize> = big
        .recv_publishes(5)
        .await
        .iter()
        .map(|p| p.payload.len())
        .collect();
    assert_eq!(got, [200, 7, 200, 7, 88]);
}

/// With Request Problem Information 0 the broker sends no Reason String on a PUBACK
/// (MQTT-3.1.2-29); with the default (1) it may, and moat does for a refused PUBLISH.
#[tokio::test]
async fn no_reason_string_on_puback_when_problem_information_is_not_requested() {
    let broker = harness::start().await;
    let refused = |topic: &str| {
        with_props(
            publish_packet(topic, &[0xFF], QoS::AtLeastOnce, false),
            Properties::from(PropertyValues {
                payload_format_indicator: Some(1),
                ..PropertyValues::default()
            }),
        )
    };

    let mut quiet = connect_props(
        broker.addr,
        "rpi-0",
        Properties::from(PropertyValues {
            request_problem_information: Some(0),
            ..PropertyValues::default()
        }),
    )
    .await;
    let ack = quiet.publish(refused("rpi/t")).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID);
    assert_eq!(ack.properties.reason_string, None, "{ack:?}");
    assert!(ack.properties.user_properties.is_empty(), "{ack:?}");
    // A `$` topic is refused too (Not authorized), also without a reason string.
    let ack = quiet
        .send_message("$SYS/forged", b"x", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    assert_eq!(ack.properties.reason_string, None, "{ack:?}");

    let mut chatty = Peer::connect(broker.addr, V5, "rpi-default").await;
    let ack = chatty.publish(refused("rpi/t")).await.unwrap();
    assert_eq!(ack.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID);
    assert!(
        ack.properties
            .reason_string
            .as_deref()
            .is_some_and(|s| !s.is_empty()),
        "the control case carries a reason string: {ack:?}"
    );
}

/// Request Response Information 1 yields a Response Information string in CONNACK, usable as
/// the base of a response topic (section 3.2.2.3.15); 0 or absent yields none (MQTT-3.1.2-28).
#[tokio::test]
async fn response_information_only_when_requested() {
    let broker = harness::start().await;
    for (id, ask) in [("rri-absent", None), ("rri-0", Some(0))] {
        let mut connect = connect_packet(V5, id);
        connect.properties.request_response_information = ask;
        let (_c, ack) = Peer::connect_with(broker.addr, connect).await;
        assert_eq!(ack.properties.response_information, None, "{id}");
    }

    let mut connect = connect_packet(V5, "rri-1");
    connect.properties.request_response_information = Some(1);
    let (mut c, ack) = Peer::connect_with(broker.addr, connect).await;
    let info = ack
        .properties
        .response_information
        .clone()
        .expect("Response Information in CONNACK")
        .to_string();
    assert!(!info.is_empty());
    assert!(moat::topic::validate_topic_name(&info).is_ok(), "{info:?}");

    // It works as a response topic prefix.
    let filter = format!("{info}/#");
    c.subscribe(&filter, QoS::AtLeastOnce).await;
    let topic = format!("{info}/reply");
    let mut other = Peer::connect(broker.addr, V5, "rri-other").await;
    other
        .send_message(&topic, b"answer", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&c.recv_publish().await), (topic, "answer".into()));
}

/// A Topic Alias above the Topic Alias Maximum the broker gave in CONNACK is refused with
/// DISCONNECT 0x94 Topic Alias invalid (MQTT-3.2.2-17; MQTT-3.3.2-9 is the client's duty;
/// section 3.3.2.3.4 gives the server's answer). One at the maximum is accepted (MQTT-3.3.2-12).
#[tokio::test]
async fn topic_alias_above_the_maximum_is_refused_with_0x94() {
    let broker = harness::start_with(|c| c.limits.topic_alias_maximum = 2).await;
    let (mut c, ack) = Peer::connect_with(broker.addr, connect_packet(V5, "alias-max")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
    let alias = |n| {
        Properties::from(PropertyValues {
            topic_alias: Some(n),
            ..PropertyValues::default()
        })
    };
    let ok = c
        .publish(with_props(
            publish_packet("am/t", b"x", QoS::AtLeastOnce, false),
            alias(2),
        ))
        .await
        .unwrap();
    assert!(!ok.reason_code.is_error(), "{ok:?}");
    c.raw
        .send(&Packet::Publish(with_props(
            publish_packet("am/t", b"x", QoS::AtMostOnce, false),
            alias(3),
        )))
        .await;
    c.raw
        .expect_disconnect(ReasonCode::TOPIC_ALIAS_INVALID)
        .await;
}

/// A PUBLISH with an empty topic and a Topic Alias the client never set is a Protocol Error
/// (section 3.3.2.3.4: DISCONNECT 0x82); so is one set on an earlier connection, as aliases
/// are not carried from one connection to the next (MQTT-3.3.2-7).
#[tokio::test]
async fn unknown_topic_alias_is_a_protocol_error() {
    let broker = harness::start().await;
    let alias = |n| {
        Properties::from(PropertyValues {
            topic_alias: Some(n),
            ..PropertyValues::default()
        })
    };
    let mut c = Peer::connect(broker.addr, V5, "alias-unknown").await;
    c.publish(with_props(
        publish_packet("au/t", b"set", QoS::AtLeastOnce, false),
        alias(1),
    ))
    .await;
    c.raw
        .send(&Packet::Publish(with_props(
            publish_packet("", b"x", QoS::AtLeastOnce, false),
            alias(2),
        )))
        .await;
    c.raw.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;

    // Alias 1 was set on the previous connection only.
    let mut c = Peer::connect(broker.addr, V5, "alias-unknown").await;
    let mut p = with_props(publish_packet("", b"x", QoS::AtLeastOnce, false), alias(1));
    p.packet_id = Some(1);
    c.raw.send(&Packet::Publish(p)).await;
    c.raw.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
}

/// A Reason String must be left out of a PUBACK rather than make it larger than the client's
/// Maximum Packet Size (MQTT-3.4.2-2; User Properties too, MQTT-3.4.2-3; the PUBACK itself is
/// still owed, MQTT-3.3.4-1). Here a
/// client with Maximum Packet Size 24 sends a PUBLISH that the broker refuses with 0x99: the
/// PUBACK with moat's reason string ("payload is not UTF-8") would be 29 bytes, without it 4
/// to 6.
#[tokio::test]
async fn reason_string_is_left_out_to_fit_the_client_maximum_packet_size() {
    let broker = harness::start().await;
    let mut c = connect_props(
        broker.addr,
        "rs-mps",
        Properties::from(PropertyValues {
            maximum_packet_size: Some(24),
            ..PropertyValues::default()
        }),
    )
    .await;
    let mut p = with_props(
        publish_packet("rs/t", &[0xFF], QoS::AtLeastOnce, false),
        Properties::from(PropertyValues {
            payload_format_indicator: Some(1),
            ..PropertyValues::default()
        }),
    );
    p.packet_id = Some(9);
    c.raw.send(&Packet::Publish(p)).await;
    match c.raw.recv_within(harness::WAIT).await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(ack.packet_id, 9);
            assert_eq!(ack.reason_code, ReasonCode::PAYLOAD_FORMAT_INVALID);
            let len = codec::encoded_len(&Packet::PubAck(ack.clone()), V5);
            assert!(len <= 24, "{len}-byte PUBACK: {ack:?}");
            assert!(ack.properties.user_properties.is_empty(), "{ack:?}");
        }
        other => panic!("expected a PUBACK within the wait, got {other:?}"),
    }
}

/// A refusing CONNACK must not carry a Reason String or User Properties that make it larger
/// than the Maximum Packet Size of the CONNECT (MQTT-3.2.2-19, MQTT-3.2.2-20): the client is
/// refused (0x87: clients may not publish to `$` topics, here a will) with a CONNACK of at most
/// 20 bytes.
#[tokio::test]
async fn refusing_connack_fits_the_client_maximum_packet_size() {
    let broker = harness::start().await;
    let mut connect = connect_packet(V5, "rs-connack");
    connect.properties.maximum_packet_size = Some(20);
    connect.will = Some(moat::codec::Will {
        topic: "$SYS/will".into(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
    });
    let (_c, ack) = harness::RawClient::handshake(broker.addr, connect).await;
    assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
    let len = codec::encoded_len(&Packet::ConnAck(ack.clone()), V5);
    assert!(
        len <= 20,
        "{len}-byte CONNACK for a client allowing 20: {ack:?}"
    );
    assert!(ack.properties.user_properties.is_empty(), "{ack:?}");
}
