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
//! Layout: this file holds the chain and its answers; `slot` one position in it (the plugin's
//! current generation, its epoch, its failure log); `load` builds a chain from the
//! configuration (the default chain included); `watch` renews a plugin when a file granted to
//! it changes.

mod load;
mod slot;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::wasm::calls::{Decision, SubscribeDecision};
use super::wasm::{Answer, AuthStep, Hooks, hex};
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

/// The stamp mark that carries the chain's layout version.
const LAYOUT_MARK: u32 = u32::MAX;

struct Inner {
    slots: Vec<Slot>,
    exhausted: Exhausted,
    layout: u64,
}

/// The broker's policy: a chain of Wasm plugins. Cheap to clone.
#[derive(Clone)]
pub struct Chain {
    inner: Arc<Inner>,
}

impl Chain {
    /// Loads every plugin of the configuration (or the default chain), in order. Fails on the
    /// first plugin that cannot be loaded, naming it.
    pub async fn load(config: &Config) -> Result<Chain, ChainError> {
        let specs = if config.plugin_chain.is_empty() {
            default_chain(config)
        } else {
            config.plugin_chain.clone()
        };
        let disk = open_cache(config)?;
        let mut slots = Vec::with_capacity(specs.len());
        for spec in &specs {
            slots.push(load_slot(spec, disk.as_ref()).await?);
        }
        for slot in &slots {
            let g = slot.generation();
            tracing::info!(plugin = %slot.name, hooks = ?slot.hooks.names(),
                sha256 = %hex(&g.hash), "plugin loaded");
        }
        let inner = Arc::new(Inner {
            slots,
            exhausted: config.plugins.exhausted,
            layout: 0,
        });
        watch::spawn(&inner);
        Ok(Chain { inner })
    }

    /// The plugins, in order.
    pub fn slots(&self) -> &[Slot] {
        &self.inner.slots
    }

    /// Whether an anonymous client (no user name, no password) would be let in on `listener`:
    /// the broker refuses to start when that is so for a listener on a non-loopback address.
    pub async fn admits_anonymous(&self, listener: &str) -> bool {
        let probe = Arc::new(ClientInfo {
            client_id: ByteString::from("moat-anonymous-probe"),
            username: None,
            remote_addr: "0.0.0.0:0".parse().expect("a literal address"),
            listener: Arc::from(listener),
            protocol: crate::codec::ProtocolVersion::V5,
            tls: None,
        });
        matches!(
            self.authenticate(&probe, Credentials::default())
                .get()
                .await,
            AuthOutcome::Allow { .. }
        )
    }

    /// Whether some plugin authenticates clients on `listener`.
    pub fn authenticates(&self, listener: &str) -> bool {
        self.inner
            .slots
            .iter()
            .any(|s| s.serves(Hooks::AUTHENTICATE, listener))
    }
}

/// A yes/no question for [`Inner::decide`].
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

impl Inner {
    fn stamp(&self, marks: impl IntoIterator<Item = (u32, u64)>) -> Stamp {
        let mut s = Stamp::default();
        s.0.push((LAYOUT_MARK, self.layout));
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
                        stamp: self.stamp(marks),
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
        self.exhausted_verdict(self.stamp(marks))
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
                let mut kept = BytesMut::with_capacity(12 + state.len());
                kept.put_u32_le(index as u32);
                kept.put_u64_le(epoch);
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
        let (Some(index), Some(epoch)) = (
            state
                .get(..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default())),
            state
                .get(4..12)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
        ) else {
            return refused("no authentication in progress");
        };
        let Some(slot) = self.slots.get(index as usize) else {
            return refused("no authentication in progress");
        };
        if slot.epoch() != epoch {
            return refused("the authenticating plugin changed during the exchange");
        }
        let g = slot.generation();
        match g.continue_auth(client, &state[12..], data).await {
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
        if !self.inner.any_serves(Hooks::ON_CONNECT, &client.listener) {
            return Verdict::allow().into();
        }
        let (inner, client) = (self.inner.clone(), client.clone());
        Pending::later(async move {
            for slot in &inner.slots {
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
        let (inner, client) = (self.inner.clone(), client.clone());
        Pending::later(async move { inner.authenticate(&client, &credentials).await })
    }

    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: Bytes,
        data: Bytes,
    ) -> Pending<AuthOutcome> {
        let (inner, client) = (self.inner.clone(), client.clone());
        Pending::later(async move { inner.continue_auth(&client, &state, &data).await })
    }

    fn authorize_publish(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        kind: PublishKind,
        message: &Arc<Message>,
    ) -> Pending<Verdict> {
        if !self
            .inner
            .any_serves(Hooks::AUTHORIZE_PUBLISH, &client.listener)
        {
            return self.inner.exhausted_verdict(self.inner.stamp([])).into();
        }
        let (inner, client, identity, message) = (
            self.inner.clone(),
            client.clone(),
            identity.clone(),
            message.clone(),
        );
        Pending::later(async move {
            inner
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
        let (inner, client, identity, filter) = (
            self.inner.clone(),
            client.clone(),
            identity.clone(),
            filter.clone(),
        );
        Pending::later(async move {
            let (inner_filter, group) = match topic::parse_shared(&filter) {
                Ok(Some(s)) => (s.filter, Some(s.group)),
                _ => (&*filter, None),
            };
            for slot in &inner.slots {
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
            match inner.exhausted {
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
        if !self
            .inner
            .any_serves(Hooks::AUTHORIZE_DELIVER, &client.listener)
        {
            return self.inner.exhausted_verdict(self.inner.stamp([])).into();
        }
        let (inner, client, identity, topic) = (
            self.inner.clone(),
            client.clone(),
            identity.clone(),
            topic.clone(),
        );
        Pending::later(async move {
            inner
                .decide(&client, &identity, Question::Deliver(&topic))
                .await
        })
    }

    /// `$SYS/broker/plugins/<name>/...`: the generation and content hash of each plugin, its
    /// calls, failures (traps, deadline hits, malformed answers), instances created, and the
    /// counters it keeps itself (`host.count`) under `counters/`.
    fn status(&self) -> Vec<(String, String)> {
        let mut topics = Vec::new();
        for slot in &self.inner.slots {
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

    fn is_current(&self, stamp: &Stamp) -> bool {
        stamp.0.iter().all(|&(index, epoch)| {
            if index == LAYOUT_MARK {
                return epoch == self.inner.layout;
            }
            self.inner
                .slots
                .get(index as usize)
                .is_some_and(|s| s.epoch.load(Ordering::Acquire) == epoch)
        })
    }
}
