//! MQTT over WebSocket (`ws` and `wss` listeners) with a real WebSocket client
//! (tokio-tungstenite): packets split across and packed into messages, the upgrade's checks
//! (path, subprotocol, origin allow-list), and TLS underneath. The browser test
//! (`browser.rs`) drives the same listeners from Chromium with MQTT.js.

use futures_util::{SinkExt, StreamExt};
use moat::codec::{self, Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::{ListenerConfig, Protocol};
use moat::metrics::Limit;
use moat::net::ws::WsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::certs;
use crate::harness::{RawClient, TestBroker, WAIT, raw_connect_packet, raw_publish};
use crate::tls::{Pki, listener, start};

fn ws_listener(origins: &[&str]) -> ListenerConfig {
    ListenerConfig {
        allowed_origins: Some(origins.iter().map(|s| (*s).to_owned()).collect()),
        ..listener(Protocol::Ws, None)
    }
}

/// An upgrade request to `url` offering `protocols`, from page `origin`.
fn request(
    url: &str,
    protocols: Option<&str>,
    origin: Option<&str>,
) -> tungstenite::handshake::client::Request {
    let mut r = url.into_client_request().unwrap();
    if let Some(p) = protocols {
        r.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(o) = origin {
        r.headers_mut().insert("origin", o.parse().unwrap());
    }
    r
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    codec::encode(packet, version, &mut out);
    out.to_vec()
}

/// MQTT-6.0.0-2: a packet split over several WebSocket messages, and several packets in one
/// message, are read as the byte stream they are; the broker answers in binary messages
/// with the `mqtt` subprotocol selected (MQTT-6.0.0-3, -4).
#[tokio::test]
async fn packets_need_not_align_with_websocket_messages() {
    let b = start(ws_listener(&[])).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", b.port());
    let (mut ws, response) = tokio_tungstenite::connect_async(request(&url, Some("mqtt"), None))
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    let v = ProtocolVersion::V5;
    let connect = encode(
        &Packet::Connect(Box::new(raw_connect_packet(v, "ws-split", true))),
        v,
    );
    // CONNECT in three messages, the last one of a single byte.
    let (a, rest) = connect.split_at(3);
    let (b2, c) = rest.split_at(rest.len() - 1);
    for part in [a, b2, c] {
        ws.send(Message::binary(part.to_vec())).await.unwrap();
    }
    // SUBSCRIBE and a PUBLISH to the same topic in one message.
    let mut both = encode(
        &Packet::Subscribe(moat::codec::Subscribe {
            packet_id: 1,
            filters: vec![(
                "ws/t".into(),
                moat::codec::SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        }),
        v,
    );
    both.extend(encode(
        &raw_publish("ws/t", b"over ws", QoS::AtLeastOnce, Some(2)),
        v,
    ));
    ws.send(Message::binary(both)).await.unwrap();

    // Whatever the framing of the answers, they decode as CONNACK, SUBACK, PUBACK, PUBLISH.
    let mut stream = bytes::BytesMut::new();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(data) = msg else {
            panic!("broker sent a non-binary message: {msg:?}");
        };
        stream.extend_from_slice(&data);
        while let Some(n) = codec::check(&stream, u32::MAX).unwrap() {
            let frame = stream.split_to(n).freeze();
            kinds.push(codec::decode(frame, Some(v)).unwrap());
        }
    }
    assert!(matches!(&kinds[0], Packet::ConnAck(a) if a.reason_code == ReasonCode::SUCCESS));
    assert!(matches!(&kinds[1], Packet::SubAck(_)));
    let rest = &kinds[2..];
    assert!(rest.iter().any(|p| matches!(p, Packet::PubAck(_))));
    assert!(
        rest.iter()
            .any(|p| matches!(p, Packet::Publish(p) if &p.payload[..] == b"over ws"))
    );
    b.stop().await;
}

/// Expects the upgrade to be refused with HTTP `status`.
async fn refused_with(url: &str, req: tungstenite::handshake::client::Request, status: u16) {
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), status, "{url}")
        }
        other => panic!("{url}: expected HTTP {status}, got {other:?}"),
    }
}

