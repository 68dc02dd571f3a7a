//! The connections scenario: open N MQTT connections, hold them idle, report the connect rate
//! and (given the broker's pid) the broker's memory per connection.
//!
//! One local address has about 28k ephemeral ports (32768-60999), so connections are spread
//! round-robin over `source_ips` loopback addresses 127.0.0.2, 127.0.0.3, ... by binding each
//! socket before connecting (the whole 127/8 block is loopback on Linux). At most
//! `concurrency` handshakes are in progress at once; the rate is connections over the time from
//! the first connect to the last CONNACK. The held connections use keep alive 0, so neither
//! side sends anything while they are held.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use moat::codec::ProtocolVersion;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::report::{ConnReport, Latency, proc_cpu_secs, proc_status_kb};
use crate::scenario::run_id;
use crate::subscriber::new_histogram;
use crate::wire::Client;

/// Connections per source address by default: far inside one address's ~28k ephemeral ports,
/// so that a port is rarely tried twice.
pub const PER_SOURCE_IP: usize = 5_000;

/// The idle connections scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ConnConfig {
    pub name: String,
    pub broker: SocketAddr,
    pub mqtt: u8,
    pub count: usize,
    /// Handshakes in progress at once.
    pub concurrency: usize,
    /// Loopback source addresses to spread over, from `source_base`; 0 = let the kernel choose.
    pub source_ips: usize,
    pub source_base: Ipv4Addr,
    /// How long to hold the connections once all are up.
    #[serde(serialize_with = "secs")]
    pub hold: Duration,
    /// Created once every connection is up (and the broker's RSS sampled), for scripts.
    pub ready_file: Option<PathBuf>,
    /// The broker's pid, to read its memory from `/proc`.
    pub broker_pid: Option<u32>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ConnConfig {
    pub fn new(broker: SocketAddr, count: usize) -> ConnConfig {
        let source_ips = if broker.ip().is_loopback() && broker.is_ipv4() {
            count.div_ceil(PER_SOURCE_IP).max(1)
        } else {
            0
        };
        ConnConfig {
            name: format!("connections {count}"),
            broker,
            mqtt: 4,
            count,
            concurrency: 64,
            source_ips,
            source_base: Ipv4Addr::new(127, 0, 0, 2),
            hold: Duration::from_secs(1),
            ready_file: None,
            broker_pid: None,
        }
    }

    fn source(&self, i: usize) -> Option<IpAddr> {
        if self.source_ips == 0 {
            return None;
        }
        let base = u32::from(self.source_base);
        Some(IpAddr::V4(Ipv4Addr::from(
            base + (i % self.source_ips) as u32,
        )))
    }
}

/// Opens, holds and closes the connections.
pub async fn run(cfg: &ConnConfig) -> Result<ConnReport> {
    anyhow::ensure!(cfg.concurrency > 0, "--concurrency must be at least 1");
    let version = if cfg.mqtt == 5 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let run = run_id();
    let rss = |field| cfg.broker_pid.and_then(|pid| proc_status_kb(pid, field));
    let rss_before = rss("VmRSS");
    let cpu = || cfg.broker_pid.and_then(proc_cpu_secs);
    let cpu_before = cpu();

    let mut held: Vec<crate::transport::Stream> = Vec::with_capacity(cfg.count);
    let mut latency = new_histogram();
    let mut failed = 0u64;
    let mut first_error = None;
    let mut tasks = JoinSet::new();
    let started = Instant::now();
    let mut next = 0;
    loop {
        while next < cfg.count && tasks.len() < cfg.concurrency {
            let (broker, source) = (cfg.broker, cfg.source(next));
            let id = format!("mb-{run:08x}-c{next}");
            tasks.spawn(async move {
                let t = Instant::now();
                let c = Client::connect(broker, source, version, &id, 0).await;
                (c, t.elapsed())
            });
            next += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined? {
            (Ok(client), took) => {
                let _ = latency.record(took.as_nanos() as u64);
                // Only the socket is kept: the buffers were for the handshake.
                held.push(client.stream);
            }
            (Err(e), _) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu_after = cpu();

    // Let the broker finish its side of the last handshakes before sampling its memory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_held = rss("VmRSS");
    if let Some(path) = &cfg.ready_file {
        std::fs::write(path, format!("{}\n", held.len()))?;
    }
    tokio::time::sleep(cfg.hold).await;
    let peak = rss("VmHWM");
    let connected = held.len() as u64;
    // Close with a reset (zero linger): an orderly close would leave every client port in
    // TIME_WAIT for a minute, and a next run from the same addresses would find the port
    // range full of them.
    for stream in held {
        let _ = stream.tcp().set_zero_linger();
    }

    let per_connection = match (rss_before, rss_held) {
        (Some(b), Some(h)) if connected > 0 => {
            Some((h as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    Ok(ConnReport {
        kind: "connections".into(),
        tag: None,
        config: cfg.clone(),
        connected,
        failed,
        first_error,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs.max(1e-9),
        connect_latency_us: Latency::from_histogram(&latency),
        broker_rss_before_kb: rss_before,
        broker_rss_held_kb: rss_held,
        broker_bytes_per_connection: per_connection,
        broker_peak_rss_kb: peak,
        broker_cpu_us_per_connection: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if connected > 0 => Some((a - b) * 1e6 / connected as f64),
            _ => None,
        },
    })
}
