//! The `$SYS/broker/...` status topics: their names and payloads, computed from a
//! [`MetricsSnapshot`].
//!
//! Names follow Mosquitto's (mosquitto(8), "BROKER STATUS"), so existing dashboards and
//! `mosquitto_sub -t '$SYS/#'` habits carry over; payloads are plain decimal text, like
//! Mosquitto's. This module only renders: the broker's `$SYS` task takes a snapshot every
//! `sys.interval`, feeds it to [`LoadAverages::tick`], and publishes [`sys_topics`] plus
//! [`LoadAverages::topics`] as retained messages (Mosquitto publishes a value only when it
//! changed since the last interval; the `$SYS` task may do the same by comparing payloads).
//!
//! The policy adds its own topics under [`PLUGIN_TOPICS`]; [`PluginTopics`] clears those that
//! stop being published (an unloaded plugin's) at the next interval.
//!
//! Not published: Mosquitto's heap sizes, build timestamp, store byte counts and the
//! deprecated `clients/active` / `clients/inactive` aliases. Added by moat: per-cause drop
//! counts under `$SYS/broker/publish/messages/dropped/<cause>`, `$SYS/broker/clients/slow`
//! (how often a subscriber was marked slow; see `session::backpressure`), and how often each
//! limit turned something away under `$SYS/broker/limits/<name>`.

use std::time::Duration;

use crate::metrics::{DropCause, Limit, MetricsSnapshot};

/// The retained status topics and their payloads. `version` is the broker's version number
/// (`env!("CARGO_PKG_VERSION")`), published as `moat <version>`; `uptime` is the time since
/// the broker started, published in whole seconds as `N seconds`.
pub fn sys_topics(
    snapshot: &MetricsSnapshot,
    version: &str,
    uptime: Duration,
) -> Vec<(&'static str, String)> {
    let s = snapshot;
    let n = |v: u64| v.to_string();
    let mut topics = vec![
        ("$SYS/broker/version", format!("moat {version}")),
        (
            "$SYS/broker/uptime",
            format!("{} seconds", uptime.as_secs()),
        ),
        ("$SYS/broker/clients/connected", n(s.clients_connected)),
        (
            "$SYS/broker/clients/disconnected",
            n(s.clients_disconnected),
        ),
        ("$SYS/broker/clients/total", n(s.clients_total)),
        ("$SYS/broker/clients/maximum", n(s.clients_maximum)),
        ("$SYS/broker/clients/expired", n(s.clients_expired)),
        ("$SYS/broker/clients/slow", n(s.subscribers_marked_slow)),
        ("$SYS/broker/messages/received", n(s.messages_received)),
        ("$SYS/broker/messages/sent", n(s.messages_sent)),
        ("$SYS/broker/messages/stored", n(s.messages_stored())),
        ("$SYS/broker/messages/inflight", n(s.inflight)),
        (
            "$SYS/broker/publish/messages/received",
            n(s.publish_received),
        ),
        ("$SYS/broker/publish/messages/sent", n(s.publish_sent)),
        (
            "$SYS/broker/publish/messages/dropped",
            n(s.publish_dropped()),
        ),
        (
            "$SYS/broker/publish/bytes/received",
            n(s.publish_bytes_received),
        ),
        ("$SYS/broker/publish/bytes/sent", n(s.publish_bytes_sent)),
        ("$SYS/broker/bytes/received", n(s.bytes_received)),
        ("$SYS/broker/bytes/sent", n(s.bytes_sent)),
        (
            "$SYS/broker/retained messages/count",
            n(s.retained_messages),
        ),
        ("$SYS/broker/subscriptions/count", n(s.subscriptions)),
        ("$SYS/broker/store/messages/count", n(s.messages_stored())),
    ];
    topics.extend(
        Limit::ALL
            .iter()
            .map(|&limit| (limit_topic(limit), n(s.limited(limit)))),
    );
    topics.extend(
        DropCause::ALL
            .iter()
            .map(|&cause| (drop_topic(cause), n(s.dropped_by(cause)))),
    );
    topics
}

