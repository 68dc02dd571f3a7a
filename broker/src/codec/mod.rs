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

pub mod packet;

pub use packet::*;

use bytes::{Bytes, BytesMut};

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

/// Is a whole packet at the start of `buf`? `Ok(Some(n))`: the first `n` bytes are one packet;
/// `Ok(None)`: read more. Fails on a malformed remaining length (MQTT-1.5.5-1) or one whose
/// packet would exceed `max_packet_size` (MQTT-3.1.2-24), before the body is buffered.
pub fn check(buf: &[u8], max_packet_size: u32) -> Result<Option<usize>, DecodeError> {
    let _ = (buf, max_packet_size);
    todo!()
}

/// Decodes one whole packet as delimited by [`check`].
///
/// `version` is the protocol the connection speaks, `None` until its CONNECT has been read: then
/// only CONNECT is accepted (MQTT-3.1.0-1) and the packet's own protocol level decides.
pub fn decode(frame: Bytes, version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let _ = (frame, version);
    todo!()
}

/// The protocol level a CONNECT frame claims, read leniently so that even a CONNECT that fails
/// to decode can be answered in its own protocol (a v5 CONNACK with a reason code, or a 3.1.1
/// return code). `None` when the frame is not a CONNECT with a known protocol name and level.
pub fn connect_version(frame: &[u8]) -> Option<ProtocolVersion> {
    let _ = frame;
    todo!()
}

/// Appends `packet`, encoded for `version`, to `out`. Properties are left out for 3.1.1.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let _ = (packet, version, out);
    todo!()
}

/// The number of bytes [`encode`] would append, for checking a peer's Maximum Packet Size
/// before sending (MQTT-3.1.2-24).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    todo!()
}
