//! Verification keys and the algorithms each may be used with.
//!
//! A key is pinned to the algorithms of its type: an HMAC secret to HS256/384/512, an RSA key
//! to RS*/PS*, a P-256 key to ES256, a P-384 key to ES384, an Ed25519 key to EdDSA (narrowed
//! further by the key's own `alg`, and by the configuration's `algorithms`). A token whose
//! header names an algorithm its key does not fit is refused before any cryptography runs, so
//! an RSA public key can never be used as an HMAC secret (algorithm confusion), and `none` is
//! not an algorithm at all here.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// Shortest HMAC secret accepted: RFC 7518 section 3.2 asks for at least the hash's size.
const MIN_SECRET_BYTES: usize = 32;

/// The algorithms supported, by their JOSE names.
const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The algorithm called `name` (case-sensitive, as RFC 7518 writes them).
pub fn algorithm(name: &str) -> Option<Algorithm> {
    ALGORITHMS.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
}

pub fn algorithm_name(alg: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("?", |(n, _)| n)
}

/// All supported algorithms.
pub fn all_algorithms() -> Vec<Algorithm> {
    ALGORITHMS.iter().map(|(_, a)| *a).collect()
}

/// What kind of key a key is; it decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyType {
    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyType::Hmac => &[HS256, HS384, HS512],
            KeyType::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyType::P256 => &[ES256],
            KeyType::P384 => &[ES384],
            KeyType::Ed25519 => &[EdDSA],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            KeyType::Hmac => "an HMAC secret",
            KeyType::Rsa => "an RSA key",
            KeyType::P256 => "a P-256 key",
            KeyType::P384 => "a P-384 key",
            KeyType::Ed25519 => "an Ed25519 key",
        }
    }
}

/// A public key (or HMAC secret) as RFC 7517 writes it; members other than these are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// One entry of the configuration's `keys`: exactly one of `secret`, `secret_base64`, `pem`
/// and `jwk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub secret: Option<String>,
    pub secret_base64: Option<String>,
    pub pem: Option<String>,
    pub jwk: Option<Jwk>,
}

