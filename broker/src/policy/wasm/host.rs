//! What a plugin instance sees of the host: the store data ([`HostState`]), the `moat:policy`
//! imports (log, clock, counters, invalidate, and the capability interfaces), and a WASI that
//! grants nothing.
//!
//! Sandboxing choices:
//! - WASI is linked because compilers of Rust, Python and JavaScript components import it, but
//!   the context has no preopened directories, no environment, no arguments, no sockets and no
//!   name lookup; standard output and error go nowhere (plugins log through `host.log`).
//! - Clocks are coarse: WASI's wall and monotonic clocks tick in milliseconds, like
//!   `host.now-ms`, so a plugin cannot time the host finely.
//! - Capabilities (`super::capabilities`, one file each) answer only as the operator granted
//!   them; one not granted answers `not-granted` (an error value, never a trap), and the
//!   attempt is logged.
//! - Memory is capped by [`MemoryCap`]: the sum of an instance's linear memories, checked on
//!   every growth; going over traps the instance with [`Overrun::Memory`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::LoadError;
use super::bindings::moat::policy::host;
use super::bindings::moat::policy::types::CapabilityError;
use super::capabilities::{FileSnapshot, Granted};
use crate::config::Grants;

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_LINE: usize = 4096;
/// Most counter names per plugin, and the longest name (in characters).
const MAX_COUNTERS: usize = 64;
const MAX_COUNTER_NAME: usize = 64;

/// Why the host stopped a call: carried as the error of a trap so the caller can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Overrun {
    #[error("used its CPU budget")]
    Cpu,
    #[error("exceeded its memory limit")]
    Memory,
}

/// What every instance of one plugin shares, across its generations: its name, its decision
/// epoch (bumped by `invalidate`), its counters and what it was granted.
pub struct PluginContext {
    pub name: Arc<str>,
    /// Bumped to make every cached decision this plugin took part in stale.
    pub epoch: Arc<AtomicU64>,
    counters: Mutex<HashMap<String, u64>>,
    /// What the operator granted it.
    pub granted: Granted,
    /// When a refused capability was last logged (at most one line a second per plugin).
    refusal_logged: Mutex<Option<Instant>>,
}

impl PluginContext {
    /// Fails if a grant cannot be served (see [`Granted::new`]).
    pub fn new(
        name: Arc<str>,
        epoch: Arc<AtomicU64>,
        grants: &Grants,
    ) -> Result<PluginContext, LoadError> {
        Ok(PluginContext {
            name,
            epoch,
            counters: Mutex::new(HashMap::new()),
            granted: Granted::new(grants)?,
            refusal_logged: Mutex::new(None),
        })
    }

    /// A snapshot of the plugin's own counters.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .counters
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        v.sort();
        v
    }

    /// The answer to a capability call the grant does not cover; logged at most once a second.
    pub(super) fn refuse(&self, capability: &str) -> CapabilityError {
        self.refuse_because(capability, &"plugin used a capability it was not granted")
    }

    /// The same, logging `why` (e.g. the origin an `http` grant does not list).
    pub(super) fn refuse_because(
        &self,
        capability: &str,
        why: &dyn std::fmt::Display,
    ) -> CapabilityError {
        let mut last = self.refusal_logged.lock();
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            *last = Some(now);
            tracing::warn!(plugin = %self.name, capability, "refused: {why}");
        }
        CapabilityError::NotGranted
    }
}

/// The data of one instance's store.
pub struct HostState {
    pub(super) ctx: Arc<PluginContext>,
    /// The granted files as this instance's generation read them.
    pub(super) files: Arc<FileSnapshot>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    pub(super) cpu: CpuMeter,
}

impl HostState {
    pub(super) fn new(
        ctx: Arc<PluginContext>,
        files: Arc<FileSnapshot>,
        memory_limit: usize,
    ) -> HostState {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(CoarseWallClock)
            .monotonic_clock(CoarseMonotonicClock::default())
            .build();
        HostState {
            ctx,
            files,
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                limit: memory_limit,
                used: 0,
            },
            cpu: CpuMeter::default(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Counts the epoch ticks a call has run for; see `engine.rs`.
#[derive(Debug, Default)]
pub(super) struct CpuMeter {
    pub used: u64,
    pub budget: u64,
}

/// Caps the total linear memory of an instance.
pub(super) struct MemoryCap {
    limit: usize,
    used: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used - current.min(self.used) + desired;
        if total > self.limit {
            return Err(Overrun::Memory.into());
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A table element is a pointer: bound tables by the same budget.
        Ok(desired.saturating_mul(8) <= self.limit)
    }
}

/// The linker every plugin is instantiated with: WASI (granting nothing, see the module doc)
/// and the `moat:policy` imports.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    super::bindings::Plugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Wall-clock time in whole milliseconds.
struct CoarseWallClock;

impl wasmtime_wasi::HostWallClock for CoarseWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn now(&self) -> Duration {
        Duration::from_millis(unix_now().as_millis() as u64)
    }
}

/// A monotonic clock in whole milliseconds since the instance was created.
struct CoarseMonotonicClock(Instant);

impl Default for CoarseMonotonicClock {
    fn default() -> Self {
        CoarseMonotonicClock(Instant::now())
    }
}

impl wasmtime_wasi::HostMonotonicClock for CoarseMonotonicClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        (self.0.elapsed().as_millis() as u64).saturating_mul(1_000_000)
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, mut message: String) -> wasmtime::Result<()> {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.ctx.name;
        match level {
            host::Level::Trace => tracing::trace!(target: "moat::plugin", plugin, "{message}"),
            host::Level::Debug => tracing::debug!(target: "moat::plugin", plugin, "{message}"),
            host::Level::Info => tracing::info!(target: "moat::plugin", plugin, "{message}"),
            host::Level::Warn => tracing::warn!(target: "moat::plugin", plugin, "{message}"),
            host::Level::Error => tracing::error!(target: "moat::plugin", plugin, "{message}"),
        }
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(unix_now().as_millis() as u64)
    }

    fn count(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        // Counter names become topic levels (`$SYS/broker/plugins/<plugin>/counters/<name>`):
        // only letters, digits, '-', '_' and '.', at most 64 of them.
        let name: String = name
            .chars()
            .take(MAX_COUNTER_NAME)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut counters = self.ctx.counters.lock();
        if let Some(c) = counters.get_mut(&name) {
            *c = c.saturating_add(delta);
        } else if counters.len() < MAX_COUNTERS {
            counters.insert(name, delta);
        }
        Ok(())
    }

    fn invalidate(&mut self) -> wasmtime::Result<()> {
        self.ctx.epoch.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(plugin = %self.ctx.name, "plugin invalidated its cached decisions");
        Ok(())
    }
}

impl super::bindings::moat::policy::types::Host for HostState {}
