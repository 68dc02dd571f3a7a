//! The broker: shared state ([`Shared`]) and the running server ([`Broker`]).
//!
//! [`Shared`] is the one handle every connection task holds: the config, the subscription
//! tree, the retained index, the session registry, the store, the policy and the metrics. Its
//! methods are the broker-wide operations a session needs (route a message, retain it, take
//! over a session, end one), so the locking discipline lives in one file: the router and the
//! retained index are behind `RwLock`s taken for short, synchronous sections and never held
//! across an `.await`; the session registry is a plain mutex over a map.
//!
//! [`Broker`] binds the listeners, restores what the store holds (`restore`), runs the accept
//! loops and the `$SYS` publisher, and shuts everything down in order.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, Will};
use crate::config::{Config, ForeignSession};
use crate::message::{Message, MessageProperties, cap_expiry};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::pending::Pending;
use crate::policy::{ClientInfo, Denial, Identity, Policy, PublishKind, Verdict};
use crate::router::{RetainedIndex, Route, SubscriptionTree};
use crate::session::{Delivery, Kick, MailboxLimits, Session, SessionRef, SessionState};
use crate::store::{Change, MemoryStore, Store, StoreError, Target, WillRecord};

mod quotas;
mod registry;
mod restore;

pub use registry::Registry;

/// How often expired retained messages are purged.
const RETAINED_PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Broker-wide state shared by every connection; see the module doc.
pub struct Shared {
    pub config: Config,
    pub router: RwLock<SubscriptionTree<SessionRef>>,
    pub retained: RwLock<RetainedIndex<Arc<Message>>>,
    pub sessions: Mutex<Registry>,
    pub store: Arc<dyn Store>,
    /// The store journals queued and inflight messages (`Store::journals_messages`).
    pub journal: bool,
    /// The next journal sequence number for a queued message.
    next_seq: AtomicU64,
    pub policy: Arc<dyn Policy>,
    pub metrics: Metrics,
    /// Connection limits and per-address defences (`net::admission`).
    pub admission: Arc<crate::net::admission::Admission>,
    /// Retained-message and persistent-session quotas (`quotas.rs`).
    pub quotas: quotas::Quotas,
    /// Client identifiers the operator banned (`crate::admin`): refused at CONNECT with 0x8A.
    /// Journaled to the store ([`Change::Banned`]), restored at start.
    pub bans: RwLock<std::collections::HashSet<ByteString>>,
    /// Changes of the plugin chain, for handshakes that straddle one (`crate::admin`).
    pub policy_changes: crate::admin::PolicyChanges,
    pub shutdown: CancellationToken,
    pub started: Instant,
    tasks: TaskTracker,
}

thread_local! {
    /// Reused per worker thread so routing a message allocates nothing for its route list.
    static ROUTES: RefCell<Vec<Route<SessionRef>>> = const { RefCell::new(Vec::new()) };
}

/// A QoS 1/2 PUBLISH being accepted from a client, for [`Shared::publish`].
#[derive(Debug, Clone)]
pub struct Acceptance {
    pub client_id: ByteString,
    pub packet_id: u16,
    /// QoS 2 from a persistent session: the packet id is journaled until PUBREL.
    pub exactly_once: bool,
}

/// A routed message: how many sessions got it, and when it is durable.
pub struct Routed {
    pub count: usize,
    pub stored: Pending<Result<(), StoreError>>,
}

impl Shared {
    /// Milliseconds since the broker started: the clock of keep-alive deadlines.
    pub(crate) fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs a task that shutdown waits for.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    fn mailbox_limits(&self) -> MailboxLimits {
        let l = &self.config.limits;
        MailboxLimits {
            max_queued: l.max_queued_messages as usize,
            overflow: l.queue_overflow,
            queue_qos0_offline: l.queue_qos0_offline,
            backpressure: !l.slow_subscriber_timeout.is_zero(),
        }
    }

    /// The broker's own limits on topic names and filters, beyond the specification's.
    pub fn topic_within_limits(&self, topic: &str) -> bool {
        let l = &self.config.limits;
        let max_levels = l.max_topic_levels as usize;
        // A topic has at most one level more than it has bytes, so short topics (most of them,
        // with the default of 64 levels) need no counting: this runs on every PUBLISH.
        topic.len() <= l.max_topic_length as usize
            && (topic.len() < max_levels
                || topic.bytes().filter(|&b| b == b'/').count() < max_levels)
    }

