//! One method per hook on [`Generation`]: the broker's types become the WIT records (borrowed,
//! so a call copies strings only into the guest), and the plugin's answer comes back checked
//! against the caps on what a plugin may return.
//!
//! Caps: a denial message of at most 1 KiB, a principal of at most 1 KiB, at most 64 roles of
//! at most 256 bytes, session state, challenge data and state and authentication data of at
//! most 64 KiB each. An answer over a cap is malformed: the call fails, and the chain fails
//! closed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use smallvec::SmallVec;

use super::bindings::moat::policy::types as wit;
use super::hook_stats::{Hook, Outcome};
use super::plugin::{Failure, Generation};
use crate::codec::{ProtocolVersion, QoS, ReasonCode};
use crate::message::Message;
use crate::policy::{ClientInfo, Credentials, Denial, Identity, PublishKind};

const MAX_MESSAGE: usize = 1024;
const MAX_PRINCIPAL: usize = 1024;
const MAX_ROLES: usize = 64;
const MAX_ROLE: usize = 256;
const MAX_BLOB: usize = 64 * 1024;

/// A plugin's answer: decided, or "not mine" (`next`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Decided(T),
    Next,
}

/// A plugin's yes or no, before the chain stamps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { cache_seconds: u32 },
    Deny(Denial),
}

/// A subscribe decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeDecision {
    Allow { check_each_delivery: bool },
    Deny(Denial),
}

/// One step of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    Allow {
        identity: Identity,
        data: Option<Bytes>,
    },
    Deny(Denial),
    Challenge {
        data: Bytes,
        state: Bytes,
    },
}

/// The packet a denial will be sent in: the reason codes differ per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    Connect,
    Publish,
    Subscribe,
}

