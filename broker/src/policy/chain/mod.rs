//! The chain: the configured plugins in order, asked one after the other until one decides.
//!
//! For each question the chain asks the plugins that serve that hook (their manifest, narrowed
//! by the `hooks` of their configuration) for clients of that listener (`listeners`), in
//! configuration order. The first allow or deny wins; `next` falls through; a chain that runs
//! out answers `plugins.exhausted` (deny by default). `on-connect` is only a pre-check: when no
//! plugin decides, the client goes on to authentication.
//!
//! A plugin that fails (trap, CPU budget, timeout, memory cap, malformed answer) fails closed:
//! its `on_failure` is `deny` (the default; the client gets 0x88 Server unavailable at connect,
//! 0x80 Unspecified error for a publish or subscribe) or `next`, never allow. The failure is
//! logged with the plugin's name and counted, at most one log line a second per plugin.
//!
//! Every allow carries a [`Stamp`]: the epoch of each plugin that took part (including those
//! that said `next`, since a changed `next` can change the outcome) and the chain's layout.
//! A plugin's epoch moves when it calls `host.invalidate` or is replaced, which makes every
//! cached decision it took part in stale at once ([`Policy::is_current`]).
//!
//! An enhanced-authentication challenge belongs to the plugin that issued it: the state the
//! broker keeps is prefixed with that plugin's position and epoch, and `continue-auth` goes to
//! it alone.
//!
//! The list of slots is itself swapped whole ([`Layout`], behind an `ArcSwap`): loading,
//! unloading or reordering plugins installs a new layout with a new number, which every stamp
//! carries, so decisions taken under the old order stop counting. A decision holds the layout
//! it started with until it ends; nothing on the decision path takes a lock.
//!
//! Layout: this file holds the chain and its answers; `slot` one position in it (the plugin's
//! current generation, its epoch, its failure log); `load` builds a chain from the
//! configuration (the default chain included); `swap` changes it while it serves (replace,
//! load, unload, reorder, apply a new configuration); `watch` renews a plugin when a file
//! granted to it changes.

mod load;
mod slot;
mod swap;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, Guard};
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wasm::calls::{Decision, SubscribeDecision};
use super::wasm::{Answer, AuthStep, DiskCache, Hooks, hex};
use super::{
    AuthOutcome, ClientInfo, Credentials, Denial, Grant, Identity, Policy, PublishKind, Stamp,
    SubscribeVerdict, Verdict,
};
use crate::codec::{QoS, ReasonCode};
use crate::config::{Config, Exhausted, OnFailure};
use crate::message::Message;
use crate::pending::Pending;
use crate::topic;

pub use load::{ChainError, default_chain};
use load::{load_slot, open_cache};
pub use slot::Slot;
pub use swap::{SwapError, Swapped};

/// The stamp marks that carry the chain's layout version, one per cached hook (so that a cache
/// hit can be counted for its hook): the first mark of every stamp. Plugin positions are
/// far below.
const LAYOUT_MARK_PUBLISH: u32 = u32::MAX;
const LAYOUT_MARK_DELIVER: u32 = u32::MAX - 1;

/// What the broker puts before a plugin's challenge state: the plugin's position (u32), its
/// epoch and the layout's number (u64 each), so the answer goes to the same plugin, unchanged.
const CHALLENGE_PREFIX: usize = 20;

/// The slots in order and what the chain answers when they all pass: one version of the
/// chain's shape, replaced whole when plugins are loaded, unloaded or reordered.
pub struct Layout {
    pub slots: Vec<Arc<Slot>>,
    exhausted: Exhausted,
    /// Moves with every new layout; part of every stamp.
    number: u64,
}

struct State {
    layout: ArcSwap<Layout>,
    /// The compiled-component cache, for plugins loaded later.
    disk: Option<DiskCache>,
    /// Listeners no change may open to anonymous clients (see [`Chain::open_door`]).
    guarded: Vec<String>,
    /// Held by whoever changes the chain, so changes happen one at a time (never by a
    /// decision).
    changes: tokio::sync::Mutex<()>,
    /// Told after a change the chain made by itself (a granted file changed), so that the
    /// broker applies it to connected clients as it does its own (`crate::admin`).
    on_change: parking_lot::Mutex<Option<ChangeListener>>,
}

/// See [`Chain::on_change`].
type ChangeListener = Arc<dyn Fn() + Send + Sync>;

