//! `sql`: users, password hashes, SCRAM verifiers and permissions from a database, through
//! queries the operator writes in the configuration, run by the broker on a connection it owns
//! (the `sql` capability: PostgreSQL or SQLite, parameters bound, read-only). See README.md
//! for the configuration reference.
//!
//! - `authenticate`: `password_query` gives the user's stored hash, checked by the broker (the
//!   `password` capability: argon2id, bcrypt, PBKDF2, Mosquitto's `$7$`, SCRAM verifiers), with
//!   a dummy hash for an unknown user so the time taken does not tell who exists. With MQTT 5
//!   enhanced authentication `SCRAM-SHA-256`, `scram_query` (or `password_query`) gives the
//!   verifier, and an unknown user gets a mock salt (the SDK's `scram`).
//! - `authorize-*` for its own users: the user must still exist (`password_query` returns a
//!   row), then `superuser_query` may allow everything, then `acl_query`'s rows decide with the
//!   SDK's `acl` model (static-acl's semantics). Allows are cached by the broker for
//!   `cache_seconds`: that is how long a removed user or rule may still be honoured.
//! - A database that is unreachable or slow makes every hook answer per `on_backend_error`:
//!   deny, or let the next plugin decide; never allow. Nothing is cached on the way, so
//!   answers come back with the database.
//!
//! Layout: `queries` holds the configured queries and reads their answers; this file turns
//! them into the hooks' answers.

mod queries;

use moat_plugin_sdk::acl::{self, Asker, DeliveryChecks, Otherwise, RuleSet, Wanted};
use moat_plugin_sdk::{
    AuthOutcome, CapabilityError, Client, Credentials, Denial, Hooks, Identity, Plugin, Publish,
    Reason, SubscribeVerdict, Subscription, Verdict, allow, kv, password, password_login, scram,
    sql, state,
};
use serde::Deserialize;
use sha2::Digest;

use queries::Query;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The connection's name in `[plugin.grants.sql]`.
    connection: String,
    password_query: String,
    acl_query: Option<String>,
    superuser_query: Option<String>,
    scram_query: Option<String>,
    #[serde(default = "yes")]
    scram: bool,
    #[serde(default)]
    unknown_user: Otherwise,
    #[serde(default)]
    on_backend_error: Otherwise,
    #[serde(default = "default_cache_seconds")]
    cache_seconds: u32,
    #[serde(default)]
    check_each_delivery: DeliveryChecks,
}

fn yes() -> bool {
    true
}

/// How long the broker may reuse an allow, so how long a removed user or rule may still be
/// honoured; a short default, since every uncached decision costs queries.
fn default_cache_seconds() -> u32 {
    30
}

struct Sql {
    connection: String,
    password: Query,
    acl: Option<Query>,
    superuser: Option<Query>,
    scram_query: Option<Query>,
    config: Config,
    /// Keys unknown users' mock SCRAM salts.
    mock_key: [u8; 32],
}

/// Session state that marks a client this plugin authenticated.
const MARK: u8 = 1;

/// Where the mock-salt key is kept, shared by every instance and generation.
const MOCK_KEY: &str = "scram-mock-key";

/// Why a question could not be answered: the database (unreachable, slow, refusing the
/// statement) or what it answered.
struct Failed(String);

impl From<CapabilityError> for Failed {
    fn from(e: CapabilityError) -> Failed {
        Failed(match e {
            CapabilityError::NotGranted => {
                "the connection is not granted (or the statement is not one the grant lists)".into()
            }
            CapabilityError::Timeout => "the database did not answer in time".into(),
            CapabilityError::Unavailable(why) => format!("the database is unavailable: {why}"),
            CapabilityError::Invalid(why) => format!("the query failed: {why}"),
            CapabilityError::TooLarge => "the answer is larger than the grant allows".into(),
            CapabilityError::QuotaExceeded => "quota exceeded".into(),
        })
    }
}

/// A topic no ACL row mentions.
fn no_rule() -> Verdict {
    Verdict::Deny(denial(Reason::NotAuthorized, "no rule allows it"))
}

fn denial(reason: Reason, message: &str) -> Denial {
    Denial {
        reason,
        message: Some(message.to_owned()),
    }
}

