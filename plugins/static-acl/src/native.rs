//! The native form: one TOML file with users, roles and each role's permissions.
//!
//! ```toml
//! # Roles of every client with a user name, and of clients without one (both optional).
//! default_roles = ["everyone"]
//! anonymous_roles = []
//!
//! [users.alice]
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."   # optional with a password_file
//! roles = ["sensor"]
//!
//! [roles.sensor]
//! read = ["sensors/#"]
//! write = ["sensors/%u/#"]       # %u: the user name, %c: the client identifier
//! readwrite = []
//! deny = ["sensors/secret/#"]    # weighed before any grant
//!
//! [roles.everyone]
//! read = ["public/#"]
//! ```
//!
//! Every filter may use `%u` and `%c` for a whole level. Unknown keys, unknown roles and
//! invalid filters are errors naming the file and the key.

use std::collections::BTreeMap;

use serde::Deserialize;

use moat_plugin_sdk::acl::{Access, Rule, RuleSet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    default_roles: Vec<String>,
    #[serde(default)]
    anonymous_roles: Vec<String>,
    #[serde(default)]
    users: BTreeMap<String, User>,
    #[serde(default)]
    roles: BTreeMap<String, Role>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    password: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Role {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    readwrite: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// A user of the TOML file.
pub struct NativeUser {
    pub name: String,
    pub password: Option<String>,
    pub roles: Vec<String>,
}

/// What the file defines: its users, and its rules added to `rules`. Whether it defines any
/// permission at all is the `bool`.
pub fn parse(
    file: &str,
    text: &str,
    rules: &mut RuleSet,
) -> Result<(Vec<NativeUser>, bool), String> {
    let parsed: File = toml::from_str(text).map_err(|e| format!("{file}: {e}"))?;
    let mut compiled: BTreeMap<&str, Vec<Rule>> = BTreeMap::new();
    for (name, role) in &parsed.roles {
        let mut list = Vec::new();
        for (access, filters) in [
            (Access::Read, &role.read),
            (Access::Write, &role.write),
            (Access::ReadWrite, &role.readwrite),
            (Access::Deny, &role.deny),
        ] {
            for f in filters {
                list.push(
                    Rule::new(access, f, true).map_err(|e| format!("{file}: roles.{name}: {e}"))?,
                );
            }
        }
        compiled.insert(name, list);
    }
    let role_rules = |key: &str, names: &[String]| -> Result<Vec<Rule>, String> {
        let mut out = Vec::new();
        for n in names {
            let rules = compiled
                .get(n.as_str())
                .ok_or_else(|| format!("{file}: {key}: no role called {n:?} under [roles]"))?;
            out.extend(rules.iter().cloned());
        }
        Ok(out)
    };
    rules
        .named
        .extend(role_rules("default_roles", &parsed.default_roles)?);
    rules
        .anonymous
        .extend(role_rules("anonymous_roles", &parsed.anonymous_roles)?);
    let mut users = Vec::new();
    for (name, user) in parsed.users {
        let own = role_rules(&format!("users.{name}.roles"), &user.roles)?;
        if let Some(p) = &user.password
            && !crate::mosquitto::known_hash(p)
        {
            return Err(format!(
                "{file}: users.{name}.password: not a supported password hash (write it with \
                 `moat passwd`)"
            ));
        }
        rules.users.entry(name.clone()).or_default().extend(own);
        let mut roles = parsed.default_roles.clone();
        roles.extend(user.roles);
        users.push(NativeUser {
            name,
            password: user.password,
            roles,
        });
    }
    Ok((users, !parsed.roles.is_empty()))
}
