//! The publish rate limits of one connection (`limits.publish_rate_per_client`,
//! `limits.publish_bytes_per_client`).
//!
//! A client over its rate is slowed down, not disconnected and not dropped: before its next
//! PUBLISH is handled, the connection task waits until the client is back within the rate.
//! While it waits it reads nothing more from the client, so TCP pushes back on the publisher
//! and nothing is lost; a takeover or shutdown still ends the wait at once. Other clients are
//! served by their own tasks and do not notice. A wait is counted once per throttled PUBLISH
//! (`$SYS/broker/limits/publish_rate`).
//!
//! Connections without these limits carry `None` and pay one branch per PUBLISH.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::connection::Conn;
use crate::config::Limits;
use crate::metrics::Limit;
use crate::net::admission::TokenBucket;

/// Token buckets for PUBLISH packets and payload bytes per second.
#[derive(Debug)]
pub(super) struct Throttle {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Throttle {
    /// The throttle the limits ask for, or `None` when they set no publish rate.
    pub(super) fn new(limits: &Limits) -> Option<Box<Throttle>> {
        let now = Instant::now().into_std();
        let messages = limits
            .publish_rate_per_client
            .map(|r| TokenBucket::new(f64::from(r), now));
        let bytes = limits
            .publish_bytes_per_client
            .map(|r| TokenBucket::new(f64::from(r), now));
        (messages.is_some() || bytes.is_some()).then(|| Box::new(Throttle { messages, bytes }))
    }

    /// Accounts one PUBLISH of `payload` bytes; returns how long to wait before handling it.
    fn charge(&mut self, payload: usize) -> Duration {
        let now = Instant::now().into_std();
        let a = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(1.0, now));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(payload as f64, now));
        a.max(b)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    /// How long this PUBLISH of `payload` bytes must wait to keep the client within its
    /// publish rate; `None` when it may go at once (always, without publish limits).
    pub(super) fn publish_wait(&mut self, payload: usize) -> Option<Duration> {
        let wait = self.throttle.as_mut()?.charge(payload);
        (!wait.is_zero()).then_some(wait)
    }

    /// Waits `wait` (counted); false if the connection is being closed meanwhile (takeover,
    /// shutdown). Called boxed, only when there is a wait, so that the sleep does not sit in
    /// every connection's task.
    pub(super) async fn throttled(&mut self, wait: Duration) -> bool {
        self.shared.metrics.limit_hit(Limit::PublishRate);
        let session = self.me.0.clone();
        let mut sleep = std::pin::pin!(tokio::time::sleep(wait));
        loop {
            // The session's wake-up also announces deliveries; only a kick ends the wait.
            tokio::select! {
                _ = &mut sleep => return true,
                _ = session.woken() => {
                    if self.kick.fired().is_some() {
                        return false;
                    }
                }
            }
        }
    }
}