    /// Routes a message to every matching subscription. Full queues apply their overflow
    /// policy (for the broker's own messages: wills, `$SYS`).
    ///
    /// A QoS 1/2 message that reaches persistent sessions is journaled first (stored once,
    /// queued for each of them), together with the publisher's `acceptance` when there is one,
    /// in one change; only then does it enter the mailboxes, so no subscriber can acknowledge
    /// it ahead of the journal. The returned [`Routed::stored`] resolves when that change is
    /// durable: a publisher's PUBACK/PUBREC waits for it. A store that refuses the change at
    /// once (failed) means the message is not routed at all.
    pub fn publish(
        &self,
        message: Arc<Message>,
        publisher: Option<&SessionRef>,
        acceptance: Option<Acceptance>,
    ) -> Result<Routed, StoreError> {
        self.route(message, publisher, acceptance, None)
    }

    /// Routes a client's message like [`Shared::publish`], adding to `congested` every
    /// connected subscriber whose queue it filled: the publisher must wait for them before it
    /// routes more (`session::backpressure`).
    pub(crate) fn publish_paced(
        &self,
        message: Arc<Message>,
        publisher: &SessionRef,
        acceptance: Option<Acceptance>,
        congested: &mut Vec<Arc<Session>>,
    ) -> Result<Routed, StoreError> {
        self.route(message, Some(publisher), acceptance, Some(congested))
    }

    fn route(
        &self,
        message: Arc<Message>,
        publisher: Option<&SessionRef>,
        acceptance: Option<Acceptance>,
        mut congested: Option<&mut Vec<Arc<Session>>>,
    ) -> Result<Routed, StoreError> {
        ROUTES.with(|routes| {
            let mut routes = routes.borrow_mut();
            routes.clear();
            self.router
                .read()
                .route(&message.topic, publisher, &mut routes);
            let count = routes.len();
            let journaled = |r: &Route<SessionRef>| {
                r.subscriber.0.is_journaled() && r.qos.min(message.qos) > QoS::AtMostOnce
            };
            // One sequence block for this message's targets: taken in route order, so the
            // delivery loop below can hand out the same numbers without remembering them.
            let mut targets = Vec::new();
            let mut seq = 0;
            if self.journal && message.qos > QoS::AtMostOnce {
                let n = routes.iter().filter(|r| journaled(r)).count() as u64;
                if n > 0 {
                    seq = self.next_seq.fetch_add(n, Ordering::Relaxed);
                    targets.reserve_exact(n as usize);
                    for r in routes.iter().filter(|r| journaled(r)) {
                        targets.push(Target {
                            client_id: r.subscriber.0.client_id.clone(),
                            seq: seq + targets.len() as u64,
                            qos: r.qos.min(message.qos),
                            retain: r.retain_as_published && message.retain,
                            identifiers: r.identifiers.clone(),
                        });
                    }
                }
            }
            let any_target = !targets.is_empty();
            let stored = match acceptance {
                Some(a) => self.store.apply(Change::Accepted {
                    client_id: a.client_id,
                    packet_id: a.packet_id,
                    message: message.clone(),
                    targets,
                    exactly_once: a.exactly_once,
                }),
                None if any_target => self.store.apply(Change::Routed {
                    message: message.clone(),
                    targets,
                }),
                None => Ok(()).into(),
            };
            if let Pending::Ready(Err(e)) = stored {
                routes.clear();
                return Err(e);
            }
            for route in routes.drain(..) {
                let delivery_seq = if any_target && journaled(&route) {
                    seq += 1;
                    seq - 1
                } else {
                    0
                };
                let delivery = Delivery {
                    qos: route.qos.min(message.qos),
                    // MQTT-3.3.1-12, -13: RETAIN is cleared unless Retain As Published.
                    retain: route.retain_as_published && message.retain,
                    identifiers: route.identifiers,
                    message: message.clone(),
                    seq: delivery_seq,
                };
                let session = route.subscriber.0;
                let delivered = session.deliver(delivery, &self.metrics, congested.is_some());
                if let Some(dropped) = delivered.dropped {
                    self.dequeue(&session.client_id, dropped.seq);
                }
                if delivered.full
                    && let Some(list) = congested.as_deref_mut()
                {
                    list.push(session);
                }
            }
            Ok(Routed { count, stored })
        })
    }

