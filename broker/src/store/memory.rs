//! [`MemoryStore`]: the in-memory [`Store`], and the reference for what a store must do.
//!
//! It materializes the journal into maps so that `load` returns exactly what was applied; a
//! broker restarted on the same `MemoryStore` (as the tests do) gets its retained messages,
//! persistent sessions and bans back. Messages are shared `Arc`s, so holding them here costs a pointer,
//! not a copy. It does not journal queued or inflight messages
//! ([`Store::journals_messages`] is false), so the broker builds none of those changes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytestring::ByteString;
use parking_lot::Mutex;

use super::{Change, SessionRecord, Snapshot, Store, StoreError};
use crate::message::Message;
use crate::pending::Pending;

/// Keeps durable state in process memory: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    accepted: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    retained: HashMap<ByteString, Arc<Message>>,
    sessions: HashMap<ByteString, SessionRecord>,
    bans: HashSet<ByteString>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// How many QoS 1/2 messages were accepted through this store.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Pending<Result<Snapshot, StoreError>> {
        let state = self.state.lock();
        Ok(Snapshot {
            retained: state.retained.values().cloned().collect(),
            sessions: state.sessions.values().cloned().collect(),
            bans: state.bans.iter().cloned().collect(),
            ..Snapshot::default()
        })
        .into()
    }

    fn apply(&self, change: Change) -> Pending<Result<(), StoreError>> {
        match change {
            Change::Accepted { .. } => {
                // Accepted messages are routed to in-memory mailboxes by the broker; there is
                // nothing more durable to do with them here.
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Change::Retained { topic, message } => {
                let mut state = self.state.lock();
                match message {
                    Some(m) => state.retained.insert(topic, m),
                    None => state.retained.remove(&topic),
                };
            }
            Change::SessionSaved(record) => {
                self.state
                    .lock()
                    .sessions
                    .insert(record.client_id.clone(), record);
            }
            Change::SessionRemoved(id) => {
                self.state.lock().sessions.remove(&id);
            }
            Change::Banned(id) => {
                self.state.lock().bans.insert(id);
            }
            Change::Unbanned(id) => {
                self.state.lock().bans.remove(&id);
            }
            // Not sent to a store that does not journal messages; nothing to keep if they are.
            Change::Routed { .. }
            | Change::Sent { .. }
            | Change::Released { .. }
            | Change::Dequeued { .. }
            | Change::InboundReleased { .. }
            | Change::WillScheduled(_)
            | Change::WillRemoved(_) => {}
        }
        Ok(()).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ProtocolVersion, QoS};
    use crate::message::MessageProperties;
    use crate::store::SubscriptionRecord;
    use std::time::Instant;

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: MessageProperties::default(),
            received: Instant::now(),
            expiry: None,
            publisher: None,
        })
    }

    #[tokio::test]
    async fn load_returns_what_was_applied() {
        let store = MemoryStore::new();
        let apply = |c| store.apply(c);
        apply(Change::Retained {
            topic: "a".into(),
            message: Some(message("a")),
        })
        .get()
        .await
        .unwrap();
        apply(Change::Retained {
            topic: "b".into(),
            message: Some(message("b")),
        })
        .get()
        .await
        .unwrap();
        apply(Change::Retained {
            topic: "a".into(),
            message: None,
        })
        .get()
        .await
        .unwrap();
        let record = SessionRecord {
            owner: None,
            client_id: "c1".into(),
            protocol: ProtocolVersion::V5,
            expiry_interval: 60,
            subscriptions: vec![SubscriptionRecord {
                filter: "x/#".into(),
                options: Default::default(),
                identifier: Some(7),
                check_each_delivery: false,
            }],
            offline_since: None,
        };
        apply(Change::SessionSaved(record.clone()))
            .get()
            .await
            .unwrap();
        apply(Change::SessionSaved(SessionRecord {
            owner: None,
            client_id: "c2".into(),
            ..record.clone()
        }))
        .get()
        .await
        .unwrap();
        apply(Change::SessionRemoved("c2".into()))
            .get()
            .await
            .unwrap();

        let snap = store.load().get().await.unwrap();
        assert_eq!(snap.retained.len(), 1);
        assert_eq!(snap.retained[0].topic, "b");
        assert_eq!(snap.sessions, vec![record]);
    }
}
