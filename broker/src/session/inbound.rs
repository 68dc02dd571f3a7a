//! One handler per packet a client sends after CONNECT.
//!
//! Each returns `None` to go on serving, or the [`End`] of the connection when the packet
//! breaks a rule that closes it. Rules are checked in the order the specification gives them,
//! and broker rules (no client writes to `$` topics, limits) come before any policy is asked.
//!
//! Handling is synchronous when the policy and the store answer at once (allow-all, a cached
//! decision, the memory store, a session that is not journaled), which is the common case:
//! [`Conn::handle`] returns [`Handled::Done`]. Only an answer that must be waited for turns
//! the rest of the work into a boxed future ([`Handled::Later`]). This keeps the await states
//! of packet handling out of every connection's task, whose size is memory per idle
//! connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};

use super::backpressure;
use super::connection::{Conn, End};
use super::state::{Phase, Subscribed};
use crate::broker::Acceptance;
use crate::codec::{
    Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::message::Message;
use crate::metrics::{DropCause, Limit};
use crate::pending::Pending;
use crate::policy::cache::Action;
use crate::policy::{PublishKind, SubscribeVerdict, Verdict};
use crate::store::{Change, StoreError};
use crate::topic;

const fn closed(reason: ReasonCode) -> Option<End> {
    Some(End::Closed(reason))
}

/// What handling one packet left to do.
pub(super) enum Handled<'a> {
    /// Finished; `Some` ends the connection.
    Done(Option<End>),
    /// The rest waits for an answer that was not immediate.
    Later(Pin<Box<dyn Future<Output = Option<End>> + Send + 'a>>),
}

impl Handled<'_> {
    pub(super) async fn finish(self) -> Option<End> {
        match self {
            Handled::Done(end) => end,
            Handled::Later(rest) => rest.await,
        }
    }
}

/// A PUBLISH that passed the broker's checks, on its way through the policy.
struct Accepting {
    message: Arc<Message>,
    packet_id: Option<u16>,
    qos: QoS,
}

