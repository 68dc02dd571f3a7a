//! Routing: which subscriptions a PUBLISH reaches, and how it looks when it gets there.
//!
//! Topic filter wildcards (section 4.7), `$` topics (4.7.2), shared subscriptions (4.8.2), the
//! MQTT 5 subscription options No Local and Retain As Published (3.8.3.1), subscription
//! identifiers and overlapping subscriptions (3.3.4), UNSUBSCRIBE (3.10) and SUBACK codes for
//! invalid filters (3.9.3).
//!
//! Most tests use the raw client through [`Peer`], which completes QoS flows and makes every
//! publication synchronous (it returns once the broker has routed the message), so "this did
//! not arrive" is checked by sending a later message that must arrive first.

use std::collections::BTreeSet;
use std::time::Duration;

use moat::codec::{Packet, Properties, ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};

use crate::harness::flows::{Peer, V4, opts, text};
use crate::harness::{self, WAIT};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// Publishes each topic (payload = the topic) at QoS 0 from `publisher`.
async fn publish_topics(publisher: &mut Peer, topics: &[&str]) {
    for t in topics {
        publisher
            .send_message(t, t.as_bytes(), QoS::AtMostOnce, false)
            .await;
    }
}

/// The topics `subscriber` receives up to and including `marker`.
async fn topics_until(subscriber: &mut Peer, marker: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let p = subscriber.recv_publish().await;
        let topic = p.topic.to_string();
        seen.push(topic.clone());
        if topic == marker {
            return seen;
        }
    }
}

/// `#` matches the parent level and every level below it, and nothing beside it (section
/// 4.7.1.2: "sport/#" also matches "sport"; MQTT-4.7.1-1 in 5.0, MQTT-4.7.1-2 in 3.1.1); every
/// topic name delivered matches the filter (MQTT-3.3.2-3, 3.1.1 and 5.0).
#[tokio::test]
async fn multi_level_wildcard_matches_parent_and_all_descendants() {
    let broker = harness::start().await;
    for version in [V311, V5] {
        let mut sub = Peer::connect(broker.addr, version, "hash-sub").await;
        sub.subscribe("sport/#", QoS::AtMostOnce).await;
        let mut publisher = Peer::connect(broker.addr, version, "hash-pub").await;
        publish_topics(
            &mut publisher,
            &[
                "sport",
                "sports",
                "sport/tennis",
                "other/sport",
                "sport/tennis/player1",
                "sport/",
                "Sport/tennis",
                "sport/end",
            ],
        )
        .await;
        assert_eq!(
            topics_until(&mut sub, "sport/end").await,
            [
                "sport",
                "sport/tennis",
                "sport/tennis/player1",
                "sport/",
                "sport/end"
            ],
            "{version:?}"
        );
        sub.assert_no_publish().await;
        sub.disconnect().await;
        publisher.disconnect().await;
    }
}

/// `+` matches exactly one level, which may be empty (section 4.7.1.3; MQTT-4.7.1-2 in 5.0,
/// MQTT-4.7.1-3 in 3.1.1); every topic name delivered matches its subscriber's filter
/// (MQTT-3.3.2-3).
#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level() {
    let broker = harness::start().await;
    let mut mid = Peer::connect(broker.addr, V5, "plus-mid").await;
    mid.subscribe("sport/+/player1", QoS::AtMostOnce).await;
    let mut top = Peer::connect(broker.addr, V5, "plus-top").await;
    top.subscribe("+", QoS::AtMostOnce).await;
    let mut two = Peer::connect(broker.addr, V5, "plus-two").await;
    two.subscribe("+/+", QoS::AtMostOnce).await;

    let mut publisher = Peer::connect(broker.addr, V5, "plus-pub").await;
    publish_topics(
        &mut publisher,
        &[
            "sport/tennis/player1",
            "sport/tennis/player2",
            "sport/player1",
            "sport//player1",
            "sport/tennis/player1/ranking",
            "sport",
            "/finance",
            "sport/tennis",
            "a/b/c",
            "end",
            "end/end",
            "sport/end/player1",
        ],
    )
    .await;

    assert_eq!(
        topics_until(&mut mid, "sport/end/player1").await,
        [
            "sport/tennis/player1",
            "sport//player1",
            "sport/end/player1"
        ]
    );
    assert_eq!(topics_until(&mut top, "end").await, ["sport", "end"]);
    assert_eq!(
        topics_until(&mut two, "end/end").await,
        ["sport/player1", "/finance", "sport/tennis", "end/end"]
    );
    for s in [&mut mid, &mut top, &mut two] {
        s.assert_no_publish().await;
    }
}