/// The broker's policy: a chain of Wasm plugins. Cheap to clone; clones share the chain, so a
/// change made through one is seen by all.
#[derive(Clone)]
pub struct Chain {
    state: Arc<State>,
}

impl Chain {
    /// Loads every plugin of the configuration (or the default chain), in order. Fails on the
    /// first plugin that cannot be loaded, naming it.
    pub async fn load(config: &Config) -> Result<Chain, ChainError> {
        let disk = open_cache(config)?;
        let slots = load_slots(config, disk.as_ref()).await?;
        for slot in &slots {
            let g = slot.generation();
            tracing::info!(plugin = %slot.name, hooks = ?slot.hooks().names(),
                sha256 = %hex(&g.hash), "plugin loaded");
        }
        let chain = Chain {
            state: Arc::new(State {
                layout: ArcSwap::from_pointee(Layout {
                    slots,
                    exhausted: config.plugins.exhausted,
                    number: 0,
                }),
                disk,
                guarded: guarded_listeners(config),
                changes: tokio::sync::Mutex::new(()),
                on_change: parking_lot::Mutex::new(None),
            }),
        };
        watch::spawn(&chain.state);
        Ok(chain)
    }

    /// The plugins, in order, as they are now.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.state.layout.load().slots.clone()
    }

    /// Calls `listener` after every change the chain makes by itself (a plugin renewed
    /// because a file granted to it changed).
    pub fn on_change(&self, listener: impl Fn() + Send + Sync + 'static) {
        *self.state.on_change.lock() = Some(Arc::new(listener));
    }

    /// The layout serving now.
    pub fn layout(&self) -> Arc<Layout> {
        self.state.layout.load_full()
    }

    /// Why the chain would let clients into `listener` without credentials, if it would:
    /// no plugin authenticates there, or the chain lets an anonymous client in. The broker
    /// refuses that for a listener on a non-loopback address (unless
    /// `security.allow_anonymous_remote`), at start and on every change.
    pub async fn open_door(&self, listener: &str) -> Option<&'static str> {
        self.layout().open_door(listener).await
    }

    /// Whether some plugin authenticates clients on `listener`.
    pub fn authenticates(&self, listener: &str) -> bool {
        self.state
            .layout
            .load()
            .any_serves(Hooks::AUTHENTICATE, listener)
    }
}

impl Layout {
    /// See [`Chain::open_door`].
    async fn open_door(&self, listener: &str) -> Option<&'static str> {
        if !self.any_serves(Hooks::AUTHENTICATE, listener) {
            return Some("no plugin authenticates its clients");
        }
        let probe = ClientInfo {
            client_id: ByteString::from("moat-anonymous-probe"),
            username: None,
            remote_addr: "0.0.0.0:0".parse().expect("a literal address"),
            listener: Arc::from(listener),
            protocol: crate::codec::ProtocolVersion::V5,
            tls: None,
        };
        match self.authenticate(&probe, &Credentials::default()).await {
            AuthOutcome::Allow { .. } => {
                Some("the plugin chain lets clients in without credentials there")
            }
            _ => None,
        }
    }
}

/// The listeners whose doors the chain must keep shut: those on a non-loopback address,
/// unless `security.allow_anonymous_remote`.
fn guarded_listeners(config: &Config) -> Vec<String> {
    if config.security.allow_anonymous_remote {
        return Vec::new();
    }
    config
        .listeners
        .iter()
        .filter(|l| !l.bind.ip().is_loopback())
        .map(|l| l.name.clone())
        .collect()
}

/// The slots of the configuration's chain (or of the default chain), loaded in order.
async fn load_slots(
    config: &Config,
    disk: Option<&DiskCache>,
) -> Result<Vec<Arc<Slot>>, ChainError> {
    let specs = if config.plugin_chain.is_empty() {
        default_chain(config)
    } else {
        config.plugin_chain.clone()
    };
    let mut slots = Vec::with_capacity(specs.len());
    for spec in &specs {
        slots.push(Arc::new(load_slot(spec, disk).await?));
    }
    Ok(slots)
}

