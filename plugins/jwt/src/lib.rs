//! `jwt`: clients authenticated by a JSON Web Token, allowed to publish and subscribe where the
//! token's claims say.
//!
//! The token arrives as the MQTT password, or, for an MQTT 5 client using the enhanced
//! authentication method named by `auth_method`, as its authentication data. It is verified
//! with the keys of the configuration or of a JWKS fetched through the `http` capability
//! (`jwks`), each key pinned to the algorithms of its type (`keys`); then its registered claims
//! are checked (`verify`), the client identifier or user name bound to a claim if configured,
//! and the topic filters of its permission claims, with `%c`, `%u` and `${claim}` filled in,
//! become the session's state. The identity expires with the token, so the broker disconnects
//! the client (MQTT 5: 0xA0) when it does; an MQTT 5 client can re-authenticate with a fresh
//! token before that.
//!
//! A password that is not shaped like a JWT is not this plugin's business (`next`), so it can
//! share a chain with a plugin for passwords. Layout: `config` (the settings), `keys`, `jwks`,
//! `verify`, and the hooks here.

mod config;
mod jwks;
mod keys;
mod verify;

use jsonwebtoken::Algorithm;
use moat_plugin_sdk::{
    AuthOutcome, Client, Credentials, Denial, Hooks, Identity, Plugin, Publish, Reason,
    SubscribeGrant, SubscribeVerdict, Subscription, Verdict, allow, authenticated, host, state,
    topic,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use config::{Config, Fallback};
use jwks::{Jwks, Refresh};
use keys::Key;
use verify::{Attempt, Claims, Rules};

/// The broker's caps on what an identity carries (see the WIT contract).
const MAX_ROLES: usize = 64;
const MAX_PRINCIPAL_BYTES: usize = 1024;
const MAX_STATE_BYTES: usize = 60 * 1024;

struct Jwt {
    keys: Vec<Key>,
    jwks: Option<Jwks>,
    accepted: Vec<Algorithm>,
    rules: Rules,
    auth_method: Option<String>,
    on_jwks_unavailable: Fallback,
    principal_claim: String,
    roles_claim: Option<String>,
    client_id_claim: Option<String>,
    username_claim: Option<String>,
    publish_claim: String,
    subscribe_claim: String,
    unmatched: Fallback,
    cache_seconds: u32,
    min_refresh_seconds: u64,
}

/// What a session may do, from its token: topic filters with placeholders filled in.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
}

/// Why a token was not accepted.
enum Failure {
    /// The token is bad: 0x86 Bad user name or password.
    Refused(String),
    /// The key set it needs cannot be fetched: `on_jwks_unavailable` decides.
    Unavailable(String),
}

impl Plugin for Jwt {
    type Config = Config;
    type State = Permissions;

    const HOOKS: Hooks = Hooks::AUTHENTICATE
        .union(Hooks::AUTHORIZE_PUBLISH)
        .union(Hooks::AUTHORIZE_SUBSCRIBE);
    const STATE_VERSION: u32 = 1;

