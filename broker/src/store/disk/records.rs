//! The on-disk form of every record: postcard-encoded, versioned, independent of the broker's
//! in-memory types.
//!
//! Each value is a [`Versioned`] enum, so its first byte says which layout follows: a later
//! release adds `V2` and keeps reading `V1`. The database as a whole also carries a format
//! number (see `FORMAT` in the parent module) for changes of key layout. Times are stored as
//! Unix time (an `Instant` means nothing after a restart) and turned back into `Instant`s when
//! read.
//!
//! Strings and payloads are `Cow`s: encoding borrows from the shared message (no copies on
//! the write path), decoding owns.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use crate::codec::{ProtocolVersion, QoS, RetainHandling, SubscriptionOptions};
use crate::message::{Message, MessageProperties};
use crate::policy::Identity;
use crate::store::{SessionRecord, SubscriptionRecord};

/// A record in one of its layouts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Versioned<T> {
    V1(T),
}

/// Why a record could not be read.
pub(super) type DecodeError = String;

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_allocvec(&Versioned::V1(value)).unwrap_or_default()
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match postcard::from_bytes::<Versioned<T>>(bytes) {
        Ok(Versioned::V1(v)) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix_ms_now() / 1000
}

/// An application message.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct MessageV1<'a> {
    topic: Cow<'a, str>,
    #[serde(with = "raw_bytes")]
    payload: Cow<'a, [u8]>,
    qos: u8,
    retain: bool,
    payload_format_indicator: Option<u8>,
    content_type: Option<Cow<'a, str>>,
    response_topic: Option<Cow<'a, str>>,
    #[serde(with = "opt_raw_bytes")]
    correlation_data: Option<Cow<'a, [u8]>>,
    user_properties: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// When the broker received it, Unix milliseconds.
    received_ms: u64,
    expiry_ms: Option<u64>,
    publisher: Option<Cow<'a, str>>,
}

impl<'a> MessageV1<'a> {
    /// Borrows `m`; `now` pairs the message's `Instant` with Unix time.
    pub fn from_message(m: &'a Message, now: (Instant, u64)) -> MessageV1<'a> {
        let age = now.0.saturating_duration_since(m.received).as_millis() as u64;
        let p = &m.properties;
        MessageV1 {
            topic: Cow::Borrowed(&m.topic),
            payload: Cow::Borrowed(&m.payload),
            qos: m.qos as u8,
            retain: m.retain,
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_deref().map(Cow::Borrowed),
            response_topic: p.response_topic.as_deref().map(Cow::Borrowed),
            correlation_data: p.correlation_data.as_deref().map(Cow::Borrowed),
            user_properties: p
                .user_properties
                .iter()
                .map(|(k, v)| (Cow::Borrowed(&**k), Cow::Borrowed(&**v)))
                .collect(),
            received_ms: now.1.saturating_sub(age),
            expiry_ms: m.expiry.map(|e| e.as_millis() as u64),
            publisher: m.publisher.as_deref().map(Cow::Borrowed),
        }
    }

    /// The message, its receipt time mapped onto this process's clock (`now` as above).
    /// `None` when its expiry passed (while the broker was down, say).
    pub fn into_message(self, now: (Instant, u64)) -> Result<Option<Message>, DecodeError> {
        let qos = QoS::from_u8(self.qos).ok_or_else(|| format!("bad QoS {}", self.qos))?;
        let age = Duration::from_millis(now.1.saturating_sub(self.received_ms));
        let expiry = self.expiry_ms.map(Duration::from_millis);
        if expiry.is_some_and(|e| age >= e) {
            return Ok(None);
        }
        // An Instant before the process's clock began cannot be made; such a message is
        // treated as received at start, which only lengthens a remaining expiry.
        let received = now.0.checked_sub(age).unwrap_or(now.0);
        let s = |c: Cow<'_, str>| ByteString::from(c.into_owned());
        let b = |c: Cow<'_, [u8]>| Bytes::from(c.into_owned());
        Ok(Some(Message {
            topic: s(self.topic),
            payload: b(self.payload),
            qos,
            retain: self.retain,
            properties: MessageProperties {
                payload_format_indicator: self.payload_format_indicator,
                content_type: self.content_type.map(s),
                response_topic: self.response_topic.map(s),
                correlation_data: self.correlation_data.map(b),
                user_properties: self
                    .user_properties
                    .into_iter()
                    .map(|(k, v)| (s(k), s(v)))
                    .collect(),
            },
            received,
            expiry,
            publisher: self.publisher.map(s),
        }))
    }
}

/// A message queued for one session (the message itself is stored once, by id).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct QueuedV1 {
    pub message: u64,
    pub qos: u8,
    pub retain: bool,
    pub identifiers: Vec<u32>,
    pub packet_id: Option<u16>,
    pub released: bool,
}

