//! The operator's side of a running broker: changing the plugins while it serves, and looking
//! at and acting on its clients.
//!
//! [`Control`] is the one place these operations live; each trigger is a thin front on it:
//! - `http`: the admin HTTP API (`[admin]`), with Prometheus `/metrics` (`metrics`);
//! - `watch`: the watched plugin folder (`plugins.watch_dir`);
//! - SIGHUP (`crate::cli`), which calls [`Control::reload`];
//! - the `moat plugin ...` command (`client`), which talks to the HTTP API.
//!
//! After every change of the chain, the broker applies one rule to connected clients
//! ([`Control::after_change`]):
//! - a client authenticated by a plugin that is no longer in the chain, or whose plugin now
//!   declares another session-state version than the one its identity was made with, is
//!   disconnected (MQTT 5: DISCONNECT 0x98 Administrative action). Its session stays: it
//!   reconnects and authenticates through the chain as it now is. (The broker never keeps a
//!   client's password, and MQTT 5 lets only the client start a re-authentication, so
//!   "re-authenticate" can only mean "connect again".)
//! - every other connection re-checks its live subscriptions (`plugins.recheck_subscriptions`,
//!   see `crate::session`).
//!
//! A client whose handshake was under way during the change gets the same rule once its
//! session is attached ([`PolicyChanges`]): its subscriptions, restored from a persistent
//! session, are re-checked under the new chain.
//!
//! Grants come only from the configuration: a plugin replaced through the API or the folder
//! keeps the grants, limits and `[plugin.config]` of its declaration; a plugin loaded through
//! the API that the configuration does not declare gets no grants.

mod client;
mod http;
mod metrics;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock, Weak};

use bytestring::ByteString;
use parking_lot::Mutex;
use serde::Serialize;

use crate::broker::Shared;
use crate::codec::{ProtocolVersion, ReasonCode};
use crate::config::{Config, ConfigError, HookName, OnFailure, PluginConfig};
use crate::policy::chain::{Chain, SwapError, Swapped};
use crate::policy::wasm::hex;
use crate::session::Session;
use crate::store::{Change, StoreError};

pub use client::{AdminClient, PluginAction, run_plugin_command};
pub use http::{AdminServer, serve as serve_http};
pub use watch::{WatchError, watch};

/// Changes of the chain, counted, for the clients that were between CONNECT and an attached
/// session when one happened.
///
/// [`Control::after_change`] applies the rule to the clients connected at that moment; a
/// client still in its handshake is not among them, yet it may have been authenticated by the
/// old chain and may resume a persistent session whose subscriptions the new chain never saw.
/// So each handshake notes the count before it asks the policy anything
/// ([`PolicyChanges::now`]), and once its session is attached (and so visible to any later
/// `after_change`) looks again ([`PolicyChanges::settle_admitted`]): if the count moved, it
/// applies the rule to itself (authenticate again, or re-check its subscriptions). Either the
/// change counted before that second look and the connection applies the rule, or after it
/// and `after_change` finds the connection attached: no gap.
#[derive(Default)]
pub struct PolicyChanges {
    count: AtomicU64,
    control: OnceLock<Weak<Control>>,
}