/// `ip:port` formatted on the stack.
struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    fn new(addr: SocketAddr) -> AddrText {
        let mut t = AddrText {
            buf: [0; 64],
            len: 0,
        };
        match addr {
            // By hand: `core::fmt` costs more than the rest of building the records.
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    t.push_decimal(u32::from(octet));
                }
                t.push(b':');
                t.push_decimal(u32::from(v4.port()));
            }
            SocketAddr::V6(_) => {
                let _ = write!(t, "{addr}");
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn push_decimal(&mut self, mut n: u32) {
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            self.push(d);
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Builds the borrowed `client` record and runs `$body` with it bound to `$client`. A macro,
/// not a function: the record borrows locals that must live across the call's awaits.
macro_rules! with_client {
    ($info:expr, $client:ident, $body:expr) => {{
        let info: &ClientInfo = $info;
        let addr = AddrText::new(info.remote_addr);
        let sans: SmallVec<[&str; 8]> = info
            .tls
            .as_ref()
            .map(|t| t.peer_sans.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let tls = info.tls.as_ref().map(|t| wit::TlsInfo {
            version: &t.version,
            cipher: &t.cipher,
            sni: t.sni.as_deref(),
            peer_subject: t.peer_subject.as_deref(),
            peer_sans: &sans,
            peer_fingerprint_sha256: t.peer_fingerprint_sha256.as_deref(),
        });
        let $client = wit::Client {
            client_id: &info.client_id,
            username: info.username.as_deref(),
            remote_addr: addr.as_str(),
            listener: &info.listener,
            protocol: match info.protocol {
                ProtocolVersion::V311 => wit::Protocol::Mqtt311,
                ProtocolVersion::V5 => wit::Protocol::Mqtt5,
            },
            tls,
        };
        $body
    }};
}

/// Builds the borrowed `identity` record as this plugin may see it: the session state only if
/// it is the plugin that authenticated the client.
macro_rules! with_identity {
    ($generation:expr, $info:expr, $identity:ident, $body:expr) => {{
        let info: &Identity = $info;
        let roles: SmallVec<[&str; 8]> = info.roles.iter().map(|r| &**r).collect();
        let own = info.authenticated_by.as_deref() == Some(&*$generation.name);
        let $identity = wit::IdentityParam {
            principal: &info.principal,
            roles: &roles,
            expires_at: info.expires_at,
            session_state: if own { &info.session_state } else { &[] },
        };
        $body
    }};
}

impl Generation {
    async fn raw_on_connect(&self, client: &ClientInfo) -> Result<Answer<Decision>, Failure> {
        let timeout = self.limits.authenticate_timeout;
        let verdict = with_client!(client, c, {
            self.call(timeout, async |i| {
                let (store, hooks) = i.parts();
                hooks.call_on_connect(store, c).await
            })
            .await?
        });
        self.decision(verdict, Carrier::Connect)
    }

    async fn raw_authenticate(
        &self,
        client: &ClientInfo,
        credentials: &Credentials,
    ) -> Result<Answer<AuthStep>, Failure> {
        let timeout = self.limits.authenticate_timeout;
        let props: SmallVec<[(&str, &str); 4]> = credentials
            .user_properties
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        let creds = wit::Credentials {
            password: credentials.password.as_deref(),
            auth_method: credentials.auth_method.as_deref(),
            auth_data: credentials.auth_data.as_deref(),
            user_properties: &props,
        };
        let outcome = with_client!(client, c, {
            self.call(timeout, async |i| {
                let (store, hooks) = i.parts();
                hooks.call_authenticate(store, c, creds).await
            })
            .await?
        });
        self.auth_step(outcome)
    }

    async fn raw_continue_auth(
        &self,
        client: &ClientInfo,
        state: &[u8],
        data: &[u8],
    ) -> Result<Answer<AuthStep>, Failure> {
        let timeout = self.limits.authenticate_timeout;
        let outcome = with_client!(client, c, {
            self.call(timeout, async |i| {
                let (store, hooks) = i.parts();
                hooks.call_continue_auth(store, c, state, data).await
            })
            .await?
        });
        self.auth_step(outcome)
    }

    async fn raw_authorize_publish(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        kind: PublishKind,
        message: &Message,
    ) -> Result<Answer<Decision>, Failure> {
        let timeout = self.limits.authorize_timeout;
        let m = message;
        let props: SmallVec<[(&str, &str); 4]> = m
            .properties
            .user_properties
            .iter()
            .map(|(k, v)| (&**k, &**v))
            .collect();
        let publish = wit::Publish {
            kind: match kind {
                PublishKind::Message => wit::PublishKind::Message,
                PublishKind::Will => wit::PublishKind::Will,
            },
            topic: &m.topic,
            qos: m.qos as u8,
            retain: m.retain,
            payload_len: m.payload.len() as u32,
            payload_format_indicator: m.properties.payload_format_indicator,
            content_type: m.properties.content_type.as_deref(),
            response_topic: m.properties.response_topic.as_deref(),
            message_expiry_interval: m.expiry.map(|d| d.as_secs() as u32),
            user_properties: &props,
            payload: self.manifest.needs_payload.then_some(&m.payload[..]),
        };
        let verdict = with_client!(client, c, {
            with_identity!(self, identity, id, {
                self.call(timeout, async |i| {
                    let (store, hooks) = i.parts();
                    hooks.call_authorize_publish(store, c, id, publish).await
                })
                .await?
            })
        });
        self.decision(verdict, Carrier::Publish)
    }

    async fn raw_authorize_subscribe(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        filter: &str,
        share_group: Option<&str>,
        qos: QoS,
    ) -> Result<Answer<SubscribeDecision>, Failure> {
        let timeout = self.limits.authorize_timeout;
        let sub = wit::Subscription {
            filter,
            share_group,
            qos: qos as u8,
        };
        let verdict = with_client!(client, c, {
            with_identity!(self, identity, id, {
                self.call(timeout, async |i| {
                    let (store, hooks) = i.parts();
                    hooks.call_authorize_subscribe(store, c, id, sub).await
                })
                .await?
            })
        });
        Ok(match verdict {
            wit::SubscribeVerdict::Next => Answer::Next,
            wit::SubscribeVerdict::Allow(g) => Answer::Decided(SubscribeDecision::Allow {
                check_each_delivery: g.check_each_delivery,
            }),
            wit::SubscribeVerdict::Deny(d) => {
                Answer::Decided(SubscribeDecision::Deny(self.denial(d, Carrier::Subscribe)?))
            }
        })
    }

    async fn raw_authorize_deliver(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        topic: &ByteString,
    ) -> Result<Answer<Decision>, Failure> {
        let timeout = self.limits.authorize_timeout;
        let verdict = with_client!(client, c, {
            with_identity!(self, identity, id, {
                self.call(timeout, async |i| {
                    let (store, hooks) = i.parts();
                    hooks.call_authorize_deliver(store, c, id, topic).await
                })
                .await?
            })
        });
        self.decision(verdict, Carrier::Publish)
    }

    fn decision(&self, v: wit::Verdict, packet: Carrier) -> Result<Answer<Decision>, Failure> {
        Ok(match v {
            wit::Verdict::Next => Answer::Next,
            wit::Verdict::Allow(g) => Answer::Decided(Decision::Allow {
                cache_seconds: g.cache_seconds,
            }),
            wit::Verdict::Deny(d) => Answer::Decided(Decision::Deny(self.denial(d, packet)?)),
        })
    }

    fn denial(&self, d: wit::Denial, packet: Carrier) -> Result<Denial, Failure> {
        if d.message.as_ref().is_some_and(|m| m.len() > MAX_MESSAGE) {
            return Err(self.malformed(format!("a denial message over {MAX_MESSAGE} bytes")));
        }
        Ok(Denial {
            reason: reason_code(d.reason, packet),
            message: d.message,
        })
    }

    fn auth_step(&self, outcome: wit::AuthOutcome) -> Result<Answer<AuthStep>, Failure> {
        let blob = |what: &str, b: &[u8]| {
            if b.len() > MAX_BLOB {
                Err(self.malformed(format!("{what} over {MAX_BLOB} bytes")))
            } else {
                Ok(Bytes::copy_from_slice(b))
            }
        };
        Ok(Answer::Decided(match outcome {
            wit::AuthOutcome::Next => return Ok(Answer::Next),
            wit::AuthOutcome::Deny(d) => AuthStep::Deny(self.denial(d, Carrier::Connect)?),
            wit::AuthOutcome::Challenge(c) => AuthStep::Challenge {
                data: blob("challenge data", &c.data)?,
                state: blob("challenge state", &c.state)?,
            },
            wit::AuthOutcome::Allow(a) => {
                let id = a.identity;
                if id.principal.len() > MAX_PRINCIPAL {
                    return Err(self.malformed(format!("a principal over {MAX_PRINCIPAL} bytes")));
                }
                if id.roles.len() > MAX_ROLES || id.roles.iter().any(|r| r.len() > MAX_ROLE) {
                    return Err(self.malformed(format!(
                        "more than {MAX_ROLES} roles or a role over {MAX_ROLE} bytes"
                    )));
                }
                let data = a
                    .auth_data
                    .map(|d| blob("authentication data", &d))
                    .transpose()?;
                AuthStep::Allow {
                    identity: Identity {
                        principal: ByteString::from(id.principal),
                        roles: id.roles.into_iter().map(ByteString::from).collect(),
                        expires_at: id.expires_at,
                        session_state: blob("session state", &id.session_state)?,
                        authenticated_by: Some(self.name.clone()),
                        state_version: self.manifest.session_state_version,
                    },
                    data,
                }
            }
        }))
    }
}

/// How a decided answer counts in the per-hook statistics.
trait Tally {
    fn outcome(&self) -> Outcome;
}

impl Tally for Decision {
    fn outcome(&self) -> Outcome {
        match self {
            Decision::Allow { .. } => Outcome::Allow,
            Decision::Deny(_) => Outcome::Deny,
        }
    }
}

impl Tally for SubscribeDecision {
    fn outcome(&self) -> Outcome {
        match self {
            SubscribeDecision::Allow { .. } => Outcome::Allow,
            SubscribeDecision::Deny(_) => Outcome::Deny,
        }
    }
}

impl Tally for AuthStep {
    fn outcome(&self) -> Outcome {
        match self {
            AuthStep::Allow { .. } => Outcome::Allow,
            AuthStep::Deny(_) => Outcome::Deny,
            AuthStep::Challenge { .. } => Outcome::Challenge,
        }
    }
}

/// The hooks as the chain calls them: each call counted in [`Generation::per_hook`].
impl Generation {
    fn tally<T: Tally>(
        &self,
        hook: Hook,
        started: Instant,
        r: Result<Answer<T>, Failure>,
    ) -> Result<Answer<T>, Failure> {
        let outcome = match &r {
            Ok(Answer::Next) => Outcome::Next,
            Ok(Answer::Decided(d)) => d.outcome(),
            Err(_) => Outcome::Failed,
        };
        self.per_hook[hook as usize].record(started.elapsed(), outcome, r.as_ref().err());
        r
    }

    pub async fn on_connect(&self, client: &ClientInfo) -> Result<Answer<Decision>, Failure> {
        let started = Instant::now();
        let r = self.raw_on_connect(client).await;
        self.tally(Hook::OnConnect, started, r)
    }

    pub async fn authenticate(
        &self,
        client: &ClientInfo,
        credentials: &Credentials,
    ) -> Result<Answer<AuthStep>, Failure> {
        let started = Instant::now();
        let r = self.raw_authenticate(client, credentials).await;
        self.tally(Hook::Authenticate, started, r)
    }

    pub async fn continue_auth(
        &self,
        client: &ClientInfo,
        state: &[u8],
        data: &[u8],
    ) -> Result<Answer<AuthStep>, Failure> {
        let started = Instant::now();
        let r = self.raw_continue_auth(client, state, data).await;
        self.tally(Hook::ContinueAuth, started, r)
    }

    pub async fn authorize_publish(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        kind: PublishKind,
        message: &Message,
    ) -> Result<Answer<Decision>, Failure> {
        let started = Instant::now();
        let r = self
            .raw_authorize_publish(client, identity, kind, message)
            .await;
        self.tally(Hook::AuthorizePublish, started, r)
    }

    pub async fn authorize_subscribe(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        filter: &str,
        share_group: Option<&str>,
        qos: QoS,
    ) -> Result<Answer<SubscribeDecision>, Failure> {
        let started = Instant::now();
        let r = self
            .raw_authorize_subscribe(client, identity, filter, share_group, qos)
            .await;
        self.tally(Hook::AuthorizeSubscribe, started, r)
    }

    pub async fn authorize_deliver(
        &self,
        client: &ClientInfo,
        identity: &Identity,
        topic: &ByteString,
    ) -> Result<Answer<Decision>, Failure> {
        let started = Instant::now();
        let r = self.raw_authorize_deliver(client, identity, topic).await;
        self.tally(Hook::AuthorizeDeliver, started, r)
    }
}

/// The reason code a denial becomes in the packet that carries it (the 3.1.1 return codes are
/// derived from these where the packet is encoded).
fn reason_code(reason: wit::Reason, packet: Carrier) -> ReasonCode {
    use wit::Reason as R;
    match reason {
        R::Unspecified => ReasonCode::UNSPECIFIED_ERROR,
        R::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
        R::BadCredentials if packet == Carrier::Connect => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        R::BadCredentials => ReasonCode::NOT_AUTHORIZED,
        R::Banned if packet == Carrier::Connect => ReasonCode::BANNED,
        R::Banned => ReasonCode::NOT_AUTHORIZED,
        R::ClientIdInvalid if packet == Carrier::Connect => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        R::ClientIdInvalid => ReasonCode::NOT_AUTHORIZED,
        R::BadAuthenticationMethod if packet == Carrier::Connect => {
            ReasonCode::BAD_AUTHENTICATION_METHOD
        }
        R::BadAuthenticationMethod => ReasonCode::NOT_AUTHORIZED,
        R::ServerUnavailable if packet == Carrier::Connect => ReasonCode::SERVER_UNAVAILABLE,
        R::ServerBusy if packet == Carrier::Connect => ReasonCode::SERVER_BUSY,
        R::ServerUnavailable | R::ServerBusy => ReasonCode::UNSPECIFIED_ERROR,
        R::QuotaExceeded => ReasonCode::QUOTA_EXCEEDED,
        R::TopicInvalid if packet == Carrier::Subscribe => ReasonCode::TOPIC_FILTER_INVALID,
        R::TopicInvalid if packet == Carrier::Publish => ReasonCode::TOPIC_NAME_INVALID,
        R::TopicInvalid => ReasonCode::NOT_AUTHORIZED,
        R::PayloadInvalid if packet == Carrier::Publish => ReasonCode::PAYLOAD_FORMAT_INVALID,
        R::PayloadInvalid => ReasonCode::UNSPECIFIED_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::reason::Carrier as Wire;

    #[test]
    fn every_reason_is_a_code_its_packet_may_carry() {
        use wit::Reason as R;
        let reasons = [
            R::Unspecified,
            R::NotAuthorized,
            R::BadCredentials,
            R::Banned,
            R::ClientIdInvalid,
            R::BadAuthenticationMethod,
            R::ServerUnavailable,
            R::ServerBusy,
            R::QuotaExceeded,
            R::TopicInvalid,
            R::PayloadInvalid,
        ];
        for r in reasons {
            assert!(
                Wire::ConnAck.allows(reason_code(r, Carrier::Connect).0),
                "{r:?} CONNACK"
            );
            assert!(
                Wire::PubAck.allows(reason_code(r, Carrier::Publish).0),
                "{r:?} PUBACK"
            );
            assert!(
                Wire::SubAck.allows(reason_code(r, Carrier::Subscribe).0),
                "{r:?} SUBACK"
            );
        }
    }

    #[test]
    fn addresses_format_on_the_stack() {
        let v6: SocketAddr = "[2001:db8::1:2:3:4]:65535".parse().unwrap();
        assert_eq!(AddrText::new(v6).as_str(), "[2001:db8::1:2:3:4]:65535");
        for text in [
            "127.0.0.1:1883",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.2.30.4:7",
        ] {
            let v4: SocketAddr = text.parse().unwrap();
            assert_eq!(AddrText::new(v4).as_str(), text);
        }
    }
}
