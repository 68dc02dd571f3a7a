//! MQTT 5 properties (section 2.2.2): the table of which property may appear in which packet,
//! the decoder that enforces it, and the encoder.
//!
//! One [`Properties`] struct serves every packet type, so the packet type is passed in as a
//! [`Ctx`] and checked against the table of section 2.2.2.2. The error classes follow the
//! specification's wording:
//!
//! * an identifier not valid for the packet type, or a value of the wrong data type, is a
//!   Malformed Packet (section 2.2.2.2);
//! * a second copy of a single-valued property is a Protocol Error ("It is a Protocol Error to
//!   include ... more than once", in each property's definition);
//! * an out-of-range value (Receive Maximum 0, Maximum Packet Size 0, Topic Alias 0,
//!   Subscription Identifier 0, a 0-or-1 byte that is neither) and Authentication Data without
//!   an Authentication Method are Protocol Errors, again as each definition words it.
//!
//! The encoder writes properties in ascending identifier order, so the output is deterministic,
//! and writes only the properties the packet type allows: a field the session filled in by
//! mistake is left out rather than producing a packet the peer must reject.

use super::DecodeError;
use super::packet::{Properties, PropertyValues};
use super::primitives::{Reader, Result, Sink, check_topic_name};

/// The packet type a property block belongs to (the columns of the table in section 2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    Connect,
    ConnAck,
    Publish,
    /// The Will Properties in the CONNECT payload (section 3.1.3.2).
    Will,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP allow the same two properties.
    PubResponse,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Ctx {
    const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// May property `id` appear in this packet type?
    pub(crate) fn allows(self, id: u8) -> bool {
        allowed_in(id) & self.bit() != 0
    }
}

/// Property identifiers (section 2.2.2.2).
mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// The set of packet types each property identifier is valid in (section 2.2.2.2), as a mask of
/// [`Ctx::bit`]s; 0 for an unknown identifier.
const fn allowed_in(id: u8) -> u16 {
    use Ctx::*;
    const PUB_WILL: u16 = Publish.bit() | Will.bit();
    const CONN: u16 = Connect.bit() | ConnAck.bit();
    const AUTHS: u16 = Connect.bit() | ConnAck.bit() | Auth.bit();
    const REASON: u16 = ConnAck.bit()
        | PubResponse.bit()
        | SubAck.bit()
        | UnsubAck.bit()
        | Disconnect.bit()
        | Auth.bit();
    match id {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => PUB_WILL,
        id::SUBSCRIPTION_IDENTIFIER => Publish.bit() | Subscribe.bit(),
        id::SESSION_EXPIRY_INTERVAL => CONN | Disconnect.bit(),
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => ConnAck.bit(),
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => AUTHS,
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => Connect.bit(),
        id::WILL_DELAY_INTERVAL => Will.bit(),
        id::SERVER_REFERENCE => ConnAck.bit() | Disconnect.bit(),
        id::REASON_STRING => REASON,
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => CONN,
        id::TOPIC_ALIAS => Publish.bit(),
        id::USER_PROPERTY => u16::MAX,
        _ => 0,
    }
}

/// Stores a single-valued property, or fails with a Protocol Error if it is already set.
/// The value is read first, so a truncated second copy is still reported as Malformed.
macro_rules! once {
    ($slot:expr, $value:expr, $name:literal) => {{
        let value = $value;
        if $slot.is_some() {
            return Err(DecodeError::Protocol(concat!(
                "It is a Protocol Error to include the ",
                $name,
                " more than once"
            )));
        }
        $slot = Some(value);
    }};
}

/// A Byte that may only be 0 or 1; anything else is a Protocol Error as the definitions of
/// Request Problem Information, Request Response Information, Maximum QoS, Retain Available and
/// the three "... Available" properties word it. Payload Format Indicator is treated the same.
fn zero_or_one(r: &mut Reader<'_>, err: &'static str) -> Result<u8> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol(err)),
    }
}

fn non_zero_u16(r: &mut Reader<'_>, err: &'static str) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol(err)),
        v => Ok(v),
    }
}

/// Reads a Property Length and the properties it covers, for packet type `ctx`.
pub(crate) fn decode(r: &mut Reader<'_>, ctx: Ctx) -> Result<Properties> {
    let mut p = Properties::default();
    decode_into(r, ctx, &mut p)?;
    Ok(p)
}

