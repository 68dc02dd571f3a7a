//! SCRAM-SHA-256 (RFC 5802 with SHA-256, RFC 7677) as MQTT 5 enhanced authentication
//! (authentication method `SCRAM-SHA-256`, section 4.12): the password never crosses the
//! network, and the client checks the server's signature, so it knows the server holds its
//! verifier.
//!
//! The exchange: CONNECT carries the client-first message (`n,,n=USER,r=CNONCE`); the broker
//! answers AUTH 0x18 with the server-first message (`r=CNONCE SNONCE,s=SALT,i=ITERATIONS`);
//! the client's AUTH carries the client-final message (`c=biws,r=NONCE,p=PROOF`); the CONNACK
//! carries the server-final message (`v=SIGNATURE`) as its authentication data. What the
//! broker must remember between the two steps travels as the challenge's state, which the
//! broker keeps (the client never sees it).
//!
//! A user's verifier is stored as RFC 5803 writes it:
//! `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY` (base64), e.g. by
//! `moat passwd --scram`. The broker's `password` capability also checks a plain password
//! against it, so one entry serves both kinds of login.
//!
//! An unknown user gets a mock salt (an HMAC of the user name under a key only the plugin
//! knows, e.g. a digest of its files) and the usual iteration count, always the same for the same name, so the
//! first answer does not tell whether the user exists; the final step then fails as a wrong
//! password does. Channel binding is not offered (`n,,`); a client that asks for it (`p=`)
//! is refused.
//!
//! [`begin`] and [`finish`] are the two hook steps (`authenticate`, `continue-auth`) for a
//! plugin that only has to say where verifiers come from; the functions below them are the
//! message-level pieces.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuthOutcome, Authenticated, Challenge, Client, Credentials, Denial, Identity, Reason};

/// The MQTT authentication method.
pub const METHOD: &str = "SCRAM-SHA-256";

/// The iteration count given to unknown users (RFC 7677's minimum, what `moat passwd
/// --scram` writes).
pub const MOCK_ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A stored SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl Verifier {
    /// Reads `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iterations.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// A verifier no password matches, with a salt that depends only on `user` and `key`.
    pub fn mock(key: &[u8], user: &str) -> Verifier {
        let salt = hmac(key, user.as_bytes())[..16].to_vec();
        Verifier {
            iterations: MOCK_ITERATIONS,
            salt,
            stored_key: hmac(key, b"no password has this stored key"),
            server_key: [0; 32],
        }
    }
}

/// What the broker keeps between the server-first and the client-final message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exchange {
    pub user: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    gs2_header: String,
}

/// Why an exchange was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client's message is not what SCRAM expects.
    Malformed(&'static str),
    /// Wrong password, or no such user.
    BadProof,
}

impl Refusal {
    pub fn why(&self) -> &'static str {
        match self {
            Refusal::Malformed(why) => why,
            Refusal::BadProof => "bad user name or password",
        }
    }
}

/// Undoes SCRAM's escaping of `,` and `=` in a user name.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Reads the client-first message: the user name and what the next step needs.
pub fn client_first(message: &[u8]) -> Result<(String, String, String, String), Refusal> {
    let text = std::str::from_utf8(message).map_err(|_| Refusal::Malformed("not UTF-8"))?;
    let (gs2, bare) = match text.get(..2) {
        Some("n," | "y,") => {
            let after = &text[2..];
            let comma = after.find(',').ok_or(Refusal::Malformed("no GS2 header"))?;
            if !after[..comma].is_empty() && !after[..comma].starts_with("a=") {
                return Err(Refusal::Malformed("bad authorisation identity"));
            }
            (&text[..2 + comma + 1], &after[comma + 1..])
        }
        Some("p=") => return Err(Refusal::Malformed("channel binding is not supported")),
        _ => return Err(Refusal::Malformed("no GS2 header")),
    };
    let mut user = None;
    let mut nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        match (i, attr.split_at_checked(2)) {
            (0, Some(("n=", v))) => user = unescape(v),
            (1, Some(("r=", v))) if !v.is_empty() => nonce = Some(v.to_owned()),
            (_, Some(("m=", _))) => return Err(Refusal::Malformed("mandatory extension")),
            (0 | 1, _) => return Err(Refusal::Malformed("expected n=USER,r=NONCE")),
            _ => {}
        }
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or(Refusal::Malformed("no user name"))?;
    let nonce = nonce.ok_or(Refusal::Malformed("no nonce"))?;
    Ok((user, bare.to_owned(), gs2.to_owned(), nonce))
}

/// The server-first message for `verifier`, and the exchange to keep.
pub fn server_first(
    user: String,
    client_first_bare: String,
    gs2_header: String,
    client_nonce: &str,
    server_nonce: &[u8],
    verifier: &Verifier,
) -> (String, Exchange) {
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!(
        "r={nonce},s={},i={}",
        B64.encode(&verifier.salt),
        verifier.iterations
    );
    let exchange = Exchange {
        user,
        client_first_bare,
        server_first: server_first.clone(),
        nonce,
        gs2_header,
    };
    (server_first, exchange)
}

