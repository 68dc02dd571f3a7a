//! Sessions: the state of one client, and the task that serves its connection.
//!
//! A [`Session`] outlives connections. It has two halves with different owners:
//! - the **mailbox**, where the router drops [`Delivery`]s for this client whether or not it is
//!   connected. A short `parking_lot` lock guards it; the router never waits for the client.
//!   It is bounded: when it is full the configured overflow policy drops the oldest or the
//!   newest message, and the metrics count it. A connected subscriber's full mailbox pushes
//!   back on the publishers routing to it instead, until it drains or is found stuck (see
//!   `backpressure`).
//! - the [`SessionState`] (subscriptions, inflight messages, packet identifiers), behind an
//!   async mutex that the serving connection holds for its whole life. Taking over a session
//!   (MQTT-3.1.4-3) is therefore: kick the old connection, then wait for the lock it releases
//!   when it has finished.
//!
//! Layout:
//! - `state`: [`SessionState`] and packet identifier bookkeeping.
//! - `handshake`: CONNECT to CONNACK: validation, authentication, session takeover or resume.
//! - `connection`: the per-connection task: read, write, keep alive, and the end of a
//!   connection (will message, session expiry).
//! - `inbound`: one handler per packet a client sends.
//! - `throttle`: the publish rate limits of one connection.
//! - `acks`: PUBACK/PUBREC that wait, in order, for their message to be durable.
//! - `io`: the socket: reads and writes in one poll, buffers allocated only while in use.
//! - `keepalive`: one broker task that enforces every connection's keep alive.
//! - `outbound`: from mailbox to wire: inflight window, packet ids, topic aliases, expiry.
//! - `backpressure`: a publisher waiting for the full mailboxes it routed to.
//! - `reauth`: MQTT 5 re-authentication on a live connection.
//! - `policy_change`: what a connection does when the plugins change under it (who it is,
//!   for the operator; its subscriptions re-checked).

mod acks;
mod backpressure;
mod connection;
mod handshake;
mod inbound;
mod io;
pub(crate) mod keepalive;
mod outbound;
mod policy_change;
mod reauth;
pub mod state;
mod throttle;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use bytestring::ByteString;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::codec::{QoS, ReasonCode};
use crate::config::QueueOverflow;
use crate::message::Message;
use crate::metrics::{DropCause, Metrics};

pub use connection::serve;
pub use policy_change::Connected;
pub use state::SessionState;

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// Already the minimum of the message's and the subscription's QoS.
    pub qos: QoS,
    /// The RETAIN flag this copy carries (MQTT-3.3.1-8, -9, -12, -13).
    pub retain: bool,
    /// The identifiers of every matching subscription (MQTT-3.3.4-3).
    pub identifiers: SmallVec<[u32; 2]>,
    /// Its journal sequence number when the store keeps it (a QoS 1/2 message for a persistent
    /// session, see `store`); 0 when it lives in memory only.
    pub seq: u64,
}

/// What became of a delivery handed to a mailbox.
#[must_use]
#[derive(Debug, Default)]
pub struct Delivered {
    /// The mailbox is full and pushes back: the publisher must wait.
    pub full: bool,
    /// The delivery the mailbox did not keep, if any.
    pub dropped: Option<Delivery>,
}

impl Delivered {
    fn dropped(delivery: Delivery) -> Delivered {
        Delivered {
            full: false,
            dropped: Some(delivery),
        }
    }
}

/// The bounds of a mailbox, from the config.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    pub max_queued: usize,
    pub overflow: QueueOverflow,
    /// Queue QoS 0 messages for a persistent session while it is offline.
    pub queue_qos0_offline: bool,
    /// A full mailbox of a connected client pushes back on publishers
    /// (`limits.slow_subscriber_timeout` is not 0).
    pub backpressure: bool,
}

impl MailboxLimits {
    /// Publishers waiting on a full mailbox resume once it is down to this many.
    fn low_water(&self) -> usize {
        self.max_queued / 2
    }
}

