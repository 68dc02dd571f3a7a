//! The policy seam: every security decision the broker takes goes through [`Policy`].
//!
//! The session layer asks questions ("may this client connect?", "may it publish here?") and
//! acts on the answer; it never knows who answered. The broker's policy is a [`chain::Chain`]
//! of Wasm plugins ([`wasm`]); [`AllowAll`] remains for embedding and tests.
//!
//! Rules the broker enforces itself, whatever a policy says, stay out of this trait: a client
//! may never write to a `$` topic, a persistent session belongs to the principal that created
//! it, and protocol limits are checked before any policy is asked.
//!
//! Answers come as [`Pending`] so that an immediate answer (allow-all, a cached decision) costs no
//! allocation, while a plugin that must wait on a directory can still answer later. An allow
//! carries a [`Grant`]: how long the session may reuse it, and a [`Stamp`] that
//! [`Policy::is_current`] checks on every reuse, so that a plugin replaced or invalidated since
//! makes its earlier answers stale at once. The per-session cache is [`cache::DecisionCache`].
//!
//! Layout:
//! - this file: the trait and the questions and answers it speaks;
//! - `allow_all`: [`AllowAll`];
//! - [`cache`]: the per-session decision cache;
//! - [`chain`]: the configured plugins in order, first allow or deny wins;
//! - [`wasm`]: the Wasm plugin host (engine, instance pools, sandbox limits, host imports).

mod allow_all;
pub mod cache;
pub mod chain;
pub mod wasm;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

use crate::codec::{ProtocolVersion, QoS, ReasonCode};
use crate::message::Message;
use crate::pending::Pending;

pub use allow_all::AllowAll;

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
    /// Opaque state the authenticating plugin keeps for itself; only it gets it back.
    pub session_state: Bytes,
    /// The plugin that authenticated the client (`None` for a policy that is not a chain).
    pub authenticated_by: Option<Arc<str>>,
    /// The format version of `session_state`, from that plugin's manifest.
    pub state_version: u32,
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

/// Marks of the policy state an answer was given under: for a chain, the generation of every
/// plugin that took part in it (those that said "next" too) and the chain's own layout.
/// [`Policy::is_current`] tells whether they all still hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp(pub SmallVec<[(u32, u64); 2]>);

/// An allow: how long the same session may reuse it, and the stamp that must still be current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// 0: ask again every time.
    pub cache_seconds: u32,
    pub stamp: Stamp,
}

/// The answer to a yes/no question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow(Grant),
    Deny(Denial),
}

impl Verdict {
    /// An allow that is not to be reused.
    pub fn allow() -> Verdict {
        Verdict::Allow(Grant::default())
    }

    pub fn is_allow(&self) -> bool {
        matches!(self, Verdict::Allow(_))
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
    /// Authenticated as `identity`; with enhanced authentication, `data` goes to the client in
    /// the CONNACK (or in the AUTH that ends a re-authentication).
    Allow {
        identity: Identity,
        data: Option<Bytes>,
    },
    Deny(Denial),
    /// MQTT 5 enhanced authentication: send AUTH (0x18) with `data`; the client's answer comes
    /// to [`Policy::continue_auth`] with `state`.
    Challenge {
        data: Bytes,
        state: Bytes,
    },
}

/// Why a publish is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishKind {
    /// A PUBLISH from the client.
    Message,
    /// Its will message: checked at CONNECT, and again when it is published.
    Will,
}

/// Every decision the broker delegates. Implementations must be cheap to call concurrently.
///
/// Arguments are shared (`Arc`) so that an implementation that must wait can keep them in its
/// future for the price of a reference count.
pub trait Policy: Send + Sync + 'static {
    /// A pre-check before authentication (banned addresses, client id rules). Allow here only
    /// means "go on to authenticate".
    fn on_connect(&self, client: &Arc<ClientInfo>) -> Pending<Verdict>;
    /// Authenticates a connecting client (or an MQTT 5 client re-authenticating).
    fn authenticate(
        &self,
        client: &Arc<ClientInfo>,
        credentials: Credentials,
    ) -> Pending<AuthOutcome>;
    /// The next step of an enhanced authentication exchange: the `state` of the challenge and
    /// the Authentication Data of the client's AUTH packet.
    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: Bytes,
        data: Bytes,
    ) -> Pending<AuthOutcome>;
    /// May the client publish `message` (its topic alias already resolved)?
    fn authorize_publish(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        kind: PublishKind,
        message: &Arc<Message>,
    ) -> Pending<Verdict>;
    /// May the client subscribe to `filter` (as sent, `$share/...` included)?
    fn authorize_subscribe(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        filter: &ByteString,
        qos: QoS,
    ) -> Pending<SubscribeVerdict>;
    /// May the client receive a message on `topic`? Asked only for subscriptions allowed with
    /// "check each delivery".
    fn authorize_deliver(
        &self,
        client: &Arc<ClientInfo>,
        identity: &Arc<Identity>,
        topic: &ByteString,
    ) -> Pending<Verdict>;
    /// Whether an answer stamped with `stamp` may still be reused. Called on every cache hit,
    /// so it must be cheap.
    fn is_current(&self, _stamp: &Stamp) -> bool {
        true
    }

    /// What the policy reports about itself, as `$SYS` topics and their values (published with
    /// the broker's own every `sys.interval`).
    fn status(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}
