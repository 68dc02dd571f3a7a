//! `password`: password hashes checked by the host, so a plugin neither carries hashing code
//! nor spends its CPU budget on it.
//!
//! Formats: argon2id (and argon2i/argon2d) and PBKDF2-SHA256/512 as PHC strings
//! (`$argon2id$v=19$m=...`, `$pbkdf2-sha256$i=...`), bcrypt (`$2a$`, `$2b$`, `$2y$`), and the
//! two formats of Mosquitto's `mosquitto_passwd`: `$7$ITERATIONS$SALT$HASH` (PBKDF2-SHA512,
//! salt and hash in standard base64, what Mosquitto 2 writes) and `$6$SALT$HASH` (one SHA-512
//! of password then salt, what Mosquitto 1.6 and earlier wrote), and SCRAM-SHA-256 verifiers
//! (RFC 5803, `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`, checked against a plain
//! password by deriving the stored key). The RustCrypto crates
//! (`argon2`, `pbkdf2`, `sha2`) and `bcrypt` do the hashing; every comparison of a computed
//! hash with a stored one is constant-time (`subtle`, or the crates' own `Output`).
//!
//! Why it is built this way:
//! - A hash costs milliseconds to a second of CPU by design. It runs on tokio's blocking
//!   threads, never on an async worker, and at most `pool_size` at once per plugin (a
//!   semaphore whose permit goes into the blocking task, so the bound holds even for a check
//!   whose caller gave up). Waiting for a place counts against the call's wall-clock timeout,
//!   as all host time does; the guest's CPU budget only counts guest code.
//! - Except a hash cheap by construction (Mosquitto's `$6$`, and `$7$` or SCRAM with at most
//!   [`INLINE_PBKDF2_ITERATIONS`] iterations: Mosquitto's default `$7$` is 101, tens of
//!   microseconds): it is checked where the call runs, as a plugin's own code would be,
//!   because handing it to a blocking thread and back costs about as much as the hash (on
//!   one core, a third of the CPU of an authenticated connect).
//! - A stored hash can ask for any cost: one line in a password file must not let its author
//!   stall the broker. Costs above [`Caps`] are refused as `invalid`, before any work.
//! - An unknown user (no hash) is checked against a dummy hash, and the answer is always
//!   false: the dummy is the last real hash this plugin checked (so its algorithm and cost are
//!   those of the plugin's users), or an argon2id hash with the defaults of `moat passwd`
//!   before the first. The time taken then does not tell which users exist.

use std::sync::Arc;

