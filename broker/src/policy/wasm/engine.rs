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

    fn new() -> Result<Runtime, LoadError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .concurrency_support(false)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
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
            linker,
            ticker,
            compiled: Mutex::new(HashMap::new()),
            fingerprint,
        })
    }

    /// The compiled form of `bytes`: from memory, from the disk cache, or compiled now (and
    /// then stored in both).
    pub(super) fn compile(
        &self,
        bytes: &[u8],
        disk: Option<&DiskCache>,
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
                let c = Component::new(&self.engine, bytes)
                    .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
                if let Some(d) = disk {
                    match c.serialize() {
                        Ok(native) => d.store(&key, &native),
                        Err(e) => tracing::warn!(error = %e, "cannot serialize a compiled plugin"),
                    }
                }
                c
            }
        };
        self.compiled.lock().insert(hash, component.clone());
        Ok((component, hash))
    }

    /// Marks a call in flight (the ticker runs while any is); ends when the guard drops.
    pub(super) fn enter(&self) -> InFlight<'_> {
        self.ticker.enter()
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
