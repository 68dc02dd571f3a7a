//! End-to-end tests: the real broker, on a loopback port, driven by real MQTT clients.
//!
//! One test binary (so the broker is linked once) with one module per area. Each test starts
//! its own broker on an ephemeral port, so tests run in parallel without sharing state.
//! Clients: `rumqttc` (v4 = MQTT 3.1.1, v5), a raw client on moat's own codec for
//! byte-exact protocol checks (malformed packets, reason codes), the `mosquitto_pub` and
//! `mosquitto_sub` commands, and the Eclipse Paho Python client. Policy plugins: Rust test
//! plugins built by `build.rs`, and the Python and JavaScript examples built by `guests`.
//!
//! Normative statement ids (MQTT-x.y.z-n) name the rule each test checks; docs/conformance.md
//! maps them back to the tests.

mod backpressure;
mod bans;
mod broker_process;
mod browser;
mod certs;
mod conformance;
mod connect;
mod durable;
mod enhanced_auth;
mod guests;
mod harness;
mod hotswap;
mod hotswap_cli;
mod hotswap_handshake;
mod interop;
mod jwt;
mod ldap;
mod limits;
mod malformed;
mod plugin_faults;
mod plugin_runtime;
mod plugin_security;
mod plugins;
mod policy;
mod polyglot;
mod properties;
mod proxy;
mod qos;
mod retained;
mod routing;
mod scram;
mod sdk_harness;
mod sql;
mod static_acl;
mod static_acl_broker;
mod sys;
mod tls;
mod websocket;
mod will;
