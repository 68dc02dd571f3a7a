//! Semantic checks on a deserialized [`Config`]: value ranges and rules across fields (unique
//! listener names and addresses, a parseable log filter).
//!
//! Ranges live in one table, [`RANGES`], so that a value too large for its Rust type (which
//! serde rejects before validation runs) gets the same "must be between" message as one that
//! fits the type but not the range.

use std::collections::HashMap;

use super::error::{Invalid, KeyPath, Seg};
use super::{Config, IdentityAsUsername, ListenerConfig, MAX_PACKET_SIZE_LIMIT, TlsConfig};

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
    ("limits.max_connections", 1, u32::MAX as u64),
    ("limits.max_connections_per_ip", 1, u32::MAX as u64),
    ("limits.connection_rate_per_ip", 1, u32::MAX as u64),
    ("limits.publish_rate_per_client", 1, u32::MAX as u64),
    ("limits.publish_bytes_per_client", 1, u32::MAX as u64),
    ("limits.max_retained_messages", 1, u32::MAX as u64),
    ("limits.max_retained_bytes", 1, i64::MAX as u64),
    (
        "limits.max_retained_messages_per_client",
        1,
        u32::MAX as u64,
    ),
    ("limits.max_retained_bytes_per_client", 1, i64::MAX as u64),
    ("limits.max_persistent_sessions", 1, u32::MAX as u64),
    ("limits.auth_failure_delay_max", 0, 3600),
    ("sys.interval", 0, 86_400),
    ("server.worker_threads", 1, 1024),
    ("storage.commit_interval_ms", 1, 10_000),
    ("plugins.watch_interval_ms", 10, 3_600_000),
    ("admin.max_body_mib", 1, 1024),
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
    validate_plugins(config)?;
    validate_admin(config)?;

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
        ("limits.max_connections", l.max_connections.map(u64::from)),
        (
            "limits.max_connections_per_ip",
            l.max_connections_per_ip.map(u64::from),
        ),
        (
            "limits.connection_rate_per_ip",
            l.connection_rate_per_ip.map(u64::from),
        ),
        (
            "limits.publish_rate_per_client",
            l.publish_rate_per_client.map(u64::from),
        ),
        (
            "limits.publish_bytes_per_client",
            l.publish_bytes_per_client.map(u64::from),
        ),
        (
            "limits.max_retained_messages",
            l.max_retained_messages.map(u64::from),
        ),
        ("limits.max_retained_bytes", l.max_retained_bytes),
        (
            "limits.max_retained_messages_per_client",
            l.max_retained_messages_per_client.map(u64::from),
        ),
        (
            "limits.max_retained_bytes_per_client",
            l.max_retained_bytes_per_client,
        ),
        (
            "limits.max_persistent_sessions",
            l.max_persistent_sessions.map(u64::from),
        ),
        (
            "limits.auth_failure_delay_max",
            Some(l.auth_failure_delay_max.as_secs()),
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
        (
            "plugins.watch_interval_ms",
            Some(config.plugins.watch_interval_ms.into()),
        ),
        ("admin.max_body_mib", Some(config.admin.max_body_mib.into())),
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
        validate_listener(l).map_err(|(key, message)| Invalid {
            path: key
                .split('.')
                .fold(listener.clone().with(Seg::Index(i)), |p, k| {
                    p.with(Seg::Key(k.to_owned()))
                }),
            message,
        })?;
    }
    Ok(())
}

