//! moat-bench: an MQTT 3.1.1/5.0 load generator, built to measure a broker rather than itself.
//!
//! It measures, per run: messages delivered per second, loss and duplicates (every message
//! carries its publisher's id and sequence number), end-to-end latency percentiles (every
//! message carries its send time; at a fixed rate, its *intended* send time), and in the
//! connections scenario the connect rate and the broker's memory per idle connection.
//!
//! Built for low overhead on one core: one tokio runtime (one thread by default), hand-written
//! PUBLISH and acknowledgement framing straight into and out of the socket buffers, batched
//! writes, and pipelined QoS 1/2 with a window. The rare packets use moat's own codec.
//!
//! Layout:
//! - [`payload`]: the message stamp and the shared clock.
//! - [`wire`]: connecting, subscribing, and the hot-path packet framing.
//! - [`transport`]: the stream under a client: TCP, or TLS with `--tls-ca`.
//! - [`publisher`], [`subscriber`]: one connection's send loop and receive loop.
//! - [`tracker`]: per-publisher sequence tracking (loss, duplicates, reordering).
//! - [`scenario`]: publish/subscribe topologies (fan-in, fan-out, many-to-many) and a run.
//! - [`connections`]: the idle connections scenario.
//! - [`report`]: results as tables and JSON; [`summarize`]: medians and ratios over runs.
//! - [`cli`]: the command line.
//!
//! The library API is what the binary and the smoke test use:
//! [`scenario::run`] with a [`PubSubConfig`], [`connections::run`] with a [`ConnConfig`].

pub mod cli;
pub mod connections;
pub mod payload;
pub mod publisher;
pub mod report;
pub mod scenario;
pub mod subscriber;
pub mod summarize;
pub mod tracker;
pub mod transport;
pub mod wire;

pub use connections::ConnConfig;
pub use report::{ConnReport, PubSubReport};
pub use scenario::PubSubConfig;
