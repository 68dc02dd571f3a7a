//! One handler per packet a client sends after CONNECT.
//!
//! Each returns `None` to go on serving, or the [`End`] of the connection when the packet
//! breaks a rule that closes it. Rules are checked in the order the specification gives them,
//! and broker rules (no client writes to `$` topics, limits) come before any policy is asked.

use std::sync::Arc;

use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Conn, End};
use super::handshake;
use super::state::{Phase, Subscribed};
use crate::broker::Acceptance;
use crate::codec::{
    Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::message::Message;
use crate::metrics::{DropCause, Limit};
use crate::pending::Pending;
use crate::policy::{PublishInfo, SubscribeVerdict, Verdict};
use crate::store::Change;
use crate::topic;

const fn closed(reason: ReasonCode) -> Option<End> {
    Some(End::Closed(reason))
}

impl<IO: AsyncRead + AsyncWrite> Conn<IO> {
    pub(super) async fn handle(&mut self, packet: Packet) -> Option<End> {
        match packet {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(r) => self.on_puback(r),
            Packet::PubRec(r) => self.on_pubrec(r).await,
            Packet::PubRel(r) => self.on_pubrel(r).await,
            Packet::PubComp(r) => self.on_pubcomp(r),
            // Boxed: rare, and their futures would otherwise sit in every connection's task.
            Packet::Subscribe(s) => Box::pin(self.on_subscribe(s)).await,
            Packet::Unsubscribe(u) => Box::pin(self.on_unsubscribe(u)).await,
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                None
            }
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Auth(a) => closed(handshake::on_auth(&a)),
            // A second CONNECT (MQTT-3.1.0-2) or a packet only a server sends.
            Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => closed(ReasonCode::PROTOCOL_ERROR),
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

    async fn on_publish(&mut self, mut p: Publish) -> Option<End> {
        // Over its publish rate, the client waits here (see `throttle.rs`); a takeover or
        // shutdown during the wait ends the connection through the serving loop.
        if let Some(wait) = self.publish_wait(p.payload.len())
            && !Box::pin(self.throttled(wait)).await
        {
            return None;
        }
        let limits = &self.shared.config.limits;
        self.shared.metrics.publish_received(p.payload.len());

        if !p.properties.subscription_identifiers.is_empty() {
            return closed(ReasonCode::PROTOCOL_ERROR); // MQTT-3.3.4-6
        }
        // Topic alias (section 3.3.2.3.4).
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > limits.topic_alias_maximum {
                return closed(ReasonCode::TOPIC_ALIAS_INVALID); // MQTT-3.2.2-17, section 3.3.4
            }
            let slot = usize::from(alias - 1);
            if p.topic.is_empty() {
                match self.inbound_aliases.get(slot).cloned().flatten() {
                    Some(t) => p.topic = t,
                    None => return closed(ReasonCode::PROTOCOL_ERROR),
                }
            } else {
                if self.inbound_aliases.len() <= slot {
                    self.inbound_aliases.resize(slot + 1, None);
                }
                self.inbound_aliases[slot] = Some(p.topic.clone());
            }
        } else if p.topic.is_empty() {
            return closed(ReasonCode::PROTOCOL_ERROR);
        }
        if topic::validate_topic_name(&p.topic).is_err() {
            return closed(ReasonCode::TOPIC_NAME_INVALID);
        }
        if !self.shared.topic_within_limits(&p.topic) {
            self.shared.metrics.limit_hit(Limit::TopicLimits);
            return closed(ReasonCode::TOPIC_NAME_INVALID);
        }
        if p.qos > limits.maximum_qos {
            return closed(ReasonCode::QOS_NOT_SUPPORTED); // MQTT-3.2.2-11
        }
        if p.retain && !limits.retain_available {
            return closed(ReasonCode::RETAIN_NOT_SUPPORTED); // MQTT-3.2.2-14
        }
        if p.qos == QoS::ExactlyOnce {
            let id = p.packet_id.unwrap_or(0);
            if self.state.inbound_qos2.contains(&id) {
                // A resent QoS 2 PUBLISH we already have: acknowledge, do not forward twice
                // (MQTT-4.3.3-9 / method A of section 4.3.3).
                let r = self.response(id, ReasonCode::SUCCESS, None);
                self.send(&Packet::PubRec(r));
                return None;
            }
            if self.state.inbound_qos2.len() >= usize::from(limits.receive_maximum) {
                return closed(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED); // MQTT-3.3.4-7
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
            return None;
        }

        // The packet becomes the shared message now, so that nothing as large as a decoded
        // PUBLISH is held across the waits below (they sit in every connection's task).
        let packet_id = p.packet_id;
        let qos = p.qos;
        let message = Arc::new(Message::from_publish(
            p,
            Some(self.client.client_id.clone()),
            limits.max_message_expiry,
        ));

        // Broker rule first: `$` topics belong to the broker, whatever a policy says.
        let verdict = if message.topic.starts_with('$') {
            Verdict::Deny(crate::policy::Denial::not_authorized())
        } else {
            let info = PublishInfo {
                topic: &message.topic,
                qos,
                retain: message.retain,
                payload_len: message.payload.len(),
                user_properties: &message.properties.user_properties,
            };
            self.shared
                .policy
                .authorize_publish(&self.client, &self.identity, info)
                .get()
                .await
        };
        if let Verdict::Deny(d) = verdict {
            self.shared
                .metrics
                .publish_dropped(DropCause::NotAuthorized);
            // Only a message the policy gave: a bare 0x87 says "not authorized" already, and
            // some clients (Paho's interop test client) reject a PUBACK with properties.
            self.refuse_publish(packet_id, qos, d.reason, d.message.as_deref());
            return None;
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
                    return None;
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
        let routed = self
            .shared
            .publish_paced(message, &self.me, acceptance, &mut self.congested);
        let id = packet_id?;
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
        self.acknowledge_when(stored, id, qos, reason)
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

    async fn on_pubrec(&mut self, r: PubResponse) -> Option<End> {
        let Some(i) = self.state.find_outbound(r.packet_id) else {
            // MQTT 5: PUBREL with 0x92 for an unknown id (section 3.6.2.1).
            let resp = self.response(r.packet_id, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND, None);
            self.send(&Packet::PubRel(resp));
            return None;
        };
        if self.state.outbound[i].delivery.qos != QoS::ExactlyOnce {
            return closed(ReasonCode::PROTOCOL_ERROR);
        }
        if r.reason_code.is_error() {
            // The receiver refused it: the exchange ends here (section 4.3.3).
            self.outbound_done(i);
            return None;
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
            if let Err(e) = self.shared.store.apply(change).get().await {
                tracing::error!(client = %self.client.client_id, error = %e, "could not journal a PUBREC");
            }
        }
        self.send(&Packet::PubRel(PubResponse::success(r.packet_id)));
        None
    }

    fn on_pubcomp(&mut self, r: PubResponse) -> Option<End> {
        if let Some(i) = self.state.find_outbound(r.packet_id)
            && self.state.outbound[i].phase == Phase::Released
        {
            self.outbound_done(i);
        }
        None
    }

    async fn on_pubrel(&mut self, r: PubResponse) -> Option<End> {
        // MQTT-4.3.3-11: PUBCOMP with the same id, even for one we no longer know (v5: 0x92).
        let known = self.state.inbound_qos2.remove(&r.packet_id);
        if known && self.journaled() {
            // Forgotten durably before PUBCOMP: a remembered id would make the broker drop the
            // client's next message with that id after a restart.
            let change = Change::InboundReleased {
                client_id: self.client.client_id.clone(),
                packet_id: r.packet_id,
            };
            if let Err(e) = self.shared.store.apply(change).get().await {
                tracing::error!(client = %self.client.client_id, error = %e, "could not journal a PUBREL");
            }
        }
        let reason = if known {
            ReasonCode::SUCCESS
        } else if self.version == ProtocolVersion::V5 {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        } else {
            ReasonCode::SUCCESS
        };
        let resp = self.response(r.packet_id, reason, None);
        self.send(&Packet::PubComp(resp));
        None
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