impl PolicyChanges {
    /// The number of changes so far.
    pub(crate) fn now(&self) -> u64 {
        // Pairs with the fence in `bump`: the attach written before this read is seen by an
        // `after_change` that counts after it.
        fence(Ordering::SeqCst);
        self.count.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Called by a connection once its session is attached, with what [`PolicyChanges::now`]
    /// said before its handshake asked the policy anything.
    pub(crate) fn settle_admitted(&self, seen: u64, session: &Arc<Session>) {
        if self.now() == seen {
            return;
        }
        if let Some(control) = self.control.get().and_then(Weak::upgrade) {
            tracing::debug!("the plugins changed during a handshake; applying the change to it");
            control.apply_rule(session);
        }
    }
}

/// The parts of `new` that differ from the `running` configuration and that a reload does not
/// apply: everything but the plugin chain (`[[plugin]]`) and `plugins.exhausted`. (SIGHUP also
/// reloads the TLS listeners' certificate files, `crate::net`, but not their paths.)
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut plugins = new.plugins.clone();
    plugins.exhausted = running.plugins.exhausted;
    [
        ("[[listener]]", running.listeners != new.listeners),
        ("[limits]", running.limits != new.limits),
        ("[sys]", running.sys != new.sys),
        ("[log]", running.log != new.log),
        ("[server]", running.server != new.server),
        ("[storage]", running.storage != new.storage),
        ("[security]", running.security != new.security),
        ("[plugins] (but `exhausted`)", running.plugins != plugins),
        ("[admin]", running.admin != new.admin),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Where the configuration came from, so that it can be read again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The configuration file (`None`: built-in defaults, nothing to reread).
    pub path: Option<PathBuf>,
    /// `--listen` overrides applied on top.
    pub listen: Vec<SocketAddr>,
}

/// Why a reload did not happen. The running chain keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the broker runs on built-in defaults: there is no configuration file to reread")]
    NoFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Swap(#[from] SwapError),
}

/// A request to load a plugin through the API.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadRequest {
    /// A component file to read (else the body's bytes, else the configuration's
    /// declaration).
    pub path: Option<PathBuf>,
    /// Position in the chain, 0 first; default: last.
    pub position: Option<usize>,
    /// For a plugin the configuration does not declare: its `[plugin.config]`, hooks,
    /// listeners and failure mode.
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    pub hooks: Option<Vec<HookName>>,
    pub listeners: Option<Vec<String>>,
    pub on_failure: Option<OnFailure>,
}

/// One plugin as the API lists it (never its configuration, which may hold secrets).
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub position: usize,
    pub generation: u64,
    pub sha256: String,
    pub hooks: Vec<&'static str>,
    pub listeners: Option<Vec<String>>,
    pub session_state_version: u32,
    pub needs_payload: bool,
    pub calls: u64,
    pub traps: u64,
    pub deadline_hits: u64,
    pub malformed: u64,
    pub instances_created: u64,
    pub in_flight: u64,
    pub counters: Vec<(String, u64)>,
}

/// One connected client as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub client_id: String,
    pub principal: String,
    pub authenticated_by: Option<String>,
    pub remote_addr: String,
    pub listener: String,
    pub protocol: &'static str,
}

/// The operations behind every trigger; see the module doc.
pub struct Control {
    shared: Arc<Shared>,
    chain: Chain,
    source: Mutex<ConfigSource>,
    /// The configuration the chain follows now (what `load` by name and `reload` start from).
    config: Mutex<Config>,
}

impl Control {
    pub fn new(shared: Arc<Shared>, chain: Chain) -> Arc<Control> {
        let config = shared.config.clone();
        let control = Arc::new(Control {
            shared,
            chain,
            source: Mutex::new(ConfigSource::default()),
            config: Mutex::new(config),
        });
        let _ = control
            .shared
            .policy_changes
            .control
            .set(Arc::downgrade(&control));
        // Changes the chain makes by itself (a granted file changed) reach clients too.
        let weak = Arc::downgrade(&control);
        control.chain.on_change(move || {
            if let Some(c) = weak.upgrade() {
                c.after_change();
            }
        });
        control
    }

    /// Says where the configuration came from, for [`Control::reload`].
    pub fn set_source(&self, source: ConfigSource) {
        *self.source.lock() = source;
    }

    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Replaces plugin `name`'s component with `bytes` (`None`: its file, read again).
    pub async fn replace(&self, name: &str, bytes: Option<Vec<u8>>) -> Result<Swapped, SwapError> {
        let r = self.chain.replace(name, bytes).await;
        self.settle("replace", name, &r);
        r
    }

    /// Loads plugin `name`: the configuration's declaration of it if there is one, else one
    /// built from `request`; from `bytes`, else `request.path`, else the declaration's file.
    pub async fn load(
        &self,
        name: &str,
        request: LoadRequest,
        bytes: Option<Vec<u8>>,
    ) -> Result<Swapped, SwapError> {
        let declared = self
            .config
            .lock()
            .plugin_chain
            .iter()
            .find(|p| p.name == name)
            .cloned();
        let mut spec = declared.unwrap_or_else(|| PluginConfig {
            name: name.to_owned(),
            hooks: request.hooks.clone(),
            listeners: request.listeners.clone(),
            on_failure: request.on_failure.unwrap_or_default(),
            config: request.config.clone().unwrap_or_default(),
            ..PluginConfig::default()
        });
        if let Some(path) = &request.path {
            spec.wasm = Some(path.clone());
            spec.bundled = None;
        }
        let r = self.chain.load_plugin(spec, bytes, request.position).await;
        self.settle("load", name, &r);
        r
    }

