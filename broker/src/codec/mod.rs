//! The MQTT 3.1.1 and 5.0 wire format: bytes in, packets out; packets in, bytes out. No I/O.
//!
//! Reading is split in two, as in tokio's mini-redis: [`check`] looks at a buffer and says
//! whether a whole packet is there (and how long it is) without allocating, and [`decode`] turns
//! one whole packet into a [`Packet`]. An incomplete packet is therefore not an error, just "read
//! more"; a malformed one is an error that closes only its own connection, and the error carries
//! the MQTT 5 reason code to send first (MQTT-4.13.1-1).
//!
//! Memory is never allocated in proportion to a length the peer merely claims: `check` refuses a
//! remaining length over the negotiated maximum before any byte of the body is buffered, and
//! `decode` works on a complete frame, so every length inside it is bounded by bytes that are
//! really there.
//!
//! Layout: [`packet`] holds the packet types; `primitives` the data representations of section
//! 1.5 (the bounds-checked reader and the two encoder sinks); `properties` the MQTT 5 property
//! table; `reason` the per-packet reason code tables and 3.1.1 return code mappings; and
//! `connect`, `publish`, `subscribe` and `control` one family of packets each. This file holds
//! the fixed header (section 2.1) and the dispatch on packet type.
//!
//! Error classes, following the specification's wording where it has one: grammar violations
//! (bad flags, truncation, trailing bytes, bad UTF-8, U+0000, property identifiers not valid
//! for the packet, reserved bits) are [`DecodeError::Malformed`]; well-formed values that break
//! a rule (a second CONNECT, packet identifier 0, duplicate properties, out-of-range property
//! values, reason codes not valid for the packet, topic names that are empty or contain
//! wildcards, empty SUBSCRIBE/UNSUBSCRIBE) are [`DecodeError::Protocol`].

mod connect;
mod control;
pub mod packet;
mod primitives;
mod properties;
mod publish;
pub(crate) mod reason;
mod subscribe;
#[cfg(test)]
mod tests;

pub use packet::*;
pub use primitives::MAX_REMAINING_LENGTH;
pub use reason::connack_v311_return_code;

use bytes::{BufMut, Bytes, BytesMut};
use primitives::{LONG_VARINT, NON_MINIMAL_VARINT, Reader, Sink, varint_len};
use reason::Carrier;

/// Why a packet could not be decoded. Every variant closes the connection; `reason_code` says
/// which MQTT 5 reason code to put in the CONNACK or DISCONNECT sent before closing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes do not follow the packet's grammar: 0x81.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The bytes parse but break a protocol rule: 0x82.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The remaining length exceeds the maximum packet size: 0x95.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: u64, max: u32 },
    /// CONNECT with a protocol name or level this broker does not speak: 0x84 (3.1.1: 0x01).
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(&'static str),
}

impl DecodeError {
    /// The reason code to send before closing (section 4.13).
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Parses the fixed header at the start of `buf` (section 2.1): `Ok(None)` if it is not all
/// there yet, else the first byte, the remaining length and the length of the header itself.
/// The remaining length is at most four bytes in its shortest form (MQTT-1.5.5-1).
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(NON_MINIMAL_VARINT);
            }
            return Ok(Some((first, remaining, 2 + i)));
        }
    }
    Err(LONG_VARINT)
}

