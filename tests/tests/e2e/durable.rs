//! Durable state end to end: the broker as its own process (`moat-test-broker`, which is the
//! `moat` command), on a temporary data directory, killed with SIGKILL and started again.
//!
//! The clients are small raw MQTT clients on moat's codec that survive the broker's death:
//! they keep their own session state (the publisher its message in flight, the subscriber the
//! QoS 2 packet ids it has received but not yet seen released, as MQTT asks of a receiver),
//! reconnect with clean start 0 to whatever address the broker listens on now, and resend
//! what was unfinished.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use moat::codec::{
    self, ConnAck, Connect, Packet, Properties, PropertyValues, ProtocolVersion, PubResponse,
    Publish, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::broker_process::BrokerProcess;
use crate::harness::raw_connect_packet;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// Starts the broker on `dir` (its data directory and config) and waits until it listens.
/// Queues are unbounded in effect: an overflowing queue drops messages by design, which is
/// not what these tests are about.
fn start_broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("moat.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\ndir = {:?}\n[sys]\ninterval = 0\n[log]\nfilter = \"warn,moat::broker=info\"\n\
             [limits]\nmax_queued_messages = 10000000\n",
            dir.join("data")
        ),
    )
    .unwrap();
    BrokerProcess::start(&config, &["--listen", "127.0.0.1:0"])
}

/// A raw MQTT connection whose every failure is a value, not a panic.
struct Wire {
    stream: TcpStream,
    rbuf: BytesMut,
    version: ProtocolVersion,
}

/// The connection broke.
struct Lost;

impl Wire {
    async fn connect(addr: SocketAddr, connect: Connect) -> Option<(Wire, ConnAck)> {
        let stream = TcpStream::connect(addr).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let mut wire = Wire {
            stream,
            rbuf: BytesMut::new(),
            version: connect.protocol,
        };
        wire.send(&Packet::Connect(Box::new(connect))).await.ok()?;
        match wire.recv(Duration::from_secs(5)).await {
            Ok(Some(Packet::ConnAck(ack))) if ack.reason_code.0 == 0 => Some((wire, ack)),
            _ => None,
        }
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), Lost> {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.stream.write_all(&out).await.map_err(|_| Lost)
    }