/// The rules of one listener: settings that fit its transport, ranges, and TLS files that
/// load. Errors are (key below the listener, message).
fn validate_listener(l: &ListenerConfig) -> Result<(), (&'static str, String)> {
    let p = l.protocol.as_str();
    match (&l.tls, l.protocol.is_tls()) {
        (None, true) => {
            return Err((
                "tls",
                format!("a {p} listener needs a [listener.tls] table with cert and key"),
            ));
        }
        (Some(_), false) => {
            return Err((
                "tls",
                format!("a {p} listener does not use TLS; use protocol \"tls\" or \"wss\""),
            ));
        }
        _ => {}
    }
    if !l.protocol.is_ws() {
        if l.path.is_some() {
            return Err((
                "path",
                format!("only ws and wss listeners have a path, not {p}"),
            ));
        }
        if l.allowed_origins.is_some() {
            return Err((
                "allowed_origins",
                format!("only ws and wss listeners check origins, not {p}"),
            ));
        }
    }
    if let Some(path) = &l.path
        && (!path.starts_with('/') || path.contains(char::is_whitespace))
    {
        return Err((
            "path",
            format!("must start with / and have no spaces, got {path:?}"),
        ));
    }
    if l.max_connections == Some(0) {
        return Err((
            "max_connections",
            "must be between 1 and 4294967295, got 0".into(),
        ));
    }
    if let Some(t) = l.connect_timeout
        && !(1..=3600).contains(&t.as_secs())
    {
        let s = t.as_secs();
        return Err((
            "connect_timeout",
            format!("must be between 1 and 3600, got {s}"),
        ));
    }
    if let Some(tls) = &l.tls {
        validate_tls(tls)?;
    }
    Ok(())
}

/// Plugin names unique, one source each, known bundled names and listeners, sane limits.
fn validate_plugins(config: &Config) -> Result<(), Invalid> {
    let mut names = HashMap::new();
    for (i, p) in config.plugin_chain.iter().enumerate() {
        let at = |key: &str| {
            KeyPath::keys(&["plugin"])
                .with(Seg::Index(i))
                .with(Seg::Key(key.to_owned()))
        };
        let bad = |key: &str, message: String| {
            Err(Invalid {
                path: at(key),
                message,
            })
        };
        if p.name.is_empty()
            || p.name.len() > 64
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(
                "name",
                format!(
                    "must be 1 to 64 letters, digits, '-' or '_', got {:?}",
                    p.name
                ),
            );
        }
        if let Some(first) = names.insert(p.name.as_str(), i) {
            return bad(
                "name",
                format!("duplicate plugin name {:?} (also plugin[{first}])", p.name),
            );
        }
        match (&p.wasm, &p.bundled) {
            (Some(_), Some(_)) => {
                return bad(
                    "bundled",
                    "give either `wasm` or `bundled`, not both".into(),
                );
            }
            (None, None) => {
                return bad(
                    "wasm",
                    "a plugin needs `wasm = \"FILE\"` or `bundled = \"NAME\"`".into(),
                );
            }
            (None, Some(b)) if !crate::policy::wasm::bundled::exists(b) => {
                return bad(
                    "bundled",
                    format!(
                        "no bundled plugin called {b:?} (there are: {})",
                        crate::policy::wasm::bundled::names().join(", ")
                    ),
                );
            }
            _ => {}
        }
        if let Some(h) = &p.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return bad("sha256", "must be 64 hexadecimal digits".into());
        }
        if let Some(listeners) = &p.listeners {
            for l in listeners {
                if !config.listeners.iter().any(|x| &x.name == l) {
                    return bad("listeners", format!("no listener called {l:?}"));
                }
            }
        }
        let ranged = [
            ("min_instances", u64::from(p.min_instances), 1, 1024),
            ("max_instances", u64::from(p.max_instances), 1, 1024),
            ("memory_limit_mib", u64::from(p.memory_limit_mib), 1, 4096),
            ("cpu_budget_ms", u64::from(p.cpu_budget_ms), 1, 60_000),
            (
                "authenticate_timeout_ms",
                u64::from(p.authenticate_timeout_ms),
                1,
                60_000,
            ),
            (
                "authorize_timeout_ms",
                u64::from(p.authorize_timeout_ms),
                1,
                60_000,
            ),
        ];
        for (key, value, min, max) in ranged {
            if !(min..=max).contains(&value) {
                return bad(key, format!("must be between {min} and {max}, got {value}"));
            }
        }
        if p.min_instances > p.max_instances {
            return bad(
                "min_instances",
                format!("must not exceed max_instances ({})", p.max_instances),
            );
        }
        if let Some(kv) = &p.grants.kv {
            let at_kv = |key: &str| {
                KeyPath::keys(&["plugin"])
                    .with(Seg::Index(i))
                    .with(Seg::Key("grants".into()))
                    .with(Seg::Key("kv".into()))
                    .with(Seg::Key(key.to_owned()))
            };
            if !(1..=10_000_000).contains(&kv.max_entries) {
                return Err(Invalid {
                    path: at_kv("max_entries"),
                    message: format!("must be between 1 and 10000000, got {}", kv.max_entries),
                });
            }
            if !(1..=1 << 30).contains(&kv.max_bytes) {
                return Err(Invalid {
                    path: at_kv("max_bytes"),
                    message: format!("must be between 1 and 1073741824, got {}", kv.max_bytes),
                });
            }
        }
        validate_grants(i, p)?;
        validate_sql_grant(i, p)?;
    }
    Ok(())
}

