//! `ldap`: clients authenticated against an LDAP directory, their groups mapped to roles and
//! the roles to topic permissions. See README.md for the configuration reference.
//!
//! The directory is reached through the broker's `ldap` capability (the broker owns the
//! connections, TLS and timeouts; this plugin only names the directory the grant calls
//! `directory`). A login is one of:
//! - **simple bind**: the user's DN from the `user_dn` template, the user name escaped as a DN
//!   value (RFC 4514), then a bind as that DN;
//! - **search-then-bind**: the service account searches `user_base` with `user_filter`, the
//!   user name escaped as a filter value (RFC 4515); exactly one entry must match, and the
//!   user binds as its DN.
//!
//! An empty password is refused here and by the broker: it would be an unauthenticated bind.
//! The user's groups (entries under `group_base` naming the user, or the values of
//! `member_of_attribute` on the user's entry) map to roles through `groups`; every role's
//! `publish` and `subscribe` filters, with `%u` and `%c` filled in, are what the client may do.
//!
//! **Revocation.** The session remembers the user's DN and roles; the authorize hooks use the
//! roles as last read from the directory, which stand `recheck_seconds` (kept in `kv`, shared
//! by the plugin's instances), then are read again. A user removed from the directory, or from
//! a group, is refused within `recheck_seconds + cache_seconds` (the broker reuses an allow for
//! `cache_seconds`); a new login sees the change at once. Subscriptions are granted with a
//! check of each delivery, so this holds for messages already subscribed to as well.
//!
//! **Backend down.** A directory that cannot be reached or does not answer in time gives
//! `on_backend_error`: deny (0x88 Server unavailable at login) or next; never an allow. Each
//! call tries the directory again, so the plugin recovers as soon as it is back.
//!
//! Layout: `config` (the settings and their checks), the directory calls and the hooks here.

mod config;

use moat_plugin_sdk::ldap_text::{dn_value, fill, filter_value, first_rdn_value};
use moat_plugin_sdk::{
    AuthOutcome, CapabilityError, Client, Credentials, Denial, Hooks, Identity, Plugin, Publish,
    Reason, SubscribeGrant, SubscribeVerdict, Subscription, Verdict, allow, authenticated, kv,
    ldap, state, topic,
};
use serde::{Deserialize, Serialize};

use config::{Config, Groups, Login, Otherwise, Permissions, Scope};

/// The broker's cap on roles per identity (see the WIT contract).
const MAX_ROLES: usize = 64;
/// Longest user name looked up in the directory.
const MAX_USERNAME_BYTES: usize = 256;
/// Ask for no attributes (RFC 4511 section 4.5.1.8).
const NO_ATTRIBUTES: &str = "1.1";

struct LdapPlugin {
    config: Config,
    login: Login,
    groups: Groups,
}

/// What a session carries: the user's DN and the roles read at login.
#[derive(Debug, Serialize, Deserialize)]
struct Session {
    dn: String,
    roles: Vec<String>,
}

/// Why a login or a recheck could not be decided by the directory's answer.
struct Backend(CapabilityError);

/// Which permissions a question is about.
#[derive(Clone, Copy)]
enum Kind {
    Publish,
    Subscribe,
}

impl Kind {
    fn filters(self, p: &Permissions) -> &[String] {
        match self {
            Kind::Publish => &p.publish,
            Kind::Subscribe => &p.subscribe,
        }
    }
}

impl Plugin for LdapPlugin {
    type Config = Config;
    type State = Session;

    const HOOKS: Hooks = Hooks::AUTHENTICATE
        .union(Hooks::AUTHORIZE_PUBLISH)
        .union(Hooks::AUTHORIZE_SUBSCRIBE)
        .union(Hooks::AUTHORIZE_DELIVER);
    const STATE_VERSION: u32 = 1;

    fn new(config: Config) -> Result<Self, String> {
        let (login, groups) = config.check()?;
        Ok(LdapPlugin {
            config,
            login,
            groups,
        })
    }

    fn authenticate(&self, client: &Client, credentials: &Credentials) -> AuthOutcome {
        // Enhanced authentication is some other plugin's business, and so are clients
        // without a user name.
        if credentials.auth_method.is_some() {
            return AuthOutcome::Next;
        }
        let Some(username) = client.username.as_deref() else {
            return AuthOutcome::Next;
        };
        let password = credentials.password.as_deref().unwrap_or_default();
        if password.is_empty() {
            return refuse(
                Reason::BadCredentials,
                "an empty password is refused (it would be an unauthenticated bind)",
            );
        }
        if username.is_empty() || username.len() > MAX_USERNAME_BYTES {
            return refuse(Reason::BadCredentials, "bad user name or password");
        }
        match self.login(username, password) {
            Ok(outcome) => outcome,
            Err(Backend(e)) => {
                moat_plugin_sdk::warn!(
                    "ldap: cannot check {username:?}: the directory {:?} failed: {e:?}",
                    self.config.directory
                );
                match self.config.on_backend_error {
                    Otherwise::Deny => {
                        refuse(Reason::ServerUnavailable, "the directory is unavailable")
                    }
                    Otherwise::Next => AuthOutcome::Next,
                }
            }
        }
    }

