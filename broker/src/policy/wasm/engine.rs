//! The one wasmtime [`Engine`] of the process, its epoch ticker, and compiling components.
//!
//! Engine settings, and why:
//! - the component model, async calls (a plugin waiting on a capability does not block a
//!   broker thread), cranelift at `speed`;
//! - `concurrency_support(false)`: moat does not use component-model async, and leaving it on
//!   costs about 1 µs per call;
//! - epoch interruption, for the CPU budget of each call. A ticker thread advances the epoch
//!   every millisecond while calls are being made, and parks after a quiet spell, so an idle
//!   broker does not wake a thousand times a second, while a busy one does not pay a wake-up
//!   (a system call) on every call.
//!
//! Compiled components are kept in memory (keyed by the SHA-256 of their bytes, so twenty
//! brokers in one test process compile a plugin once) and on disk ([`super::disk_cache`]), so a
//! restart loads native code instead of compiling.
//!
//! Two ways to compile ([`Compiling`]). At start nothing else waits for the cores, so cranelift
//! compiles a component's functions in parallel on all of them. During a swap the broker is
//! serving, and decisions must not wait behind the compiler (on two cores, a parallel compile
//! stalled decisions by 30-80 ms): the component is compiled on one thread of its own, at the
//! lowest scheduling priority (nice 19), by a second engine whose only difference is
//! `parallel_compilation(false)`, and its output loaded into the main engine. Parallelism does
//! not change the compiled code or what wasmtime checks when loading it, so the code is the
//! same as the main engine's own (the disk cache stores it under the same key).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, OptLevel};

use super::LoadError;
use super::disk_cache::DiskCache;
use super::host::HostState;

/// How often the epoch advances while calls are in flight: the unit of the CPU budget.
pub(super) const TICK: Duration = Duration::from_millis(1);

/// The process-wide runtime: engine, linker with the host imports, ticker, compiled components.
pub struct Runtime {
    pub(super) engine: Engine,
    /// The engine swaps compile with: the main engine's settings, on one thread. Made at the
    /// first swap that compiles.
    background: OnceLock<Result<Engine, String>>,
    pub(super) linker: Linker<HostState>,
    ticker: Ticker,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    /// A hex digest of everything that makes compiled code valid for this engine (wasmtime's
    /// version and settings): part of every disk cache key.
    fingerprint: String,
}

impl Runtime {
    /// The runtime every plugin of this process shares.
    pub fn shared() -> Result<&'static Arc<Runtime>, LoadError> {
        static RUNTIME: OnceLock<Result<Arc<Runtime>, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::new().map(Arc::new).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| LoadError::Engine(e.clone()))
    }

    /// The engine settings (see the module doc); `parallel` is the only one that may differ
    /// between the two engines.
    fn config(parallel: bool) -> Config {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(parallel);
        config
    }

    fn new() -> Result<Runtime, LoadError> {
        let engine =
            Engine::new(&Runtime::config(true)).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let linker =
            super::host::linker(&engine).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let ticker = Ticker::start(engine.clone());
        Ok(Runtime {
            engine,
            background: OnceLock::new(),
            linker,
            ticker,
            compiled: Mutex::new(HashMap::new()),
            fingerprint,
        })
    }

    /// The compiled form of `bytes`: from memory, from the disk cache, or compiled now as
    /// `compiling` says (and then stored in both). Runs off the async workers: on the blocking
    /// pool, or for [`Compiling::Background`] on a thread of its own.
    pub(super) async fn compile(
        self: &'static Arc<Self>,
        bytes: &[u8],
        disk: Option<&DiskCache>,
        compiling: Compiling,
    ) -> Result<(Component, [u8; 32]), LoadError> {
        let (bytes, disk) = (bytes.to_vec(), disk.cloned());
        let work = move || self.compile_now(&bytes, disk.as_ref(), compiling);
        match compiling {
            Compiling::AllCores => tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| LoadError::Compile(e.to_string()))?,
            Compiling::Background => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("moat-plugin-compile".into())
                    .spawn(move || {
                        lower_priority();
                        let _ = tx.send(work());
                    })
                    .map_err(|e| LoadError::Compile(format!("cannot start a thread: {e}")))?;
                rx.await
                    .map_err(|_| LoadError::Compile("the compiling thread panicked".into()))?
            }
        }
    }

    fn compile_now(
        &self,
        bytes: &[u8],
        disk: Option<&DiskCache>,
        compiling: Compiling,
    ) -> Result<(Component, [u8; 32]), LoadError> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(c) = self.compiled.lock().get(&hash) {
            return Ok((c.clone(), hash));
        }
        let key = format!("{}-{}", hex(&hash), self.fingerprint);
        let cached = disk.and_then(|d| d.load(&self.engine, &key));
        let component = match cached {
            Some(c) => c,
            None => {
                let (c, native) = match compiling {
                    Compiling::AllCores => {
                        let c = Component::new(&self.engine, bytes)
                            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                        let native = disk.map(|_| c.serialize());
                        (c, native)
                    }
                    Compiling::Background => {
                        let native = self.compile_on_one_thread(bytes)?;
                        // SAFETY: `native` is what wasmtime compiled from `bytes` a moment ago in
                        // this process, never stored anywhere else, by an engine with the main
                        // engine's settings (the module doc); wasmtime checks that again.
                        #[allow(unsafe_code)]
                        let c = unsafe { Component::deserialize(&self.engine, &native) }
                            .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                        (c, Some(Ok(native)))
                    }
                };
                match (disk, native) {
                    (Some(d), Some(Ok(native))) => d.store(&key, &native),
                    (_, Some(Err(e))) => {
                        tracing::warn!(error = %e, "cannot serialize a compiled plugin")
                    }
                    _ => {}
                }
                c
            }
        };
        self.compiled.lock().insert(hash, component.clone());
        Ok((component, hash))
    }

    /// Compiles `bytes` with the one-thread engine; the native code, for the main engine.
    fn compile_on_one_thread(&self, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
        let engine = self
            .background
            .get_or_init(|| Engine::new(&Runtime::config(false)).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| LoadError::Engine(e.clone()))?;
        engine
            .precompile_component(bytes)
            .map_err(|e| LoadError::Compile(format!("{e:#}")))
    }

    /// Marks a call in flight (the ticker runs while any is); ends when the guard drops.
    pub(super) fn enter(&self) -> InFlight<'_> {
        self.ticker.enter()
    }
}

