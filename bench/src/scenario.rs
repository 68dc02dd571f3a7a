//! Publish/subscribe scenarios: who publishes where, who listens, and the run from connect to
//! report.
//!
//! One general shape covers fan-in, fan-out and many-to-many: `publishers` publishers and
//! `subscribers` subscribers over `topics` distinct topics; publisher `i` publishes to topic
//! `i % topics` and subscriber `j` subscribes to topic `j % topics`. Fan-in is P→1 over one
//! topic, fan-out 1→S over one topic, and many-to-many N→N over N topics (one pair per topic).
//! Every subscriber therefore knows exactly which publishers it should hear from, and expects
//! every message they sent.
//!
//! A run: connect and subscribe every subscriber (SUBACK received), connect every publisher,
//! start all publishers on a common timeline, wait for them to finish (including their QoS
//! 1/2 acknowledgements), then let the subscribers drain until they have everything expected,
//! or nothing new has arrived for [`IDLE_DRAIN`], or `drain` has passed. Then compare.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use moat::codec::{ProtocolVersion, QoS};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::payload::{Clock, STAMP_LEN};
use crate::publisher::{self, PublisherPlan, PublisherResult};
use crate::report::{Latency, PubSubReport};
use crate::subscriber::{self, SubscriberPlan, SubscriberResult};
use crate::wire::Client;

/// Stop draining once no subscriber has received anything new for this long.
pub const IDLE_DRAIN: Duration = Duration::from_millis(750);

/// A publish/subscribe scenario; see the module doc for the topology.
#[derive(Debug, Clone, Serialize)]
pub struct PubSubConfig {
    /// Free-form label carried into the report.
    pub name: String,
    pub broker: SocketAddr,
    /// 4 (MQTT 3.1.1) or 5.
    pub mqtt: u8,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    /// QoS of both the PUBLISH packets and the subscriptions.
    pub qos: u8,
    /// Payload bytes per message, at least [`STAMP_LEN`].
    pub payload: usize,
    /// Total messages per second over all publishers; `None` for as fast as possible.
    pub rate: Option<f64>,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Left out of rates and latency at the start of the run.
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Most QoS 1/2 messages each publisher keeps unacknowledged.
    pub window: usize,
    /// Write buffer target of an as-fast-as-possible publisher.
    pub batch_bytes: usize,
    /// Longest wait for acknowledgements and deliveries after the last send.
    #[serde(serialize_with = "secs")]
    pub drain: Duration,
    /// Topics are `{topic_prefix}/{index}`.
    pub topic_prefix: String,
    /// Clients use persistent sessions (the durable-storage path of a broker).
    pub persistent: bool,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl PubSubConfig {
    /// A scenario with the defaults: one publisher, one subscriber, QoS 0, 64 bytes, as fast
    /// as possible for 10 s.
    pub fn new(broker: SocketAddr) -> PubSubConfig {
        PubSubConfig {
            name: "pubsub".into(),
            broker,
            mqtt: 4,
            publishers: 1,
            subscribers: 1,
            topics: 1,
            qos: 0,
            payload: 64,
            rate: None,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            window: 64,
            batch_bytes: 16 * 1024,
            drain: Duration::from_secs(10),
            topic_prefix: "moat-bench".into(),
            persistent: false,
        }
    }

    /// `n` publishers → 1 subscriber, one topic.
    pub fn fan_in(broker: SocketAddr, n: usize) -> PubSubConfig {
        PubSubConfig {
            name: format!("fan-in {n}->1"),
            publishers: n,
            ..PubSubConfig::new(broker)
        }
    }

    /// 1 publisher → `n` subscribers, one topic.
    pub fn fan_out(broker: SocketAddr, n: usize) -> PubSubConfig {
        PubSubConfig {
            name: format!("fan-out 1->{n}"),
            subscribers: n,
            ..PubSubConfig::new(broker)
        }
    }

    /// `n` publisher/subscriber pairs, each on its own topic.
    pub fn pairs(broker: SocketAddr, n: usize) -> PubSubConfig {
        PubSubConfig {
            name: format!("pairs {n}x1->1"),
            publishers: n,
            subscribers: n,
            topics: n,
            ..PubSubConfig::new(broker)
        }
    }

    pub fn version(&self) -> ProtocolVersion {
        if self.mqtt == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    fn topic(&self, i: usize) -> String {
        format!("{}/{}", self.topic_prefix, i % self.topics)
    }

    fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.publishers > 0, "at least one publisher is needed");
        anyhow::ensure!(self.subscribers > 0, "at least one subscriber is needed");
        anyhow::ensure!(self.topics > 0, "at least one topic is needed");
        anyhow::ensure!(self.qos <= 2, "QoS is 0, 1 or 2");
        anyhow::ensure!(
            self.payload >= STAMP_LEN,
            "payloads carry a {STAMP_LEN}-byte stamp, so --payload must be at least {STAMP_LEN}"
        );
        anyhow::ensure!(self.rate.is_none_or(|r| r > 0.0), "--rate must be positive");
        anyhow::ensure!(
            self.warmup < self.duration,
            "the warm-up must be shorter than the duration"
        );
        Ok(())
    }
}

/// An identifier telling this run's messages from any other's.
pub fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