    /// The next packet, `Ok(None)` if none came within `wait`.
    async fn recv(&mut self, wait: Duration) -> Result<Option<Packet>, Lost> {
        let read = async {
            loop {
                if let Some(n) = codec::check(&self.rbuf, u32::MAX).map_err(|_| Lost)? {
                    let frame = self.rbuf.split_to(n).freeze();
                    return codec::decode(frame, Some(self.version)).map_err(|_| Lost);
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return Err(Lost),
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(wait, read).await {
            Ok(p) => p.map(Some),
            Err(_) => Ok(None),
        }
    }
}

/// A test client: where the broker is now, and who the client is.
#[derive(Clone)]
struct Peer {
    addr: watch::Receiver<SocketAddr>,
    version: ProtocolVersion,
    client_id: &'static str,
}

/// Connects as the peer with a persistent session, retrying until the broker (wherever it
/// listens now) answers.
async fn reconnect(peer: &Peer) -> (Wire, bool) {
    let (addr, version, client_id) = (&peer.addr, peer.version, peer.client_id);
    loop {
        let mut connect = raw_connect_packet(version, client_id, false);
        if version == V5 {
            connect.properties.session_expiry_interval = Some(3600);
        }
        let now = *addr.borrow();
        if let Some((wire, ack)) = Wire::connect(now, connect).await {
            return (wire, ack.session_present);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn publish(topic: &str, payload: String, qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload: Bytes::from(payload),
    })
}

/// Publishes numbered messages one at a time until `stop`, through every crash, and returns
/// the numbers whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived.
async fn publisher(peer: Peer, topic: &'static str, qos: QoS, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut n = 0u64;
    // The message in flight: (number, packet id, PUBREC seen).
    let mut inflight: Option<(u64, u16, bool)> = None;
    loop {
        let (mut wire, _) = reconnect(&peer).await;
        // Resend what was unfinished (MQTT-4.4.0-1): the PUBLISH with DUP, or the PUBREL.
        let resent = match inflight {
            Some((m, id, false)) => {
                wire.send(&publish(topic, format!("{m}"), qos, id, true))
                    .await
            }
            Some((_, id, true)) => wire.send(&Packet::PubRel(PubResponse::success(id))).await,
            None => Ok(()),
        };
        if resent.is_err() {
            continue;
        }
        loop {
            if inflight.is_none() {
                if stop.load(Ordering::Relaxed) {
                    return acked;
                }
                n += 1;
                let id = (n % 60_000) as u16 + 1;
                inflight = Some((n, id, false));
                if wire
                    .send(&publish(topic, format!("{n}"), qos, id, false))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let Some((m, id, _)) = inflight else { continue };
            match wire.recv(Duration::from_secs(2)).await {
                Err(Lost) => break,
                Ok(Some(Packet::PubAck(a))) if a.packet_id == id => {
                    assert_eq!(a.reason_code.0, 0, "PUBACK {a:?}");
                    acked.push(m);
                    inflight = None;
                }
                Ok(Some(Packet::PubRec(r))) if r.packet_id == id => {
                    assert!(!r.reason_code.is_error(), "PUBREC {r:?}");
                    inflight = Some((m, id, true));
                    if wire
                        .send(&Packet::PubRel(PubResponse::success(id)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                // 0x92 too: the broker may have made the release durable and died before its
                // PUBCOMP left; the exchange is over either way (section 4.3.3). Whether the
                // message got through is what the subscriber's count says.
                Ok(Some(Packet::PubComp(c))) if c.packet_id == id => {
                    acked.push(m);
                    inflight = None;
                }
                Ok(_) => {}
            }
        }
    }
}

/// What a subscriber's application saw: how often each message number was delivered.
type Seen = Arc<Mutex<HashMap<u64, u32>>>;

/// Subscribes once (the persistent session keeps the subscription across reconnects and
/// restarts), then alternates between online and offline until `stop`, and finally stays
/// until nothing has come for a while. QoS 2 receipts are deduplicated by packet id until
/// PUBREL, as MQTT's receiver side does; everything handed to the application is counted.
async fn subscriber(
    peer: Peer,
    filter: &'static str,
    qos: QoS,
    subscribed: tokio::sync::oneshot::Sender<()>,
    stop: Arc<AtomicBool>,
    seen: Seen,
) {
    let mut subscribed = Some(subscribed);
    let mut unreleased: HashSet<u16> = HashSet::new();
    let mut cycle = 0u32;
    loop {
        let (mut wire, _) = reconnect(&peer).await;
        if let Some(tx) = subscribed.take() {
            let sub = Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: vec![(
                    filter.into(),
                    SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                )],
                properties: Properties::default(),
            });
            assert!(wire.send(&sub).await.is_ok());
            match wire.recv(Duration::from_secs(5)).await {
                Ok(Some(Packet::SubAck(_))) => {}
                other => panic!("no SUBACK: {:?}", other.ok()),
            }
            let _ = tx.send(());
        }
        let draining = stop.load(Ordering::Relaxed);
        cycle += 1;
        // Online for a while (longer every other time), then offline.
        let online =
            tokio::time::Instant::now() + Duration::from_millis(400 + 400 * u64::from(cycle % 2));
        loop {
            let wait = if draining {
                Duration::from_millis(1500)
            } else {
                online.saturating_duration_since(tokio::time::Instant::now())
            };
            let packet = match wire.recv(wait).await {
                Err(Lost) => break,
                Ok(None) if draining => return,
                Ok(None) => break,
                Ok(Some(p)) => p,
            };
            let answer = match packet {
                Packet::Publish(p) => {
                    let n: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                    let id = p.packet_id.unwrap_or(0);
                    let fresh = p.qos != QoS::ExactlyOnce || unreleased.insert(id);
                    if fresh {
                        *seen.lock().unwrap().entry(n).or_default() += 1;
                    }
                    match p.qos {
                        QoS::AtLeastOnce => Packet::PubAck(PubResponse::success(id)),
                        _ => Packet::PubRec(PubResponse::success(id)),
                    }
                }
                Packet::PubRel(r) => {
                    unreleased.remove(&r.packet_id);
                    Packet::PubComp(PubResponse::success(r.packet_id))
                }
                _ => continue,
            };
            if wire.send(&answer).await.is_err() {
                break;
            }
        }
        drop(wire);
        if !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Publishes one retained message and waits for its PUBACK.
async fn set_retained(addr: SocketAddr, topic: &str, payload: &str) {
    let connect = raw_connect_packet(V5, "retainer", true);
    let (mut wire, _) = Wire::connect(addr, connect).await.expect("connects");
    let mut p = publish(topic, payload.into(), QoS::AtLeastOnce, 1, false);
    if let Packet::Publish(p) = &mut p {
        p.retain = true;
    }
    assert!(wire.send(&p).await.is_ok());
    assert!(matches!(
        wire.recv(Duration::from_secs(5)).await,
        Ok(Some(Packet::PubAck(_)))
    ));
}

/// The retained message a fresh subscriber to `topic` gets.
async fn retained(addr: SocketAddr, topic: &str) -> Option<Bytes> {
    let connect = raw_connect_packet(V5, "retained-reader", true);
    let (mut wire, _) = Wire::connect(addr, connect).await?;
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(topic.into(), SubscriptionOptions::default())],
        properties: Properties::default(),
    });
    wire.send(&sub).await.ok()?;
    loop {
        match wire.recv(Duration::from_secs(2)).await.ok()?? {
            Packet::Publish(p) => return Some(p.payload),
            _ => continue,
        }
    }
}

/// QoS 1 and QoS 2 publishers to persistent subscribers that are offline part of the time;
/// the broker is killed with SIGKILL three times in the middle. Afterwards every message whose
/// PUBACK reached its publisher was delivered at least once, every message whose PUBCOMP
/// reached its publisher exactly once (and no QoS 2 message twice), the retained message is
/// intact, and the subscriptions of the persistent sessions still route (the messages
/// acknowledged after the last restart arrive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start_broker(dir.path());
    let (addr_tx, addr) = watch::channel(broker.addr);
    set_retained(broker.addr, "crash/retained", "kept").await;

    let stop_pub = Arc::new(AtomicBool::new(false));
    let stop_sub = Arc::new(AtomicBool::new(false));
    let seen1: Seen = Arc::default();
    let seen2: Seen = Arc::default();
    let (ready1, wait1) = tokio::sync::oneshot::channel();
    let (ready2, wait2) = tokio::sync::oneshot::channel();
    let sub1 = tokio::spawn(subscriber(
        Peer {
            addr: addr.clone(),
            version: V5,
            client_id: "crash-sub-1",
        },
        "crash/q1",
        QoS::AtLeastOnce,
        ready1,
        stop_sub.clone(),
        seen1.clone(),
    ));
    let sub2 = tokio::spawn(subscriber(
        Peer {
            addr: addr.clone(),
            version: V311,
            client_id: "crash-sub-2",
        },
        "crash/q2",
        QoS::ExactlyOnce,
        ready2,
        stop_sub.clone(),
        seen2.clone(),
    ));
    wait1.await.unwrap();
    wait2.await.unwrap();
    let pub1 = tokio::spawn(publisher(
        Peer {
            addr: addr.clone(),
            version: V311,
            client_id: "crash-pub-1",
        },
        "crash/q1",
        QoS::AtLeastOnce,
        stop_pub.clone(),
    ));
    let pub2 = tokio::spawn(publisher(
        Peer {
            addr: addr.clone(),
            version: V5,
            client_id: "crash-pub-2",
        },
        "crash/q2",
        QoS::ExactlyOnce,
        stop_pub.clone(),
    ));

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker = start_broker(dir.path());
        addr_tx.send_replace(broker.addr);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_pub.store(true, Ordering::Relaxed);
    let acked1 = pub1.await.unwrap();
    let acked2 = pub2.await.unwrap();
    stop_sub.store(true, Ordering::Relaxed);
    sub1.await.unwrap();
    sub2.await.unwrap();

    eprintln!(
        "acknowledged: {} at QoS 1, {} at QoS 2",
        acked1.len(),
        acked2.len()
    );
    assert!(
        acked1.len() > 20 && acked2.len() > 20,
        "too little traffic: {} and {}",
        acked1.len(),
        acked2.len()
    );
    let seen1 = seen1.lock().unwrap().clone();
    let lost1: Vec<_> = acked1.iter().filter(|n| !seen1.contains_key(n)).collect();
    assert!(
        lost1.is_empty(),
        "QoS 1: {} of {} acknowledged messages lost: {lost1:?}",
        lost1.len(),
        acked1.len()
    );
    let seen2 = seen2.lock().unwrap().clone();
    let lost2: Vec<_> = acked2.iter().filter(|n| !seen2.contains_key(n)).collect();
    assert!(
        lost2.is_empty(),
        "QoS 2: {} of {} acknowledged messages lost: {lost2:?}",
        lost2.len(),
        acked2.len()
    );
    let twice: Vec<_> = seen2.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "QoS 2 delivered more than once: {twice:?}"
    );
    assert_eq!(
        retained(broker.addr, "crash/retained").await.as_deref(),
        Some(&b"kept"[..])
    );
}

/// A v5 CONNECT with the given session expiry.
fn connect_v5(client_id: &str, clean_start: bool, session_expiry: u32) -> Connect {
    let mut connect = raw_connect_packet(V5, client_id, clean_start);
    connect.properties.session_expiry_interval = Some(session_expiry);
    connect
}

/// Connects, subscribes to `filter` at QoS 1 and leaves (the session stays).
async fn park_session(addr: SocketAddr, client_id: &str, session_expiry: u32, filter: &str) {
    let (mut wire, _) = Wire::connect(addr, connect_v5(client_id, true, session_expiry))
        .await
        .expect("connects");
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    });
    assert!(wire.send(&sub).await.is_ok());
    assert!(matches!(
        wire.recv(Duration::from_secs(5)).await,
        Ok(Some(Packet::SubAck(_)))
    ));
    assert!(
        wire.send(&Packet::Disconnect(moat::codec::Disconnect {
            reason_code: moat::codec::ReasonCode::SUCCESS,
            properties: Properties::default(),
        }))
        .await
        .is_ok()
    );
}

/// Publishes at QoS 1 (optionally retained, optionally with a message expiry) and waits for
/// the PUBACK.
async fn publish_acked(
    addr: SocketAddr,
    topic: &str,
    payload: &str,
    retain: bool,
    expiry: Option<u32>,
) {
    let (mut wire, _) = Wire::connect(addr, connect_v5("exp-pub", true, 0))
        .await
        .expect("connects");
    let properties = Properties::from(PropertyValues {
        message_expiry_interval: expiry,
        ..PropertyValues::default()
    });
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: Some(1),
        properties,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    });
    assert!(wire.send(&p).await.is_ok());
    assert!(matches!(
        wire.recv(Duration::from_secs(5)).await,
        Ok(Some(Packet::PubAck(_)))
    ));
}

