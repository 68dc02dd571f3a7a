//! The Wasm plugin host: runs policy plugins (WebAssembly components exporting
//! `moat:policy/hooks`, see `wit/`) in a sandbox, and answers the broker's questions with them.
//!
//! Layout:
//! - [`bindings`]: what wasmtime's `bindgen!` generates from the WIT package.
//! - `engine`: the process's one wasmtime engine, its epoch ticker (the CPU budget's clock) and
//!   compiling components, with an in-memory and an on-disk cache (`disk_cache`: native code,
//!   so only in a directory nobody else may write).
//! - `version`: which contract versions are accepted (`0.1.x`).
//! - `host`: the imports every plugin sees (log, clock, counters, invalidate), a WASI that
//!   grants nothing, the memory cap.
//! - [`capabilities`]: what the operator may grant a plugin (`kv`, `files`, `password`,
//!   `http`...), one file each.
//! - `pool`: ready instances, so concurrent calls run in parallel.
//! - [`Generation`] (`plugin.rs`): one loaded version of a plugin, and the call wrapper that
//!   enforces the CPU budget, the timeout and failure handling.
//! - [`hook_stats`]: per-hook counters and latency histogram of a generation.
//! - `calls`: one method per hook: the broker's types in, the WIT records out and back, with
//!   the caps on what a plugin may return.
//! - [`bundled`]: the plugins embedded in the binary.
//! - [`Harness`]: loads a component and calls its hooks without a broker, for plugin tests.
//!
//! The chain that orders plugins and the decision cache live one level up, in
//! [`crate::policy::chain`] and [`crate::policy::cache`].

pub mod bindings;
pub mod bundled;
pub mod calls;
pub mod capabilities;
pub mod disk_cache;
mod engine;
mod harness;
pub mod hook_stats;
mod host;
mod plugin;
mod pool;
pub mod version;

use std::path::PathBuf;

pub use calls::{Answer, AuthStep, Decision, SubscribeDecision};
pub use capabilities::{FileSnapshot, new_password_hash, new_scram_verifier};
pub use disk_cache::DiskCache;
pub use engine::{Compiling, Runtime, hex};
pub use harness::Harness;
pub use host::PluginContext;
pub use plugin::{Failure, Generation, Limits, Stats};

/// The SHA-256 of `bytes`, lowercase hex: how a plugin's content is named (`sha256` pins,
/// logs, the compile cache).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// Why a plugin could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot start the WebAssembly engine: {0}")]
    Engine(String),
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("incompatible contract: {0}")]
    Contract(String),
    #[error("cannot link it: {0}")]
    Link(String),
    #[error("init failed: {0}")]
    Init(String),
    #[error("cannot grant it `{capability}`: {why}")]
    Grant {
        capability: &'static str,
        why: String,
    },
    #[error("its SHA-256 is {actual}, but the configuration pins {expected}")]
    Hash { expected: String, actual: String },
    #[error("unsafe compile cache directory {dir}: {why}")]
    CacheDir { dir: PathBuf, why: String },
}

/// The hooks a plugin serves, as a small bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Hooks(u8);

impl Hooks {
    pub const ON_CONNECT: Hooks = Hooks(1);
    pub const AUTHENTICATE: Hooks = Hooks(2);
    pub const AUTHORIZE_PUBLISH: Hooks = Hooks(4);
    pub const AUTHORIZE_SUBSCRIBE: Hooks = Hooks(8);
    pub const AUTHORIZE_DELIVER: Hooks = Hooks(16);
    pub const ALL: Hooks = Hooks(31);

    /// The set as bits, for keeping it in an atomic.
    pub fn bits(self) -> u8 {
        self.0
    }

    pub fn from_bits(bits: u8) -> Hooks {
        Hooks(bits & Hooks::ALL.0)
    }

    pub fn contains(self, other: Hooks) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Hooks) -> Hooks {
        Hooks(self.0 | other.0)
    }

    pub fn intersection(self, other: Hooks) -> Hooks {
        Hooks(self.0 & other.0)
    }

    fn from_wit(h: bindings::moat::policy::types::Hooks) -> Hooks {
        use bindings::moat::policy::types::Hooks as W;
        [
            (W::ON_CONNECT, Hooks::ON_CONNECT),
            (W::AUTHENTICATE, Hooks::AUTHENTICATE),
            (W::AUTHORIZE_PUBLISH, Hooks::AUTHORIZE_PUBLISH),
            (W::AUTHORIZE_SUBSCRIBE, Hooks::AUTHORIZE_SUBSCRIBE),
            (W::AUTHORIZE_DELIVER, Hooks::AUTHORIZE_DELIVER),
        ]
        .into_iter()
        .filter(|(w, _)| h.contains(*w))
        .fold(Hooks::default(), |acc, (_, ours)| acc.union(ours))
    }

    /// The hooks named in a configuration's `hooks` list.
    pub fn from_names(names: &[crate::config::HookName]) -> Hooks {
        use crate::config::HookName as N;
        names.iter().fold(Hooks::default(), |acc, n| {
            acc.union(match n {
                N::OnConnect => Hooks::ON_CONNECT,
                N::Authenticate => Hooks::AUTHENTICATE,
                N::AuthorizePublish => Hooks::AUTHORIZE_PUBLISH,
                N::AuthorizeSubscribe => Hooks::AUTHORIZE_SUBSCRIBE,
                N::AuthorizeDeliver => Hooks::AUTHORIZE_DELIVER,
            })
        })
    }

    /// The hook names, for logs.
    pub fn names(self) -> Vec<&'static str> {
        [
            (Hooks::ON_CONNECT, "on-connect"),
            (Hooks::AUTHENTICATE, "authenticate"),
            (Hooks::AUTHORIZE_PUBLISH, "authorize-publish"),
            (Hooks::AUTHORIZE_SUBSCRIBE, "authorize-subscribe"),
            (Hooks::AUTHORIZE_DELIVER, "authorize-deliver"),
        ]
        .into_iter()
        .filter(|(h, _)| self.contains(*h))
        .map(|(_, n)| n)
        .collect()
    }
}

/// What a plugin says about itself in `init`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Manifest {
    pub hooks: Hooks,
    pub needs_payload: bool,
    pub session_state_version: u32,
}