/// The moat-specific topic counting what one limit turned away.
fn limit_topic(limit: Limit) -> &'static str {
    match limit {
        Limit::Connections => "$SYS/broker/limits/connections",
        Limit::ListenerConnections => "$SYS/broker/limits/listener_connections",
        Limit::IpConnections => "$SYS/broker/limits/ip_connections",
        Limit::IpConnectionRate => "$SYS/broker/limits/ip_connection_rate",
        Limit::ConnectTimeout => "$SYS/broker/limits/connect_timeout",
        Limit::TlsHandshake => "$SYS/broker/limits/tls_handshake",
        Limit::WsHandshake => "$SYS/broker/limits/ws_handshake",
        Limit::WsOrigin => "$SYS/broker/limits/ws_origin",
        Limit::ProxyHeader => "$SYS/broker/limits/proxy_header",
        Limit::PacketTooLarge => "$SYS/broker/limits/packet_too_large",
        Limit::Subscriptions => "$SYS/broker/limits/subscriptions",
        Limit::TopicLimits => "$SYS/broker/limits/topic_limits",
        Limit::PublishRate => "$SYS/broker/limits/publish_rate",
        Limit::Retained => "$SYS/broker/limits/retained",
        Limit::PersistentSessions => "$SYS/broker/limits/persistent_sessions",
        Limit::AuthFailureDelay => "$SYS/broker/limits/auth_failure_delay",
    }
}

/// The moat-specific topic counting drops for one cause.
fn drop_topic(cause: DropCause) -> &'static str {
    match cause {
        DropCause::QueueFull => "$SYS/broker/publish/messages/dropped/queue-full",
        DropCause::Expired => "$SYS/broker/publish/messages/dropped/expired",
        DropCause::TooLargeForClient => "$SYS/broker/publish/messages/dropped/too-large",
        DropCause::NotAuthorized => "$SYS/broker/publish/messages/dropped/not-authorized",
    }
}

/// The 1, 5 and 15 minute topics under one load topic prefix.
macro_rules! windows {
    ($prefix:literal) => {
        [
            concat!($prefix, "/1min"),
            concat!($prefix, "/5min"),
            concat!($prefix, "/15min"),
        ]
    };
}

/// The averaging periods of the three windows, in seconds.
const PERIODS: [f64; 3] = [60.0, 300.0, 900.0];