    /// Takes a journaled delivery out of the store (acknowledged, dropped or expired); nothing
    /// for one that lives in memory only (`seq` 0). Nobody waits for it: if it is lost in a
    /// crash the message is delivered once more, which QoS 1 allows, and a QoS 2 message is
    /// resent with its journaled packet id, which the receiver recognises.
    pub fn dequeue(&self, client_id: &ByteString, seq: u64) {
        if seq != 0 {
            self.store.apply_detached(Change::Dequeued {
                client_id: client_id.clone(),
                seq,
            });
        }
    }

    /// Stores, replaces or (empty payload) clears the retained message of a topic
    /// (MQTT-3.3.1-5, -6, -7).
    /// Resolves when the change is durable.
    pub fn retain(&self, message: &Arc<Message>) -> Pending<Result<(), StoreError>> {
        self.retain_checked(message, false)
            .unwrap_or_else(|| Ok(()).into())
    }

    /// As [`Shared::retain`] for a client's PUBLISH, unless it would take the retained
    /// messages over a `limits.max_retained_*` quota: then nothing changes and `None` is
    /// returned (see `quotas.rs`).
    pub fn retain_within_quota(
        &self,
        message: &Arc<Message>,
    ) -> Option<Pending<Result<(), StoreError>>> {
        self.retain_checked(message, true)
    }

    fn retain_checked(
        &self,
        message: &Arc<Message>,
        check: bool,
    ) -> Option<Pending<Result<(), StoreError>>> {
        let stored = if message.payload.is_empty() {
            None
        } else {
            Some(message.clone())
        };
        {
            let mut index = self.retained.write();
            let mut usage = self.quotas.retained.lock();
            if check
                && stored.is_some()
                && !usage.allows(&self.config.limits, message, index.get(&message.topic))
            {
                return None;
            }
            let old = match &stored {
                Some(m) => {
                    usage.add(m);
                    index.insert(&m.topic, m.clone())
                }
                None => index.remove(&message.topic),
            };
            if let Some(old) = old {
                usage.remove(&old);
            }
            self.metrics.set_retained(index.len());
        }
        Some(self.store.apply(Change::Retained {
            topic: message.topic.clone(),
            message: stored,
        }))
    }