struct Mailbox {
    queue: VecDeque<Delivery>,
    online: bool,
    limits: MailboxLimits,
    /// Found stuck by a waiting publisher: the overflow policy applies again, not backpressure,
    /// until the client drains its queue to the low-water mark.
    slow: bool,
    /// Some publisher waits on this mailbox to drain (so draining must notify).
    waiters: bool,
    /// Deliveries taken out since the session began: a waiting publisher's measure of progress.
    taken: u64,
}

/// The broker's handle on a serving connection: tells it to close, with the reason code its
/// client gets, and holds its keep-alive deadline (see `keepalive`). Whoever fires it also
/// wakes the session ([`Session::attach`], [`Session::kick_if`]); the connection reads the
/// reason each time it wakes.
pub(crate) struct Kick {
    /// 0 until fired; then 0x100 | the reason code (the first reason wins).
    reason: AtomicU16,
    /// Milliseconds on the broker's clock after which the keep alive has run out.
    deadline: AtomicU64,
    /// Milliseconds on the broker's clock after which the client's identity has expired.
    expiry: AtomicU64,
    /// The policy changed: the connection re-checks its subscriptions when it wakes
    /// (`policy_change`).
    recheck: AtomicBool,
    /// Who is connected, once authenticated (`policy_change`).
    who: Mutex<Option<Connected>>,
}

impl Kick {
    pub(crate) fn new() -> Kick {
        Kick {
            reason: AtomicU16::new(0),
            deadline: AtomicU64::new(keepalive::NEVER),
            expiry: AtomicU64::new(keepalive::NEVER),
            recheck: AtomicBool::new(false),
            who: Mutex::new(None),
        }
    }