use argon2::Argon2;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parking_lot::Mutex;
use password_hash::{PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::super::bindings::moat::policy::password;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;
use crate::config::PasswordGrant;

/// The highest costs a stored hash may ask for. Each is about a second of one core or more;
/// what people deploy is far below (argon2id m=19 MiB t=2, bcrypt 10-12, PBKDF2 at most
/// 600 000, Mosquitto's `$7$` 101).
#[derive(Debug, Clone, Copy)]
pub struct Caps;

impl Caps {
    /// Argon2 memory, KiB (256 MiB).
    pub const ARGON2_MEMORY_KIB: u32 = 256 * 1024;
    /// Argon2 passes times memory, KiB (so 64 MiB allows 16 passes, 256 MiB 4).
    pub const ARGON2_WORK: u64 = 1024 * 1024;
    /// Argon2 lanes.
    pub const ARGON2_LANES: u32 = 16;
    /// bcrypt's log2 of rounds.
    pub const BCRYPT_COST: u32 = 14;
    /// PBKDF2 iterations (PHC and `$7$`).
    pub const PBKDF2_ITERATIONS: u32 = 2_000_000;
    /// Longest stored hash accepted, bytes.
    pub const HASH_LEN: usize = 1024;
}

/// bcrypt reads at most 72 bytes of a password; a longer one never matches here, rather than
/// matching on its first 72 bytes.
const BCRYPT_MAX_PASSWORD: usize = 72;

/// The dummy checked before the plugin checked any real hash: argon2id with the parameters
/// `moat passwd` writes (m=19456, t=2, p=1) and an all-zero output no password produces.
const DEFAULT_DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$bW9hdC1kdW1teS1zYWx0$\
                             AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A stored hash, parsed and within [`Caps`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// argon2 or PBKDF2 in PHC form; checked by the crates, which read the parameters from it.
    Phc(String),
    Bcrypt(String),
    /// Mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    MosquittoPbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// Mosquitto `$6$`: SHA-512(password || salt).
    MosquittoSha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    /// A SCRAM-SHA-256 verifier (RFC 5803), checked against a plain password: PBKDF2-SHA256
    /// gives the salted password, whose client key must hash to the stored key.
    Scram {
        iterations: u32,
        salt: Vec<u8>,
        stored_key: Vec<u8>,
    },
}

/// The most PBKDF2 iterations checked inline (about 100 us of one core with SHA-512).
pub const INLINE_PBKDF2_ITERATIONS: u32 = 256;

impl Scheme {
    /// Whether checking this hash costs so little that it runs inline (see the module doc).
    fn is_cheap(&self) -> bool {
        match self {
            Scheme::MosquittoSha512 { .. } => true,
            Scheme::MosquittoPbkdf2 { iterations, .. } | Scheme::Scram { iterations, .. } => {
                *iterations <= INLINE_PBKDF2_ITERATIONS
            }
            Scheme::Phc(_) | Scheme::Bcrypt(_) => false,
        }
    }

    fn parse(stored: &str) -> Result<Scheme, String> {
        if stored.len() > Caps::HASH_LEN {
            return Err(format!("hash longer than {} bytes", Caps::HASH_LEN));
        }
        if let Some(rest) = stored.strip_prefix("$7$") {
            let mut parts = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("a `$7$` hash is `$7$ITERATIONS$SALT$HASH`".into());
            };
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| format!("`$7$` iteration count {iterations:?} is not a number"))?;
            check_iterations(iterations)?;
            return Ok(Scheme::MosquittoPbkdf2 {
                iterations,
                salt: decode_b64(salt, "salt")?,
                hash: decode_b64(hash, "hash")?,
            });
        }
        if let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") {
            let parsed = rest
                .split_once('$')
                .and_then(|(params, keys)| Some((params.split_once(':')?, keys.split_once(':')?)));
            let Some(((iterations, salt), (stored_key, _server_key))) = parsed else {
                return Err(
                    "a SCRAM verifier is `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`"
                        .into(),
                );
            };
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| format!("SCRAM iteration count {iterations:?} is not a number"))?;
            check_iterations(iterations)?;
            let stored_key = decode_b64(stored_key, "stored key")?;
            if stored_key.len() != 32 {
                return Err("a SCRAM-SHA-256 stored key is 32 bytes".into());
            }
            return Ok(Scheme::Scram {
                iterations,
                salt: decode_b64(salt, "salt")?,
                stored_key,
            });
        }
        if let Some(rest) = stored.strip_prefix("$6$") {
            let Some((salt, hash)) = rest.split_once('$') else {
                return Err("a `$6$` hash is `$6$SALT$HASH`".into());
            };
            let hash = decode_b64(hash, "hash")?;
            if hash.len() != 64 {
                return Err("a `$6$` hash is 64 bytes of SHA-512".into());
            }
            return Ok(Scheme::MosquittoSha512 {
                salt: decode_b64(salt, "salt")?,
                hash,
            });
        }
        if let Some(rest) = ["$2a$", "$2b$", "$2y$"]
            .iter()
            .find_map(|p| stored.strip_prefix(p))
        {
            let cost: u32 = rest
                .get(..2)
                .and_then(|c| c.parse().ok())
                .ok_or("a bcrypt hash is `$2b$COST$...` with a two-digit cost")?;
            if cost > Caps::BCRYPT_COST {
                return Err(format!(
                    "bcrypt cost {cost} is above the broker's limit of {}",
                    Caps::BCRYPT_COST
                ));
            }
            return Ok(Scheme::Bcrypt(stored.to_owned()));
        }
        let phc = PasswordHash::new(stored).map_err(|e| format!("unknown hash format ({e})"))?;
        match phc.algorithm.as_str() {
            "argon2id" | "argon2i" | "argon2d" => {
                let params = argon2::Params::try_from(&phc)
                    .map_err(|e| format!("bad argon2 parameters: {e}"))?;
                let (m, t, p) = (params.m_cost(), params.t_cost(), params.p_cost());
                if m > Caps::ARGON2_MEMORY_KIB
                    || u64::from(m) * u64::from(t) > Caps::ARGON2_WORK
                    || p > Caps::ARGON2_LANES
                {
                    return Err(format!(
                        "argon2 cost m={m} t={t} p={p} is above the broker's limit \
                         (m <= {}, m*t <= {}, p <= {})",
                        Caps::ARGON2_MEMORY_KIB,
                        Caps::ARGON2_WORK,
                        Caps::ARGON2_LANES
                    ));
                }
            }
            "pbkdf2-sha256" | "pbkdf2-sha512" => {
                let iterations = phc
                    .params
                    .get_decimal("i")
                    .ok_or("a PBKDF2 hash needs its iteration count `i`")?;
                check_iterations(iterations)?;
            }
            other => return Err(format!("unsupported hash algorithm {other:?}")),
        }
        if phc.hash.is_none() || phc.salt.is_none() {
            return Err("a PHC hash needs a salt and a hash".into());
        }
        Ok(Scheme::Phc(stored.to_owned()))
    }

    /// Whether `password` matches. Blocking: milliseconds to a second of CPU.
    fn verify(&self, password: &[u8]) -> bool {
        match self {
            Scheme::Phc(s) => {
                let Ok(phc) = PasswordHash::new(s) else {
                    return false;
                };
                if phc.algorithm.as_str().starts_with("argon2") {
                    Argon2::default().verify_password(password, &phc).is_ok()
                } else {
                    pbkdf2::Pbkdf2.verify_password(password, &phc).is_ok()
                }
            }
            Scheme::Bcrypt(s) => {
                password.len() <= BCRYPT_MAX_PASSWORD
                    && bcrypt::verify(password, s).unwrap_or(false)
            }
            Scheme::MosquittoPbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out.ct_eq(hash).into()
            }
            Scheme::Scram {
                iterations,
                salt,
                stored_key,
            } => {
                let (stored, _) = scram_keys(password, salt, *iterations);
                stored.ct_eq(stored_key.as_slice()).into()
            }
            Scheme::MosquittoSha512 { salt, hash } => {
                let out = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                out.as_slice().ct_eq(hash).into()
            }
        }
    }
}

