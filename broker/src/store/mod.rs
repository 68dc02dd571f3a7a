//! The storage seam: the state that must outlive a connection, a restart and a crash.
//!
//! The broker keeps its working state in memory (the subscription trie, the retained index, the
//! session mailboxes and inflight windows) and tells a [`Store`] about every change to what
//! must be durable, as a journal of [`Change`]s; on start it reads a [`Snapshot`] back. Keeping
//! the store a journal rather than the place the broker reads from on every message is what
//! lets the disk store batch the changes of many connections into one write transaction and
//! one fsync (group commit) without the session logic changing: a session awaits `apply`
//! before it acknowledges, and whether that returns at once (memory, or `batched` durability)
//! or after the next group commit (disk, `sync`) is the store's business.
//!
//! What is journaled:
//! - retained messages ([`Change::Retained`]);
//! - persistent sessions with their subscriptions and the time they went offline
//!   ([`Change::SessionSaved`], [`Change::SessionRemoved`]);
//! - every QoS 1/2 message accepted from a publisher ([`Change::Accepted`]), together with the
//!   persistent sessions it was queued for (stored once, referenced by each) and, for QoS 2
//!   from a persistent session, the packet id awaiting PUBREL, all in one change so that they
//!   are durable together;
//! - the progress of each queued message towards its subscriber ([`Change::Sent`] for the
//!   packet id a QoS 2 message went out with, [`Change::Released`], [`Change::Dequeued`]) and
//!   of inbound QoS 2 ([`Change::InboundReleased`]);
//! - will messages waiting out a will delay ([`Change::WillScheduled`], [`Change::WillRemoved`]);
//! - the client ids the operator banned ([`Change::Banned`], [`Change::Unbanned`]; see
//!   `crate::admin`): a ban holds until it is lifted, restarts included.
//!
//! Order is part of the contract: a store applies changes in the order `apply` was *called*,
//! not the order the returned [`Pending`]s are awaited, and a change is durable only once every
//! change applied before it is. The broker relies on this: it calls `apply` for a routed message
//! before the message reaches any mailbox, so the subscriber's acknowledgement can never be
//! journaled ahead of the message it acknowledges.
//!
//! Layout: this file holds the seam and its records; [`memory`] the in-memory store (the
//! reference, and what tests and `backend = "memory"` use); [`disk`] the embedded database.

pub mod disk;
pub mod memory;

use std::sync::Arc;

use bytestring::ByteString;
use smallvec::SmallVec;

use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::config::{StorageBackend, StorageConfig};
use crate::message::Message;
use crate::pending::Pending;
use crate::policy::Identity;

pub use disk::DiskStore;
pub use memory::MemoryStore;

/// Session expiry interval that means "never expires" (3.1.1 clean session 0, or 0xFFFFFFFF in
/// MQTT 5, MQTT-3.1.2-... section 3.1.2.11.2).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub filter: ByteString,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    /// The policy allowed it only with each delivery checked; a restored session keeps that.
    pub check_each_delivery: bool,
}

/// A persistent session as it must survive the client being away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub client_id: ByteString,
    /// The principal that created the session; only it may resume it. `None` in records
    /// written before ownership was recorded: the first principal to resume it claims it.
    pub owner: Option<ByteString>,
    pub protocol: ProtocolVersion,
    /// Seconds after disconnection; [`NEVER_EXPIRES`] for never.
    pub expiry_interval: u32,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Seconds since the Unix epoch when the session's last connection ended; `None` while a
    /// client is connected. A session restored with `None` (the broker stopped under it)
    /// starts its expiry at the restart.
    pub offline_since: Option<u64>,
}

/// A message queued for one persistent session: which session, its place in the journal, and
/// how it is to be delivered (the per-subscriber part of a delivery).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub client_id: ByteString,
    /// Unique per broker run and increasing: the order of the session's queue.
    pub seq: u64,
    pub qos: QoS,
    pub retain: bool,
    pub identifiers: SmallVec<[u32; 2]>,
}

/// A queued or inflight message of a persistent session, as read back at start.
#[derive(Debug, Clone)]
pub struct QueuedRecord {
    pub target: Target,
    pub message: Arc<Message>,
    /// The packet id a QoS 2 delivery was sent with (it must be resent with the same one).
    pub packet_id: Option<u16>,
    /// PUBREC arrived and PUBREL was sent: only PUBCOMP is missing.
    pub released: bool,
}

