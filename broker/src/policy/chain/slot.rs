//! One position in the chain: the plugin's current generation (behind an `ArcSwap`, so a
//! replacement is one atomic store), the hooks it serves, the epoch that makes its cached
//! decisions stale, and a failure log limited to one line a second.
//!
//! A slot keeps what it was configured with (`spec`): a replacement reuses its limits, its
//! `[plugin.config]` and its grants, and only the component's bytes change. It also keeps
//! its [`PluginContext`] across generations, so the plugin's own counters and its `kv` space
//! survive a replacement.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{OnFailure, PluginConfig};
use crate::policy::wasm::{Failure, Generation, Hooks, PluginContext};

/// One position in the chain.
pub struct Slot {
    pub name: Arc<str>,
    /// The hooks the broker calls it for: its manifest's, narrowed by its `hooks` setting.
    /// Atomic because a new generation may declare other hooks.
    hooks: AtomicU8,
    /// The listeners it decides for (`None`: all).
    pub listeners: Option<Vec<Arc<str>>>,
    pub on_failure: OnFailure,
    /// The `[[plugin]]` table it was loaded from.
    pub spec: PluginConfig,
    pub(super) current: ArcSwap<Generation>,
    /// Moves when the plugin invalidates its decisions or is replaced.
    pub epoch: Arc<AtomicU64>,
    /// The number the next generation gets.
    next_generation: AtomicU64,
    /// Decisions sessions reused instead of asking: authorize-publish, authorize-deliver.
    pub cache_hits: [AtomicU64; 2],
    /// When a failure was last logged, and how many were not since.
    pub(super) failure_log: Mutex<(Option<Instant>, u64)>,
}

impl Slot {
    pub(super) fn new(spec: PluginConfig, generation: Arc<Generation>) -> Slot {
        let hooks = effective_hooks(&spec, &generation);
        Slot {
            name: generation.name.clone(),
            hooks: AtomicU8::new(hooks.bits()),
            listeners: spec
                .listeners
                .as_ref()
                .map(|ls| ls.iter().map(|l| Arc::from(l.as_str())).collect()),
            on_failure: spec.on_failure,
            spec,
            next_generation: AtomicU64::new(generation.number + 1),
            cache_hits: Default::default(),
            epoch: generation.ctx.epoch.clone(),
            current: ArcSwap::new(generation),
            failure_log: Mutex::new((None, 0)),
        }
    }

    /// The hooks the broker calls this plugin for.
    pub fn hooks(&self) -> Hooks {
        Hooks::from_bits(self.hooks.load(Ordering::Relaxed))
    }

    pub(super) fn serves(&self, hook: Hooks, listener: &str) -> bool {
        self.hooks().contains(hook)
            && self
                .listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| &**l == listener))
    }

    /// The generation serving now.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The plugin's shared context (counters, `kv`), the same for every generation.
    pub fn context(&self) -> Arc<PluginContext> {
        self.current.load().ctx.clone()
    }

    /// The number a new generation of this plugin gets (taken, so never given twice).
    pub(super) fn take_generation_number(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// The epoch, read before the generation: see [`Slot::install`].
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Puts `generation` in service and returns the one it replaces.
    ///
    /// The generation is stored first and the epoch moved after it, while deciders read the
    /// epoch first and the generation after it: a decision stamped with the new epoch was
    /// therefore taken by the new generation, and any decision of the old one carries the old
    /// epoch, which is stale from now on.
    pub(super) fn install(&self, generation: Arc<Generation>) -> Arc<Generation> {
        let hooks = effective_hooks(&self.spec, &generation);
        self.hooks.store(hooks.bits(), Ordering::Relaxed);
        let old = self.current.swap(generation);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        old
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

/// A generation's manifest narrowed by the configuration's `hooks`.
fn effective_hooks(spec: &PluginConfig, generation: &Generation) -> Hooks {
    match &spec.hooks {
        Some(names) => generation
            .manifest
            .hooks
            .intersection(Hooks::from_names(names)),
        None => generation.manifest.hooks,
    }
}