/// Most files one plugin may be granted.
const MAX_GRANTED_FILES: usize = 32;

/// The `files`, `password`, `http` and `ldap` grants of `plugin[i]`.
fn validate_grants(i: usize, plugin: &crate::config::PluginConfig) -> Result<(), Invalid> {
    let grants = &plugin.grants;
    let at = |keys: &[&str]| {
        keys.iter().fold(
            KeyPath::keys(&["plugin"])
                .with(Seg::Index(i))
                .with(Seg::Key("grants".into())),
            |path, k| path.with(Seg::Key((*k).to_owned())),
        )
    };
    if let Some(files) = &grants.files {
        if files.len() > MAX_GRANTED_FILES {
            return Err(Invalid {
                path: at(&["files"]),
                message: format!(
                    "at most {MAX_GRANTED_FILES} files may be granted, got {}",
                    files.len()
                ),
            });
        }
        for (name, path) in files {
            if !is_grant_name(name) {
                return Err(Invalid {
                    path: at(&["files"]),
                    message: format!(
                        "a file's name must be 1 to 64 letters, digits, '-', '_' or '.', got {name:?}"
                    ),
                });
            }
            if path.as_os_str().is_empty() {
                return Err(Invalid {
                    path: at(&["files", name.as_str()]),
                    message: "the path is empty".into(),
                });
            }
        }
    }
    if let Some(password) = &grants.password
        && !(1..=64).contains(&password.pool_size)
    {
        return Err(Invalid {
            path: at(&["password", "pool_size"]),
            message: format!("must be between 1 and 64, got {}", password.pool_size),
        });
    }
    if let Some(http) = &grants.http {
        http.check().map_err(|(key, index, message)| {
            let mut path = at(&["http", key]);
            if let Some(index) = index {
                path = path.with(Seg::Index(index));
            }
            Invalid { path, message }
        })?;
    }
    if let Some(ldap) = &grants.ldap {
        if ldap.is_empty() {
            return Err(Invalid {
                path: at(&["ldap"]),
                message: "name at least one directory: [plugin.grants.ldap.NAME] with its url"
                    .into(),
            });
        }
        for (name, directory) in ldap {
            check_named(
                "directory",
                name,
                directory.check(plugin.authenticate_timeout_ms),
                |keys| at(&[&["ldap"], keys].concat()),
            )?;
        }
    }
    Ok(())
}

