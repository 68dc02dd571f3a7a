//! The Rust SDK for moat policy plugins.
//!
//! A plugin is a WebAssembly component that exports the `moat:policy/hooks` interface of the
//! WIT package in `wit/`. With this crate it is a type implementing [`Plugin`] and one macro
//! call; build it with `cargo build --target wasm32-wasip2 --release` and point the broker's
//! `[[plugin]] wasm = "..."` at the `.wasm` file.
//!
//! ```ignore
//! use moat_plugin_sdk::{Hooks, Plugin, Verdict, topic};
//!
//! struct OwnTopics;
//!
//! impl Plugin for OwnTopics {
//!     type Config = ();
//!     type State = ();
//!     const HOOKS: Hooks = Hooks::AUTHORIZE_PUBLISH;
//!
//!     fn new(_: ()) -> Result<Self, String> { Ok(OwnTopics) }
//!
//!     fn authorize_publish(&self, c: &Client, _: &Identity, m: &Publish) -> Verdict {
//!         let own = topic::expand_pattern("clients/%c/#", |k| (k == "client_id").then_some(&*c.client_id));
//!         match own {
//!             Some(p) if topic::matches(&p, &m.topic) => moat_plugin_sdk::allow(60),
//!             _ => Verdict::Next,
//!         }
//!     }
//! }
//!
//! moat_plugin_sdk::export_plugin!(OwnTopics);
//! ```
//!
//! # Layout
//! - [`bindings`]: what `wit-bindgen` generates from the WIT package; the records and variants
//!   are re-exported here under their WIT names ([`Client`], [`Verdict`], [`Identity`]...), and
//!   the host's imports under [`host`], [`kv`], [`files`], [`password`], [`sql`], [`ldap`] and
//!   [`http`].
//! - [`Plugin`] and [`export_plugin!`]: the trait a plugin implements and the macro that
//!   exports it. The configuration arrives as JSON and is deserialised into
//!   [`Plugin::Config`] with serde.
//! - [`state`]: typed per-session state, postcard-encoded behind a format version.
//! - [`topic`]: MQTT topic rules shared with the broker (matching, validation), the subset
//!   test for filters and placeholder expansion that refuses injection.
//! - [`acl`]: a model of topic rules (read, write, readwrite, deny; `%u` and `%c`) and the
//!   decisions taken from it, shared by the bundled static-acl and sql plugins.
//! - `scram` (feature `scram`): SCRAM-SHA-256 as MQTT 5 enhanced authentication.
//! - [`log`](mod@log): logging into the broker's log.
//! - [`ldap_text`]: escaping a user name into an LDAP DN (RFC 4514) or filter (RFC 4515), for
//!   plugins that use the `ldap` capability.
//!
//! Testing a plugin without a broker: with the `harness` feature (in `dev-dependencies`),
//! [`harness`] builds the plugin crate into a component and loads it with the broker's own
//! engine and sandbox, to call its hooks directly (see `docs/writing-plugins.md`).

pub mod acl;
pub mod bindings;
#[cfg(all(feature = "harness", not(target_family = "wasm")))]
pub mod harness;
pub mod ldap_text;
pub mod log;
mod plugin;
#[cfg(feature = "scram")]
pub mod scram;
pub mod state;

pub use plugin::{__private, Plugin};

pub use bindings::moat::policy::types::{
    AuthOutcome, Authenticated, CapabilityError, Challenge, Client, Credentials, Denial, Grant,
    Hooks, Identity, Manifest, Protocol, Publish, PublishKind, Reason, SubscribeGrant,
    SubscribeVerdict, Subscription, TlsInfo, Verdict,
};
pub use bindings::moat::policy::{files, host, http, kv, ldap, password, sql};

/// MQTT topic rules, the same code the broker runs.
pub mod topic {
    pub use moat_topic::*;
}

/// Allows, letting the broker reuse the answer for `cache_seconds`.
pub fn allow(cache_seconds: u32) -> Verdict {
    Verdict::Allow(Grant { cache_seconds })
}

/// Refuses with `reason`; `message` goes to the broker's log (and an MQTT 5 client's reason
/// string when it asked for one).
pub fn deny(reason: Reason, message: impl Into<String>) -> Verdict {
    Verdict::Deny(Denial {
        reason,
        message: Some(message.into()),
    })
}

/// Lets a client in as `identity`.
pub fn authenticated(identity: Identity) -> AuthOutcome {
    AuthOutcome::Allow(Authenticated {
        identity,
        auth_data: None,
    })
}

/// The answer to a password login once the broker checked the password
/// (`password::verify`): `Ok(true)` lets the client in as `identity()`; a wrong password of a
/// `known` user, or an unknown user unless `unknown_next`, gets 0x86 Bad user name or
/// password; an unknown user with `unknown_next` goes to the next plugin; a check that failed
/// (a hash over the broker's cost limits, say) gets 0x88 Server unavailable and a log line
/// naming `user`.
pub fn password_login(
    checked: Result<bool, CapabilityError>,
    user: &str,
    known: bool,
    unknown_next: bool,
    identity: impl FnOnce() -> Identity,
) -> AuthOutcome {
    let deny = |reason, message: &str| {
        AuthOutcome::Deny(Denial {
            reason,
            message: Some(message.to_owned()),
        })
    };
    match checked {
        Ok(true) => authenticated(identity()),
        Ok(false) if known || !unknown_next => {
            deny(Reason::BadCredentials, "bad user name or password")
        }
        Ok(false) => AuthOutcome::Next,
        Err(e) => {
            warn!("checking the password of {user:?} failed: {e:?}");
            deny(Reason::ServerUnavailable, "password check failed")
        }
    }
}

/// Refuses with "not authorized" and no message.
pub fn not_authorized() -> Verdict {
    Verdict::Deny(Denial {
        reason: Reason::NotAuthorized,
        message: None,
    })
}
