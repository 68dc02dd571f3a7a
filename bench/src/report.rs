//! What a run reports, as a human-readable table or as one JSON object per run (`--json`),
//! and the broker memory figures read from `/proc/PID/status`.
//!
//! The JSON objects are what `compare.sh` collects and `moat-bench summarize` reduces to
//! medians; their field names are therefore part of the tool's interface.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::connections::ConnConfig;
use crate::scenario::PubSubConfig;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in nanoseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            samples: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1e3,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    fn row(&self) -> String {
        format!(
            "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.samples
        )
    }
}

/// The result of a publish/subscribe scenario.
#[derive(Debug, Clone, Serialize)]
pub struct PubSubReport {
    /// Always "pubsub".
    pub kind: String,
    /// `--tag`: which broker this was, for `summarize`.
    pub tag: Option<String>,
    pub config: PubSubConfig,
    /// Messages published, over all publishers.
    pub sent: u64,
    /// QoS 1/2 messages the broker acknowledged, and those still unacknowledged at the end.
    pub acked: u64,
    pub unacked: u64,
    /// Deliveries expected: each message times the subscribers of its topic.
    pub expected: u64,
    /// Distinct deliveries received.
    pub delivered: u64,
    /// `expected - delivered`.
    pub lost: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub foreign: u64,
    pub sent_per_sec: f64,
    /// Distinct deliveries received between the end of the warm-up and the end of sending,
    /// per second.
    pub delivered_per_sec: f64,
    /// End-to-end, from the stamped (at fixed rate: intended) send time.
    pub latency_us: Latency,
    /// At fixed rate: how far the worst publisher fell behind its timeline.
    pub publisher_max_lag_us: f64,
    /// The broker's VmHWM after the run, with `--broker-pid`.
    pub broker_peak_rss_kb: Option<u64>,
}

/// The result of the idle connections scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ConnReport {
    /// Always "connections".
    pub kind: String,
    pub tag: Option<String>,
    pub config: ConnConfig,
    /// Connections that got a successful CONNACK, and those that failed (first error shown).
    pub connected: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Seconds from the first connect to the last CONNACK.
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// From starting the TCP connect to receiving CONNACK, per connection.
    pub connect_latency_us: Latency,
    /// With `--broker-pid`: VmRSS before connecting and while holding every connection, the
    /// difference per connection, and VmHWM at the end.
    pub broker_rss_before_kb: Option<u64>,
    pub broker_rss_held_kb: Option<u64>,
    pub broker_bytes_per_connection: Option<f64>,
    pub broker_peak_rss_kb: Option<u64>,
    /// With `--broker-pid`: the broker's CPU time (user + system) spent while the
    /// connections were being opened, per connection. Unlike the rate, this does not depend
    /// on how much of its core the broker got on a shared machine.
    #[serde(default)]
    pub broker_cpu_us_per_connection: Option<f64>,
}

/// The CPU time (user + system) process `pid` has used, from `/proc/PID/stat`.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces, hence the last ')'):
    // utime and stime are the 12th and 13th, in clock ticks.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks_per_sec())
}

#[cfg(target_os = "linux")]
fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(not(target_os = "linux"))]
fn clock_ticks_per_sec() -> f64 {
    100.0
}

/// A field of `/proc/PID/status` in kB (such as `VmRSS` or `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Formats 1234567.8 as "1,234,568".
pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<width$}  {v}");
    }
    out
}

impl PubSubReport {
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let rate = c.rate.map_or("as fast as possible".into(), |r| {
            format!("{} msg/s", thousands(r))
        });
        let mut rows = vec![
            ("scenario", c.name.clone()),
            ("broker", format!("{} ({})", c.broker, mqtt_name(c.mqtt))),
            (
                "shape",
                format!(
                    "{} pub -> {} sub over {} topic(s), QoS {}, {} B payload",
                    c.publishers, c.subscribers, c.topics, c.qos, c.payload
                ),
            ),
            (
                "pace",
                format!(
                    "{rate}, {:.1} s (warm-up {:.1} s)",
                    c.duration.as_secs_f64(),
                    c.warmup.as_secs_f64()
                ),
            ),
            (
                "sent",
                format!(
                    "{} ({} msg/s)",
                    thousands(self.sent as f64),
                    thousands(self.sent_per_sec)
                ),
            ),
            (
                "delivered",
                format!(
                    "{} of {} expected ({} msg/s after warm-up)",
                    thousands(self.delivered as f64),
                    thousands(self.expected as f64),
                    thousands(self.delivered_per_sec)
                ),
            ),
            (
                "lost / dup / reordered",
                format!("{} / {} / {}", self.lost, self.duplicates, self.reordered),
            ),
            ("latency (µs)", self.latency_us.row()),
        ];
        if c.qos > 0 {
            rows.push((
                "acked / unacked",
                format!("{} / {}", self.acked, self.unacked),
            ));
        }
        if c.rate.is_some() {
            rows.push((
                "publisher lag (µs)",
                format!("{:.1} at worst", self.publisher_max_lag_us),
            ));
        }
        if self.foreign > 0 {
            rows.push(("foreign messages", self.foreign.to_string()));
        }
        if let Some(kb) = self.broker_peak_rss_kb {
            rows.push(("broker peak RSS", format!("{} kB", thousands(kb as f64))));
        }
        table(&rows)
    }
}

impl ConnReport {
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut rows = vec![
            ("scenario", c.name.clone()),
            ("broker", format!("{} ({})", c.broker, mqtt_name(c.mqtt))),
            (
                "connections",
                format!(
                    "{} connected, {} failed (concurrency {}, {} source address(es))",
                    self.connected, self.failed, c.concurrency, c.source_ips
                ),
            ),
            (
                "connect rate",
                format!(
                    "{} conn/s ({:.2} s)",
                    thousands(self.connects_per_sec),
                    self.connect_secs
                ),
            ),
            ("connect latency (µs)", self.connect_latency_us.row()),
        ];
        if let Some(e) = &self.first_error {
            rows.push(("first error", e.clone()));
        }
        if let (Some(before), Some(held)) = (self.broker_rss_before_kb, self.broker_rss_held_kb) {
            rows.push((
                "broker RSS",
                format!(
                    "{} kB before, {} kB holding: {:.0} bytes per connection",
                    thousands(before as f64),
                    thousands(held as f64),
                    self.broker_bytes_per_connection.unwrap_or(0.0)
                ),
            ));
        }
        if let Some(kb) = self.broker_peak_rss_kb {
            rows.push(("broker peak RSS", format!("{} kB", thousands(kb as f64))));
        }
        if let Some(us) = self.broker_cpu_us_per_connection {
            rows.push(("broker CPU per connect", format!("{us:.0} µs")));
        }
        table(&rows)
    }
}

fn mqtt_name(mqtt: u8) -> &'static str {
    if mqtt == 5 { "MQTT 5" } else { "MQTT 3.1.1" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn reads_own_status() {
        let kb = proc_status_kb(std::process::id(), "VmRSS");
        assert!(kb.is_some_and(|kb| kb > 0));
    }
}
