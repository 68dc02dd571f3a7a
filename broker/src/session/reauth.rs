//! MQTT 5 re-authentication (section 4.12.1): an AUTH exchange on a live connection.
//!
//! A client that authenticated with an Authentication Method may start again with AUTH 0x19
//! (same method); the policy answers as it does at CONNECT, with challenges (AUTH 0x18 both
//! ways) until it allows (AUTH 0x00) or refuses (DISCONNECT, MQTT-4.12.1-2). The connection
//! keeps serving other packets meanwhile. A re-authentication may renew the identity (roles,
//! expiry, session state) but not change who the client is: another principal is refused.

use std::sync::Arc;

use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Conn, End};
use crate::codec::reason::Carrier;
use crate::codec::{Auth, Packet, Properties, PropertyValues, ReasonCode};
use crate::policy::{AuthOutcome, Credentials};

const fn closed(reason: ReasonCode) -> Option<End> {
    Some(End::Closed(reason))
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    pub(super) async fn on_auth(&mut self, auth: Auth) -> Option<End> {
        // Only a client that named a method at CONNECT may send AUTH, with that same method.
        let Some(enhanced) = self.auth.as_mut() else {
            return closed(ReasonCode::PROTOCOL_ERROR);
        };
        if auth.properties.authentication_method.as_ref() != Some(&enhanced.method) {
            return closed(ReasonCode::PROTOCOL_ERROR);
        }
        let method = enhanced.method.clone();
        let pending = enhanced.pending.take();
        let data = auth
            .properties
            .authentication_data
            .clone()
            .unwrap_or_default();
        let policy = self.shared.policy.clone();
        let outcome = match (auth.reason_code, pending) {
            (ReasonCode::REAUTHENTICATE, None) => {
                let credentials = Credentials {
                    password: None,
                    auth_method: Some(method.clone()),
                    auth_data: Some(data),
                    user_properties: auth.properties.user_properties.clone(),
                };
                policy.authenticate(&self.client, credentials).get().await
            }
            (ReasonCode::CONTINUE_AUTHENTICATION, Some(state)) => {
                policy.continue_auth(&self.client, state, data).get().await
            }
            // Re-authenticating while a re-authentication is in progress, continuing none, or
            // a reason a client may not send.
            _ => return closed(ReasonCode::PROTOCOL_ERROR),
        };
        self.reauth_outcome(method, outcome)
    }

    fn reauth_outcome(&mut self, method: ByteString, outcome: AuthOutcome) -> Option<End> {
        let (reason, data) = match outcome {
            AuthOutcome::Deny(d) => {
                tracing::debug!(client = %self.client.client_id, reason = d.reason.0, "re-authentication refused");
                // MQTT-4.12.1-2: DISCONNECT, with a code a DISCONNECT may carry.
                let code = if Carrier::Disconnect.allows(d.reason.0) {
                    d.reason
                } else {
                    ReasonCode::NOT_AUTHORIZED
                };
                return closed(code);
            }
            AuthOutcome::Challenge { data, state } => {
                if let Some(enhanced) = self.auth.as_mut() {
                    enhanced.pending = Some(state);
                }
                (ReasonCode::CONTINUE_AUTHENTICATION, Some(data))
            }
            AuthOutcome::Allow { identity, data } => {
                if identity.principal != self.identity.principal {
                    tracing::warn!(client = %self.client.client_id, "re-authentication as another principal refused");
                    return closed(ReasonCode::NOT_AUTHORIZED);
                }
                self.identity = Arc::new(identity);
                self.kick
                    .set_connected(self.client.clone(), self.identity.clone());
                self.decisions.clear();
                self.set_identity_expiry();
                (ReasonCode::SUCCESS, data)
            }
        };
        self.send(&Packet::Auth(Auth {
            reason_code: reason,
            properties: Properties::from(PropertyValues {
                authentication_method: Some(method),
                authentication_data: data,
                ..PropertyValues::default()
            }),
        }));
        None
    }
}
