//! One loaded generation of one plugin: its compiled component, its pool of instances, and the
//! calls into its hooks with the sandbox's limits.
//!
//! Loading compiles (or loads from cache), reads the granted files, instantiates and calls
//! `init` with the plugin's configuration, all before the generation serves anything; its
//! manifest (hooks, payload, session-state version) comes from that first `init`, and every
//! later instance must agree. [`Generation::renew`] makes the next generation of the same
//! component with new file contents, without compiling.
//!
//! Every call runs under two clocks: a CPU budget (epoch ticks while guest code runs; an
//! endless loop is stopped) and a wall-clock timeout (which also covers waiting for an instance
//! and for capabilities). A failure of any kind (trap, budget, timeout, memory cap, an answer
//! over the size caps, no instance free in time) is a [`Failure`]; the caller decides what it
//! means (the chain fails closed), and the instance involved is dropped. A plugin that keeps
//! failing is throttled: re-creating instances draws on a token bucket, and while it is empty
//! calls fail at once instead of instantiating again and again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::component::Component;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::moat::policy::types as wit;
use super::bindings::{Plugin as Bindings, PluginPre};
use super::capabilities::FileSnapshot;
use super::disk_cache::DiskCache;
use super::engine::{Compiling, Runtime};
use super::hook_stats::HookStats;
use super::host::{HostState, Overrun, PluginContext};
use super::pool::{Instance, Pool};
use super::{LoadError, Manifest};

/// What a loaded generation needs to know about its limits.
#[derive(Debug, Clone)]
pub struct Limits {
    pub min_instances: usize,
    pub max_instances: usize,
    pub memory_bytes: usize,
    pub cpu_budget: Duration,
    pub authenticate_timeout: Duration,
    pub authorize_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_instances: 1,
            max_instances: 16,
            memory_bytes: 64 << 20,
            cpu_budget: Duration::from_millis(100),
            authenticate_timeout: Duration::from_secs(2),
            authorize_timeout: Duration::from_millis(50),
        }
    }
}

/// How long `init` (with instantiation) may take, in guest CPU and in wall-clock time. Large
/// guests (an interpreter) do real work there.
const INIT_CPU_BUDGET: Duration = Duration::from_secs(10);
const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call into a plugin produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("trapped: {0}")]
    Trap(String),
    #[error("used its CPU budget")]
    CpuBudget,
    #[error("exceeded its memory limit")]
    Memory,
    #[error("did not answer within its timeout")]
    Timeout,
    #[error("answered with {0}")]
    Malformed(String),
    #[error("could not start an instance: {0}")]
    Instantiate(String),
    #[error("is failing repeatedly; calls are refused until it recovers")]
    Throttled,
}

/// Failure counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub calls: AtomicU64,
    pub traps: AtomicU64,
    pub deadline_hits: AtomicU64,
    pub malformed: AtomicU64,
    pub instances_created: AtomicU64,
    /// Calls running now, and the most that ever ran at once.
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
}

/// Counts one call in flight while it lives.
struct Running<'a>(&'a Stats);

