//! The subscriptions stored at one trie node: a list with an optional index.
//!
//! Routing iterates every subscription of a matching node, so they live in a `Vec` (contiguous,
//! cheap to walk, and indexable for round-robin over a shared group's members). Subscribe and
//! unsubscribe must find one subscriber in it; a linear scan is fastest for the usual handful,
//! but a filter that thousands of clients subscribe to (`broadcast/#`) would make each of those
//! O(n). So once a list grows past [`INDEX_FROM`] entries it also keeps a `HashMap` from
//! subscriber to position, dropped again when the list shrinks well below that.

use std::collections::HashMap;
use std::hash::Hash;

use crate::codec::SubscriptionOptions;

use super::arena::shrink_vec;

/// Above this many entries a list keeps a subscriber → position index.
const INDEX_FROM: usize = 16;

/// One subscriber's subscription to the filter of the node holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription<S> {
    pub(crate) subscriber: S,
    pub(crate) options: SubscriptionOptions,
    pub(crate) identifier: Option<u32>,
}

/// At most one [`Subscription`] per subscriber.
#[derive(Debug)]
pub(crate) struct SubList<S> {
    entries: Vec<Subscription<S>>,
    /// Boxed because almost every list has none: 8 bytes per trie node instead of 48.
    #[expect(
        clippy::box_collection,
        reason = "keeps the common, unindexed list small"
    )]
    index: Option<Box<HashMap<S, usize>>>,
}

impl<S> Default for SubList<S> {
    fn default() -> Self {
        SubList {
            entries: Vec::new(),
            index: None,
        }
    }
}

impl<S: Clone + Eq + Hash> SubList<S> {
    pub(crate) fn as_slice(&self) -> &[Subscription<S>] {
        &self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True once the list keeps a subscriber → position index, making [`Self::position`] O(1).
    pub(crate) fn is_indexed(&self) -> bool {
        self.index.is_some()
    }

    /// Where the subscriber's entry is in [`Self::as_slice`].
    pub(crate) fn position(&self, subscriber: &S) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(subscriber).copied(),
            None => self
                .entries
                .iter()
                .position(|e| &e.subscriber == subscriber),
        }
    }

    /// Adds `sub`, or replaces the subscriber's existing entry. True if it replaced one.
    pub(crate) fn upsert(&mut self, sub: Subscription<S>) -> bool {
        if let Some(i) = self.position(&sub.subscriber) {
            self.entries[i] = sub;
            return true;
        }
        if let Some(index) = &mut self.index {
            index.insert(sub.subscriber.clone(), self.entries.len());
        }
        self.entries.push(sub);
        if self.index.is_none() && self.entries.len() > INDEX_FROM {
            let index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.subscriber.clone(), i))
                .collect();
            self.index = Some(Box::new(index));
        }
        false
    }

    /// Removes the subscriber's entry. True if there was one. Order is not kept.
    pub(crate) fn remove(&mut self, subscriber: &S) -> bool {
        let Some(i) = self.position(subscriber) else {
            return false;
        };
        self.entries.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(subscriber);
            if let Some(moved) = self.entries.get(i)
                && let Some(slot) = index.get_mut(&moved.subscriber)
            {
                *slot = i;
            }
            if self.entries.len() < INDEX_FROM / 2 {
                self.index = None;
            }
        }
        shrink_vec(&mut self.entries);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(subscriber: u32, identifier: Option<u32>) -> Subscription<u32> {
        Subscription {
            subscriber,
            options: SubscriptionOptions::default(),
            identifier,
        }
    }

    #[test]
    fn upsert_and_remove_across_the_index_threshold() {
        let mut list = SubList::default();
        for i in 0..100 {
            assert!(!list.upsert(sub(i, None)));
        }
        assert!(list.index.is_some());
        assert!(list.upsert(sub(42, Some(7))));
        assert_eq!(list.len(), 100);
        // Remove from the front so swap_remove keeps moving the last entry.
        for i in 0..95 {
            assert!(list.remove(&i), "remove {i}");
            assert!(!list.remove(&i));
            for (pos, e) in list.as_slice().iter().enumerate() {
                assert_eq!(list.position(&e.subscriber), Some(pos));
            }
        }
        assert!(list.index.is_none());
        let mut left: Vec<u32> = list.as_slice().iter().map(|e| e.subscriber).collect();
        left.sort_unstable();
        assert_eq!(left, [95, 96, 97, 98, 99]);
        for i in 95..100 {
            assert!(list.remove(&i));
        }
        assert!(list.is_empty());
        assert_eq!(list.entries.capacity(), 0);
    }
}
