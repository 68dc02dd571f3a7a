//! Publisher backpressure (`limits.slow_subscriber_timeout`, docs/architecture.md): a
//! publisher that fills a connected subscriber's queue is paused until it drains, so a slow
//! but reading subscriber loses nothing; one that does not read at all holds its publishers
//! for at most the timeout and is then marked slow; offline sessions never pause anyone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use moat::codec::ProtocolVersion::V311;
use moat::codec::{Disconnect, Packet, QoS, ReasonCode};
use moat::config::QueueOverflow;
use moat::metrics::DropCause;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::harness::{self, RawClient, TestBroker, raw_connect_packet, raw_publish};

/// rumqttc options: keep alive 60 s, packets up to 64 KiB both ways.
fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    o
}

/// The payload of message `seq`: its number, then padding to `len` bytes.
fn payload(seq: u32, len: usize) -> Vec<u8> {
    let mut p = seq.to_be_bytes().to_vec();
    p.resize(len.max(4), 0);
    p
}

/// The message that tells a subscriber to stop: the next sequence number, flagged.
fn last_payload(seq: u32) -> Vec<u8> {
    let mut p = payload(seq, 4);
    p.push(1);
    p
}

/// What a subscriber saw: sequence numbers in arrival order and when each arrived.
struct Received {
    seqs: Vec<u32>,
    times: Vec<Instant>,
}

impl Received {
    /// The longest time between two consecutive arrivals.
    fn longest_gap(&self) -> Duration {
        self.times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    /// Asserts that messages 0..=last arrived, each once, in order.
    fn assert_complete(&self, what: &str) {
        let expected: Vec<u32> = (0..self.seqs.len() as u32).collect();
        assert_eq!(self.seqs, expected, "{what}: every message, once, in order");
    }
}

/// A rumqttc subscriber on `filter` at QoS 1 that reads its socket only through rumqttc's
/// event loop and sleeps `nap` after every `every` messages, so it reads (and acknowledges)
/// slowly. It stops at the last message (see [`last_payload`]), or once nothing has arrived
/// for `quiet`. Resolves `ready` once subscribed.
fn subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &'static str,
    every: u32,
    nap: Duration,
    quiet: Duration,
) -> (oneshot::Receiver<()>, JoinHandle<Received>) {
    let (client, mut eventloop) = AsyncClient::new(options(addr, id), 10);
    let (ready_tx, ready) = oneshot::channel();
    let task = tokio::spawn(async move {
        client
            .subscribe(filter, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut ready_tx = Some(ready_tx);
        let mut got = Received {
            seqs: Vec::new(),
            times: Vec::new(),
        };
        loop {
            let event = match tokio::time::timeout(quiet, eventloop.poll()).await {
                Ok(Ok(e)) => e,
                Ok(Err(e)) => panic!("subscriber {filter}: {e}"),
                Err(_) => break,
            };
            match event {
                Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    if p.payload.len() == 5 && p.payload[4] == 1 {
                        break;
                    }
                    let seq = u32::from_be_bytes(p.payload[..4].try_into().unwrap());
                    got.seqs.push(seq);
                    got.times.push(Instant::now());
                    if (got.seqs.len() as u32).is_multiple_of(every) {
                        tokio::time::sleep(nap).await;
                    }
                }
                _ => {}
            }
        }
        got
    });
    (ready, task)
}

/// A subscriber that reads as fast as rumqttc does, once subscribed.
async fn fast_subscriber(addr: SocketAddr, id: &str, filter: &'static str) -> JoinHandle<Received> {
    let quiet = Duration::from_secs(10);
    let (ready, task) = subscriber(addr, id, filter, u32::MAX, Duration::ZERO, quiet);
    ready.await.expect("subscribed");
    task
}

/// A rumqttc publisher whose event loop runs on its own task.
fn publisher(addr: SocketAddr, id: &str) -> (AsyncClient, JoinHandle<()>) {
    let (client, eventloop) = AsyncClient::new(options(addr, id), 10);
    (client, tokio::spawn(drive(eventloop)))
}

/// Publishes at QoS 1 (returns once rumqttc has queued it).
async fn send(client: &AsyncClient, topic: &str, payload: Vec<u8>) {
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
}

async fn drive(mut eventloop: EventLoop) {
    while eventloop.poll().await.is_ok() {}
}

/// Broker limits that make overflow easy: 10 queued, drop the newest, 5 in flight.
async fn tight_broker(slow_subscriber_timeout: Duration) -> TestBroker {
    harness::start_with(|c| {
        c.limits.max_queued_messages = 10;
        c.limits.queue_overflow = QueueOverflow::DropNewest;
        c.limits.max_inflight = 5;
        c.limits.slow_subscriber_timeout = slow_subscriber_timeout;
    })
    .await
}

/// 3000 QoS 1 messages as fast as rumqttc sends them, to a subscriber that reads at most about
/// 5000 a second, through a 10-message queue: the publisher is paced, nothing is dropped.
async fn fast_publisher_to_slow_subscriber(b: &TestBroker) -> Received {
    const N: u32 = 3000;
    let (ready, sub) = subscriber(
        b.addr,
        "slow-reader",
        "bp/data",
        10,
        Duration::from_millis(2),
        Duration::from_secs(2),
    );
    ready.await.expect("subscribed");
    let (client, pub_task) = publisher(b.addr, "fast-writer");
    for seq in 0..N {
        send(&client, "bp/data", payload(seq, 64)).await;
    }
    send(&client, "bp/data", last_payload(N)).await;
    let got = tokio::time::timeout(Duration::from_secs(60), sub)
        .await
        .expect("the subscriber finishes")
        .unwrap();
    pub_task.abort();
    got
}

