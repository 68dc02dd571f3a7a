//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8 to 3.11): the packets that carry
//! lists, one entry per topic filter.
//!
//! Lists grow as entries are actually parsed (never `with_capacity` of a claimed count), so
//! memory stays proportional to the bytes of the frame. Topic filters are checked as strings
//! only: their topic syntax belongs to the session, which answers per filter in the SUBACK.

use super::DecodeError;
use super::packet::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use super::primitives::{Reader, Result, Sink, packet_id};
use super::properties::{self, Ctx};
use super::reason::{Carrier, suback_v311_allows, suback_v311_code};

/// Subscription options bits (section 3.8.3.1).
const QOS_MASK: u8 = 0x03;
const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;
const V5_RESERVED: u8 = 0xC0;
const V311_RESERVED: u8 = 0xFC;

fn props(r: &mut Reader<'_>, version: ProtocolVersion, ctx: Ctx) -> Result<super::Properties> {
    match version {
        ProtocolVersion::V5 => properties::decode(r, ctx),
        ProtocolVersion::V311 => Ok(Default::default()),
    }
}

/// The subscription options byte of one SUBSCRIBE entry.
fn options(byte: u8, version: ProtocolVersion) -> Result<SubscriptionOptions> {
    if version == ProtocolVersion::V311 {
        // 3.1.1 MQTT-3-8.3-4: reserved bits non-zero, or QoS not 0, 1 or 2, is malformed.
        if byte & V311_RESERVED != 0 {
            return Err(DecodeError::Malformed(
                "reserved bits of the requested QoS byte are set (3.1.1: MQTT-3-8.3-4)",
            ));
        }
        let qos = QoS::from_u8(byte).ok_or(DecodeError::Malformed(
            "requested QoS 3 (3.1.1: MQTT-3-8.3-4)",
        ))?;
        return Ok(SubscriptionOptions {
            qos,
            ..Default::default()
        });
    }
    if byte & V5_RESERVED != 0 {
        return Err(DecodeError::Malformed(
            "reserved bits of the subscription options are set (MQTT-3.8.3-5)",
        ));
    }
    // Section 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
    let qos = QoS::from_u8(byte & QOS_MASK).ok_or(DecodeError::Protocol(
        "subscription maximum QoS 3 (section 3.8.3.1)",
    ))?;
    let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0x03 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscription,
        2 => RetainHandling::Never,
        // Section 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
        _ => {
            return Err(DecodeError::Protocol("retain handling 3 (section 3.8.3.1)"));
        }
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & NO_LOCAL != 0,
        retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn options_byte(o: &SubscriptionOptions, version: ProtocolVersion) -> u8 {
    let qos = o.qos as u8;
    if version == ProtocolVersion::V311 {
        return qos;
    }
    let mut b = qos | ((o.retain_handling as u8) << RETAIN_HANDLING_SHIFT);
    if o.no_local {
        b |= NO_LOCAL;
    }
    if o.retain_as_published {
        b |= RETAIN_AS_PUBLISHED;
    }
    b
}

/// SUBSCRIBE, after its fixed header (flags already checked to be 0b0010, MQTT-3.8.1-1).
pub(crate) fn decode_subscribe(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<Subscribe> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, Ctx::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        // MQTT-3.8.3-1: UTF-8 Encoded Strings.
        let filter = r.string()?;
        let opts = options(r.u8()?, version)?;
        if opts.no_local && filter.starts_with("$share/") {
            return Err(DecodeError::Protocol(
                "No Local set on a shared subscription (MQTT-3.8.3-4)",
            ));
        }
        filters.push((filter, opts));
    }
    if filters.is_empty() {
        // 5.0: MQTT-3.8.3-2 ("A SUBSCRIBE packet with no Payload is a Protocol Error");
        // 3.1.1: MQTT-3.8.3-3.
        return Err(DecodeError::Protocol(
            "SUBSCRIBE without a topic filter (MQTT-3.8.3-2, 3.1.1: MQTT-3.8.3-3)",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(crate) fn write_subscribe<S: Sink>(p: &Subscribe, version: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if version == ProtocolVersion::V5 {
        properties::write(&p.properties, Ctx::Subscribe, s);
    }
    for (filter, opts) in &p.filters {
        s.string(filter);
        s.u8(options_byte(opts, version));
    }
}

/// SUBACK, after its fixed header.
pub(crate) fn decode_suback(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<SubAck> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, Ctx::SubAck)?;
    // The codes are really in the frame, so this allocation is bounded by its size.
    let codes = r.raw(r.remaining())?;
    if codes.is_empty() {
        // One code per filter (MQTT-3.8.4-6) and a SUBSCRIBE has at least one filter.
        return Err(DecodeError::Protocol("SUBACK without a reason code"));
    }
    let valid = |c: u8| match version {
        ProtocolVersion::V5 => Carrier::SubAck.allows(c),
        ProtocolVersion::V311 => suback_v311_allows(c),
    };
    if !codes.iter().all(|&c| valid(c)) {
        return Err(DecodeError::Protocol(
            "reason code not valid in SUBACK (MQTT-3.9.3-2)",
        ));
    }
    Ok(SubAck {
        packet_id,
        reason_codes: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties,
    })
}

pub(crate) fn write_suback<S: Sink>(p: &SubAck, version: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    match version {
        ProtocolVersion::V5 => {
            properties::write(&p.properties, Ctx::SubAck, s);
            for c in &p.reason_codes {
                s.u8(c.0);
            }
        }
        ProtocolVersion::V311 => {
            for &c in &p.reason_codes {
                s.u8(suback_v311_code(c));
            }
        }
    }
}

/// UNSUBSCRIBE, after its fixed header (flags already checked to be 0b0010, MQTT-3.10.1-1).
pub(crate) fn decode_unsubscribe(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Unsubscribe> {
    let packet_id = packet_id(r)?;
    let properties = props(r, version, Ctx::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        // MQTT-3.10.3-1: UTF-8 Encoded Strings.
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        // MQTT-3.10.3-2: "An UNSUBSCRIBE packet with no Payload is a Protocol Error".
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE without a topic filter (MQTT-3.10.3-2)",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(crate) fn write_unsubscribe<S: Sink>(p: &Unsubscribe, version: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if version == ProtocolVersion::V5 {
        properties::write(&p.properties, Ctx::Unsubscribe, s);
    }
    for filter in &p.filters {
        s.string(filter);
    }
}

/// UNSUBACK, after its fixed header. In 3.1.1 it is only a packet identifier.
pub(crate) fn decode_unsuback(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<UnsubAck> {
    let packet_id = packet_id(r)?;
    if version == ProtocolVersion::V311 {
        r.finish()?;
        return Ok(UnsubAck {
            packet_id,
            reason_codes: Vec::new(),
            properties: Default::default(),
        });
    }
    let properties = properties::decode(r, Ctx::UnsubAck)?;
    let codes = r.raw(r.remaining())?;
    if codes.is_empty() {
        // One code per filter (MQTT-3.10.4-5 family); an UNSUBSCRIBE has at least one.
        return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
    }
    if !codes.iter().all(|&c| Carrier::UnsubAck.allows(c)) {
        return Err(DecodeError::Protocol(
            "reason code not valid in UNSUBACK (MQTT-3.11.3-2)",
        ));
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes: codes.iter().map(|&c| ReasonCode(c)).collect(),
        properties,
    })
}

pub(crate) fn write_unsuback<S: Sink>(p: &UnsubAck, version: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if version == ProtocolVersion::V5 {
        properties::write(&p.properties, Ctx::UnsubAck, s);
        for c in &p.reason_codes {
            s.u8(c.0);
        }
    }
}
