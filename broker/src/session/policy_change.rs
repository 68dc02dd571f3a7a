//! What a live connection does when the plugins change under it.
//!
//! - Each connection records who is connected ([`Connected`]: the client's facts and its
//!   identity) once it is authenticated, and again after a re-authentication. The operator's
//!   client list reads it, and a policy change uses it to find the clients whose
//!   authenticating plugin was unloaded or now keeps another session-state version: those are
//!   disconnected (see `crate::admin`).
//! - After a change the broker asks every connection to re-check its subscriptions
//!   ([`Session::request_recheck`]). The connection does it in its own task, when it next
//!   wakes, since it owns the session state: each filter goes through `authorize-subscribe`
//!   again, as if subscribed anew. A filter now refused is removed (from the router and the
//!   session, so a persistent session does not bring it back). What the client hears is
//!   `plugins.recheck_subscriptions`: with `"disconnect"` (the default) an MQTT 5 client that
//!   lost a filter is disconnected with 0x87 Not authorized, so it learns it; an MQTT 3.1.1
//!   client has no packet that could tell it and keeps its connection; with `"drop"` the
//!   filter goes silently; with `"off"` subscriptions are not re-checked.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Conn, End};
use super::{Kick, Session};
use crate::codec::{ProtocolVersion, ReasonCode};
use crate::config::RecheckSubscriptions;
use crate::policy::{ClientInfo, Identity, SubscribeVerdict};

/// Who is connected to a session: the client's facts and the identity the policy gave it.
#[derive(Debug, Clone)]
pub struct Connected {
    pub client: Arc<ClientInfo>,
    pub identity: Arc<Identity>,
}

impl Kick {
    pub(crate) fn set_connected(&self, client: Arc<ClientInfo>, identity: Arc<Identity>) {
        *self.who.lock() = Some(Connected { client, identity });
    }

    /// True once after a re-check was asked for.
    pub(super) fn take_recheck(&self) -> bool {
        self.recheck.load(Ordering::Relaxed) && self.recheck.swap(false, Ordering::AcqRel)
    }
}

impl Session {
    /// The client connected to this session now, if any.
    pub fn connected(&self) -> Option<Connected> {
        self.conn.lock().1.as_ref()?.who.lock().clone()
    }

    /// Asks the serving connection, if any, to re-check its subscriptions.
    pub fn request_recheck(&self) {
        if let Some(kick) = &self.conn.lock().1 {
            kick.recheck.store(true, Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// Closes the serving connection, if any, telling an MQTT 5 client `reason`. The session
    /// stays (a persistent one can be resumed). True if a connection was told to close.
    pub fn disconnect(&self, reason: ReasonCode) -> bool {
        let mut kicked = false;
        self.kick_if(|_| {
            kicked = true;
            Some(reason)
        });
        kicked
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    /// Re-checks every subscription under the policy now in force; see the module doc.
    pub(super) async fn recheck_subscriptions(&mut self) -> Option<End> {
        let mode = self.shared.config.plugins.recheck_subscriptions;
        if mode == RecheckSubscriptions::Off {
            return None;
        }
        let current: Vec<_> = self
            .state
            .subscriptions
            .iter()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        let mut revoked = 0;
        let mut changed = false;
        for (filter, sub) in current {
            let verdict = self
                .shared
                .policy
                .authorize_subscribe(&self.client, &self.identity, &filter, sub.options.qos)
                .get()
                .await;
            match verdict {
                SubscribeVerdict::Allow {
                    check_each_delivery,
                } => {
                    if check_each_delivery != sub.check_each_delivery
                        && let Some(s) = self.state.subscriptions.get_mut(&filter)
                    {
                        s.check_each_delivery = check_each_delivery;
                        changed = true;
                    }
                }
                SubscribeVerdict::Deny(d) => {
                    tracing::info!(client = %self.client.client_id, %filter, reason = d.reason.0,
                        "subscription revoked by the policy now in force");
                    self.state.subscriptions.remove(&filter);
                    self.shared.unsubscribe(&self.me, &filter);
                    revoked += 1;
                    changed = true;
                }
            }
        }
        if changed {
            self.update_delivery_checks();
            self.persist_session(None).await;
        }
        if revoked > 0
            && mode == RecheckSubscriptions::Disconnect
            && self.version == ProtocolVersion::V5
        {
            return Some(End::Closed(ReasonCode::NOT_AUTHORIZED));
        }
        None
    }
}
