//! Topic names and topic filters (section 4.7): validation, shared-subscription syntax
//! (section 4.8.2) and matching of one filter against one name.
//!
//! These are pure functions over `&str` with no allocation, used by the session to answer a
//! PUBLISH or SUBSCRIBE with the right reason code, and by the router (`moat::router`), which
//! assumes that every filter and name it is given has passed these checks. [`matches()`] is the
//! reference semantics the router's trie must agree with; the router tests compare against it.
//!
//! Three kinds of string are involved:
//! * a *topic name* is what a PUBLISH is sent to: no wildcards, at least one character;
//! * a *topic filter* is what a SUBSCRIBE asks for: `+` stands for exactly one level and `#`,
//!   as the last level, for any number of levels including none;
//! * a *shared filter* `$share/{group}/{filter}` spreads the messages matching `{filter}` over
//!   the members of `{group}` (MQTT 5.0 only).
//!
//! Names and filters are compared byte for byte: no normalisation, case folding or collapsing
//! of repeated `/` (MQTT-4.7.3-4), so `a//b` has an empty middle level and `/a` an empty first.

/// The longest name or filter: a UTF-8 string's length prefix is two bytes (MQTT-4.7.3-3).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The first level of a shared subscription's filter (section 4.8.2).
pub const SHARE_PREFIX: &str = "$share";

/// Why a topic name, topic filter or shared-subscription filter was refused.
///
/// Levels are counted from 1, so `a/b#` reports level 2. The session maps these to 0x90 (Topic
/// Name invalid) for a PUBLISH and 0x8F (Topic Filter invalid) for a SUBSCRIBE or UNSUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// MQTT-4.7.3-1.
    #[error("topic is empty: a topic name or filter needs at least one character")]
    Empty,
    /// MQTT-4.7.3-3.
    #[error("topic is {0} bytes long; the maximum is 65535 bytes of UTF-8")]
    TooLong(usize),
    /// MQTT-4.7.3-2 (the codec already refuses U+0000 in any string, MQTT-1.5.4-2).
    #[error("topic contains the null character U+0000, which MQTT does not allow")]
    NullCharacter,
    /// MQTT-3.3.2-2, MQTT-4.7.0-1.
    #[error(
        "topic name contains the wildcard '{0}'; wildcards are only allowed in subscription \
         filters, so publish to a concrete topic"
    )]
    WildcardInName(char),
    /// MQTT-4.7.1-1.
    #[error(
        "'#' in level {level} of the filter must stand alone as the last level \
         (write 'a/#', not 'a#' or 'a/#/b')"
    )]
    MisplacedMultiLevel { level: usize },
    /// MQTT-4.7.1-2.
    #[error(
        "'+' in level {level} of the filter must fill the whole level (write 'a/+/b', not 'a+/b')"
    )]
    MisplacedSingleLevel { level: usize },
    /// MQTT-4.8.2-1: `$share` with no group, or `$share//...`.
    #[error("shared subscription has no group name: write '$share/{{group}}/{{filter}}'")]
    EmptyShareGroup,
    /// MQTT-4.8.2-2.
    #[error("shared subscription group name must not contain '{0}'")]
    InvalidShareGroup(char),
    /// MQTT-4.8.2-2: `$share/group` or `$share/group/`.
    #[error(
        "shared subscription has no topic filter after the group: \
         write '$share/{{group}}/{{filter}}'"
    )]
    MissingShareFilter,
    /// The filter after `$share/{group}/` is itself invalid.
    #[error("invalid topic filter in shared subscription: {0}")]
    InvalidShareFilter(Box<TopicError>),
}

/// The checks common to names and filters: length and the null character.
fn check_string(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(s.len()));
    }
    if s.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(())
}

/// Checks the topic name of a PUBLISH or a will: at least one character (MQTT-4.7.3-1), at most
/// 65535 bytes (MQTT-4.7.3-3), no null character (MQTT-4.7.3-2) and no wildcard (MQTT-3.3.2-2,
/// MQTT-4.7.0-1). Names beginning with `$` are valid here; whether a client may publish to
/// them is the authorisation policy's business.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    check_string(name)?;
    match name.bytes().find(|&b| b == b'+' || b == b'#') {
        Some(b) => Err(TopicError::WildcardInName(char::from(b))),
        None => Ok(()),
    }
}

