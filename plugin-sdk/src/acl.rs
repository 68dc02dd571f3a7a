//! A permission model of topic rules, and the decisions taken from it: what the bundled
//! static-acl (its files), sql (its ACL rows) and other plugins decide with, so that the same
//! rules mean the same thing whatever they are stored in.
//!
//! A rule grants `read`, `write` or both on a topic filter, or `deny`s it. A client's rules
//! are its own (by user name; the anonymous rules for a client without one) plus the global
//! patterns. Denials are weighed first: a topic a deny rule matches is refused whatever else
//! grants it (Mosquitto's order). Otherwise a matching grant allows; no matching rule at all is
//! "no match", which the configuration turns into deny or next.
//!
//! A rule marked `expand` may use `%u` (user name) and `%c` (client identifier) for a whole
//! level; a placeholder without a value, or with a value that is not a plain level (`/`, `+`,
//! `#`), makes the rule match nothing ([`topic::expand_pattern`]).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::{Denial, Reason, SubscribeGrant, SubscribeVerdict, Verdict, topic};

fn refused(message: &str) -> Denial {
    Denial {
        reason: Reason::NotAuthorized,
        message: Some(message.to_owned()),
    }
}

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

impl Outcome {
    /// The hook's answer: an allow the broker may reuse for `cache_seconds`, 0x87 Not
    /// authorized, or `no_match` for a topic no rule mentions.
    pub fn verdict(self, cache_seconds: u32, no_match: Verdict) -> Verdict {
        match self {
            Outcome::Allowed => crate::allow(cache_seconds),
            Outcome::Denied => Verdict::Deny(refused("a rule denies it")),
            Outcome::NoMatch => no_match,
        }
    }
}

impl SubscribeOutcome {
    /// The hook's answer: allowed, with per-delivery checks when the rules cover the filter
    /// only partly or `always_check` asks for them; 0x87 Not authorized; or `no_match` for a
    /// filter no rule reaches.
    pub fn verdict(self, always_check: bool, no_match: SubscribeVerdict) -> SubscribeVerdict {
        let grant = |check_each_delivery| {
            SubscribeVerdict::Allow(SubscribeGrant {
                check_each_delivery,
            })
        };
        match self {
            SubscribeOutcome::Covered => grant(always_check),
            SubscribeOutcome::Partly => grant(true),
            SubscribeOutcome::Denied => SubscribeVerdict::Deny(refused("a rule denies it")),
            SubscribeOutcome::NoMatch => no_match,
        }
    }
}

/// A plugin setting (`unknown_user`, `no_match`, `on_backend_error`...): refuse, or let the
/// next plugin decide; never an allow.
#[derive(Debug, serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Otherwise {
    #[default]
    Deny,
    Next,
}

/// The `check_each_delivery` setting: `always` checks every delivery of a subscription (so a
/// revoked read right stops deliveries on existing subscriptions too); `when-needed` only
/// those of subscriptions wider than the rules.
#[derive(Debug, serde::Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryChecks {
    #[default]
    Always,
    WhenNeeded,
}

/// A topic-level answer given to a subscription (a decision settled before any rule is looked
/// at): an allow becomes a grant with `check_each_delivery`.
pub fn as_subscribe(verdict: Verdict, check_each_delivery: bool) -> SubscribeVerdict {
    match verdict {
        Verdict::Allow(_) => SubscribeVerdict::Allow(SubscribeGrant {
            check_each_delivery,
        }),
        Verdict::Deny(d) => SubscribeVerdict::Deny(d),
        Verdict::Next => SubscribeVerdict::Next,
    }
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