/// A will message waiting out its will delay.
#[derive(Debug, Clone)]
pub struct WillRecord {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    pub protocol: ProtocolVersion,
    /// The listener the client came in through, and who it was: a will published after a
    /// restart is authorized as it would have been before.
    pub listener: Arc<str>,
    pub identity: Identity,
    pub message: Arc<Message>,
    /// Seconds since the Unix epoch when it is due.
    pub publish_at: u64,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// A retained message was set (`Some`) or cleared (`None`) for a topic.
    Retained {
        topic: ByteString,
        message: Option<Arc<Message>>,
    },
    /// A persistent session was created or its subscriptions, expiry or connection changed.
    SessionSaved(SessionRecord),
    /// A session ended or expired: it goes with its queue, inbound QoS 2 state and will.
    SessionRemoved(ByteString),
    /// A QoS 1 or 2 message was accepted from a publisher and is about to be acknowledged.
    Accepted {
        client_id: ByteString,
        packet_id: u16,
        message: Arc<Message>,
        /// The persistent sessions it was queued for.
        targets: Vec<Target>,
        /// QoS 2 from a persistent session: remember `packet_id` until PUBREL (MQTT-4.3.3-9),
        /// so a resent PUBLISH after a restart is not forwarded twice.
        exactly_once: bool,
    },
    /// A message was queued for persistent sessions without a publisher waiting (a will).
    Routed {
        message: Arc<Message>,
        targets: Vec<Target>,
    },
    /// A queued QoS 2 message was sent with this packet id.
    Sent {
        client_id: ByteString,
        seq: u64,
        packet_id: u16,
    },
    /// PUBREC arrived for a queued QoS 2 message; PUBREL is being sent.
    Released { client_id: ByteString, seq: u64 },
    /// A queued message is done with: acknowledged, expired, or dropped.
    Dequeued { client_id: ByteString, seq: u64 },
    /// PUBREL arrived for an inbound QoS 2 packet id.
    InboundReleased {
        client_id: ByteString,
        packet_id: u16,
    },
    /// A will is waiting for its delay.
    WillScheduled(WillRecord),
    /// A will was published or cancelled.
    WillRemoved(ByteString),
    /// The operator banned a client id.
    Banned(ByteString),
    /// The operator lifted a ban.
    Unbanned(ByteString),
}

/// What a store holds, read once at start. Sessions, queued messages and wills whose expiry
/// passed while the broker was down are already left out (and purged).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionRecord>,
    /// Queued and inflight messages of the sessions, each session's in queue order.
    pub queued: Vec<QueuedRecord>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, by client.
    pub inbound_qos2: Vec<(ByteString, u16)>,
    pub wills: Vec<WillRecord>,
    /// Banned client ids.
    pub bans: Vec<ByteString>,
    /// The next journal sequence number to hand out.
    pub next_seq: u64,
}

/// A store failed. The broker refuses the operation that needed it (a publisher gets 0x80
/// unspecified error instead of a PUBACK) rather than acknowledging something it may lose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// Durable state behind one interface. Implementations must be cheap to call concurrently.
pub trait Store: Send + Sync + 'static {
    /// Everything stored, for the broker to rebuild its working state at start.
    fn load(&self) -> Pending<Result<Snapshot, StoreError>>;
    /// Records one change; resolves once the change is as durable as this store makes anything.
    /// Changes take effect in the order of the calls (see the module doc).
    fn apply(&self, change: Change) -> Pending<Result<(), StoreError>>;
    /// Records a change nobody waits for (an acknowledged or dropped delivery, say): ordered
    /// like `apply`, but without the cost of a future to await.
    fn apply_detached(&self, change: Change) {
        let _ = self.apply(change);
    }
    /// Whether this store keeps queued and inflight messages. When it does not, the broker
    /// builds none of those changes, so a memory broker pays nothing for them.
    fn journals_messages(&self) -> bool {
        false
    }
    /// Makes everything applied so far durable and releases the store's resources (the
    /// database file); called once at shutdown. Later changes are refused.
    fn close(&self) -> Pending<Result<(), StoreError>> {
        Ok(()).into()
    }
}

/// Opens the store the `[storage]` section asks for.
pub fn open(config: &StorageConfig) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        StorageBackend::Memory => Ok(Arc::new(MemoryStore::new())),
        StorageBackend::Disk => {
            let dir = config.data_dir().ok_or_else(|| {
                StoreError(
                    "no data directory: set storage.dir, or XDG_STATE_HOME or HOME".to_owned(),
                )
            })?;
            Ok(Arc::new(DiskStore::open(&dir, config)?))
        }
    }
}
