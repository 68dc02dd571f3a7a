//! An application message as the broker holds it between receipt and delivery.
//!
//! One [`Message`] is built per accepted PUBLISH (or will, or `$SYS` update) and shared by every
//! subscriber through an `Arc`: fan-out to N subscribers clones a pointer N times, never the
//! topic, payload or properties. The per-subscriber parts (QoS after downgrade, retain flag,
//! subscription identifiers, packet identifier, topic alias) are added when it is encoded for
//! one connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;

use crate::codec::{Properties, Publish, QoS, Will};

/// The properties of a PUBLISH that travel with the message to its subscribers (MQTT 5,
/// section 3.3.2.3). Topic alias and subscription identifiers are per connection and so are not
/// here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(ByteString, ByteString)>,
}

impl MessageProperties {
    /// Takes the forwarded properties out of a decoded PUBLISH or will.
    pub fn from_packet(p: &mut Properties) -> MessageProperties {
        let Some(p) = p.values_mut() else {
            return MessageProperties::default();
        };
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.take(),
            response_topic: p.response_topic.take(),
            correlation_data: p.correlation_data.take(),
            user_properties: std::mem::take(&mut p.user_properties),
        }
    }
}

/// An application message, immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses the minimum of this and the
    /// subscription's granted QoS (MQTT-3.8.4-8... section 3.8.4).
    pub qos: QoS,
    /// The RETAIN flag as published, kept for Retain As Published subscriptions.
    pub retain: bool,
    pub properties: MessageProperties,
    /// When the broker received it; with `expiry` this gives the remaining lifetime that is sent
    /// on delivery (MQTT-3.3.2-6).
    pub received: Instant,
    /// The Message Expiry Interval, if any (already capped by the configured maximum).
    pub expiry: Option<Duration>,
    /// The client id of the publisher (`None` for the broker's own messages), for No Local.
    pub publisher: Option<ByteString>,
}

impl Message {
    /// Builds a message from an inbound PUBLISH whose topic alias has been resolved.
    pub fn from_publish(
        mut publish: Publish,
        publisher: Option<ByteString>,
        max_expiry: Option<u32>,
    ) -> Message {
        let expiry = cap_expiry(publish.properties.message_expiry_interval, max_expiry);
        let mut properties = MessageProperties::from_packet(&mut publish.properties);
        let (topic, payload) = compact(publish.topic, publish.payload, &mut properties);
        Message {
            properties,
            topic,
            payload,
            qos: publish.qos,
            retain: publish.retain,
            received: Instant::now(),
            expiry,
            publisher,
        }
    }

    /// The message a will becomes when it is published, or when it is checked at CONNECT: the
    /// will's topic, payload and properties, received now.
    pub fn from_will(will: &Will, publisher: ByteString, max_expiry: Option<u32>) -> Message {
        let mut properties = will.properties.clone();
        Message {
            expiry: cap_expiry(properties.message_expiry_interval, max_expiry),
            properties: MessageProperties::from_packet(&mut properties),
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            received: Instant::now(),
            publisher: Some(publisher),
        }
    }

    /// True once the Message Expiry Interval has passed (MQTT-3.3.2-5).
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expiry
            .is_some_and(|e| now.saturating_duration_since(self.received) >= e)
    }

    /// The expiry interval left, in whole seconds, for the copy sent now (MQTT-3.3.2-6).
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expiry.map(|e| {
            let left = e.saturating_sub(now.saturating_duration_since(self.received));
            // Round up so a message is never sent with 0 while it is still alive.
            left.as_secs()
                .saturating_add(u64::from(left.subsec_nanos() > 0)) as u32
        })
    }
}

/// Messages up to this size (topic plus payload) get their own allocation; see [`compact`].
const COMPACT_LIMIT: usize = 1024;

/// Gives a small message storage of its own instead of a view into the connection's read
/// buffer.
///
/// A decoded PUBLISH is a view into the block its connection read it into, and a view keeps
/// the whole block alive. For fan-out that is ideal (no copy), but a message that stays (a
/// retained message, one queued for an offline session) would pin a read block many times its
/// size. Copying a small message costs one allocation and a short `memcpy`; larger ones stay
/// views, since they fill most of their block anyway.
fn compact(
    topic: ByteString,
    payload: Bytes,
    properties: &mut MessageProperties,
) -> (ByteString, Bytes) {
    let size = topic.len() + payload.len();
    if size > COMPACT_LIMIT {
        return (topic, payload);
    }
    let mut block = bytes::BytesMut::with_capacity(size);
    block.extend_from_slice(topic.as_bytes());
    block.extend_from_slice(&payload);
    let mut block = block.freeze();
    let payload = block.split_off(topic.len());
    // Properties are rare and small: copy them outright.
    let own = |s: &mut ByteString| *s = ByteString::from(&**s);
    if let Some(s) = properties.content_type.as_mut() {
        own(s);
    }
    if let Some(s) = properties.response_topic.as_mut() {
        own(s);
    }
    if let Some(d) = properties.correlation_data.as_mut() {
        *d = Bytes::copy_from_slice(d);
    }
    for (k, v) in &mut properties.user_properties {
        own(k);
        own(v);
    }
    // The bytes were the topic's, so this cannot fail; if it did, the view is still right.
    (ByteString::try_from(block).unwrap_or(topic), payload)
}

/// Applies the broker's maximum message expiry to the interval a client asked for.
pub fn cap_expiry(asked: Option<u32>, max: Option<u32>) -> Option<Duration> {
    let secs = match (asked, max) {
        (Some(a), Some(m)) => Some(a.min(m)),
        (Some(a), None) => Some(a),
        (None, Some(m)) => Some(m),
        (None, None) => None,
    };
    secs.map(|s| Duration::from_secs(u64::from(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(expiry: Option<u32>) -> Message {
        Message {
            topic: "a".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: MessageProperties::default(),
            received: Instant::now(),
            expiry: expiry.map(|s| Duration::from_secs(s.into())),
            publisher: None,
        }
    }

    #[test]
    fn remaining_expiry_counts_down_and_rounds_up() {
        let m = msg(Some(10));
        assert_eq!(m.remaining_expiry(m.received), Some(10));
        let later = m.received + Duration::from_millis(3_500);
        assert_eq!(m.remaining_expiry(later), Some(7));
        assert!(!m.is_expired(later));
        assert!(m.is_expired(m.received + Duration::from_secs(10)));
        assert_eq!(msg(None).remaining_expiry(Instant::now()), None);
    }

    #[test]
    fn small_messages_do_not_keep_the_read_buffer_alive() {
        let frame = Bytes::from(vec![b'x'; 4096]);
        let topic = ByteString::try_from(frame.slice(0..5)).unwrap();
        let payload = frame.slice(5..69);
        let mut properties = MessageProperties::default();
        let (t, p) = compact(topic, payload, &mut properties);
        assert_eq!((t.len(), p.len()), (5, 64));
        // Only the test's own handle is left on the 4 KiB block.
        assert!(frame.is_unique());
        let (_, big) = compact(ByteString::from("t"), frame.clone(), &mut properties);
        assert_eq!(big.as_ptr(), frame.as_ptr(), "large payloads stay views");
    }

    #[test]
    fn broker_maximum_caps_message_expiry() {
        assert_eq!(
            cap_expiry(Some(100), Some(10)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(cap_expiry(None, Some(10)), Some(Duration::from_secs(10)));
        assert_eq!(cap_expiry(Some(5), None), Some(Duration::from_secs(5)));
        assert_eq!(cap_expiry(None, None), None);
    }
}