    /// Takes plugin `name` out of the chain.
    pub async fn unload(&self, name: &str) -> Result<(), SwapError> {
        let r = self.chain.unload(name).await;
        self.settle("unload", name, &r);
        r
    }

    /// Puts the plugins in the order `names` gives.
    pub async fn reorder(&self, names: &[String]) -> Result<(), SwapError> {
        let r = self.chain.reorder(names).await;
        self.settle("reorder", &names.join(","), &r);
        r
    }

    /// Reads the configuration file again and makes the chain what it declares (plugins,
    /// their configurations and grants, `plugins.exhausted`). A configuration that does not
    /// parse, or a plugin that does not load, leaves everything as it was. Other settings
    /// ([`needs_restart`]) need a restart; a change to them is logged.
    pub async fn reload(&self) -> Result<Vec<Swapped>, ReloadError> {
        let source = self.source.lock().clone();
        let path = source.path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut config = Config::load(path)?;
        config.apply_listen_overrides(&source.listen);
        let swapped = self.chain.apply(&config).await?;
        let later = needs_restart(&self.shared.config, &config);
        if !later.is_empty() {
            tracing::warn!(sections = ?later,
                "reload: these settings changed too; they take effect at the next start");
        }
        *self.config.lock() = config;
        self.after_change();
        Ok(swapped)
    }

    fn settle<T>(&self, what: &str, subject: &str, r: &Result<T, SwapError>) {
        match r {
            Ok(_) => self.after_change(),
            Err(e) => tracing::warn!(operation = what, subject, error = %e,
                "plugin change refused; the chain is unchanged"),
        }
    }

    /// Applies the rule of the module doc to every connected client.
    pub fn after_change(&self) {
        // Counted first: a connection admitted meanwhile either is found below or sees the
        // new count once attached, and applies the rule itself (`PolicyChanges`).
        self.shared.policy_changes.bump();
        let sessions: Vec<_> = self.shared.sessions.lock().values().cloned().collect();
        let (mut disconnected, mut rechecked) = (0, 0);
        for session in sessions {
            match self.apply_rule(&session) {
                Some(true) => disconnected += 1,
                Some(false) => rechecked += 1,
                None => {}
            }
        }
        tracing::debug!(disconnected, rechecked, "plugin change applied to clients");
    }

    /// The rule of the module doc for one session: `Some(true)` if its client was sent to
    /// authenticate again, `Some(false)` if asked to re-check its subscriptions, `None` if no
    /// client is connected to it.
    fn apply_rule(&self, session: &Arc<Session>) -> Option<bool> {
        let who = session.connected()?;
        let layout = self.chain.layout();
        let identity = &who.identity;
        let stale = identity.authenticated_by.as_ref().and_then(|by| {
            match layout.slots.iter().find(|s| s.name == *by) {
                None => Some("its authenticating plugin was unloaded"),
                Some(slot)
                    if slot.generation().manifest.session_state_version
                        != identity.state_version =>
                {
                    Some("its authenticating plugin changed its session-state version")
                }
                Some(_) => None,
            }
        });
        match stale {
            Some(why) => {
                tracing::info!(client = %who.client.client_id, why,
                    "client must authenticate again; disconnecting it");
                session.disconnect(ReasonCode::ADMINISTRATIVE_ACTION);
                Some(true)
            }
            None => {
                session.request_recheck();
                Some(false)
            }
        }
    }