/// A verification key, pinned to its algorithms.
pub struct Key {
    pub kid: Option<String>,
    pub key_type: KeyType,
    pub algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl Key {
    /// A key from the configuration; `accepted` are the algorithms the configuration allows.
    pub fn from_config(c: &KeyConfig, accepted: &[Algorithm]) -> Result<Key, String> {
        let given = [
            c.secret.is_some(),
            c.secret_base64.is_some(),
            c.pem.is_some(),
            c.jwk.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err("give exactly one of `secret`, `secret_base64`, `pem` and `jwk`".into());
        }
        let alg = match &c.alg {
            Some(name) => Some(algorithm(name).ok_or_else(|| unsupported(name))?),
            None => None,
        };
        let (key_type, key) = if let Some(jwk) = &c.jwk {
            let mut key = Key::from_jwk(jwk, true, accepted)?;
            if let Some(alg) = alg {
                key.pin(alg)?;
            }
            if c.kid.is_some() {
                key.kid = c.kid.clone();
            }
            return Ok(key);
        } else if let Some(pem) = &c.pem {
            let Some(alg) = alg else {
                return Err("a `pem` key needs its `alg` (e.g. \"RS256\")".into());
            };
            let pem = pem.as_bytes();
            let bad = |e: jsonwebtoken::errors::Error| {
                format!("`pem` is not a public key for {}: {e}", algorithm_name(alg))
            };
            match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                    return Err(
                        "an HMAC algorithm takes a `secret`, never a PEM key (that would let \
                         anyone holding the public key sign tokens)"
                            .into(),
                    );
                }
                Algorithm::ES256 => (KeyType::P256, DecodingKey::from_ec_pem(pem).map_err(bad)?),
                Algorithm::ES384 => (KeyType::P384, DecodingKey::from_ec_pem(pem).map_err(bad)?),
                Algorithm::EdDSA => (
                    KeyType::Ed25519,
                    DecodingKey::from_ed_pem(pem).map_err(bad)?,
                ),
                _ => (KeyType::Rsa, DecodingKey::from_rsa_pem(pem).map_err(bad)?),
            }
        } else {
            let secret = match (&c.secret, &c.secret_base64) {
                (Some(s), _) => s.as_bytes().to_vec(),
                (_, Some(b)) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(b))
                    .map_err(|_| "`secret_base64` is not base64".to_string())?,
                _ => unreachable!("one of them is given"),
            };
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "an HMAC secret needs at least {MIN_SECRET_BYTES} bytes"
                ));
            }
            (KeyType::Hmac, DecodingKey::from_secret(&secret))
        };
        let mut key = Key::new(c.kid.clone(), key_type, key, accepted)?;
        if let Some(alg) = alg {
            key.pin(alg)?;
        }
        Ok(key)
    }

    /// A key from a JWK (`oct` secrets only where `secrets` allows them: never from a key set
    /// fetched over the network).
    pub fn from_jwk(jwk: &Jwk, secrets: bool, accepted: &[Algorithm]) -> Result<Key, String> {
        let member = |m: &Option<String>, name: &str| {
            m.clone()
                .ok_or_else(|| format!("a {} JWK needs `{name}`", jwk.kty))
        };
        let bad = |e: jsonwebtoken::errors::Error| format!("invalid {} JWK: {e}", jwk.kty);
        let (key_type, key) = match jwk.kty.as_str() {
            "RSA" => (
                KeyType::Rsa,
                DecodingKey::from_rsa_components(&member(&jwk.n, "n")?, &member(&jwk.e, "e")?)
                    .map_err(bad)?,
            ),
            "EC" => {
                let key_type = match jwk.crv.as_deref() {
                    Some("P-256") => KeyType::P256,
                    Some("P-384") => KeyType::P384,
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
                let key =
                    DecodingKey::from_ec_components(&member(&jwk.x, "x")?, &member(&jwk.y, "y")?)
                        .map_err(bad)?;
                (key_type, key)
            }
            "OKP" if jwk.crv.as_deref() == Some("Ed25519") => (
                KeyType::Ed25519,
                DecodingKey::from_ed_components(&member(&jwk.x, "x")?).map_err(bad)?,
            ),
            "oct" if secrets => {
                let secret = URL_SAFE_NO_PAD
                    .decode(member(&jwk.k, "k")?)
                    .map_err(|_| "`k` is not base64url".to_string())?;
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(format!(
                        "an HMAC secret needs at least {MIN_SECRET_BYTES} bytes"
                    ));
                }
                (KeyType::Hmac, DecodingKey::from_secret(&secret))
            }
            "oct" => return Err("secret (`oct`) keys are not taken from a key set".into()),
            other => return Err(format!("key type {other:?} is not supported")),
        };
        let mut key = Key::new(jwk.kid.clone(), key_type, key, accepted)?;
        if let Some(name) = &jwk.alg {
            key.pin(algorithm(name).ok_or_else(|| unsupported(name))?)?;
        }
        Ok(key)
    }

    fn new(
        kid: Option<String>,
        key_type: KeyType,
        key: DecodingKey,
        accepted: &[Algorithm],
    ) -> Result<Key, String> {
        let algorithms: Vec<Algorithm> = key_type
            .algorithms()
            .iter()
            .copied()
            .filter(|a| accepted.contains(a))
            .collect();
        if algorithms.is_empty() {
            return Err(format!(
                "no accepted algorithm fits {}",
                key_type.describe()
            ));
        }
        Ok(Key {
            kid,
            key_type,
            algorithms,
            key,
        })
    }

    /// Narrows the key to `alg`, which must fit it.
    fn pin(&mut self, alg: Algorithm) -> Result<(), String> {
        if !self.algorithms.contains(&alg) {
            return Err(format!(
                "{} does not fit {} (or is not accepted)",
                algorithm_name(alg),
                self.key_type.describe()
            ));
        }
        self.algorithms = vec![alg];
        Ok(())
    }

    /// Whether the key may verify a token whose header names `kid`: a key without an id is
    /// tried for any token, and a token without one is tried with every key.
    pub fn answers_to(&self, kid: Option<&str>) -> bool {
        match (kid, &self.kid) {
            (Some(wanted), Some(own)) => wanted == own,
            _ => true,
        }
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

fn unsupported(name: &str) -> String {
    format!(
        "algorithm {name:?} is not supported (supported: {})",
        ALGORITHMS
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The parts of a token's header this plugin reads.
#[derive(Debug, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
}

/// Reads a compact JWS's header without trusting anything in it yet.
pub fn read_header(token: &str) -> Result<Header, String> {
    let encoded = token.split('.').next().unwrap_or_default();
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| "the token's header is not base64url".to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the token's header is not valid: {e}"))
}

/// Whether `token` is shaped like a compact JWS: three base64url parts.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = 0;
    for part in token.split('.') {
        parts += 1;
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3 && !token.starts_with('.')
}
