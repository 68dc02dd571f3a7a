//! DISCONNECT (section 3.14) and AUTH (section 3.15): the connection-control packets whose
//! whole body may be left out. (PINGREQ and PINGRESP have no body at all and need no code here:
//! the dispatcher only checks that their remaining length is 0.)

use super::DecodeError;
use super::packet::{Auth, Disconnect, ProtocolVersion, ReasonCode};
use super::primitives::{Reader, Result, Sink};
use super::properties::{self, Ctx};
use super::reason::Carrier;

/// DISCONNECT, after its fixed header. In 3.1.1 it has no body; in 5.0 a remaining length of 0
/// means Normal disconnection and one of 1 a reason code without properties (section 3.14.2.1
/// and 3.14.2.2.1: "If the Remaining Length is less than 2, a value of 0 is used").
pub(crate) fn decode_disconnect(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Disconnect> {
    let mut d = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
    if version == ProtocolVersion::V5 && !r.is_empty() {
        let code = r.u8()?;
        if !Carrier::Disconnect.allows(code) {
            return Err(DecodeError::Protocol(
                "reason code not valid in DISCONNECT (MQTT-3.14.2-1)",
            ));
        }
        d.reason_code = ReasonCode(code);
        if !r.is_empty() {
            d.properties = properties::decode(r, Ctx::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// DISCONNECT body, in the shortest form: nothing for a normal disconnection without
/// properties (always nothing in 3.1.1), only the reason code when there are no properties.
pub(crate) fn write_disconnect<S: Sink>(d: &Disconnect, version: ProtocolVersion, s: &mut S) {
    if version == ProtocolVersion::V311 {
        return;
    }
    let props = properties::len(&d.properties, Ctx::Disconnect);
    if props == 0 {
        if d.reason_code != ReasonCode::NORMAL_DISCONNECTION {
            s.u8(d.reason_code.0);
        }
        return;
    }
    s.u8(d.reason_code.0);
    properties::write(&d.properties, Ctx::Disconnect, s);
}

/// AUTH, after its fixed header (5.0 only; the dispatcher rejects it for 3.1.1). A remaining
/// length of 0 means Success without properties (section 3.15.2.1). Otherwise both the reason
/// code and the properties are there (the one-byte form DISCONNECT allows is not defined for
/// AUTH), and the properties must name the Authentication Method (section 3.15.2.2.2: "It is a
/// Protocol Error to omit the Authentication Method").
pub(crate) fn decode_auth(r: &mut Reader<'_>) -> Result<Auth> {
    if r.is_empty() {
        return Ok(Auth {
            reason_code: ReasonCode::SUCCESS,
            properties: Default::default(),
        });
    }
    let code = r.u8()?;
    if !Carrier::Auth.allows(code) {
        return Err(DecodeError::Protocol(
            "reason code not valid in AUTH (MQTT-3.15.2-1)",
        ));
    }
    let properties = properties::decode(r, Ctx::Auth)?;
    if properties.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "AUTH without an Authentication Method (section 3.15.2.2.2)",
        ));
    }
    r.finish()?;
    Ok(Auth {
        reason_code: ReasonCode(code),
        properties,
    })
}

/// AUTH body: nothing for Success without properties, else reason code and properties. It is
/// written the same way whatever the version, since 3.1.1 has no AUTH; the session must not
/// send one to a 3.1.1 client.
pub(crate) fn write_auth<S: Sink>(a: &Auth, s: &mut S) {
    if a.reason_code == ReasonCode::SUCCESS && properties::len(&a.properties, Ctx::Auth) == 0 {
        return;
    }
    s.u8(a.reason_code.0);
    properties::write(&a.properties, Ctx::Auth, s);
}
