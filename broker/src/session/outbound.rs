//! From mailbox to wire: the inflight window, packet identifiers, topic aliases, expiry.
//!
//! QoS 1/2 deliveries are sent only while fewer than the client's Receive Maximum (capped by
//! `limits.max_inflight`) are unacknowledged (MQTT-4.9.0-2); the rest wait in the mailbox, in
//! order. A delivery whose message expired while it waited is dropped (MQTT-3.3.2-5), and one
//! too large for the client is dropped as if sent (MQTT-3.1.2-25).

use std::cell::Cell;
use std::time::Instant;

use bytestring::ByteString;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Delivery;
use super::connection::{Conn, WRITE_HIGH_WATER};
use super::state::{Outbound, Phase};
use crate::codec::{
    Packet, Properties, PropertyValues, ProtocolVersion, PubResponse, Publish, QoS,
};
use crate::metrics::DropCause;
use crate::pending::Pending;
use crate::policy::Verdict;
use crate::policy::cache::Action;
use crate::store::{Change, StoreError};
use crate::topic;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    /// True while another QoS 1/2 message may be sent.
    pub(super) fn window_open(&self) -> bool {
        self.state.outbound.len() < usize::from(self.send_window)
    }

    /// Moves deliveries from the mailbox into the write buffer while the window and the write
    /// buffer allow.
    ///
    /// Only the policy's per-delivery checks can wait, and only connections with such a
    /// subscription make them, in a boxed future: the common path keeps nothing in the task.
    pub(super) async fn pump(&mut self) {
        let mut batch = SCRATCH.take();
        // The journal entry of the last QoS 2 packet id assigned: it must be durable before
        // the PUBLISH leaves (the write buffer is flushed only after this returns).
        let mut journaled_id = None;
        while self.wbuf.len() < WRITE_HIGH_WATER && self.window_open() {
            self.me
                .0
                .take_queued(PUMP_BATCH_SIZE, &mut batch, &self.shared.metrics);
            if batch.is_empty() {
                break;
            }
            if self.check_deliveries {
                Box::pin(self.check_batch(&mut batch)).await;
            }
            if let Some(j) = self.send_batch(&mut batch) {
                journaled_id = Some(j);
            }
        }
        SCRATCH.set(batch);
        // Changes are durable in order, so waiting for the last covers them all.
        if let Some(j) = journaled_id
            && let Err(e) = j.get().await
        {
            tracing::error!(client = %self.client.client_id, error = %e, "could not journal a packet id");
        }
    }

    /// Drops the deliveries the policy refuses (see [`Conn::delivery_check`]).
    async fn check_batch(&mut self, batch: &mut Vec<Delivery>) {
        let mut i = 0;
        while i < batch.len() {
            let allowed = match self.delivery_check(&batch[i].message.topic) {
                Some(check) => {
                    let verdict = check.get().await;
                    let topic = batch[i].message.topic.clone();
                    self.remember_delivery(&topic, &verdict);
                    verdict.is_allow()
                }
                None => true,
            };
            if allowed {
                i += 1;
            } else {
                let d = batch.remove(i);
                self.shared
                    .metrics
                    .publish_dropped(DropCause::NotAuthorized);
                self.shared.dequeue(&self.client.client_id, d.seq);
            }
        }
    }

    /// Encodes a batch taken from the mailbox, in order; what the window cannot take goes back.
    /// Returns the journal entry of the last QoS 2 packet id it assigned, if any.
    fn send_batch(&mut self, batch: &mut Vec<Delivery>) -> Option<Pending<Result<(), StoreError>>> {
        let mut journaled_id = None;
        let now = Instant::now();
        let mut drained = batch.drain(..);
        for d in drained.by_ref() {
            if d.message.is_expired(now) {
                self.shared.metrics.publish_dropped(DropCause::Expired);
                self.shared.dequeue(&self.client.client_id, d.seq);
                continue;
            }
            if d.qos == QoS::AtMostOnce {
                self.send_delivery(&d, None, false, now);
                continue;
            }
            if !self.window_open() {
                // Keep order: this one and everything after it wait for acknowledgements.
                let rest: Vec<Delivery> = std::iter::once(d).chain(drained.by_ref()).collect();
                self.me.0.requeue_front(rest, &self.shared.metrics);
                break;
            }
            let Some(id) = self.state.next_packet_id() else {
                self.me.0.requeue_front(vec![d], &self.shared.metrics);
                break;
            };
            if self.send_delivery(&d, Some(id), false, now) {
                if d.seq != 0 && d.qos == QoS::ExactlyOnce {
                    // A QoS 2 message must be resent with the same packet id after a restart,
                    // or the receiver would take it for a new one.
                    journaled_id = Some(self.shared.store.apply(Change::Sent {
                        client_id: self.client.client_id.clone(),
                        seq: d.seq,
                        packet_id: id,
                    }));
                }
                self.state.outbound.push_back(Outbound {
                    packet_id: id,
                    delivery: d,
                    phase: Phase::Published,
                });
                self.shared.metrics.inflight_added();
            } else {
                self.shared.dequeue(&self.client.client_id, d.seq);
            }
        }
        journaled_id
    }

    /// The policy's answer about one delivery when a subscription it matches was allowed only
    /// with "check each delivery", so a wide filter cannot read topics a finer rule denies;
    /// `None` when no such subscription matches. (Not an `async fn`: the connection must not
    /// be borrowed across the wait, or its socket would have to be `Sync`.)
    ///
    /// A cached allow (per session and topic) answers at once.
    fn delivery_check(&self, topic: &ByteString) -> Option<Pending<Verdict>> {
        let flagged = self.state.subscriptions.iter().any(|(filter, s)| {
            let filter = match topic::parse_shared(filter) {
                Ok(Some(shared)) => shared.filter,
                _ => filter,
            };
            s.check_each_delivery && topic::matches(filter, topic)
        });
        let policy = &*self.shared.policy;
        let (qos, retain) = DELIVER_KEY;
        if !flagged
            || self
                .decisions
                .allows(policy, Action::Deliver, topic, qos, retain, Instant::now())
        {
            return None;
        }
        Some(policy.authorize_deliver(&self.client, &self.identity, topic))
    }

    /// Remembers an allow for deliveries on `topic`.
    fn remember_delivery(&mut self, topic: &ByteString, verdict: &Verdict) {
        let Verdict::Allow(grant) = verdict else {
            return;
        };
        let capacity = self.shared.config.plugins.decision_cache_size as usize;
        let expiry = self.identity_deadline();
        let (qos, retain) = DELIVER_KEY;
        self.decisions.remember(
            capacity,
            Action::Deliver,
            topic,
            qos,
            retain,
            grant,
            Instant::now(),
            expiry,
        );
    }

    /// Recomputes whether any subscription asks for deliveries to be checked.
    pub(super) fn update_delivery_checks(&mut self) {
        self.check_deliveries = self
            .state
            .subscriptions
            .values()
            .any(|s| s.check_each_delivery);
    }

    /// Resends what a resumed session left unacknowledged, in order (MQTT-4.4.0-1).
    pub(super) fn resend_inflight(&mut self) {
        let now = Instant::now();
        let pending: Vec<(u16, Phase, Delivery)> = self
            .state
            .outbound
            .iter()
            .map(|o| (o.packet_id, o.phase, o.delivery.clone()))
            .collect();
        for (id, phase, d) in pending {
            match phase {
                // MQTT-3.3.1-1: DUP set on a resent PUBLISH.
                Phase::Published => {
                    self.send_delivery(&d, Some(id), true, now);
                }
                Phase::Released => {
                    self.send(&Packet::PubRel(PubResponse::success(id)));
                }
            }
        }
    }

    /// Encodes one delivery. False when it was dropped as too large for the client.
    fn send_delivery(
        &mut self,
        d: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
        now: Instant,
    ) -> bool {
        let m = &d.message;
        let mut topic = m.topic.clone();
        let mut new_alias = None;
        let mut properties = Properties::default();
        if self.version == ProtocolVersion::V5 {
            // The values go into a per-thread allocation that is reused, not one per delivery.
            let mut v = SPARE_PROPERTIES.take().unwrap_or_default();
            // MQTT-3.3.2-... : forwarded unaltered, expiry counted down.
            v.payload_format_indicator = m.properties.payload_format_indicator;
            v.content_type = m.properties.content_type.clone();
            v.response_topic = m.properties.response_topic.clone();
            v.correlation_data = m.properties.correlation_data.clone();
            v.user_properties = m.properties.user_properties.clone();
            v.message_expiry_interval = m.remaining_expiry(now);
            v.subscription_identifiers = d.identifiers.to_vec();
            if self.client_alias_max > 0 {
                let aliases = &self.aliases.get_or_insert_default().outbound;
                if let Some(&alias) = aliases.get(&topic) {
                    v.topic_alias = Some(alias);
                    topic = Default::default();
                } else if aliases.len() < usize::from(self.client_alias_max) {
                    // Recorded only once the packet is really sent, below.
                    new_alias = Some(aliases.len() as u16 + 1);
                    v.topic_alias = new_alias;
                }
            }
            if *v == PropertyValues::NONE {
                SPARE_PROPERTIES.set(Some(v));
            } else {
                properties = Properties::from_box(v);
            }
        }
        let publish = Packet::Publish(Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id,
            properties,
            payload: m.payload.clone(),
        });
        let sent = self.send(&publish);
        if let Packet::Publish(p) = publish
            && let Some(mut v) = p.properties.into_box()
        {
            *v = PropertyValues::NONE;
            SPARE_PROPERTIES.set(Some(v));
        }
        if !sent {
            self.shared
                .metrics
                .publish_dropped(DropCause::TooLargeForClient);
            return false;
        }
        if let Some(alias) = new_alias {
            let aliases = self.aliases.get_or_insert_default();
            aliases.outbound.insert(m.topic.clone(), alias);
        }
        self.shared.metrics.publish_sent(m.payload.len());
        true
    }
}

thread_local! {
    /// The batch buffer of `pump`, reused per worker thread rather than kept per connection.
    static SCRATCH: Cell<Vec<Delivery>> = const { Cell::new(Vec::new()) };
    /// The property values of MQTT 5 deliveries, reused per worker thread.
    static SPARE_PROPERTIES: Cell<Option<Box<PropertyValues>>> = const { Cell::new(None) };
}

/// Deliveries taken from the mailbox at a time.
const PUMP_BATCH_SIZE: usize = 64;

/// Deliver decisions are cached per topic: a delivery's QoS and retain flag do not change
/// who may read the topic, so they are keyed as one.
const DELIVER_KEY: (QoS, bool) = (QoS::AtMostOnce, false);