    /// Adds a subscription; true if it replaced one with the same filter.
    ///
    /// With `with_retained` (a client's SUBSCRIBE to a non-shared filter), the matching retained
    /// messages are handed to the session as its Retain Handling asks (MQTT-3.3.1-9, -10, -11),
    /// with RETAIN set (MQTT-3.3.1-8). That happens under the router's write lock: a publisher
    /// updates the retained index before it routes, so any message routed to the new
    /// subscription is queued after the retained copies and a stale retained message can never
    /// overtake a newer live one.
    pub fn subscribe(
        &self,
        session: &SessionRef,
        filter: &str,
        options: SubscriptionOptions,
        identifier: Option<u32>,
        with_retained: bool,
    ) -> bool {
        let mut router = self.router.write();
        let existed = router.subscribe(filter, session.clone(), options, identifier);
        self.metrics.set_subscriptions(router.len());
        let send_retained = with_retained
            && match options.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscription => !existed,
                RetainHandling::Never => false,
            };
        if send_retained {
            let now = Instant::now();
            self.retained.read().for_each_match(filter, |_, m| {
                if m.is_expired(now) {
                    return;
                }
                // Retained copies are not journaled: no publisher is waiting on them, and the
                // retained message itself is in the store.
                let delivery = Delivery {
                    qos: options.qos.min(m.qos),
                    retain: true,
                    identifiers: identifier.into_iter().collect(),
                    message: m.clone(),
                    seq: 0,
                };
                let _ = session.0.deliver(delivery, &self.metrics, false);
            });
        }
        drop(router);
        existed
    }

    /// Removes a subscription; true if it existed.
    pub fn unsubscribe(&self, session: &SessionRef, filter: &str) -> bool {
        let mut router = self.router.write();
        let existed = router.unsubscribe(filter, session);
        self.metrics.set_subscriptions(router.len());
        existed
    }

    /// Finds or creates the session for a connecting client and takes it from any connection
    /// serving it (MQTT-3.1.4-3: that one is closed with 0x8E). With `clean_start` an existing
    /// session is ended first (MQTT-3.1.2-4).
    ///
    /// A session belongs to the principal that created it: another principal presenting the
    /// same client identifier is refused with 0x87 (`security.foreign_session = "refuse"`, the
    /// default) or ends it and starts afresh (`"replace"`), so knowing a client identifier is
    /// never enough to read someone else's queued messages. Refused too when an even newer
    /// connection for the same client id took the session while this one waited.
    pub(crate) async fn take_session(
        &self,
        client_id: &ByteString,
        principal: &ByteString,
        clean_start: bool,
        version: ProtocolVersion,
        kick: Arc<Kick>,
    ) -> Result<
        (
            Arc<Session>,
            tokio::sync::OwnedMutexGuard<SessionState>,
            bool,
            u64,
        ),
        Denial,
    > {
        let superseded = || Denial {
            // 0x8E is a DISCONNECT code, not a CONNACK one (MQTT-3.2.2-8).
            reason: ReasonCode::UNSPECIFIED_ERROR,
            message: Some("a newer connection with this client identifier took the session".into()),
        };
        loop {
            if kick.fired().is_some() {
                return Err(superseded());
            }
            let existing = self.sessions.lock().get(client_id).cloned();
            let Some(old) = existing else {
                let session = Session::new(
                    client_id.clone(),
                    principal.clone(),
                    SessionState::new(version, 0),
                    self.mailbox_limits(),
                );
                let Ok(guard) = session.state.clone().try_lock_owned() else {
                    return Err(superseded());
                };
                {
                    let mut map = self.sessions.lock();
                    if map.contains_key(client_id) {
                        continue; // another connection created it meanwhile
                    }
                    map.insert(session.clone());
                }
                let generation = session.attach(kick, ReasonCode::SESSION_TAKEN_OVER);
                return Ok((session, guard, false, generation));
            };
            let foreign = !old.owned_by(principal);
            if foreign && self.config.security.foreign_session == ForeignSession::Refuse {
                return Err(Denial {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    message: Some("this client identifier belongs to another principal".into()),
                });
            }
            // Registering first means the old connection, when it ends, sees that the session
            // is no longer its to end or expire.
            let was_offline = !old.is_attached();
            let generation = old.attach(kick.clone(), ReasonCode::SESSION_TAKEN_OVER);
            let guard = old.state.clone().lock_owned().await;
            let still_current = self
                .sessions
                .lock()
                .get(client_id)
                .is_some_and(|s| Arc::ptr_eq(s, &old));
            if !still_current || old.current_generation() != generation {
                continue;
            }
            // A session whose expiry is 0 ends with its connection (section 3.1.2.11.2), so a
            // takeover of it starts afresh even without clean start; so does one that belongs
            // to another principal.
            if clean_start || foreign || guard.expiry_interval == 0 {
                self.end_session(&old, &guard).await;
                continue;
            }
            if was_offline {
                self.metrics.offline_session_resumed();
            }
            return Ok((old, guard, true, generation));
        }
    }

    /// Ends a session: its subscriptions leave the router, its mailbox is emptied, the
    /// registry and the store forget it.
    pub(crate) async fn end_session(&self, session: &Arc<Session>, state: &SessionState) {
        let me = SessionRef(session.clone());
        {
            let mut router = self.router.write();
            for filter in state.subscriptions.keys() {
                router.unsubscribe(filter, &me);
            }
            self.metrics.set_subscriptions(router.len());
        }
        self.metrics.inflight_removed(state.outbound.len());
        session.end(&self.metrics);
        {
            let mut map = self.sessions.lock();
            if map
                .get(&session.client_id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                map.remove(&session.client_id);
                self.quotas.set_persistent(&session.client_id, false);
            }
        }
        if let Err(e) = self
            .store
            .apply(Change::SessionRemoved(session.client_id.clone()))
            .get()
            .await
        {
            tracing::error!(client = %session.client_id, error = %e, "could not remove session");
        }
    }

    /// Ends an offline session once its expiry interval has passed, unless a client has
    /// connected to it since (section 3.1.2.11.2).
    pub fn schedule_expiry(self: &Arc<Self>, session: Arc<Session>, generation: u64, seconds: u32) {
        let shared = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(seconds))) => {}
                _ = session.ended() => return,
                _ = shared.shutdown.cancelled() => return,
            }
            if session.current_generation() != generation || session.is_attached() {
                return;
            }
            let Ok(state) = session.state.clone().try_lock_owned() else {
                return; // a connection is taking it over right now
            };
            if session.current_generation() == generation {
                shared.end_session(&session, &state).await;
                shared.metrics.offline_session_expired();
            }
        });
    }

    /// Publishes a will message now or after its delay (MQTT-3.1.3-9: the delay ends early
    /// when the session ends; a client reconnecting to the session first cancels it). A
    /// delayed will of a journaled session is stored until it is published or cancelled, so a
    /// restart does not lose it.
    pub fn publish_will(
        self: &Arc<Self>,
        mut will: Will,
        client: Arc<ClientInfo>,
        identity: Arc<Identity>,
        session: Arc<Session>,
        generation: u64,
        session_expiry: u32,
    ) {
        let delay = will
            .properties
            .will_delay_interval
            .unwrap_or(0)
            .min(session_expiry);
        let message = Arc::new(Message {
            expiry: cap_expiry(
                will.properties.message_expiry_interval,
                self.config.limits.max_message_expiry,
            ),
            properties: MessageProperties::from_packet(&mut will.properties),
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            received: Instant::now(),
            publisher: Some(client.client_id.clone()),
        });
        let stored = delay > 0 && session.is_journaled();
        if stored {
            self.store.apply_detached(Change::WillScheduled(WillRecord {
                client_id: client.client_id.clone(),
                username: client.username.clone(),
                protocol: client.protocol,
                listener: client.listener.clone(),
                identity: (*identity).clone(),
                message: message.clone(),
                publish_at: crate::store::disk::unix_now() + u64::from(delay),
            }));
        }
        let shared = self.clone();
        self.tasks.spawn(async move {
            if delay > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                    _ = session.ended() => {}
                    // Stays in the store: published after the restart.
                    _ = shared.shutdown.cancelled() => return,
                }
                if session.current_generation() != generation && !session.is_ended() {
                    if stored {
                        shared
                            .store
                            .apply_detached(Change::WillRemoved(client.client_id.clone()));
                    }
                    return; // the client came back
                }
            }
            shared.send_will(message, &client, &identity).await;
            if stored {
                shared
                    .store
                    .apply_detached(Change::WillRemoved(client.client_id.clone()));
            }
        });
    }

    /// Publishes a will message that is due, asking the policy in force now (the will was
    /// allowed at CONNECT, but the rules may have changed since).
    async fn send_will(
        &self,
        message: Arc<Message>,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
    ) {
        if let Verdict::Deny(_) = self
            .policy
            .authorize_publish(client, identity, PublishKind::Will, &message)
            .get()
            .await
        {
            self.metrics
                .publish_dropped(crate::metrics::DropCause::NotAuthorized);
            return;
        }
        // The expiry interval counts from publication (the will may have waited its delay).
        let message = Arc::new(Message {
            received: Instant::now(),
            ..(*message).clone()
        });
        let retained = if message.retain {
            Some(self.retain(&message))
        } else {
            None
        };
        if let Err(e) = self.publish(message, None, None) {
            tracing::error!(error = %e, "could not queue a will message");
        }
        if let Some(Err(e)) = match retained {
            Some(p) => Some(p.get().await),
            None => None,
        } {
            tracing::error!(error = %e, "could not retain a will message");
        }
    }

    /// Drops retained messages whose expiry interval has passed (MQTT-3.3.2-5).
    async fn purge_expired_retained(&self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut index = self.retained.write();
            let mut usage = self.quotas.retained.lock();
            index.retain(|topic, m| {
                let keep = !m.is_expired(now);
                if !keep {
                    usage.remove(m);
                    expired.push(ByteString::from(topic));
                }
                keep
            });
            self.metrics.set_retained(index.len());
        }
        for topic in expired {
            let change = Change::Retained {
                topic,
                message: None,
            };
            if let Err(e) = self.store.apply(change).get().await {
                tracing::error!(error = %e, "could not remove an expired retained message");
            }
        }
    }

    /// Publishes the broker's own `$SYS` topics, retained (as Mosquitto does).
    async fn publish_sys(
        &self,
        loads: &mut crate::sys::LoadAverages,
        plugin_topics: &mut crate::sys::PluginTopics,
    ) {
        let snapshot = self.metrics.snapshot();
        loads.tick(&snapshot, self.config.sys.interval);
        let mut topics: Vec<(std::borrow::Cow<'static, str>, String)> =
            crate::sys::sys_topics(&snapshot, env!("CARGO_PKG_VERSION"), self.started.elapsed())
                .into_iter()
                .chain(loads.topics())
                .map(|(t, v)| (t.into(), v))
                .collect();
        let status = self.policy.status();
        // An empty retained message clears the topic.
        let gone = plugin_topics.gone(&status);
        topics.extend(status.into_iter().map(|(t, v)| (t.into(), v)));
        topics.extend(gone.into_iter().map(|t| (t.into(), String::new())));
        for (topic, payload) in topics {
            let message = Arc::new(Message {
                topic: ByteString::from(&*topic),
                payload: Bytes::from(payload),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                received: Instant::now(),
                expiry: None,
                publisher: None,
            });
            let _ = self.retain(&message).get().await;
            let _ = self.publish(message, None, None);
        }
    }
}