fn check_iterations(iterations: u32) -> Result<(), String> {
    if iterations == 0 || iterations > Caps::PBKDF2_ITERATIONS {
        return Err(format!(
            "PBKDF2 iteration count {iterations} is outside 1 to {}",
            Caps::PBKDF2_ITERATIONS
        ));
    }
    Ok(())
}

fn decode_b64(text: &str, what: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text)
        .map_err(|e| format!("the {what} is not base64: {e}"))
}

/// A plugin's grant of `password`: its share of the blocking pool and its dummy hash.
pub struct PasswordPool {
    places: Arc<Semaphore>,
    dummy: Mutex<Option<Arc<Scheme>>>,
}

impl PasswordPool {
    pub fn new(grant: &PasswordGrant) -> PasswordPool {
        PasswordPool {
            places: Arc::new(Semaphore::new(grant.pool_size as usize)),
            dummy: Mutex::new(None),
        }
    }

    /// Checks `password` against `stored`, or against the dummy when there is none (always
    /// false then).
    pub async fn verify(
        &self,
        stored: Option<&str>,
        password: Vec<u8>,
    ) -> Result<bool, CapabilityError> {
        let (scheme, real) = match stored {
            Some(s) => {
                let scheme = Arc::new(Scheme::parse(s).map_err(CapabilityError::Invalid)?);
                *self.dummy.lock() = Some(scheme.clone());
                (scheme, true)
            }
            None => {
                let dummy = self.dummy.lock().clone();
                let scheme = dummy.unwrap_or_else(|| {
                    Arc::new(Scheme::parse(DEFAULT_DUMMY).expect("the default dummy parses"))
                });
                (scheme, false)
            }
        };
        if scheme.is_cheap() {
            return Ok(scheme.verify(&password) && real);
        }
        let place = self
            .places
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CapabilityError::Unavailable("the password pool is closed".into()))?;
        let matched = tokio::task::spawn_blocking(move || {
            let _place = place;
            scheme.verify(&password)
        })
        .await
        .map_err(|e| CapabilityError::Unavailable(format!("the password check failed: {e}")))?;
        Ok(real && matched)
    }
}

