//! Changing the chain while it serves: replace a plugin's component, load a plugin at a
//! position, unload one, reorder them, or apply a whole new configuration (SIGHUP).
//!
//! Every change follows the same steps, one change at a time:
//! 1. **Prepare, off the decision path**: read the bytes, check the configuration's `sha256`
//!    pin, compile (or load the compiled form from the cache; a compile runs on one thread at
//!    the lowest priority, so decisions keep the cores), instantiate, call `init`, fill
//!    the instance pool to `min_instances`, then a **self-check**: each authorize hook the new
//!    generation serves (and `on-connect`) is called once with a probe client
//!    (`$moat-self-check` on listener `$self-check`, topic and filter `moat/self-check`). Any
//!    answer passes; a trap, a timeout or a malformed answer fails the change. `authenticate`
//!    is not probed: it may reach a directory or a database, and a probe must not.
//! 2. **Install atomically**: one `ArcSwap` store (the slot's generation, or the whole
//!    layout), then the epoch (or the layout number) moves, so cached decisions of the old
//!    generation stop counting at once in every session. If step 1 failed nothing changed,
//!    and the caller gets the error.
//! 3. **Drain**: the change returns once every decision that was using the old generation (or
//!    layout) has ended, bounded by the hooks' timeouts. From then on every decision uses the
//!    new one.
//!
//! The broker then applies the effects on connected clients (`crate::admin`): a client whose
//! authenticating plugin is gone, or now declares another session-state version, must
//! authenticate again; live subscriptions are re-checked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::load::{checked_bytes, load_failed, load_generation, load_slot_from, read_source};
use super::{Chain, ChainError, Layout, Slot, default_chain};
use crate::codec::{ProtocolVersion, QoS};
use crate::config::{Config, PluginConfig};
use crate::message::{Message, MessageProperties};
use crate::policy::wasm::{Compiling, Failure, Generation, Hooks, PluginContext, hex};
use crate::policy::{ClientInfo, Identity, PublishKind};

/// What a change put in service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Swapped {
    pub plugin: String,
    /// The generation now serving.
    pub generation: u64,
    pub sha256: String,
    /// How long the change took, preparing and draining included.
    pub millis: u64,
    /// Whether every decision on what was replaced ended within the bound; if not, the change
    /// still happened and the stragglers end with their own timeouts.
    pub drained: bool,
}

/// Why a change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("no plugin named `{0}` in the chain")]
    NoSuchPlugin(String),
    #[error("a plugin named `{0}` is already in the chain")]
    Exists(String),
    #[error("{0}")]
    Load(#[from] ChainError),
    #[error("plugin `{plugin}` failed its self-check: {hook} {failure}")]
    SelfCheck {
        plugin: String,
        hook: &'static str,
        failure: Failure,
    },
    #[error("the new order must name every plugin of the chain exactly once ({0})")]
    Order(String),
    #[error("position {position} is past the end of the chain ({len} plugins)")]
    Position { position: usize, len: usize },
    #[error(
        "refused: listener `{listener}` is not on loopback and after this change {why}; \
         set `allow_anonymous_remote = true` in [security] if that is really wanted"
    )]
    OpenDoor { listener: String, why: &'static str },
}

/// How long the decisions on a generation may still run: its longest hook timeout, and a
/// margin for the timeout to be noticed.
fn call_bound(g: &Generation) -> Duration {
    g.limits
        .authenticate_timeout
        .max(g.limits.authorize_timeout)
        + Duration::from_millis(100)
}

