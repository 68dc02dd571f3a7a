//! The policy seam: every security decision the broker takes goes through [`Policy`].
//!
//! The session layer asks questions ("may this client connect?", "may it publish here?") and
//! acts on the answer; it never knows who answered. Today the only implementation is
//! [`AllowAll`]; the plugin runtime plugs a chain of Wasm components in behind the same trait,
//! with its decision cache in front, without touching the sessions.
//!
//! Rules the broker enforces itself, whatever a policy says, stay out of this trait: a client
//! may never write to a `$` topic, and protocol limits are checked before any policy is asked.
//!
//! Answers come as [`Pending`] so that an immediate answer (allow-all, a cached decision) costs no
//! allocation, while a plugin that must wait on a directory can still answer later.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{ProtocolVersion, QoS, ReasonCode};
use crate::pending::Pending;

/// What the broker knows about a connecting or connected client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: ByteString,
    pub username: Option<ByteString>,
    pub remote_addr: SocketAddr,
    /// The name of the listener the client came in through.
    pub listener: Arc<str>,
    pub protocol: ProtocolVersion,
    /// What the TLS layer established, for clients on a `tls` or `wss` listener.
    pub tls: Option<Arc<TlsInfo>>,
}

/// The facts of a client's TLS session, as its listener verified them. Shared (`Arc`) because
/// every decision about the client carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The negotiated protocol version, e.g. "TLSv1.3".
    pub version: String,
    /// The negotiated cipher suite, IANA name, e.g. "TLS13_AES_128_GCM_SHA256".
    pub cipher: String,
    /// The server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The verified client certificate's subject as an RFC 4514 string, if one was presented.
    pub peer_subject: Option<String>,
    /// Its subject alternative names: DNS names, IP addresses, e-mail addresses and URIs as text.
    pub peer_sans: Vec<String>,
    /// The SHA-256 fingerprint of its DER encoding, lowercase hex without separators.
    pub peer_fingerprint_sha256: Option<String>,
}

/// The secrets a client presented in CONNECT (or AUTH).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<Bytes>,
    /// MQTT 5 enhanced authentication (section 4.12).
    pub auth_method: Option<ByteString>,
    pub auth_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

/// Who an authenticated client is, as the policy established it. Later decisions about the
/// client receive it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub principal: ByteString,
    pub roles: Vec<ByteString>,
    /// Seconds since the Unix epoch after which the client is disconnected with 0xA0.
    pub expires_at: Option<u64>,
    /// Opaque state the authenticating policy keeps for itself.
    pub session_state: Bytes,
}

/// A refusal: the reason code the client is told, and a message for the log (and, when the
/// client asked for problem information, the reason string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: ReasonCode,
    pub message: Option<String>,
}

impl Denial {
    pub fn not_authorized() -> Denial {
        Denial {
            reason: ReasonCode::NOT_AUTHORIZED,
            message: None,
        }
    }
}

/// The answer to a yes/no question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the broker may reuse this answer for `cache_seconds`.
    Allow {
        cache_seconds: u32,
    },
    Deny(Denial),
}

impl Verdict {
    pub const ALLOW: Verdict = Verdict::Allow { cache_seconds: 0 };

    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow { .. })
    }
}

/// The answer to a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeVerdict {
    /// Allowed. With `check_each_delivery`, the broker asks [`Policy::authorize_deliver`]
    /// before delivering each matching message, so a wide filter cannot read topics a finer
    /// rule denies.
    Allow {
        check_each_delivery: bool,
    },
    Deny(Denial),
}

/// The outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Allow(Identity),
    Deny(Denial),
    /// MQTT 5 enhanced authentication: send AUTH (0x18) with `data`; the client's answer comes
    /// to [`Policy::continue_auth`] with `state`.
    Challenge {
        data: Bytes,
        state: Bytes,
    },
}

/// What a policy is asked about a PUBLISH. The payload is not here: a policy that needs it
/// asks for it (that arrives with the plugin runtime).
#[derive(Debug, Clone, Copy)]
pub struct PublishInfo<'a> {
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub payload_len: usize,
    pub user_properties: &'a [(ByteString, ByteString)],
}

/// Every decision the broker delegates. Implementations must be cheap to call concurrently.
pub trait Policy: Send + Sync + 'static {
    /// A pre-check before authentication (banned addresses, client id rules). Allow here only
    /// means "go on to authenticate".
    fn on_connect(&self, client: &ClientInfo) -> Pending<Verdict>;
    fn authenticate(&self, client: &ClientInfo, credentials: &Credentials) -> Pending<AuthOutcome>;
    /// The next step of an enhanced authentication exchange.
    fn continue_auth(
        &self,
        client: &ClientInfo,
        state: Bytes,
        data: Option<Bytes>,
    ) -> Pending<AuthOutcome>;
    fn authorize_publish(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        publish: PublishInfo<'_>,
    ) -> Pending<Verdict>;
    fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        filter: &str,
        qos: QoS,
    ) -> Pending<SubscribeVerdict>;
    fn authorize_deliver(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        topic: &str,
    ) -> Pending<Verdict>;
}

/// Allows everything except enhanced authentication, which no method is configured for.
///
/// This is the default until the plugin runtime lands; with no config the broker only listens
/// on 127.0.0.1, so only local clients reach it.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Policy for AllowAll {
    fn on_connect(&self, _: &ClientInfo) -> Pending<Verdict> {
        Verdict::ALLOW.into()
    }

    fn authenticate(&self, client: &ClientInfo, credentials: &Credentials) -> Pending<AuthOutcome> {
        if credentials.auth_method.is_some() {
            // A method we do not implement must be refused with 0x8C (section 4.12).
            return AuthOutcome::Deny(Denial {
                reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
                message: Some("no authentication method is configured".into()),
            })
            .into();
        }
        AuthOutcome::Allow(Identity {
            principal: client
                .username
                .clone()
                .unwrap_or_else(|| client.client_id.clone()),
            ..Identity::default()
        })
        .into()
    }

    fn continue_auth(&self, _: &ClientInfo, _: Bytes, _: Option<Bytes>) -> Pending<AuthOutcome> {
        AuthOutcome::Deny(Denial {
            reason: ReasonCode::BAD_AUTHENTICATION_METHOD,
            message: None,
        })
        .into()
    }

    fn authorize_publish(
        &self,
        _: &ClientInfo,
        _: &Identity,
        _: PublishInfo<'_>,
    ) -> Pending<Verdict> {
        Verdict::ALLOW.into()
    }

    fn authorize_subscribe(
        &self,
        _: &ClientInfo,
        _: &Identity,
        _: &str,
        _: QoS,
    ) -> Pending<SubscribeVerdict> {
        SubscribeVerdict::Allow {
            check_each_delivery: false,
        }
        .into()
    }

    fn authorize_deliver(&self, _: &ClientInfo, _: &Identity, _: &str) -> Pending<Verdict> {
        Verdict::ALLOW.into()
    }
}
