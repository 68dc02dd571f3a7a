//! Acknowledgements that wait for the store: PUBACK and PUBREC go out in order, each once its
//! message is durable, while the connection goes on reading.
//!
//! With `sync` durability a QoS 1/2 message that reaches a persistent session may be
//! acknowledged only after its group commit. Waiting for that before reading the client's
//! next PUBLISH would limit every connection to one message per fsync, whatever its window;
//! instead the acknowledgement is queued here with the store's [`Pending`] answer, the
//! connection handles the next packets (so they join the same or the next commit), and the
//! queue is emptied from the front as commits complete. The store makes changes durable in the
//! order they were applied, so the front is always the first to be ready, and PUBACKs keep the
//! order of their PUBLISHes (MQTT-4.6.0-2). An immediate answer (the memory store, a message
//! with no persistent subscriber) with nothing queued ahead of it is sent at once, without
//! boxing anything. The queue is bounded by `limits.receive_maximum`: a client that outruns
//! the disk stops being read.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Conn, End};
use crate::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use crate::pending::Pending;
use crate::store::StoreError;

type Stored = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// An acknowledgement waiting for its message to be durable.
pub(super) struct Deferred {
    /// Only ever used through `&mut` (`Mutex::get_mut`, no locking): the mutex just makes the
    /// connection's state `Sync`, which a store's future need not be.
    stored: std::sync::Mutex<Stored>,
    packet_id: u16,
    qos: QoS,
    reason: ReasonCode,
}

/// The queue of waiting acknowledgements. Allocated when the first one has to wait: most
/// connections never defer one (the memory store answers at once), and the queue would
/// otherwise be 32 bytes of every connection's task.
#[derive(Default)]
#[allow(clippy::box_collection)] // the point: 8 bytes in the task, not 32
pub(super) struct Acks(Option<Box<VecDeque<Deferred>>>);

impl Acks {
    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn push_back(&mut self, d: Deferred) {
        self.0.get_or_insert_default().push_back(d);
    }

    fn front_mut(&mut self) -> Option<&mut Deferred> {
        self.0.as_mut()?.front_mut()
    }

    fn pop_front(&mut self) -> Option<Deferred> {
        self.0.as_mut()?.pop_front()
    }

    /// Ready when the front acknowledgement's message is durable (or the store failed);
    /// pending while there is none.
    pub(super) fn poll_front(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StoreError>> {
        match self.front_mut() {
            Some(d) => stored(d).as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

fn stored(d: &mut Deferred) -> &mut Stored {
    d.stored
        .get_mut()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    /// Acknowledges a QoS 1/2 PUBLISH with `reason` once `stored` resolves, in order.
    pub(super) fn acknowledge_when(
        &mut self,
        stored: Pending<Result<(), StoreError>>,
        packet_id: u16,
        qos: QoS,
        reason: ReasonCode,
    ) -> Option<End> {
        let stored: Stored = match stored {
            Pending::Ready(result) if self.acks.is_empty() => {
                return self.acknowledge(packet_id, qos, reason, result);
            }
            Pending::Ready(result) => Box::pin(std::future::ready(result)),
            Pending::Later(f) => f,
        };
        self.acks.push_back(Deferred {
            stored: std::sync::Mutex::new(stored),
            packet_id,
            qos,
            reason,
        });
        None
    }

    /// Sends every acknowledgement from the front whose message is durable by now.
    pub(super) fn send_ready_acks(&mut self) -> Option<End> {
        let mut cx = Context::from_waker(Waker::noop());
        while let Some(front) = self.acks.front_mut() {
            let Poll::Ready(result) = stored(front).as_mut().poll(&mut cx) else {
                break;
            };
            if let Some(end) = self.front_done(result) {
                return Some(end);
            }
        }
        None
    }

    /// The front acknowledgement's message is durable (or not): answer it.
    pub(super) fn front_done(&mut self, result: Result<(), StoreError>) -> Option<End> {
        let d = self.acks.pop_front()?;
        self.acknowledge(d.packet_id, d.qos, d.reason, result)
    }

    /// True while more acknowledgements may wait (see the module doc).
    pub(super) fn may_defer(&self) -> bool {
        self.acks.len() < usize::from(self.shared.config.limits.receive_maximum)
    }

    fn acknowledge(
        &mut self,
        packet_id: u16,
        qos: QoS,
        reason: ReasonCode,
        result: Result<(), StoreError>,
    ) -> Option<End> {
        if let Err(e) = result {
            // Not durable: not accepted. A QoS 2 id must not make a resend look like a
            // duplicate of a message the broker never kept.
            self.state.inbound_qos2.remove(&packet_id);
            return self.store_refused(packet_id, qos, &e);
        }
        let r = self.response(packet_id, reason, None);
        self.send(&match qos {
            QoS::AtLeastOnce => Packet::PubAck(r),
            _ => Packet::PubRec(r),
        });
        None
    }

    /// The store could not make an accepted QoS 1/2 message durable: the publisher is not
    /// told it was accepted (3.1.1 has no negative acknowledgement, so there the connection
    /// closes, MQTT-4.8.0-2 of 3.1.1).
    fn store_refused(&mut self, packet_id: u16, qos: QoS, e: &StoreError) -> Option<End> {
        tracing::error!(client = %self.client.client_id, error = %e, "store refused a message");
        if self.version == ProtocolVersion::V311 {
            return Some(End::Closed(ReasonCode::UNSPECIFIED_ERROR));
        }
        let r = self.response(
            packet_id,
            ReasonCode::UNSPECIFIED_ERROR,
            Some("store failure"),
        );
        self.send(&match qos {
            QoS::AtLeastOnce => Packet::PubAck(r),
            _ => Packet::PubRec(r),
        });
        None
    }
}