/// Waits until nobody but the caller holds `old`, at most `within`. Decisions hold the
/// generation (or layout) they use in an `Arc` until they end, so the count is exact.
async fn drained<T>(old: &Arc<T>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut spins = 0;
    while Arc::strong_count(old) > 1 {
        if Instant::now() >= deadline {
            return false;
        }
        // Most calls take microseconds: look again at once a few times before sleeping.
        if spins < 16 {
            spins += 1;
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    true
}

impl Chain {
    /// Replaces the component of plugin `name` with `bytes` (`None`: read again from the
    /// file the configuration names), keeping its configuration, grants and context.
    pub async fn replace(&self, name: &str, bytes: Option<Vec<u8>>) -> Result<Swapped, SwapError> {
        let _one = self.state.changes.lock().await;
        let started = Instant::now();
        let slot = self
            .layout()
            .slots
            .iter()
            .find(|s| &*s.name == name)
            .cloned()
            .ok_or_else(|| SwapError::NoSuchPlugin(name.to_owned()))?;
        let number = slot.take_generation_number();
        let generation = prepare(&slot.spec, bytes, slot.context(), number, self.disk()).await?;
        if !self.state.guarded.is_empty() {
            let layout = self.layout();
            let candidate = Layout {
                slots: layout
                    .slots
                    .iter()
                    .map(|s| match Arc::ptr_eq(s, &slot) {
                        true => Arc::new(Slot::new(slot.spec.clone(), generation.clone())),
                        false => s.clone(),
                    })
                    .collect(),
                exhausted: layout.exhausted,
                number: layout.number,
            };
            self.keeps_doors_shut(&candidate).await?;
        }
        let old = slot.install(generation.clone());
        let drained = drained(&old, call_bound(&old)).await;
        Ok(report(&slot.name, &generation, started, drained))
    }

    /// Loads the plugin `spec` declares (from `bytes`, or its configured source) at
    /// `position` (default: last).
    pub async fn load_plugin(
        &self,
        spec: PluginConfig,
        bytes: Option<Vec<u8>>,
        position: Option<usize>,
    ) -> Result<Swapped, SwapError> {
        let _one = self.state.changes.lock().await;
        let started = Instant::now();
        let layout = self.layout();
        if layout.slots.iter().any(|s| *s.name == *spec.name) {
            return Err(SwapError::Exists(spec.name));
        }
        let len = layout.slots.len();
        let position = position.unwrap_or(len);
        if position > len {
            return Err(SwapError::Position { position, len });
        }
        let slot =
            Arc::new(load_slot_from(&spec, bytes, 1, self.disk(), Compiling::Background).await?);
        let generation = slot.generation();
        self_check(&generation).await?;
        let mut slots = layout.slots.clone();
        slots.insert(position, slot.clone());
        drop(layout);
        let drained = self.install_layout(slots, None).await?;
        Ok(report(&slot.name, &generation, started, drained))
    }

    /// Takes plugin `name` out of the chain.
    pub async fn unload(&self, name: &str) -> Result<(), SwapError> {
        let _one = self.state.changes.lock().await;
        let layout = self.layout();
        let slots: Vec<_> = layout
            .slots
            .iter()
            .filter(|s| &*s.name != name)
            .cloned()
            .collect();
        if slots.len() == layout.slots.len() {
            return Err(SwapError::NoSuchPlugin(name.to_owned()));
        }
        drop(layout);
        self.install_layout(slots, None).await?;
        tracing::info!(plugin = name, "plugin unloaded");
        Ok(())
    }

    /// Puts the plugins in the order `names` gives, which must name each of them once.
    pub async fn reorder(&self, names: &[String]) -> Result<(), SwapError> {
        let _one = self.state.changes.lock().await;
        let layout = self.layout();
        let mut slots = Vec::with_capacity(names.len());
        for name in names {
            let slot = layout
                .slots
                .iter()
                .find(|s| *s.name == **name)
                .ok_or_else(|| SwapError::Order(format!("`{name}` is not in the chain")))?;
            if slots.iter().any(|s: &Arc<Slot>| Arc::ptr_eq(s, slot)) {
                return Err(SwapError::Order(format!("`{name}` is named twice")));
            }
            slots.push(slot.clone());
        }
        if slots.len() != layout.slots.len() {
            return Err(SwapError::Order("some plugins are missing".into()));
        }
        drop(layout);
        self.install_layout(slots, None).await?;
        tracing::info!(order = ?names, "plugins reordered");
        Ok(())
    }

    /// Makes the chain what `config` declares (SIGHUP): a plugin whose declaration and bytes
    /// are unchanged keeps serving as it is; one whose declaration is unchanged but whose
    /// file changed gets a new generation (keeping its context); a changed declaration gets a
    /// fresh slot; plugins no longer declared are unloaded. Everything new is prepared and
    /// checked first: if anything fails, nothing changes.
    pub async fn apply(&self, config: &Config) -> Result<Vec<Swapped>, SwapError> {
        let _one = self.state.changes.lock().await;
        let started = Instant::now();
        let specs = if config.plugin_chain.is_empty() {
            default_chain(config)
        } else {
            config.plugin_chain.clone()
        };
        let layout = self.layout();
        let mut slots = Vec::with_capacity(specs.len());
        let mut in_place = Vec::new();
        let mut fresh = Vec::new();
        for spec in &specs {
            let current = layout.slots.iter().find(|s| *s.name == *spec.name);
            let (bytes, source_name) = read_source(spec);
            let bytes = bytes.map_err(|error| ChainError {
                plugin: spec.name.clone(),
                source_name,
                error,
            })?;
            match current {
                Some(slot)
                    if slot.spec == *spec
                        && hex(&slot.generation().hash)
                            == crate::policy::wasm::sha256_hex(&bytes) =>
                {
                    slots.push(slot.clone());
                }
                Some(slot) if slot.spec == *spec => {
                    let number = slot.take_generation_number();
                    let g = prepare(spec, Some(bytes), slot.context(), number, self.disk()).await?;
                    in_place.push((slot.clone(), g));
                    slots.push(slot.clone());
                }
                _ => {
                    let first = current.map_or(1, |s| s.take_generation_number());
                    let slot = load_slot_from(
                        spec,
                        Some(bytes),
                        first,
                        self.disk(),
                        Compiling::Background,
                    )
                    .await?;
                    let slot = Arc::new(slot);
                    self_check(&slot.generation()).await?;
                    fresh.push(slot.clone());
                    slots.push(slot);
                }
            }
        }
        let unchanged_shape = slots.len() == layout.slots.len()
            && slots
                .iter()
                .zip(&layout.slots)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && layout.exhausted == config.plugins.exhausted;
        if !self.state.guarded.is_empty() {
            let candidate = Layout {
                slots: slots
                    .iter()
                    .map(
                        |s| match in_place.iter().find(|(old, _)| Arc::ptr_eq(old, s)) {
                            Some((old, g)) => Arc::new(Slot::new(old.spec.clone(), g.clone())),
                            None => s.clone(),
                        },
                    )
                    .collect(),
                exhausted: config.plugins.exhausted,
                number: layout.number,
            };
            self.keeps_doors_shut(&candidate).await?;
        }
        drop(layout);
        let mut reports = Vec::new();
        let mut old_generations = Vec::new();
        for (slot, g) in in_place {
            old_generations.push(slot.install(g.clone()));
            reports.push((slot.name.clone(), g));
        }
        let mut drained = true;
        if !unchanged_shape {
            drained &= self
                .install_layout(slots, Some(config.plugins.exhausted))
                .await?;
        }
        for old in &old_generations {
            drained &= self::drained(old, call_bound(old)).await;
        }
        for slot in fresh {
            reports.push((slot.name.clone(), slot.generation()));
        }
        Ok(reports
            .iter()
            .map(|(name, g)| report(name, g, started, drained))
            .collect())
    }

    /// Refuses a chain that would let anonymous clients into a guarded listener.
    async fn keeps_doors_shut(&self, candidate: &Layout) -> Result<(), SwapError> {
        for listener in &self.state.guarded {
            if let Some(why) = candidate.open_door(listener).await {
                return Err(SwapError::OpenDoor {
                    listener: listener.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Installs a new layout of `slots` (and `exhausted`, if given), then waits for the
    /// decisions on the old one to end. Called with `changes` held.
    async fn install_layout(
        &self,
        slots: Vec<Arc<Slot>>,
        exhausted: Option<crate::config::Exhausted>,
    ) -> Result<bool, SwapError> {
        let current = self.layout();
        let bound = current
            .slots
            .iter()
            .map(|s| call_bound(&s.generation()))
            .sum::<Duration>()
            .max(Duration::from_millis(100));
        let next = Arc::new(Layout {
            slots,
            exhausted: exhausted.unwrap_or(current.exhausted),
            number: current.number + 1,
        });
        drop(current);
        if !self.state.guarded.is_empty() {
            self.keeps_doors_shut(&next).await?;
        }
        let old = self.state.layout.swap(next);
        Ok(drained(&old, bound).await)
    }

    fn disk(&self) -> Option<&crate::policy::wasm::DiskCache> {
        self.state.disk.as_ref()
    }
}

fn report(name: &str, g: &Generation, started: Instant, drained: bool) -> Swapped {
    let swapped = Swapped {
        plugin: name.to_owned(),
        generation: g.number,
        sha256: hex(&g.hash),
        millis: started.elapsed().as_millis() as u64,
        drained,
    };
    tracing::info!(plugin = name, generation = g.number, sha256 = %swapped.sha256,
        millis = swapped.millis, drained, "plugin generation in service");
    swapped
}

/// A new, checked generation of the plugin `spec` declares; see the module doc, step 1.
async fn prepare(
    spec: &PluginConfig,
    bytes: Option<Vec<u8>>,
    ctx: Arc<PluginContext>,
    number: u64,
    disk: Option<&crate::policy::wasm::DiskCache>,
) -> Result<Arc<Generation>, SwapError> {
    let given = bytes.is_some();
    let bytes = checked_bytes(spec, bytes)?;
    let generation = load_generation(spec, number, &bytes, ctx, disk, Compiling::Background)
        .await
        .map_err(load_failed(spec, given))?;
    self_check(&generation).await?;
    Ok(generation)
}

/// Calls each authorize hook `g` serves, and `on-connect`, once with a probe; see the module
/// doc.
async fn self_check(g: &Generation) -> Result<(), SwapError> {
    const TOPIC: &str = "moat/self-check";
    let client = ClientInfo {
        client_id: ByteString::from_static("$moat-self-check"),
        username: None,
        remote_addr: "0.0.0.0:0".parse().expect("a literal address"),
        listener: Arc::from("$self-check"),
        protocol: ProtocolVersion::V5,
        tls: None,
    };
    let identity = Identity {
        principal: ByteString::from_static("$moat-self-check"),
        ..Identity::default()
    };
    let failed = |hook: &'static str| {
        move |failure: Failure| SwapError::SelfCheck {
            plugin: g.name.to_string(),
            hook,
            failure,
        }
    };
    let hooks = g.manifest.hooks;
    if hooks.contains(Hooks::ON_CONNECT) {
        g.on_connect(&client).await.map_err(failed("on-connect"))?;
    }
    if hooks.contains(Hooks::AUTHORIZE_PUBLISH) {
        let message = Message {
            topic: ByteString::from_static(TOPIC),
            payload: bytes::Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            received: Instant::now(),
            expiry: None,
            publisher: Some(client.client_id.clone()),
        };
        g.authorize_publish(&client, &identity, PublishKind::Message, &message)
            .await
            .map_err(failed("authorize-publish"))?;
    }
    if hooks.contains(Hooks::AUTHORIZE_SUBSCRIBE) {
        g.authorize_subscribe(&client, &identity, TOPIC, None, QoS::AtMostOnce)
            .await
            .map_err(failed("authorize-subscribe"))?;
    }
    if hooks.contains(Hooks::AUTHORIZE_DELIVER) {
        g.authorize_deliver(&client, &identity, &ByteString::from_static(TOPIC))
            .await
            .map_err(failed("authorize-deliver"))?;
    }
    Ok(())
}
