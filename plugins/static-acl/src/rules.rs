//! The permission model both file formats compile into, and the decisions taken from it.
//!
//! A rule grants `read`, `write` or both on a topic filter, or `deny`s it. A client's rules
//! are its own (by user name; the anonymous rules for a client without one) plus the global
//! patterns. Denials are weighed first: a topic a deny rule matches is refused whatever else
//! grants it (Mosquitto's order). Otherwise a matching grant allows; no matching rule at all is
//! "no match", which the configuration turns into deny or next.
//!
//! A rule marked `expand` may use `%u` (user name) and `%c` (client identifier) for a whole
//! level; a placeholder without a value, or with a value that is not a plain level (`/`, `+`,
//! `#`), makes the rule match nothing (`moat_plugin_sdk::topic::expand_pattern`).

use std::borrow::Cow;
use std::collections::HashMap;

use moat_plugin_sdk::topic;

/// What a rule grants or refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    pub fn parse(word: &str) -> Option<Access> {
        Some(match word {
            "read" => Access::Read,
            "write" => Access::Write,
            "readwrite" => Access::ReadWrite,
            "deny" => Access::Deny,
            _ => return None,
        })
    }

    fn grants(self, wanted: Wanted) -> bool {
        matches!(
            (self, wanted),
            (Access::ReadWrite, _) | (Access::Read, Wanted::Read) | (Access::Write, Wanted::Write)
        )
    }
}

/// The access a question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    Read,
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub access: Access,
    pub filter: String,
    /// `%u` and `%c` are placeholders (Mosquitto's `pattern` lines, every TOML rule).
    pub expand: bool,
}

impl Rule {
    /// Checks the filter's syntax (placeholders count as plain levels).
    pub fn new(access: Access, filter: &str, expand: bool) -> Result<Rule, String> {
        topic::validate_topic_filter(filter).map_err(|e| format!("{filter:?}: {e}"))?;
        Ok(Rule {
            access,
            filter: filter.to_owned(),
            expand,
        })
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// A subscription's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// Every topic the filter reaches is readable, and no deny rule touches it.
    Covered,
    /// Some topics it reaches are readable and others not: check each delivery.
    Partly,
    /// A deny rule covers the whole filter.
    Denied,
    /// No rule reaches it.
    NoMatch,
}

/// A topic's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    NoMatch,
}

/// Every rule of the plugin.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Rules for clients without a user name (Mosquitto: the `topic` lines before any `user`).
    pub anonymous: Vec<Rule>,
    pub users: HashMap<String, Vec<Rule>>,
    /// Rules for every client with a user name (the TOML form's `default_roles`).
    pub named: Vec<Rule>,
    /// Rules for every client (Mosquitto's `pattern` lines).
    pub patterns: Vec<Rule>,
}

impl RuleSet {
    /// The filters of the rules that apply to `asker`, placeholders filled in.
    fn applicable<'r, 'a>(
        &'r self,
        asker: Asker<'a>,
    ) -> impl Iterator<Item = (Access, Cow<'r, str>)> {
        let (own, named): (&[Rule], &[Rule]) = match asker.username {
            Some(u) => (
                self.users.get(u).map(Vec::as_slice).unwrap_or_default(),
                &self.named,
            ),
            None => (&self.anonymous, &[]),
        };
        own.iter()
            .chain(named)
            .chain(&self.patterns)
            .filter_map(move |r| {
                if !r.expand || !r.filter.contains('%') {
                    return Some((r.access, Cow::Borrowed(r.filter.as_str())));
                }
                topic::expand_pattern(&r.filter, |name| match name {
                    "username" => asker.username,
                    "client_id" => Some(asker.client_id),
                    _ => None,
                })
                .map(|f| (r.access, Cow::Owned(f)))
            })
    }

    /// May `asker` read or write `topic`?
    pub fn topic(&self, asker: Asker<'_>, topic: &str, wanted: Wanted) -> Outcome {
        let mut allowed = false;
        for (access, filter) in self.applicable(asker) {
            if !topic::matches(&filter, topic) {
                continue;
            }
            if access == Access::Deny {
                return Outcome::Denied;
            }
            allowed |= access.grants(wanted);
        }
        if allowed {
            Outcome::Allowed
        } else {
            Outcome::NoMatch
        }
    }

    /// May `asker` subscribe to `filter` (read)?
    pub fn subscribe(&self, asker: Asker<'_>, filter: &str) -> SubscribeOutcome {
        let (mut covered, mut partly, mut deny_touches) = (false, false, false);
        for (access, rule) in self.applicable(asker) {
            if !topic::filters_overlap(&rule, filter) {
                continue;
            }
            if access == Access::Deny {
                if topic::filter_within(&rule, filter) {
                    return SubscribeOutcome::Denied;
                }
                deny_touches = true;
            } else if access.grants(Wanted::Read) {
                partly = true;
                covered |= topic::filter_within(&rule, filter);
            }
        }
        match (covered, partly) {
            (true, _) if !deny_touches => SubscribeOutcome::Covered,
            (_, true) => SubscribeOutcome::Partly,
            _ => SubscribeOutcome::NoMatch,
        }
    }
}