/// One load series: the topic names of its three windows, and the counter it follows.
type Series = ([&'static str; 3], fn(&MetricsSnapshot) -> u64);

/// The load series.
const SERIES: [Series; 9] = [
    (windows!("$SYS/broker/load/messages/received"), |s| {
        s.messages_received
    }),
    (windows!("$SYS/broker/load/messages/sent"), |s| {
        s.messages_sent
    }),
    (windows!("$SYS/broker/load/publish/received"), |s| {
        s.publish_received
    }),
    (windows!("$SYS/broker/load/publish/sent"), |s| {
        s.publish_sent
    }),
    (windows!("$SYS/broker/load/publish/dropped"), |s| {
        s.publish_dropped()
    }),
    (windows!("$SYS/broker/load/bytes/received"), |s| {
        s.bytes_received
    }),
    (windows!("$SYS/broker/load/bytes/sent"), |s| s.bytes_sent),
    // Connection attempts: CONNECTs accepted or refused.
    (windows!("$SYS/broker/load/connections"), |s| {
        s.clients_total + s.connects_refused
    }),
    (windows!("$SYS/broker/load/sockets"), |s| s.sockets_accepted),
];

/// Exponentially decaying averages of per-minute rates, as Mosquitto computes its
/// `$SYS/broker/load/...` topics: at each tick, with `dt` seconds since the last one and
/// `rate` = the counter's increase × 60 / `dt`, each window of period `T` becomes
/// `rate + exp(-dt / T) × (previous - rate)`.
#[derive(Debug, Clone, Default)]
pub struct LoadAverages {
    /// The counters at the last tick (all zero before the first: the broker starts at zero).
    last: [u64; SERIES.len()],
    /// The averages, per series and window.
    averages: [[f64; 3]; SERIES.len()],
}

impl LoadAverages {
    /// All averages zero, counting from a broker start with all counters zero.
    pub fn new() -> LoadAverages {
        LoadAverages::default()
    }

    /// Folds in the counters of `snapshot`, taken `elapsed` after the previous tick (or after
    /// start, for the first). A zero `elapsed` is ignored.
    pub fn tick(&mut self, snapshot: &MetricsSnapshot, elapsed: Duration) {
        let dt = elapsed.as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        for (i, (_, counter)) in SERIES.iter().enumerate() {
            let now = counter(snapshot);
            let rate = now.saturating_sub(self.last[i]) as f64 * 60.0 / dt;
            self.last[i] = now;
            for (average, period) in self.averages[i].iter_mut().zip(PERIODS) {
                *average = rate + (-dt / period).exp() * (*average - rate);
            }
        }
    }

    /// The load topics and their payloads (per-minute rates, two decimals, as Mosquitto).
    pub fn topics(&self) -> Vec<(&'static str, String)> {
        SERIES
            .iter()
            .zip(&self.averages)
            .flat_map(|((names, _), averages)| {
                names
                    .iter()
                    .zip(averages)
                    .map(|(&name, avg)| (name, format!("{avg:.2}")))
            })
            .collect()
    }
}

/// Where the policy's own status topics live (`Policy::status`: per plugin, its generation,
/// hash and counters).
pub const PLUGIN_TOPICS: &str = "$SYS/broker/plugins/";

/// The policy's status topics published at the last tick. A topic missing from the next one
/// (its plugin was unloaded, or a counter the new generation no longer keeps) gets its
/// retained message cleared, so that nobody reads the state of a plugin that no longer runs.
/// Before the first tick it holds what the store brought back under [`PLUGIN_TOPICS`] (a
/// plugin of the previous run may be gone from the configuration).
#[derive(Debug, Clone, Default)]
pub struct PluginTopics {
    last: std::collections::HashSet<String>,
}

impl PluginTopics {
    /// Starts from the topics retained now under [`PLUGIN_TOPICS`].
    pub fn new(retained: impl IntoIterator<Item = String>) -> PluginTopics {
        PluginTopics {
            last: retained.into_iter().collect(),
        }
    }

    /// Records this tick's topics and returns those of the last tick that are gone.
    pub fn gone(&mut self, now: &[(String, String)]) -> Vec<String> {
        let current: std::collections::HashSet<String> =
            now.iter().map(|(t, _)| t.clone()).collect();
        let mut gone: Vec<String> = self.last.difference(&current).cloned().collect();
        gone.sort();
        self.last = current;
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_topics_no_longer_published_are_reported_gone_once() {
        let t = |v: &[&str]| -> Vec<(String, String)> {
            v.iter().map(|t| (t.to_string(), "1".into())).collect()
        };
        let mut topics = PluginTopics::new(["$SYS/broker/plugins/old/calls".to_string()]);
        assert_eq!(
            topics.gone(&t(&[
                "$SYS/broker/plugins/a/calls",
                "$SYS/broker/plugins/b/calls"
            ])),
            ["$SYS/broker/plugins/old/calls"]
        );
        assert_eq!(
            topics.gone(&t(&["$SYS/broker/plugins/a/calls"])),
            ["$SYS/broker/plugins/b/calls"]
        );
        assert!(topics.gone(&t(&["$SYS/broker/plugins/a/calls"])).is_empty());
    }

    fn value<'a>(topics: &'a [(&'static str, String)], name: &str) -> &'a str {
        topics
            .iter()
            .find(|(t, _)| *t == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
            .as_str()
    }

    #[test]
    fn names_follow_mosquitto() {
        let topics = sys_topics(&MetricsSnapshot::default(), "0.1.0", Duration::ZERO);
        let names: Vec<&str> = topics.iter().map(|(t, _)| *t).collect();
        for name in [
            "$SYS/broker/version",
            "$SYS/broker/uptime",
            "$SYS/broker/clients/connected",
            "$SYS/broker/clients/disconnected",
            "$SYS/broker/clients/total",
            "$SYS/broker/clients/maximum",
            "$SYS/broker/clients/expired",
            "$SYS/broker/messages/received",
            "$SYS/broker/messages/sent",
            "$SYS/broker/messages/stored",
            "$SYS/broker/messages/inflight",
            "$SYS/broker/publish/messages/received",
            "$SYS/broker/publish/messages/sent",
            "$SYS/broker/publish/messages/dropped",
            "$SYS/broker/publish/bytes/received",
            "$SYS/broker/publish/bytes/sent",
            "$SYS/broker/bytes/received",
            "$SYS/broker/bytes/sent",
            "$SYS/broker/retained messages/count",
            "$SYS/broker/subscriptions/count",
            "$SYS/broker/store/messages/count",
        ] {
            assert!(names.contains(&name), "{name}");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "no topic twice");
        for name in &names {
            assert!(
                name.starts_with("$SYS/broker/") && !name.contains(['+', '#']),
                "{name}"
            );
        }
    }

    #[test]
    fn values_render() {
        let s = MetricsSnapshot {
            clients_connected: 3,
            clients_total: 10,
            clients_maximum: 5,
            clients_disconnected: 2,
            clients_expired: 1,
            subscribers_marked_slow: 9,
            messages_received: 100,
            messages_sent: 90,
            bytes_received: 4096,
            bytes_sent: 2048,
            publish_received: 40,
            publish_sent: 30,
            publish_bytes_received: 400,
            publish_bytes_sent: 300,
            dropped: [4, 3, 2, 1],
            retained_messages: 7,
            subscriptions: 12,
            inflight: 6,
            queued_messages: 8,
            ..MetricsSnapshot::default()
        };
        let t = sys_topics(&s, "0.1.0", Duration::from_millis(61_900));
        assert_eq!(value(&t, "$SYS/broker/version"), "moat 0.1.0");
        assert_eq!(value(&t, "$SYS/broker/uptime"), "61 seconds");
        assert_eq!(value(&t, "$SYS/broker/clients/connected"), "3");
        assert_eq!(value(&t, "$SYS/broker/clients/disconnected"), "2");
        assert_eq!(value(&t, "$SYS/broker/clients/total"), "10");
        assert_eq!(value(&t, "$SYS/broker/clients/maximum"), "5");
        assert_eq!(value(&t, "$SYS/broker/clients/expired"), "1");
        assert_eq!(value(&t, "$SYS/broker/clients/slow"), "9");
        assert_eq!(value(&t, "$SYS/broker/messages/received"), "100");
        assert_eq!(value(&t, "$SYS/broker/messages/sent"), "90");
        assert_eq!(value(&t, "$SYS/broker/messages/stored"), "15");
        assert_eq!(value(&t, "$SYS/broker/messages/inflight"), "6");
        assert_eq!(value(&t, "$SYS/broker/publish/messages/received"), "40");
        assert_eq!(value(&t, "$SYS/broker/publish/messages/sent"), "30");
        assert_eq!(value(&t, "$SYS/broker/publish/messages/dropped"), "10");
        assert_eq!(
            value(&t, "$SYS/broker/publish/messages/dropped/queue-full"),
            "4"
        );
        assert_eq!(
            value(&t, "$SYS/broker/publish/messages/dropped/not-authorized"),
            "1"
        );
        assert_eq!(value(&t, "$SYS/broker/publish/bytes/received"), "400");
        assert_eq!(value(&t, "$SYS/broker/publish/bytes/sent"), "300");
        assert_eq!(value(&t, "$SYS/broker/bytes/received"), "4096");
        assert_eq!(value(&t, "$SYS/broker/bytes/sent"), "2048");
        assert_eq!(value(&t, "$SYS/broker/retained messages/count"), "7");
        assert_eq!(value(&t, "$SYS/broker/subscriptions/count"), "12");
        assert_eq!(value(&t, "$SYS/broker/store/messages/count"), "15");
    }

    #[test]
    fn load_topic_names() {
        let topics = LoadAverages::new().topics();
        assert_eq!(topics.len(), 27);
        for name in [
            "$SYS/broker/load/messages/received/1min",
            "$SYS/broker/load/messages/received/5min",
            "$SYS/broker/load/messages/received/15min",
            "$SYS/broker/load/messages/sent/15min",
            "$SYS/broker/load/publish/received/1min",
            "$SYS/broker/load/publish/sent/5min",
            "$SYS/broker/load/publish/dropped/1min",
            "$SYS/broker/load/bytes/received/1min",
            "$SYS/broker/load/bytes/sent/15min",
            "$SYS/broker/load/connections/1min",
            "$SYS/broker/load/sockets/5min",
        ] {
            assert_eq!(value(&topics, name), "0.00", "{name}");
        }
    }

    #[test]
    fn load_follows_mosquittos_formula() {
        let mut load = LoadAverages::new();
        // 120 messages in the first 60 s: 120 per minute.
        let mut s = MetricsSnapshot {
            messages_received: 120,
            ..MetricsSnapshot::default()
        };
        load.tick(&s, Duration::from_secs(60));
        let t = load.topics();
        let one = 120.0 * (1.0 - (-1.0f64).exp());
        let five = 120.0 * (1.0 - (-60.0f64 / 300.0).exp());
        assert_eq!(
            value(&t, "$SYS/broker/load/messages/received/1min"),
            format!("{one:.2}")
        );
        assert_eq!(
            value(&t, "$SYS/broker/load/messages/received/5min"),
            format!("{five:.2}")
        );
        assert_eq!(value(&t, "$SYS/broker/load/messages/sent/1min"), "0.00");

        // A steady 30 per 10 s (180 per minute) converges on 180.
        for _ in 0..1000 {
            s.messages_received += 30;
            load.tick(&s, Duration::from_secs(10));
        }
        let t = load.topics();
        for window in ["1min", "5min", "15min"] {
            let name = format!("$SYS/broker/load/messages/received/{window}");
            assert_eq!(value(&t, &name), "180.00");
        }

        // No time elapsed: nothing changes.
        let before = load.topics();
        s.messages_received += 1_000_000;
        load.tick(&s, Duration::ZERO);
        assert_eq!(load.topics(), before);
    }
}