/// One entry of a named grant table (`[plugin.grants.ldap.NAME]`, `[plugin.grants.sql.NAME]`):
/// its name, then what its own `check` found; `at` gives the key path below the table.
fn check_named(
    what: &str,
    name: &str,
    checked: Result<(), (&'static str, String)>,
    at: impl Fn(&[&str]) -> KeyPath,
) -> Result<(), Invalid> {
    if !is_grant_name(name) {
        return Err(Invalid {
            path: at(&[name]),
            message: format!(
                "a {what}'s name must be 1 to 64 letters, digits, '-', '_' or '.', got {name:?}"
            ),
        });
    }
    checked.map_err(|(key, message)| Invalid {
        path: at(&[name, key]),
        message,
    })
}

/// A name a plugin asks for a granted thing by (a file, a directory).
fn is_grant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The `sql` grant of `plugin[i]`: connection names as for files, each connection's keys.
fn validate_sql_grant(i: usize, p: &crate::config::PluginConfig) -> Result<(), Invalid> {
    let Some(connections) = &p.grants.sql else {
        return Ok(());
    };
    let at = |keys: &[&str]| {
        keys.iter().fold(
            KeyPath::keys(&["plugin"])
                .with(Seg::Index(i))
                .with(Seg::Key("grants".into()))
                .with(Seg::Key("sql".into())),
            |path, k| path.with(Seg::Key((*k).to_owned())),
        )
    };
    for (name, connection) in connections {
        check_named(
            "connection",
            name,
            connection.check(p.authenticate_timeout_ms),
            at,
        )?;
    }
    Ok(())
}

/// The admin API: loopback unless allowed, one source of the token, a token worth the name.
fn validate_admin(config: &Config) -> Result<(), Invalid> {
    let a = &config.admin;
    let bad = |key: &str, message: String| {
        Err(Invalid {
            path: KeyPath::keys(&["admin", key]),
            message,
        })
    };
    if a.token.is_some() && a.token_file.is_some() {
        return bad(
            "token_file",
            "give either `token` or `token_file`, not both".into(),
        );
    }
    if let Some(t) = &a.token
        && (t.trim().len() < 16 || t.trim() != t)
    {
        return bad(
            "token",
            "must be at least 16 characters, without surrounding white space".into(),
        );
    }
    if a.enabled() && !a.bind.ip().is_loopback() && !a.allow_remote {
        return bad(
            "bind",
            format!(
                "{} is not a loopback address; set `allow_remote = true` if the API must be \
                 reachable from the network",
                a.bind
            ),
        );
    }
    Ok(())
}

fn validate_tls(tls: &TlsConfig) -> Result<(), (&'static str, String)> {
    let secs = tls.handshake_timeout.as_secs();
    if !(1..=600).contains(&secs) {
        return Err((
            "tls.handshake_timeout",
            format!("must be between 1 and 600, got {secs}"),
        ));
    }
    let secs = tls.reload_interval.as_secs();
    if secs > 86_400 {
        return Err((
            "tls.reload_interval",
            format!("must be between 0 and 86400, got {secs}"),
        ));
    }
    if tls.client_ca.is_none() {
        let needs_ca = "needs client_ca (the CAs that issue client certificates)";
        if tls.client_certs.is_some() {
            return Err(("tls.client_certs", needs_ca.into()));
        }
        if tls.crl.is_some() {
            return Err(("tls.crl", needs_ca.into()));
        }
        if tls.identity_as_username != IdentityAsUsername::Off {
            return Err(("tls.identity_as_username", needs_ca.into()));
        }
    }
    // The files are read now, so that a bad certificate is a configuration error with a line
    // number rather than a failure at start.
    crate::net::tls::ServerTls::load(tls).map_err(|e| (e.key(), e.to_string()))?;
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
        let l = &mut config.limits;
        l.max_connections = Some(1);
        l.max_connections_per_ip = Some(1);
        l.connection_rate_per_ip = Some(1);
        l.publish_rate_per_client = Some(1);
        l.publish_bytes_per_client = Some(1);
        l.max_retained_messages = Some(1);
        l.max_retained_bytes = Some(1);
        l.max_retained_messages_per_client = Some(1);
        l.max_retained_bytes_per_client = Some(1);
        l.max_persistent_sessions = Some(1);
        let values = ranged_values(&config);
        for ((key, min, max), (value_key, value)) in RANGES.iter().zip(values) {
            assert_eq!(*key, value_key);
            let value = value.unwrap();
            assert!((min..=max).contains(&&value), "{key} default {value}");
        }
        assert!(validate(&config).is_ok());
    }
}