/// Checks the client-final message against `verifier`; on success, the server-final message.
pub fn client_final(
    exchange: &Exchange,
    message: &[u8],
    verifier: &Verifier,
) -> Result<String, Refusal> {
    let text = std::str::from_utf8(message).map_err(|_| Refusal::Malformed("not UTF-8"))?;
    let (without_proof, proof) = text
        .rsplit_once(",p=")
        .ok_or(Refusal::Malformed("no proof"))?;
    let mut parts = without_proof.split(',');
    let binding = parts
        .next()
        .and_then(|c| c.strip_prefix("c="))
        .ok_or(Refusal::Malformed("no channel binding attribute"))?;
    if binding != B64.encode(&exchange.gs2_header) {
        return Err(Refusal::Malformed("channel binding does not match"));
    }
    let nonce = parts
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .ok_or(Refusal::Malformed("no nonce"))?;
    if nonce != exchange.nonce {
        return Err(Refusal::Malformed("the nonce does not match"));
    }
    let proof: [u8; 32] = B64
        .decode(proof)
        .ok()
        .and_then(|p| p.try_into().ok())
        .ok_or(Refusal::Malformed("bad proof"))?;
    let auth_message = format!(
        "{},{},{without_proof}",
        exchange.client_first_bare, exchange.server_first
    );
    let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
    let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
    let stored_key: [u8; 32] = Sha256::digest(&client_key).into();
    // Constant time: every byte is compared whatever the first difference.
    let difference = stored_key
        .iter()
        .zip(verifier.stored_key)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference != 0 {
        return Err(Refusal::BadProof);
    }
    let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
    Ok(format!("v={}", B64.encode(server_signature)))
}

/// Where a user's verifier comes from, as [`begin`] and [`finish`] ask: `Ok(Some(v))` for a
/// user with a verifier, `Ok(None)` for a user without one (it gets a mock and fails as a
/// wrong password does), or `Err(outcome)` to answer with `outcome` instead (e.g. `next` for
/// an unknown user, or a denial when the store is unreachable).
pub type Lookup = Result<Option<Verifier>, AuthOutcome>;

fn refuse(reason: Reason, why: &str) -> AuthOutcome {
    AuthOutcome::Deny(Denial {
        reason,
        message: Some(why.to_owned()),
    })
}

/// The `authenticate` step for a CONNECT with an authentication method: `None` without one
/// (a password login); `next` for another method, or when SCRAM is not `enabled`; otherwise
/// it reads the client-first message (the CONNECT's authentication data), checks that its
/// user name is the CONNECT's user name if there is one, looks the verifier up and answers
/// with the server-first message as a challenge. `mock_key` keys unknown users' mock salts.
pub fn begin(
    enabled: bool,
    client: &Client,
    credentials: &Credentials,
    mock_key: &[u8],
    lookup: impl FnOnce(&str) -> Lookup,
) -> Option<AuthOutcome> {
    let method = credentials.auth_method.as_deref()?;
    if method != METHOD || !enabled {
        return Some(AuthOutcome::Next);
    }
    let mut server_nonce = [0u8; 18];
    if getrandom::fill(&mut server_nonce).is_err() {
        return Some(refuse(Reason::ServerUnavailable, "no random source"));
    }
    Some(first_step(
        client.username.as_deref(),
        credentials.auth_data.as_deref().unwrap_or_default(),
        &server_nonce,
        mock_key,
        lookup,
    ))
}

fn first_step(
    username: Option<&str>,
    data: &[u8],
    server_nonce: &[u8],
    mock_key: &[u8],
    lookup: impl FnOnce(&str) -> Lookup,
) -> AuthOutcome {
    let (user, bare, gs2, client_nonce) = match client_first(data) {
        Ok(parts) => parts,
        Err(refusal) => return refuse(Reason::NotAuthorized, refusal.why()),
    };
    if username.is_some_and(|u| u != user) {
        return refuse(
            Reason::NotAuthorized,
            "the SCRAM user name differs from the CONNECT user name",
        );
    }
    let verifier = match lookup(&user) {
        Ok(Some(v)) => v,
        Ok(None) => Verifier::mock(mock_key, &user),
        Err(outcome) => return outcome,
    };
    let (message, exchange) = server_first(user, bare, gs2, &client_nonce, server_nonce, &verifier);
    let Ok(state) = serde_json::to_vec(&exchange) else {
        return refuse(Reason::ServerUnavailable, "state");
    };
    AuthOutcome::Challenge(Challenge {
        data: message.into_bytes(),
        state,
    })
}

/// The `continue-auth` step: checks the client-final message `data` against the verifier
/// `lookup` gives for the user of the exchange kept in `state`; on success the client is
/// `identity(user)` and gets the server-final message.
pub fn finish(
    state: &[u8],
    data: &[u8],
    mock_key: &[u8],
    lookup: impl FnOnce(&str) -> Lookup,
    identity: impl FnOnce(String) -> Identity,
) -> AuthOutcome {
    let Ok(exchange) = serde_json::from_slice::<Exchange>(state) else {
        return refuse(Reason::NotAuthorized, "no SCRAM exchange");
    };
    let verifier = match lookup(&exchange.user) {
        Ok(Some(v)) => v,
        Ok(None) => Verifier::mock(mock_key, &exchange.user),
        Err(outcome) => return outcome,
    };
    match client_final(&exchange, data, &verifier) {
        Ok(server_final) => AuthOutcome::Allow(Authenticated {
            identity: identity(exchange.user),
            auth_data: Some(server_final.into_bytes()),
        }),
        Err(Refusal::BadProof) => refuse(Reason::BadCredentials, "bad user name or password"),
        Err(refusal) => refuse(Reason::NotAuthorized, refusal.why()),
    }
}