/// The upgrade is refused for another path (404), for subprotocols without `mqtt` (400) and
/// for a web page whose origin is not allowed (403, counted); a listed origin and a client
/// that sends no origin (not a browser) are served.
#[tokio::test]
async fn upgrade_checks_path_subprotocol_and_origin() {
    let b = start(ws_listener(&["https://app.example.com"])).await;
    let base = format!("ws://127.0.0.1:{}", b.port());
    let url = format!("{base}/other");
    refused_with(&url, request(&url, Some("mqtt"), None), 404).await;
    let url = format!("{base}/mqtt");
    refused_with(&url, request(&url, Some("chat"), None), 400).await;
    let evil = Some("https://evil.example");
    refused_with(&url, request(&url, Some("mqtt"), evil), 403).await;
    assert_eq!(b.broker.metrics().limited(Limit::WsOrigin), 1);
    assert_eq!(b.broker.metrics().limited(Limit::WsHandshake), 2);

    for origin in [Some("https://app.example.com"), None] {
        let (ws, _) = tokio_tungstenite::connect_async(request(&url, Some("mqtt"), origin))
            .await
            .unwrap();
        let mut raw = RawClient::over(WsStream::new(ws), ProtocolVersion::V311);
        let ack = raw
            .connack(raw_connect_packet(ProtocolVersion::V311, "", true))
            .await;
        assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    }
    b.stop().await;
}

/// MQTT-6.0.0-1: a text frame closes the connection.
#[tokio::test]
async fn a_text_frame_closes_the_connection() {
    let b = start(ws_listener(&[])).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", b.port());
    let (mut ws, _) = tokio_tungstenite::connect_async(request(&url, Some("mqtt"), None))
        .await
        .unwrap();
    ws.send(Message::text("CONNECT")).await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "connection stayed open after a text frame");
    b.stop().await;
}

/// `wss`: the same over TLS. The TLS layer offers ALPN `http/1.1` here, not `mqtt`.
#[tokio::test]
async fn wss_serves_mqtt_over_websocket_over_tls() {
    let pki = Pki::new();
    let b = start(listener(Protocol::Wss, Some(pki.tls()))).await;
    let mut sub = wss_client(&b, &pki, ProtocolVersion::V5, "wss-sub").await;
    sub.subscribe_one(1, "wss/#", QoS::AtMostOnce).await;
    let mut publisher = wss_client(&b, &pki, ProtocolVersion::V311, "wss-pub").await;
    publisher
        .send(&raw_publish("wss/x", b"secure", QoS::AtMostOnce, None))
        .await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"secure"),
        other => panic!("{other:?}"),
    }
    b.stop().await;
}

/// A connected MQTT client over wss.
async fn wss_client(b: &TestBroker, pki: &Pki, v: ProtocolVersion, id: &str) -> RawClient {
    let mut config = certs::client_config(&pki.ca, None);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = certs::connect(b.addr, "localhost", config).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/mqtt", b.port());
    let (ws, _) = tokio_tungstenite::client_async(request(&url, Some("mqtt"), None), tls)
        .await
        .unwrap();
    let mut raw = RawClient::over(WsStream::new(ws), v);
    let ack = raw.connack(raw_connect_packet(v, id, true)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    raw
}

/// A large message (many frames' worth) arrives whole over WebSocket in both directions.
#[tokio::test]
async fn large_messages_cross_websocket_intact() {
    let b = start(ws_listener(&[])).await;
    let url = format!("ws://127.0.0.1:{}/mqtt", b.port());
    let mut clients = Vec::new();
    for id in ["big-sub", "big-pub"] {
        let (ws, _) = tokio_tungstenite::connect_async(request(&url, Some("mqtt"), None))
            .await
            .unwrap();
        let mut raw = RawClient::over(WsStream::new(ws), ProtocolVersion::V311);
        raw.connack(raw_connect_packet(ProtocolVersion::V311, id, true))
            .await;
        clients.push(raw);
    }
    let (mut sub, mut publ) = (clients.remove(0), clients.remove(0));
    sub.subscribe_one(1, "big", QoS::AtLeastOnce).await;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    publ.send(&raw_publish("big", &payload, QoS::AtLeastOnce, Some(7)))
        .await;
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match sub.recv().await {
                Some(Packet::Publish(p)) => return p.payload,
                Some(_) => {}
                None => panic!("closed"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got[..] == payload[..]);
    b.stop().await;
}