/// [`decode`] into an empty `p` in place; allocates the values only when there are some.
pub(crate) fn decode_into(r: &mut Reader<'_>, ctx: Ctx, p: &mut Properties) -> Result<()> {
    let len = r.varint()? as usize;
    if len == 0 {
        return Ok(());
    }
    let p: &mut PropertyValues = p;
    if len > r.remaining() {
        return Err(DecodeError::Malformed(
            "property length exceeds the remaining length",
        ));
    }
    let mut r = r.sub(len)?;
    while !r.is_empty() {
        // The identifier is a Variable Byte Integer; every defined one fits in one byte.
        let ident = r.varint()?;
        let ident = u8::try_from(ident).unwrap_or(0);
        if !ctx.allows(ident) {
            return Err(DecodeError::Malformed(
                "property identifier unknown or not valid for this packet type (section 2.2.2.2)",
            ));
        }
        match ident {
            id::PAYLOAD_FORMAT_INDICATOR => once!(
                p.payload_format_indicator,
                zero_or_one(&mut r, "Payload Format Indicator other than 0 or 1")?,
                "Payload Format Indicator"
            ),
            id::MESSAGE_EXPIRY_INTERVAL => {
                once!(
                    p.message_expiry_interval,
                    r.u32()?,
                    "Message Expiry Interval"
                )
            }
            id::CONTENT_TYPE => once!(p.content_type, r.string()?, "Content Type"),
            id::RESPONSE_TOPIC => {
                let topic = r.string()?;
                // MQTT-3.3.2-14: the Response Topic MUST NOT contain wildcards; it is a Topic
                // Name, so it is also at least one character long (MQTT-4.7.3-1).
                check_topic_name(&topic)?;
                once!(p.response_topic, topic, "Response Topic")
            }
            id::CORRELATION_DATA => once!(p.correlation_data, r.binary()?, "Correlation Data"),
            id::SUBSCRIPTION_IDENTIFIER => {
                // A four byte Variable Byte Integer cannot exceed 268,435,455, so only 0 needs
                // checking (section 3.3.2.3.8 and 3.8.2.1.2).
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::Protocol(
                        "Subscription Identifier of 0 (section 3.8.2.1.2)",
                    ));
                }
                // PUBLISH (server to client) may carry several (MQTT-3.3.4-4); SUBSCRIBE one.
                if ctx == Ctx::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::Protocol(
                        "It is a Protocol Error to include the Subscription Identifier more than once",
                    ));
                }
                p.subscription_identifiers.push(v);
            }
            id::SESSION_EXPIRY_INTERVAL => {
                once!(
                    p.session_expiry_interval,
                    r.u32()?,
                    "Session Expiry Interval"
                )
            }
            id::ASSIGNED_CLIENT_IDENTIFIER => once!(
                p.assigned_client_identifier,
                r.string()?,
                "Assigned Client Identifier"
            ),
            id::SERVER_KEEP_ALIVE => once!(p.server_keep_alive, r.u16()?, "Server Keep Alive"),
            id::AUTHENTICATION_METHOD => once!(
                p.authentication_method,
                r.string()?,
                "Authentication Method"
            ),
            id::AUTHENTICATION_DATA => {
                once!(p.authentication_data, r.binary()?, "Authentication Data")
            }
            id::REQUEST_PROBLEM_INFORMATION => once!(
                p.request_problem_information,
                zero_or_one(&mut r, "Request Problem Information other than 0 or 1")?,
                "Request Problem Information"
            ),
            id::WILL_DELAY_INTERVAL => {
                once!(p.will_delay_interval, r.u32()?, "Will Delay Interval")
            }
            id::REQUEST_RESPONSE_INFORMATION => once!(
                p.request_response_information,
                zero_or_one(&mut r, "Request Response Information other than 0 or 1")?,
                "Request Response Information"
            ),
            id::RESPONSE_INFORMATION => {
                once!(p.response_information, r.string()?, "Response Information")
            }
            id::SERVER_REFERENCE => once!(p.server_reference, r.string()?, "Server Reference"),
            id::REASON_STRING => once!(p.reason_string, r.string()?, "Reason String"),
            id::RECEIVE_MAXIMUM => once!(
                p.receive_maximum,
                non_zero_u16(&mut r, "Receive Maximum of 0 (section 3.1.2.11.3)")?,
                "Receive Maximum"
            ),
            id::TOPIC_ALIAS_MAXIMUM => {
                once!(p.topic_alias_maximum, r.u16()?, "Topic Alias Maximum")
            }
            // An alias of 0 is checked by the session, not here: it must be answered with
            // 0x94 Topic Alias invalid (section 3.3.4), which is not a decode error class.
            id::TOPIC_ALIAS => once!(p.topic_alias, r.u16()?, "Topic Alias"),
            id::MAXIMUM_QOS => once!(
                p.maximum_qos,
                zero_or_one(&mut r, "Maximum QoS other than 0 or 1")?,
                "Maximum QoS"
            ),
            id::RETAIN_AVAILABLE => once!(
                p.retain_available,
                zero_or_one(&mut r, "Retain Available other than 0 or 1")?,
                "Retain Available"
            ),
            id::USER_PROPERTY => {
                let key = r.string()?;
                let value = r.string()?;
                p.user_properties.push((key, value));
            }
            id::MAXIMUM_PACKET_SIZE => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::Protocol(
                        "Maximum Packet Size of 0 (section 3.1.2.11.4)",
                    ));
                }
                once!(p.maximum_packet_size, v, "Maximum Packet Size")
            }
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => once!(
                p.wildcard_subscription_available,
                zero_or_one(&mut r, "Wildcard Subscription Available other than 0 or 1")?,
                "Wildcard Subscription Available"
            ),
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => once!(
                p.subscription_identifiers_available,
                zero_or_one(
                    &mut r,
                    "Subscription Identifier Available other than 0 or 1"
                )?,
                "Subscription Identifier Available"
            ),
            id::SHARED_SUBSCRIPTION_AVAILABLE => once!(
                p.shared_subscription_available,
                zero_or_one(&mut r, "Shared Subscription Available other than 0 or 1")?,
                "Shared Subscription Available"
            ),
            // `ctx.allows` is false for every other identifier.
            _ => {
                return Err(DecodeError::Malformed(
                    "property identifier unknown (section 2.2.2.2)",
                ));
            }
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "Authentication Data without an Authentication Method (section 3.1.2.11.10)",
        ));
    }
    Ok(())
}

