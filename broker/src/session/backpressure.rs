//! Publisher backpressure: a publisher waits for the full mailboxes it routed to.
//!
//! The router never blocks, so without this a publisher could be read as fast as its socket
//! delivers while a subscriber drains far slower, and the subscriber's bounded mailbox would
//! drop the difference (QoS 1 messages included, after they were acknowledged). Instead, when
//! a PUBLISH fills the mailbox of a connected subscriber (`Session::deliver` says so), the
//! publisher's connection stops handling packets, and so stops reading its socket and
//! acknowledging, until each of those mailboxes is back at half its bound. TCP then slows the
//! publishing client down, as it would in front of a single-threaded broker.
//!
//! The rule that keeps one subscriber from stalling everyone: a subscriber that takes nothing
//! out of its mailbox for `limits.slow_subscriber_timeout` while a publisher waits on it is
//! **marked slow**. A slow mailbox no longer pushes back: its overflow policy drops messages
//! as it would without backpressure, and the metrics count the event. It pushes back again
//! once its client catches up (drains to the low-water mark) or reconnects. A subscriber that
//! reads, however slowly, paces its publishers and loses nothing. Offline sessions and the
//! broker's own messages (wills, `$SYS`, retained copies) never wait.
//!
//! While it waits, the publisher's connection goes on writing and taking deliveries for its
//! own client, so two clients that publish to each other cannot deadlock.

use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Session, SessionRef};
use crate::broker::{Acceptance, Routed, Shared};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::store::StoreError;

thread_local! {
    /// Lists of filled mailboxes, reused per worker thread rather than kept per connection.
    static LISTS: Cell<Vec<Arc<Session>>> = const { Cell::new(Vec::new()) };
}

/// Routes a client's message (see [`Shared::publish`]), and returns with the answer the
/// connected subscribers whose mailbox it filled, if there are any: the publisher must
/// [`pause`] for them.
pub(super) fn publish(
    shared: &Shared,
    message: Arc<Message>,
    publisher: &SessionRef,
    acceptance: Option<Acceptance>,
) -> (Result<Routed, StoreError>, Option<Vec<Arc<Session>>>) {
    let mut list = LISTS.take();
    let routed = shared.publish_paced(message, publisher, acceptance, &mut list);
    if list.is_empty() {
        LISTS.set(list);
        (routed, None)
    } else {
        (routed, Some(list))
    }
}

/// Gives back the list a finished [`pause`] returned, for reuse.
pub(super) fn recycle(list: Vec<Arc<Session>>) {
    debug_assert!(list.is_empty());
    LISTS.set(list);
}

/// The wait of one paused publisher; yields the (emptied) list back for reuse. `Sync`
/// because the connection that holds it is borrowed across awaits. Boxed twice so that the
/// connection holds a thin pointer (8 bytes of every connection's task instead of 16).
pub(super) type Pause = Box<Pin<Box<dyn Future<Output = Vec<Arc<Session>>> + Send + Sync>>>;

/// Waits until none of `congested` needs waiting for: each has drained to its low-water mark,
/// gone offline, ended, or been marked slow for taking nothing out during a whole `timeout`.
/// All of them are judged at the same deadlines, so however many are stuck, the wait for them
/// ends after one `timeout`.
pub(super) fn pause(
    mut congested: Vec<Arc<Session>>,
    timeout: Duration,
    shared: Arc<Shared>,
) -> Pause {
    Box::new(Box::pin(async move {
        // The progress count of each mailbox when the current deadline was set.
        let mut marks: Vec<u64> = Vec::with_capacity(congested.len());
        congested.retain(|s| match s.congestion() {
            Some(p) => {
                marks.push(p);
                true
            }
            None => false,
        });
        let mut deadline = Instant::now() + timeout;
        while let Some(first) = congested.first().cloned() {
            let mut drained = pin!(first.drained());
            drained.as_mut().enable();
            if first.congestion().is_none() {
                congested.remove(0);
                marks.remove(0);
                continue;
            }
            tokio::select! {
                _ = drained => {}
                _ = tokio::time::sleep_until(deadline) => {
                    judge(&mut congested, &mut marks, &shared.metrics);
                    deadline = Instant::now() + timeout;
                }
            }
        }
        congested
    }))
}

/// At a deadline: a mailbox that took nothing out since the last one is stuck and is marked
/// slow; one that made progress is waited on for another period.
fn judge(congested: &mut Vec<Arc<Session>>, marks: &mut Vec<u64>, metrics: &Metrics) {
    let mut i = 0;
    while i < congested.len() {
        let session = &congested[i];
        match session.congestion() {
            Some(p) if p != marks[i] => {
                marks[i] = p;
                i += 1;
                continue;
            }
            Some(_) => {
                tracing::debug!(client = %session.client_id,
                    "subscriber took nothing from its full queue: marked slow");
                metrics.subscriber_marked_slow();
                session.mark_slow();
            }
            None => {}
        }
        congested.swap_remove(i);
        marks.swap_remove(i);
    }
}
