//! Who gets a PUBLISH: the subscription trie and the retained-message index.
//!
//! * [`SubscriptionTree`] (`tree.rs`) holds every subscription, ordinary and shared, and turns
//!   a topic into one [`Route`] per delivery, applying the overlap, No Local, shared-round-robin
//!   and `$` rules of sections 3.3.4, 3.8.3, 4.7 and 4.8.2.
//! * [`RetainedIndex`] (`retained.rs`) holds the retained message of each topic and finds those
//!   matching a new subscription's filter.
//!
//! Both are plain data structures, generic over what they store and free of I/O and locking,
//! so the session layer decides how to share them. They assume their inputs passed the checks
//! in [`crate::topic`]. `arena.rs`, `sublist.rs` and `merge.rs` are their building blocks.

mod arena;
mod merge;
mod retained;
mod sublist;
mod tree;

#[cfg(test)]
mod tests;

pub use retained::RetainedIndex;
pub use tree::{Route, SubscriptionTree};