/// Runs the scenario and reports what was measured.
pub async fn run(cfg: &PubSubConfig) -> Result<PubSubReport> {
    cfg.validate()?;
    let version = cfg.version();
    let qos = cfg.qos();
    let run = run_id();
    let clock = Clock::new();

    // Subscribers first, so that every route exists before the first message.
    let mut sub_clients = Vec::with_capacity(cfg.subscribers);
    for j in 0..cfg.subscribers {
        let id = format!("mb-{run:08x}-s{j}");
        let mut c = Client::connect_session(cfg.broker, None, version, &id, 0, cfg.persistent)
            .await
            .with_context(|| format!("subscriber {j}"))?;
        c.subscribe(&[cfg.topic(j)], qos)
            .await
            .with_context(|| format!("subscriber {j}"))?;
        sub_clients.push(c);
    }
    let mut pub_clients = Vec::with_capacity(cfg.publishers);
    for i in 0..cfg.publishers {
        let id = format!("mb-{run:08x}-p{i}");
        let c = Client::connect_session(cfg.broker, None, version, &id, 0, cfg.persistent)
            .await
            .with_context(|| format!("publisher {i}"))?;
        pub_clients.push(c);
    }

    let t0 = clock.now() + 20_000_000;
    let end_ns = t0 + cfg.duration.as_nanos() as u64;
    let warm_ns = t0 + cfg.warmup.as_nanos() as u64;
    let per_publisher_rate = cfg.rate.map(|r| r / cfg.publishers as f64);

    let stop = CancellationToken::new();
    let mut progress = Vec::with_capacity(cfg.subscribers);
    let mut subs: Vec<JoinHandle<Result<SubscriberResult>>> = Vec::new();
    for (j, c) in sub_clients.into_iter().enumerate() {
        let p = Arc::new(AtomicU64::new(0));
        progress.push(p.clone());
        let plan = SubscriberPlan {
            id: j as u32,
            run,
            warm_ns,
            end_ns,
        };
        subs.push(tokio::spawn(subscriber::run(
            c,
            plan,
            clock,
            p,
            stop.clone(),
        )));
    }
    let mut pubs: Vec<JoinHandle<Result<PublisherResult>>> = Vec::new();
    for (i, c) in pub_clients.into_iter().enumerate() {
        // Interleave the publishers on the common timeline: the global message k belongs to
        // publisher k % P and is due at t0 + k / rate.
        let offset = cfg.rate.map_or(0, |r| (i as f64 * 1e9 / r) as u64);
        let plan = PublisherPlan {
            id: i as u32,
            run,
            topic: cfg.topic(i),
            qos,
            payload: cfg.payload,
            rate: per_publisher_rate,
            start_ns: t0 + offset,
            end_ns,
            window: cfg.window,
            batch_bytes: cfg.batch_bytes,
            drain: cfg.drain,
        };
        pubs.push(tokio::spawn(publisher::run(c, plan, clock)));
    }

    let mut published = Vec::with_capacity(pubs.len());
    let mut first_error = None;
    for h in pubs {
        match h.await.context("publisher task panicked")? {
            Ok(r) => published.push(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }

    // Expected deliveries per subscriber: everything sent on its topic.
    let expected: Vec<u64> = (0..cfg.subscribers)
        .map(|j| {
            published
                .iter()
                .filter(|p| p.id as usize % cfg.topics == j % cfg.topics)
                .map(|p| p.sent)
                .sum()
        })
        .collect();
    drain(&progress, &expected, cfg.drain).await;
    stop.cancel();

    let mut received = Vec::with_capacity(subs.len());
    for h in subs {
        match h.await.context("subscriber task panicked")? {
            Ok(r) => received.push(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(summarize(cfg, &published, &received))
}

/// Waits until every subscriber has its expected count, nothing new arrives for
/// [`IDLE_DRAIN`], or `limit` has passed.
async fn drain(progress: &[Arc<AtomicU64>], expected: &[u64], limit: Duration) {
    let started = tokio::time::Instant::now();
    let mut last_total = u64::MAX;
    let mut last_change = started;
    loop {
        let counts: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
        if counts.iter().zip(expected).all(|(c, e)| c >= e) {
            return;
        }
        let total: u64 = counts.iter().sum();
        let now = tokio::time::Instant::now();
        if total != last_total {
            last_total = total;
            last_change = now;
        }
        if now - last_change >= IDLE_DRAIN || now - started >= limit {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Adds up the publishers' and subscribers' accounts into a report.
fn summarize(
    cfg: &PubSubConfig,
    published: &[PublisherResult],
    received: &[SubscriberResult],
) -> PubSubReport {
    let mut latency = subscriber::new_histogram();
    let mut expected = 0;
    let mut unique = 0;
    for s in received {
        let _ = latency.add(&s.latency);
        for p in published {
            if p.id as usize % cfg.topics == s.id as usize % cfg.topics {
                expected += p.sent;
                unique += s.trackers.unique_from(p.id).min(p.sent);
            }
        }
    }
    let window_secs = (cfg.duration - cfg.warmup).as_secs_f64();
    let sent: u64 = published.iter().map(|p| p.sent).sum();
    let in_window: u64 = received.iter().map(|s| s.in_window).sum();
    PubSubReport {
        kind: "pubsub".into(),
        config: cfg.clone(),
        sent,
        acked: published.iter().map(|p| p.acked).sum(),
        unacked: published.iter().map(|p| p.unacked).sum(),
        expected,
        delivered: unique,
        lost: expected - unique,
        duplicates: received.iter().map(|s| s.trackers.duplicates()).sum(),
        reordered: received.iter().map(|s| s.trackers.reordered()).sum(),
        foreign: received.iter().map(|s| s.foreign).sum(),
        sent_per_sec: sent as f64 / cfg.duration.as_secs_f64(),
        delivered_per_sec: in_window as f64 / window_secs,
        latency_us: Latency::from_histogram(&latency),
        publisher_max_lag_us: published
            .iter()
            .map(|p| p.max_lag_ns as f64 / 1e3)
            .fold(0.0, f64::max),
        broker_peak_rss_kb: None,
        tag: None,
    }
}
