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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use parking_lot::Mutex;

use super::wasm::calls::{Decision, SubscribeDecision};
use super::wasm::{
    Answer, AuthStep, DiskCache, Failure, Generation, Hooks, Limits, LoadError, PluginContext,
    bundled, hex,
};
use super::{
    AuthOutcome, ClientInfo, Credentials, Denial, Grant, Identity, Policy, PublishKind, Stamp,
    SubscribeVerdict, Verdict,
};
use crate::codec::{QoS, ReasonCode};
use crate::config::{Config, Exhausted, OnFailure, PluginConfig};
use crate::message::Message;
use crate::pending::Pending;
use crate::topic;

/// The stamp mark that carries the chain's layout version.
const LAYOUT_MARK: u32 = u32::MAX;

/// A plugin could not be loaded into the chain.
#[derive(Debug, thiserror::Error)]
#[error("plugin `{plugin}` ({source_name}): {error}")]
pub struct ChainError {
    pub plugin: String,
    /// The file, or `bundled:NAME`.
    pub source_name: String,
    pub error: LoadError,
}

/// One position in the chain.
pub struct Slot {
    pub name: Arc<str>,
    /// The hooks the broker calls it for.
    pub hooks: Hooks,
    /// The listeners it decides for (`None`: all).
    pub listeners: Option<Vec<Arc<str>>>,
    pub on_failure: OnFailure,
    current: ArcSwap<Generation>,
    /// Moves when the plugin invalidates its decisions or is replaced.
    pub epoch: Arc<AtomicU64>,
    /// When a failure was last logged, and how many were not since.
    failure_log: Mutex<(Option<Instant>, u64)>,
}

impl Slot {
    fn serves(&self, hook: Hooks, listener: &str) -> bool {
        self.hooks.contains(hook)
            && self
                .listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| &**l == listener))
    }

    /// The generation serving now.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn log_failure(&self, hook: &str, failure: &Failure) {
        let mut log = self.failure_log.lock();
        let now = Instant::now();
        if log
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            log.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.1);
        log.0 = Some(now);
        tracing::warn!(plugin = %self.name, hook, error = %failure, suppressed,
            "plugin failed; the decision fails closed");
    }
}

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

/// The chain of a configuration with no `[[plugin]]`: `allow-anonymous` on the listeners bound
/// to a loopback address (on every listener with `security.allow_anonymous_remote`).
pub fn default_chain(config: &Config) -> Vec<PluginConfig> {
    let listeners: Vec<String> = config
        .listeners
        .iter()
        .filter(|l| l.bind.ip().is_loopback() || config.security.allow_anonymous_remote)
        .map(|l| l.name.clone())
        .collect();
    let mut plugin_config = serde_json::Map::new();
    plugin_config.insert("listeners".into(), listeners.clone().into());
    vec![PluginConfig {
        name: "allow-anonymous".into(),
        bundled: Some("allow-anonymous".into()),
        // Also the chain's own listener filter, so that the broker knows nothing
        // authenticates clients on the other listeners.
        listeners: Some(listeners),
        config: plugin_config,
        ..PluginConfig::default()
    }]
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
        Ok(Chain {
            inner: Arc::new(Inner {
                slots,
                exhausted: config.plugins.exhausted,
                layout: 0,
            }),
        })
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

fn open_cache(config: &Config) -> Result<Option<DiskCache>, ChainError> {
    let dir = config
        .plugins
        .cache_dir
        .clone()
        .or_else(super::wasm::disk_cache::default_dir);
    let Some(dir) = dir else {
        tracing::warn!(
            "no cache directory for compiled plugins (no HOME); compiling at every start"
        );
        return Ok(None);
    };
    DiskCache::open(&dir).map(Some).map_err(|error| ChainError {
        plugin: "*".into(),
        source_name: "plugins.cache_dir".into(),
        error,
    })
}

async fn load_slot(spec: &PluginConfig, disk: Option<&DiskCache>) -> Result<Slot, ChainError> {
    let (bytes, source_name) = match (&spec.wasm, &spec.bundled) {
        (Some(path), _) => (
            std::fs::read(path).map_err(|e| LoadError::Read {
                path: path.clone(),
                why: e.to_string(),
            }),
            path.display().to_string(),
        ),
        (None, Some(name)) => (
            bundled::get(name)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| LoadError::Read {
                    path: format!("bundled:{name}").into(),
                    why: "no such bundled plugin in this build".into(),
                }),
            format!("bundled:{name}"),
        ),
        (None, None) => (
            Err(LoadError::Read {
                path: "".into(),
                why: "no `wasm` or `bundled` given".into(),
            }),
            String::new(),
        ),
    };
    let fail = |error| ChainError {
        plugin: spec.name.clone(),
        source_name: source_name.clone(),
        error,
    };
    let bytes = bytes.map_err(fail)?;
    if let Some(expected) = &spec.sha256 {
        let actual = super::wasm::sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(fail(LoadError::Hash {
                expected: expected.clone(),
                actual,
            }));
        }
    }
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let epoch = Arc::new(AtomicU64::new(0));
    let ctx = Arc::new(PluginContext::new(
        name.clone(),
        epoch.clone(),
        spec.grants.kv.as_ref(),
    ));
    let limits = Limits {
        min_instances: spec.min_instances as usize,
        max_instances: spec.max_instances as usize,
        memory_bytes: (spec.memory_limit_mib as usize) << 20,
        cpu_budget: Duration::from_millis(spec.cpu_budget_ms.into()),
        authenticate_timeout: Duration::from_millis(spec.authenticate_timeout_ms.into()),
        authorize_timeout: Duration::from_millis(spec.authorize_timeout_ms.into()),
    };
    let config_json = serde_json::Value::Object(spec.config.clone()).to_string();
    let generation = Generation::load(name.clone(), 1, &bytes, config_json, limits, ctx, disk)
        .await
        .map_err(fail)?;
    let hooks = match &spec.hooks {
        Some(names) => generation
            .manifest
            .hooks
            .intersection(Hooks::from_names(names)),
        None => generation.manifest.hooks,
    };
    Ok(Slot {
        name,
        hooks,
        listeners: spec
            .listeners
            .as_ref()
            .map(|ls| ls.iter().map(|l| Arc::from(l.as_str())).collect()),
        on_failure: spec.on_failure,
        current: ArcSwap::new(generation),
        epoch,
        failure_log: Mutex::new((None, 0)),
    })
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
            let g = slot.generation();
            marks.push((i as u32, slot.epoch()));
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
            let g = slot.generation();
            match g.authenticate(client, credentials).await {
                Ok(Answer::Next) => {}
                Ok(Answer::Decided(step)) => return self.auth_outcome(i, slot, step),
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

    fn auth_outcome(&self, index: usize, slot: &Slot, step: AuthStep) -> AuthOutcome {
        match step {
            AuthStep::Allow { identity, data } => AuthOutcome::Allow { identity, data },
            AuthStep::Deny(d) => AuthOutcome::Deny(d),
            AuthStep::Challenge { data, state } => {
                let mut kept = BytesMut::with_capacity(12 + state.len());
                kept.put_u32_le(index as u32);
                kept.put_u64_le(slot.epoch());
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
            Ok(Answer::Decided(step)) => self.auth_outcome(index as usize, slot, step),
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
