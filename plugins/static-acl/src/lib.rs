//! `static-acl`: users and permissions from files: Mosquitto's `password_file` and `acl_file`
//! as they are, and/or a TOML file with users, roles and per-role permissions. See README.md
//! for the configuration reference.
//!
//! The files come through the `files` capability (the broker reads them and starts a new
//! generation of this plugin when one changes, dropping cached decisions), and passwords are
//! checked by the broker through the `password` capability (argon2id, bcrypt, PBKDF2,
//! Mosquitto's `$7$` and `$6$`), which checks a dummy hash for an unknown user so the time
//! taken does not tell whether a user exists.
//!
//! Users whose entry is a SCRAM-SHA-256 verifier (`moat passwd --scram`) may also log in with
//! MQTT 5 enhanced authentication, method `SCRAM-SHA-256` (`scram`).
//!
//! Layout: `mosquitto` reads Mosquitto's two formats, `native` the TOML form, both into the
//! SDK's `acl` model, which takes the decisions; the SDK's `scram` is the SCRAM exchange; this
//! file turns them into the hooks' answers.

mod mosquitto;
mod native;

use std::collections::HashMap;

use moat_plugin_sdk::acl::{self, Asker, DeliveryChecks, Otherwise, RuleSet, Wanted};
use moat_plugin_sdk::{
    AuthOutcome, Client, Credentials, Denial, Hooks, Identity, Plugin, Publish, Reason,
    SubscribeVerdict, Subscription, Verdict, allow, authenticated, files, password, password_login,
    scram, state,
};
use serde::Deserialize;
use sha2::Digest;

/// `anonymous`: clients without a user name.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Anonymous {
    #[default]
    Next,
    Deny,
    Allow,
}

/// `scope`: whose publishes and subscriptions the rules decide.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Scope {
    #[default]
    All,
    Own,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Granted file names (`[plugin.grants] files`).
    password_file: Option<String>,
    acl_file: Option<String>,
    users_file: Option<String>,
    #[serde(default)]
    unknown_user: Otherwise,
    #[serde(default)]
    anonymous: Anonymous,
    #[serde(default)]
    scope: Scope,
    #[serde(default)]
    no_match: Otherwise,
    #[serde(default = "default_cache_seconds")]
    cache_seconds: u32,
    #[serde(default)]
    check_each_delivery: DeliveryChecks,
    /// Answer MQTT 5 enhanced authentication with the method `SCRAM-SHA-256`.
    #[serde(default = "yes")]
    scram: bool,
}

fn yes() -> bool {
    true
}

/// Allows may be reused this long: a change to the files drops them at once anyway.
fn default_cache_seconds() -> u32 {
    600
}

struct User {
    hash: Option<String>,
    /// The same entry, when it is a SCRAM verifier.
    scram: Option<scram::Verifier>,
    roles: Vec<String>,
}

impl User {
    fn new(hash: Option<String>, roles: Vec<String>) -> Result<User, String> {
        let scram = match &hash {
            Some(h) if h.starts_with("SCRAM-SHA-256$") => Some(scram::Verifier::parse(h).ok_or(
                "a SCRAM verifier is `SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY`",
            )?),
            _ => None,
        };
        Ok(User { hash, scram, roles })
    }
}

struct StaticAcl {
    config: Config,
    users: HashMap<String, User>,
    rules: RuleSet,
    /// Whether any permission is configured; without, the plugin's own users may do anything
    /// (Mosquitto with a password file and no ACL file).
    acl: bool,
    /// Keys the mock SCRAM salts of unknown users: a digest of the files, which only the
    /// broker's operator knows.
    mock_key: [u8; 32],
}

/// Session state that marks a client this plugin authenticated: a user, or an anonymous
/// client (`anonymous = "allow"`).
const MARK: u8 = 1;
const MARK_ANONYMOUS: u8 = 2;

