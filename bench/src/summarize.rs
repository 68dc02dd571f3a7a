//! `moat-bench summarize`: reduces the JSON reports of several runs to one Markdown table of
//! medians per scenario and broker, with the ratio of each broker to the baseline.
//!
//! Input is JSON lines as printed by `--json` (one report per line; other lines are skipped),
//! each carrying a `tag` naming the broker. Runs are grouped by scenario name and tag. Which
//! metrics a scenario shows depends on its kind: delivered messages per second for
//! as-fast-as-possible runs, that and latency percentiles for fixed-rate runs, connect rate
//! and memory per connection for the connections scenario, and loss (the worst round, not the
//! median: one lossy round matters) for every publish/subscribe run. Fixed-rate runs also
//! show how far the publishers fell behind their timeline: against a broker that keeps up,
//! a large value means the generator itself stalled and that round's tail is suspect.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::Value;

/// How a metric is reduced over rounds.
#[derive(Clone, Copy)]
enum Reduce {
    Median,
    Max,
}

/// One row kind: label, JSON pointer into the report, reduction, decimals.
type Metric = (&'static str, &'static str, Reduce, usize);

const THROUGHPUT: &[Metric] = &[
    (
        "delivered msg/s (higher is better)",
        "/delivered_per_sec",
        Reduce::Median,
        0,
    ),
    ("lost messages, worst round", "/lost", Reduce::Max, 0),
];
const LATENCY: &[Metric] = &[
    (
        "delivered msg/s (higher is better)",
        "/delivered_per_sec",
        Reduce::Median,
        0,
    ),
    (
        "latency p50 µs (lower is better)",
        "/latency_us/p50",
        Reduce::Median,
        1,
    ),
    (
        "latency p99 µs (lower is better)",
        "/latency_us/p99",
        Reduce::Median,
        1,
    ),
    (
        "latency p99.9 µs (lower is better)",
        "/latency_us/p999",
        Reduce::Median,
        1,
    ),
    ("lost messages, worst round", "/lost", Reduce::Max, 0),
    // Not the broker's: how late the generator itself ran. Large values (the generator was
    // descheduled) make that round's tail latency suspect.
    (
        "publisher behind schedule µs, worst round",
        "/publisher_max_lag_us",
        Reduce::Max,
        0,
    ),
];
const CONNECTIONS: &[Metric] = &[
    ("connections held", "/connected", Reduce::Median, 0),
    (
        "connects/s (higher is better)",
        "/connects_per_sec",
        Reduce::Median,
        0,
    ),
    (
        "connect latency p99 µs",
        "/connect_latency_us/p99",
        Reduce::Median,
        0,
    ),
    (
        "broker bytes per idle connection (lower is better)",
        "/broker_bytes_per_connection",
        Reduce::Median,
        0,
    ),
    (
        "broker CPU µs per connect (lower is better)",
        "/broker_cpu_us_per_connection",
        Reduce::Median,
        0,
    ),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt(v: f64, decimals: usize) -> String {
    if decimals == 0 {
        crate::report::thousands(v)
    } else {
        format!("{v:.decimals$}")
    }
}

/// A ratio with two decimals, or its order of magnitude when that would round to 0.00.
fn ratio(r: f64) -> String {
    if r == 0.0 || r >= 0.005 {
        format!("{r:.2}")
    } else {
        format!("{r:.0e}")
    }
}

/// The Markdown table for the reports in `text`. `baseline` is the tag ratios are taken
/// against (default: the first tag seen).
pub fn summarize(text: &str, baseline: Option<&str>) -> Result<String> {
    let reports: Vec<Value> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if reports.is_empty() {
        bail!("no JSON reports found");
    }
    let mut tags: Vec<String> = Vec::new();
    let mut scenarios: Vec<(String, &Value)> = Vec::new();
    // (scenario, tag) -> reports
    let mut runs: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for r in &reports {
        let tag = r["tag"].as_str().unwrap_or("untagged").to_string();
        let name = r["config"]["name"].as_str().unwrap_or("?").to_string();
        if !tags.contains(&tag) {
            tags.push(tag.clone());
        }
        if !scenarios.iter().any(|(n, _)| *n == name) {
            scenarios.push((name.clone(), r));
        }
        runs.entry((name, tag)).or_default().push(r);
    }
    let base = baseline
        .map(str::to_string)
        .unwrap_or_else(|| tags[0].clone());
    if !tags.contains(&base) {
        bail!("baseline tag {base:?} not among {tags:?}");
    }
    let others: Vec<&String> = tags.iter().filter(|t| **t != base).collect();

    let mut out = String::new();
    let mut header = format!("| scenario | metric | {base} |");
    let mut rule = String::from("|---|---|---:|");
    for t in &others {
        let _ = write!(header, " {t} | {t}/{base} |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(out, "{header}\n{rule}");

    for (name, first) in &scenarios {
        let metrics = match first["kind"].as_str() {
            Some("connections") => CONNECTIONS,
            _ if first["config"]["rate"].is_number() => LATENCY,
            _ => THROUGHPUT,
        };
        for &(label, pointer, reduce, decimals) in metrics {
            let value = |tag: &String| -> Option<(f64, usize)> {
                let rs = runs.get(&(name.clone(), tag.clone()))?;
                let vals: Vec<f64> = rs
                    .iter()
                    .filter_map(|r| r.pointer(pointer)?.as_f64())
                    .collect();
                if vals.is_empty() {
                    return None;
                }
                let n = vals.len();
                Some(match reduce {
                    Reduce::Median => (median(vals), n),
                    Reduce::Max => (vals.into_iter().fold(f64::MIN, f64::max), n),
                })
            };
            let b = value(&base);
            let cell = |v: Option<(f64, usize)>| {
                v.map_or("n/a".to_string(), |(v, n)| {
                    format!("{} ({n})", fmt(v, decimals))
                })
            };
            let mut row = format!("| {name} | {label} | {} |", cell(b));
            for t in &others {
                let o = value(t);
                let ratio = match (o, b) {
                    (Some((o, _)), Some((b, _))) if b != 0.0 => ratio(o / b),
                    _ => "–".to_string(),
                };
                let _ = write!(row, " {} | {ratio} |", cell(o));
            }
            let _ = writeln!(out, "{row}");
        }
    }

    // Peak RSS: the largest VmHWM any run of each broker saw.
    let peak = |tag: &String| {
        reports
            .iter()
            .filter(|r| r["tag"].as_str() == Some(tag.as_str()))
            .filter_map(|r| r["broker_peak_rss_kb"].as_f64())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let b = peak(&base);
    let mut row = format!(
        "| all | broker peak RSS kB, largest run (lower is better) | {} |",
        b.map_or("n/a".into(), |v| fmt(v, 0))
    );
    for t in &others {
        let o = peak(t);
        let ratio = match (o, b) {
            (Some(o), Some(b)) if b != 0.0 => ratio(o / b),
            _ => "–".to_string(),
        };
        let _ = write!(
            row,
            " {} | {ratio} |",
            o.map_or("n/a".into(), |v| fmt(v, 0))
        );
    }
    let _ = writeln!(out, "{row}");
    let _ = writeln!(
        out,
        "\nCells are medians over rounds (rounds in parentheses); loss is the worst round."
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let line = |tag: &str, rate: f64, lost: u64| {
            format!(
                r#"{{"kind":"pubsub","tag":"{tag}","config":{{"name":"s","rate":null}},"delivered_per_sec":{rate},"lost":{lost},"broker_peak_rss_kb":100}}"#
            )
        };
        let text = [
            line("a", 10.0, 0),
            line("b", 30.0, 0),
            line("a", 20.0, 5),
            line("b", 40.0, 0),
            line("a", 30.0, 0),
            line("b", 50.0, 0),
        ]
        .join("\n");
        let table = summarize(&text, Some("a")).unwrap();
        assert!(
            table.contains("| s | delivered msg/s (higher is better) | 20 (3) | 40 (3) | 2.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| s | lost messages, worst round | 5 (3) | 0 (3) | 0.00 |"),
            "{table}"
        );
    }
}