/// A key only this broker knows: random, kept in `kv` so every instance uses the same one;
/// without a `kv` grant, a digest of the configuration (stable, but guessable by whoever
/// knows the queries).
fn mock_key(config: &Config) -> [u8; 32] {
    if let Ok(Some(key)) = kv::get(MOCK_KEY)
        && let Ok(key) = <[u8; 32]>::try_from(key.as_slice())
    {
        return key;
    }
    let mut fresh = [0u8; 32];
    if getrandom::fill(&mut fresh).is_ok() && kv::set(MOCK_KEY, &fresh, None).is_ok() {
        // Another instance may have stored its own at the same moment: use what is kept.
        if let Ok(Some(key)) = kv::get(MOCK_KEY)
            && let Ok(key) = <[u8; 32]>::try_from(key.as_slice())
        {
            return key;
        }
    }
    moat_plugin_sdk::warn!(
        "sql: no kv grant; unknown users' SCRAM salts are keyed by the configuration"
    );
    let mut digest = sha2::Sha256::new();
    for q in [
        Some(&config.password_query),
        config.scram_query.as_ref(),
        config.acl_query.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        digest.update(q.as_bytes());
    }
    digest.update(config.connection.as_bytes());
    digest.finalize().into()
}

impl Sql {
    fn rows(
        &self,
        query: &Query,
        user: &str,
        client_id: &str,
    ) -> Result<Vec<Vec<sql::Value>>, Failed> {
        Ok(sql::query(
            &self.connection,
            &query.text,
            &query.params(user, client_id),
        )?
        .rows)
    }

    /// Whether the user exists (the query returned a row), and its stored hash (a NULL one
    /// is a user without a password, who cannot log in with one).
    fn hash(&self, user: &str, client_id: &str) -> Result<(bool, Option<String>), Failed> {
        let rows = self.rows(&self.password, user, client_id)?;
        Ok((
            !rows.is_empty(),
            queries::first_text(&rows).map_err(Failed)?,
        ))
    }

    /// The answer to give when the database could not answer.
    fn backend_auth(&self, user: &str, why: &Failed) -> AuthOutcome {
        moat_plugin_sdk::warn!(
            "sql: cannot check user {user:?}: {}; {}",
            why.0,
            self.fallback_said()
        );
        match self.config.on_backend_error {
            Otherwise::Deny => AuthOutcome::Deny(denial(Reason::ServerUnavailable, &why.0)),
            Otherwise::Next => AuthOutcome::Next,
        }
    }

    fn backend_verdict(&self, user: &str, why: &Failed) -> Verdict {
        moat_plugin_sdk::warn!(
            "sql: cannot decide for user {user:?}: {}; {}",
            why.0,
            self.fallback_said()
        );
        match self.config.on_backend_error {
            Otherwise::Deny => Verdict::Deny(denial(Reason::NotAuthorized, &why.0)),
            Otherwise::Next => Verdict::Next,
        }
    }

    fn fallback_said(&self) -> &'static str {
        match self.config.on_backend_error {
            Otherwise::Deny => "denied (on_backend_error = \"deny\")",
            Otherwise::Next => "passed to the next plugin (on_backend_error = \"next\")",
        }
    }

    /// A user's SCRAM verifier, for the SDK's exchange. Once the exchange has started
    /// (`started`), nobody else can finish it: an unknown user fails as a wrong password does,
    /// and a database that went away denies.
    fn verifier(&self, user: &str, client_id: &str, started: bool) -> scram::Lookup {
        let query = self.scram_query.as_ref().unwrap_or(&self.password);
        let rows = self.rows(query, user, client_id).map_err(|why| {
            match self.backend_auth(user, &why) {
                AuthOutcome::Next if started => {
                    AuthOutcome::Deny(denial(Reason::ServerUnavailable, &why.0))
                }
                outcome => outcome,
            }
        })?;
        if rows.is_empty() && self.config.unknown_user == Otherwise::Next && !started {
            return Err(AuthOutcome::Next);
        }
        match queries::first_text(&rows) {
            Ok(Some(text)) => Ok(scram::Verifier::parse(&text)),
            Ok(None) => Ok(None),
            Err(e) => Err(self.backend_auth(user, &Failed(e))),
        }
    }

    /// The user this plugin authenticated, if it did.
    fn own_user<'a>(&self, identity: &'a Identity) -> Option<&'a str> {
        (state::decode::<Self>(identity) == Some(MARK)).then_some(identity.principal.as_str())
    }

    /// What the database says about `user` now: `None` to go on to the rules, or the answer.
    fn settled(&self, user: &str, client_id: &str) -> Result<Option<Verdict>, Failed> {
        let (exists, _) = self.hash(user, client_id)?;
        if !exists {
            return Ok(Some(Verdict::Deny(denial(
                Reason::NotAuthorized,
                "the user was removed",
            ))));
        }
        if let Some(q) = &self.superuser
            && queries::truthy(&self.rows(q, user, client_id)?)
        {
            return Ok(Some(allow(self.config.cache_seconds)));
        }
        if self.acl.is_none() {
            // No ACL query: the plugin's users may do anything, as with static-acl's
            // password file alone.
            return Ok(Some(allow(self.config.cache_seconds)));
        }
        Ok(None)
    }

    /// The user's rules, from the ACL query.
    fn rules(&self, user: &str, client_id: &str) -> Result<RuleSet, Failed> {
        let mut set = RuleSet::default();
        if let Some(q) = &self.acl {
            let rules = queries::rules(&self.rows(q, user, client_id)?).map_err(Failed)?;
            set.users.insert(user.to_owned(), rules);
        }
        Ok(set)
    }

    fn topic(&self, client: &Client, identity: &Identity, topic: &str, wanted: Wanted) -> Verdict {
        let Some(user) = self.own_user(identity) else {
            return Verdict::Next;
        };
        let decided = self.settled(user, &client.client_id).and_then(|settled| {
            if let Some(v) = settled {
                return Ok(v);
            }
            let asker = Asker {
                username: Some(user),
                client_id: &client.client_id,
            };
            Ok(self
                .rules(user, &client.client_id)?
                .topic(asker, topic, wanted)
                .verdict(self.config.cache_seconds, no_rule()))
        });
        decided.unwrap_or_else(|why| self.backend_verdict(user, &why))
    }
}