/// Checks the syntax of a topic filter (section 4.7.1): at least one character (MQTT-4.7.3-1),
/// at most 65535 bytes, no null character, `#` only as the whole last level (MQTT-4.7.1-1) and
/// `+` only as a whole level (MQTT-4.7.1-2).
///
/// This is the plain section 4.7 syntax. A filter beginning with `$share/` passes here if its
/// text is well formed; call [`parse_shared`] to check and split the shared form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_string(filter)?;
    let mut levels = filter.split('/').enumerate().peekable();
    while let Some((i, level)) = levels.next() {
        let level_no = i + 1;
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevel { level: level_no });
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedSingleLevel { level: level_no });
        }
    }
    Ok(())
}

/// The two parts of a shared subscription's filter `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: non-empty, without `/`, `+` or `#`.
    pub group: &'a str,
    /// The topic filter that messages are matched against; valid per [`validate_topic_filter`].
    pub filter: &'a str,
}

/// Splits a shared subscription's filter (section 4.8.2).
///
/// `Ok(None)` when the first level is not exactly `$share` (so `$sharex/a` and `$SYS/#` are
/// ordinary filters, and are not validated here). Otherwise the group must be non-empty
/// (MQTT-4.8.2-1) without `+`, `#` or `/` (MQTT-4.8.2-2), and it must be followed by `/` and a
/// valid, non-empty topic filter: `$share`, `$share/group` and `$share/group/` are errors.
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let rest = match rest.strip_prefix('/') {
        Some(rest) => rest,
        None if rest.is_empty() => return Err(TopicError::EmptyShareGroup),
        // `$shared/...`, `$share+`: the first level is something else.
        None => return Ok(None),
    };
    check_string(filter)?;
    let (group, inner) = match rest.split_once('/') {
        Some((group, inner)) => (group, Some(inner)),
        None => (rest, None),
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareGroup);
    }
    if let Some(b) = group.bytes().find(|&b| b == b'+' || b == b'#') {
        return Err(TopicError::InvalidShareGroup(char::from(b)));
    }
    let inner = match inner {
        None | Some("") => return Err(TopicError::MissingShareFilter),
        Some(inner) => inner,
    };
    validate_topic_filter(inner).map_err(|e| TopicError::InvalidShareFilter(Box::new(e)))?;
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Splits off the first level: `("a", Some("b/c"))` for `a/b/c`, `("c", None)` for `c`.
/// An empty string is one empty level.
pub fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (s, None),
    }
}

