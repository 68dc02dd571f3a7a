//! [`SessionState`]: what a session remembers between packets and across connections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytestring::ByteString;

use super::Delivery;
use crate::codec::{ProtocolVersion, SubscriptionOptions};
use crate::store::{SessionRecord, SubscriptionRecord};

/// Where an outbound QoS 1/2 message stands (section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// PUBLISH sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP (QoS 2).
    Released,
}

/// One outbound message awaiting acknowledgement.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub phase: Phase,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
    /// The policy asked for each delivery on this filter to be checked.
    pub check_each_delivery: bool,
}

/// The session state owned by the serving connection.
#[derive(Debug)]
pub struct SessionState {
    pub protocol: ProtocolVersion,
    /// Seconds the session lives after disconnection; `store::NEVER_EXPIRES` for ever.
    pub expiry_interval: u32,
    /// Keyed by the filter as the client sent it (with any `$share/group/` prefix). A B-tree
    /// rather than a hash map, here and for `inbound_qos2`: every session holds these even when
    /// empty, and an empty hash map with its random keys is twice the size (this state is part
    /// of the memory of every idle connection); sessions have few entries and look them up
    /// only on SUBSCRIBE, UNSUBSCRIBE and QoS 2 exchanges.
    pub subscriptions: BTreeMap<ByteString, Subscribed>,
    /// Outbound QoS 1/2 messages in the order they were first sent, so they can be resent in
    /// that order on reconnect (MQTT-4.6.0-1). The window is small (Receive Maximum), so a
    /// linear search by packet id is cheaper than a second index.
    pub outbound: VecDeque<Outbound>,
    /// Inbound QoS 2 packet ids whose PUBREL has not arrived (MQTT-4.3.3-9).
    pub inbound_qos2: BTreeSet<u16>,
    next_packet_id: u16,
}

impl SessionState {
    pub fn new(protocol: ProtocolVersion, expiry_interval: u32) -> SessionState {
        SessionState {
            protocol,
            expiry_interval,
            subscriptions: BTreeMap::new(),
            outbound: VecDeque::new(),
            inbound_qos2: BTreeSet::new(),
            next_packet_id: 1,
        }
    }

    /// A packet identifier not used by any outbound message in flight (MQTT-2.2.1-3): non-zero
    /// and unique. `None` when all 65535 are taken, which the inflight window prevents.
    pub fn next_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.outbound.iter().any(|o| o.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    /// The position of an outbound message by packet id.
    pub fn find_outbound(&self, packet_id: u16) -> Option<usize> {
        self.outbound.iter().position(|o| o.packet_id == packet_id)
    }

    /// The record a store keeps for this session; `offline_since` as in [`SessionRecord`].
    pub fn record(
        &self,
        client_id: &ByteString,
        owner: &ByteString,
        offline_since: Option<u64>,
    ) -> SessionRecord {
        let mut subscriptions: Vec<SubscriptionRecord> = self
            .subscriptions
            .iter()
            .map(|(filter, s)| SubscriptionRecord {
                filter: filter.clone(),
                options: s.options,
                identifier: s.identifier,
                check_each_delivery: s.check_each_delivery,
            })
            .collect();
        subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
        SessionRecord {
            client_id: client_id.clone(),
            owner: Some(owner.clone()),
            protocol: self.protocol,
            expiry_interval: self.expiry_interval,
            subscriptions,
            offline_since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;
    use crate::message::{Message, MessageProperties};
    use std::sync::Arc;

    fn outbound(packet_id: u16) -> Outbound {
        Outbound {
            packet_id,
            phase: Phase::Published,
            delivery: Delivery {
                message: Arc::new(Message {
                    topic: "t".into(),
                    payload: Default::default(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties: MessageProperties::default(),
                    received: std::time::Instant::now(),
                    expiry: None,
                    publisher: None,
                }),
                qos: QoS::AtLeastOnce,
                retain: false,
                identifiers: Default::default(),
                seq: 0,
            },
        }
    }

    #[test]
    fn packet_ids_are_nonzero_wrap_and_skip_ids_in_flight() {
        // MQTT-2.2.1-3: non-zero, and not reused while in flight.
        let mut s = SessionState::new(ProtocolVersion::V5, 0);
        assert_eq!(s.next_packet_id(), Some(1));
        s.outbound.push_back(outbound(2));
        assert_eq!(s.next_packet_id(), Some(3));
        s.next_packet_id = u16::MAX;
        assert_eq!(s.next_packet_id(), Some(u16::MAX));
        assert_eq!(s.next_packet_id(), Some(1));
    }
}
