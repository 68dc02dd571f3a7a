//! PUBLISH (section 3.3) and its four acknowledgements, PUBACK, PUBREC, PUBREL and PUBCOMP
//! (sections 3.4 to 3.7): the message flow, and the codec's hot path.
//!
//! Decoding a PUBLISH copies nothing: topic and payload are slices of the frame. Encoding writes
//! straight into the caller's buffer after one `reserve`.

use bytes::Bytes;

use super::DecodeError;
use super::packet::{Packet, Properties, ProtocolVersion, PubResponse, Publish, QoS, ReasonCode};
use super::primitives::{Reader, Result, Sink, has_wildcard, packet_id};
use super::properties::{self, Ctx};
use super::reason::Carrier;

/// PUBLISH fixed header flags (section 3.3.1).
const DUP: u8 = 0x08;
const QOS_SHIFT: u8 = 1;
const RETAIN: u8 = 0x01;

/// PUBLISH, after its fixed header; `flags` is the low nibble of the first byte. Returns the
/// whole [`Packet`] so it is built in place: `Publish` is large, and moving it from one return
/// value into the next cost more than the rest of decoding.
pub(crate) fn decode_publish(
    flags: u8,
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Packet> {
    let qos = QoS::from_u8((flags >> QOS_SHIFT) & 0x03)
        .ok_or(DecodeError::Malformed("PUBLISH with QoS 3 (MQTT-3.3.1-4)"))?;
    let dup = flags & DUP != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed(
            "DUP flag set on a QoS 0 PUBLISH (MQTT-3.3.1-2)",
        ));
    }
    // MQTT-3.3.2-1: a UTF-8 Encoded String.
    let topic = r.string()?;
    if has_wildcard(&topic) {
        return Err(DecodeError::Protocol(
            "wildcard in a PUBLISH topic name (MQTT-3.3.2-2)",
        ));
    }
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(packet_id(r)?),
    };
    // Built in place in the value returned, then filled in: see the doc comment.
    let mut packet = Packet::Publish(Publish {
        dup,
        qos,
        retain: flags & RETAIN != 0,
        topic,
        packet_id,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    if let Packet::Publish(p) = &mut packet {
        if version == ProtocolVersion::V5 {
            properties::decode_into(r, Ctx::Publish, &mut p.properties)?;
        }
        if p.topic.is_empty() && p.properties.topic_alias.is_none() {
            // 5.0 section 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and
            // there is no Topic Alias"; 3.1.1 has no alias, so it is always MQTT-4.7.3-1.
            return Err(DecodeError::Protocol(
                "empty topic name without a topic alias (MQTT-4.7.3-1, section 3.3.2.1)",
            ));
        }
        p.payload = r.rest();
    }
    Ok(packet)
}

/// The first byte of a PUBLISH. DUP is only written for QoS > 0, since a QoS 0 PUBLISH with DUP
/// set is malformed (MQTT-3.3.1-2).
pub(crate) fn publish_first_byte(p: &Publish) -> u8 {
    let qos = p.qos as u8;
    let dup = if p.dup && qos > 0 { DUP } else { 0 };
    let retain = if p.retain { RETAIN } else { 0 };
    0x30 | dup | (qos << QOS_SHIFT) | retain
}

/// PUBLISH body. A packet identifier is written exactly when QoS > 0 (MQTT-2.2.1-2); a missing
/// one is written as 0, which is the caller's bug to avoid.
pub(crate) fn write_publish<S: Sink>(p: &Publish, version: ProtocolVersion, s: &mut S) {
    s.string(&p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id.unwrap_or(0));
    }
    if version == ProtocolVersion::V5 {
        properties::write(&p.properties, Ctx::Publish, s);
    }
    s.raw(&p.payload);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP, after the fixed header. In 5.0 the reason code and the
/// property length may be left out: remaining length 2 means Success with no properties, 3 a
/// reason code with no properties (sections 3.4.2.1 and 3.4.2.2.1 and their siblings).
pub(crate) fn decode_response(
    carrier: Carrier,
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<PubResponse> {
    let packet_id = packet_id(r)?;
    let mut response = PubResponse::success(packet_id);
    if version == ProtocolVersion::V5 && !r.is_empty() {
        let code = r.u8()?;
        if !carrier.allows(code) {
            return Err(DecodeError::Protocol(
                "reason code not valid for this acknowledgement (MQTT-3.4.2-1 to MQTT-3.7.2-1)",
            ));
        }
        response.reason_code = ReasonCode(code);
        if !r.is_empty() {
            response.properties = properties::decode(r, Ctx::PubResponse)?;
        }
    }
    r.finish()?;
    Ok(response)
}

/// PUBACK/PUBREC/PUBREL/PUBCOMP body, using the shortest form the version allows.
pub(crate) fn write_response<S: Sink>(p: &PubResponse, version: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if version == ProtocolVersion::V311 {
        return;
    }
    let props = properties::len(&p.properties, Ctx::PubResponse);
    if props == 0 {
        if p.reason_code != ReasonCode::SUCCESS {
            s.u8(p.reason_code.0);
        }
        return;
    }
    s.u8(p.reason_code.0);
    properties::write(&p.properties, Ctx::PubResponse, s);
}
