//! Which reason codes each packet type may carry (section 2.4 and the per-packet tables), and the
//! mapping between MQTT 5 reason codes and the MQTT 3.1.1 CONNACK and SUBACK return codes.
//!
//! Kept apart from the packet modules because it is pure data: one table per packet type, and
//! the two 3.1.1 translations the session relies on to speak a single vocabulary.
//!
//! A code outside a packet's table is reported as a Protocol Error: the byte is well-formed, but
//! the sender broke a rule such as "The Client or Server sending the PUBACK packet MUST use one
//! of the PUBACK Reason Codes" (MQTT-3.4.2-1).

use super::packet::ReasonCode;

/// The packet types that carry reason codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    ConnAck,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    SubAck,
    UnsubAck,
    Disconnect,
    Auth,
}

impl Carrier {
    /// Is `code` one of the MQTT 5 reason codes this packet type may carry?
    pub(crate) fn allows(self, code: u8) -> bool {
        match self {
            // Section 3.2.2.2.
            Carrier::ConnAck => matches!(
                code,
                0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
            ),
            // Sections 3.4.2.1 and 3.5.2.1 (MQTT-3.4.2-1, MQTT-3.5.2-1).
            Carrier::PubAck | Carrier::PubRec => matches!(
                code,
                0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
            ),
            // Sections 3.6.2.1 and 3.7.2.1 (MQTT-3.6.2-1, MQTT-3.7.2-1).
            Carrier::PubRel | Carrier::PubComp => matches!(code, 0x00 | 0x92),
            // Section 3.9.3 (MQTT-3.9.3-2).
            Carrier::SubAck => matches!(
                code,
                0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            ),
            // Section 3.11.3 (MQTT-3.11.3-2).
            Carrier::UnsubAck => {
                matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
            }
            // Section 3.14.2.1 (MQTT-3.14.2-1).
            Carrier::Disconnect => matches!(
                code,
                0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
            ),
            // Section 3.15.2.1 (MQTT-3.15.2-1).
            Carrier::Auth => matches!(code, 0x00 | 0x18 | 0x19),
        }
    }
}

/// The MQTT 3.1.1 CONNACK return code (section 3.2.2.3 of 3.1.1) for an MQTT 5 reason code.
///
/// The exact equivalents map one to one: 0x00 → 0, 0x84 → 1 (unacceptable protocol version),
/// 0x85 → 2 (identifier rejected), 0x88 and 0x89 → 3 (server unavailable), 0x86 → 4 (bad user
/// name or password), 0x87 → 5 (not authorized). Of the rest, the codes that say "this client
/// may not connect" (0x8A Banned, 0x8C Bad authentication method) become 5, and every other
/// code, including a non-zero code below 0x80 (not valid in a CONNACK), becomes 3, the generic
/// refusal, so a refusal is never reported as success.
pub fn connack_v311_return_code(code: ReasonCode) -> u8 {
    match code.0 {
        0x00 => 0,
        0x84 => 1,
        0x85 => 2,
        0x88 | 0x89 => 3,
        0x86 => 4,
        0x87 | 0x8A | 0x8C => 5,
        _ => 3,
    }
}

/// The MQTT 5 equivalent of an MQTT 3.1.1 CONNACK return code, `None` for the reserved 6..=255.
pub(crate) fn connack_from_v311(code: u8) -> Option<ReasonCode> {
    Some(match code {
        0 => ReasonCode::SUCCESS,
        1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        3 => ReasonCode::SERVER_UNAVAILABLE,
        4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        5 => ReasonCode::NOT_AUTHORIZED,
        _ => return None,
    })
}

/// The MQTT 3.1.1 SUBACK return code for an MQTT 5 reason code: granted QoS 0, 1 and 2 are kept
/// and everything else is 0x80 Failure (MQTT-3.9.3-2 of 3.1.1 reserves all other values).
pub(crate) fn suback_v311_code(code: ReasonCode) -> u8 {
    match code.0 {
        c @ 0x00..=0x02 => c,
        _ => 0x80,
    }
}

/// Is `code` a valid MQTT 3.1.1 SUBACK return code (MQTT-3.9.3-2 of 3.1.1)?
pub(crate) fn suback_v311_allows(code: u8) -> bool {
    matches!(code, 0x00..=0x02 | 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connack_return_codes_round_trip() {
        for rc in 0..=5u8 {
            let v5 = connack_from_v311(rc).unwrap();
            assert_eq!(connack_v311_return_code(v5), rc);
        }
        assert_eq!(connack_from_v311(6), None);
        assert_eq!(connack_v311_return_code(ReasonCode::SERVER_BUSY), 3);
        assert_eq!(connack_v311_return_code(ReasonCode::BANNED), 5);
        assert_eq!(connack_v311_return_code(ReasonCode::QUOTA_EXCEEDED), 3);
        assert_eq!(connack_v311_return_code(ReasonCode(0x18)), 3);
    }

    #[test]
    fn suback_codes_collapse_to_failure() {
        assert_eq!(suback_v311_code(ReasonCode::GRANTED_QOS_2), 2);
        assert_eq!(suback_v311_code(ReasonCode::TOPIC_FILTER_INVALID), 0x80);
        assert_eq!(suback_v311_code(ReasonCode(0x03)), 0x80);
    }

    #[test]
    fn tables_match_the_spec_samples() {
        assert!(Carrier::ConnAck.allows(0x9F));
        assert!(!Carrier::ConnAck.allows(0x8B));
        assert!(Carrier::Disconnect.allows(0x8E));
        assert!(!Carrier::Disconnect.allows(0x84));
        assert!(!Carrier::Disconnect.allows(0x91));
        assert!(!Carrier::PubRel.allows(0x10));
        assert!(Carrier::Auth.allows(0x19));
        assert!(!Carrier::Auth.allows(0x80));
    }
}
