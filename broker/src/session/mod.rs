//! Sessions: the state of one client, and the task that serves its connection.
//!
//! A [`Session`] outlives connections. It has two halves with different owners:
//! - the **mailbox**, where the router drops [`Delivery`]s for this client whether or not it is
//!   connected. A short `parking_lot` lock guards it; the router never waits for the client.
//!   It is bounded: when it is full the configured overflow policy drops the oldest or the
//!   newest message, and the metrics count it.
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
//! - `outbound`: from mailbox to wire: inflight window, packet ids, topic aliases, expiry.

mod connection;
mod handshake;
mod inbound;
mod outbound;
pub mod state;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::codec::{QoS, ReasonCode};
use crate::config::QueueOverflow;
use crate::message::Message;
use crate::metrics::{DropCause, Metrics};

pub use connection::serve;
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
}

/// The bounds of a mailbox, from the config.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    pub max_queued: usize,
    pub overflow: QueueOverflow,
    /// Queue QoS 0 messages for a persistent session while it is offline.
    pub queue_qos0_offline: bool,
}

struct Mailbox {
    queue: VecDeque<Delivery>,
    online: bool,
    limits: MailboxLimits,
}

/// Tells a serving connection to close, with the reason code its client gets.
#[derive(Default)]
pub(crate) struct Kick {
    reason: Mutex<Option<ReasonCode>>,
    notify: Notify,
}

impl Kick {
    pub(crate) fn fire(&self, reason: ReasonCode) {
        self.reason.lock().get_or_insert(reason);
        self.notify.notify_one();
    }

    pub(crate) async fn wait(&self) -> ReasonCode {
        loop {
            if let Some(r) = self.fired() {
                return r;
            }
            self.notify.notified().await;
        }
    }

    pub(crate) fn fired(&self) -> Option<ReasonCode> {
        *self.reason.lock()
    }
}

/// A client's session; see the module doc.
pub struct Session {
    pub client_id: ByteString,
    mailbox: Mutex<Mailbox>,
    wake: Notify,
    pub(crate) state: Arc<tokio::sync::Mutex<SessionState>>,
    /// The connection currently serving this session, and a counter bumped by every new one
    /// (so a timer set by an old connection can tell that it is stale).
    conn: Mutex<(u64, Option<Arc<Kick>>)>,
    /// Cancelled once the session has ended; deliveries to it are dropped and a delayed will
    /// waiting on it is published at once (MQTT-3.1.3-9).
    pub(crate) ended: CancellationToken,
}

impl Session {
    pub fn new(client_id: ByteString, state: SessionState, limits: MailboxLimits) -> Arc<Session> {
        Arc::new(Session {
            client_id,
            mailbox: Mutex::new(Mailbox {
                queue: VecDeque::new(),
                online: false,
                limits,
            }),
            wake: Notify::new(),
            state: Arc::new(tokio::sync::Mutex::new(state)),
            conn: Mutex::new((0, None)),
            ended: CancellationToken::new(),
        })
    }

    /// Hands a message to this session. Never blocks; applies the queue bound.
    pub fn deliver(&self, delivery: Delivery, metrics: &Metrics) {
        if self.ended.is_cancelled() {
            return;
        }
        let mut mb = self.mailbox.lock();
        if !mb.online && delivery.qos == QoS::AtMostOnce && !mb.limits.queue_qos0_offline {
            // QoS 0 for an offline session is not queued unless configured (section 4.5
            // allows either); it is not a drop the operator needs to hear about.
            return;
        }
        if mb.queue.len() >= mb.limits.max_queued {
            metrics.publish_dropped(DropCause::QueueFull);
            match mb.limits.overflow {
                QueueOverflow::DropNewest => return,
                QueueOverflow::DropOldest => {
                    mb.queue.pop_front();
                    metrics.queued_removed(1);
                }
            }
        }
        mb.queue.push_back(delivery);
        metrics.queued_added();
        let online = mb.online;
        drop(mb);
        if online {
            self.wake.notify_one();
        }
    }

    /// Takes up to `max` queued deliveries, oldest first, into `out`.
    pub(crate) fn take_queued(&self, max: usize, out: &mut Vec<Delivery>, metrics: &Metrics) {
        let mut mb = self.mailbox.lock();
        let n = max.min(mb.queue.len());
        out.extend(mb.queue.drain(..n));
        metrics.queued_removed(n);
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
        self.mailbox.lock().online = online;
    }

    /// Waits until a delivery arrives for an online session.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    /// Registers a new serving connection, kicking the previous one with `reason`.
    /// Returns the new connection's generation.
    pub(crate) fn attach(&self, kick: Arc<Kick>, reason: ReasonCode) -> u64 {
        let mut conn = self.conn.lock();
        if let Some(old) = conn.1.replace(kick) {
            old.fire(reason);
        }
        conn.0 += 1;
        conn.0
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

    /// Marks the session ended and empties its mailbox.
    pub(crate) fn end(&self, metrics: &Metrics) {
        self.ended.cancel();
        let mut mb = self.mailbox.lock();
        metrics.queued_removed(mb.queue.len());
        mb.queue.clear();
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