/// A yes/no question for [`Layout::decide`].
#[derive(Clone, Copy)]
enum Question<'a> {
    Publish(PublishKind, &'a Message),
    Deliver(&'a ByteString),
}

/// What a failed plugin's refusal looks like.
fn failed(reason: ReasonCode) -> Denial {
    Denial {
        reason,
        message: Some("policy unavailable".into()),
    }
}

impl Layout {
    fn stamp(&self, question: Question<'_>, marks: impl IntoIterator<Item = (u32, u64)>) -> Stamp {
        let mark = match question {
            Question::Publish(..) => LAYOUT_MARK_PUBLISH,
            Question::Deliver(_) => LAYOUT_MARK_DELIVER,
        };
        let mut s = Stamp::default();
        s.0.push((mark, self.number));
        s.0.extend(marks);
        s
    }

    fn exhausted_verdict(&self, stamp: Stamp) -> Verdict {
        match self.exhausted {
            Exhausted::Allow => Verdict::Allow(Grant {
                cache_seconds: 0,
                stamp,
            }),
            Exhausted::Deny => Verdict::Deny(Denial {
                reason: ReasonCode::NOT_AUTHORIZED,
                message: None,
            }),
        }
    }

    fn any_serves(&self, hook: Hooks, listener: &str) -> bool {
        self.slots.iter().any(|s| s.serves(hook, listener))
    }

    /// Runs a yes/no question down the chain.
    async fn decide(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        question: Question<'_>,
    ) -> Verdict {
        let (hook, hook_name, failure_reason) = match question {
            Question::Publish(..) => (
                Hooks::AUTHORIZE_PUBLISH,
                "authorize-publish",
                ReasonCode::UNSPECIFIED_ERROR,
            ),
            Question::Deliver(_) => (
                Hooks::AUTHORIZE_DELIVER,
                "authorize-deliver",
                ReasonCode::NOT_AUTHORIZED,
            ),
        };
        let listener = &*client.listener;
        let mut marks: smallvec::SmallVec<[(u32, u64); 2]> = smallvec::SmallVec::new();
        let mut cacheable = true;
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.serves(hook, listener) {
                continue;
            }
            // The epoch before the generation: see `Slot::install`.
            marks.push((i as u32, slot.epoch()));
            let g = slot.generation();
            cacheable &= !g.manifest.needs_payload;
            let answer = match question {
                Question::Publish(kind, message) => {
                    g.authorize_publish(client, identity, kind, message).await
                }
                Question::Deliver(topic) => g.authorize_deliver(client, identity, topic).await,
            };
            match answer {
                Ok(Answer::Next) => {}
                Ok(Answer::Decided(Decision::Allow { cache_seconds })) => {
                    return Verdict::Allow(Grant {
                        cache_seconds: if cacheable { cache_seconds } else { 0 },
                        stamp: self.stamp(question, marks),
                    });
                }
                Ok(Answer::Decided(Decision::Deny(d))) => return Verdict::Deny(d),
                Err(f) => {
                    slot.log_failure(hook_name, &f);
                    if slot.on_failure == OnFailure::Deny {
                        return Verdict::Deny(failed(failure_reason));
                    }
                }
            }
        }
        self.exhausted_verdict(self.stamp(question, marks))
    }

    async fn authenticate(&self, client: &ClientInfo, credentials: &Credentials) -> AuthOutcome {
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.serves(Hooks::AUTHENTICATE, &client.listener) {
                continue;
            }
            let epoch = slot.epoch();
            let g = slot.generation();
            match g.authenticate(client, credentials).await {
                Ok(Answer::Next) => {}
                Ok(Answer::Decided(step)) => return self.auth_outcome(i, epoch, step),
                Err(f) => {
                    slot.log_failure("authenticate", &f);
                    if slot.on_failure == OnFailure::Deny {
                        return AuthOutcome::Deny(failed(ReasonCode::SERVER_UNAVAILABLE));
                    }
                }
            }
        }
        if credentials.auth_method.is_some() {
            // No plugin took the method on (section 4.12: 0x8C).
            return AuthOutcome::Deny(Denial {
                reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
                message: Some("no plugin supports this authentication method".into()),
            });
        }
        match self.exhausted {
            Exhausted::Deny => AuthOutcome::Deny(Denial {
                reason: ReasonCode::NOT_AUTHORIZED,
                message: None,
            }),
            Exhausted::Allow => AuthOutcome::Allow {
                identity: Identity {
                    principal: client
                        .username
                        .clone()
                        .unwrap_or_else(|| client.client_id.clone()),
                    ..Identity::default()
                },
                data: None,
            },
        }
    }

    /// `epoch`: the plugin's, read before the generation that answered was, so that a
    /// challenge issued by a generation replaced meanwhile is not continued by the next.
    fn auth_outcome(&self, index: usize, epoch: u64, step: AuthStep) -> AuthOutcome {
        match step {
            AuthStep::Allow { identity, data } => AuthOutcome::Allow { identity, data },
            AuthStep::Deny(d) => AuthOutcome::Deny(d),
            AuthStep::Challenge { data, state } => {
                let mut kept = BytesMut::with_capacity(CHALLENGE_PREFIX + state.len());
                kept.put_u32_le(index as u32);
                kept.put_u64_le(epoch);
                kept.put_u64_le(self.number);
                kept.put_slice(&state);
                AuthOutcome::Challenge {
                    data,
                    state: kept.freeze(),
                }
            }
        }
    }

    async fn continue_auth(&self, client: &ClientInfo, state: &[u8], data: &[u8]) -> AuthOutcome {
        let refused = |why: &str| {
            AuthOutcome::Deny(Denial {
                reason: ReasonCode::NOT_AUTHORIZED,
                message: Some(why.to_owned()),
            })
        };
        let u64_at = |at: usize| {
            state
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        };
        let (Some(index), Some(epoch), Some(layout)) = (
            state
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default())),
            u64_at(4),
            u64_at(12),
        ) else {
            return refused("no authentication in progress");
        };
        let Some(slot) = self.slots.get(index as usize) else {
            return refused("no authentication in progress");
        };
        if slot.epoch() != epoch || layout != self.number {
            return refused("the authenticating plugin changed during the exchange");
        }
        let g = slot.generation();
        match g
            .continue_auth(client, &state[CHALLENGE_PREFIX..], data)
            .await
        {
            Ok(Answer::Decided(step)) => self.auth_outcome(index as usize, epoch, step),
            // The exchange is this plugin's; walking away from it is a refusal.
            Ok(Answer::Next) => refused("the plugin abandoned the authentication"),
            Err(f) => {
                slot.log_failure("continue-auth", &f);
                AuthOutcome::Deny(failed(ReasonCode::SERVER_UNAVAILABLE))
            }
        }
    }
}

