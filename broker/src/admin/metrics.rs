//! `/metrics`: the broker's counters and every plugin's, in the Prometheus text format
//! (version 0.0.4).
//!
//! Broker-wide: connections, messages and bytes in and out, drops by cause, retained messages,
//! subscriptions, in-flight and queued messages. Per plugin and hook, labelled with the
//! plugin's name and the generation serving now: calls, allows, denies, nexts, traps, deadline
//! hits, decision-cache hits and a latency histogram. A replaced plugin's counters start again
//! with its new generation (the `generation` label tells the series apart).

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use super::Control;
use crate::metrics::DropCause;
use crate::policy::wasm::hook_stats::{Hook, LATENCY_BOUNDS_US};

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The whole page.
pub fn render(control: &Control) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let m = control.shared().metrics.snapshot();
    let broker: [(&str, &str, &str, u64); 12] = [
        (
            "moat_clients_connected",
            "gauge",
            "Clients connected now.",
            m.clients_connected,
        ),
        (
            "moat_connections_total",
            "counter",
            "Clients that connected since the start.",
            m.clients_total,
        ),
        (
            "moat_connects_refused_total",
            "counter",
            "CONNECTs refused.",
            m.connects_refused,
        ),
        (
            "moat_messages_received_total",
            "counter",
            "PUBLISH packets received from clients.",
            m.publish_received,
        ),
        (
            "moat_messages_sent_total",
            "counter",
            "PUBLISH packets sent to clients.",
            m.publish_sent,
        ),
        (
            "moat_bytes_received_total",
            "counter",
            "Bytes received.",
            m.bytes_received,
        ),
        (
            "moat_bytes_sent_total",
            "counter",
            "Bytes sent.",
            m.bytes_sent,
        ),
        (
            "moat_retained_messages",
            "gauge",
            "Retained messages.",
            m.retained_messages,
        ),
        (
            "moat_subscriptions",
            "gauge",
            "Subscriptions.",
            m.subscriptions,
        ),
        (
            "moat_inflight_messages",
            "gauge",
            "Outbound QoS 1/2 messages awaiting acknowledgement.",
            m.inflight,
        ),
        (
            "moat_queued_messages",
            "gauge",
            "Messages queued for clients.",
            m.queued_messages,
        ),
        (
            "moat_plugins",
            "gauge",
            "Plugins in the chain.",
            control.chain().slots().len() as u64,
        ),
    ];
    for (name, kind, help, value) in broker {
        single(&mut out, name, kind, help, value);
    }
    family(
        &mut out,
        "moat_messages_dropped_total",
        "counter",
        "Messages not delivered to a subscriber that should have had them, by cause.",
    );
    for cause in DropCause::ALL {
        let _ = writeln!(
            out,
            "moat_messages_dropped_total{{cause=\"{cause:?}\"}} {}",
            m.dropped_by(cause)
        );
    }

    let slots = control.chain().slots();
    let generations: Vec<_> = slots.iter().map(|s| (s.clone(), s.generation())).collect();
    family(
        &mut out,
        "moat_plugin_info",
        "gauge",
        "The generation serving, by plugin.",
    );
    for (slot, g) in &generations {
        let _ = writeln!(
            out,
            "moat_plugin_info{{plugin=\"{}\",generation=\"{}\",sha256=\"{}\"}} 1",
            slot.name,
            g.number,
            crate::policy::wasm::hex(&g.hash)
        );
    }
    let counters: [(&str, &str); 6] = [
        ("calls", "Calls into the plugin."),
        ("allows", "Calls answered allow."),
        ("denies", "Calls answered deny."),
        ("nexts", "Calls answered next."),
        (
            "traps",
            "Calls that trapped, overran memory or answered malformed (fail closed).",
        ),
        (
            "deadline_hits",
            "Calls stopped by the CPU budget or the timeout (fail closed).",
        ),
    ];
    for (i, (what, help)) in counters.iter().enumerate() {
        let name = format!("moat_plugin_{what}_total");
        family(&mut out, &name, "counter", help);
        for (slot, g) in &generations {
            for hook in Hook::ALL {
                let s = &g.per_hook[hook as usize];
                let value = [
                    &s.calls,
                    &s.allows,
                    &s.denies,
                    &s.nexts,
                    &s.traps,
                    &s.deadline_hits,
                ][i]
                    .load(Relaxed);
                let _ = writeln!(
                    out,
                    "{name}{{plugin=\"{}\",generation=\"{}\",hook=\"{}\"}} {value}",
                    slot.name,
                    g.number,
                    hook.name()
                );
            }
        }
    }
    family(
        &mut out,
        "moat_plugin_cache_hits_total",
        "counter",
        "Decisions sessions reused instead of calling the plugin (by plugin, since it loaded).",
    );
    for (slot, g) in &generations {
        for (i, hook) in [Hook::AuthorizePublish, Hook::AuthorizeDeliver]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "moat_plugin_cache_hits_total{{plugin=\"{}\",generation=\"{}\",hook=\"{}\"}} {}",
                slot.name,
                g.number,
                hook.name(),
                slot.cache_hits[i].load(Relaxed)
            );
        }
    }
    let name = "moat_plugin_call_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time of a call into the plugin, in seconds.",
    );
    for (slot, g) in &generations {
        for hook in Hook::ALL {
            let s = &g.per_hook[hook as usize];
            let labels = format!(
                "plugin=\"{}\",generation=\"{}\",hook=\"{}\"",
                slot.name,
                g.number,
                hook.name()
            );
            let mut cumulative = 0;
            for (bucket, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
                cumulative += s.latency[bucket].load(Relaxed);
                let le = *bound as f64 / 1e6;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            cumulative += s.latency[LATENCY_BOUNDS_US.len()].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = s.latency_sum_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
    family(
        &mut out,
        "moat_plugin_instances",
        "gauge",
        "Instances created, by plugin.",
    );
    for (slot, g) in &generations {
        let _ = writeln!(
            out,
            "moat_plugin_instances{{plugin=\"{}\",generation=\"{}\"}} {}",
            slot.name,
            g.number,
            g.stats.instances_created.load(Relaxed)
        );
    }
    out
}
