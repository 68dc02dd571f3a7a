//! moat: an MQTT 3.1.1 and 5.0 broker whose security policy lives in sandboxed WebAssembly
//! plugins.
//!
//! # Layout
//!
//! A message travels `net` → `session` (via `codec`) → `policy` → `broker` (router, retained,
//! store) → each subscriber's `session` mailbox → `codec` → `net`. Each step is one module:
//!
//! - [`codec`]: the MQTT wire format for both protocol versions. Pure functions on `bytes`:
//!   `check` (is a whole packet buffered?), `decode`, `encode`. Malformed input becomes an error
//!   carrying the reason code to send; nothing in it does I/O or panics.
//! - [`topic`]: topic name and filter rules, `$share` syntax, single-filter matching.
//! - [`router`]: the subscription trie (`+`, `#`, `$share` round robin, overlapping
//!   subscriptions merged per MQTT 5) and the retained-message index.
//! - [`message`]: an application message as shared by all its subscribers (`Arc`, no copies).
//! - [`session`]: one client. The per-connection task (read, handle, pump, write, keep alive),
//!   the handshake, one handler per packet type, and the outbound inflight window. Session
//!   state outlives connections for persistent sessions.
//! - [`broker`]: broker-wide shared state and operations (route, retain, take over or end a
//!   session, will messages, `$SYS`), and [`Broker`], the running server.
//! - [`policy`]: the seam every security decision goes through, the per-session decision
//!   cache, the chain of plugins, and [`policy::wasm`], the sandboxed WebAssembly plugin host
//!   (wasmtime) that runs them.
//! - [`store`]: the seam for durable state, as a journal of changes plus a snapshot to restore;
//!   [`store::DiskStore`] (redb, group commit) and [`store::MemoryStore`].
//! - [`net`]: listeners and accept loops.
//! - [`admin`]: changing plugins while the broker runs (replace, load, unload, reorder,
//!   reload), the admin HTTP API with Prometheus metrics, the watched plugin folder, and the
//!   `moat plugin` client; acting on clients (list, kick, ban).
//! - [`config`], [`cli`]: the TOML configuration (errors name file, line and key) and the
//!   command line; [`passwd`]: `moat passwd`, which writes password files; [`metrics`] and
//!   [`sys`]: counters and the Mosquitto-named `$SYS` topics.
//! - [`pending`]: a value-or-future type that keeps immediate answers allocation-free.

// `deny`, not `forbid`: the only exceptions are wasmtime's generated bindings and loading a
// compiled component from the cache (`policy::wasm`), each allowed where it happens.
#![deny(unsafe_code)]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod codec;
pub mod config;
pub mod message;
pub mod metrics;
pub mod net;
pub mod passwd;
pub mod pending;
pub mod policy;
pub mod router;
pub mod session;
pub mod store;
pub mod sys;
pub mod topic;

pub use broker::{Broker, StartError};
pub use config::Config;