/// Is a whole packet at the start of `buf`? `Ok(Some(n))`: the first `n` bytes are one packet;
/// `Ok(None)`: read more. Fails on a malformed remaining length (MQTT-1.5.5-1) or one whose
/// packet would exceed `max_packet_size` (MQTT-3.1.2-24), before the body is buffered.
pub fn check(buf: &[u8], max_packet_size: u32) -> Result<Option<usize>, DecodeError> {
    let Some((_, remaining, header)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header + remaining;
    if size as u64 > u64::from(max_packet_size) {
        return Err(DecodeError::TooLarge {
            size: size as u64,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// The flags the fixed header must carry for each packet type other than PUBLISH (section
/// 2.1.3): 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the rest. Anything else is a
/// Malformed Packet (MQTT-2.1.3-1, MQTT-3.6.1-1, MQTT-3.8.1-1, MQTT-3.10.1-1, MQTT-3.14.1-1,
/// MQTT-3.15.1-1).
fn required_flags(kind: u8) -> u8 {
    match kind {
        6 | 8 | 10 => 0b0010,
        _ => 0,
    }
}

const BAD_FLAGS: DecodeError = DecodeError::Malformed("invalid fixed header flags (MQTT-2.1.3-1)");

/// Decodes one whole packet as delimited by [`check`].
///
/// `version` is the protocol the connection speaks, `None` until its CONNECT has been read: then
/// only CONNECT is accepted (MQTT-3.1.0-1) and the packet's own protocol level decides.
pub fn decode(frame: Bytes, version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let Some((first, remaining, header)) = fixed_header(&frame)? else {
        return Err(DecodeError::Malformed("incomplete fixed header"));
    };
    if header.checked_add(remaining) != Some(frame.len()) {
        return Err(DecodeError::Malformed(
            "frame length does not match its remaining length",
        ));
    }
    let kind = first >> 4;
    let flags = first & 0x0F;
    let mut r = Reader::new(&frame, header);
    if kind == 1 {
        if version.is_some() {
            return Err(DecodeError::Protocol(
                "second CONNECT on a connection (MQTT-3.1.0-2)",
            ));
        }
        if flags != 0 {
            return Err(BAD_FLAGS);
        }
        let connect = connect::decode_connect(&mut r)?;
        r.finish()?;
        return Ok(Packet::Connect(Box::new(connect)));
    }
    let Some(v) = version else {
        return Err(DecodeError::Protocol(
            "first packet is not CONNECT (MQTT-3.1.0-1)",
        ));
    };
    if kind != 3 && flags != required_flags(kind) {
        return Err(BAD_FLAGS);
    }
    if kind == 3 {
        // The hot path, returned directly: the payload takes the rest of the frame.
        return publish::decode_publish(flags, &mut r, v);
    }
    let packet = match kind {
        2 => Packet::ConnAck(connect::decode_connack(&mut r, v)?),
        4 => Packet::PubAck(publish::decode_response(Carrier::PubAck, &mut r, v)?),
        5 => Packet::PubRec(publish::decode_response(Carrier::PubRec, &mut r, v)?),
        6 => Packet::PubRel(publish::decode_response(Carrier::PubRel, &mut r, v)?),
        7 => Packet::PubComp(publish::decode_response(Carrier::PubComp, &mut r, v)?),
        8 => Packet::Subscribe(subscribe::decode_subscribe(&mut r, v)?),
        9 => Packet::SubAck(subscribe::decode_suback(&mut r, v)?),
        10 => Packet::Unsubscribe(subscribe::decode_unsubscribe(&mut r, v)?),
        11 => Packet::UnsubAck(subscribe::decode_unsuback(&mut r, v)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(control::decode_disconnect(&mut r, v)?),
        15 if v == ProtocolVersion::V5 => Packet::Auth(control::decode_auth(&mut r)?),
        // 3.1.1 section 2.2.1: types 0 and 15 are "Reserved, Forbidden"; 5.0: 0 is reserved.
        _ => {
            return Err(DecodeError::Malformed(
                "reserved packet type (section 2.1.2)",
            ));
        }
    };
    // Every decoder consumes exactly its grammar; anything left over is malformed (and PINGREQ
    // and PINGRESP must have a remaining length of 0, sections 3.12.1 and 3.13.1).
    r.finish()?;
    Ok(packet)
}

/// The protocol level a CONNECT frame claims, read leniently so that even a CONNECT that fails
/// to decode can be answered in its own protocol (a v5 CONNACK with a reason code, or a 3.1.1
/// return code). `None` when the frame is not a CONNECT with a known protocol name and level.
pub fn connect_version(frame: &[u8]) -> Option<ProtocolVersion> {
    connect::version_of(frame)
}

/// The first byte of the fixed header (section 2.1.2).
fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish::publish_first_byte(p),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Writes everything after the fixed header. Generic over [`Sink`] so that the same code
/// computes [`encoded_len`].
fn write_body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    match packet {
        Packet::Connect(c) => connect::write_connect(c, version, s),
        Packet::ConnAck(c) => connect::write_connack(c, version, s),
        Packet::Publish(p) => publish::write_publish(p, version, s),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            publish::write_response(p, version, s)
        }
        Packet::Subscribe(p) => subscribe::write_subscribe(p, version, s),
        Packet::SubAck(p) => subscribe::write_suback(p, version, s),
        Packet::Unsubscribe(p) => subscribe::write_unsubscribe(p, version, s),
        Packet::UnsubAck(p) => subscribe::write_unsuback(p, version, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => control::write_disconnect(d, version, s),
        Packet::Auth(a) => control::write_auth(a, s),
    }
}

fn body_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut counter = primitives::Counter::default();
    write_body(packet, version, &mut counter);
    counter.0
}

/// Appends `packet`, encoded for `version`, to `out`. Properties are left out for 3.1.1.
///
/// The output is always a valid packet as far as the encoder can make it so: properties the
/// packet type does not allow are skipped, DUP is dropped from a QoS 0 PUBLISH, Session Present
/// is cleared in a refusing CONNACK, and the shortest forms of acknowledgements, DISCONNECT and
/// AUTH are used. For 3.1.1, CONNACK reason codes become return codes
/// ([`connack_v311_return_code`]), SUBACK failure codes become 0x80, and AUTH (which 3.1.1 does
/// not have) is written in its 5.0 form.
///
/// # Panics
///
/// If the remaining length would exceed [`MAX_REMAINING_LENGTH`], which no packet can carry;
/// callers check [`encoded_len`] against the peer's Maximum Packet Size (and that bound) first.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let remaining = body_len(packet, version);
    assert!(
        remaining <= MAX_REMAINING_LENGTH,
        "MQTT packet with a remaining length of {remaining} bytes cannot be encoded"
    );
    out.reserve(1 + varint_len(remaining) + remaining);
    out.put_u8(first_byte(packet));
    out.varint(remaining);
    write_body(packet, version, out);
}

/// The number of bytes [`encode`] would append, for checking a peer's Maximum Packet Size
/// before sending (MQTT-3.1.2-24).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let remaining = body_len(packet, version);
    1 + varint_len(remaining) + remaining
}
