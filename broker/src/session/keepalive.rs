//! Keep alive (MQTT-3.1.2-24): a client that sends nothing for one and a half times its Keep
//! Alive is disconnected with 0x8D. The same sweep closes a connection whose identity has
//! expired (`Identity::expires_at`, MQTT 5: 0xA0 Maximum connect time).
//!
//! One broker task checks every connection's deadline each [`TICK`], instead of a timer in each
//! connection's task: a tokio `Sleep` is 112 bytes of every idle connection's future, and
//! re-arming it on every read costs more than storing one number. A connection moves its
//! deadline (an atomic in its [`Kick`]) forward when it reads; the sweep fires the kick of
//! any connection past its deadline, which wakes it like a takeover would. A client is thus
//! disconnected between 1.5 and 1.5 times its Keep Alive plus one tick after its last packet.

use std::sync::Arc;
use std::time::Duration;

use super::Kick;
use crate::broker::Shared;
use crate::codec::ReasonCode;

/// How often deadlines are checked.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// No deadline (keep alive 0, or the connection is paused by backpressure).
pub(crate) const NEVER: u64 = u64::MAX;

impl Kick {
    /// Sets the keep-alive deadline, in milliseconds on the broker's clock
    /// ([`Shared::now_ms`]), or [`NEVER`].
    pub(crate) fn set_deadline(&self, deadline_ms: u64) {
        self.deadline
            .store(deadline_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets when the client's identity expires, in milliseconds on the broker's clock, or
    /// [`NEVER`].
    pub(crate) fn set_expiry(&self, expiry_ms: u64) {
        self.expiry
            .store(expiry_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the connection must close now, if it must.
    fn overdue(&self, now_ms: u64) -> Option<ReasonCode> {
        use std::sync::atomic::Ordering::Relaxed;
        if now_ms >= self.deadline.load(Relaxed) {
            Some(ReasonCode::KEEP_ALIVE_TIMEOUT)
        } else if now_ms >= self.expiry.load(Relaxed) {
            Some(ReasonCode::MAXIMUM_CONNECT_TIME)
        } else {
            None
        }
    }
}

/// Checks every connection's deadline once per [`TICK`] until shutdown.
pub(crate) async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => return,
        }
        let now = shared.now_ms();
        for session in shared.sessions.lock().values() {
            session.kick_if(|k| k.overdue(now));
        }
    }
}