    /// The plugins, in order, with their generations and counters.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        self.chain
            .slots()
            .iter()
            .enumerate()
            .map(|(position, slot)| {
                let g = slot.generation();
                PluginStatus {
                    name: slot.name.to_string(),
                    position,
                    generation: g.number,
                    sha256: hex(&g.hash),
                    hooks: slot.hooks().names(),
                    listeners: slot.spec.listeners.clone(),
                    session_state_version: g.manifest.session_state_version,
                    needs_payload: g.manifest.needs_payload,
                    calls: g.stats.calls.load(Relaxed),
                    traps: g.stats.traps.load(Relaxed),
                    deadline_hits: g.stats.deadline_hits.load(Relaxed),
                    malformed: g.stats.malformed.load(Relaxed),
                    instances_created: g.stats.instances_created.load(Relaxed),
                    in_flight: g.stats.in_flight.load(Relaxed),
                    counters: g.ctx.counters(),
                }
            })
            .collect()
    }

    /// The connected clients.
    pub fn clients(&self) -> Vec<ClientStatus> {
        let sessions: Vec<_> = self.shared.sessions.lock().values().cloned().collect();
        let mut list: Vec<ClientStatus> = sessions
            .iter()
            .filter_map(|s| s.connected())
            .map(|c| ClientStatus {
                client_id: c.client.client_id.to_string(),
                principal: c.identity.principal.to_string(),
                authenticated_by: c.identity.authenticated_by.as_deref().map(str::to_owned),
                remote_addr: c.client.remote_addr.to_string(),
                listener: c.client.listener.to_string(),
                protocol: match c.client.protocol {
                    ProtocolVersion::V311 => "3.1.1",
                    ProtocolVersion::V5 => "5",
                },
            })
            .collect();
        list.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        list
    }

    /// Disconnects client `client_id` (MQTT 5: 0x98 Administrative action); its session
    /// stays. False if it is not connected.
    pub fn kick(&self, client_id: &str) -> bool {
        let session = self.shared.sessions.lock().get(client_id).cloned();
        let kicked = session.is_some_and(|s| s.disconnect(ReasonCode::ADMINISTRATIVE_ACTION));
        if kicked {
            tracing::info!(client = client_id, "client disconnected by the operator");
        }
        kicked
    }

    /// Sends the connected clients (those `plugin` authenticated, or all) to authenticate
    /// again: they are disconnected with 0x98 and keep their sessions. How many were.
    pub fn reauthenticate(&self, plugin: Option<&str>) -> usize {
        let sessions: Vec<_> = self.shared.sessions.lock().values().cloned().collect();
        let mut n = 0;
        for session in sessions {
            let Some(who) = session.connected() else {
                continue;
            };
            if plugin.is_none_or(|p| who.identity.authenticated_by.as_deref() == Some(p))
                && session.disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
            {
                n += 1;
            }
        }
        tracing::info!(plugin, clients = n, "clients sent to authenticate again");
        n
    }

    /// Bans client id `client_id` (CONNECT refused with 0x8A Banned until unbanned, restarts
    /// included) and disconnects it if connected (MQTT 5: 0x98 Administrative action; 0x8A is
    /// not a DISCONNECT reason code, MQTT-3.14.2-1). The ban takes effect at once; the error
    /// says that the store could not keep it, so it would not outlive a restart.
    pub async fn ban(&self, client_id: &str) -> Result<(), StoreError> {
        let id = ByteString::from(client_id);
        let stored = {
            // The store is told under the lock, so it keeps bans and unbans in the order
            // they took effect.
            let mut bans = self.shared.bans.write();
            bans.insert(id.clone());
            self.shared.store.apply(Change::Banned(id))
        };
        tracing::info!(client = client_id, "client id banned by the operator");
        let session = self.shared.sessions.lock().get(client_id).cloned();
        if let Some(s) = session {
            s.disconnect(ReasonCode::ADMINISTRATIVE_ACTION);
        }
        stored.get().await
    }

    /// Lifts a ban; false if there was none. An error says the store still holds the ban
    /// (it is lifted until the next start).
    pub async fn unban(&self, client_id: &str) -> Result<bool, StoreError> {
        let stored = {
            let mut bans = self.shared.bans.write();
            if !bans.remove(client_id) {
                return Ok(false);
            }
            self.shared
                .store
                .apply(Change::Unbanned(ByteString::from(client_id)))
        };
        tracing::info!(client = client_id, "ban lifted by the operator");
        stored.get().await.map(|()| true)
    }

    /// The banned client ids.
    pub fn bans(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .shared
            .bans
            .read()
            .iter()
            .map(|b| b.to_string())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_names_the_settings_that_wait_for_a_restart() {
        let running = Config::default();
        let mut new = running.clone();
        new.plugins.exhausted = crate::config::Exhausted::Allow;
        new.plugin_chain.push(PluginConfig::default());
        assert!(
            needs_restart(&running, &new).is_empty(),
            "applied by a reload"
        );
        new.limits.max_inflight = 7;
        new.plugins.watch_interval_ms += 1;
        assert_eq!(
            needs_restart(&running, &new),
            ["[limits]", "[plugins] (but `exhausted`)"]
        );
    }
}