/// Filters starting with a wildcard do not match topics starting with `$` (MQTT-4.7.2-1), but
/// `$SYS/#` does. The `$` messages are the broker's own `$SYS` updates.
#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let broker = harness::start_with(|c| c.sys.interval = Duration::from_secs(1)).await;
    let mut sys = Peer::connect(broker.addr, V5, "dollar-sys").await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    let mut hash = Peer::connect(broker.addr, V5, "dollar-hash").await;
    hash.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = Peer::connect(broker.addr, V5, "dollar-plus").await;
    plus.subscribe("+/broker/#", QoS::AtMostOnce).await;
    let mut plus_version = Peer::connect(broker.addr, V5, "dollar-plus-version").await;
    plus_version
        .subscribe("+/broker/version", QoS::AtMostOnce)
        .await;
    let mut shared = Peer::connect(broker.addr, V5, "dollar-shared").await;
    shared.subscribe("$share/g/#", QoS::AtMostOnce).await;

    // Wait for a live (not retained) $SYS update: one routed after all subscriptions exist.
    let live = loop {
        let p = sys.recv_publish().await;
        assert!(p.topic.starts_with("$SYS/"), "{p:?}");
        if !p.retain && p.topic == "$SYS/broker/version" {
            break p;
        }
    };
    assert!(live.payload.starts_with(b"moat"), "{live:?}");

    // Anything the wildcard subscribers got from that update would be queued before these.
    let mut publisher = Peer::connect(broker.addr, V5, "dollar-pub").await;
    publish_topics(&mut publisher, &["x/broker/version"]).await;
    for (name, s) in [
        ("#", &mut hash),
        ("+/broker/#", &mut plus),
        ("+/broker/version", &mut plus_version),
        ("$share/g/#", &mut shared),
    ] {
        let p = s.recv_publish().await;
        assert_eq!(p.topic, "x/broker/version", "{name} got a $ topic first");
        s.assert_no_publish().await;
    }
}

/// Three members of one share group split 30 messages evenly, one member per message, in
/// turn; a non-shared subscription to the same topic still gets every message (section 4.8.2).
#[tokio::test]
async fn shared_subscription_members_take_turns_and_plain_subscriber_gets_all() {
    let broker = harness::start().await;
    let mut members = Vec::new();
    // Each member's copies use its own granted QoS (MQTT-4.8.2-3).
    let granted = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for (i, qos) in granted.iter().enumerate() {
        let mut m = Peer::connect(broker.addr, V5, &format!("share-member-{i}")).await;
        m.subscribe("$share/workers/jobs/+", *qos).await;
        members.push(m);
    }
    let mut plain = Peer::connect(broker.addr, V5, "share-plain").await;
    plain.subscribe("jobs/+", QoS::AtLeastOnce).await;

    let mut publisher = Peer::connect(broker.addr, V5, "share-pub").await;
    for n in 0..30 {
        let ack = publisher
            .send_message(
                "jobs/new",
                n.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await
            .unwrap();
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    }

    let all: Vec<String> = (0..30).map(|n| n.to_string()).collect();
    let got: Vec<String> = plain
        .recv_publishes(30)
        .await
        .iter()
        .map(|p| text(p).1)
        .collect();
    assert_eq!(
        got, all,
        "the non-shared subscriber gets every message, in order"
    );
    plain.assert_no_publish().await;

    let mut union = BTreeSet::new();
    for (i, m) in members.iter_mut().enumerate() {
        let got: Vec<u32> = m
            .recv_publishes(10)
            .await
            .iter()
            .map(|p| {
                assert_eq!(p.topic, "jobs/new");
                assert_eq!(p.qos, granted[i].min(QoS::AtLeastOnce), "member {i}");
                text(p).1.parse().unwrap()
            })
            .collect();
        m.assert_no_publish().await;
        // Round robin: a member gets every third message.
        let first = got[0];
        let expected: Vec<u32> = (0..10).map(|k| first + 3 * k).collect();
        assert_eq!(got, expected, "member {i} messages");
        union.extend(got);
    }
    assert_eq!(
        union,
        (0..30).collect::<BTreeSet<u32>>(),
        "each message exactly once"
    );
}

/// Malformed shared subscription filters are refused with 0x8F while the valid filter of the
/// same SUBSCRIBE is granted (MQTT-4.8.2-1: a share name of at least one character,
/// MQTT-4.8.2-2: without `/`, `+` or `#`; a topic filter must follow it).
#[tokio::test]
async fn invalid_shared_filters_are_refused_with_0x8f() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "share-invalid").await;
    let q1 = opts(QoS::AtLeastOnce);
    let codes = c
        .subscribe_many(&[
            ("$share//t", q1),
            ("$share/g", q1),
            ("$share/g/", q1),
            ("$share/g+/t", q1),
            ("$share/g#/t", q1),
            ("$share/g/a/#/b", q1),
            ("$share/g/a+", q1),
            ("$share/g/ok/#", q1),
        ])
        .await;
    assert_eq!(codes, [0x8F, 0x8F, 0x8F, 0x8F, 0x8F, 0x8F, 0x8F, 0x01]);

    // The one valid filter works.
    let mut publisher = Peer::connect(broker.addr, V5, "share-invalid-pub").await;
    publish_topics(&mut publisher, &["ok/1"]).await;
    assert_eq!(c.recv_publish().await.topic, "ok/1");
}