    fn new(c: Config) -> Result<Self, String> {
        let accepted = match &c.algorithms {
            Some(names) => names
                .iter()
                .map(|n| {
                    keys::algorithm(n).ok_or_else(|| format!("algorithms: {n:?} is not supported"))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => keys::all_algorithms(),
        };
        if accepted.is_empty() {
            return Err("algorithms: name at least one".into());
        }
        let keys = c
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| Key::from_config(k, &accepted).map_err(|e| format!("keys[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = match &c.jwks_url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                if c.jwks_min_refresh_seconds == 0 {
                    return Err("jwks_min_refresh_seconds: must be at least 1".into());
                }
                Some(Jwks::new(
                    url.clone(),
                    c.jwks_min_refresh_seconds,
                    c.jwks_max_age_seconds,
                    accepted.clone(),
                ))
            }
            Some(url) => return Err(format!("jwks_url: {url:?} is not an http(s) URL")),
            None => None,
        };
        if keys.is_empty() && jwks.is_none() {
            return Err("give `keys` or `jwks_url` (or both)".into());
        }
        if c.principal_claim.is_empty() {
            return Err("principal_claim: must not be empty".into());
        }
        Ok(Jwt {
            keys,
            jwks,
            accepted,
            rules: Rules {
                issuer: c.issuer.as_ref().map(|i| i.to_vec()),
                audience: c.audience.as_ref().map(|a| a.to_vec()),
                leeway_seconds: c.leeway_seconds,
                require_exp: c.require_exp,
            },
            auth_method: c.auth_method,
            on_jwks_unavailable: c.on_jwks_unavailable,
            principal_claim: c.principal_claim,
            roles_claim: c.roles_claim,
            client_id_claim: c.client_id_claim,
            username_claim: c.username_claim,
            publish_claim: c.publish_claim,
            subscribe_claim: c.subscribe_claim,
            unmatched: c.unmatched,
            cache_seconds: c.cache_seconds,
            min_refresh_seconds: c.jwks_min_refresh_seconds,
        })
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        let (token, enhanced) = match (&self.auth_method, &credentials.auth_method) {
            (Some(ours), Some(theirs)) if ours == theirs => {
                (credentials.auth_data.as_deref(), true)
            }
            // Another enhanced-authentication method: some other plugin's.
            (_, Some(_)) => return AuthOutcome::Next,
            (_, None) => (credentials.password.as_deref(), false),
        };
        let token = token
            .and_then(|t| std::str::from_utf8(t).ok())
            .filter(|t| keys::looks_like_jwt(t));
        let Some(token) = token else {
            return if enhanced {
                refuse(
                    Reason::BadCredentials,
                    "the authentication data is not a JWT",
                )
            } else {
                AuthOutcome::Next
            };
        };
        match self.verify(token) {
            Ok(claims) => self.admit(client, &claims),
            Err(Failure::Refused(why)) => refuse(Reason::BadCredentials, why),
            Err(Failure::Unavailable(why)) => match self.on_jwks_unavailable {
                Fallback::Deny => refuse(Reason::ServerUnavailable, why),
                Fallback::Next => AuthOutcome::Next,
            },
        }
    }

    fn authorize_publish(&self, _: &Client, identity: &Identity, message: &Publish) -> Verdict {
        let Some(p) = state::decode::<Self>(identity) else {
            return Verdict::Next;
        };
        if p.publish.iter().any(|f| topic::matches(f, &message.topic)) {
            return allow(self.cache_seconds);
        }
        match self.unmatched {
            Fallback::Deny => Verdict::Deny(not_authorized(format!(
                "the token does not allow publishing to {}",
                message.topic
            ))),
            Fallback::Next => Verdict::Next,
        }
    }

    fn authorize_subscribe(
        &self,
        _: &Client,
        identity: &Identity,
        subscription: &Subscription,
    ) -> SubscribeVerdict {
        let Some(p) = state::decode::<Self>(identity) else {
            return SubscribeVerdict::Next;
        };
        if p.subscribe
            .iter()
            .any(|f| topic::filter_within(f, &subscription.filter))
        {
            return SubscribeVerdict::Allow(SubscribeGrant {
                check_each_delivery: false,
            });
        }
        match self.unmatched {
            Fallback::Deny => SubscribeVerdict::Deny(not_authorized(format!(
                "the token does not allow subscribing to {}",
                subscription.filter
            ))),
            Fallback::Next => SubscribeVerdict::Next,
        }
    }
}

impl Jwt {
    /// Verifies the token's header, signature and registered claims.
    fn verify(&self, token: &str) -> Result<Claims, Failure> {
        let header = keys::read_header(token).map_err(Failure::Refused)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(Failure::Refused(
                "unsigned tokens (alg \"none\") are refused".into(),
            ));
        }
        let alg = keys::algorithm(&header.alg)
            .filter(|a| self.accepted.contains(a))
            .ok_or_else(|| {
                Failure::Refused(format!("algorithm {:?} is not accepted", header.alg))
            })?;
        if header.crit.is_some() {
            return Err(Failure::Refused(
                "the token has critical header parameters (crit), which are not supported".into(),
            ));
        }
        let kid = header.kid.as_deref();
        match verify::attempt(token, alg, kid, &self.keys, &self.rules) {
            Attempt::Verified(claims) => return Ok(claims),
            Attempt::Refused(why) => return Err(Failure::Refused(why)),
            Attempt::BadSignature if self.jwks.is_none() || kid.is_some() => {
                return Err(Failure::Refused(BAD_SIGNATURE.into()));
            }
            Attempt::BadSignature | Attempt::NoKey => {}
        }
        match &self.jwks {
            Some(jwks) => self.verify_with_jwks(jwks, token, alg, kid),
            None => Err(Failure::Refused(no_key(kid))),
        }
    }

