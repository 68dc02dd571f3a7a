//! [`Pending`]: an answer that is either here now or arrives later.
//!
//! The policy and store seams are asynchronous because their real implementations wait (a Wasm
//! plugin asking LDAP, a disk store waiting for its group commit). Most answers, though, are
//! immediate: an allow-all policy, a cached decision, the in-memory store. Returning a boxed
//! future for those would cost an allocation per message on the hot path, so these seams return
//! `Pending`, which only boxes when there really is something to wait for.

use std::future::Future;
use std::pin::Pin;

/// A value available now, or a future that will produce it.
pub enum Pending<T> {
    Ready(T),
    Later(Pin<Box<dyn Future<Output = T> + Send + 'static>>),
}

impl<T> Pending<T> {
    /// Wraps a future (boxing it).
    pub fn later(f: impl Future<Output = T> + Send + 'static) -> Pending<T> {
        Pending::Later(Box::pin(f))
    }

    /// Waits for the value; free when it is already here.
    pub async fn get(self) -> T {
        match self {
            Pending::Ready(v) => v,
            Pending::Later(f) => f.await,
        }
    }
}

impl<T> From<T> for Pending<T> {
    fn from(v: T) -> Pending<T> {
        Pending::Ready(v)
    }
}