/// The broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listener `{name}`: {source}")]
    Listener {
        name: String,
        source: crate::net::BindError,
    },
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Plugin(#[from] crate::policy::chain::ChainError),
    #[error("{0}")]
    Admin(String),
    #[error(
        "listener `{name}` on {addr} is not on loopback and {why}; configure an \
         authenticating plugin for it, or set `allow_anonymous_remote = true` in [security] \
         if anonymous clients from the network are really wanted"
    )]
    AnonymousRemote {
        name: String,
        addr: SocketAddr,
        why: &'static str,
    },
}

/// A running broker.
pub struct Broker {
    shared: Arc<Shared>,
    listeners: Vec<(Arc<str>, SocketAddr)>,
    bound: Vec<Arc<crate::net::Listener>>,
    /// The plugin chain, when the broker runs one (not with [`Broker::start_with`]).
    chain: Option<crate::policy::chain::Chain>,
    /// The operator's controls over it (`crate::admin`), and the admin API's address.
    control: Option<Arc<crate::admin::Control>>,
    admin: Option<SocketAddr>,
}

impl Broker {
    /// Starts with in-memory state, whatever `[storage]` says (for tests and embedding, where
    /// nothing should be written to disk unless asked for), and the configured plugin chain.
    /// The `moat` command uses [`Broker::open`].
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let chain = Broker::load_chain(&config).await?;
        let mut broker = Broker::start_with(
            config,
            Arc::new(MemoryStore::new()),
            Arc::new(chain.clone()),
        )
        .await?;
        if let Err(e) = broker.attach_chain(chain).await {
            broker.shutdown(Duration::ZERO).await;
            return Err(e);
        }
        Ok(broker)
    }

    /// Starts as the `moat` command does: with the store `[storage]` configures (by default
    /// the embedded database in the platform's state directory) and the configured plugin
    /// chain.
    pub async fn open(config: Config) -> Result<Broker, StartError> {
        let chain = Broker::load_chain(&config).await?;
        let storage = config.storage.clone();
        // Opening reads the whole database: off the async threads.
        let store = tokio::task::spawn_blocking(move || crate::store::open(&storage))
            .await
            .map_err(|e| StoreError(format!("the store's start failed: {e}")))??;
        let mut broker = Broker::start_with(config, store, Arc::new(chain.clone())).await?;
        if let Err(e) = broker.attach_chain(chain).await {
            broker.shutdown(Duration::ZERO).await;
            return Err(e);
        }
        Ok(broker)
    }

    /// Keeps the chain the broker serves with, and starts what changes it while it runs: the
    /// admin API (`[admin]`) and the watched plugin folder (`plugins.watch_dir`).
    async fn attach_chain(&mut self, chain: crate::policy::chain::Chain) -> Result<(), StartError> {
        let control = crate::admin::Control::new(self.shared.clone(), chain.clone());
        let config = &self.shared.config;
        if config.admin.enabled() {
            let server = crate::admin::serve_http(control.clone(), &config.admin)
                .await
                .map_err(StartError::Admin)?;
            self.admin = Some(server.addr);
        }
        if let Some(dir) = &config.plugins.watch_dir {
            let interval = Duration::from_millis(config.plugins.watch_interval_ms.into());
            crate::admin::watch(control.clone(), dir.clone(), interval)
                .map_err(|e| StartError::Admin(e.to_string()))?;
        }
        self.chain = Some(chain);
        self.control = Some(control);
        Ok(())
    }

    /// The operator's controls (plugins, clients), when the broker runs a plugin chain.
    pub fn control(&self) -> Option<&Arc<crate::admin::Control>> {
        self.control.as_ref()
    }

    /// Where the admin API listens, when `[admin]` turned it on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The configured plugin chain (with no `[[plugin]]`, the bundled `allow-anonymous` plugin
    /// on loopback listeners).
    ///
    /// Refuses a listener on a non-loopback address that would let clients in without
    /// credentials, unless `security.allow_anonymous_remote` says so: with no plugin
    /// authenticating there, or with a chain that lets an anonymous client in.
    async fn load_chain(config: &Config) -> Result<crate::policy::chain::Chain, StartError> {
        let chain = crate::policy::chain::Chain::load(config).await?;
        if !config.security.allow_anonymous_remote {
            for l in config
                .listeners
                .iter()
                .filter(|l| !l.bind.ip().is_loopback())
            {
                let Some(why) = chain.open_door(&l.name).await else {
                    continue;
                };
                return Err(StartError::AnonymousRemote {
                    name: l.name.clone(),
                    addr: l.bind,
                    why,
                });
            }
        }
        Ok(chain)
    }

    /// The plugin chain the broker asks, when it runs one.
    pub fn plugins(&self) -> Option<&crate::policy::chain::Chain> {
        self.chain.as_ref()
    }

    /// Binds every listener, restores the store's state, and starts serving.
    pub async fn start_with(
        config: Config,
        store: Arc<dyn Store>,
        policy: Arc<dyn Policy>,
    ) -> Result<Broker, StartError> {
        let mut bound = Vec::new();
        for l in &config.listeners {
            let listener = crate::net::Listener::bind(l, &config.limits)
                .await
                .map_err(|source| StartError::Listener {
                    name: l.name.clone(),
                    source,
                })?;
            bound.push(listener);
        }
        let snapshot = store.load().get().await?;
        let admission = crate::net::admission::Admission::new(&config.limits);
        let shared = Arc::new(Shared {
            config,
            router: RwLock::new(SubscriptionTree::new()),
            retained: RwLock::new(RetainedIndex::new()),
            sessions: Mutex::new(Registry::default()),
            journal: store.journals_messages(),
            next_seq: AtomicU64::new(snapshot.next_seq.max(1)),
            store,
            policy,
            metrics: Metrics::default(),
            admission,
            quotas: quotas::Quotas::default(),
            bans: RwLock::new(std::collections::HashSet::new()),
            policy_changes: Default::default(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            tasks: TaskTracker::new(),
        });
        let restoring = Instant::now();
        shared.restore(snapshot);
        tracing::info!(
            seconds = restoring.elapsed().as_secs_f64(),
            "restored the stored state"
        );

        let mut listeners = Vec::new();
        let mut running = Vec::new();
        for (listener, socket) in bound {
            tracing::info!(listener = %listener.name, addr = %listener.addr,
                protocol = listener.config.protocol.as_str(), "listening");
            listeners.push((listener.name.clone(), listener.addr));
            shared.tasks.spawn(crate::net::accept_loop(
                shared.clone(),
                listener.clone(),
                socket,
            ));
            running.push(listener);
        }
        shared.spawn_listener_upkeep(&running);
        shared
            .tasks
            .spawn(crate::session::keepalive::sweep(shared.clone()));
        {
            // Expired retained messages are never delivered (checked on subscribe); this only
            // frees their memory and their store records.
            let s = shared.clone();
            shared.tasks.spawn(async move {
                // The first purge one period after start, not at once: the store already
                // left out what expired while the broker was down, and walking a large index
                // under its write lock just as clients reconnect would stall them.
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + RETAINED_PURGE_INTERVAL,
                    RETAINED_PURGE_INTERVAL,
                );
                loop {
                    tokio::select! {
                        _ = tick.tick() => s.purge_expired_retained().await,
                        _ = s.shutdown.cancelled() => break,
                    }
                }
            });
        }
        if shared.config.sys.enabled() {
            let s = shared.clone();
            shared.tasks.spawn(async move {
                let mut tick = tokio::time::interval(s.config.sys.interval);
                let mut loads = crate::sys::LoadAverages::default();
                let mut plugin_topics = {
                    let mut restored = Vec::new();
                    let filter = format!("{}#", crate::sys::PLUGIN_TOPICS);
                    s.retained
                        .read()
                        .for_each_match(&filter, |t, _| restored.push(t.to_owned()));
                    crate::sys::PluginTopics::new(restored)
                };
                loop {
                    tokio::select! {
                        _ = tick.tick() => s.publish_sys(&mut loads, &mut plugin_topics).await,
                        _ = s.shutdown.cancelled() => break,
                    }
                }
            });
        }
        Ok(Broker {
            shared,
            listeners,
            bound: running,
            chain: None,
            control: None,
            admin: None,
        })
    }

    /// The addresses the listeners are bound to, by listener name (useful with port 0).
    pub fn listeners(&self) -> &[(Arc<str>, SocketAddr)] {
        &self.listeners
    }

    /// The address of the first listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Serves one already-accepted byte stream as an MQTT connection, as a listener would
    /// (for embedding, in-memory transports and the session fuzz target). Resolves when the
    /// connection ends.
    pub async fn serve_connection<IO>(&self, io: IO, remote: SocketAddr, listener: &str)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = self.shared.config.limits.connect_timeout;
        let peer = crate::net::Peer::new(remote, Arc::from(listener), timeout);
        crate::session::serve(self.shared.clone(), io, peer).await
    }

    /// Reloads the certificates of every TLS listener from their files, as SIGHUP does. New
    /// handshakes use them; established connections are not touched. Returns how many
    /// listeners were reloaded (a listener whose files do not load keeps its certificates and
    /// logs why).
    pub fn reload_certificates(&self) -> usize {
        crate::net::reload_certificates(&self.bound, true)
    }

    /// The bound listeners, with their settings and connection counts.
    pub fn bound_listeners(&self) -> &[Arc<crate::net::Listener>] {
        &self.bound
    }

    /// The shared state, for tests and embedding.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, closes every connection (v5 clients hear 0x8B), and waits for the
    /// connection tasks to finish, at most `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.shutdown.cancel();
        // Serving connections wait on their session alone; one attached after this loop sees
        // the cancelled token when it starts.
        for session in self.shared.sessions.lock().values() {
            session.kick_if(|_| Some(ReasonCode::SERVER_SHUTTING_DOWN));
        }
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within {grace:?}");
        }
        if let Err(e) = self.shared.store.close().get().await {
            tracing::error!(error = %e, "the store did not close cleanly");
        }
    }
}

impl Shared {
    /// Background upkeep of the listeners: the per-address table is swept, and each TLS
    /// listener's files are checked for changes every `reload_interval`.
    fn spawn_listener_upkeep(self: &Arc<Self>, listeners: &[Arc<crate::net::Listener>]) {
        let s = self.clone();
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => s.admission.sweep(),
                    _ = s.shutdown.cancelled() => break,
                }
            }
        });
        for listener in listeners {
            let Some(tls) = &listener.tls else { continue };
            let interval = tls.settings().reload_interval;
            if interval.is_zero() {
                continue;
            }
            let (s, one) = (self.clone(), vec![listener.clone()]);
            self.tasks.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            crate::net::reload_certificates(&one, false);
                        }
                        _ = s.shutdown.cancelled() => break,
                    }
                }
            });
        }
    }
}