/// The payloads a resumed session receives before things go quiet, and whether the broker
/// said the session was present (MQTT-3.2.2-2, MQTT-3.2.2-3).
async fn resume(addr: SocketAddr, client_id: &str) -> (bool, Vec<String>) {
    let (mut wire, ack) = Wire::connect(addr, connect_v5(client_id, false, 3600))
        .await
        .expect("connects");
    let mut got = Vec::new();
    while let Ok(Some(packet)) = wire.recv(Duration::from_millis(700)).await {
        if let Packet::Publish(p) = packet {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            let _ = wire
                .send(&Packet::PubAck(PubResponse::success(p.packet_id.unwrap())))
                .await;
        }
    }
    (ack.session_present, got)
}

/// Sessions and messages whose expiry passed while the broker was down are gone after the
/// restart; the others are intact (MQTT-3.1.2-23 across a restart, MQTT-3.3.2-5).
#[tokio::test]
async fn what_expires_while_the_broker_is_down_is_gone_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    park_session(broker.addr, "exp-short", 2, "exp/t").await;
    park_session(broker.addr, "exp-long", 3600, "exp/t").await;
    publish_acked(broker.addr, "exp/t", "short-lived", false, Some(2)).await;
    publish_acked(broker.addr, "exp/t", "lasting", false, None).await;
    publish_acked(broker.addr, "exp/r1", "retained short-lived", true, Some(2)).await;
    publish_acked(broker.addr, "exp/r2", "retained lasting", true, None).await;
    broker.kill();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let broker = start_broker(dir.path());
    assert_eq!(resume(broker.addr, "exp-short").await, (false, vec![]));
    assert_eq!(
        resume(broker.addr, "exp-long").await,
        (true, vec!["lasting".to_string()])
    );
    assert_eq!(retained(broker.addr, "exp/r1").await, None);
    assert_eq!(
        retained(broker.addr, "exp/r2").await.as_deref(),
        Some(&b"retained lasting"[..])
    );
}

