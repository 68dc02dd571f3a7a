//! Checking a token against a set of keys: the header's algorithm against each key's pinned
//! ones, the signature, then the registered claims (`exp`, `nbf` with leeway, `iss`, `aud`).

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::keys::{Key, algorithm_name};

pub type Claims = Map<String, Value>;

/// What the configuration says about the registered claims.
pub struct Rules {
    pub issuer: Option<Vec<String>>,
    pub audience: Option<Vec<String>>,
    pub leeway_seconds: u64,
    pub require_exp: bool,
}

impl Rules {
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_seconds;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.required_spec_claims = if self.require_exp {
            HashSet::from(["exp".to_string()])
        } else {
            HashSet::new()
        };
        if let Some(iss) = &self.issuer {
            v.set_issuer(iss);
            v.required_spec_claims.insert("iss".into());
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(aud);
                v.required_spec_claims.insert("aud".into());
            }
            None => v.validate_aud = false,
        }
        v
    }
}

/// The outcome of checking a token against one set of keys.
pub enum Attempt {
    /// Signed by one of the keys, and its claims pass the rules.
    Verified(Claims),
    /// Signed by one of the keys but refused (expired, wrong issuer...), or its algorithm does
    /// not fit the key its `kid` names: no other key can change that.
    Refused(String),
    /// No key of the set answers to the token's `kid` and algorithm.
    NoKey,
    /// Keys answered, none verified the signature.
    BadSignature,
}

/// Checks `token` (whose header says `alg` and `kid`) against `keys`.
pub fn attempt(
    token: &str,
    alg: Algorithm,
    kid: Option<&str>,
    keys: &[Key],
    rules: &Rules,
) -> Attempt {
    let named: Vec<&Key> = keys.iter().filter(|k| k.answers_to(kid)).collect();
    let fitting: Vec<&Key> = named
        .iter()
        .copied()
        .filter(|k| k.algorithms.contains(&alg))
        .collect();
    if fitting.is_empty() {
        // The key the token names exists, but is of another type: algorithm confusion (an HS
        // token against an RSA public key) or a mislabelled token; either way, refused.
        if let (Some(kid), Some(key)) = (kid, named.first()) {
            return Attempt::Refused(format!(
                "algorithm {} does not fit key {kid:?} ({})",
                algorithm_name(alg),
                key.key_type.describe()
            ));
        }
        return Attempt::NoKey;
    }
    let validation = rules.validation(alg);
    for key in fitting {
        match jsonwebtoken::decode::<Claims>(token, key.decoding_key(), &validation) {
            Ok(data) => return Attempt::Verified(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::InvalidSignature => continue,
                ErrorKind::ExpiredSignature => {
                    return Attempt::Refused("the token has expired".into());
                }
                ErrorKind::ImmatureSignature => {
                    return Attempt::Refused("the token is not valid yet (nbf)".into());
                }
                ErrorKind::InvalidIssuer => {
                    return Attempt::Refused("the token's issuer is not accepted".into());
                }
                ErrorKind::InvalidAudience => {
                    return Attempt::Refused("the token's audience is not accepted".into());
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    return Attempt::Refused(format!("the token has no `{claim}` claim"));
                }
                _ => return Attempt::Refused(format!("invalid token: {e}")),
            },
        }
    }
    Attempt::BadSignature
}