/// The principal of an anonymous client this plugin let in.
const ANONYMOUS: &str = "anonymous";

fn read_granted(name: &str) -> Result<String, String> {
    let bytes =
        files::read(name).map_err(|e| format!("cannot read the granted file {name:?}: {e:?}"))?;
    String::from_utf8(bytes).map_err(|_| format!("the granted file {name:?} is not UTF-8"))
}

impl StaticAcl {
    /// A user's SCRAM verifier, for the SDK's exchange.
    fn verifier(&self, user: &str) -> scram::Lookup {
        match self.users.get(user) {
            Some(u) => Ok(u.scram.clone()),
            None if self.config.unknown_user == Otherwise::Next => Err(AuthOutcome::Next),
            None => Ok(None),
        }
    }
}

fn denial(reason: Reason, message: &str) -> Denial {
    Denial {
        reason,
        message: Some(message.to_owned()),
    }
}

impl StaticAcl {
    fn mine(&self, identity: &Identity) -> bool {
        matches!(state::decode::<Self>(identity), Some(MARK | MARK_ANONYMOUS))
    }

    /// Who asks: for this plugin's own users the principal it gave them (a SCRAM login may
    /// carry no MQTT user name), for other clients their MQTT user name, as Mosquitto does.
    fn asker<'a>(&self, client: &'a Client, identity: &'a Identity) -> Asker<'a> {
        let username = match state::decode::<Self>(identity) {
            Some(MARK) => Some(identity.principal.as_str()),
            Some(MARK_ANONYMOUS) => None,
            _ => client.username.as_deref(),
        };
        Asker {
            username,
            client_id: &client.client_id,
        }
    }

    /// The answer before any rule is looked at, if there is one: another plugin's client under
    /// `scope = "own"`, a user removed from the files since it logged in, or no rules at all.
    fn settled(&self, client: &Client, identity: &Identity) -> Option<Verdict> {
        let mine = self.mine(identity);
        if self.config.scope == Scope::Own && !mine {
            return Some(Verdict::Next);
        }
        if mine
            && let Some(user) = self.asker(client, identity).username
            && !self.users.contains_key(user)
        {
            return Some(Verdict::Deny(denial(
                Reason::NotAuthorized,
                "the user was removed",
            )));
        }
        if !self.acl {
            return Some(if mine {
                allow(self.config.cache_seconds)
            } else {
                Verdict::Next
            });
        }
        None
    }

    fn no_match(&self) -> Verdict {
        match self.config.no_match {
            Otherwise::Deny => Verdict::Deny(denial(Reason::NotAuthorized, "no rule allows it")),
            Otherwise::Next => Verdict::Next,
        }
    }

    fn topic(&self, client: &Client, identity: &Identity, topic: &str, wanted: Wanted) -> Verdict {
        if let Some(v) = self.settled(client, identity) {
            return v;
        }
        self.rules
            .topic(self.asker(client, identity), topic, wanted)
            .verdict(self.config.cache_seconds, self.no_match())
    }
}

impl Plugin for StaticAcl {
    type Config = Config;
    type State = u8;

    const HOOKS: Hooks = Hooks::AUTHENTICATE
        .union(Hooks::AUTHORIZE_PUBLISH)
        .union(Hooks::AUTHORIZE_SUBSCRIBE)
        .union(Hooks::AUTHORIZE_DELIVER);

