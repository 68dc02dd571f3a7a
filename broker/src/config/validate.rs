//! Semantic checks on a deserialized [`Config`]: value ranges and rules across fields (unique
//! listener names and addresses, a parseable log filter).
//!
//! Ranges live in one table, [`RANGES`], so that a value too large for its Rust type (which
//! serde rejects before validation runs) gets the same "must be between" message as one that
//! fits the type but not the range.

use std::collections::HashMap;

use super::error::{Invalid, KeyPath, Seg};
use super::{Config, MAX_PACKET_SIZE_LIMIT};

/// The allowed range, inclusive, of every ranged integer setting, by dotted key.
const RANGES: &[(&str, u64, u64)] = &[
    ("limits.max_packet_size", 2, MAX_PACKET_SIZE_LIMIT as u64),
    ("limits.receive_maximum", 1, u16::MAX as u64),
    ("limits.max_inflight", 1, u16::MAX as u64),
    ("limits.max_queued_messages", 0, u32::MAX as u64),
    ("limits.slow_subscriber_timeout", 0, 3600),
    ("limits.max_keepalive", 1, u16::MAX as u64),
    ("limits.topic_alias_maximum", 0, u16::MAX as u64),
    ("limits.max_session_expiry", 0, u32::MAX as u64),
    ("limits.max_message_expiry", 1, u32::MAX as u64),
    ("limits.connect_timeout", 1, 3600),
    ("limits.max_topic_levels", 1, u16::MAX as u64),
    ("limits.max_topic_length", 1, u16::MAX as u64),
    ("limits.max_subscriptions_per_client", 1, u32::MAX as u64),
    ("limits.max_client_id_length", 23, u16::MAX as u64),
    ("sys.interval", 0, 86_400),
    ("server.worker_threads", 1, 1024),
    ("storage.commit_interval_ms", 1, 10_000),
];

/// The allowed range of the integer setting at dotted `key`, if it is a ranged one.
pub(super) fn range_of(key: &str) -> Option<(u64, u64)> {
    RANGES
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Checks `config`, returning the first problem found.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    for (key, value) in ranged_values(config) {
        let (Some(value), Some((min, max))) = (value, range_of(key)) else {
            continue;
        };
        if !(min..=max).contains(&value) {
            return Err(Invalid {
                path: KeyPath::keys(&key.split('.').collect::<Vec<_>>()),
                message: format!("must be between {min} and {max}, got {value}"),
            });
        }
    }

    validate_listeners(config)?;

    if config
        .storage
        .dir
        .as_ref()
        .is_some_and(|d| d.as_os_str().is_empty())
    {
        return Err(Invalid {
            path: KeyPath::keys(&["storage", "dir"]),
            message: "must not be empty (leave it out for the default state directory)".into(),
        });
    }

    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&config.log.filter) {
        return Err(Invalid {
            path: KeyPath::keys(&["log", "filter"]),
            message: format!("invalid filter {:?}: {e}", config.log.filter),
        });
    }
    Ok(())
}

/// The value of every key in [`RANGES`] (`None` for an unset optional one).
fn ranged_values(config: &Config) -> [(&'static str, Option<u64>); RANGES.len()] {
    let l = &config.limits;
    [
        ("limits.max_packet_size", Some(l.max_packet_size.into())),
        ("limits.receive_maximum", Some(l.receive_maximum.into())),
        ("limits.max_inflight", Some(l.max_inflight.into())),
        (
            "limits.max_queued_messages",
            Some(l.max_queued_messages.into()),
        ),
        (
            "limits.slow_subscriber_timeout",
            Some(l.slow_subscriber_timeout.as_secs()),
        ),
        ("limits.max_keepalive", Some(l.max_keepalive.into())),
        (
            "limits.topic_alias_maximum",
            Some(l.topic_alias_maximum.into()),
        ),
        (
            "limits.max_session_expiry",
            Some(l.max_session_expiry.into()),
        ),
        (
            "limits.max_message_expiry",
            l.max_message_expiry.map(u64::from),
        ),
        ("limits.connect_timeout", Some(l.connect_timeout.as_secs())),
        ("limits.max_topic_levels", Some(l.max_topic_levels.into())),
        ("limits.max_topic_length", Some(l.max_topic_length.into())),
        (
            "limits.max_subscriptions_per_client",
            Some(l.max_subscriptions_per_client.into()),
        ),
        (
            "limits.max_client_id_length",
            Some(l.max_client_id_length.into()),
        ),
        ("sys.interval", Some(config.sys.interval.as_secs())),
        (
            "server.worker_threads",
            config.server.worker_threads.map(|n| n as u64),
        ),
        (
            "storage.commit_interval_ms",
            Some(config.storage.commit_interval_ms.into()),
        ),
    ]
}

/// At least one listener; names and bind addresses unique.
fn validate_listeners(config: &Config) -> Result<(), Invalid> {
    let listener = KeyPath::keys(&["listener"]);
    if config.listeners.is_empty() {
        return Err(Invalid {
            path: listener,
            message: "at least one listener is required".into(),
        });
    }
    let mut names = HashMap::new();
    let mut binds = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let at = |key: &str| {
            listener
                .clone()
                .with(Seg::Index(i))
                .with(Seg::Key(key.to_owned()))
        };
        if let Some(first) = names.insert(l.name.as_str(), i) {
            return Err(Invalid {
                path: at("name"),
                message: format!(
                    "duplicate listener name {:?} (also listener[{first}])",
                    l.name
                ),
            });
        }
        if let Some(first) = binds.insert(l.bind, i) {
            return Err(Invalid {
                path: at("bind"),
                message: format!("{} is already the address of listener[{first}]", l.bind),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_checked_and_admits_its_default() {
        // A key of RANGES missing from `ranged_values` (or misspelt) would never be checked.
        let mut config = Config::default();
        config.limits.max_message_expiry = Some(1);
        config.server.worker_threads = Some(2);
        let values = ranged_values(&config);
        for ((key, min, max), (value_key, value)) in RANGES.iter().zip(values) {
            assert_eq!(*key, value_key);
            let value = value.unwrap();
            assert!((min..=max).contains(&&value), "{key} default {value}");
        }
        assert!(validate(&config).is_ok());
    }
}