/// True if a message published to `topic` matches the subscription `filter` (section 4.7).
///
/// Both are assumed valid (a plain filter, not `$share/...`: pass the shared filter's inner
/// part). `+` matches exactly one level, possibly empty; `#` matches any number of levels
/// including none, so `sport/#` matches `sport`. A filter whose first level is a wildcard does
/// not match a topic beginning with `$` (MQTT-4.7.2-1), so `#` never delivers `$SYS/...`.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic that `filter` matches is also matched by `pattern`: a subset test, not an
/// overlap test. A rule "may subscribe to `sensors/+/temp`" allows the filter `sensors/k1/temp`
/// but not `sensors/#`, which also reaches topics the rule does not cover.
///
/// Both are assumed valid filters (pass a shared filter's inner part). A filter whose first level
/// is a wildcard does not reach `$` topics (MQTT-4.7.2-1), so `#` is within `#`; but `$SYS/#` is
/// not within `#`, which never matches `$SYS/...`.
pub fn filter_within(pattern: &str, filter: &str) -> bool {
    let first_wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if filter.starts_with('$') && first_wild(pattern) {
        return false;
    }
    let mut p_levels = pattern.split('/');
    let mut f_levels = filter.split('/');
    loop {
        match (p_levels.next(), f_levels.next()) {
            // `#` covers the remaining levels, and the parent level too (`a/#` matches `a`).
            (Some("#"), _) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some(_)) => {}
            (Some(_), Some("+")) => return false,
            (Some(p), Some(f)) if p == f => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if some topic name is matched by both filters: an overlap test. A rule "may read
/// `sensors/#`" and the subscription `#` overlap (on `sensors/...`), so the subscription can
/// be allowed with every delivery checked; `sensors/#` and `alarms/#` do not.
///
/// Both are assumed valid filters. A filter whose first level is a wildcard reaches no `$`
/// topic (MQTT-4.7.2-1), so `#` and `$SYS/#` do not overlap.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let first_wild = |f: &str| f.starts_with('+') || f.starts_with('#');
    if (a.starts_with('$') && first_wild(b)) || (b.starts_with('$') && first_wild(a)) {
        return false;
    }
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            // `#` matches the remaining levels, and the parent level too (`a/#` matches `a`).
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Expands the placeholders of an ACL pattern: `%c` (client identifier), `%u` (user name) and
/// `${name}` (any other value, such as a token claim or a directory attribute), each looked up
/// with `lookup` (`"client_id"`, `"username"` and `name`).
///
/// `None` when a placeholder has no value, or a value that would change the pattern's structure
/// instead of filling one level: empty, or containing `/`, `+`, `#` or U+0000. A pattern that
/// cannot be expanded must match nothing: a user called `a/#` must not be granted
/// `devices/a/#` by the pattern `devices/%u/#`, nor a user called `+` everybody's topics.
pub fn expand_pattern<'v>(
    pattern: &str,
    lookup: impl Fn(&str) -> Option<&'v str>,
) -> Option<String> {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut rest = pattern;
    while let Some(i) = rest.find(['%', '$']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, used) = if let Some(t) = tail.strip_prefix("%c") {
            ("client_id", tail.len() - t.len())
        } else if let Some(t) = tail.strip_prefix("%u") {
            ("username", tail.len() - t.len())
        } else if let Some(body) = tail.strip_prefix("${") {
            let end = body.find('}')?;
            (&body[..end], end + 3)
        } else {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        };
        let value = lookup(name)?;
        if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
            return None;
        }
        out.push_str(value);
        rest = &tail[used..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_overlap_when_a_topic_matches_both() {
        let yes = [
            ("#", "sensors/#"),
            ("sensors/+/temp", "sensors/k1/+"),
            ("a/#", "a"),
            ("a", "a/#"),
            ("+/+", "x/y"),
            ("$SYS/#", "$SYS/+/load"),
            ("a//b", "a/+/b"),
        ];
        let no = [
            ("sensors/#", "alarms/#"),
            ("#", "$SYS/#"),
            ("+/load", "$SYS/load"),
            ("a/+", "a"),
            ("a/b", "a/b/c"),
            ("a/+/c", "a/b/d"),
        ];
        for (a, b) in yes {
            assert!(filters_overlap(a, b), "{a} and {b} overlap");
            assert!(filters_overlap(b, a), "{b} and {a} overlap");
        }
        for (a, b) in no {
            assert!(!filters_overlap(a, b), "{a} and {b} do not overlap");
            assert!(!filters_overlap(b, a), "{b} and {a} do not overlap");
        }
    }

    #[test]
    fn topic_names() {
        let long_ok = "a".repeat(MAX_TOPIC_LEN);
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, Result<(), TopicError>)] = &[
            ("sport/tennis/player1", Ok(())),
            // 4.7.3: spaces are allowed, a lone '/' is a valid name, leading '/' too.
            ("Accounts payable", Ok(())),
            ("/", Ok(())),
            ("/finance", Ok(())),
            ("a//b", Ok(())),
            ("$SYS/broker/load", Ok(())),
            ("sport/tennis/ü", Ok(())),
            (long_ok.as_str(), Ok(())),
            // MQTT-4.7.3-1.
            ("", Err(TopicError::Empty)),
            // MQTT-4.7.3-3.
            (
                too_long.as_str(),
                Err(TopicError::TooLong(MAX_TOPIC_LEN + 1)),
            ),
            // MQTT-4.7.3-2.
            ("a\0b", Err(TopicError::NullCharacter)),
            // MQTT-3.3.2-2, MQTT-4.7.0-1.
            ("sport/+", Err(TopicError::WildcardInName('+'))),
            ("sport/#", Err(TopicError::WildcardInName('#'))),
            ("sport/tennis#", Err(TopicError::WildcardInName('#'))),
            ("a+b", Err(TopicError::WildcardInName('+'))),
            ("#", Err(TopicError::WildcardInName('#'))),
        ];
        for (name, want) in cases {
            assert_eq!(&validate_topic_name(name), want, "name {name:?}");
        }
    }

    #[test]
    fn topic_filters() {
        let too_long = "a".repeat(MAX_TOPIC_LEN + 1);
        let cases: &[(&str, Result<(), TopicError>)] = &[
            // 4.7.1.2 and 4.7.1.3 examples of valid filters.
            ("sport/tennis/player1/#", Ok(())),
            ("sport/#", Ok(())),
            ("#", Ok(())),
            ("sport/tennis/#", Ok(())),
            ("+", Ok(())),
            ("+/tennis/#", Ok(())),
            ("sport/+/player1", Ok(())),
            ("+/+", Ok(())),
            ("/+", Ok(())),
            ("/", Ok(())),
            ("$SYS/#", Ok(())),
            ("$SYS/monitor/+", Ok(())),
            ("a//b", Ok(())),
            ("+/#", Ok(())),
            // MQTT-4.7.3-1, -2, -3.
            ("", Err(TopicError::Empty)),
            ("a\0", Err(TopicError::NullCharacter)),
            (
                too_long.as_str(),
                Err(TopicError::TooLong(MAX_TOPIC_LEN + 1)),
            ),
            // MQTT-4.7.1-1: "sport/tennis#" and "sport/tennis/#/ranking" are not valid.
            (
                "sport/tennis#",
                Err(TopicError::MisplacedMultiLevel { level: 2 }),
            ),
            (
                "sport/tennis/#/ranking",
                Err(TopicError::MisplacedMultiLevel { level: 3 }),
            ),
            ("#/", Err(TopicError::MisplacedMultiLevel { level: 1 })),
            ("##", Err(TopicError::MisplacedMultiLevel { level: 1 })),
            // MQTT-4.7.1-2: "sport+" is not valid.
            ("sport+", Err(TopicError::MisplacedSingleLevel { level: 1 })),
            ("a/+b/c", Err(TopicError::MisplacedSingleLevel { level: 2 })),
            ("++", Err(TopicError::MisplacedSingleLevel { level: 1 })),
            ("a/#+", Err(TopicError::MisplacedMultiLevel { level: 2 })),
        ];
        for (filter, want) in cases {
            assert_eq!(&validate_topic_filter(filter), want, "filter {filter:?}");
        }
    }

    #[test]
    fn shared_filters() {
        let shared = |group, filter| Ok(Some(SharedFilter { group, filter }));
        let inner = |e| Err(TopicError::InvalidShareFilter(Box::new(e)));
        let cases: &[(&str, Result<Option<SharedFilter<'_>>, TopicError>)] = &[
            ("$share/g/sport/#", shared("g", "sport/#")),
            (
                "$share/consumer1/sport/tennis/+",
                shared("consumer1", "sport/tennis/+"),
            ),
            ("$share/g/#", shared("g", "#")),
            ("$share/g//", shared("g", "/")),
            ("$share/g/$SYS/#", shared("g", "$SYS/#")),
            // Not shared: the first level is not exactly "$share".
            ("sport/#", Ok(None)),
            ("$SYS/#", Ok(None)),
            ("$shared/g/a", Ok(None)),
            ("$share+", Ok(None)),
            ("a/$share/g/b", Ok(None)),
            // MQTT-4.8.2-1: a share name at least one character long.
            ("$share", Err(TopicError::EmptyShareGroup)),
            ("$share/", Err(TopicError::EmptyShareGroup)),
            ("$share//a", Err(TopicError::EmptyShareGroup)),
            // MQTT-4.8.2-2: no '+' or '#' in the share name, then '/' and a filter.
            ("$share/g+/a", Err(TopicError::InvalidShareGroup('+'))),
            ("$share/#", Err(TopicError::InvalidShareGroup('#'))),
            ("$share/+/a", Err(TopicError::InvalidShareGroup('+'))),
            ("$share/group", Err(TopicError::MissingShareFilter)),
            ("$share/group/", Err(TopicError::MissingShareFilter)),
            (
                "$share/g/a#",
                inner(TopicError::MisplacedMultiLevel { level: 1 }),
            ),
            (
                "$share/g/a/+b",
                inner(TopicError::MisplacedSingleLevel { level: 2 }),
            ),
            ("$share/g/a\0", Err(TopicError::NullCharacter)),
        ];
        for (filter, want) in cases {
            assert_eq!(&parse_shared(filter), want, "filter {filter:?}");
        }
    }

    #[test]
    fn matching() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, bool)] = &[
            // 4.7.1.2: '#' matches the parent and any number of child levels.
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/ranking", true),
            ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true),
            ("sport/tennis/player1/#", "sport/tennis/player2", false),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sports", false),
            ("#", "sport/tennis/player1", true),
            ("#", "/", true),
            ("sport/tennis/#", "sport/tennis", true),
            ("sport/tennis/#", "sport", false),
            // 4.7.1.3: '+' matches exactly one level, which may be empty.
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player2", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "finance", true),
            ("+/tennis/#", "sport/tennis/player1", true),
            ("+/tennis/#", "sport/tennis", true),
            ("+/tennis/#", "sport/golf", false),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+/player1", "sport//player1", true),
            ("sport/+/player1", "sport/tennis/player2", false),
            ("+/+/+", "a/b", false),
            ("+/#", "a", true),
            // MQTT-4.7.2-1: wildcards in the first level do not match '$' topics.
            ("#", "$SYS/monitor/Clients", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("+", "$SYS", false),
            ("+/#", "$SYS/a", false),
            ("$SYS/#", "$SYS/monitor/Clients", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("$SYS/+/Clients", "$SYS/monitor/Clients", true),
            ("a/#", "a/$b", true),
            ("a/+", "a/$b", true),
            // 4.7.3: case sensitive, no normalisation (MQTT-4.7.3-4).
            ("ACCOUNTS", "Accounts", false),
            ("Accounts payable", "Accounts payable", true),
            ("/finance", "finance", false),
            ("a//b", "a/b", false),
            ("a/+/b", "a//b", true),
        ];
        assert!(cases.len() >= 30);
        for &(filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn split_level_cases() {
        assert_eq!(split_level("a/b/c"), ("a", Some("b/c")));
        assert_eq!(split_level("c"), ("c", None));
        assert_eq!(split_level(""), ("", None));
        assert_eq!(split_level("/"), ("", Some("")));
    }

    #[test]
    fn error_messages_are_actionable() {
        let e = validate_topic_filter("sport/tennis#").unwrap_err();
        assert!(e.to_string().contains("level 2"), "{e}");
        let e = parse_shared("$share/group").unwrap_err();
        assert!(e.to_string().contains("$share/{group}/{filter}"), "{e}");
    }

    #[test]
    fn filter_within_is_a_subset_test() {
        let cases: &[(&str, &str, bool)] = &[
            ("sensors/+/temp", "sensors/k1/temp", true),
            ("sensors/+/temp", "sensors/+/temp", true),
            ("sensors/+/temp", "sensors/#", false),
            ("sensors/+/temp", "sensors/+/+", false),
            ("sensors/#", "sensors", true),
            ("sensors/#", "sensors/a/b/c", true),
            ("sensors/#", "sensors/+/#", true),
            ("sensors/#", "sensor/#", false),
            ("sensors/+", "sensors/+/#", false),
            ("#", "anything/at/all", true),
            ("#", "#", true),
            // MQTT-4.7.2-1: wildcards in the first level never reach `$` topics.
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/load", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("a/+/c", "a//c", true),
        ];
        for (pattern, filter, within) in cases {
            assert_eq!(
                filter_within(pattern, filter),
                *within,
                "{filter} within {pattern}"
            );
            if *within {
                // Whatever the filter matches, the pattern matches too.
                for topic in [
                    "sensors/k1/temp",
                    "sensors",
                    "a//c",
                    "$SYS/broker/load",
                    "x",
                ] {
                    if matches(filter, topic) {
                        assert!(matches(pattern, topic), "{topic}: {filter} vs {pattern}");
                    }
                }
            }
        }
    }

    #[test]
    fn placeholders_expand_one_level_and_refuse_injection() {
        let vars = |name: &str| match name {
            "client_id" => Some("dev-7"),
            "username" => Some("alice"),
            "tenant" => Some("acme"),
            "slash" => Some("a/b"),
            _ => None,
        };
        assert_eq!(
            expand_pattern("devices/%c/#", vars).as_deref(),
            Some("devices/dev-7/#")
        );
        assert_eq!(
            expand_pattern("u/%u/%c", vars).as_deref(),
            Some("u/alice/dev-7")
        );
        assert_eq!(
            expand_pattern("t/${tenant}/x", vars).as_deref(),
            Some("t/acme/x")
        );
        assert_eq!(
            expand_pattern("100%/x$y", vars).as_deref(),
            Some("100%/x$y")
        );
        assert_eq!(expand_pattern("$SYS/#", vars).as_deref(), Some("$SYS/#"));
        assert_eq!(expand_pattern("t/${missing}", vars), None);
        assert_eq!(expand_pattern("t/${slash}", vars), None);
        assert_eq!(expand_pattern("t/${unclosed", vars), None);
        for evil in ["a/#", "+", "#", "", "x/y", "a\0"] {
            let lookup = |name: &str| (name == "username").then_some(evil);
            assert_eq!(
                expand_pattern("devices/%u/#", lookup),
                None,
                "username {evil:?}"
            );
        }
    }
}
