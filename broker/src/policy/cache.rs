//! The per-session decision cache: answers a session may reuse instead of asking the plugins.
//!
//! Each connection owns one, so a lookup takes no lock. An entry is an allow for one question
//! (action, topic, QoS, retain: the verdict may depend on any of them), kept until the earliest
//! of the plugin's cache lifetime and the identity's expiry. Every hit also asks
//! [`Policy::is_current`] whether the stamp the answer was given under still holds: replacing a
//! plugin, or a plugin calling `invalidate`, makes its earlier answers stale at once, in every
//! session, without visiting any of them.
//!
//! Only allows are cached; a denial is asked again. The cache is bounded: when it is full,
//! expired entries go, and if that is not enough, all of them.

use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use hashbrown::{Equivalent, HashMap};

use super::{Grant, Policy, Stamp};
use crate::codec::QoS;

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Deliver,
}

struct Key {
    action: Action,
    qos: QoS,
    retain: bool,
    topic: ByteString,
}

/// A key borrowed from the question, so a lookup allocates nothing.
struct Probe<'a> {
    action: Action,
    qos: QoS,
    retain: bool,
    topic: &'a str,
}

fn hash_parts<H: Hasher>(state: &mut H, action: Action, qos: QoS, retain: bool, topic: &str) {
    action.hash(state);
    (qos as u8).hash(state);
    retain.hash(state);
    topic.hash(state);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(state, self.action, self.qos, self.retain, &self.topic);
    }
}

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_parts(state, self.action, self.qos, self.retain, self.topic);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        (self.action, self.qos, self.retain) == (other.action, other.qos, other.retain)
            && self.topic == other.topic
    }
}

impl Eq for Key {}

impl Equivalent<Key> for Probe<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        (self.action, self.qos, self.retain) == (key.action, key.qos, key.retain)
            && self.topic == &*key.topic
    }
}

struct Entry {
    expires: Instant,
    stamp: Stamp,
}

/// One session's reusable decisions; see the module doc. Its bound is passed in by the caller
/// (the configuration's), so that every idle connection does not store it.
#[derive(Default)]
pub struct DecisionCache {
    entries: HashMap<Key, Entry>,
}

