//! Per-hook counters of one generation: calls, allows, denies, nexts, failures, deadline hits
//! and a latency histogram, for the admin API's `/metrics`.
//!
//! Plain relaxed atomics, like the broker's own metrics: a call already costs a microsecond,
//! and two clock reads and three additions are a few percent of it. The histogram has fixed
//! buckets (Prometheus style, cumulative when rendered) from 1 µs to 1 s, the range between
//! a Rust guest's fastest call and the longest authenticate timeout.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::plugin::Failure;

/// The hooks, as indexes into [`Generation::per_hook`](super::Generation::per_hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    OnConnect,
    Authenticate,
    ContinueAuth,
    AuthorizePublish,
    AuthorizeSubscribe,
    AuthorizeDeliver,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::OnConnect,
        Hook::Authenticate,
        Hook::ContinueAuth,
        Hook::AuthorizePublish,
        Hook::AuthorizeSubscribe,
        Hook::AuthorizeDeliver,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::OnConnect => "on-connect",
            Hook::Authenticate => "authenticate",
            Hook::ContinueAuth => "continue-auth",
            Hook::AuthorizePublish => "authorize-publish",
            Hook::AuthorizeSubscribe => "authorize-subscribe",
            Hook::AuthorizeDeliver => "authorize-deliver",
        }
    }
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is everything
/// above).
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    1, 2, 5, 10, 25, 50, 100, 250, 1_000, 10_000, 100_000, 1_000_000,
];

/// What a call came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    Next,
    /// An authentication challenge (neither yes nor no yet).
    Challenge,
    Failed,
}

/// The counters of one hook.
#[derive(Debug, Default)]
pub struct HookStats {
    pub calls: AtomicU64,
    pub allows: AtomicU64,
    pub denies: AtomicU64,
    pub nexts: AtomicU64,
    /// Traps, memory overruns, malformed answers, instances that could not start.
    pub traps: AtomicU64,
    /// CPU budget or wall-clock timeout.
    pub deadline_hits: AtomicU64,
    /// Calls per latency bucket (not cumulative), then the sum of all latencies in ns.
    pub latency: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    pub latency_sum_ns: AtomicU64,
}

impl HookStats {
    pub(super) fn record(&self, took: Duration, outcome: Outcome, failure: Option<&Failure>) {
        self.calls.fetch_add(1, Relaxed);
        let counter = match (outcome, failure) {
            (Outcome::Allow, _) => Some(&self.allows),
            (Outcome::Deny, _) => Some(&self.denies),
            (Outcome::Next, _) => Some(&self.nexts),
            (Outcome::Challenge, _) => None,
            (Outcome::Failed, Some(Failure::CpuBudget | Failure::Timeout)) => {
                Some(&self.deadline_hits)
            }
            (Outcome::Failed, _) => Some(&self.traps),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Relaxed);
        }
        let ns = took.as_nanos() as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| ns <= b * 1000)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(took.as_nanos() as u64, Relaxed);
    }
}