/// How to compile a component that no cache holds; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiling {
    /// On every core at normal priority: nothing is being decided (start, tests).
    AllCores,
    /// On one thread at the lowest priority: the broker is serving (a swap).
    Background,
}

/// Gives the calling thread the lowest scheduling priority (nice 19), so that any runnable
/// broker thread goes first. Linux only: there the nice value belongs to a thread, and
/// `setpriority` for "the calling process" (who = 0) changes the calling thread's; elsewhere
/// it would lower the whole process.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(error = %e, "cannot lower the compiling thread's priority");
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Ticks without a call in flight after which the ticker parks.
const QUIET_TICKS: u32 = 200;

/// Advances the engine's epoch every [`TICK`] while calls are being made.
struct Ticker {
    state: Arc<TickerState>,
    thread: std::thread::Thread,
}

struct TickerState {
    in_flight: AtomicUsize,
    parked: std::sync::atomic::AtomicBool,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let state = Arc::new(TickerState {
            in_flight: AtomicUsize::new(0),
            parked: std::sync::atomic::AtomicBool::new(false),
        });
        let s = state.clone();
        let handle = std::thread::Builder::new()
            .name("moat-plugin-epoch".into())
            .spawn(move || {
                let mut quiet = 0;
                loop {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                    if s.in_flight.load(Ordering::SeqCst) > 0 {
                        quiet = 0;
                        continue;
                    }
                    quiet += 1;
                    if quiet < QUIET_TICKS {
                        continue;
                    }
                    // Announce the park, then look again: a call that started in between
                    // either sees `parked` and wakes us, or is seen here (both are SeqCst).
                    s.parked.store(true, Ordering::SeqCst);
                    while s.in_flight.load(Ordering::SeqCst) == 0 {
                        // The timeout only guards against a lost wake-up.
                        std::thread::park_timeout(Duration::from_millis(100));
                    }
                    s.parked.store(false, Ordering::SeqCst);
                    quiet = 0;
                }
            })
            .expect("spawn the plugin epoch thread");
        Ticker {
            state,
            thread: handle.thread().clone(),
        }
    }

    fn enter(&self) -> InFlight<'_> {
        self.state.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.state.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        InFlight(&self.state.in_flight)
    }
}

/// A call in flight; see [`Runtime::enter`].
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-thread engine's output is what the main engine loads, from memory and from the
    /// disk cache (a restart after a swap that compiled).
    #[tokio::test]
    async fn a_background_compile_serves_and_is_cached_for_the_main_engine() {
        let runtime: &'static Arc<Runtime> = Box::leak(Box::new(Arc::new(Runtime::new().unwrap())));
        let tmp = tempfile::tempdir().unwrap();
        let disk = DiskCache::open(&tmp.path().join("cache")).unwrap();
        let bytes = super::super::bundled::get("allow-anonymous").unwrap();
        let (component, hash) = runtime
            .compile(bytes, Some(&disk), Compiling::Background)
            .await
            .expect("compiled on the background thread");
        super::super::version::check(&component).expect("a policy component");
        let key = format!("{}-{}", hex(&hash), runtime.fingerprint);
        assert!(
            disk.load(&runtime.engine, &key).is_some(),
            "the main engine loads what the background engine compiled"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn only_the_compiling_thread_gets_the_lowest_priority() {
        // On Linux, "the calling process" is the calling thread.
        let nice = || rustix::process::getpriority_process(None).unwrap();
        let before = nice();
        let compiling = std::thread::spawn(move || {
            lower_priority();
            nice()
        });
        assert_eq!(compiling.join().unwrap(), 19);
        assert_eq!(nice(), before, "the other threads keep theirs");
    }
}