/// The next step of handling a packet, once an answer of type `T` is known; `S` is what the
/// step needs from the one before.
type Step<IO, S, T> = for<'a> fn(&'a mut Conn<IO>, S, T) -> Handled<'a>;

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    pub(super) fn handle(&mut self, packet: Packet) -> Handled<'_> {
        let end = match packet {
            Packet::Publish(p) => return self.on_publish(p),
            Packet::PubAck(r) => self.on_puback(r),
            Packet::PubRec(r) => return self.on_pubrec(r),
            Packet::PubRel(r) => return self.on_pubrel(r),
            Packet::PubComp(r) => self.on_pubcomp(r),
            // Rare, and they ask the policy and the store once per filter.
            Packet::Subscribe(s) => return Handled::Later(Box::pin(self.on_subscribe(s))),
            Packet::Unsubscribe(u) => return Handled::Later(Box::pin(self.on_unsubscribe(u))),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            // Re-authentication: rare, and it waits on the policy.
            Packet::Auth(a) => return Handled::Later(Box::pin(self.on_auth(a))),
            // A second CONNECT (MQTT-3.1.0-2) or a packet only a server sends.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => closed(ReasonCode::PROTOCOL_ERROR),
        };
        Handled::Done(end)
    }

    /// Goes on with `next` now if `answer` is already here, or in a boxed future once it is.
    fn then<S: Send + 'static, T: Send + 'static>(
        &mut self,
        answer: Pending<T>,
        state: S,
        next: Step<IO, S, T>,
    ) -> Handled<'_> {
        match answer {
            Pending::Ready(v) => next(self, state, v),
            Pending::Later(answer) => Handled::Later(Box::pin(async move {
                let v = answer.await;
                next(self, state, v).finish().await
            })),
        }
    }

    /// A response packet; reason strings only when the client allows them (MQTT-3.1.2-29).
    pub(super) fn response(
        &self,
        packet_id: u16,
        reason: ReasonCode,
        why: Option<&str>,
    ) -> PubResponse {
        let mut properties = Properties::default();
        if self.problem_info
            && let Some(why) = why
        {
            properties.reason_string = Some(ByteString::from(why));
        }
        PubResponse {
            packet_id,
            reason_code: reason,
            properties,
        }
    }

    /// Answers a QoS 1/2 PUBLISH that is not forwarded. 3.1.1 has no negative acknowledgement,
    /// so there the message is acknowledged and dropped, as Mosquitto does.
    fn refuse_publish(
        &mut self,
        packet_id: Option<u16>,
        qos: QoS,
        reason: ReasonCode,
        why: Option<&str>,
    ) {
        let Some(id) = packet_id else { return };
        let reason = if self.version == ProtocolVersion::V5 {
            reason
        } else {
            ReasonCode::SUCCESS
        };
        let response = self.response(id, reason, why);
        match qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(response)),
            QoS::ExactlyOnce => {
                if !reason.is_error() {
                    // 3.1.1: the client will send PUBREL; remember the id to answer it.
                    self.state.inbound_qos2.insert(id);
                }
                self.send(&Packet::PubRec(response))
            }
            QoS::AtMostOnce => false,
        };
    }

    fn on_publish(&mut self, p: Publish) -> Handled<'_> {
        // Over its publish rate, the client waits here (see `throttle.rs`); a takeover or
        // shutdown during the wait ends the connection through the serving loop.
        if let Some(wait) = self.publish_wait(p.payload.len()) {
            return Handled::Later(Box::pin(async move {
                if !self.throttled(wait).await {
                    return None;
                }
                self.publish_now(p).finish().await
            }));
        }
        self.publish_now(p)
    }

    fn publish_now(&mut self, p: Publish) -> Handled<'_> {
        let a = match self.check_publish(p) {
            Ok(a) => a,
            Err(end) => return Handled::Done(end),
        };
        let message = &a.message;
        // Broker rule first: `$` topics belong to the broker, whatever a policy says. Then a
        // cached allow (the common case: no allocation, no plugin call), then the policy.
        let policy = &*self.shared.policy;
        let verdict = if message.topic.starts_with('$') {
            Pending::Ready(Verdict::Deny(crate::policy::Denial::not_authorized()))
        } else if self.decisions.allows(
            policy,
            Action::Publish,
            &message.topic,
            message.qos,
            message.retain,
            message.received,
        ) {
            Pending::Ready(Verdict::allow())
        } else {
            policy.authorize_publish(&self.client, &self.identity, PublishKind::Message, message)
        };
        self.then(verdict, a, Self::publish_authorized)
    }

    /// The broker's own checks of an inbound PUBLISH, in the specification's order; `Err` is
    /// what to do instead of forwarding it.
    fn check_publish(&mut self, mut p: Publish) -> Result<Accepting, Option<End>> {
        let limits = &self.shared.config.limits;
        self.shared.metrics.publish_received(p.payload.len());

        if !p.properties.subscription_identifiers.is_empty() {
            return Err(closed(ReasonCode::PROTOCOL_ERROR)); // MQTT-3.3.4-6
        }
        // Topic alias (section 3.3.2.3.4).
        // (Through `values_mut`: most PUBLISHes have no properties to allocate.)
        if let Some(alias) = p.properties.values_mut().and_then(|v| v.topic_alias.take()) {
            if alias == 0 || alias > limits.topic_alias_maximum {
                return Err(closed(ReasonCode::TOPIC_ALIAS_INVALID)); // MQTT-3.2.2-17, section 3.3.4
            }
            let slot = usize::from(alias - 1);
            let aliases = &mut self.aliases.get_or_insert_default().inbound;
            if p.topic.is_empty() {
                match aliases.get(slot).cloned().flatten() {
                    Some(t) => p.topic = t,
                    None => return Err(closed(ReasonCode::PROTOCOL_ERROR)),
                }
            } else {
                if aliases.len() <= slot {
                    aliases.resize(slot + 1, None);
                }
                aliases[slot] = Some(p.topic.clone());
            }
        } else if p.topic.is_empty() {
            return Err(closed(ReasonCode::PROTOCOL_ERROR));
        }
        if topic::validate_topic_name(&p.topic).is_err() {
            return Err(closed(ReasonCode::TOPIC_NAME_INVALID));
        }
        if !self.shared.topic_within_limits(&p.topic) {
            self.shared.metrics.limit_hit(Limit::TopicLimits);
            return Err(closed(ReasonCode::TOPIC_NAME_INVALID));
        }
        if p.qos > limits.maximum_qos {
            return Err(closed(ReasonCode::QOS_NOT_SUPPORTED)); // MQTT-3.2.2-11
        }
        if p.retain && !limits.retain_available {
            return Err(closed(ReasonCode::RETAIN_NOT_SUPPORTED)); // MQTT-3.2.2-14
        }
        if p.qos == QoS::ExactlyOnce {
            let id = p.packet_id.unwrap_or(0);
            if self.state.inbound_qos2.contains(&id) {
                // A resent QoS 2 PUBLISH we already have: acknowledge, do not forward twice
                // (MQTT-4.3.3-9 / method A of section 4.3.3).
                let r = self.response(id, ReasonCode::SUCCESS, None);
                self.send(&Packet::PubRec(r));
                return Err(None);
            }
            if self.state.inbound_qos2.len() >= usize::from(limits.receive_maximum) {
                return Err(closed(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED)); // MQTT-3.3.4-7
            }
        }
        if p.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&p.payload).is_err()
        {
            // MQTT-3.3.2-4 lets the receiver check what the sender promised.
            self.shared
                .metrics
                .publish_dropped(DropCause::NotAuthorized);
            self.refuse_publish(
                p.packet_id,
                p.qos,
                ReasonCode::PAYLOAD_FORMAT_INVALID,
                Some("payload is not UTF-8"),
            );
            return Err(None);
        }

        let packet_id = p.packet_id;
        let qos = p.qos;
        let message = Arc::new(Message::from_publish(
            p,
            Some(self.client.client_id.clone()),
            limits.max_message_expiry,
        ));
        Ok(Accepting {
            message,
            packet_id,
            qos,
        })
    }

    fn publish_authorized(&mut self, a: Accepting, verdict: Verdict) -> Handled<'_> {
        let Accepting {
            message,
            packet_id,
            qos,
        } = a;
        if let Verdict::Allow(grant) = &verdict {
            // A fresh allow the policy says may be reused (a cached one has no lifetime).
            let capacity = self.shared.config.plugins.decision_cache_size as usize;
            let expiry = self.identity_deadline();
            self.decisions.remember(
                capacity,
                Action::Publish,
                &message.topic,
                message.qos,
                message.retain,
                grant,
                message.received,
                expiry,
            );
        }
        if let Verdict::Deny(d) = verdict {
            self.shared
                .metrics
                .publish_dropped(DropCause::NotAuthorized);
            // Only a message the policy gave: a bare 0x87 says "not authorized" already, and
            // some clients (Paho's interop test client) reject a PUBACK with properties.
            self.refuse_publish(packet_id, qos, d.reason, d.message.as_deref());
            return Handled::Done(None);
        }

        // Retained first: a new subscriber must never get a stale retained copy after this
        // message was routed (see `Shared::subscribe`).
        let retained = match message.retain {
            false => None,
            true => match self.shared.retain_within_quota(&message) {
                Some(stored) => Some(stored),
                None => {
                    // Over a `limits.max_retained_*` quota: the message is not accepted at all
                    // (MQTT 5 QoS 1/2 hear 0x97; otherwise it is dropped and counted).
                    self.shared.metrics.limit_hit(Limit::Retained);
                    let why = Some("retained message quota exceeded");
                    self.refuse_publish(packet_id, qos, ReasonCode::QUOTA_EXCEEDED, why);
                    return Handled::Done(None);
                }
            },
        };
        let acceptance = packet_id.map(|id| Acceptance {
            client_id: self.client.client_id.clone(),
            packet_id: id,
            exactly_once: qos == QoS::ExactlyOnce && self.journaled(),
        });
        // The store accepts the message (and, for persistent subscribers, its queue entries)
        // before it is acknowledged; the acknowledgement waits in `acks` meanwhile. A store
        // that refuses at once means the message was not routed.
        let (routed, congested) =
            backpressure::publish(&self.shared, message, &self.me, acceptance);
        if let Some(congested) = congested {
            self.pause(congested);
        }
        let Some(id) = packet_id else {
            return Handled::Done(None);
        };
        let (reason, stored) = match routed {
            Ok(r) if r.count == 0 && self.version == ProtocolVersion::V5 => {
                (ReasonCode::NO_MATCHING_SUBSCRIBERS, r.stored)
            }
            Ok(r) => (ReasonCode::SUCCESS, r.stored),
            Err(e) => (ReasonCode::UNSPECIFIED_ERROR, Err(e).into()),
        };
        // The retained change was applied first, so the message's being durable covers it;
        // when the message itself needed no write, the acknowledgement waits for the retained
        // copy instead.
        let stored = match (stored, retained) {
            (Pending::Ready(Ok(())), Some(r)) => r,
            (stored, _) => stored,
        };
        if qos == QoS::ExactlyOnce {
            self.state.inbound_qos2.insert(id);
        }
        Handled::Done(self.acknowledge_when(stored, id, qos, reason))
    }

    /// Whether this session's QoS 1/2 state is journaled (persistent, and a store that
    /// keeps messages).
    pub(super) fn journaled(&self) -> bool {
        self.shared.journal && self.state.expiry_interval > 0
    }

    /// Ends the exchange of outbound message `i` and takes it out of the journal.
    fn outbound_done(&mut self, i: usize) {
        if let Some(o) = self.state.outbound.remove(i) {
            self.shared.metrics.inflight_removed(1);
            self.shared.dequeue(&self.client.client_id, o.delivery.seq);
        }
    }

    fn on_puback(&mut self, r: PubResponse) -> Option<End> {
        if let Some(i) = self.state.find_outbound(r.packet_id)
            && self.state.outbound[i].delivery.qos == QoS::AtLeastOnce
        {
            self.outbound_done(i);
        }
        None
    }

    fn on_pubrec(&mut self, r: PubResponse) -> Handled<'_> {
        let Some(i) = self.state.find_outbound(r.packet_id) else {
            // MQTT 5: PUBREL with 0x92 for an unknown id (section 3.6.2.1).
            let resp = self.response(r.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None);
            self.send(&Packet::PubRel(resp));
            return Handled::Done(None);
        };
        if self.state.outbound[i].delivery.qos != QoS::ExactlyOnce {
            return Handled::Done(closed(ReasonCode::PROTOCOL_ERROR));
        }
        if r.reason_code.is_error() {
            // The receiver refused it: the exchange ends here (section 4.3.3).
            self.outbound_done(i);
            return Handled::Done(None);
        }
        let o = &mut self.state.outbound[i];
        let first = o.phase == Phase::Published;
        o.phase = Phase::Released;
        let seq = o.delivery.seq;
        if first && seq != 0 {
            // Once PUBREL is out the receiver may forget the message; resending the PUBLISH
            // after a restart would then deliver it twice, so "released" is durable first.
            let change = Change::Released {
                client_id: self.client.client_id.clone(),
                seq,
            };
            let stored = self.shared.store.apply(change);
            return self.then(stored, r.packet_id, Self::pubrec_journaled);
        }
        self.pubrec_journaled(r.packet_id, Ok(()))
    }

    fn pubrec_journaled(&mut self, packet_id: u16, stored: Result<(), StoreError>) -> Handled<'_> {
        if let Err(e) = stored {
            tracing::error!(client = %self.client.client_id, error = %e, "could not journal a PUBREC");
        }
        self.send(&Packet::PubRel(PubResponse::success(packet_id)));
        Handled::Done(None)
    }

    fn on_pubcomp(&mut self, r: PubResponse) -> Option<End> {
        if let Some(i) = self.state.find_outbound(r.packet_id)
            && self.state.outbound[i].phase == Phase::Released
        {
            self.outbound_done(i);
        }
        None
    }

    fn on_pubrel(&mut self, r: PubResponse) -> Handled<'_> {
        // MQTT-4.3.3-11: PUBCOMP with the same id, even for one we no longer know (v5: 0x92).
        let known = self.state.inbound_qos2.remove(&r.packet_id);
        if known && self.journaled() {
            // Forgotten durably before PUBCOMP: a remembered id would make the broker drop the
            // client's next message with that id after a restart.
            let change = Change::InboundReleased {
                client_id: self.client.client_id.clone(),
                packet_id: r.packet_id,
            };
            let stored = self.shared.store.apply(change);
            return self.then(stored, r.packet_id, Self::pubrel_journaled);
        }
        self.pubrel_answered(r.packet_id, known)
    }

    fn pubrel_journaled(&mut self, packet_id: u16, stored: Result<(), StoreError>) -> Handled<'_> {
        if let Err(e) = stored {
            tracing::error!(client = %self.client.client_id, error = %e, "could not journal a PUBREL");
        }
        self.pubrel_answered(packet_id, true)
    }

    fn pubrel_answered(&mut self, packet_id: u16, known: bool) -> Handled<'_> {
        let reason = if known {
            ReasonCode::SUCCESS
        } else if self.version == ProtocolVersion::V5 {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        } else {
            ReasonCode::SUCCESS
        };
        let resp = self.response(packet_id, reason, None);
        self.send(&Packet::PubComp(resp));
        Handled::Done(None)
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Option<End> {
        let limits = &self.shared.config.limits;
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut changed = false;
        for (filter, options) in s.filters {
            let shared_sub = match topic::parse_shared(&filter) {
                Ok(s) => s.is_some(),
                Err(_) => {
                    codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                    continue;
                }
            };
            if shared_sub && options.no_local {
                return closed(ReasonCode::PROTOCOL_ERROR); // MQTT-3.8.3-4
            }
            if topic::validate_topic_filter(&filter).is_err() && !shared_sub {
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            if !self.shared.topic_within_limits(&filter) {
                self.shared.metrics.limit_hit(Limit::TopicLimits);
                codes.push(ReasonCode::TOPIC_FILTER_INVALID);
                continue;
            }
            let known = self.state.subscriptions.contains_key(&filter);
            if !known
                && self.state.subscriptions.len() >= limits.max_subscriptions_per_client as usize
            {
                self.shared.metrics.limit_hit(Limit::Subscriptions);
                codes.push(ReasonCode::QUOTA_EXCEEDED);
                continue;
            }
            let verdict = self
                .shared
                .policy
                .authorize_subscribe(&self.client, &self.identity, &filter, options.qos)
                .get()
                .await;
            let check_each_delivery = match verdict {
                SubscribeVerdict::Allow {
                    check_each_delivery,
                } => check_each_delivery,
                SubscribeVerdict::Deny(d) => {
                    codes.push(d.reason);
                    continue;
                }
            };
            // MQTT-3.2.2-9/3.8.4-... : grant at most the server's maximum QoS.
            let granted = options.qos.min(limits.maximum_qos);
            let options = SubscriptionOptions {
                qos: granted,
                ..options
            };
            // Retained messages go straight into the mailbox, which is pumped only after this
            // handler has queued the SUBACK. None for shared subscriptions (section 4.8.2).
            self.shared
                .subscribe(&self.me, &filter, options, identifier, !shared_sub);
            self.state.subscriptions.insert(
                filter.clone(),
                Subscribed {
                    options,
                    identifier,
                    check_each_delivery,
                },
            );
            changed = true;
            codes.push(crate::codec::ReasonCode(granted as u8));
        }
        self.send(&Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
        if changed {
            self.update_delivery_checks();
            self.persist_session(None).await;
        }
        None
    }

    async fn on_unsubscribe(&mut self, u: Unsubscribe) -> Option<End> {
        let mut codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            // MQTT-3.10.4-1: compared character by character, as sent.
            let existed = self.state.subscriptions.remove(filter).is_some();
            if existed {
                self.shared.unsubscribe(&self.me, filter);
            }
            codes.push(if existed {
                ReasonCode::SUCCESS
            } else {
                ReasonCode::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.update_delivery_checks();
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        }));
        self.persist_session(None).await;
        None
    }

    fn on_disconnect(&mut self, d: crate::codec::Disconnect) -> Option<End> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.state.expiry_interval == 0 && expiry != 0 {
                return closed(ReasonCode::PROTOCOL_ERROR); // section 3.14.2.2.2: expiry set after CONNECT had 0
            }
            self.state.expiry_interval = expiry.min(self.shared.config.limits.max_session_expiry);
        }
        // MQTT-3.14.4-3: only reason 0x00 discards the will; 0x04 and every error keep it.
        Some(End::Disconnected {
            with_will: d.reason_code != ReasonCode::NORMAL_DISCONNECTION,
        })
    }
}
