//! [`AllowAll`]: the policy of a broker with no security at all, for embedding and tests.

use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use super::{
    AuthOutcome, ClientInfo, Credentials, Denial, Identity, Policy, PublishKind, SubscribeVerdict,
    Verdict,
};
use crate::codec::{QoS, ReasonCode};
use crate::message::Message;
use crate::pending::Pending;

/// Allows everything except enhanced authentication, which no method is configured for.
///
/// The `moat` binary never uses it: with no configuration its chain lets anonymous clients in
/// only on loopback listeners (see [`super::chain`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn on_connect(&self, _: &Arc<ClientInfo>) -> Pending<Verdict> {
        Verdict::allow().into()
    }

    fn authenticate(
        &self,
        client: &Arc<ClientInfo>,
        credentials: Credentials,
    ) -> Pending<AuthOutcome> {
        if credentials.auth_method.is_some() {
            // A method we do not implement must be refused with 0x8C (section 4.12).
            return AuthOutcome::Deny(Denial {
                reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
                message: Some("no authentication method is configured".into()),
            })
            .into();
        }
        AuthOutcome::Allow {
            identity: Identity {
                principal: client
                    .username
                    .clone()
                    .unwrap_or_else(|| client.client_id.clone()),
                ..Identity::default()
            },
            data: None,
        }
        .into()
    }

    fn continue_auth(&self, _: &Arc<ClientInfo>, _: Bytes, _: Bytes) -> Pending<AuthOutcome> {
        AuthOutcome::Deny(Denial {
            reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
            message: None,
        })
        .into()
    }

    fn authorize_publish(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        _: PublishKind,
        _: &Arc<Message>,
    ) -> Pending<Verdict> {
        Verdict::allow().into()
    }

    fn authorize_subscribe(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        _: &ByteString,
        _: QoS,
    ) -> Pending<SubscribeVerdict> {
        SubscribeVerdict::Allow {
            check_each_delivery: false,
        }
        .into()
    }

    fn authorize_deliver(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        _: &ByteString,
    ) -> Pending<Verdict> {
        Verdict::allow().into()
    }
}