/// No Local on a shared subscription is a Protocol Error: DISCONNECT 0x82 (MQTT-3.8.3-4).
#[tokio::test]
async fn no_local_on_shared_subscription_is_a_protocol_error() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "share-nolocal").await;
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubscriptionOptions::default()
    };
    c.raw
        .send(&Packet::Subscribe(moat::codec::Subscribe {
            packet_id: 7,
            filters: vec![("$share/g/t".into(), options)],
            properties: Properties::default(),
        }))
        .await;
    c.raw.expect_disconnect(ReasonCode::PROTOCOL_ERROR).await;
}

/// With No Local, a client's own publications are not sent back to it; other clients' are,
/// and its publications still reach other subscribers (MQTT-3.8.3-3).
#[tokio::test]
async fn no_local_suppresses_only_own_publications() {
    let broker = harness::start().await;
    let mut a = Peer::connect(broker.addr, V5, "nolocal-a").await;
    let codes = a
        .subscribe_many(&[(
            "chat",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                ..SubscriptionOptions::default()
            },
        )])
        .await;
    assert_eq!(codes, [0x01]);
    let mut b = Peer::connect(broker.addr, V5, "nolocal-b").await;
    b.subscribe("chat", QoS::AtLeastOnce).await;

    a.send_message("chat", b"from-a", QoS::AtLeastOnce, false)
        .await;
    b.send_message("chat", b"from-b", QoS::AtLeastOnce, false)
        .await;

    assert_eq!(text(&a.recv_publish().await).1, "from-b");
    a.assert_no_publish().await;
    let got: Vec<String> = b
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| text(p).1)
        .collect();
    assert_eq!(got, ["from-a", "from-b"]);
}

/// Retain As Published keeps the RETAIN flag of a live publication; without it the flag is
/// cleared (MQTT-3.3.1-12, MQTT-3.3.1-13).
#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() {
    let broker = harness::start().await;
    let mut rap = Peer::connect(broker.addr, V5, "rap-on").await;
    let codes = rap
        .subscribe_many(&[(
            "rap/t",
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                retain_as_published: true,
                ..SubscriptionOptions::default()
            },
        )])
        .await;
    assert_eq!(codes, [0x01]);
    let mut plain = Peer::connect(broker.addr, V5, "rap-off").await;
    plain.subscribe("rap/t", QoS::AtLeastOnce).await;

    let mut publisher = Peer::connect(broker.addr, V5, "rap-pub").await;
    publisher
        .send_message("rap/t", b"retained", QoS::AtLeastOnce, true)
        .await;
    publisher
        .send_message("rap/t", b"not retained", QoS::AtLeastOnce, false)
        .await;

    let got: Vec<(String, bool)> = rap
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (text(p).1, p.retain))
        .collect();
    assert_eq!(
        got,
        [
            ("retained".to_owned(), true),
            ("not retained".to_owned(), false)
        ]
    );
    let got: Vec<(String, bool)> = plain
        .recv_publishes(2)
        .await
        .iter()
        .map(|p| (text(p).1, p.retain))
        .collect();
    assert_eq!(
        got,
        [
            ("retained".to_owned(), false),
            ("not retained".to_owned(), false)
        ]
    );
}