    pub(crate) fn fire(&self, reason: ReasonCode) {
        let _ = self.reason.compare_exchange(
            0,
            0x100 | u16::from(reason.0),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn fired(&self) -> Option<ReasonCode> {
        match self.reason.load(Ordering::Acquire) {
            0 => None,
            r => Some(ReasonCode(r as u8)),
        }
    }
}

/// A client's session; see the module doc.
pub struct Session {
    pub client_id: ByteString,
    /// The principal that created the session (empty: unowned, claimed by the first principal
    /// to resume it; only sessions restored from records without an owner).
    owner: parking_lot::RwLock<ByteString>,
    mailbox: Mutex<Mailbox>,
    wake: Notify,
    /// Wakes publishers waiting for this mailbox to drain (see `backpressure`).
    drained: Notify,
    pub(crate) state: Arc<tokio::sync::Mutex<SessionState>>,
    /// The connection currently serving this session, and a counter bumped by every new one
    /// (so a timer set by an old connection can tell that it is stale).
    conn: Mutex<(u64, Option<Arc<Kick>>)>,
    /// Set once the session has ended; deliveries to it are dropped and a delayed will
    /// waiting on it is published at once (MQTT-3.1.3-9). (A flag, announced through
    /// `drained`, rather than a `CancellationToken`, which would be an allocation of its own
    /// per session.)
    ended: AtomicBool,
    /// Its QoS 1/2 deliveries are journaled (a persistent session, and a store that keeps
    /// messages).
    journaled: AtomicBool,
}

impl Session {
    pub fn new(
        client_id: ByteString,
        owner: ByteString,
        state: SessionState,
        limits: MailboxLimits,
    ) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            owner: parking_lot::RwLock::new(owner),
            mailbox: Mutex::new(Mailbox {
                queue: VecDeque::new(),
                online: false,
                limits,
                slow: false,
                waiters: false,
                taken: 0,
            }),
            wake: Notify::new(),
            drained: Notify::new(),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            conn: Mutex::new((0, None)),
            ended: AtomicBool::new(false),
            journaled: AtomicBool::new(false),
        })
    }

    /// Whether `principal` may resume this session; an unowned session becomes its.
    pub(crate) fn owned_by(&self, principal: &ByteString) -> bool {
        if self.owner.read().is_empty() {
            let mut owner = self.owner.write();
            if owner.is_empty() {
                *owner = principal.clone();
            }
            return *owner == *principal;
        }
        *self.owner.read() == *principal
    }

    /// The principal the session belongs to.
    pub(crate) fn owner(&self) -> ByteString {
        self.owner.read().clone()
    }

    /// Whether QoS 1/2 deliveries to this session are journaled.
    pub fn is_journaled(&self) -> bool {
        self.journaled.load(Ordering::Relaxed)
    }

    pub(crate) fn set_journaled(&self, journaled: bool) {
        self.journaled.store(journaled, Ordering::Relaxed);
    }

    /// Hands a message to this session. Never blocks.
    ///
    /// With `pushback` (the caller is a publisher's connection that will wait when told to),
    /// a connected client's mailbox that is not marked slow takes the message even beyond its
    /// bound, and [`Delivered::full`] is true once the mailbox is full: the caller must then
    /// wait (see `backpressure`) before it routes anything more. Each publisher thus adds at
    /// most one message beyond the bound. Otherwise (offline sessions, slow ones, the broker's
    /// own messages) the bound and its overflow policy apply. [`Delivered::dropped`] is the
    /// delivery the mailbox did not keep (the new one, or the oldest it dropped), so the
    /// caller can take a journaled one out of the store.
    pub fn deliver(&self, delivery: Delivery, metrics: &Metrics, pushback: bool) -> Delivered {
        if self.is_ended() {
            return Delivered::dropped(delivery);
        }
        let mut mb = self.mailbox.lock();
        if !mb.online && delivery.qos == QoS::AtMostOnce && !mb.limits.queue_qos0_offline {
            // QoS 0 for an offline session is not queued unless configured (section 4.5
            // allows either); it is not a drop the operator needs to hear about.
            return Delivered::dropped(delivery);
        }
        let max = mb.limits.max_queued;
        let push_back = pushback && mb.online && !mb.slow && mb.limits.backpressure && max > 0;
        let mut dropped = None;
        if mb.queue.len() >= max && !push_back {
            metrics.publish_dropped(DropCause::QueueFull);
            match mb.limits.overflow {
                QueueOverflow::DropNewest => return Delivered::dropped(delivery),
                QueueOverflow::DropOldest => {
                    dropped = mb.queue.pop_front();
                    metrics.queued_removed(1);
                }
            }
        }
        mb.queue.push_back(delivery);
        metrics.queued_added();
        let full = push_back && mb.queue.len() >= max;
        // Only the first delivery into an empty mailbox wakes the connection: it drains the
        // mailbox whenever it wakes, and what it leaves waits for its own window or socket.
        let wake = mb.online && mb.queue.len() == 1;
        drop(mb);
        if wake {
            self.wake.notify_one();
        }
        Delivered { full, dropped }
    }

    /// Takes up to `max` queued deliveries, oldest first, into `out`.
    pub(crate) fn take_queued(&self, max: usize, out: &mut Vec<Delivery>, metrics: &Metrics) {
        let mut mb = self.mailbox.lock();
        let n = max.min(mb.queue.len());
        out.extend(mb.queue.drain(..n));
        metrics.queued_removed(n);
        mb.taken += n as u64;
        if (mb.waiters || mb.slow) && mb.queue.len() <= mb.limits.low_water() {
            // Caught up: a slow client pushes back again, and waiting publishers resume.
            mb.slow = false;
            if std::mem::take(&mut mb.waiters) {
                drop(mb);
                self.drained.notify_waiters();
            }
        }
    }

    /// Puts deliveries back at the front (they did not fit the inflight window).
    pub(crate) fn requeue_front(&self, back: Vec<Delivery>, metrics: &Metrics) {
        let mut mb = self.mailbox.lock();
        metrics.queued_returned(back.len());
        for d in back.into_iter().rev() {
            mb.queue.push_front(d);
        }
    }

    pub(crate) fn set_online(&self, online: bool) {
        let mut mb = self.mailbox.lock();
        mb.online = online;
        mb.slow = false;
        if std::mem::take(&mut mb.waiters) {
            // An offline session never pushes back: its waiting publishers go on.
            drop(mb);
            self.drained.notify_waiters();
        }
    }

    /// For a publisher about to wait on this mailbox: `Some(progress)` while it is over its
    /// low-water mark and still pushes back (connected, not slow), counting the deliveries
    /// taken so far; `None` when there is nothing to wait for. Registers the caller as a
    /// waiter, so enable its [`Session::drained`] future before asking.
    pub(crate) fn congestion(&self) -> Option<u64> {
        let mut mb = self.mailbox.lock();
        let pushes_back = mb.online && !mb.slow && !self.is_ended();
        if !pushes_back || mb.queue.len() <= mb.limits.low_water() {
            return None;
        }
        mb.waiters = true;
        Some(mb.taken)
    }

    /// Resolves when a publisher waiting on this mailbox should look again.
    pub(crate) fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Marks the mailbox slow: it stops pushing back, and its overflow policy applies, until
    /// its client catches up. Waiting publishers go on.
    pub(crate) fn mark_slow(&self) {
        let mut mb = self.mailbox.lock();
        mb.slow = true;
        mb.waiters = false;
        drop(mb);
        self.drained.notify_waiters();
    }

    /// Waits until the serving connection has something to do: a delivery arrived in an empty
    /// mailbox, or it was kicked.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    /// Registers a new serving connection, kicking the previous one with `reason`.
    /// Returns the new connection's generation.
    pub(crate) fn attach(&self, kick: Arc<Kick>, reason: ReasonCode) -> u64 {
        let mut conn = self.conn.lock();
        if let Some(old) = conn.1.replace(kick) {
            old.fire(reason);
            self.wake.notify_one();
        }
        conn.0 += 1;
        conn.0
    }

    /// Closes the serving connection, if any and if `test` gives a reason, telling its client
    /// that reason.
    pub(crate) fn kick_if(&self, test: impl FnOnce(&Kick) -> Option<ReasonCode>) {
        if let Some(kick) = &self.conn.lock().1
            && let Some(reason) = test(kick)
        {
            kick.fire(reason);
            self.wake.notify_one();
        }
    }

    /// Forgets the serving connection if it is still generation `generation`; true if so.
    pub(crate) fn detach(&self, generation: u64) -> bool {
        let mut conn = self.conn.lock();
        if conn.0 == generation {
            conn.1 = None;
            true
        } else {
            false
        }
    }

    pub(crate) fn current_generation(&self) -> u64 {
        self.conn.lock().0
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.conn.lock().1.is_some()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Resolves once the session has ended. (It waits on `drained`, which `end` also
    /// notifies: a drain wakes it for nothing, and it looks again.)
    pub(crate) async fn ended(&self) {
        loop {
            let mut signal = std::pin::pin!(self.drained.notified());
            signal.as_mut().enable();
            if self.is_ended() {
                return;
            }
            signal.await;
        }
    }

    /// Marks the session ended and empties its mailbox.
    pub(crate) fn end(&self, metrics: &Metrics) {
        self.ended.store(true, Ordering::Release);
        let mut mb = self.mailbox.lock();
        metrics.queued_removed(mb.queue.len());
        mb.queue.clear();
        mb.waiters = false;
        drop(mb);
        self.drained.notify_waiters();
    }
}

/// A session as a key in the subscription tree: equal only to itself.
#[derive(Clone)]
pub struct SessionRef(pub Arc<Session>);

impl PartialEq for SessionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SessionRef {}

impl Hash for SessionRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

impl std::fmt::Debug for SessionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Session({})", self.0.client_id)
    }
}