impl Plugin for Sql {
    type Config = Config;
    type State = u8;

    const HOOKS: Hooks = Hooks::AUTHENTICATE
        .union(Hooks::AUTHORIZE_PUBLISH)
        .union(Hooks::AUTHORIZE_SUBSCRIBE)
        .union(Hooks::AUTHORIZE_DELIVER);

    fn new(config: Config) -> Result<Self, String> {
        if config.connection.is_empty() {
            return Err("`connection` names a connection of [plugin.grants.sql]".into());
        }
        let optional =
            |key: &str, q: &Option<String>| q.as_deref().map(|t| Query::new(key, t)).transpose();
        let sql = Sql {
            connection: config.connection.clone(),
            password: Query::new("password_query", &config.password_query)?,
            acl: optional("acl_query", &config.acl_query)?,
            superuser: optional("superuser_query", &config.superuser_query)?,
            scram_query: optional("scram_query", &config.scram_query)?,
            mock_key: if config.scram {
                mock_key(&config)
            } else {
                [0; 32]
            },
            config,
        };
        Ok(sql)
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        // Enhanced authentication other than SCRAM is some other plugin's business.
        if let Some(outcome) = scram::begin(
            self.config.scram,
            client,
            credentials,
            &self.mock_key,
            |user| self.verifier(user, &client.client_id, false),
        ) {
            return outcome;
        }
        // Clients without a user name are some other plugin's business.
        let Some(name) = client.username.as_deref() else {
            return AuthOutcome::Next;
        };
        let (exists, hash) = match self.hash(name, &client.client_id) {
            Ok(found) => found,
            Err(why) => return self.backend_auth(name, &why),
        };
        let given = credentials.password.as_deref().unwrap_or_default();
        // An unknown user's check costs what a known user's does (the broker's dummy hash).
        password_login(
            password::verify(hash.as_deref(), given),
            name,
            exists,
            self.config.unknown_user == Otherwise::Next,
            || state::identity::<Self>(name, Vec::new(), &MARK),
        )
    }

    fn continue_auth(&self, client: &Client, state: &[u8], data: &[u8]) -> AuthOutcome {
        // The verifier is looked up again: a user removed between the two steps fails.
        scram::finish(
            state,
            data,
            &self.mock_key,
            |user| self.verifier(user, &client.client_id, true),
            |user| state::identity::<Self>(user, Vec::new(), &MARK),
        )
    }

    fn authorize_publish(&self, client: &Client, identity: &Identity, msg: &Publish) -> Verdict {
        self.topic(client, identity, &msg.topic, Wanted::Write)
    }

    fn authorize_subscribe(
        &self,
        client: &Client,
        identity: &Identity,
        subscription: &Subscription,
    ) -> SubscribeVerdict {
        let Some(user) = self.own_user(identity) else {
            return SubscribeVerdict::Next;
        };
        let always = self.config.check_each_delivery == DeliveryChecks::Always;
        let decided = self.settled(user, &client.client_id).and_then(|settled| {
            if let Some(v) = settled {
                return Ok(acl::as_subscribe(v, always));
            }
            let asker = Asker {
                username: Some(user),
                client_id: &client.client_id,
            };
            Ok(self
                .rules(user, &client.client_id)?
                .subscribe(asker, &subscription.filter)
                .verdict(always, acl::as_subscribe(no_rule(), false)))
        });
        decided.unwrap_or_else(|why| acl::as_subscribe(self.backend_verdict(user, &why), false))
    }

    fn authorize_deliver(&self, client: &Client, identity: &Identity, topic: &str) -> Verdict {
        self.topic(client, identity, topic, Wanted::Read)
    }
}

moat_plugin_sdk::export_plugin!(Sql);