/// A subscription identifier given in SUBSCRIBE comes back in every PUBLISH that matches the
/// subscription; a subscription made without one gets none (MQTT-3.3.4-3).
#[tokio::test]
async fn subscription_identifier_is_delivered_with_matching_messages() {
    let broker = harness::start().await;
    let mut with = Peer::connect(broker.addr, V5, "subid-with").await;
    with.subscribe_id("subid/+", opts(QoS::AtLeastOnce), 42)
        .await;
    let mut without = Peer::connect(broker.addr, V5, "subid-without").await;
    without.subscribe("subid/+", QoS::AtLeastOnce).await;

    let mut publisher = Peer::connect(broker.addr, V5, "subid-pub").await;
    publisher
        .send_message("subid/a", b"1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("subid/b", b"2", QoS::AtMostOnce, false)
        .await;

    for p in with.recv_publishes(2).await {
        assert_eq!(p.properties.subscription_identifiers, [42], "{p:?}");
    }
    for p in without.recv_publishes(2).await {
        assert!(p.properties.subscription_identifiers.is_empty(), "{p:?}");
    }
}

/// Two overlapping subscriptions of one client, each with its own identifier: the message is
/// delivered once, at the higher of the two granted QoS, carrying both identifiers
/// (MQTT-3.3.4-2, MQTT-3.3.4-3, MQTT-3.3.4-4).
#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_both_identifiers_and_max_qos() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "overlap-v5").await;
    c.subscribe_id("ov/+", opts(QoS::AtMostOnce), 1).await;
    c.subscribe_id("ov/#", opts(QoS::AtLeastOnce), 2).await;

    let mut publisher = Peer::connect(broker.addr, V5, "overlap-v5-pub").await;
    publisher
        .send_message("ov/x", b"both", QoS::ExactlyOnce, false)
        .await;
    // Matches only `ov/#`: if a second copy of the first message existed, it would come first.
    publisher
        .send_message("ov/x/y", b"one", QoS::ExactlyOnce, false)
        .await;

    let p = c.recv_publish().await;
    assert_eq!(text(&p), ("ov/x".to_owned(), "both".to_owned()));
    assert_eq!(p.qos, QoS::AtLeastOnce, "the higher granted QoS");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);

    let p = c.recv_publish().await;
    assert_eq!(text(&p), ("ov/x/y".to_owned(), "one".to_owned()));
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(p.properties.subscription_identifiers, [2]);
    c.assert_no_publish().await;
}

/// MQTT 3.1.1 overlapping subscriptions (rumqttc v3.1.1 client): the message is delivered
/// respecting the maximum QoS of the matching subscriptions (MQTT-3.3.5-1). 3.1.1 would allow
/// extra copies; moat sends one, which is what is asserted.
#[tokio::test]
async fn v311_overlapping_subscriptions_deliver_once_at_max_qos() {
    let broker = harness::start().await;
    let mut sub = V4::connect(broker.addr, "overlap-v311").await;
    assert_eq!(
        sub.subscribe("ov/+", rumqttc::QoS::AtMostOnce).await,
        [rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtMostOnce
        )]
    );
    assert_eq!(
        sub.subscribe("ov/#", rumqttc::QoS::AtLeastOnce).await,
        [rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    let mut publisher = V4::connect(broker.addr, "overlap-v311-pub").await;
    publisher.publish_acked("ov/x", b"both", false).await;
    publisher.publish_acked("ov/x/y", b"one", false).await;

    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ov/x", &b"both"[..]));
    assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
    let p = sub.recv_publish().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ov/x/y", &b"one"[..]));
}

/// After UNSUBSCRIBE, messages for that filter stop (MQTT-3.10.4-2) while other subscriptions
/// go on; a filter that was not subscribed gets reason 0x11 in the UNSUBACK (section 3.11.3),
/// one code per filter in order (MQTT-3.11.3-1), in one UNSUBACK for the three filters
/// (MQTT-3.10.4-6). Filters are compared as strings: `u/+` removes neither `u/a` nor `u/b`
/// (MQTT-3.10.4-1).
#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_unknown_filters() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "unsub").await;
    c.subscribe("u/a", QoS::AtLeastOnce).await;
    c.subscribe("u/b", QoS::AtLeastOnce).await;
    let mut publisher = Peer::connect(broker.addr, V5, "unsub-pub").await;
    publisher
        .send_message("u/a", b"before", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        text(&c.recv_publish().await),
        ("u/a".into(), "before".into())
    );

    let ack = c.unsubscribe(&["u/a", "u/none", "u/+"]).await;
    assert_eq!(
        ack.reason_codes,
        [
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::NO_SUBSCRIPTION_EXISTED
        ]
    );

    publisher
        .send_message("u/a", b"after", QoS::AtLeastOnce, false)
        .await;
    publisher
        .send_message("u/b", b"still", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(
        text(&c.recv_publish().await),
        ("u/b".into(), "still".into())
    );
    c.assert_no_publish().await;

    // Unsubscribing again: now it does not exist.
    let ack = c.unsubscribe(&["u/a"]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::NO_SUBSCRIPTION_EXISTED]);
}

