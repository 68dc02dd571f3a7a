//! The session registry: every session of the broker, found by client identifier.
//!
//! A set of the sessions themselves, looked up through the client identifier each one holds,
//! rather than a map from identifier to session: a map keeps a second handle on every
//! identifier (32 bytes a slot, and a table has up to twice as many slots as sessions), which
//! is memory per idle connection.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::session::Session;

/// The sessions by client identifier (behind `Shared::sessions`' mutex).
#[derive(Default)]
pub struct Registry(HashSet<ById>);

/// A session as a set entry: hashed and compared by its client identifier.
struct ById(Arc<Session>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.client_id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        Borrow::<str>::borrow(self).hash(state)
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &ById) -> bool {
        self.0.client_id == other.0.client_id
    }
}

impl Eq for ById {}

impl Registry {
    /// The session of this client identifier.
    pub fn get(&self, client_id: &str) -> Option<&Arc<Session>> {
        self.0.get(client_id).map(|s| &s.0)
    }

    pub fn contains_key(&self, client_id: &str) -> bool {
        self.0.contains(client_id)
    }

    /// Adds a session, replacing any with the same client identifier.
    pub fn insert(&mut self, session: Arc<Session>) {
        self.0.replace(ById(session));
    }

    pub fn remove(&mut self, client_id: &str) -> Option<Arc<Session>> {
        self.0.take(client_id).map(|s| s.0)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Session>> {
        self.0.iter().map(|s| &s.0)
    }
}