#[tokio::test]
async fn fast_qos1_publisher_to_slow_reading_subscriber_loses_nothing() {
    let b = tight_broker(Duration::from_secs(2)).await;
    let got = fast_publisher_to_slow_subscriber(&b).await;
    got.assert_complete("slow subscriber");
    assert_eq!(got.seqs.len(), 3000);
    let m = b.broker.metrics();
    assert_eq!(m.dropped_by(DropCause::QueueFull), 0);
    assert_eq!(
        m.subscribers_marked_slow, 0,
        "a reading subscriber is not slow"
    );
    b.stop().await;
}

/// The control for the test above: with backpressure off, the same load overflows the queue,
/// so that test would fail without it.
#[tokio::test]
async fn without_backpressure_the_same_load_overflows_the_queue() {
    let b = tight_broker(Duration::ZERO).await;
    let got = fast_publisher_to_slow_subscriber(&b).await;
    let dropped = b.broker.metrics().dropped_by(DropCause::QueueFull);
    assert!(dropped > 0, "the 10-message queue overflowed");
    assert!(got.seqs.len() < 3000, "{} delivered", got.seqs.len());
    b.stop().await;
}

/// A subscriber that never reads its socket fills its queue; a publisher routing to it (and to
/// a healthy subscriber) waits at most the timeout, then that subscriber is marked slow and
/// only it loses messages. A publisher/subscriber pair on another topic never waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_that_never_reads_stalls_publishers_at_most_the_timeout() {
    const BOUND: Duration = Duration::from_secs(2);
    let b = tight_broker(BOUND).await;

    // Subscribes to everything under bp/ at QoS 0, then never reads again.
    let mut stuck = RawClient::connected(b.addr, V311, "stuck", true).await;
    stuck.subscribe_one(1, "bp/#", QoS::AtMostOnce).await;

    let healthy = fast_subscriber(b.addr, "healthy", "bp/data").await;
    let bystander = fast_subscriber(b.addr, "bystander", "other/ping").await;

    // The unrelated pair: one ping every 50 ms until told to stop.
    let (stop_tx, mut stop) = oneshot::channel::<()>();
    let (pinger, pinger_task) = publisher(b.addr, "pinger");
    let pings = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            send(&pinger, "other/ping", payload(seq, 4)).await;
            seq += 1;
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        send(&pinger, "other/ping", last_payload(seq)).await;
    });

    // 16 KiB messages until the stuck subscriber has been marked slow, then 20 more.
    let (client, pub_task) = publisher(b.addr, "writer");
    let metrics = || b.broker.metrics();
    let mut seq = 0;
    let mut after_slow = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while after_slow < 20 {
            send(&client, "bp/data", payload(seq, 16 * 1024)).await;
            seq += 1;
            if metrics().subscribers_marked_slow > 0 {
                after_slow += 1;
            }
        }
    })
    .await
    .expect("the stuck subscriber is marked slow and the publisher goes on");
    send(&client, "bp/data", last_payload(seq)).await;

    let got = tokio::time::timeout(Duration::from_secs(30), healthy)
        .await
        .expect("the healthy subscriber finishes")
        .unwrap();
    let _ = stop_tx.send(());
    pings.await.unwrap();
    let pinged = tokio::time::timeout(Duration::from_secs(30), bystander)
        .await
        .expect("the bystander finishes")
        .unwrap();
    pub_task.abort();
    pinger_task.abort();

    got.assert_complete("healthy subscriber");
    assert_eq!(got.seqs.len() as u32, seq);
    // The pause lasted about BOUND; the margin is for a busy machine, not for the broker.
    let gap = got.longest_gap();
    eprintln!(
        "healthy subscriber: {} messages, longest gap {gap:?}",
        got.seqs.len()
    );
    assert!(
        gap < BOUND + Duration::from_secs(2),
        "the healthy subscriber waited {gap:?}"
    );
    pinged.assert_complete("bystander");
    let gap = pinged.longest_gap();
    assert!(gap < BOUND, "the unrelated pair waited {gap:?}");
    let m = metrics();
    assert_eq!(m.subscribers_marked_slow, 1);
    assert!(
        m.dropped_by(DropCause::QueueFull) > 0,
        "only the stuck one lost messages"
    );
    drop(stuck);
    b.stop().await;
}

/// Offline persistent sessions never pause a publisher: their queue bound applies at once.
#[tokio::test]
async fn offline_session_with_full_queue_does_not_pause_publishers() {
    // A timeout this long would fail the test if the publisher were paused.
    let b = tight_broker(Duration::from_secs(3600)).await;
    let mut connect = raw_connect_packet(V311, "offline", false);
    connect.keep_alive = 0;
    let (mut sub, _) = RawClient::handshake(b.addr, connect).await;
    sub.subscribe_one(1, "bp/offline", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Disconnect::new(ReasonCode::SUCCESS)))
        .await;
    sub.closed().await;

    let mut publisher = RawClient::connected(b.addr, V311, "publisher", true).await;
    for id in 1..=100u16 {
        publisher
            .send(&raw_publish("bp/offline", b"x", QoS::AtLeastOnce, Some(id)))
            .await;
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, id),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    let m = b.broker.metrics();
    assert_eq!(m.dropped_by(DropCause::QueueFull), 90);
    assert_eq!(m.subscribers_marked_slow, 0);
    b.stop().await;
}