/// A SUBSCRIBE to a filter the session already has replaces that subscription: its QoS
/// changes and messages are not delivered twice (MQTT-3.8.4-3).
#[tokio::test]
async fn subscribing_again_replaces_the_subscription_qos() {
    let broker = harness::start().await;
    for version in [V311, V5] {
        let mut c = Peer::connect(broker.addr, version, "resub").await;
        c.subscribe("re/t", QoS::AtMostOnce).await;
        let mut publisher = Peer::connect(broker.addr, version, "resub-pub").await;
        publisher
            .send_message("re/t", b"one", QoS::ExactlyOnce, false)
            .await;
        let p = c.recv_publish().await;
        assert_eq!((text(&p).1.as_str(), p.qos), ("one", QoS::AtMostOnce));

        c.subscribe("re/t", QoS::ExactlyOnce).await;
        publisher
            .send_message("re/t", b"two", QoS::ExactlyOnce, false)
            .await;
        publisher
            .send_message("re/t", b"three", QoS::AtLeastOnce, false)
            .await;
        let p = c.recv_publish().await;
        assert_eq!(
            (text(&p).1.as_str(), p.qos),
            ("two", QoS::ExactlyOnce),
            "{version:?}"
        );
        let p = c.recv_publish().await;
        assert_eq!(
            (text(&p).1.as_str(), p.qos),
            ("three", QoS::AtLeastOnce),
            "{version:?}: one copy per message"
        );
        c.assert_no_publish().await;
        c.disconnect().await;
        publisher.disconnect().await;
    }
}

/// Invalid filters in a SUBSCRIBE get a failure code, in their position, while the valid
/// filters of the same packet are granted (MQTT-3.8.4-5, MQTT-3.9.3-1 / 3.1.1: MQTT-3.8.4-4,
/// MQTT-3.9.3-1; filter syntax MQTT-4.7.1-1 and -2). MQTT 5 says 0x8F (Topic Filter
/// invalid); 3.1.1 has only 0x80 (Failure).
#[tokio::test]
async fn invalid_filters_are_refused_while_valid_ones_are_granted() {
    let broker = harness::start().await;
    for (version, bad) in [(V5, 0x8F), (V311, 0x80)] {
        let mut c = Peer::connect(broker.addr, version, "bad-filters").await;
        let codes = c
            .subscribe_many(&[
                ("a/#/b", opts(QoS::AtLeastOnce)),
                ("ok/1", opts(QoS::AtLeastOnce)),
                ("a+", opts(QoS::AtMostOnce)),
                ("sport/#", opts(QoS::ExactlyOnce)),
                ("a/b#", opts(QoS::AtMostOnce)),
                ("+/x+", opts(QoS::AtMostOnce)),
            ])
            .await;
        assert_eq!(codes, [bad, 0x01, bad, 0x02, bad, bad], "{version:?}");

        let mut publisher = Peer::connect(broker.addr, version, "bad-filters-pub").await;
        publisher
            .send_message("ok/1", b"x", QoS::AtLeastOnce, false)
            .await;
        publisher
            .send_message("sport/golf", b"y", QoS::AtLeastOnce, false)
            .await;
        let got: Vec<(String, String)> = c.recv_publishes(2).await.iter().map(text).collect();
        assert_eq!(
            got,
            [
                ("ok/1".into(), "x".into()),
                ("sport/golf".into(), "y".into())
            ],
            "{version:?}"
        );
        c.disconnect().await;
        publisher.disconnect().await;
    }
}