impl password::Host for HostState {
    async fn verify(
        &mut self,
        hash: Option<String>,
        password: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, CapabilityError>> {
        let ctx = self.ctx.clone();
        Ok(match &ctx.granted.password {
            Some(pool) => pool.verify(hash.as_deref(), password).await,
            None => Err(ctx.refuse("password")),
        })
    }
}

/// SCRAM-SHA-256's keys for `password` (RFC 5802 section 3): the client key's hash (the
/// stored key) and the server key, from PBKDF2-HMAC-SHA256.
fn scram_keys(password: &[u8], salt: &[u8], iterations: u32) -> ([u8; 32], [u8; 32]) {
    use hmac::Mac;
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
    let key = |label: &[u8]| -> [u8; 32] {
        let mut mac =
            hmac::Hmac::<Sha256>::new_from_slice(&salted).expect("HMAC takes any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    };
    let stored: [u8; 32] = Sha256::digest(key(b"Client Key")).into();
    (stored, key(b"Server Key"))
}

/// The SCRAM iteration count `moat passwd --scram` writes (RFC 7677's minimum).
pub const SCRAM_ITERATIONS: u32 = 4096;

/// A SCRAM-SHA-256 verifier for `password` (RFC 5803 form) with a random 16-byte salt, as
/// `moat passwd --scram` stores it: it serves SCRAM logins and plain-password logins alike.
pub fn scram_new(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let (stored, server) = scram_keys(password, &salt, SCRAM_ITERATIONS);
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored),
        STANDARD.encode(server)
    ))
}

