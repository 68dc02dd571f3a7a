//! A plugin's pool of ready instances, so that concurrent calls never queue behind one lock.
//!
//! An instance is a wasmtime store with the plugin instantiated and initialised in it; a call
//! takes one, uses it alone, and gives it back. At most `max` instances exist at once (a
//! semaphore); a call that finds none idle creates one if it may, otherwise waits for one to
//! come back until its deadline. The lock around the idle list is held only to push or pop.
//!
//! An instance that failed (trapped, overran a budget, or was abandoned mid-call by a timeout)
//! is never given back: wasmtime leaves it in an unknown state. Its slot frees up, and the next
//! call that needs one creates a fresh instance.

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::Store;

use super::bindings;
use super::host::HostState;

/// One ready instance.
pub(super) struct Instance {
    pub store: Store<HostState>,
    pub bindings: bindings::Plugin,
}

impl Instance {
    /// The store and the hooks' bindings, borrowed apart for a call.
    pub fn parts(
        &mut self,
    ) -> (
        &mut Store<HostState>,
        &bindings::exports::moat::policy::hooks::Guest,
    ) {
        (&mut self.store, self.bindings.moat_policy_hooks())
    }
}

pub(super) struct Pool {
    idle: Mutex<Vec<Instance>>,
    slots: std::sync::Arc<Semaphore>,
}

impl Pool {
    pub fn new(max: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::with_capacity(max)),
            slots: std::sync::Arc::new(Semaphore::new(max)),
        }
    }

    /// A slot for one instance, waiting for one to free up; `None` if the pool is closed.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => self.slots.clone().acquire_owned().await.ok(),
        }
    }

    /// An idle instance, if there is one.
    pub fn take_idle(&self) -> Option<Instance> {
        self.idle.lock().pop()
    }

    /// Gives a healthy instance back.
    pub fn give_back(&self, instance: Instance) {
        self.idle.lock().push(instance);
    }

    /// How many instances are idle.
    pub fn idle(&self) -> usize {
        self.idle.lock().len()
    }

    /// How many more instances may be created or taken right now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }
}