/// A persistent session.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SessionV1 {
    /// The principal that created the session.
    owner: Option<String>,
    protocol: u8,
    expiry_interval: u32,
    subscriptions: Vec<SubscriptionV1>,
    offline_since: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SubscriptionV1 {
    filter: String,
    qos: u8,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
    identifier: Option<u32>,
    check_each_delivery: bool,
}

fn protocol_code(p: ProtocolVersion) -> u8 {
    match p {
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    }
}

fn protocol_from(code: u8) -> Result<ProtocolVersion, DecodeError> {
    match code {
        4 => Ok(ProtocolVersion::V311),
        5 => Ok(ProtocolVersion::V5),
        n => Err(format!("bad protocol level {n}")),
    }
}

impl SessionV1 {
    pub fn from_record(r: &SessionRecord) -> SessionV1 {
        SessionV1 {
            owner: r.owner.as_ref().map(|o| o.to_string()),
            protocol: protocol_code(r.protocol),
            expiry_interval: r.expiry_interval,
            subscriptions: r
                .subscriptions
                .iter()
                .map(|s| SubscriptionV1 {
                    filter: s.filter.to_string(),
                    qos: s.options.qos as u8,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    retain_handling: s.options.retain_handling as u8,
                    identifier: s.identifier,
                    check_each_delivery: s.check_each_delivery,
                })
                .collect(),
            offline_since: r.offline_since,
        }
    }

    pub fn into_record(self, client_id: &str) -> Result<SessionRecord, DecodeError> {
        let mut subscriptions = Vec::with_capacity(self.subscriptions.len());
        for s in self.subscriptions {
            let retain_handling = match s.retain_handling {
                0 => RetainHandling::OnSubscribe,
                1 => RetainHandling::OnNewSubscription,
                2 => RetainHandling::Never,
                n => return Err(format!("bad retain handling {n}")),
            };
            subscriptions.push(SubscriptionRecord {
                filter: s.filter.into(),
                options: SubscriptionOptions {
                    qos: QoS::from_u8(s.qos).ok_or_else(|| format!("bad QoS {}", s.qos))?,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    retain_handling,
                },
                identifier: s.identifier,
                check_each_delivery: s.check_each_delivery,
            });
        }
        Ok(SessionRecord {
            client_id: client_id.into(),
            owner: self.owner.map(ByteString::from),
            protocol: protocol_from(self.protocol)?,
            expiry_interval: self.expiry_interval,
            subscriptions,
            offline_since: self.offline_since,
        })
    }
}

/// A will waiting for its delay.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WillV1<'a> {
    pub username: Option<Cow<'a, str>>,
    pub protocol: u8,
    pub listener: Cow<'a, str>,
    pub identity: IdentityV1<'a>,
    pub publish_at: u64,
    pub message: MessageV1<'a>,
}

/// Who a client was (`policy::Identity`), for a will published after a restart.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct IdentityV1<'a> {
    pub principal: Cow<'a, str>,
    pub roles: Vec<Cow<'a, str>>,
    pub expires_at: Option<u64>,
    #[serde(with = "raw_bytes")]
    pub session_state: Cow<'a, [u8]>,
    pub authenticated_by: Option<Cow<'a, str>>,
    pub state_version: u32,
}

