//! Rebuilding the broker's working state from a store [`Snapshot`] at start.
//!
//! Retained messages go back into the index; each persistent session gets its subscriptions
//! back into the router, its queued messages back into its mailbox, its inflight QoS 2
//! messages back into its outbound window with the packet ids they were sent with (resent with
//! DUP when the client returns, MQTT-4.4.0-1), and its inbound QoS 2 packet ids awaiting
//! PUBREL. An offline session's expiry continues from when it went offline; one the broker
//! stopped under starts its expiry now. Delayed wills are published when due. The operator's
//! bans hold again.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;

use super::Shared;
use crate::codec::QoS;
use crate::policy::ClientInfo;
use crate::session::state::{Outbound, Phase, Subscribed};
use crate::session::{Delivery, Session, SessionRef, SessionState};
use crate::store::{Change, NEVER_EXPIRES, QueuedRecord, Snapshot};

impl Shared {
    /// Rebuilds retained messages, persistent sessions, delayed wills and bans from `snapshot`.
    pub(super) fn restore(self: &Arc<Self>, snapshot: Snapshot) {
        self.bans.write().extend(snapshot.bans);
        {
            let mut index = self.retained.write();
            let mut usage = self.quotas.retained.lock();
            for m in snapshot.retained {
                usage.add(&m);
                if let Some(old) = index.insert(&m.topic.clone(), m) {
                    usage.remove(&old);
                }
            }
            self.metrics.set_retained(index.len());
        }
        let mut queued: HashMap<ByteString, Vec<QueuedRecord>> = HashMap::new();
        for q in snapshot.queued {
            queued
                .entry(q.target.client_id.clone())
                .or_default()
                .push(q);
        }
        let mut inbound: HashMap<ByteString, Vec<u16>> = HashMap::new();
        for (client_id, packet_id) in snapshot.inbound_qos2 {
            inbound.entry(client_id).or_default().push(packet_id);
        }
        let now = crate::store::disk::unix_now();
        for record in snapshot.sessions {
            self.quotas
                .set_persistent(&record.client_id, record.expiry_interval > 0);
            let mut state = SessionState::new(record.protocol, record.expiry_interval);
            for s in &record.subscriptions {
                let subscribed = Subscribed {
                    options: s.options,
                    identifier: s.identifier,
                    check_each_delivery: s.check_each_delivery,
                };
                state.subscriptions.insert(s.filter.clone(), subscribed);
            }
            state
                .inbound_qos2
                .extend(inbound.remove(&record.client_id).unwrap_or_default());
            let mut waiting = Vec::new();
            for q in queued.remove(&record.client_id).unwrap_or_default() {
                let delivery = Delivery {
                    message: q.message,
                    qos: q.target.qos,
                    retain: q.target.retain,
                    identifiers: q.target.identifiers,
                    seq: q.target.seq,
                };
                match q.packet_id {
                    // Sent with this id: it must go out again with the same one.
                    Some(packet_id) if delivery.qos == QoS::ExactlyOnce => {
                        let phase = if q.released {
                            Phase::Released
                        } else {
                            Phase::Published
                        };
                        state.outbound.push_back(Outbound {
                            packet_id,
                            delivery,
                            phase,
                        });
                        self.metrics.inflight_added();
                    }
                    _ => waiting.push(delivery),
                }
            }
            let session = Session::new(
                record.client_id.clone(),
                record.owner.clone().unwrap_or_default(),
                state,
                self.mailbox_limits(),
            );
            session.set_journaled(self.journal);
            for d in waiting {
                if let Some(dropped) = session.deliver(d, &self.metrics, false).dropped {
                    self.dequeue(&session.client_id, dropped.seq);
                }
            }
            let me = SessionRef(session.clone());
            for s in &record.subscriptions {
                self.subscribe(&me, &s.filter, s.options, s.identifier, false);
            }
            self.sessions.lock().insert(session.clone());
            self.metrics.offline_session_restored();
            if record.expiry_interval != NEVER_EXPIRES {
                let offline_for = record
                    .offline_since
                    .map_or(0, |t| now.saturating_sub(t))
                    .min(u64::from(u32::MAX)) as u32;
                let left = record.expiry_interval.saturating_sub(offline_for).max(1);
                self.schedule_expiry(session, 0, left);
            }
        }
        for will in snapshot.wills {
            self.restore_will(will, now);
        }
    }

    /// Publishes a stored will when its delay is over, or at once if its session is gone.
    /// The policy sees the client id, user name, listener and identity it was stored with (the
    /// plugin that authenticated the client gets its session state back); only the address
    /// and TLS facts of the connection, which no longer exists, are gone.
    fn restore_will(self: &Arc<Self>, will: crate::store::WillRecord, now: u64) {
        let session = self.sessions.lock().get(&will.client_id).cloned();
        let client = Arc::new(ClientInfo {
            client_id: will.client_id.clone(),
            username: will.username.clone(),
            remote_addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            listener: will.listener.clone(),
            protocol: will.protocol,
            tls: None,
        });
        let identity = Arc::new(will.identity.clone());
        let delay = Duration::from_secs(will.publish_at.saturating_sub(now));
        let shared = self.clone();
        self.spawn(async move {
            if let Some(session) = &session {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = session.ended() => {}
                    _ = shared.shutdown.cancelled() => return,
                }
                // A client that came back to the session cancels its will (MQTT-3.1.3-9).
                if session.current_generation() != 0 && !session.is_ended() {
                    shared
                        .store
                        .apply_detached(Change::WillRemoved(will.client_id.clone()));
                    return;
                }
            }
            shared.send_will(will.message, &client, &identity).await;
            shared
                .store
                .apply_detached(Change::WillRemoved(will.client_id.clone()));
        });
    }
}