/// A will waiting out its delay survives SIGKILL and is published after the restart, judged
/// by the plugin chain as its client was (MQTT-3.1.3-9 across a restart): the default chain's
/// allow-anonymous plugin only allows what clients it let in publish, so the stored identity
/// (the plugin, its session state, the listener) must come back whole.
#[tokio::test]
async fn a_delayed_will_survives_a_crash_and_is_authorized_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path());
    let mut connect = connect_v5("dying", true, 60);
    connect.will = Some(moat::codec::Will {
        topic: "wills/dying".into(),
        payload: Bytes::from_static(b"bye"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::from(PropertyValues {
            will_delay_interval: Some(2),
            ..PropertyValues::default()
        }),
    });
    let (wire, _) = Wire::connect(broker.addr, connect).await.expect("connects");
    // The connection is lost: the will is scheduled, and stored.
    drop(wire);
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill();

    let broker = start_broker(dir.path());
    let (mut watcher, _) = Wire::connect(broker.addr, connect_v5("watcher", true, 0))
        .await
        .expect("connects");
    let sub = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(
            "wills/#".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    });
    assert!(watcher.send(&sub).await.is_ok());
    let mut will = None;
    while let Ok(Some(packet)) = watcher.recv(Duration::from_secs(6)).await {
        if let Packet::Publish(p) = packet {
            will = Some(p);
            break;
        }
    }
    let will = will.expect("the will is published after the restart");
    assert_eq!(
        (&*will.topic, &will.payload[..]),
        ("wills/dying", &b"bye"[..])
    );
}