impl DecisionCache {
    /// True if an allow for this question is cached, unexpired and still current.
    pub fn allows(
        &self,
        policy: &dyn Policy,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
        now: Instant,
    ) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let probe = Probe {
            action,
            qos,
            retain,
            topic,
        };
        self.entries
            .get(&probe)
            .is_some_and(|e| now < e.expires && policy.is_current(&e.stamp))
    }

    /// Remembers an allow for as long as its grant and `identity_expiry` both allow, keeping
    /// at most `capacity` decisions (0 disables the cache).
    #[allow(clippy::too_many_arguments)]
    pub fn remember(
        &mut self,
        capacity: usize,
        action: Action,
        topic: &ByteString,
        qos: QoS,
        retain: bool,
        grant: &Grant,
        now: Instant,
        identity_expiry: Option<Instant>,
    ) {
        if grant.cache_seconds == 0 || capacity == 0 {
            return;
        }
        let mut expires = now + Duration::from_secs(u64::from(grant.cache_seconds));
        if let Some(limit) = identity_expiry {
            expires = expires.min(limit);
        }
        if expires <= now {
            return;
        }
        if self.entries.len() >= capacity {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= capacity {
                self.entries.clear();
            }
        }
        let key = Key {
            action,
            qos,
            retain,
            topic: topic.clone(),
        };
        let entry = Entry {
            expires,
            stamp: grant.stamp.clone(),
        };
        self.entries.insert(key, entry);
    }

    /// Forgets everything (the identity changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AllowAll;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A policy whose stamps are current while their one mark equals `epoch`.
    #[derive(Default)]
    struct Epoch(AtomicU64);

    impl Epoch {
        fn stamp(&self) -> Stamp {
            Stamp([(0, self.0.load(Ordering::Relaxed))].into_iter().collect())
        }
    }

    // Only `is_current` matters to the cache; the rest answers as AllowAll does.
    impl Policy for Epoch {
        fn on_connect(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
        ) -> crate::pending::Pending<crate::policy::Verdict> {
            AllowAll.on_connect(c)
        }
        fn authenticate(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
            cr: crate::policy::Credentials,
        ) -> crate::pending::Pending<crate::policy::AuthOutcome> {
            AllowAll.authenticate(c, cr)
        }
        fn continue_auth(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
            s: bytes::Bytes,
            d: bytes::Bytes,
        ) -> crate::pending::Pending<crate::policy::AuthOutcome> {
            AllowAll.continue_auth(c, s, d)
        }
        fn authorize_publish(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
            i: &std::sync::Arc<crate::policy::Identity>,
            k: crate::policy::PublishKind,
            m: &std::sync::Arc<crate::message::Message>,
        ) -> crate::pending::Pending<crate::policy::Verdict> {
            AllowAll.authorize_publish(c, i, k, m)
        }
        fn authorize_subscribe(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
            i: &std::sync::Arc<crate::policy::Identity>,
            f: &ByteString,
            q: QoS,
        ) -> crate::pending::Pending<crate::policy::SubscribeVerdict> {
            AllowAll.authorize_subscribe(c, i, f, q)
        }
        fn authorize_deliver(
            &self,
            c: &std::sync::Arc<crate::policy::ClientInfo>,
            i: &std::sync::Arc<crate::policy::Identity>,
            t: &ByteString,
        ) -> crate::pending::Pending<crate::policy::Verdict> {
            AllowAll.authorize_deliver(c, i, t)
        }
        fn is_current(&self, stamp: &Stamp) -> bool {
            stamp
                .0
                .iter()
                .all(|&(_, e)| e == self.0.load(Ordering::Relaxed))
        }
    }

    const CAP: usize = 8;

    fn grant(secs: u32, stamp: Stamp) -> Grant {
        Grant {
            cache_seconds: secs,
            stamp,
        }
    }

    #[test]
    fn an_allow_is_reused_for_the_same_question_only() {
        let p = Epoch::default();
        let mut c = DecisionCache::default();
        let now = Instant::now();
        let t = ByteString::from("a/b");
        c.remember(
            CAP,
            Action::Publish,
            &t,
            QoS::AtLeastOnce,
            false,
            &grant(60, p.stamp()),
            now,
            None,
        );
        assert!(c.allows(&p, Action::Publish, "a/b", QoS::AtLeastOnce, false, now));
        assert!(!c.allows(&p, Action::Publish, "a/b", QoS::AtMostOnce, false, now));
        assert!(!c.allows(&p, Action::Publish, "a/b", QoS::AtLeastOnce, true, now));
        assert!(!c.allows(&p, Action::Deliver, "a/b", QoS::AtLeastOnce, false, now));
        assert!(!c.allows(&p, Action::Publish, "a/c", QoS::AtLeastOnce, false, now));
    }

    #[test]
    fn entries_expire_with_the_grant_or_the_identity() {
        let p = Epoch::default();
        let mut c = DecisionCache::default();
        let now = Instant::now();
        let t = ByteString::from("t");
        c.remember(
            CAP,
            Action::Publish,
            &t,
            QoS::AtMostOnce,
            false,
            &grant(10, p.stamp()),
            now,
            None,
        );
        assert!(c.allows(
            &p,
            Action::Publish,
            "t",
            QoS::AtMostOnce,
            false,
            now + Duration::from_secs(9)
        ));
        assert!(!c.allows(
            &p,
            Action::Publish,
            "t",
            QoS::AtMostOnce,
            false,
            now + Duration::from_secs(10)
        ));
        let mut c = DecisionCache::default();
        let identity_ends = now + Duration::from_secs(2);
        c.remember(
            CAP,
            Action::Publish,
            &t,
            QoS::AtMostOnce,
            false,
            &grant(10, p.stamp()),
            now,
            Some(identity_ends),
        );
        assert!(!c.allows(
            &p,
            Action::Publish,
            "t",
            QoS::AtMostOnce,
            false,
            identity_ends
        ));
        // Zero seconds: not cached at all.
        let mut c = DecisionCache::default();
        c.remember(
            CAP,
            Action::Publish,
            &t,
            QoS::AtMostOnce,
            false,
            &grant(0, p.stamp()),
            now,
            None,
        );
        assert!(c.is_empty());
    }

    #[test]
    fn a_stale_stamp_is_a_miss() {
        let p = Epoch::default();
        let mut c = DecisionCache::default();
        let now = Instant::now();
        c.remember(
            CAP,
            Action::Deliver,
            &"t".into(),
            QoS::AtMostOnce,
            false,
            &grant(60, p.stamp()),
            now,
            None,
        );
        assert!(c.allows(&p, Action::Deliver, "t", QoS::AtMostOnce, false, now));
        p.0.fetch_add(1, Ordering::Relaxed);
        assert!(!c.allows(&p, Action::Deliver, "t", QoS::AtMostOnce, false, now));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let p = Epoch::default();
        let mut c = DecisionCache::default();
        let now = Instant::now();
        for i in 0..10 {
            let t = ByteString::from(format!("t/{i}"));
            c.remember(
                4,
                Action::Publish,
                &t,
                QoS::AtMostOnce,
                false,
                &grant(60, p.stamp()),
                now,
                None,
            );
            assert!(c.len() <= 4);
        }
        assert!(c.allows(&p, Action::Publish, "t/9", QoS::AtMostOnce, false, now));
    }
}
