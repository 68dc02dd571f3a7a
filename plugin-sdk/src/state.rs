//! Typed session state: what a plugin keeps per authenticated session, in the identity it
//! returns from `authenticate`.
//!
//! The broker stores the bytes and gives them back only to the plugin that authenticated the
//! client. They are encoded with postcard behind the plugin's [`Plugin::STATE_VERSION`], so a
//! new version of a plugin recognises state written by an older one and can refuse it rather
//! than misread it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Identity, Plugin};

/// Encodes `state` as `P`'s session state.
pub fn encode<P: Plugin>(state: &P::State) -> Vec<u8> {
    let mut out = P::STATE_VERSION.to_le_bytes().to_vec();
    // Serialising plain data into a Vec cannot fail; an empty state is the safe fallback.
    if let Ok(body) = postcard::to_allocvec(state) {
        out.extend_from_slice(&body);
    } else {
        out.clear();
    }
    out
}

/// Decodes `P`'s session state from an identity: `None` if the client was authenticated by
/// another plugin, by another state version of this one, or the bytes do not decode.
pub fn decode<P: Plugin>(identity: &Identity) -> Option<P::State> {
    decode_versioned(P::STATE_VERSION, &identity.session_state)
}

fn decode_versioned<S: DeserializeOwned>(version: u32, bytes: &[u8]) -> Option<S> {
    let (head, body) = bytes.split_at_checked(4)?;
    if u32::from_le_bytes(head.try_into().ok()?) != version {
        return None;
    }
    postcard::from_bytes(body).ok()
}

/// Builds an [`Identity`] for `principal` carrying `state` as `P`'s session state.
pub fn identity<P: Plugin>(
    principal: impl Into<String>,
    roles: Vec<String>,
    state: &P::State,
) -> Identity
where
    P::State: Serialize,
{
    Identity {
        principal: principal.into(),
        roles,
        expires_at: None,
        session_state: encode::<P>(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_only_under_its_version() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend(postcard::to_allocvec(&("tenant-a", 7u8)).unwrap());
        assert_eq!(
            decode_versioned::<(String, u8)>(3, &bytes),
            Some(("tenant-a".to_string(), 7))
        );
        assert_eq!(decode_versioned::<(String, u8)>(4, &bytes), None);
        assert_eq!(decode_versioned::<(String, u8)>(3, &[]), None);
        assert_eq!(decode_versioned::<(String, u8)>(3, &bytes[..5]), None);
    }
}
