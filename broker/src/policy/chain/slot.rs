//! One position in the chain: the plugin's current generation (behind an `ArcSwap`, so a
//! replacement is one atomic store), the epoch that makes its cached decisions stale, and a
//! failure log limited to one line a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::OnFailure;
use crate::policy::wasm::{Failure, Generation, Hooks};

/// One position in the chain.
pub struct Slot {
    pub name: Arc<str>,
    /// The hooks the broker calls it for.
    pub hooks: Hooks,
    /// The listeners it decides for (`None`: all).
    pub listeners: Option<Vec<Arc<str>>>,
    pub on_failure: OnFailure,
    pub(super) current: ArcSwap<Generation>,
    /// Moves when the plugin invalidates its decisions or is replaced.
    pub epoch: Arc<AtomicU64>,
    /// When a failure was last logged, and how many were not since.
    pub(super) failure_log: Mutex<(Option<Instant>, u64)>,
}

impl Slot {
    pub(super) fn serves(&self, hook: Hooks, listener: &str) -> bool {
        self.hooks.contains(hook)
            && self
                .listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| &**l == listener))
    }

    /// The generation serving now.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Puts `generation` in service and returns the one it replaces. Calls that start from
    /// now on use it; calls in flight finish on the old one, which lives until they end.
    ///
    /// The generation is stored first and the epoch moved after it, while deciders read the
    /// epoch first and the generation after it: a decision stamped with the new epoch was
    /// therefore taken by the new generation, and any decision of the old one carries the old
    /// epoch, which is stale from now on.
    pub(super) fn install(&self, generation: Arc<Generation>) -> Arc<Generation> {
        let old = self.current.swap(generation);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        old
    }

    /// The epoch, read before the generation: see [`Slot::install`].
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(super) fn log_failure(&self, hook: &str, failure: &Failure) {
        let mut log = self.failure_log.lock();
        let now = Instant::now();
        if log
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            log.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.1);
        log.0 = Some(now);
        tracing::warn!(plugin = %self.name, hook, error = %failure, suppressed,
            "plugin failed; the decision fails closed");
    }
}
