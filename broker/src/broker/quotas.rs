//! Broker-wide quotas: retained messages (count and payload bytes, in total and per
//! publishing client) and persistent sessions.
//!
//! **Retained usage** is kept beside the retained index and changed under the index's write
//! lock at every place the index changes (retain, purge of expired messages, restore), so the
//! two never drift. A retained message counts against the client identifier that published
//! it; the broker's own (`$SYS`) and will messages count in the totals but are never refused.
//! A new retained message is refused only if it would *raise* a figure above its limit:
//! replacing a message by a smaller one, or clearing one, is always allowed, so lowering a
//! limit never traps anyone.
//!
//! **Persistent sessions** are the client identifiers whose session has a non-zero expiry, as a
//! set: adding or removing an identifier twice changes nothing, so the count cannot drift
//! however takeovers and expiries interleave.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytestring::ByteString;
use parking_lot::Mutex;

use crate::config::Limits;
use crate::message::Message;

/// Count and payload bytes of retained messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    count: u64,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, m: &Message) {
        self.count += 1;
        self.bytes += m.payload.len() as u64;
    }

    fn remove(&mut self, m: &Message) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(m.payload.len() as u64);
    }
}

/// Retained messages held, in total and per publishing client identifier.
#[derive(Debug, Default)]
pub struct RetainedUsage {
    total: Usage,
    per_client: HashMap<ByteString, Usage>,
}

impl RetainedUsage {
    /// Accounts a message entering the index.
    pub fn add(&mut self, m: &Message) {
        self.total.add(m);
        if let Some(p) = &m.publisher {
            self.per_client.entry(p.clone()).or_default().add(m);
        }
    }

    /// Accounts a message leaving the index.
    pub fn remove(&mut self, m: &Message) {
        self.total.remove(m);
        if let Some(p) = &m.publisher
            && let Some(u) = self.per_client.get_mut(p)
        {
            u.remove(m);
            if u.count == 0 {
                self.per_client.remove(p);
            }
        }
    }

    /// Whether `new` may replace `old` (the topic's current message, if any) under `limits`.
    pub fn allows(&self, limits: &Limits, new: &Message, old: Option<&Arc<Message>>) -> bool {
        let change = |mut u: Usage, counts_old: bool| {
            if let Some(o) = old.filter(|_| counts_old) {
                u.remove(o);
            }
            u.add(new);
            u
        };
        let within = |before: Usage, after: Usage, count: Option<u32>, bytes: Option<u64>| {
            let count_ok = count.is_none_or(|max| after.count <= u64::from(max))
                || after.count <= before.count;
            let bytes_ok =
                bytes.is_none_or(|max| after.bytes <= max) || after.bytes <= before.bytes;
            count_ok && bytes_ok
        };
        let total = change(self.total, true);
        if !within(
            self.total,
            total,
            limits.max_retained_messages,
            limits.max_retained_bytes,
        ) {
            return false;
        }
        let Some(publisher) = &new.publisher else {
            return true;
        };
        let before = self.per_client.get(publisher).copied().unwrap_or_default();
        let same_owner = old.is_some_and(|o| o.publisher.as_ref() == Some(publisher));
        within(
            before,
            change(before, same_owner),
            limits.max_retained_messages_per_client,
            limits.max_retained_bytes_per_client,
        )
    }
}

/// The quotas' state, one per broker.
#[derive(Debug, Default)]
pub struct Quotas {
    pub retained: Mutex<RetainedUsage>,
    persistent: Mutex<HashSet<ByteString>>,
}

impl Quotas {
    /// Records whether `client_id`'s session is persistent (non-zero expiry).
    pub fn set_persistent(&self, client_id: &ByteString, persistent: bool) {
        let mut set = self.persistent.lock();
        if persistent {
            set.insert(client_id.clone());
        } else {
            set.remove(client_id);
        }
    }

    /// Whether a new persistent session for `client_id` fits `max` (an existing one always
    /// does).
    pub fn persistent_session_allowed(&self, client_id: &ByteString, max: Option<u32>) -> bool {
        let Some(max) = max else { return true };
        let set = self.persistent.lock();
        set.contains(client_id) || set.len() < max as usize
    }

    /// Persistent sessions now.
    pub fn persistent_sessions(&self) -> usize {
        self.persistent.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(publisher: Option<&str>, len: usize) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteString::from("t"),
            payload: Bytes::from(vec![0u8; len]),
            qos: crate::codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            received: std::time::Instant::now(),
            expiry: None,
            publisher: publisher.map(ByteString::from),
        })
    }

    #[test]
    fn quotas_refuse_growth_beyond_a_limit_but_never_shrinking() {
        let limits = Limits {
            max_retained_messages: Some(2),
            max_retained_bytes_per_client: Some(10),
            ..Limits::default()
        };
        let mut u = RetainedUsage::default();
        let a = msg(Some("a"), 6);
        assert!(u.allows(&limits, &a, None));
        u.add(&a);
        // Per client bytes: 6 + 6 > 10 for a second topic, but replacing the first is fine.
        assert!(!u.allows(&limits, &msg(Some("a"), 6), None));
        assert!(u.allows(&limits, &msg(Some("a"), 9), Some(&a)));
        // Another client's replacement of a's message frees a's bytes, not b's.
        assert!(u.allows(&limits, &msg(Some("b"), 10), Some(&a)));
        let b = msg(Some("b"), 1);
        u.add(&b);
        // Total count: a third topic is refused, for anyone, the broker's own included.
        assert!(!u.allows(&limits, &msg(Some("c"), 1), None));
        assert!(!u.allows(&limits, &msg(None, 1), None));
        u.remove(&b);
        assert!(u.allows(&limits, &msg(Some("c"), 1), None));
        assert_eq!(
            u.per_client.len(),
            1,
            "a client with nothing retained is forgotten"
        );
    }

    #[test]
    fn persistent_sessions_are_a_set() {
        let q = Quotas::default();
        let a = ByteString::from("a");
        q.set_persistent(&a, true);
        q.set_persistent(&a, true);
        assert_eq!(q.persistent_sessions(), 1);
        assert!(!q.persistent_session_allowed(&ByteString::from("b"), Some(1)));
        assert!(q.persistent_session_allowed(&a, Some(1)));
        q.set_persistent(&a, false);
        q.set_persistent(&a, false);
        assert_eq!(q.persistent_sessions(), 0);
    }
}