/// Writes a Property Length followed by the properties `ctx` allows.
pub(crate) fn write<S: Sink>(p: &Properties, ctx: Ctx, s: &mut S) {
    let Some(p) = p.values() else {
        s.varint(0);
        return;
    };
    let n = body_len(p, ctx);
    s.varint(n);
    if S::COUNTS_ONLY {
        s.skip(n);
    } else if n > 0 {
        body(p, ctx, s);
    }
}

/// The value of the Property Length: the properties `ctx` allows, without the length itself.
pub(crate) fn len(p: &Properties, ctx: Ctx) -> usize {
    p.values().map_or(0, |p| body_len(p, ctx))
}

fn body_len(p: &PropertyValues, ctx: Ctx) -> usize {
    let mut c = super::primitives::Counter::default();
    body(p, ctx, &mut c);
    c.0
}

/// Writes the properties `ctx` allows, in ascending identifier order.
fn body<S: Sink>(p: &PropertyValues, ctx: Ctx, s: &mut S) {
    let ok = |ident: u8| ctx.allows(ident);
    if ok(id::PAYLOAD_FORMAT_INDICATOR)
        && let Some(v) = p.payload_format_indicator
    {
        s.u8(id::PAYLOAD_FORMAT_INDICATOR);
        s.u8(v);
    }
    if ok(id::MESSAGE_EXPIRY_INTERVAL)
        && let Some(v) = p.message_expiry_interval
    {
        s.u8(id::MESSAGE_EXPIRY_INTERVAL);
        s.u32(v);
    }
    if ok(id::CONTENT_TYPE)
        && let Some(v) = &p.content_type
    {
        s.u8(id::CONTENT_TYPE);
        s.string(v);
    }
    if ok(id::RESPONSE_TOPIC)
        && let Some(v) = &p.response_topic
    {
        s.u8(id::RESPONSE_TOPIC);
        s.string(v);
    }
    if ok(id::CORRELATION_DATA)
        && let Some(v) = &p.correlation_data
    {
        s.u8(id::CORRELATION_DATA);
        s.binary(v);
    }
    if ok(id::SUBSCRIPTION_IDENTIFIER) {
        // SUBSCRIBE may carry only one (section 3.8.2.1.2).
        let n = if ctx == Ctx::Subscribe { 1 } else { usize::MAX };
        for &v in p.subscription_identifiers.iter().take(n) {
            s.u8(id::SUBSCRIPTION_IDENTIFIER);
            s.varint(v as usize);
        }
    }
    if ok(id::SESSION_EXPIRY_INTERVAL)
        && let Some(v) = p.session_expiry_interval
    {
        s.u8(id::SESSION_EXPIRY_INTERVAL);
        s.u32(v);
    }
    if ok(id::ASSIGNED_CLIENT_IDENTIFIER)
        && let Some(v) = &p.assigned_client_identifier
    {
        s.u8(id::ASSIGNED_CLIENT_IDENTIFIER);
        s.string(v);
    }
    if ok(id::SERVER_KEEP_ALIVE)
        && let Some(v) = p.server_keep_alive
    {
        s.u8(id::SERVER_KEEP_ALIVE);
        s.u16(v);
    }
    if ok(id::AUTHENTICATION_METHOD)
        && let Some(v) = &p.authentication_method
    {
        s.u8(id::AUTHENTICATION_METHOD);
        s.string(v);
    }
    if ok(id::AUTHENTICATION_DATA)
        && let Some(v) = &p.authentication_data
    {
        s.u8(id::AUTHENTICATION_DATA);
        s.binary(v);
    }
    if ok(id::REQUEST_PROBLEM_INFORMATION)
        && let Some(v) = p.request_problem_information
    {
        s.u8(id::REQUEST_PROBLEM_INFORMATION);
        s.u8(v);
    }
    if ok(id::WILL_DELAY_INTERVAL)
        && let Some(v) = p.will_delay_interval
    {
        s.u8(id::WILL_DELAY_INTERVAL);
        s.u32(v);
    }
    if ok(id::REQUEST_RESPONSE_INFORMATION)
        && let Some(v) = p.request_response_information
    {
        s.u8(id::REQUEST_RESPONSE_INFORMATION);
        s.u8(v);
    }
    if ok(id::RESPONSE_INFORMATION)
        && let Some(v) = &p.response_information
    {
        s.u8(id::RESPONSE_INFORMATION);
        s.string(v);
    }
    if ok(id::SERVER_REFERENCE)
        && let Some(v) = &p.server_reference
    {
        s.u8(id::SERVER_REFERENCE);
        s.string(v);
    }
    if ok(id::REASON_STRING)
        && let Some(v) = &p.reason_string
    {
        s.u8(id::REASON_STRING);
        s.string(v);
    }
    if ok(id::RECEIVE_MAXIMUM)
        && let Some(v) = p.receive_maximum
    {
        s.u8(id::RECEIVE_MAXIMUM);
        s.u16(v);
    }
    if ok(id::TOPIC_ALIAS_MAXIMUM)
        && let Some(v) = p.topic_alias_maximum
    {
        s.u8(id::TOPIC_ALIAS_MAXIMUM);
        s.u16(v);
    }
    if ok(id::TOPIC_ALIAS)
        && let Some(v) = p.topic_alias
    {
        s.u8(id::TOPIC_ALIAS);
        s.u16(v);
    }
    if ok(id::MAXIMUM_QOS)
        && let Some(v) = p.maximum_qos
    {
        s.u8(id::MAXIMUM_QOS);
        s.u8(v);
    }
    if ok(id::RETAIN_AVAILABLE)
        && let Some(v) = p.retain_available
    {
        s.u8(id::RETAIN_AVAILABLE);
        s.u8(v);
    }
    // User properties keep their order (MQTT-3.3.2-18, MQTT-3.1.3-10).
    for (k, v) in &p.user_properties {
        s.u8(id::USER_PROPERTY);
        s.string(k);
        s.string(v);
    }
    if ok(id::MAXIMUM_PACKET_SIZE)
        && let Some(v) = p.maximum_packet_size
    {
        s.u8(id::MAXIMUM_PACKET_SIZE);
        s.u32(v);
    }
    if ok(id::WILDCARD_SUBSCRIPTION_AVAILABLE)
        && let Some(v) = p.wildcard_subscription_available
    {
        s.u8(id::WILDCARD_SUBSCRIPTION_AVAILABLE);
        s.u8(v);
    }
    if ok(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE)
        && let Some(v) = p.subscription_identifiers_available
    {
        s.u8(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE);
        s.u8(v);
    }
    if ok(id::SHARED_SUBSCRIPTION_AVAILABLE)
        && let Some(v) = p.shared_subscription_available
    {
        s.u8(id::SHARED_SUBSCRIPTION_AVAILABLE);
        s.u8(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_spot_checks() {
        // Section 2.2.2.2.
        assert!(Ctx::Will.allows(id::WILL_DELAY_INTERVAL));
        assert!(!Ctx::Publish.allows(id::WILL_DELAY_INTERVAL));
        assert!(Ctx::Subscribe.allows(id::SUBSCRIPTION_IDENTIFIER));
        assert!(!Ctx::Will.allows(id::SUBSCRIPTION_IDENTIFIER));
        assert!(!Ctx::Unsubscribe.allows(id::REASON_STRING));
        assert!(Ctx::Unsubscribe.allows(id::USER_PROPERTY));
        assert!(Ctx::Auth.allows(id::AUTHENTICATION_DATA));
        assert!(!Ctx::Disconnect.allows(id::AUTHENTICATION_METHOD));
        assert!(!Ctx::Connect.allows(0x00));
        assert!(!Ctx::Connect.allows(0x7F));
    }

    #[test]
    fn not_allowed_properties_are_not_written() {
        let p = Properties::from(PropertyValues {
            topic_alias: Some(3),
            reason_string: Some("x".into()),
            ..PropertyValues::default()
        });
        assert_eq!(len(&p, Ctx::Unsubscribe), 0);
        assert_eq!(len(&p, Ctx::Publish), 3);
        assert_eq!(len(&p, Ctx::PubResponse), 4);
    }
}