    fn authorize_publish(&self, client: &Client, identity: &Identity, msg: &Publish) -> Verdict {
        self.decide(client, identity, Kind::Publish, |f| {
            topic::matches(f, &msg.topic)
        })
    }

    fn authorize_subscribe(
        &self,
        client: &Client,
        identity: &Identity,
        subscription: &Subscription,
    ) -> SubscribeVerdict {
        let verdict = self.decide(client, identity, Kind::Subscribe, |f| {
            topic::filter_within(f, &subscription.filter)
        });
        match verdict {
            // Each delivery is checked so that a revoked role also stops what was subscribed.
            Verdict::Allow(_) => SubscribeVerdict::Allow(SubscribeGrant {
                check_each_delivery: self.config.recheck_seconds > 0,
            }),
            Verdict::Deny(d) => SubscribeVerdict::Deny(d),
            Verdict::Next => SubscribeVerdict::Next,
        }
    }

    fn authorize_deliver(&self, client: &Client, identity: &Identity, topic: &str) -> Verdict {
        self.decide(client, identity, Kind::Subscribe, |f| {
            topic::matches(f, topic)
        })
    }
}

impl LdapPlugin {
    /// Finds the user, binds as them, and reads their groups.
    fn login(&self, username: &str, password: &[u8]) -> Result<AuthOutcome, Backend> {
        let directory = &self.config.directory;
        let (dn, found_groups) = match &self.login {
            Login::Template(template) => (fill(template, "username", &dn_value(username)), None),
            Login::Search {
                base,
                filter,
                scope,
            } => {
                let filter = fill(filter, "username", &filter_value(username));
                let attributes = match &self.groups {
                    Groups::Attribute(a) => vec![a.clone()],
                    _ => vec![NO_ATTRIBUTES.to_owned()],
                };
                let entries =
                    ldap::search(directory, base, wit_scope(*scope), &filter, &attributes)
                        .map_err(Backend)?;
                match entries.as_slice() {
                    [] => {
                        return Ok(match self.config.unknown_user {
                            Otherwise::Deny => {
                                refuse(Reason::BadCredentials, "bad user name or password")
                            }
                            Otherwise::Next => AuthOutcome::Next,
                        });
                    }
                    [entry] => {
                        let groups = match &self.groups {
                            Groups::Attribute(a) => Some(values(entry, a)),
                            _ => None,
                        };
                        (entry.dn.clone(), groups)
                    }
                    _ => {
                        moat_plugin_sdk::warn!(
                            "ldap: {} entries match the user {username:?}; exactly one must",
                            entries.len()
                        );
                        return Ok(refuse(Reason::BadCredentials, "bad user name or password"));
                    }
                }
            }
        };
        match ldap::bind(directory, &dn, password) {
            Ok(true) => {}
            Ok(false) => return Ok(refuse(Reason::BadCredentials, "bad user name or password")),
            // A DN the directory finds malformed: nobody can log in as it.
            Err(CapabilityError::Invalid(why)) => {
                moat_plugin_sdk::debug!("ldap: the bind as {dn:?} was refused: {why}");
                return Ok(refuse(Reason::BadCredentials, "bad user name or password"));
            }
            Err(e) => return Err(Backend(e)),
        }
        let groups = match found_groups {
            Some(g) => g,
            None => match self.lookup(&dn, false)? {
                Some(g) => g,
                None => {
                    moat_plugin_sdk::warn!(
                        "ldap: {dn:?} bound, but the service account cannot read its entry"
                    );
                    return Ok(refuse(
                        Reason::NotAuthorized,
                        "the user's entry is not readable",
                    ));
                }
            },
        };
        let roles = self.roles_of(&groups);
        remember(&dn, &roles, self.config.recheck_seconds);
        let session = Session {
            dn,
            roles: roles.clone(),
        };
        Ok(authenticated(state::identity::<Self>(
            username, roles, &session,
        )))
    }

    /// The groups of the user at `dn`, or `None` if the entry is gone. With `check_entry`
    /// the entry's existence is checked even when the groups are separate entries.
    fn lookup(&self, dn: &str, check_entry: bool) -> Result<Option<Vec<String>>, Backend> {
        let directory = &self.config.directory;
        let own_entry = |attributes: Vec<String>| {
            ldap::search(
                directory,
                dn,
                ldap::Scope::Base,
                "(objectClass=*)",
                &attributes,
            )
            .map_err(Backend)
        };
        match &self.groups {
            Groups::Attribute(a) => {
                let entries = own_entry(vec![a.clone()])?;
                Ok(entries.first().map(|e| values(e, a)))
            }
            Groups::None => {
                let entries = own_entry(vec![NO_ATTRIBUTES.to_owned()])?;
                Ok((!entries.is_empty()).then(Vec::new))
            }
            Groups::Entries { base, filter } => {
                if check_entry && own_entry(vec![NO_ATTRIBUTES.to_owned()])?.is_empty() {
                    return Ok(None);
                }
                let filter = fill(filter, "dn", &filter_value(dn));
                let groups = ldap::search(
                    directory,
                    base,
                    ldap::Scope::Subtree,
                    &filter,
                    &[NO_ATTRIBUTES.to_owned()],
                )
                .map_err(Backend)?;
                Ok(Some(groups.into_iter().map(|e| e.dn).collect()))
            }
        }
    }