impl Policy for Chain {
    fn on_connect(&self, client: &Arc<ClientInfo>) -> Pending<Verdict> {
        let layout = self.state.layout.load();
        if !layout.any_serves(Hooks::ON_CONNECT, &client.listener) {
            return Verdict::allow().into();
        }
        let (layout, client) = (Guard::into_inner(layout), client.clone());
        Pending::later(async move {
            for slot in &layout.slots {
                if !slot.serves(Hooks::ON_CONNECT, &client.listener) {
                    continue;
                }
                match slot.generation().on_connect(&client).await {
                    Ok(Answer::Next) => {}
                    Ok(Answer::Decided(Decision::Allow { .. })) => return Verdict::allow(),
                    Ok(Answer::Decided(Decision::Deny(d))) => return Verdict::Deny(d),
                    Err(f) => {
                        slot.log_failure("on-connect", &f);
                        if slot.on_failure == OnFailure::Deny {
                            return Verdict::Deny(failed(ReasonCode::SERVER_UNAVAILABLE));
                        }
                    }
                }
            }
            // A pre-check that nobody objected to: go on to authentication.
            Verdict::allow()
        })
    }

    fn authenticate(
        &self,
        client: &Arc<ClientInfo>,
        credentials: Credentials,
    ) -> Pending<AuthOutcome> {
        let (layout, client) = (self.state.layout.load_full(), client.clone());
        Pending::later(async move { layout.authenticate(&client, &credentials).await })
    }

    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: Bytes,
        data: Bytes,
    ) -> Pending<AuthOutcome> {
        let (layout, client) = (self.state.layout.load_full(), client.clone());
        Pending::later(async move { layout.continue_auth(&client, &state, &data).await })
    }

    fn authorize_publish(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        kind: PublishKind,
        message: &Arc<Message>,
    ) -> Pending<Verdict> {
        let layout = self.state.layout.load();
        if !layout.any_serves(Hooks::AUTHORIZE_PUBLISH, &client.listener) {
            let question = Question::Publish(kind, message);
            return layout.exhausted_verdict(layout.stamp(question, [])).into();
        }
        let (layout, client, identity, message) = (
            Guard::into_inner(layout),
            client.clone(),
            identity.clone(),
            message.clone(),
        );
        Pending::later(async move {
            layout
                .decide(&client, &identity, Question::Publish(kind, &message))
                .await
        })
    }

    fn authorize_subscribe(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        filter: &ByteString,
        qos: QoS,
    ) -> Pending<SubscribeVerdict> {
        let (layout, client, identity, filter) = (
            self.state.layout.load_full(),
            client.clone(),
            identity.clone(),
            filter.clone(),
        );
        Pending::later(async move {
            let (inner_filter, group) = match topic::parse_shared(&filter) {
                Ok(Some(s)) => (s.filter, Some(s.group)),
                _ => (&*filter, None),
            };
            for slot in &layout.slots {
                if !slot.serves(Hooks::AUTHORIZE_SUBSCRIBE, &client.listener) {
                    continue;
                }
                let g = slot.generation();
                match g
                    .authorize_subscribe(&client, &identity, inner_filter, group, qos)
                    .await
                {
                    Ok(Answer::Next) => {}
                    Ok(Answer::Decided(SubscribeDecision::Allow {
                        check_each_delivery,
                    })) => {
                        return SubscribeVerdict::Allow {
                            check_each_delivery,
                        };
                    }
                    Ok(Answer::Decided(SubscribeDecision::Deny(d))) => {
                        return SubscribeVerdict::Deny(d);
                    }
                    Err(f) => {
                        slot.log_failure("authorize-subscribe", &f);
                        if slot.on_failure == OnFailure::Deny {
                            return SubscribeVerdict::Deny(failed(ReasonCode::UNSPECIFIED_ERROR));
                        }
                    }
                }
            }
            match layout.exhausted {
                Exhausted::Allow => SubscribeVerdict::Allow {
                    check_each_delivery: false,
                },
                Exhausted::Deny => SubscribeVerdict::Deny(Denial {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    message: None,
                }),
            }
        })
    }

    fn authorize_deliver(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        topic: &ByteString,
    ) -> Pending<Verdict> {
        let layout = self.state.layout.load();
        if !layout.any_serves(Hooks::AUTHORIZE_DELIVER, &client.listener) {
            let question = Question::Deliver(topic);
            return layout.exhausted_verdict(layout.stamp(question, [])).into();
        }
        let (layout, client, identity, topic) = (
            Guard::into_inner(layout),
            client.clone(),
            identity.clone(),
            topic.clone(),
        );
        Pending::later(async move {
            layout
                .decide(&client, &identity, Question::Deliver(&topic))
                .await
        })
    }

    /// `$SYS/broker/plugins/<name>/...`: the generation and content hash of each plugin, its
    /// calls, failures (traps, deadline hits, malformed answers), instances created, and the
    /// counters it keeps itself (`host.count`) under `counters/`.
    fn status(&self) -> Vec<(String, String)> {
        let mut topics = Vec::new();
        for slot in &self.state.layout.load().slots {
            let g = slot.generation();
            let base = format!("$SYS/broker/plugins/{}", slot.name);
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
            topics.push((format!("{base}/generation"), g.number.to_string()));
            topics.push((format!("{base}/sha256"), hex(&g.hash)));
            topics.push((format!("{base}/calls"), load(&g.stats.calls)));
            topics.push((format!("{base}/traps"), load(&g.stats.traps)));
            topics.push((
                format!("{base}/deadline_hits"),
                load(&g.stats.deadline_hits),
            ));
            topics.push((format!("{base}/malformed"), load(&g.stats.malformed)));
            topics.push((
                format!("{base}/instances"),
                load(&g.stats.instances_created),
            ));
            for (name, value) in g.ctx.counters() {
                topics.push((format!("{base}/counters/{name}"), value.to_string()));
            }
        }
        topics
    }

    /// Also counts the hit for the plugin that decided (the last mark), in its slot's
    /// `cache_hits` (not its generation's: a second atomic load on every hit costs more than
    /// the label is worth).
    fn is_current(&self, stamp: &Stamp) -> bool {
        let layout = self.state.layout.load();
        let current = stamp.0.iter().all(|&(index, epoch)| {
            if index >= LAYOUT_MARK_DELIVER {
                return epoch == layout.number;
            }
            layout
                .slots
                .get(index as usize)
                .is_some_and(|s| s.epoch() == epoch)
        });
        if current
            && let (Some(&(mark, _)), Some(&(decider, _))) = (stamp.0.first(), stamp.0.last())
            && let Some(slot) = layout.slots.get(decider as usize)
        {
            let hook = usize::from(mark != LAYOUT_MARK_PUBLISH);
            slot.cache_hits[hook].fetch_add(1, Ordering::Relaxed);
        }
        current
    }
}