/// A client that subscribes and publishes in one connection, over rumqttc v5, gets its own
/// message (No Local is off by default) through a shared subscription too: shared and
/// non-shared subscriptions of one client are separate deliveries (section 4.8.2).
#[tokio::test]
async fn rumqttc_v5_client_receives_through_shared_and_plain_subscriptions() {
    use rumqttc::v5::mqttbytes::QoS as Q;
    let broker = harness::start().await;
    let mut c = harness::flows::V5::connect(broker.addr, "rumqttc-v5-share").await;
    c.subscribe("$share/solo/v5/t", Q::AtLeastOnce).await;
    c.subscribe("v5/t", Q::AtMostOnce).await;
    c.client
        .publish("v5/t", Q::AtLeastOnce, false, "hello")
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 2 && tokio::time::Instant::now() < deadline {
        match c.next().await {
            rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => {
                assert_eq!(&p.topic[..], b"v5/t");
                assert_eq!(&p.payload[..], b"hello");
                got.push(p.qos);
            }
            rumqttc::v5::mqttbytes::v5::Packet::PubAck(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_by_key(|q| *q as u8);
    assert_eq!(got, [Q::AtMostOnce, Q::AtLeastOnce]);
}

/// A SUBSCRIBE that replaces a subscription also replaces its subscription identifier, or
/// removes it when the new SUBSCRIBE has none (section 3.8.2.1.2; MQTT-3.8.4-3).
#[tokio::test]
async fn resubscribing_replaces_the_subscription_identifier() {
    let broker = harness::start().await;
    let mut c = Peer::connect(broker.addr, V5, "subid-replace").await;
    let mut publisher = Peer::connect(broker.addr, V5, "subid-replace-pub").await;
    for (id, want) in [(Some(5), vec![5]), (Some(6), vec![6]), (None, vec![])] {
        match id {
            Some(id) => c.subscribe_id("sr/t", opts(QoS::AtLeastOnce), id).await,
            None => c.subscribe("sr/t", QoS::AtLeastOnce).await,
        }
        publisher
            .send_message("sr/t", b"x", QoS::AtLeastOnce, false)
            .await;
        let p = c.recv_publish().await;
        assert_eq!(
            p.properties.subscription_identifiers, want,
            "after id {id:?}"
        );
    }
    c.assert_no_publish().await;
}

/// A member that unsubscribes from a share group gets no more of its messages; the others
/// share them (section 4.8.2, MQTT-3.10.4-2).
#[tokio::test]
async fn share_member_that_unsubscribes_gets_no_more_messages() {
    let broker = harness::start().await;
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = Peer::connect(broker.addr, V5, &format!("share-leave-{i}")).await;
        m.subscribe("$share/g/leave/t", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let ack = members[0].unsubscribe(&["$share/g/leave/t"]).await;
    assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS]);
    let mut publisher = Peer::connect(broker.addr, V5, "share-leave-pub").await;
    for n in 0..6 {
        publisher
            .send_message("leave/t", n.to_string().as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let mut all = Vec::new();
    for m in &mut members[1..] {
        let got = m.recv_publishes(3).await;
        all.extend(got.iter().map(|p| text(p).1));
        m.assert_no_publish().await;
    }
    members[0].assert_no_publish().await;
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3", "4", "5"]);
}

/// Beyond `max_subscriptions_per_client` a new filter is refused (MQTT 5: 0x97 Quota
/// exceeded; 3.1.1: 0x80), while replacing an existing subscription is still allowed
/// (MQTT-3.8.4-3) and the refused filter receives nothing.
#[tokio::test]
async fn subscriptions_over_the_quota_are_refused() {
    let broker = harness::start_with(|c| c.limits.max_subscriptions_per_client = 2).await;
    for (version, refused) in [(V5, 0x97), (V311, 0x80)] {
        let mut c = Peer::connect(broker.addr, version, "quota").await;
        let codes = c
            .subscribe_many(&[
                ("q/a", opts(QoS::AtLeastOnce)),
                ("q/b", opts(QoS::AtLeastOnce)),
                ("q/c", opts(QoS::AtLeastOnce)),
            ])
            .await;
        assert_eq!(codes, [1, 1, refused], "{version:?}");
        let codes = c
            .subscribe_many(&[
                ("q/a", opts(QoS::AtMostOnce)),
                ("q/d", opts(QoS::AtMostOnce)),
            ])
            .await;
        assert_eq!(codes, [0, refused], "{version:?}");

        let mut publisher = Peer::connect(broker.addr, version, "quota-pub").await;
        for t in ["q/c", "q/d", "q/a"] {
            publisher
                .send_message(t, b"x", QoS::AtLeastOnce, false)
                .await;
        }
        let p = c.recv_publish().await;
        assert_eq!(
            (p.topic.as_ref(), p.qos),
            ("q/a", QoS::AtMostOnce),
            "{version:?}"
        );
        c.assert_no_publish().await;
        c.disconnect().await;
        publisher.disconnect().await;
    }
}
