//! Shared test fixtures: a broker per test, a raw packet-level client, client constructors.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use moat::codec::{self, Packet, ProtocolVersion};
use moat::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen at once. Generous: the machine is
/// shared and noisy, and a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker serving one test.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn stop(self) {
        self.broker.shutdown(Duration::from_secs(2)).await;
    }
}

/// The configuration every test broker starts from: one listener on 127.0.0.1 with an
/// ephemeral port, `$SYS` off, and compiled plugins cached where all tests share them.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    config.plugins.cache_dir = Some(plugin_cache_dir());
    config
}

/// The compiled-plugin cache the tests share (in the target directory, owned by the user).
pub fn plugin_cache_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

/// Starts a broker from [`test_config`] with `tweak` applied.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = test_config();
    tweak(&mut config);
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addr();
    TestBroker { broker, addr }
}

/// Starts a broker with the defaults (but an ephemeral port and no `$SYS`).
pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

/// A byte stream a [`RawClient`] can speak over: TCP, TLS, WebSocket.
pub trait ByteStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> ByteStream for T {}

/// A client that speaks packets through moat's own codec, for checks at the byte level.
pub struct RawClient {
    stream: Box<dyn ByteStream>,
    rbuf: BytesMut,
    pub version: ProtocolVersion,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        RawClient::over(stream, version)
    }

    /// A raw client over an already open stream (TLS, WebSocket, ...).
    pub fn over(stream: impl ByteStream + 'static, version: ProtocolVersion) -> RawClient {
        RawClient {
            stream: Box::new(stream),
            rbuf: BytesMut::new(),
            version,
        }
    }

    /// Sends `connect` and returns the broker's first answer, which must be a CONNACK.
    pub async fn connack(&mut self, connect: moat::codec::Connect) -> moat::codec::ConnAck {
        self.send(&Packet::Connect(Box::new(connect))).await;
        match self.recv().await {
            Some(Packet::ConnAck(ack)) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed: a write error is part of what is being tested.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` if the connection closed. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or a close within the wait")
    }

    /// The next packet if one arrives within `d`, `None` otherwise (or on close).
    pub async fn recv_within(&mut self, d: Duration) -> Option<Packet> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(n) = codec::check(&self.rbuf, u32::MAX).expect("server sent a bad packet") {
                let frame = self.rbuf.split_to(n).freeze();
                return Some(
                    codec::decode(frame, Some(self.version)).expect("server packet decodes"),
                );
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Asserts the connection closes (after any packets, which are returned).
    pub async fn closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}

// --- Helpers for the connect, malformed, qos and will tests ----------------------------------
// (Paths are spelled out in full so that these additions need no `use` of their own.)

/// A CONNECT for the raw client: `client_id` and `clean_start` as given, keep alive 0 (so the
/// broker's keep alive timer is off), no will, no credentials, no properties. Tests adjust the
/// fields they care about.
pub fn raw_connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
) -> moat::codec::Connect {
    moat::codec::Connect {
        protocol: version,
        clean_start,
        keep_alive: 0,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: moat::codec::Properties::default(),
    }
}

/// A PUBLISH for the raw client to send.
pub fn raw_publish(
    topic: &str,
    payload: &[u8],
    qos: moat::codec::QoS,
    packet_id: Option<u16>,
) -> Packet {
    Packet::Publish(moat::codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        properties: moat::codec::Properties::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

impl RawClient {
    /// Opens a connection, sends `connect` (in its own protocol version) and returns the
    /// client with the broker's first answer, which must be a CONNACK.
    pub async fn handshake(
        addr: SocketAddr,
        connect: moat::codec::Connect,
    ) -> (RawClient, moat::codec::ConnAck) {
        let mut client = RawClient::connect(addr, connect.protocol).await;
        client.send(&Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A raw client whose CONNECT (see [`raw_connect_packet`]) was accepted.
    pub async fn connected(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean_start: bool,
    ) -> RawClient {
        let (client, ack) =
            RawClient::handshake(addr, raw_connect_packet(version, client_id, clean_start)).await;
        assert_eq!(
            ack.reason_code,
            moat::codec::ReasonCode::SUCCESS,
            "CONNACK {ack:?}"
        );
        client
    }

    /// Sends SUBSCRIBE for one filter and returns the SUBACK's reason codes.
    pub async fn subscribe_one(
        &mut self,
        packet_id: u16,
        filter: &str,
        qos: moat::codec::QoS,
    ) -> Vec<moat::codec::ReasonCode> {
        let options = moat::codec::SubscriptionOptions {
            qos,
            ..Default::default()
        };
        self.send(&Packet::Subscribe(moat::codec::Subscribe {
            packet_id,
            filters: vec![(filter.into(), options)],
            properties: moat::codec::Properties::default(),
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.packet_id, packet_id, "SUBACK packet id");
                ack.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self) -> moat::codec::Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts that no packet arrives within `d` and that the connection stays open.
    pub async fn expect_nothing(&mut self, d: Duration) {
        match tokio::time::timeout(d, self.recv_inner()).await {
            Err(_) => {}
            Ok(None) => panic!("expected silence, but the connection closed"),
            Ok(Some(p)) => panic!("expected silence, got {p:?}"),
        }
    }

    /// Asserts that the broker closes the connection, having first sent a v5 client a
    /// DISCONNECT with `reason` and a 3.1.1 client nothing at all.
    pub async fn expect_disconnect(&mut self, reason: moat::codec::ReasonCode) {
        let seen = self.closed().await;
        match self.version {
            ProtocolVersion::V5 => match seen.as_slice() {
                [Packet::Disconnect(d)] => assert_eq!(
                    d.reason_code, reason,
                    "DISCONNECT reason code (wanted {:#04x}): {d:?}",
                    reason.0
                ),
                _ => panic!(
                    "expected DISCONNECT {:#04x} then close, got {seen:?}",
                    reason.0
                ),
            },
            ProtocolVersion::V311 => {
                assert!(seen.is_empty(), "expected a bare close, got {seen:?}")
            }
        }
    }

    /// Every byte the broker sends until it closes the connection (panics after [`WAIT`]).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let mut out = self.rbuf.split().to_vec();
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 1024];
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the broker closes the connection within the wait");
        out
    }
}

/// A rumqttc MQTT 3.1.1 client whose event loop runs on its own task; incoming packets are
/// forwarded to [`Rumqtt4::next`]. Dropping it drops the socket without DISCONNECT.
pub struct Rumqtt4 {
    pub client: rumqttc::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Rumqtt4 {
    /// Connects with `client_id`, keep alive 60 s, clean session, then `tweak`; waits for a
    /// successful CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        tweak: impl FnOnce(&mut rumqttc::MqttOptions),
    ) -> Rumqtt4 {
        let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        tweak(&mut options);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(_) => break,
                }
            }
        });
        let mut c = Rumqtt4 { client, rx, task };
        match c.next().await {
            Some(rumqttc::Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{ack:?}")
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    /// The next incoming packet; `None` once the connection has closed. Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<rumqttc::Packet> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a packet or a close within the wait")
    }

    /// The next incoming PUBLISH, skipping acknowledgements and PINGRESPs.
    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            match self.next().await {
                Some(rumqttc::Packet::Publish(p)) => return p,
                Some(_) => {}
                None => panic!("connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK, asserting it grants `qos`.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.unwrap();
        loop {
            match self.next().await {
                Some(rumqttc::Packet::SubAck(ack)) => {
                    assert_eq!(
                        ack.return_codes,
                        vec![rumqttc::SubscribeReasonCode::Success(qos)]
                    );
                    return;
                }
                Some(_) => {}
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }
}

impl Drop for Rumqtt4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The MQTT 5 counterpart of [`Rumqtt4`].
pub struct Rumqtt5 {
    pub client: rumqttc::v5::AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl Rumqtt5 {
    /// Connects with `client_id`, keep alive 60 s, clean start, then `tweak`; waits for a
    /// successful CONNACK, which it returns with the client.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        tweak: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> (Rumqtt5, rumqttc::v5::mqttbytes::v5::ConnAck) {
        use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as P};
        let mut options =
            rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(60));
        tweak(&mut options);
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(p)) => {
                        if tx.send(p).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                    // rumqttc reports a DISCONNECT from the broker as an error; pass it on
                    // as the packet it was.
                    Err(rumqttc::v5::ConnectionError::MqttState(
                        rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                    )) => {
                        let _ = tx.send(P::Disconnect(rumqttc::v5::mqttbytes::v5::Disconnect {
                            reason_code,
                            properties: None,
                        }));
                        break;
                    }
                    Err(_) => break,
                }
            }
        });
        let mut c = Rumqtt5 { client, rx, task };
        match c.next().await {
            Some(P::ConnAck(ack)) => {
                assert_eq!(ack.code, ConnectReturnCode::Success, "{ack:?}");
                (c, ack)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next incoming packet; `None` once the connection has closed. Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a packet or a close within the wait")
    }

    /// The next incoming PUBLISH, skipping acknowledgements and PINGRESPs.
    pub async fn next_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        loop {
            match self.next().await {
                Some(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => return p,
                Some(_) => {}
                None => panic!("connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Subscribes and waits for the SUBACK, asserting it grants `qos`.
    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
        use rumqttc::v5::mqttbytes::v5::{Packet as P, SubscribeReasonCode};
        self.client.subscribe(filter, qos).await.unwrap();
        loop {
            match self.next().await {
                Some(P::SubAck(ack)) => {
                    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::Success(qos)]);
                    return;
                }
                Some(_) => {}
                None => panic!("connection closed while waiting for SUBACK"),
            }
        }
    }
}

impl Drop for Rumqtt5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `cond` every 20 ms until it holds; panics after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Packet-flow helpers for the routing, retained, properties, `$SYS` and interop tests: a
/// [`flows::Peer`] wraps a [`RawClient`] and completes the QoS flows it is part of, and
/// [`flows::V4`] / [`flows::V5`] wrap `rumqttc` clients. Kept in their own module so that they
/// cannot clash with other helpers in this file.
pub mod flows {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use moat::codec::{
        ConnAck, Connect, Disconnect, Packet, Properties, PropertyValues, ProtocolVersion,
        PubResponse, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
        SubscriptionOptions, UnsubAck, Unsubscribe,
    };
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    use super::{RawClient, WAIT};

    /// How long a check that something does *not* arrive waits. Such checks are always made
    /// after a later packet that would have been sent after the unwanted one has arrived, so
    /// this only guards against stragglers; it is not what makes the test correct.
    pub const QUIET: Duration = Duration::from_millis(300);

    /// A CONNECT with clean start, keep alive 60 s and no properties.
    pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
        Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }
    }

    /// Subscription options with this QoS and the defaults otherwise.
    pub fn opts(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        }
    }

    /// Subscription options with this QoS and Retain Handling.
    pub fn opts_rh(qos: QoS, retain_handling: RetainHandling) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            retain_handling,
            ..SubscriptionOptions::default()
        }
    }

    /// A PUBLISH without properties (the packet identifier is filled in by [`Peer::publish`]).
    pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
        Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// A raw client that completes QoS flows: PUBLISH packets it receives are acknowledged
    /// when the test takes them, a PUBREL is answered at once, and PUBLISH packets that arrive
    /// while it waits for an acknowledgement of its own are kept for later, in order.
    pub struct Peer {
        pub raw: RawClient,
        stash: VecDeque<Publish>,
        next_id: u16,
    }

    impl Peer {
        /// Connects with clean start and no properties; panics unless CONNACK is a success.
        pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str) -> Peer {
            Peer::connect_with(addr, connect_packet(version, client_id))
                .await
                .0
        }

        /// Sends `connect`; panics unless the CONNACK is a success.
        pub async fn connect_with(addr: SocketAddr, connect: Connect) -> (Peer, ConnAck) {
            let mut raw = RawClient::connect(addr, connect.protocol).await;
            let id = connect.client_id.clone();
            raw.send(&Packet::Connect(Box::new(connect))).await;
            match raw.recv().await {
                Some(Packet::ConnAck(ack)) => {
                    assert_eq!(
                        ack.reason_code,
                        ReasonCode::SUCCESS,
                        "CONNACK for {id:?}: {ack:?}"
                    );
                    let peer = Peer {
                        raw,
                        stash: VecDeque::new(),
                        next_id: 1,
                    };
                    (peer, ack)
                }
                other => panic!("expected CONNACK for {id:?}, got {other:?}"),
            }
        }

        fn packet_id(&mut self) -> u16 {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            id
        }

        /// The next packet that is not a PUBLISH (those are stashed) or a PUBREL (answered).
        async fn next_control(&mut self, waiting_for: &str) -> Packet {
            loop {
                match self.raw.recv().await {
                    Some(Packet::Publish(p)) => self.stash.push_back(p),
                    Some(Packet::PubRel(r)) => {
                        self.raw
                            .send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                            .await
                    }
                    Some(other) => return other,
                    None => panic!("connection closed while waiting for {waiting_for}"),
                }
            }
        }

        /// SUBSCRIBE with these filters and properties; returns the SUBACK.
        pub async fn subscribe_with(
            &mut self,
            filters: &[(&str, SubscriptionOptions)],
            properties: Properties,
        ) -> SubAck {
            let packet_id = self.packet_id();
            self.raw
                .send(&Packet::Subscribe(Subscribe {
                    packet_id,
                    filters: filters.iter().map(|&(f, o)| (f.into(), o)).collect(),
                    properties,
                }))
                .await;
            match self.next_control("SUBACK").await {
                Packet::SubAck(ack) => {
                    assert_eq!(ack.packet_id, packet_id, "SUBACK packet identifier");
                    ack
                }
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }

        /// SUBSCRIBE with these filters; returns the SUBACK reason codes as bytes.
        pub async fn subscribe_many(&mut self, filters: &[(&str, SubscriptionOptions)]) -> Vec<u8> {
            let ack = self.subscribe_with(filters, Properties::default()).await;
            ack.reason_codes.iter().map(|c| c.0).collect()
        }

        /// Subscribes to one filter and asserts that this QoS was granted.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            let codes = self.subscribe_many(&[(filter, opts(qos))]).await;
            assert_eq!(codes, vec![qos as u8], "SUBACK for {filter:?}");
        }

        /// Subscribes to one filter with a subscription identifier; asserts the grant.
        pub async fn subscribe_id(&mut self, filter: &str, options: SubscriptionOptions, id: u32) {
            let properties = Properties::from(PropertyValues {
                subscription_identifiers: vec![id],
                ..PropertyValues::default()
            });
            let ack = self.subscribe_with(&[(filter, options)], properties).await;
            assert_eq!(
                ack.reason_codes,
                vec![ReasonCode(options.qos as u8)],
                "SUBACK for {filter:?}"
            );
        }

        /// UNSUBSCRIBE; returns the UNSUBACK.
        pub async fn unsubscribe(&mut self, filters: &[&str]) -> UnsubAck {
            let packet_id = self.packet_id();
            self.raw
                .send(&Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters: filters.iter().map(|&f| f.into()).collect(),
                    properties: Properties::default(),
                }))
                .await;
            match self.next_control("UNSUBACK").await {
                Packet::UnsubAck(ack) => {
                    assert_eq!(ack.packet_id, packet_id, "UNSUBACK packet identifier");
                    ack
                }
                other => panic!("expected UNSUBACK, got {other:?}"),
            }
        }

        /// Sends a PUBLISH (a packet identifier is assigned for QoS 1 and 2) and completes its
        /// flow. Returns the PUBACK (QoS 1) or PUBREC (QoS 2); for QoS 0 a PINGREQ/PINGRESP
        /// round trip follows, so that in every case the broker has routed the message when
        /// this returns.
        pub async fn publish(&mut self, mut publish: Publish) -> Option<PubResponse> {
            let qos = publish.qos;
            let id = (qos != QoS::AtMostOnce).then(|| self.packet_id());
            publish.packet_id = id;
            self.raw.send(&Packet::Publish(publish)).await;
            match qos {
                QoS::AtMostOnce => {
                    self.raw.send(&Packet::PingReq).await;
                    match self.next_control("PINGRESP").await {
                        Packet::PingResp => None,
                        other => panic!("expected PINGRESP, got {other:?}"),
                    }
                }
                QoS::AtLeastOnce => match self.next_control("PUBACK").await {
                    Packet::PubAck(r) if Some(r.packet_id) == id => Some(r),
                    other => panic!("expected PUBACK {id:?}, got {other:?}"),
                },
                QoS::ExactlyOnce => {
                    let rec = match self.next_control("PUBREC").await {
                        Packet::PubRec(r) if Some(r.packet_id) == id => r,
                        other => panic!("expected PUBREC {id:?}, got {other:?}"),
                    };
                    if !rec.reason_code.is_error() {
                        self.raw
                            .send(&Packet::PubRel(PubResponse::success(rec.packet_id)))
                            .await;
                        match self.next_control("PUBCOMP").await {
                            Packet::PubComp(c) if c.packet_id == rec.packet_id => {}
                            other => panic!("expected PUBCOMP {id:?}, got {other:?}"),
                        }
                    }
                    Some(rec)
                }
            }
        }

        /// Publishes a message without properties; see [`Peer::publish`].
        pub async fn send_message(
            &mut self,
            topic: &str,
            payload: &[u8],
            qos: QoS,
            retain: bool,
        ) -> Option<PubResponse> {
            self.publish(publish_packet(topic, payload, qos, retain))
                .await
        }

        async fn ack(&mut self, p: &Publish) {
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => {
                    self.raw
                        .send(&Packet::PubAck(PubResponse::success(id)))
                        .await
                }
                (QoS::ExactlyOnce, Some(id)) => {
                    self.raw
                        .send(&Packet::PubRec(PubResponse::success(id)))
                        .await
                }
                _ => {}
            }
        }

        /// The next PUBLISH within `d`, acknowledged; `None` if none comes (or on close).
        /// Panics on any packet other than PUBLISH or PUBREL.
        pub async fn recv_publish_within(&mut self, d: Duration) -> Option<Publish> {
            let p = match self.stash.pop_front() {
                Some(p) => p,
                None => {
                    let deadline = tokio::time::Instant::now() + d;
                    loop {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        match self.raw.recv_within(left).await {
                            Some(Packet::Publish(p)) => break p,
                            Some(Packet::PubRel(r)) => {
                                self.raw
                                    .send(&Packet::PubComp(PubResponse::success(r.packet_id)))
                                    .await
                            }
                            Some(other) => panic!("expected PUBLISH, got {other:?}"),
                            None => return None,
                        }
                    }
                }
            };
            self.ack(&p).await;
            Some(p)
        }

        /// The next PUBLISH, acknowledged. Panics if none arrives within [`WAIT`].
        pub async fn recv_publish(&mut self) -> Publish {
            self.recv_publish_within(WAIT)
                .await
                .expect("a PUBLISH within the wait")
        }

        /// The next `n` PUBLISH packets.
        pub async fn recv_publishes(&mut self, n: usize) -> Vec<Publish> {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                out.push(self.recv_publish().await);
            }
            out
        }

        /// Asserts that no PUBLISH arrives within [`QUIET`].
        pub async fn assert_no_publish(&mut self) {
            if let Some(p) = self.recv_publish_within(QUIET).await {
                panic!("expected no more PUBLISH packets, got {p:?}");
            }
        }

        /// The next packet of any kind (stashed PUBLISH packets first, unacknowledged).
        pub async fn recv_any(&mut self) -> Option<Packet> {
            if let Some(p) = self.stash.pop_front() {
                return Some(Packet::Publish(p));
            }
            self.raw.recv().await
        }

        /// Sends DISCONNECT (normal) and waits for the broker to close the connection.
        pub async fn disconnect(mut self) {
            self.raw
                .send(&Packet::Disconnect(Disconnect::new(
                    ReasonCode::NORMAL_DISCONNECTION,
                )))
                .await;
            let rest = self.raw.closed().await;
            assert!(
                rest.iter().all(|p| matches!(p, Packet::Publish(_))),
                "unexpected packets after DISCONNECT: {rest:?}"
            );
        }
    }

    /// The topic and payload of a PUBLISH as text, for compact assertions.
    pub fn text(p: &Publish) -> (String, String) {
        (
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        )
    }

    /// A `rumqttc` MQTT 3.1.1 client whose event loop runs in a task; incoming packets are
    /// forwarded to the test. Dropping it aborts the event loop (the socket closes).
    pub struct V4 {
        pub client: rumqttc::AsyncClient,
        rx: mpsc::UnboundedReceiver<rumqttc::Packet>,
        task: JoinHandle<()>,
    }

    impl V4 {
        /// Connects with clean session and waits for the CONNACK.
        pub async fn connect(addr: SocketAddr, client_id: &str) -> V4 {
            let mut options =
                rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
            options.set_keep_alive(Duration::from_secs(30));
            options.set_clean_session(true);
            let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                while let Ok(event) = eventloop.poll().await {
                    if let rumqttc::Event::Incoming(p) = event
                        && tx.send(p).is_err()
                    {
                        return;
                    }
                }
            });
            let mut c = V4 { client, rx, task };
            match c.next().await {
                rumqttc::Packet::ConnAck(ack) => {
                    assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success)
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
            c
        }

        /// The next incoming packet other than PINGRESP; panics after [`WAIT`].
        pub async fn next(&mut self) -> rumqttc::Packet {
            loop {
                let p = tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("a packet within the wait")
                    .expect("the rumqttc event loop ended");
                if !matches!(p, rumqttc::Packet::PingResp) {
                    return p;
                }
            }
        }

        /// Subscribes and returns the SUBACK return codes.
        pub async fn subscribe(
            &mut self,
            filter: &str,
            qos: rumqttc::QoS,
        ) -> Vec<rumqttc::SubscribeReasonCode> {
            self.client.subscribe(filter, qos).await.unwrap();
            match self.next().await {
                rumqttc::Packet::SubAck(ack) => ack.return_codes,
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }

        /// The next incoming PUBLISH (rumqttc acknowledges it).
        pub async fn recv_publish(&mut self) -> rumqttc::Publish {
            match self.next().await {
                rumqttc::Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }

        /// Publishes at QoS 1 and waits for the PUBACK.
        pub async fn publish_acked(&mut self, topic: &str, payload: &[u8], retain: bool) {
            self.client
                .publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload.to_vec())
                .await
                .unwrap();
            match self.next().await {
                rumqttc::Packet::PubAck(_) => {}
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    impl Drop for V4 {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A `rumqttc` MQTT 5 client, like [`V4`].
    pub struct V5 {
        pub client: rumqttc::v5::AsyncClient,
        rx: mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
        task: JoinHandle<()>,
    }

    impl V5 {
        /// Connects with clean start and waits for the CONNACK.
        pub async fn connect(addr: SocketAddr, client_id: &str) -> V5 {
            let mut options =
                rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
            options.set_keep_alive(Duration::from_secs(30));
            options.set_clean_start(true);
            let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 100);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                while let Ok(event) = eventloop.poll().await {
                    if let rumqttc::v5::Event::Incoming(p) = event
                        && tx.send(p).is_err()
                    {
                        return;
                    }
                }
            });
            let mut c = V5 { client, rx, task };
            match c.next().await {
                rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack) => assert_eq!(
                    ack.code,
                    rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
                ),
                other => panic!("expected CONNACK, got {other:?}"),
            }
            c
        }

        /// The next incoming packet other than PINGRESP; panics after [`WAIT`].
        pub async fn next(&mut self) -> rumqttc::v5::mqttbytes::v5::Packet {
            loop {
                let p = tokio::time::timeout(WAIT, self.rx.recv())
                    .await
                    .expect("a packet within the wait")
                    .expect("the rumqttc event loop ended");
                if !matches!(p, rumqttc::v5::mqttbytes::v5::Packet::PingResp(_)) {
                    return p;
                }
            }
        }

        /// The next incoming packet if one arrives within `d`.
        pub async fn next_within(
            &mut self,
            d: Duration,
        ) -> Option<rumqttc::v5::mqttbytes::v5::Packet> {
            tokio::time::timeout(d, self.rx.recv()).await.ok().flatten()
        }

        /// Subscribes and waits for the SUBACK, which must grant `qos`.
        pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::v5::mqttbytes::QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            match self.next().await {
                rumqttc::v5::mqttbytes::v5::Packet::SubAck(ack) => {
                    assert_eq!(ack.return_codes.len(), 1);
                    assert!(
                        matches!(
                            (ack.return_codes[0], qos),
                            (
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                                    rumqttc::v5::mqttbytes::QoS::AtMostOnce
                                ),
                                rumqttc::v5::mqttbytes::QoS::AtMostOnce
                            ) | (
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                                ),
                                rumqttc::v5::mqttbytes::QoS::AtLeastOnce
                            ) | (
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(
                                    rumqttc::v5::mqttbytes::QoS::ExactlyOnce
                                ),
                                rumqttc::v5::mqttbytes::QoS::ExactlyOnce
                            )
                        ),
                        "SUBACK for {filter:?}: {ack:?}"
                    );
                }
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }

        /// The next incoming PUBLISH (rumqttc acknowledges it).
        pub async fn recv_publish(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
            match self.next().await {
                rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    impl Drop for V5 {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

// --- Helpers for the conformance tests --------------------------------------------------------

impl RawClient {
    /// The next packet as the raw bytes of its frame (fixed header included), or `None` if the
    /// connection closed. Panics after [`WAIT`]. For byte-exact checks of what the broker
    /// encodes.
    pub async fn recv_frame(&mut self) -> Option<bytes::Bytes> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(n) =
                    codec::check(&self.rbuf, u32::MAX).expect("server sent a bad packet")
                {
                    return Some(self.rbuf.split_to(n).freeze());
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or a close within the wait")
    }
}