/// Hashes `password` as `moat passwd` stores it: argon2id with the OWASP-recommended
/// m=19 MiB, t=2, p=1 and a random 16-byte salt, in PHC form.
pub fn hash_new(password: &[u8]) -> Result<String, String> {
    use password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Mosquitto 2.0.11's `mosquitto_passwd -b FILE alice secret`.
    const MOSQUITTO_7: &str = "$7$101$x64vlE9tFDfUPVja$SzAZL9kw8opBaXYhXSXE+pvjeCyHFHJOMvSx4G05\
                               FRfQ4z45nQ/tUvq3dYstFZy986Vez1N0SA1+sPxlIMyZBg==";
    /// Written by `mosquitto_passwd -H sha512 -b FILE bob hunter2`.
    const MOSQUITTO_6: &str = "$6$/X8hbO2QqLB3CZMM$rP87EJMwBwcKPwQm5NStwx9WWbO+mF368UD0Qym1PIHX\
                               oqjranLpX6dj4lzwmjTWry+RO0tqiB5YOE4U+NPBLg==";

    fn check(stored: &str, password: &str) -> bool {
        Scheme::parse(stored).unwrap().verify(password.as_bytes())
    }

    #[test]
    fn mosquitto_hashes_verify() {
        assert!(check(MOSQUITTO_7, "secret"));
        assert!(!check(MOSQUITTO_7, "Secret"));
        assert!(check(MOSQUITTO_6, "hunter2"));
        assert!(!check(MOSQUITTO_6, "hunter3"));
    }

    #[test]
    fn argon2id_and_bcrypt_and_pbkdf2_verify() {
        let argon = hash_new(b"pw").unwrap();
        assert!(argon.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(check(&argon, "pw"));
        assert!(!check(&argon, "pW"));

        let bc = bcrypt::hash("pw", 4).unwrap();
        assert!(check(&bc, "pw"));
        assert!(!check(&bc, "px"));
        let long = "x".repeat(80);
        let bc_long = bcrypt::hash(&long, 4).unwrap();
        assert!(!check(&bc_long, &long), "over 72 bytes never matches");

        use password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let pb = pbkdf2::Pbkdf2
            .hash_password_customized(
                b"pw",
                Some(pbkdf2::Algorithm::Pbkdf2Sha256.ident()),
                None,
                pbkdf2::Params {
                    rounds: 1000,
                    output_length: 32,
                },
                &salt,
            )
            .unwrap()
            .to_string();
        assert!(pb.starts_with("$pbkdf2-sha256$i=1000"));
        assert!(check(&pb, "pw"));
        assert!(!check(&pb, "p"));
    }

    #[test]
    fn scram_verifiers_check_plain_passwords() {
        let v = scram_new(b"pencil").unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert!(check(&v, "pencil"));
        assert!(!check(&v, "pencils"));
        // RFC 7677's example: user "user", password "pencil".
        let rfc = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
                   WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
                   wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";
        assert!(check(rfc, "pencil"));
        assert!(!check(rfc, "pen"));
    }

    #[test]
    fn absurd_costs_and_unknown_formats_are_refused() {
        for stored in [
            "$7$99999999$x64vlE9tFDfUPVja$SzAZ",
            "$7$0$x64vlE9tFDfUPVja$SzAZ",
            "$2b$15$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
            "$argon2id$v=19$m=1048576,t=2,p=1$bW9hdC1kdW1teS1zYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=65536,t=32,p=1$bW9hdC1kdW1teS1zYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$pbkdf2-sha256$i=9000000,l=32$MDEyMzQ1Njc4OWFiY2RlZg$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$1$md5$whatever",
            "plaintext",
            "",
        ] {
            assert!(Scheme::parse(stored).is_err(), "{stored} accepted");
        }
        assert!(Scheme::parse(DEFAULT_DUMMY).is_ok());
    }

    #[tokio::test]
    async fn an_unknown_user_costs_a_hash_of_the_same_kind_and_never_matches() {
        let pool = PasswordPool::new(&PasswordGrant { pool_size: 1 });
        // Before any real hash: the argon2id default.
        assert!(matches!(pool.verify(None, b"".to_vec()).await, Ok(false)));
        assert!(matches!(
            pool.verify(Some(MOSQUITTO_7), b"secret".to_vec()).await,
            Ok(true)
        ));
        assert_eq!(
            pool.dummy.lock().as_deref(),
            Some(&Scheme::parse(MOSQUITTO_7).unwrap())
        );
        // The dummy is now alice's own hash, and her password still does not match it.
        assert!(matches!(
            pool.verify(None, b"secret".to_vec()).await,
            Ok(false)
        ));
        assert!(matches!(
            pool.verify(Some("$1$x$y"), b"x".to_vec()).await,
            Err(CapabilityError::Invalid(_))
        ));
    }

    /// Mosquitto's hashes (at its default cost) are checked inline; anything that may be slow
    /// goes to the pool. A pool with no free place shows which path a check took.
    #[tokio::test]
    async fn cheap_hashes_run_inline_and_slow_ones_on_the_pool() {
        for (stored, cheap) in [
            (MOSQUITTO_7, true),
            (MOSQUITTO_6, true),
            ("$7$257$x64vlE9tFDfUPVja$SzAZL9kw8opBaXYhXSXE", false),
        ] {
            assert_eq!(Scheme::parse(stored).unwrap().is_cheap(), cheap, "{stored}");
        }
        assert!(!Scheme::parse(&hash_new(b"pw").unwrap()).unwrap().is_cheap());
        assert!(
            !Scheme::parse(&bcrypt::hash("pw", 4).unwrap())
                .unwrap()
                .is_cheap()
        );

        let pool = PasswordPool::new(&PasswordGrant { pool_size: 1 });
        let _busy = pool.places.clone().acquire_owned().await.unwrap();
        assert!(matches!(
            pool.verify(Some(MOSQUITTO_7), b"secret".to_vec()).await,
            Ok(true)
        ));
        let argon = hash_new(b"pw").unwrap();
        let slow = pool.verify(Some(&argon), b"pw".to_vec());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), slow)
                .await
                .is_err(),
            "an argon2id check waits for a place"
        );
    }
}