impl<'a> IdentityV1<'a> {
    fn from_identity(i: &'a Identity) -> IdentityV1<'a> {
        IdentityV1 {
            principal: Cow::Borrowed(&i.principal),
            roles: i.roles.iter().map(|r| Cow::Borrowed(&**r)).collect(),
            expires_at: i.expires_at,
            session_state: Cow::Borrowed(&i.session_state),
            authenticated_by: i.authenticated_by.as_deref().map(Cow::Borrowed),
            state_version: i.state_version,
        }
    }

    fn into_identity(self) -> Identity {
        Identity {
            principal: ByteString::from(self.principal.into_owned()),
            roles: self
                .roles
                .into_iter()
                .map(|r| ByteString::from(r.into_owned()))
                .collect(),
            expires_at: self.expires_at,
            session_state: Bytes::from(self.session_state.into_owned()),
            authenticated_by: self.authenticated_by.map(|a| Arc::from(&*a)),
            state_version: self.state_version,
        }
    }
}

impl<'a> WillV1<'a> {
    pub fn from_record(w: &'a crate::store::WillRecord, now: (Instant, u64)) -> WillV1<'a> {
        WillV1 {
            username: w.username.as_deref().map(Cow::Borrowed),
            protocol: protocol_code(w.protocol),
            listener: Cow::Borrowed(&w.listener),
            identity: IdentityV1::from_identity(&w.identity),
            publish_at: w.publish_at,
            message: MessageV1::from_message(&w.message, now),
        }
    }

    pub fn into_record(
        self,
        client_id: &str,
        now: (Instant, u64),
    ) -> Result<Option<crate::store::WillRecord>, DecodeError> {
        let protocol = protocol_from(self.protocol)?;
        let Some(message) = self.message.into_message(now)? else {
            return Ok(None);
        };
        Ok(Some(crate::store::WillRecord {
            client_id: client_id.into(),
            username: self.username.map(|u| ByteString::from(u.into_owned())),
            protocol,
            listener: Arc::from(&*self.listener),
            identity: self.identity.into_identity(),
            message: Arc::new(message),
            publish_at: self.publish_at,
        }))
    }
}

/// Byte strings as postcard bytes (length and raw bytes), not as a sequence of numbers.
mod raw_bytes {
    use std::borrow::Cow;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'static, [u8]>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'static, [u8]>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

mod opt_raw_bytes {
    use std::borrow::Cow;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wrap<'a>(#[serde(with = "super::raw_bytes")] Cow<'a, [u8]>);

    pub fn serialize<S: Serializer>(v: &Option<Cow<'_, [u8]>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|b| Wrap(Cow::Borrowed(b))).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Cow<'static, [u8]>>, D::Error> {
        Ok(Option::<Wrap<'static>>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_encoding_and_its_expiry_keeps_counting() {
        let now = (Instant::now(), unix_ms_now());
        let m = Message {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\x01payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("r".into()),
                correlation_data: Some(Bytes::from_static(b"cd")),
                user_properties: vec![("k".into(), "v".into())],
            },
            received: now.0,
            expiry: Some(Duration::from_secs(60)),
            publisher: Some("pub".into()),
        };
        let bytes = encode(&MessageV1::from_message(&m, now));
        let back = decode::<MessageV1>(&bytes)
            .unwrap()
            .into_message(now)
            .unwrap()
            .unwrap();
        assert_eq!(back, m);
        // Read 61 s later (the broker was down): gone.
        let later = (now.0, now.1 + 61_000);
        let gone = decode::<MessageV1>(&bytes).unwrap().into_message(later);
        assert!(matches!(gone, Ok(None)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<MessageV1>(&[7, 1, 2]).is_err());
        assert!(decode::<SessionV1>(&[]).is_err());
    }
}
