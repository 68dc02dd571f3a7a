//! Mosquitto's `password_file` and `acl_file` formats, read as Mosquitto 2 reads them, so a
//! Mosquitto installation moves over without rewriting either.
//!
//! Password file: one `user:hash` per line, as `mosquitto_passwd` writes (`$7$` PBKDF2-SHA512,
//! or `$6$` from Mosquitto 1.6 and earlier); argon2id, bcrypt and PBKDF2 PHC lines are
//! accepted too (`moat passwd` writes argon2id). Blank lines and lines starting with `#` are
//! skipped. A plain-text password is refused: hash the file first.
//!
//! ACL file (see `mosquitto.conf(5)`, `acl_file`):
//! - `topic [read|write|readwrite|deny] FILTER`: before any `user` line, for clients without a
//!   user name; after `user NAME`, for that user. Without an access word, `readwrite`.
//! - `pattern [read|write|readwrite|deny] FILTER`: for every client, wherever it stands, with
//!   `%u` and `%c` filled in.
//! - `user NAME`: the following `topic` lines are NAME's.
//! - Blank lines and lines starting with `#` are comments.
//!
//! Errors name the file (by the name it was granted under) and the line.

use moat_plugin_sdk::acl::{Access, Rule, RuleSet};

/// The prefixes of the hash formats the broker's `password` capability checks.
const HASH_PREFIXES: &[&str] = &[
    "$7$",
    "$6$",
    "$2a$",
    "$2b$",
    "$2y$",
    "$argon2id$",
    "$argon2i$",
    "$argon2d$",
    "$pbkdf2-sha256$",
    "$pbkdf2-sha512$",
    "SCRAM-SHA-256$",
];

/// Whether `hash` looks like one of the formats the broker checks (the broker parses it fully
/// at login).
pub fn known_hash(hash: &str) -> bool {
    HASH_PREFIXES.iter().any(|p| hash.starts_with(p))
}

/// The meaningful lines of a file: (line number from 1, trimmed text).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// Reads a password file into (user, hash) pairs, in file order.
pub fn parse_passwords(file: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut users: Vec<(String, String)> = Vec::new();
    for (n, line) in lines(text) {
        let at = |why: String| format!("{file} line {n}: {why}");
        let Some((user, hash)) = line.split_once(':') else {
            return Err(at("expected `user:hash`".into()));
        };
        if user.is_empty() {
            return Err(at("the user name is empty".into()));
        }
        if !known_hash(hash) {
            return Err(at(format!(
                "user {user:?}: not a supported password hash (plain-text passwords are not \
                 accepted; hash the file with `mosquitto_passwd -U` or write entries with \
                 `moat passwd`)"
            )));
        }
        if users.iter().any(|(u, _)| u == user) {
            return Err(at(format!("user {user:?} appears twice")));
        }
        users.push((user.to_owned(), hash.to_owned()));
    }
    Ok(users)
}

/// Splits `[ACCESS] FILTER`; the filter may contain spaces when the access word is given.
fn access_and_filter(rest: &str) -> (Access, &str) {
    if let Some((word, filter)) = rest.split_once(char::is_whitespace)
        && let Some(access) = Access::parse(word)
    {
        let filter = filter.trim();
        if !filter.is_empty() {
            return (access, filter);
        }
    }
    (Access::ReadWrite, rest)
}

/// Reads an ACL file into `rules`.
pub fn parse_acl(file: &str, text: &str, rules: &mut RuleSet) -> Result<(), String> {
    let mut user: Option<String> = None;
    for (n, line) in lines(text) {
        let at = |why: String| format!("{file} line {n}: {why}");
        let (keyword, rest) = line
            .split_once(char::is_whitespace)
            .map(|(k, r)| (k, r.trim()))
            .unwrap_or((line, ""));
        match keyword {
            "user" => {
                if rest.is_empty() {
                    return Err(at("`user` needs a user name".into()));
                }
                rules.users.entry(rest.to_owned()).or_default();
                user = Some(rest.to_owned());
            }
            "topic" | "pattern" => {
                if rest.is_empty() {
                    return Err(at(format!("`{keyword}` needs a topic filter")));
                }
                let (access, filter) = access_and_filter(rest);
                let pattern = keyword == "pattern";
                let rule = Rule::new(access, filter, pattern).map_err(at)?;
                let list = match (&user, pattern) {
                    (_, true) => &mut rules.patterns,
                    (None, false) => &mut rules.anonymous,
                    (Some(u), false) => rules.users.entry(u.clone()).or_default(),
                };
                list.push(rule);
            }
            other => {
                return Err(at(format!(
                    "unknown keyword {other:?} (expected `user`, `topic` or `pattern`)"
                )));
            }
        }
    }
    Ok(())
}