    /// The key set's part: fetched when missing or stale, refreshed once when the token names
    /// a key it lacks (rate-limited), and its keys tried.
    fn verify_with_jwks(
        &self,
        jwks: &Jwks,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Claims, Failure> {
        let now = host::now_ms();
        let mut unavailable = None;
        let mut refreshed = false;
        // Missing or old: take what another instance fetched, else fetch (rate-limited).
        if jwks.is_stale(now) {
            jwks.sync();
        }
        if jwks.is_stale(now) {
            refreshed = true;
            if let Refresh::Unavailable(why) = jwks.refresh(now) {
                unavailable = Some(why);
            }
        }
        loop {
            let outcome =
                jwks.with_keys(|keys| verify::attempt(token, alg, kid, keys, &self.rules));
            match outcome {
                Attempt::Verified(claims) => return Ok(claims),
                Attempt::Refused(why) => return Err(Failure::Refused(why)),
                Attempt::BadSignature if kid.is_some() => {
                    return Err(Failure::Refused(BAD_SIGNATURE.into()));
                }
                Attempt::BadSignature | Attempt::NoKey if refreshed => break,
                Attempt::BadSignature | Attempt::NoKey => {}
            }
            refreshed = true;
            if jwks.sync() {
                continue;
            }
            match jwks.refresh(now) {
                Refresh::Fetched => continue,
                Refresh::TooSoon => break,
                Refresh::Unavailable(why) => {
                    unavailable = Some(why);
                    break;
                }
            }
        }
        if let Some(why) = unavailable {
            return Err(Failure::Unavailable(why));
        }
        Err(Failure::Refused(match kid {
            Some(_) => format!(
                "{} (the key set is fetched again at most every {} s)",
                no_key(kid),
                self.min_refresh_seconds
            ),
            None => BAD_SIGNATURE.into(),
        }))
    }

    /// The identity of a verified token, if it names a principal and fits the client.
    fn admit(&self, client: &Client, claims: &Claims) -> AuthOutcome {
        let principal = match claim_str(claims, &self.principal_claim) {
            Some(p) if !p.is_empty() && p.len() <= MAX_PRINCIPAL_BYTES => p.to_owned(),
            _ => {
                return refuse(
                    Reason::BadCredentials,
                    format!(
                        "the token's `{}` claim is not a principal name",
                        self.principal_claim
                    ),
                );
            }
        };
        if let Some(c) = &self.client_id_claim
            && claim_str(claims, c) != Some(client.client_id.as_str())
        {
            return refuse(
                Reason::BadCredentials,
                format!("the token's `{c}` claim does not name this client identifier"),
            );
        }
        if let Some(c) = &self.username_claim
            && (client.username.is_none() || claim_str(claims, c) != client.username.as_deref())
        {
            return refuse(
                Reason::BadCredentials,
                format!("the token's `{c}` claim does not name this user"),
            );
        }
        let mut roles = self
            .roles_claim
            .as_ref()
            .map(|c| strings(claim(claims, c)))
            .unwrap_or_default();
        roles.truncate(MAX_ROLES);
        let expand = |name: &str| -> Vec<String> {
            strings(claim(claims, name))
                .into_iter()
                .filter_map(|pattern| {
                    let filter = topic::expand_pattern(&pattern, |key| match key {
                        "client_id" => Some(client.client_id.as_str()),
                        "username" => client.username.as_deref(),
                        other => claim_str(claims, other),
                    })?;
                    topic::validate_topic_filter(&filter).ok()?;
                    Some(filter)
                })
                .collect()
        };
        let permissions = Permissions {
            publish: expand(&self.publish_claim),
            subscribe: expand(&self.subscribe_claim),
        };
        let mut identity = state::identity::<Self>(principal, roles, &permissions);
        if identity.session_state.len() > MAX_STATE_BYTES {
            return refuse(
                Reason::BadCredentials,
                "the token grants more topic filters than a session can hold",
            );
        }
        // The token is accepted until `exp` plus the leeway, so that is when the session ends.
        identity.expires_at = match claims.get("exp") {
            Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            _ => None,
        }
        .map(|exp| exp.saturating_add(self.rules.leeway_seconds));
        authenticated(identity)
    }
}

const BAD_SIGNATURE: &str = "the token's signature does not verify";

fn no_key(kid: Option<&str>) -> String {
    match kid {
        Some(kid) => format!("no key {kid:?} for the token"),
        None => "no key for the token's algorithm".into(),
    }
}

fn refuse(reason: Reason, message: impl Into<String>) -> AuthOutcome {
    AuthOutcome::Deny(Denial {
        reason,
        message: Some(message.into()),
    })
}

fn not_authorized(message: String) -> Denial {
    Denial {
        reason: Reason::NotAuthorized,
        message: Some(message),
    }
}

/// The claim at `path`: a top-level claim of that exact name (claim names may contain dots,
/// e.g. URLs), else the dotted path into nested objects.
fn claim<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn claim_str<'a>(claims: &'a Claims, path: &str) -> Option<&'a str> {
    claim(claims, path)?.as_str()
}

/// A claim's strings: a list of them, or one (a space-separated `scope` style string counts
/// as one).
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

moat_plugin_sdk::export_plugin!(Jwt);
