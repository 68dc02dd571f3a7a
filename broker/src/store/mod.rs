//! The storage seam: the state that must outlive a connection, and one day a restart.
//!
//! The broker keeps its working state in memory (the subscription trie, the retained index, the
//! session mailboxes) and tells a [`Store`] about every change to what must be durable, as a
//! journal of [`Change`]s; on start it reads a [`Snapshot`] back. Keeping the store a journal
//! rather than the place the broker reads from on every message is what lets the embedded disk
//! store of the durable-state issue batch many changes into one fsync (group commit) without
//! the session logic changing: a session awaits `apply` before it acknowledges, and whether that
//! returns at once (memory) or after the next group commit (disk) is the store's business.
//!
//! What is journaled today: retained messages, persistent sessions with their subscriptions,
//! and every QoS 1/2 message accepted from a publisher (PUBACK/PUBREC wait for it). Per-session
//! queues and outbound inflight state are not journaled yet; the durable-state issue adds those
//! changes to [`Change`].

pub mod memory;

use std::sync::Arc;

use bytestring::ByteString;

use crate::codec::{ProtocolVersion, SubscriptionOptions};
use crate::message::Message;
use crate::pending::Pending;

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
    pub protocol: ProtocolVersion,
    /// Seconds after disconnection; [`NEVER_EXPIRES`] for never.
    pub expiry_interval: u32,
    pub subscriptions: Vec<SubscriptionRecord>,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// A retained message was set (`Some`) or cleared (`None`) for a topic.
    Retained {
        topic: ByteString,
        message: Option<Arc<Message>>,
    },
    /// A persistent session was created or its subscriptions or expiry changed.
    SessionSaved(SessionRecord),
    /// A session ended or expired.
    SessionRemoved(ByteString),
    /// A QoS 1 or 2 message was accepted from a publisher and is about to be acknowledged.
    Accepted {
        client_id: ByteString,
        packet_id: u16,
        message: Arc<Message>,
    },
}

/// What a store holds, read once at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<SessionRecord>,
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
    fn apply(&self, change: Change) -> Pending<Result<(), StoreError>>;
}
