//! The plugin's `[plugin.config]` table (README.md lists every key with an example).

use serde::Deserialize;

use crate::keys::KeyConfig;

/// What to answer when a decision cannot be made from the token alone: a key set that cannot
/// be fetched, or a topic the token's permissions do not mention. Never an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    #[default]
    Deny,
    Next,
}

/// A string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Keys given in the configuration: HMAC secrets, PEM public keys, JWKs.
    pub keys: Vec<KeyConfig>,
    /// A JSON Web Key Set fetched through the `http` capability.
    pub jwks_url: Option<String>,
    /// Fewest seconds between two fetches of the key set (a token with an unknown `kid` asks
    /// for one).
    pub jwks_min_refresh_seconds: u64,
    /// Seconds after which a fetched key set is fetched again when next needed.
    pub jwks_max_age_seconds: u64,
    /// The answer when the key set is needed but cannot be fetched: `deny` (0x88 Server
    /// unavailable) or `next`.
    pub on_jwks_unavailable: Fallback,
    /// The algorithms accepted; default: all supported.
    pub algorithms: Option<Vec<String>>,
    /// Accepted `iss` values; default: any.
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values (a token must name one); default: any.
    pub audience: Option<OneOrMany>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// MQTT 5 enhanced authentication method whose data is the token (e.g. `"JWT"`); the
    /// password carries it otherwise.
    pub auth_method: Option<String>,
    /// The claim that names the principal.
    pub principal_claim: String,
    /// A claim with a list of role names.
    pub roles_claim: Option<String>,
    /// A claim that must equal the client identifier.
    pub client_id_claim: Option<String>,
    /// A claim that must equal the MQTT user name.
    pub username_claim: Option<String>,
    /// The claim listing the topic filters the client may publish to (a dotted path reaches
    /// into objects).
    pub publish_claim: String,
    /// The claim listing the topic filters the client may subscribe to.
    pub subscribe_claim: String,
    /// The answer for a topic the token's permissions do not cover: `deny` or `next`.
    pub unmatched: Fallback,
    /// How long the broker may reuse an allow (it never outlives the token).
    pub cache_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keys: Vec::new(),
            jwks_url: None,
            jwks_min_refresh_seconds: 60,
            jwks_max_age_seconds: 3600,
            on_jwks_unavailable: Fallback::Deny,
            algorithms: None,
            issuer: None,
            audience: None,
            leeway_seconds: 30,
            require_exp: true,
            auth_method: None,
            principal_claim: "sub".into(),
            roles_claim: None,
            client_id_claim: None,
            username_claim: None,
            publish_claim: "mqtt.pub".into(),
            subscribe_claim: "mqtt.sub".into(),
            unmatched: Fallback::Deny,
            cache_seconds: 300,
        }
    }
}
