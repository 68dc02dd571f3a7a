//! The plugin's `[plugin.config]` table (README.md lists every key with an example), and the
//! checks `init` makes on it.

use std::collections::BTreeMap;

use moat_plugin_sdk::topic;
use serde::Deserialize;

/// What to answer when the plugin cannot decide for itself. Never an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Otherwise {
    #[default]
    Deny,
    Next,
}

/// `user_scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Base,
    OneLevel,
    #[default]
    Subtree,
}

/// One role's topic permissions: filters with `%u` (user name) and `%c` (client identifier).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The directory's name in `[plugin.grants.ldap]`.
    pub directory: String,
    /// Simple bind: the user's DN, `{username}` replaced by the escaped user name.
    pub user_dn: Option<String>,
    /// Search-then-bind: where the service account looks for the user...
    pub user_base: Option<String>,
    /// ...with this filter (`{username}` replaced by the escaped user name)...
    pub user_filter: String,
    /// ...in this scope.
    pub user_scope: Scope,
    /// Groups as entries (e.g. groupOfNames) found under this base...
    pub group_base: Option<String>,
    /// ...with this filter (`{dn}` replaced by the escaped user DN).
    pub group_filter: String,
    /// Groups as an attribute of the user's entry (e.g. `memberOf`), instead.
    pub member_of_attribute: Option<String>,
    /// Group (its name, the value of its first RDN, or its whole DN) to roles.
    pub groups: BTreeMap<String, Vec<String>>,
    /// Roles every user of the directory has.
    pub default_roles: Vec<String>,
    /// Role to topic permissions.
    pub roles: BTreeMap<String, Permissions>,
    /// A user the search does not find (search-then-bind): `deny` or `next`.
    pub unknown_user: Otherwise,
    /// A topic no role of the user allows: `deny` or `next`.
    pub no_match: Otherwise,
    /// The directory cannot be reached or does not answer in time: `deny` or `next`.
    pub on_backend_error: Otherwise,
    /// How long the broker may reuse an allow.
    pub cache_seconds: u32,
    /// How long a user's entry and groups, as last read, stand before they are read again
    /// (0: only at login).
    pub recheck_seconds: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            directory: String::new(),
            user_dn: None,
            user_base: None,
            user_filter: "(uid={username})".into(),
            user_scope: Scope::Subtree,
            group_base: None,
            group_filter: "(&(objectClass=groupOfNames)(member={dn}))".into(),
            member_of_attribute: None,
            groups: BTreeMap::new(),
            default_roles: Vec::new(),
            roles: BTreeMap::new(),
            unknown_user: Otherwise::Deny,
            no_match: Otherwise::Deny,
            on_backend_error: Otherwise::Deny,
            cache_seconds: 60,
            recheck_seconds: 60,
        }
    }
}

/// How a user is found.
#[derive(Debug, Clone)]
pub enum Login {
    /// Bind as the DN the template names.
    Template(String),
    /// Find the DN with the service account, then bind as it.
    Search {
        base: String,
        filter: String,
        scope: Scope,
    },
}

/// Where a user's groups come from.
#[derive(Debug, Clone)]
pub enum Groups {
    None,
    Entries { base: String, filter: String },
    Attribute(String),
}

impl Config {
    /// Checks the settings and splits them into how users log in and where groups come from.
    pub fn check(&self) -> Result<(Login, Groups), String> {
        if self.directory.is_empty() {
            return Err(
                "directory: name the directory granted under [plugin.grants.ldap.NAME]".into(),
            );
        }
        let login = match (&self.user_dn, &self.user_base) {
            (Some(_), Some(_)) => {
                return Err(
                    "give `user_dn` (simple bind) or `user_base` (search-then-bind), not both"
                        .into(),
                );
            }
            (None, None) => {
                return Err(
                    "give `user_dn` (e.g. \"uid={username},ou=people,dc=example,dc=org\") or \
                     `user_base` and `user_filter` (search-then-bind)"
                        .into(),
                );
            }
            (Some(t), None) => {
                if !t.contains("{username}") || !t.contains('=') {
                    return Err(format!(
                        "user_dn: {t:?} must be a DN with a {{username}} placeholder"
                    ));
                }
                Login::Template(t.clone())
            }
            (None, Some(base)) => {
                let f = &self.user_filter;
                if !f.contains("{username}") || !f.starts_with('(') || !f.ends_with(')') {
                    return Err(format!(
                        "user_filter: {f:?} must be a filter in parentheses with a {{username}} \
                         placeholder"
                    ));
                }
                Login::Search {
                    base: base.clone(),
                    filter: f.clone(),
                    scope: self.user_scope,
                }
            }
        };
        let groups = match (&self.group_base, &self.member_of_attribute) {
            (Some(_), Some(_)) => {
                return Err(
                    "give `group_base` (group entries) or `member_of_attribute`, not both".into(),
                );
            }
            (Some(base), None) => {
                let f = &self.group_filter;
                if !f.contains("{dn}") || !f.starts_with('(') || !f.ends_with(')') {
                    return Err(format!(
                        "group_filter: {f:?} must be a filter in parentheses with a {{dn}} \
                         placeholder"
                    ));
                }
                Groups::Entries {
                    base: base.clone(),
                    filter: f.clone(),
                }
            }
            (None, Some(attribute)) if attribute.is_empty() => {
                return Err("member_of_attribute: must not be empty".into());
            }
            (None, Some(attribute)) => Groups::Attribute(attribute.clone()),
            (None, None) if !self.groups.is_empty() => {
                return Err(
                    "groups: give `group_base` or `member_of_attribute` to find a user's groups"
                        .into(),
                );
            }
            (None, None) => Groups::None,
        };
        let named = self
            .groups
            .iter()
            .flat_map(|(g, roles)| roles.iter().map(move |r| (format!("groups.{g}"), r)))
            .chain(
                self.default_roles
                    .iter()
                    .map(|r| ("default_roles".to_owned(), r)),
            );
        for (at, role) in named {
            if !self.roles.contains_key(role) {
                return Err(format!("{at}: no role {role:?} in `roles`"));
            }
        }
        for (role, p) in &self.roles {
            for (kind, filters) in [("publish", &p.publish), ("subscribe", &p.subscribe)] {
                for f in filters {
                    topic::validate_topic_filter(f)
                        .map_err(|e| format!("roles.{role}.{kind}: {f:?}: {e}"))?;
                }
            }
        }
        Ok((login, groups))
    }
}
