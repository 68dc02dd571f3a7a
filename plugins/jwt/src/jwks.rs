//! A JSON Web Key Set fetched through the `http` capability, cached, and refreshed when a token
//! names a key it does not have, at most once per `jwks_min_refresh_seconds`.
//!
//! The broker runs several instances of the plugin; they share the fetched set and the time
//! of the last attempt through the `kv` capability (when granted), so the rate limit holds for
//! the plugin as a whole and one fetch serves every instance. Each instance keeps the parsed
//! keys in its own memory and reloads them from `kv` only when another instance fetched a newer
//! set. Without `kv` each instance fetches for itself, under the same limit.
//!
//! kv entries: `jwks:at` (when the cached set was fetched, ms, 8 bytes LE), `jwks:body` (the
//! set as fetched), `jwks:attempt` (when a fetch was last tried, 8 bytes LE, then the error
//! it met, empty for success).

use std::cell::RefCell;

use jsonwebtoken::Algorithm;
use moat_plugin_sdk::{CapabilityError, http, kv};
use serde::Deserialize;

use crate::keys::{Jwk, Key};

const KV_AT: &str = "jwks:at";
const KV_BODY: &str = "jwks:body";
const KV_ATTEMPT: &str = "jwks:attempt";

pub struct Jwks {
    url: String,
    min_refresh_ms: u64,
    max_age_ms: u64,
    accepted: Vec<Algorithm>,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    keys: Vec<Key>,
    /// When the keys were fetched (0: never).
    fetched_at: u64,
    /// When a fetch was last tried, and the error it met.
    attempted_at: u64,
    error: Option<String>,
}

/// Why the key set could not help.
pub enum Refresh {
    /// A new set was fetched.
    Fetched,
    /// Too soon after the last attempt, which succeeded: the set is as fresh as allowed.
    TooSoon,
    /// The set cannot be had: the last attempt (now or recently) failed.
    Unavailable(String),
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<serde_json::Value>,
}

impl Jwks {
    pub fn new(url: String, min_refresh_s: u64, max_age_s: u64, accepted: Vec<Algorithm>) -> Jwks {
        Jwks {
            url,
            min_refresh_ms: min_refresh_s.saturating_mul(1000),
            max_age_ms: max_age_s.saturating_mul(1000),
            accepted,
            state: RefCell::new(State::default()),
        }
    }

    /// Runs `f` on the keys this instance holds.
    pub fn with_keys<R>(&self, f: impl FnOnce(&[Key]) -> R) -> R {
        f(&self.state.borrow().keys)
    }

    /// Whether the held set is missing or older than `jwks_max_age_seconds`.
    pub fn is_stale(&self, now: u64) -> bool {
        let s = self.state.borrow();
        s.fetched_at == 0 || now.saturating_sub(s.fetched_at) > self.max_age_ms
    }

    /// Takes the set another instance fetched, if it is newer than ours; true if it was.
    pub fn sync(&self) -> bool {
        let mut s = self.state.borrow_mut();
        if let Some((attempted_at, error)) = read_attempt()
            && attempted_at > s.attempted_at
        {
            s.attempted_at = attempted_at;
            s.error = error;
        }
        let Some(at) = read_u64(KV_AT) else {
            return false;
        };
        if at <= s.fetched_at {
            return false;
        }
        let Ok(Some(body)) = kv::get(KV_BODY) else {
            return false;
        };
        match parse(&body, &self.accepted) {
            Ok(keys) => {
                s.keys = keys;
                s.fetched_at = at;
                true
            }
            Err(_) => false,
        }
    }

    /// Fetches the set if the rate limit allows; see [`Refresh`].
    pub fn refresh(&self, now: u64) -> Refresh {
        self.sync();
        {
            let s = self.state.borrow();
            if s.attempted_at != 0 && now.saturating_sub(s.attempted_at) < self.min_refresh_ms {
                return match &s.error {
                    Some(e) => Refresh::Unavailable(e.clone()),
                    None => Refresh::TooSoon,
                };
            }
        }
        // Claim the attempt before making it, so other instances wait for this one.
        write_attempt(now, None);
        let result = self.fetch();
        let mut s = self.state.borrow_mut();
        s.attempted_at = now;
        match result {
            Ok((body, keys)) => {
                moat_plugin_sdk::info!(
                    "fetched the key set from {} ({} usable keys)",
                    self.url,
                    keys.len()
                );
                s.keys = keys;
                s.fetched_at = now;
                s.error = None;
                let _ = kv::set(KV_BODY, &body, None);
                let _ = kv::set(KV_AT, &now.to_le_bytes(), None);
                Refresh::Fetched
            }
            Err(why) => {
                let why = format!("cannot fetch the key set from {}: {why}", self.url);
                moat_plugin_sdk::warn!("{why}");
                write_attempt(now, Some(&why));
                s.error = Some(why.clone());
                Refresh::Unavailable(why)
            }
        }
    }

    fn fetch(&self) -> Result<(Vec<u8>, Vec<Key>), String> {
        let response = http::fetch(&http::Request {
            method: "GET".into(),
            url: self.url.clone(),
            headers: vec![("accept".into(), "application/json".into())],
            body: None,
        })
        .map_err(|e| describe(&e))?;
        if response.status != 200 {
            return Err(format!("it answered HTTP {}", response.status));
        }
        let keys = parse(&response.body, &self.accepted)?;
        Ok((response.body, keys))
    }
}

/// The usable keys of a key set; keys for encryption, of unsupported types and secrets are
/// left out (logged).
fn parse(body: &[u8], accepted: &[Algorithm]) -> Result<Vec<Key>, String> {
    let set: KeySet =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(j) => j,
            Err(e) => {
                moat_plugin_sdk::debug!("key set entry skipped: {e}");
                continue;
            }
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        match Key::from_jwk(&jwk, false, accepted) {
            Ok(key) => keys.push(key),
            Err(e) => moat_plugin_sdk::debug!("key {:?} of the key set skipped: {e}", jwk.kid),
        }
    }
    Ok(keys)
}

fn describe(e: &CapabilityError) -> String {
    match e {
        CapabilityError::NotGranted => {
            "the broker does not let this plugin fetch that URL (see [plugin.grants.http])".into()
        }
        CapabilityError::Timeout => "no answer in time".into(),
        CapabilityError::Unavailable(why) | CapabilityError::Invalid(why) => why.clone(),
        CapabilityError::TooLarge => "the answer is larger than the grant allows".into(),
        CapabilityError::QuotaExceeded => "quota exceeded".into(),
    }
}

fn read_u64(key: &str) -> Option<u64> {
    let bytes = kv::get(key).ok()??;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn read_attempt() -> Option<(u64, Option<String>)> {
    let bytes = kv::get(KV_ATTEMPT).ok()??;
    let at = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let error = String::from_utf8_lossy(&bytes[8..]).into_owned();
    Some((at, (!error.is_empty()).then_some(error)))
}

fn write_attempt(at: u64, error: Option<&str>) {
    let mut value = at.to_le_bytes().to_vec();
    value.extend_from_slice(error.unwrap_or_default().as_bytes());
    let _ = kv::set(KV_ATTEMPT, &value, None);
}
