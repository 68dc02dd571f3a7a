//! The [`Plugin`] trait and the [`export_plugin!`](crate::export_plugin) macro that turns a
//! type implementing it into the component's exports.
//!
//! The broker creates several instances of a plugin (one per concurrent call) and calls `init`
//! on each with the same configuration, so a plugin must not expect to see every call: state
//! that must be shared between calls of different instances belongs in the `kv` capability or
//! in the session state of an identity.

use serde::de::DeserializeOwned;

use crate::{
    AuthOutcome, Client, Credentials, Hooks, Identity, Manifest, Publish, SubscribeVerdict,
    Subscription, Verdict,
};

/// A policy plugin. Implement the hooks named in [`Plugin::HOOKS`]; the others are never
/// called by the broker (their defaults answer "next").
pub trait Plugin: Sized + 'static {
    /// The plugin's `config` table from the broker's configuration.
    type Config: DeserializeOwned;
    /// What the plugin keeps per authenticated session (see [`crate::state`]); `()` for none.
    type State: serde::Serialize + DeserializeOwned;

    /// The hooks the broker calls.
    const HOOKS: Hooks;
    /// Pass payloads to `authorize_publish` (its decisions are then never cached).
    const NEEDS_PAYLOAD: bool = false;
    /// The format version of [`Plugin::State`]; bump it when the format changes.
    const STATE_VERSION: u32 = 0;

    /// Builds the plugin from its configuration; an error stops it from loading.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What the plugin tells the broker about itself; by default the constants above.
    fn manifest(&self) -> Manifest {
        Manifest {
            hooks: Self::HOOKS,
            needs_payload: Self::NEEDS_PAYLOAD,
            session_state_version: Self::STATE_VERSION,
        }
    }

    fn on_connect(&self, _client: &Client) -> Verdict {
        Verdict::Next
    }

    fn authenticate(&self, _client: &Client, _credentials: &Credentials) -> AuthOutcome {
        AuthOutcome::Next
    }

    fn continue_auth(&self, _client: &Client, _state: &[u8], _data: &[u8]) -> AuthOutcome {
        AuthOutcome::Next
    }

    fn authorize_publish(&self, _client: &Client, _identity: &Identity, _msg: &Publish) -> Verdict {
        Verdict::Next
    }

    fn authorize_subscribe(
        &self,
        _client: &Client,
        _identity: &Identity,
        _subscription: &Subscription,
    ) -> SubscribeVerdict {
        SubscribeVerdict::Next
    }

    fn authorize_deliver(&self, _client: &Client, _identity: &Identity, _topic: &str) -> Verdict {
        Verdict::Next
    }
}

/// Exports a type implementing [`Plugin`] as the component's `moat:policy/hooks`.
///
/// ```ignore
/// struct MyPolicy { /* ... */ }
/// impl moat_plugin_sdk::Plugin for MyPolicy { /* ... */ }
/// moat_plugin_sdk::export_plugin!(MyPolicy);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            use $crate::bindings::exports::moat::policy::hooks as __hooks;

            ::std::thread_local! {
                static __MOAT_PLUGIN: ::std::cell::OnceCell<$plugin> =
                    const { ::std::cell::OnceCell::new() };
            }

            fn __with<R>(f: impl FnOnce(&$plugin) -> R, uninitialised: R) -> R {
                __MOAT_PLUGIN.with(|cell| match cell.get() {
                    Some(p) => f(p),
                    None => uninitialised,
                })
            }

            struct __MoatExports;

            impl __hooks::Guest for __MoatExports {
                fn init(config: String) -> Result<$crate::Manifest, String> {
                    let plugin = $crate::__private::init::<$plugin>(&config)?;
                    let manifest = $crate::Plugin::manifest(&plugin);
                    __MOAT_PLUGIN.with(|cell| {
                        cell.set(plugin)
                            .map_err(|_| String::from("init was called twice"))
                    })?;
                    Ok(manifest)
                }

                fn on_connect(client: $crate::Client) -> $crate::Verdict {
                    __with(
                        |p| p.on_connect(&client),
                        $crate::__private::uninitialised(),
                    )
                }

                fn authenticate(
                    client: $crate::Client,
                    credentials: $crate::Credentials,
                ) -> $crate::AuthOutcome {
                    __with(
                        |p| p.authenticate(&client, &credentials),
                        $crate::AuthOutcome::Deny($crate::__private::uninitialised_denial()),
                    )
                }

                fn continue_auth(
                    client: $crate::Client,
                    state: Vec<u8>,
                    data: Vec<u8>,
                ) -> $crate::AuthOutcome {
                    __with(
                        |p| p.continue_auth(&client, &state, &data),
                        $crate::AuthOutcome::Deny($crate::__private::uninitialised_denial()),
                    )
                }

                fn authorize_publish(
                    client: $crate::Client,
                    identity: $crate::Identity,
                    message: $crate::Publish,
                ) -> $crate::Verdict {
                    __with(
                        |p| p.authorize_publish(&client, &identity, &message),
                        $crate::__private::uninitialised(),
                    )
                }

                fn authorize_subscribe(
                    client: $crate::Client,
                    identity: $crate::Identity,
                    subscription: $crate::Subscription,
                ) -> $crate::SubscribeVerdict {
                    __with(
                        |p| p.authorize_subscribe(&client, &identity, &subscription),
                        $crate::SubscribeVerdict::Deny($crate::__private::uninitialised_denial()),
                    )
                }

                fn authorize_deliver(
                    client: $crate::Client,
                    identity: $crate::Identity,
                    topic: String,
                ) -> $crate::Verdict {
                    __with(
                        |p| p.authorize_deliver(&client, &identity, &topic),
                        $crate::__private::uninitialised(),
                    )
                }
            }

    $crate::bindings::export!(__MoatExports with_types_in $crate::bindings);
        };
    };
}

/// What the macro expands to calls; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::Plugin;
    use crate::{Denial, Reason, Verdict};

    pub fn init<P: Plugin>(config: &str) -> Result<P, String> {
        let config: P::Config = if config.trim().is_empty() {
            serde_json::from_str("{}")
        } else {
            serde_json::from_str(config)
        }
        .map_err(|e| format!("invalid configuration: {e}"))?;
        P::new(config)
    }

    /// A hook called before `init` succeeded: the host never does this, but if it did the
    /// answer must fail closed.
    pub fn uninitialised_denial() -> Denial {
        Denial {
            reason: Reason::Unspecified,
            message: Some("plugin not initialised".into()),
        }
    }

    pub fn uninitialised() -> Verdict {
        Verdict::Deny(uninitialised_denial())
    }
}