    fn new(config: Config) -> Result<Self, String> {
        if config.password_file.is_none()
            && config.acl_file.is_none()
            && config.users_file.is_none()
        {
            return Err(
                "give at least one of `password_file`, `acl_file` and `users_file` (each the \
                 name of a file granted under [plugin.grants] files)"
                    .into(),
            );
        }
        let mut users: HashMap<String, User> = HashMap::new();
        let mut rules = RuleSet::default();
        let mut acl = false;
        let mut digest = sha2::Sha256::new();
        if let Some(name) = &config.password_file {
            let text = read_granted(name)?;
            digest.update(&text);
            for (user, hash) in mosquitto::parse_passwords(name, &text)? {
                let entry = User::new(Some(hash), Vec::new())
                    .map_err(|e| format!("{name}: user {user:?}: {e}"))?;
                users.insert(user, entry);
            }
        }
        if let Some(name) = &config.acl_file {
            mosquitto::parse_acl(name, &read_granted(name)?, &mut rules)?;
            acl = true;
        }
        if let Some(name) = &config.users_file {
            let text = read_granted(name)?;
            digest.update(&text);
            let (native_users, has_roles) = native::parse(name, &text, &mut rules)?;
            acl |= has_roles;
            for u in native_users {
                let at = |e: &str| format!("{name}: users.{}: {e}", u.name);
                let old = users.remove(&u.name);
                let hash = match (old.and_then(|o| o.hash), u.password) {
                    (Some(_), Some(_)) => {
                        return Err(at("a password is also in the password file; keep one"));
                    }
                    (a, b) => a.or(b),
                };
                let entry = User::new(hash, u.roles).map_err(|e| at(&e))?;
                users.insert(u.name.clone(), entry);
            }
        }
        moat_plugin_sdk::debug!(
            "static-acl: {} users, permissions {}",
            users.len(),
            if acl {
                "from the files"
            } else {
                "unrestricted for its users"
            }
        );
        Ok(StaticAcl {
            config,
            users,
            rules,
            acl,
            mock_key: digest.finalize().into(),
        })
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        // Enhanced authentication other than SCRAM is some other plugin's business.
        if let Some(outcome) = scram::begin(
            self.config.scram,
            client,
            credentials,
            &self.mock_key,
            |user| self.verifier(user),
        ) {
            return outcome;
        }
        let Some(name) = client.username.as_deref() else {
            return match self.config.anonymous {
                Anonymous::Next => AuthOutcome::Next,
                Anonymous::Deny => {
                    AuthOutcome::Deny(denial(Reason::NotAuthorized, "a user name is required"))
                }
                Anonymous::Allow => authenticated(state::identity::<Self>(
                    ANONYMOUS,
                    Vec::new(),
                    &MARK_ANONYMOUS,
                )),
            };
        };
        let user = self.users.get(name);
        let hash = user.and_then(|u| u.hash.as_deref());
        let given = credentials.password.as_deref().unwrap_or_default();
        // An unknown user's check costs what a known user's does (the broker's dummy hash).
        password_login(
            password::verify(hash, given),
            name,
            hash.is_some(),
            self.config.unknown_user == Otherwise::Next,
            || {
                let roles = user.map(|u| u.roles.clone()).unwrap_or_default();
                state::identity::<Self>(name, roles, &MARK)
            },
        )
    }

    fn continue_auth(&self, _client: &Client, state: &[u8], data: &[u8]) -> AuthOutcome {
        // A user removed between the two steps fails as an unknown one.
        scram::finish(
            state,
            data,
            &self.mock_key,
            |user| Ok(self.users.get(user).and_then(|u| u.scram.clone())),
            |user| {
                let roles = self
                    .users
                    .get(&user)
                    .map(|u| u.roles.clone())
                    .unwrap_or_default();
                state::identity::<Self>(user, roles, &MARK)
            },
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
        let always = self.config.check_each_delivery == DeliveryChecks::Always;
        if let Some(settled) = self.settled(client, identity) {
            return acl::as_subscribe(settled, always);
        }
        let no_match = acl::as_subscribe(self.no_match(), false);
        self.rules
            .subscribe(self.asker(client, identity), &subscription.filter)
            .verdict(always, no_match)
    }

    fn authorize_deliver(&self, client: &Client, identity: &Identity, topic: &str) -> Verdict {
        self.topic(client, identity, topic, Wanted::Read)
    }
}

moat_plugin_sdk::export_plugin!(StaticAcl);