    /// The roles of a member of `groups`: the default roles and those `groups` maps them to.
    fn roles_of(&self, groups: &[String]) -> Vec<String> {
        let mut roles = self.config.default_roles.clone();
        for (key, mapped) in &self.config.groups {
            let member = groups.iter().any(|g| {
                if key.contains('=') {
                    g.eq_ignore_ascii_case(key)
                } else if g.contains('=') {
                    first_rdn_value(g).is_some_and(|name| name.eq_ignore_ascii_case(key))
                } else {
                    // An attribute holding plain group names.
                    g.eq_ignore_ascii_case(key)
                }
            });
            if member {
                roles.extend(mapped.iter().cloned());
            }
        }
        roles.sort();
        roles.dedup();
        roles.truncate(MAX_ROLES);
        roles
    }

    /// The session's roles as they stand now: as last read (kv) if that is recent enough,
    /// else read again from the directory. `Err` carries the verdict when there are none.
    fn current_roles(&self, session: Session) -> Result<Vec<String>, Verdict> {
        if self.config.recheck_seconds == 0 {
            return Ok(session.roles);
        }
        if let Ok(Some(bytes)) = kv::get(&kv_key(&session.dn))
            && let Ok(roles) = serde_json::from_slice::<Vec<String>>(&bytes)
        {
            return Ok(roles);
        }
        match self.lookup(&session.dn, true) {
            Ok(Some(groups)) => {
                let roles = self.roles_of(&groups);
                remember(&session.dn, &roles, self.config.recheck_seconds);
                Ok(roles)
            }
            Ok(None) => Err(Verdict::Deny(not_authorized(
                "the user is no longer in the directory",
            ))),
            Err(Backend(e)) => {
                moat_plugin_sdk::warn!(
                    "ldap: cannot recheck {:?}: the directory {:?} failed: {e:?}",
                    session.dn,
                    self.config.directory
                );
                Err(match self.config.on_backend_error {
                    Otherwise::Deny => {
                        Verdict::Deny(not_authorized("the directory is unavailable"))
                    }
                    Otherwise::Next => Verdict::Next,
                })
            }
        }
    }

    /// Allows if a filter of the session's roles passes `check`, with `%u` and `%c` filled in.
    fn decide(
        &self,
        client: &Client,
        identity: &Identity,
        kind: Kind,
        check: impl Fn(&str) -> bool,
    ) -> Verdict {
        // Another plugin's client.
        let Some(session) = state::decode::<Self>(identity) else {
            return Verdict::Next;
        };
        let roles = match self.current_roles(session) {
            Ok(roles) => roles,
            Err(verdict) => return verdict,
        };
        let allowed = roles
            .iter()
            .filter_map(|r| self.config.roles.get(r))
            .flat_map(|p| kind.filters(p))
            .any(|pattern| {
                let filter = topic::expand_pattern(pattern, |name| match name {
                    "username" => Some(identity.principal.as_str()),
                    "client_id" => Some(client.client_id.as_str()),
                    _ => None,
                });
                filter.is_some_and(|f| check(&f))
            });
        if allowed {
            return allow(self.config.cache_seconds);
        }
        match self.config.no_match {
            Otherwise::Deny => Verdict::Deny(not_authorized("no role of the user allows it")),
            Otherwise::Next => Verdict::Next,
        }
    }
}

fn wit_scope(scope: Scope) -> ldap::Scope {
    match scope {
        Scope::Base => ldap::Scope::Base,
        Scope::OneLevel => ldap::Scope::OneLevel,
        Scope::Subtree => ldap::Scope::Subtree,
    }
}

/// The values of `attribute` (names compare without case, as LDAP's do).
fn values(entry: &ldap::Entry, attribute: &str) -> Vec<String> {
    entry
        .attributes
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(attribute))
        .flat_map(|(_, v)| v.iter().cloned())
        .collect()
}

fn kv_key(dn: &str) -> String {
    format!("roles:{dn}")
}

/// Keeps `roles` as the user's for `seconds` (shared by the plugin's instances). Without a
/// `kv` grant nothing is kept and every recheck reads the directory.
fn remember(dn: &str, roles: &[String], seconds: u32) {
    if seconds == 0 {
        return;
    }
    if let Ok(bytes) = serde_json::to_vec(roles) {
        let _ = kv::set(&kv_key(dn), &bytes, Some(seconds));
    }
}

fn refuse(reason: Reason, message: &str) -> AuthOutcome {
    AuthOutcome::Deny(Denial {
        reason,
        message: Some(message.to_owned()),
    })
}

fn not_authorized(message: &str) -> Denial {
    Denial {
        reason: Reason::NotAuthorized,
        message: Some(message.to_owned()),
    }
}

moat_plugin_sdk::export_plugin!(LdapPlugin);
