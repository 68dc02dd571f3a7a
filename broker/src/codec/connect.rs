//! CONNECT (section 3.1) and CONNACK (section 3.2): the handshake packets, the only ones whose
//! layout depends on more than the negotiated version (CONNECT carries the version itself).
//!
//! Decoding CONNECT checks the protocol name and level first, so that a client speaking some
//! other protocol is told so (0x84 / return code 1) even if the rest of its packet would not
//! parse as MQTT 3.1.1 or 5.0.

use super::DecodeError;
use super::packet::{ConnAck, Connect, ProtocolVersion, QoS, ReasonCode, Will};
use super::primitives::{Reader, Result, Sink, check_topic_name};
use super::properties::{self, Ctx};
use super::reason::{Carrier, connack_from_v311, connack_v311_return_code};

/// Connect flag bits (section 3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// Which protocol a CONNECT's name and level (sections 3.1.2.1 and 3.1.2.2) stand for; the
/// error is the reason for an Unsupported Protocol Version. The name is compared as bytes, so a
/// name that is not even UTF-8 is just another unknown protocol.
fn protocol_of(name: &[u8], level: u8) -> std::result::Result<ProtocolVersion, &'static str> {
    match (name, level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V311),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQTT", _) => Err("protocol level other than 4 or 5 (MQTT-3.1.2-2)"),
        (b"MQIsdp", _) => Err("MQTT 3.1 (\"MQIsdp\") is not supported (MQTT-3.1.2-1)"),
        _ => Err("protocol name is not \"MQTT\" (MQTT-3.1.2-1)"),
    }
}

/// See [`super::connect_version`]: reads only the fixed header, protocol name and level, and
/// ignores whether the remaining length matches.
pub(crate) fn version_of(frame: &[u8]) -> Option<ProtocolVersion> {
    if frame.first()? >> 4 != 1 {
        return None;
    }
    let len_bytes = frame.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    let rest = frame.get(1 + len_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    let level = *rest.get(2 + name_len)?;
    protocol_of(name, level).ok()
}

/// CONNECT, after its fixed header (flags already checked to be 0).
pub(crate) fn decode_connect(r: &mut Reader<'_>) -> Result<Connect> {
    let name_len = r.u16()?;
    let name = r.raw(usize::from(name_len))?;
    let level = r.u8()?;
    let protocol = protocol_of(name, level).map_err(DecodeError::UnsupportedProtocol)?;
    let v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(DecodeError::Malformed(
            "reserved connect flag is set (MQTT-3.1.2-3)",
        ));
    }
    let will_flag = flags & WILL != 0;
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & WILL_RETAIN != 0;
    if !will_flag && will_qos != 0 {
        // 3.1.1: MQTT-3.1.2-11, MQTT-3.1.2-13; 5.0: MQTT-3.1.2-11.
        return Err(DecodeError::Malformed(
            "will QoS set without the will flag (MQTT-3.1.2-11)",
        ));
    }
    if !will_flag && will_retain {
        // 3.1.1: MQTT-3.1.2-15; 5.0: MQTT-3.1.2-13.
        return Err(DecodeError::Malformed(
            "will retain set without the will flag (MQTT-3.1.2-13, 3.1.1: MQTT-3.1.2-15)",
        ));
    }
    // 5.0: "A value of 3 (0x03) is a Malformed Packet" (MQTT-3.1.2-12); 3.1.1: MQTT-3.1.2-14.
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed(
        "will QoS 3 (MQTT-3.1.2-12, 3.1.1: MQTT-3.1.2-14)",
    ))?;
    let has_password = flags & PASSWORD != 0;
    let has_username = flags & USERNAME != 0;
    if !v5 && has_password && !has_username {
        // 5.0 dropped this rule (section 3.1.2.9).
        return Err(DecodeError::Malformed(
            "password flag without user name flag (3.1.1: MQTT-3.1.2-22)",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if v5 {
        properties::decode(r, Ctx::Connect)?
    } else {
        Default::default()
    };
    // The fields appear in this order (MQTT-3.1.3-1); the client identifier is always there
    // (MQTT-3.1.3-3) and is a UTF-8 string (MQTT-3.1.3-4).
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            properties::decode(r, Ctx::Will)?
        } else {
            Default::default()
        };
        // MQTT-3.1.3-11 (3.1.1: MQTT-3.1.3-10); it is a Topic Name, so section 4.7 applies.
        let topic = r.string()?;
        check_topic_name(&topic)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // MQTT-3.1.2-17 / -19 (3.1.1: MQTT-3.1.2-19 / -21).
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// CONNECT body, written for `version` (which decides the protocol level byte, not
/// `c.protocol`). The flags are derived from which fields are present.
pub(crate) fn write_connect<S: Sink>(c: &Connect, version: ProtocolVersion, s: &mut S) {
    let v5 = version == ProtocolVersion::V5;
    s.string("MQTT");
    s.u8(version.level());
    let mut flags = 0u8;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(w) = &c.will {
        flags |= WILL | ((w.qos as u8) << WILL_QOS_SHIFT);
        if w.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    s.u8(flags);
    s.u16(c.keep_alive);
    if v5 {
        properties::write(&c.properties, Ctx::Connect, s);
    }
    s.string(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            properties::write(&w.properties, Ctx::Will, s);
        }
        s.string(&w.topic);
        s.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        s.string(u);
    }
    if let Some(p) = &c.password {
        s.binary(p);
    }
}

/// CONNACK, after its fixed header.
pub(crate) fn decode_connack(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<ConnAck> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        // 5.0: MQTT-3.2.2-1; 3.1.1: section 3.2.2.1.
        return Err(DecodeError::Malformed(
            "reserved connect acknowledge flags are set (MQTT-3.2.2-1)",
        ));
    }
    let session_present = ack_flags & 0x01 != 0;
    let code = r.u8()?;
    let (reason_code, properties) = match version {
        ProtocolVersion::V311 => {
            let rc = connack_from_v311(code).ok_or(DecodeError::Protocol(
                "reserved CONNACK return code (3.1.1 section 3.2.2.3)",
            ))?;
            (rc, Default::default())
        }
        ProtocolVersion::V5 => {
            if !Carrier::ConnAck.allows(code) {
                return Err(DecodeError::Protocol(
                    "reason code not valid in CONNACK (section 3.2.2.2)",
                ));
            }
            (ReasonCode(code), properties::decode(r, Ctx::ConnAck)?)
        }
    };
    if session_present && reason_code != ReasonCode::SUCCESS {
        return Err(DecodeError::Protocol(
            "session present with a non-zero reason code (MQTT-3.2.2-6, 3.1.1: MQTT-3.2.2-4)",
        ));
    }
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

/// CONNACK body. Session Present is forced to 0 with a non-zero code (MQTT-3.2.2-6, 3.1.1:
/// MQTT-3.2.2-4); for 3.1.1 the reason code is mapped by [`connack_v311_return_code`].
pub(crate) fn write_connack<S: Sink>(c: &ConnAck, version: ProtocolVersion, s: &mut S) {
    let code = match version {
        ProtocolVersion::V311 => connack_v311_return_code(c.reason_code),
        ProtocolVersion::V5 => c.reason_code.0,
    };
    s.u8(u8::from(c.session_present && code == 0));
    s.u8(code);
    if version == ProtocolVersion::V5 {
        properties::write(&c.properties, Ctx::ConnAck, s);
    }
}