impl<'a> Running<'a> {
    fn start(stats: &'a Stats) -> Running<'a> {
        let now = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Running(stats)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Re-instantiations a failing plugin may do in a burst, and per second after that.
const REPLACE_BURST: f64 = 10.0;
const REPLACE_PER_SECOND: f64 = 2.0;

/// A loaded generation; see the module doc.
pub struct Generation {
    pub name: Arc<str>,
    pub number: u64,
    /// SHA-256 of the component's bytes.
    pub hash: [u8; 32],
    pub manifest: Manifest,
    pub limits: Limits,
    pub ctx: Arc<PluginContext>,
    /// The granted files as this generation read them.
    pub files: Arc<FileSnapshot>,
    pub stats: Stats,
    /// Counters per hook, indexed by [`Hook`](super::hook_stats::Hook).
    pub per_hook: [HookStats; 6],
    runtime: &'static Arc<Runtime>,
    pre: PluginPre<HostState>,
    config_json: String,
    pool: Pool,
    /// Token bucket for replacing failed instances: (tokens, last refill).
    replacements: Mutex<(f64, Instant)>,
    /// Instances dropped after a failure and not replaced yet: creating one of these draws
    /// on `replacements`; growing the pool towards `max_instances` under load does not.
    failed: AtomicU64,
    /// Held while an instance is created: one at a time, see [`Generation::lease`].
    growing: tokio::sync::Mutex<()>,
}

/// A loan of one instance for one call: given back if the call succeeded, dropped otherwise.
struct Lease<'g> {
    generation: &'g Generation,
    instance: Option<Instance>,
    healthy: bool,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            if self.healthy {
                self.generation.pool.give_back(instance);
            } else {
                self.generation.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Generation {
    /// Compiles (as `compiling` says), instantiates and initialises a plugin; fails without
    /// side effects if any step does. The granted files are read for it (a snapshot its
    /// instances share).
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        name: Arc<str>,
        number: u64,
        bytes: &[u8],
        config_json: String,
        limits: Limits,
        ctx: Arc<PluginContext>,
        disk: Option<&DiskCache>,
        compiling: Compiling,
    ) -> Result<Arc<Generation>, LoadError> {
        let runtime = Runtime::shared()?;
        // Compiling a large component takes seconds: off the async workers.
        let (component, hash) = runtime.compile(bytes, disk, compiling).await?;
        super::version::check(&component)?;
        let pre = instantiate_pre(runtime, &component)?;
        let files = read_files(&ctx).await?;
        Generation::start(Generation {
            name,
            number,
            hash,
            manifest: Manifest::default(),
            limits,
            ctx,
            files,
            stats: Stats::default(),
            per_hook: Default::default(),
            runtime,
            pre,
            config_json,
            pool: Pool::new(0),
            replacements: Mutex::new((REPLACE_BURST, Instant::now())),
            failed: AtomicU64::new(0),
            growing: tokio::sync::Mutex::new(()),
        })
        .await
    }

    /// Generation `number` of the same component and configuration, with `files` as its
    /// snapshot of the granted files: instantiated and initialised anew (nothing is compiled),
    /// ready to replace this one. Fails without side effects, e.g. when `init` refuses the new
    /// files.
    pub async fn renew(
        &self,
        number: u64,
        files: Arc<FileSnapshot>,
    ) -> Result<Arc<Generation>, LoadError> {
        Generation::start(Generation {
            name: self.name.clone(),
            number,
            hash: self.hash,
            manifest: Manifest::default(),
            limits: self.limits.clone(),
            ctx: self.ctx.clone(),
            files,
            stats: Stats::default(),
            per_hook: Default::default(),
            runtime: self.runtime,
            pre: self.pre.clone(),
            config_json: self.config_json.clone(),
            pool: Pool::new(0),
            replacements: Mutex::new((REPLACE_BURST, Instant::now())),
            failed: AtomicU64::new(0),
            growing: tokio::sync::Mutex::new(()),
        })
        .await
    }

    /// Creates the first instances of a new generation (the first one's `init` gives the
    /// manifest), then its pool.
    async fn start(mut generation: Generation) -> Result<Arc<Generation>, LoadError> {
        let (first, manifest) = generation
            .new_instance(INIT_CPU_BUDGET, INIT_TIMEOUT)
            .await
            .map_err(|e| match e {
                InitError::Refused(msg) => LoadError::Init(msg),
                InitError::Failed(f) => LoadError::Init(f.to_string()),
            })?;
        generation.manifest = manifest;
        generation.pool = Pool::new(generation.limits.max_instances);
        generation.pool.give_back(first);
        for _ in 1..generation.limits.min_instances {
            let (instance, _) = generation
                .new_instance(INIT_CPU_BUDGET, INIT_TIMEOUT)
                .await
                .map_err(|e| LoadError::Init(e.to_string()))?;
            generation.pool.give_back(instance);
        }
        Ok(Arc::new(generation))
    }

    /// Creates and initialises one instance; its manifest must match the generation's (once
    /// the generation has one).
    async fn new_instance(
        &self,
        cpu: Duration,
        timeout: Duration,
    ) -> Result<(Instance, Manifest), InitError> {
        self.stats.instances_created.fetch_add(1, Ordering::Relaxed);
        let mut store = Store::new(
            &self.runtime.engine,
            HostState::new(
                self.ctx.clone(),
                self.files.clone(),
                self.limits.memory_bytes,
            ),
        );
        store.limiter(|s| &mut s.memory);
        store.epoch_deadline_callback(|mut ctx| {
            let meter = &mut ctx.data_mut().cpu;
            meter.used += 1;
            if meter.used > meter.budget {
                return Err(Overrun::Cpu.into());
            }
            // Give the thread back to other tasks while a long call runs.
            Ok(UpdateDeadline::Yield(1))
        });
        let work = async {
            arm(&mut store, cpu);
            let _in_flight = self.runtime.enter();
            let bindings: Bindings = self
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| InitError::Failed(classify(&e)))?;
            arm(&mut store, cpu);
            let manifest = bindings
                .moat_policy_hooks()
                .call_init(&mut store, &self.config_json)
                .await
                .map_err(|e| InitError::Failed(classify(&e)))?
                .map_err(InitError::Refused)?;
            Ok((Instance { store, bindings }, Manifest::from_wit(&manifest)))
        };
        let (instance, manifest) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| InitError::Failed(Failure::Timeout))??;
        if self.manifest != Manifest::default() && manifest != self.manifest {
            return Err(InitError::Refused(
                "a new instance returned another manifest than the first".into(),
            ));
        }
        Ok((instance, manifest))
    }

    /// Runs `call` on an instance, under the CPU budget and within `timeout`.
    pub(super) async fn call<R>(
        &self,
        timeout: Duration,
        call: impl AsyncFnOnce(&mut Instance) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let _running = Running::start(&self.stats);
        let deadline = tokio::time::Instant::now() + timeout;
        let work = async {
            let mut lease = self.lease().await?;
            let instance = lease.instance.as_mut().expect("a lease holds an instance");
            arm(&mut instance.store, self.limits.cpu_budget);
            let _in_flight = self.runtime.enter();
            let result = call(instance).await;
            match result {
                Ok(r) => {
                    lease.healthy = true;
                    Ok(r)
                }
                Err(e) => Err(classify(&e)),
            }
        };
        // Boxed once: the call's state (records, lease) is large, and moving it through the
        // timeout and the hook's futures by value cost more than the allocation.
        let outcome = match tokio::time::timeout_at(deadline, Box::pin(work)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        };
        if let Err(f) = &outcome {
            self.count_failure(f);
        }
        outcome
    }

    fn count_failure(&self, f: &Failure) {
        let counter = match f {
            Failure::CpuBudget | Failure::Timeout => &self.stats.deadline_hits,
            Failure::Malformed(_) => &self.stats.malformed,
            _ => &self.stats.traps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an answer that broke the contract (the caller found it over a size cap).
    pub(super) fn malformed(&self, why: impl Into<String>) -> Failure {
        let f = Failure::Malformed(why.into());
        self.count_failure(&f);
        f
    }

    /// Takes an idle instance, or creates one while the pool and the replacement budget allow.
    async fn lease(&self) -> Result<Lease<'_>, Failure> {
        let slot = self
            .pool
            .slot()
            .await
            .ok_or_else(|| Failure::Instantiate("the plugin is unloading".into()))?;
        let instance = match self.pool.take_idle() {
            Some(i) => i,
            None => self.idle_or_new().await?,
        };
        Ok(Lease {
            generation: self,
            instance: Some(instance),
            healthy: false,
            _slot: slot,
        })
    }

    /// An instance for a caller that found none idle. Instances are created one at a time,
    /// and a caller that waited for its turn first looks for one given back meanwhile. Calls
    /// yield while they run, so a burst of callers each creating its own instance would grow
    /// the pool to its cap on a single busy core (a connect storm through static-acl: 15
    /// `init`s in a row, 60 ms of queued handshakes) where a few instances serve them all.
    async fn idle_or_new(&self) -> Result<Instance, Failure> {
        let _growing = self.growing.lock().await;
        if let Some(i) = self.pool.take_idle() {
            return Ok(i);
        }
        if !self.may_replace() {
            return Err(Failure::Throttled);
        }
        let (i, _) = self
            .new_instance(INIT_CPU_BUDGET, INIT_TIMEOUT)
            .await
            .inspect_err(|_| {
                // A creation that failed is owed like a failed instance: retrying it draws on
                // the bucket.
                self.failed.fetch_add(1, Ordering::Relaxed);
            })
            .map_err(|e| match e {
                InitError::Refused(m) => Failure::Instantiate(m),
                InitError::Failed(f) => f,
            })?;
        Ok(i)
    }

    /// Whether an instance may be created now: always to grow the pool (the pool's slots bound
    /// it), and for one that replaces a failed instance, while the token bucket has a token.
    fn may_replace(&self) -> bool {
        let replacing = self
            .failed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if !replacing {
            return true;
        }
        let mut bucket = self.replacements.lock();
        let now = Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * REPLACE_PER_SECOND;
        bucket.0 = (bucket.0 + refill).min(REPLACE_BURST);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            // Still owed: the next creation asks the bucket again.
            self.failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Idle instances, and instances that may still be created or taken.
    pub fn pool_state(&self) -> (usize, usize) {
        (self.pool.idle(), self.pool.free_slots())
    }
}

enum InitError {
    /// `init` returned an error, or the manifest changed.
    Refused(String),
    Failed(Failure),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Refused(m) => write!(f, "init refused: {m}"),
            InitError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Sets the CPU budget for the next call and arms the epoch deadline.
fn arm(store: &mut Store<HostState>, budget: Duration) {
    let ticks = (budget.as_millis() / super::engine::TICK.as_millis()).max(1) as u64;
    store.data_mut().cpu = super::host::CpuMeter {
        used: 0,
        budget: ticks,
    };
    store.set_epoch_deadline(1);
}

/// Reads the plugin's granted files, off the async workers.
pub(super) async fn read_files(ctx: &Arc<PluginContext>) -> Result<Arc<FileSnapshot>, LoadError> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || Arc::new(ctx.granted.read_files()))
        .await
        .map_err(|e| LoadError::Init(format!("reading the granted files failed: {e}")))
}

fn instantiate_pre(
    runtime: &Runtime,
    component: &Component,
) -> Result<PluginPre<HostState>, LoadError> {
    let pre = runtime
        .linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    PluginPre::new(pre).map_err(|e| LoadError::Link(format!("{e:#}")))
}

/// What went wrong in a call that returned an error.
fn classify(e: &wasmtime::Error) -> Failure {
    if let Some(o) = e.downcast_ref::<Overrun>() {
        return match o {
            Overrun::Cpu => Failure::CpuBudget,
            Overrun::Memory => Failure::Memory,
        };
    }
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return Failure::Trap(trap.to_string());
    }
    // A guest panic shows as an `unreachable` trap with the message in the error chain; keep
    // the first line, which says where.
    let text = format!("{e:#}");
    Failure::Trap(text.lines().next().unwrap_or("unknown error").to_owned())
}

impl Manifest {
    fn from_wit(m: &wit::Manifest) -> Manifest {
        Manifest {
            hooks: super::Hooks::from_wit(m.hooks),
            needs_payload: m.needs_payload,
            session_state_version: m.session_state_version,
        }
    }
}
