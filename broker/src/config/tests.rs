//! Tests of configuration loading: defaults, the example, overrides, and that every kind of
//! error names the file, the line and the dotted key.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_str_named(text, "moat.toml")
}

#[test]
fn defaults_are_secure_and_as_documented() {
    let c = Config::default();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].name, "default");
    assert_eq!(
        c.listeners[0].bind,
        "127.0.0.1:1883".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.listeners[0].protocol, Protocol::Tcp);
    let l = &c.limits;
    assert_eq!(l.max_packet_size, 1_048_576);
    assert_eq!(l.receive_maximum, 1024);
    assert_eq!(l.max_inflight, 64);
    assert_eq!(l.max_queued_messages, 1000);
    assert_eq!(l.queue_overflow, QueueOverflow::DropOldest);
    assert!(!l.queue_qos0_offline);
    assert_eq!(l.slow_subscriber_timeout, Duration::from_secs(2));
    assert_eq!(l.max_keepalive, 65535);
    assert_eq!(l.topic_alias_maximum, 64);
    assert_eq!(l.max_session_expiry, u32::MAX);
    assert_eq!(l.max_message_expiry, None);
    assert_eq!(l.connect_timeout, Duration::from_secs(10));
    assert_eq!(l.max_topic_levels, 64);
    assert_eq!(l.max_topic_length, 65535);
    assert_eq!(l.max_subscriptions_per_client, 1000);
    assert_eq!(l.maximum_qos, QoS::ExactlyOnce);
    assert!(l.retain_available);
    assert_eq!(l.max_client_id_length, 65535);
    assert_eq!(c.sys.interval, Duration::from_secs(10));
    assert!(c.sys.enabled());
    assert_eq!(c.log.filter, "info");
    assert_eq!(c.storage.backend, StorageBackend::Disk);
    assert_eq!(c.storage.dir, None);
    assert_eq!(c.storage.durability, Durability::Sync);
    assert_eq!(c.storage.commit_interval_ms, 10);
}

#[test]
fn storage_section_parses() {
    let c = parse(
        "[storage]\nbackend = \"memory\"\ndir = \"/var/lib/moat\"\ndurability = \"batched\"\ncommit_interval_ms = 50\n",
    )
    .unwrap();
    assert_eq!(c.storage.backend, StorageBackend::Memory);
    assert_eq!(c.storage.data_dir(), Some("/var/lib/moat".into()));
    assert_eq!(c.storage.durability, Durability::Batched);
    assert_eq!(c.storage.commit_interval_ms, 50);
}

#[test]
fn default_data_dir_is_the_state_directory_not_the_cwd() {
    let dir = StorageConfig::default().data_dir();
    if let Some(dir) = dir {
        assert!(dir.is_absolute() || std::env::var_os("XDG_STATE_HOME").is_some());
        assert!(dir.ends_with("moat"), "{dir:?}");
        assert_ne!(dir, std::env::current_dir().unwrap());
    }
}

#[test]
fn empty_file_gives_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(
        parse("# nothing\n[limits]\n[sys]\n").unwrap(),
        Config::default()
    );
}

#[test]
fn example_parses_to_the_defaults() {
    assert_eq!(parse(EXAMPLE).unwrap(), Config::default());
}

#[test]
fn example_documents_every_key() {
    // Every key of every table appears in the example, commented out or not.
    for key in [
        "name",
        "bind",
        "protocol",
        "max_packet_size",
        "receive_maximum",
        "max_inflight",
        "max_queued_messages",
        "queue_overflow",
        "queue_qos0_offline",
        "slow_subscriber_timeout",
        "max_keepalive",
        "topic_alias_maximum",
        "max_session_expiry",
        "max_message_expiry",
        "connect_timeout",
        "max_topic_levels",
        "max_topic_length",
        "max_subscriptions_per_client",
        "maximum_qos",
        "retain_available",
        "max_client_id_length",
        "max_connections",
        "max_connections_per_ip",
        "connection_rate_per_ip",
        "publish_rate_per_client",
        "publish_bytes_per_client",
        "max_retained_messages",
        "max_retained_bytes",
        "max_retained_messages_per_client",
        "max_retained_bytes_per_client",
        "max_persistent_sessions",
        "auth_failure_delay_max",
        "connect_timeout",
        "proxy_protocol_from",
        "path",
        "allowed_origins",
        "cert",
        "key",
        "client_ca",
        "client_certs",
        "crl",
        "identity_as_username",
        "min_version",
        "handshake_timeout",
        "reload_interval",
        "interval",
        "filter",
        "backend",
        "dir",
        "durability",
        "allow_anonymous_remote",
        "foreign_session",
        "exhausted",
        "cache_dir",
        "decision_cache_size",
        "wasm",
        "bundled",
        "sha256",
        "hooks",
        "listeners",
        "on_failure",
        "min_instances",
        "max_instances",
        "memory_limit_mib",
        "cpu_budget_ms",
        "authenticate_timeout_ms",
        "authorize_timeout_ms",
        "max_entries",
        "max_bytes",
        "files",
        "password",
        "commit_interval_ms",
        "recheck_subscriptions",
        "watch_dir",
        "watch_interval_ms",
        "token",
        "token_file",
        "allow_remote",
        "max_body_mib",
    ] {
        assert!(
            EXAMPLE.contains(&format!("\n{key} = ")) || EXAMPLE.contains(&format!("# {key} = ")),
            "{key}"
        );
    }
}

#[test]
fn full_config_parses() {
    let c = parse(
        r#"
[[listener]]
name = "lan"
bind = "0.0.0.0:1883"

[[listener]]
bind = "[::1]:1884"

[limits]
max_packet_size = 65536
receive_maximum = 10
maximum_qos = 1
queue_overflow = "drop-newest"
max_message_expiry = 3600
connect_timeout = 5

[sys]
interval = 0

[log]
filter = "warn,moat=debug"
"#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].name, "lan");
    assert_eq!(c.listeners[1].name, "listener-1");
    assert_eq!(
        c.listeners[1].bind,
        "[::1]:1884".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.limits.max_packet_size, 65536);
    assert_eq!(c.limits.receive_maximum, 10);
    assert_eq!(c.limits.maximum_qos, QoS::AtLeastOnce);
    assert_eq!(c.limits.queue_overflow, QueueOverflow::DropNewest);
    assert_eq!(c.limits.max_message_expiry, Some(3600));
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_inflight, 64, "unset keys keep their defaults");
    assert!(!c.sys.enabled());
    assert_eq!(c.log.filter, "warn,moat=debug");
}

#[test]
fn dotted_and_inline_tables_work() {
    let c = parse("limits.max_inflight = 5\nlistener = [{ bind = \"127.0.0.1:1\" }]\n").unwrap();
    assert_eq!(c.limits.max_inflight, 5);
    assert_eq!(c.listeners[0].name, "listener-0");
}

#[test]
fn listen_overrides_replace_the_listeners() {
    let mut c = Config::default();
    c.apply_listen_overrides(&[]);
    assert_eq!(c, Config::default());
    let addrs: Vec<SocketAddr> = vec![
        "0.0.0.0:1883".parse().unwrap(),
        "[::]:1884".parse().unwrap(),
    ];
    c.apply_listen_overrides(&addrs);
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].name, "listen-0");
    assert_eq!(c.listeners[0].bind, addrs[0]);
    assert_eq!(c.listeners[1].name, "listen-1");
    assert_eq!(c.listeners[1].bind, addrs[1]);
    assert_eq!(c.listeners[1].protocol, Protocol::Tcp);
}

#[test]
fn keep_alive_and_inflight_helpers() {
    let mut l = Limits::default();
    assert_eq!(
        l.server_keep_alive(0),
        None,
        "65535 leaves the client's choice alone"
    );
    assert_eq!(l.server_keep_alive(60), None);
    l.max_keepalive = 300;
    assert_eq!(l.server_keep_alive(0), Some(300));
    assert_eq!(l.server_keep_alive(301), Some(300));
    assert_eq!(l.server_keep_alive(300), None);
    assert_eq!(l.server_keep_alive(60), None);
    assert_eq!(l.inflight_window(65535), 64);
    assert_eq!(l.inflight_window(10), 10);
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, "[limits]\nmax_inflight = 7\n").unwrap();
    assert_eq!(Config::load(&path).unwrap().limits.max_inflight, 7);

    std::fs::write(&path, "[limits]\nmax_inflight = 0\n").unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}:2: limits.max_inflight: must be between 1 and 65535, got 0",
            path.display()
        )
    );

    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

#[test]
fn receive_maximum_zero_reads_exactly_as_documented() {
    let text = "# moat\n\n[log]\nfilter = \"info\"\n\n[limits]\nreceive_maximum = 0\n";
    assert_eq!(
        parse(text).unwrap_err().to_string(),
        "moat.toml:7: limits.receive_maximum: must be between 1 and 65535, got 0"
    );
}

#[test]
fn syntax_error_without_a_key_names_what_it_can() {
    // Inside a table, the table is the best guess at a key.
    let shown = parse("[sys]\ninterval = 5\n\nthis is not toml\n")
        .unwrap_err()
        .to_string();
    assert!(
        shown.starts_with("moat.toml:4: sys: invalid TOML: "),
        "{shown}"
    );
    // Outside any table there is none.
    let shown = parse("# moat\nthis is not toml\n").unwrap_err().to_string();
    assert!(shown.starts_with("moat.toml:2: invalid TOML: "), "{shown}");
}

/// Bad configurations: (what, text, line, key, a fragment of the message).
const BAD: &[(&str, &str, usize, &str, &str)] = &[
    (
        "syntax: broken header",
        "[sys]\ninterval = 5\n[limits\nmax_inflight = 1\n",
        3,
        "limits",
        "invalid TOML",
    ),
    (
        "unknown key in inline table",
        "listener = [\n  { bind = \"127.0.0.1:1\" },\n  { bind = \"127.0.0.1:2\", nmae = \"x\" },\n]\n",
        3,
        "listener[1].nmae",
        "unknown field `nmae`",
    ),
    (
        "float for integer",
        "[limits]\nmax_packet_size = 1e6\n",
        2,
        "limits.max_packet_size",
        "invalid type: floating point",
    ),
    (
        "syntax: missing value",
        "[limits]\nmax_inflight = 1\nreceive_maximum =\n",
        3,
        "limits.receive_maximum",
        "invalid TOML",
    ),
    (
        "syntax: unterminated string",
        "\n[[listener]]\nbind = \"127.0.0.1:1883\n",
        3,
        "listener[0].bind",
        "invalid TOML",
    ),
    (
        "syntax: second listener",
        "[[listener]]\nname = \"a\"\n[[listener]]\nname = 'b\n",
        4,
        "listener[1].name",
        "invalid TOML",
    ),
    (
        "syntax: duplicate key",
        "[limits]\nmax_inflight = 1\nmax_inflight = 2\n",
        3,
        "limits.max_inflight",
        "duplicate key",
    ),
    (
        "unknown top-level table",
        "[limits]\nmax_inflight = 1\n\n[bogus]\nx = 1\n",
        4,
        "bogus",
        "unknown field `bogus`",
    ),
    (
        "unknown key",
        "[limits]\nmax_inflight = 1\nrecieve_maximum = 5\n",
        3,
        "limits.recieve_maximum",
        "unknown field `recieve_maximum`",
    ),
    (
        "unknown listener key",
        "[[listener]]\nname = \"a\"\n[[listener]]\nname = \"b\"\nport = 1883\n",
        5,
        "listener[1].port",
        "unknown field `port`",
    ),
    (
        "wrong type",
        "[sys]\n\ninterval = \"10s\"\n",
        3,
        "sys.interval",
        "invalid type: string \"10s\", expected a whole number of seconds",
    ),
    (
        "wrong type bool",
        "[limits]\nretain_available = \"yes\"\n",
        2,
        "limits.retain_available",
        "invalid type",
    ),
    (
        "listener not an array",
        "listener = 5\n",
        1,
        "listener",
        "invalid type",
    ),
    (
        "out of range",
        "[limits]\nreceive_maximum = 0\n",
        2,
        "limits.receive_maximum",
        "must be between 1 and 65535, got 0",
    ),
    (
        "out of type range",
        "[limits]\n\nmax_inflight = 70000\n",
        3,
        "limits.max_inflight",
        "must be between 1 and 65535, got 70000",
    ),
    (
        "negative",
        "[limits]\nmax_queued_messages = -1\n",
        2,
        "limits.max_queued_messages",
        "must be between 0 and 4294967295, got -1",
    ),
    (
        "packet size",
        "[limits]\nmax_packet_size = 268435461\n",
        2,
        "limits.max_packet_size",
        "must be between 2 and 268435460",
    ),
    (
        "client id length",
        "[limits]\nmax_client_id_length = 22\n",
        2,
        "limits.max_client_id_length",
        "must be between 23 and 65535, got 22",
    ),
    (
        "message expiry zero",
        "[limits]\nmax_message_expiry = 0\n",
        2,
        "limits.max_message_expiry",
        "must be between 1",
    ),
    (
        "connect timeout zero",
        "[limits]\nconnect_timeout = 0\n",
        2,
        "limits.connect_timeout",
        "must be between 1 and 3600",
    ),
    (
        "slow subscriber timeout too long",
        "[limits]\nslow_subscriber_timeout = 3601\n",
        2,
        "limits.slow_subscriber_timeout",
        "must be between 0 and 3600, got 3601",
    ),
    (
        "qos",
        "[limits]\nmaximum_qos = 3\n",
        2,
        "limits.maximum_qos",
        "must be 0, 1 or 2, got 3",
    ),
    (
        "dotted key out of range",
        "limits.max_topic_levels = 0\n",
        1,
        "limits.max_topic_levels",
        "must be between 1",
    ),
    (
        "duplicate listener name",
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:2\"\n",
        6,
        "listener[1].name",
        "duplicate listener name \"a\"",
    ),
    (
        "duplicate defaulted name",
        "[[listener]]\nname = \"listener-1\"\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"127.0.0.1:2\"\n",
        4,
        "listener[1].name",
        "duplicate listener name",
    ),
    (
        "duplicate bind",
        "[[listener]]\nname = \"a\"\n[[listener]]\nname = \"b\"\n",
        3,
        "listener[1].bind",
        "already the address of listener[0]",
    ),
    (
        "no listeners",
        "\nlistener = []\n",
        2,
        "listener",
        "at least one listener",
    ),
    (
        "bad socket addr",
        "[[listener]]\nname = \"a\"\nbind = \"localhost:1883\"\n",
        3,
        "listener[0].bind",
        "got \"localhost:1883\"",
    ),
    (
        "socket addr without port",
        "[[listener]]\nbind = \"0.0.0.0\"\n",
        2,
        "listener[0].bind",
        "expected an IP address and port",
    ),
    (
        "bad enum value",
        "[[listener]]\nname = \"a\"\nprotocol = \"quic\"\n",
        3,
        "listener[0].protocol",
        "unknown variant `quic`",
    ),
    (
        "bad overflow policy",
        "[limits]\nqueue_overflow = \"drop-all\"\n",
        2,
        "limits.queue_overflow",
        "unknown variant `drop-all`",
    ),
    (
        "bad log filter",
        "[log]\nfilter = \"moat=loud\"\n",
        2,
        "log.filter",
        "invalid filter",
    ),
    (
        "negative seconds",
        "[sys]\ninterval = -5\n",
        2,
        "sys.interval",
        "must be between 0 and 86400, got -5",
    ),
    (
        "storage backend",
        "[storage]\nbackend = \"tape\"\n",
        2,
        "storage.backend",
        "unknown variant `tape`",
    ),
    (
        "storage durability",
        "[storage]\ndurability = \"eventually\"\n",
        2,
        "storage.durability",
        "unknown variant `eventually`",
    ),
    (
        "storage commit interval",
        "[storage]\ncommit_interval_ms = 0\n",
        2,
        "storage.commit_interval_ms",
        "must be between 1 and 10000, got 0",
    ),
    (
        "storage empty dir",
        "[storage]\ndir = \"\"\n",
        2,
        "storage.dir",
        "must not be empty",
    ),
    (
        "sys interval",
        "[sys]\ninterval = 86401\n",
        2,
        "sys.interval",
        "must be between 0 and 86400",
    ),
    (
        "plugin without a source",
        "[[plugin]]\nname = \"acl\"\n",
        1,
        "plugin[0].wasm",
        "needs `wasm",
    ),
    (
        "plugin with two sources",
        "[[plugin]]\nname = \"acl\"\nwasm = \"a.wasm\"\nbundled = \"allow-anonymous\"\n",
        4,
        "plugin[0].bundled",
        "not both",
    ),
    (
        "unknown bundled plugin",
        "[[plugin]]\nname = \"acl\"\nbundled = \"nope\"\n",
        3,
        "plugin[0].bundled",
        "no bundled plugin called \"nope\"",
    ),
    (
        "duplicate plugin name",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[[plugin]]\nname = \"a\"\nwasm = \"b.wasm\"\n",
        5,
        "plugin[1].name",
        "duplicate plugin name",
    ),
    (
        "unknown hook",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nhooks = [\"authorise\"]\n",
        4,
        "plugin[0].hooks[0]",
        "unknown variant `authorise`",
    ),
    (
        "plugin on an unknown listener",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nlisteners = [\"lan\"]\n",
        4,
        "plugin[0].listeners",
        "no listener called \"lan\"",
    ),
    (
        "plugin memory limit",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nmemory_limit_mib = 0\n",
        4,
        "plugin[0].memory_limit_mib",
        "must be between 1 and 4096, got 0",
    ),
    (
        "plugin pool bounds",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nmin_instances = 8\nmax_instances = 2\n",
        4,
        "plugin[0].min_instances",
        "must not exceed max_instances",
    ),
    (
        "plugin digest",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nsha256 = \"abc\"\n",
        4,
        "plugin[0].sha256",
        "64 hexadecimal digits",
    ),
    (
        "unknown plugin key",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\ntimeout = 3\n",
        4,
        "plugin[0].timeout",
        "unknown field `timeout`",
    ),
    (
        "http grant without origins",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.http]\ntimeout_ms = 10\n",
        4,
        "plugin[0].grants.http.allow",
        "list at least one origin",
    ),
    (
        "http grant with a path",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.http]\nallow = [\"https://a.example\",\n  \"https://b.example/keys\"]\n",
        6,
        "plugin[0].grants.http.allow[1]",
        "without a path",
    ),
    (
        "http grant with a bad range",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.http]\nallow = [\"https://a.example\"]\nallow_addresses = [\"10.0.0.0/33\"]\n",
        6,
        "plugin[0].grants.http.allow_addresses[0]",
        "not an address range",
    ),
    (
        "http grant timeout",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.http]\nallow = [\"https://a.example\"]\ntimeout_ms = 0\n",
        6,
        "plugin[0].grants.http.timeout_ms",
        "must be between 1 and 60000, got 0",
    ),
    (
        "ldap grant with a DN in its url",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.ldap.corp]\nurl = \"ldap://ldap.example.org/dc=example\"\n",
        5,
        "plugin[0].grants.ldap.corp.url",
        "without a DN",
    ),
    (
        "ldap grant with StartTLS on ldaps",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.ldap.corp]\nurl = \"ldaps://ldap.example.org\"\nstarttls = true\n",
        5,
        "plugin[0].grants.ldap.corp.url",
        "TLS already",
    ),
    (
        "ldap service account without a password",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.ldap.corp]\nurl = \"ldap://ldap.example.org\"\nbind_dn = \"cn=mqtt,dc=example,dc=org\"\n",
        6,
        "plugin[0].grants.ldap.corp.bind_dn",
        "unauthenticated bind",
    ),
    (
        "ldap timeout beyond the login deadline",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nauthenticate_timeout_ms = 1000\n[plugin.grants.ldap.corp]\nurl = \"ldap://ldap.example.org\"\ntimeout_ms = 600\n",
        7,
        "plugin[0].grants.ldap.corp.timeout_ms",
        "more than a third of the plugin's authenticate_timeout_ms",
    ),
    (
        "ldap entries cap",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.ldap.corp]\nurl = \"ldap://ldap.example.org\"\nmax_entries = 0\n",
        6,
        "plugin[0].grants.ldap.corp.max_entries",
        "must be between 1 and 10000, got 0",
    ),
    (
        "ldap directory with a bad name",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.ldap.\"a b\"]\nurl = \"ldap://ldap.example.org\"\n",
        4,
        "plugin[0].grants.ldap.a b",
        "a directory's name must be 1 to 64 letters",
    ),
    (
        "sql connection with a bad name",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.sql.\"a/b\"]\nsqlite = \"u.db\"\n",
        4,
        "plugin[0].grants.sql.a/b",
        "a connection's name must be 1 to 64 letters",
    ),
    (
        "sql grant with both databases",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants.sql.users]\npostgres = \"host=db\"\nsqlite = \"u.db\"\n",
        6,
        "plugin[0].grants.sql.users.sqlite",
        "either `postgres` or `sqlite`",
    ),
    (
        "sql grant timeout above the plugin's deadline",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\nauthenticate_timeout_ms = 500\n[plugin.grants.sql.users]\nsqlite = \"u.db\"\ntimeout_ms = 800\n",
        7,
        "plugin[0].grants.sql.users.timeout_ms",
        "below the plugin's authenticate_timeout_ms (500)",
    ),
    (
        "exhausted",
        "[plugins]\nexhausted = \"maybe\"\n",
        2,
        "plugins.exhausted",
        "unknown variant `maybe`",
    ),
    (
        "foreign session",
        "[security]\nforeign_session = \"share\"\n",
        2,
        "security.foreign_session",
        "unknown variant `share`",
    ),
    (
        "password grant",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants]\npassword = \"yes\"\n",
        5,
        "plugin[0].grants.password",
        "true, false or a table with `pool_size`",
    ),
    (
        "password pool size",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants]\npassword = { pool_size = 0 }\n",
        5,
        "plugin[0].grants.password.pool_size",
        "between 1 and 64",
    ),
    (
        "granted file name",
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants]\nfiles = { \"a/b\" = \"x\" }\n",
        5,
        "plugin[0].grants.files",
        "a file's name must be",
    ),
    (
        "recheck mode",
        "[plugins]\nrecheck_subscriptions = \"sometimes\"\n",
        2,
        "plugins.recheck_subscriptions",
        "unknown variant `sometimes`",
    ),
    (
        "watch interval",
        "[plugins]\nwatch_interval_ms = 1\n",
        2,
        "plugins.watch_interval_ms",
        "must be between 10 and 3600000",
    ),
    (
        "admin API on the network",
        "[admin]\nbind = \"0.0.0.0:9883\"\ntoken = \"0123456789abcdef\"\n",
        2,
        "admin.bind",
        "not a loopback address",
    ),
    (
        "short admin token",
        "[admin]\ntoken = \"short\"\n",
        2,
        "admin.token",
        "at least 16 characters",
    ),
    (
        "two admin tokens",
        "[admin]\ntoken = \"0123456789abcdef\"\ntoken_file = \"t\"\n",
        3,
        "admin.token_file",
        "not both",
    ),
];

#[test]
fn plugins_parse_with_their_own_config_table() {
    let c = parse(
        r#"
[plugins]
exhausted = "allow"
decision_cache_size = 16

[[plugin]]
name = "acl"
wasm = "acl.wasm"
hooks = ["authenticate", "authorize-publish"]
on_failure = "next"
max_instances = 4
[plugin.grants.kv]
max_entries = 10
[plugin.grants.http]
allow = ["https://login.example.com", "http://127.0.0.1:8080"]
allow_addresses = ["10.0.0.0/8"]
[plugin.grants.ldap.corp]
url = "ldaps://ldap.example.org"
bind_dn = "cn=mqtt,ou=services,dc=example,dc=org"
bind_password = "service-secret"
[plugin.config]
users = { alice = "secret" }
levels = [1, 2]
"#,
    )
    .unwrap();
    assert_eq!(c.plugins.exhausted, Exhausted::Allow);
    assert_eq!(c.plugins.decision_cache_size, 16);
    let p = &c.plugin_chain[0];
    assert_eq!(
        p.hooks,
        Some(vec![HookName::Authenticate, HookName::AuthorizePublish])
    );
    assert_eq!(p.on_failure, OnFailure::Next);
    assert_eq!((p.max_instances, p.min_instances), (4, 1));
    assert_eq!(p.grants.kv.as_ref().map(|k| k.max_entries), Some(10));
    let http = p.grants.http.as_ref().unwrap();
    assert_eq!(http.allow.len(), 2);
    assert_eq!((http.timeout_ms, http.max_redirects), (2000, 3));
    let corp = &p.grants.ldap.as_ref().unwrap()["corp"];
    assert_eq!(corp.bind_password.as_deref(), Some("service-secret"));
    assert_eq!(
        (corp.timeout_ms, corp.max_entries, corp.pool_size),
        (600, 100, 4)
    );
    assert_eq!(
        serde_json::Value::Object(p.config.clone()).to_string(),
        r#"{"levels":[1,2],"users":{"alice":"secret"}}"#
    );
}

#[test]
fn plugin_files_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    std::fs::write(
        &path,
        "[[plugin]]\nname = \"a\"\nwasm = \"plugins/a.wasm\"\n\
         [plugin.grants]\nfiles = { passwd = \"etc/passwd\", acl = \"/abs/acl\" }\n\
         [plugin.grants.ldap.corp]\nurl = \"ldaps://ldap.example.org\"\nca_file = \"ca.pem\"\n\
         bind_dn = \"cn=mqtt,dc=example,dc=org\"\nbind_password_file = \"secrets/ldap\"\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let p = &c.plugin_chain[0];
    assert_eq!(p.wasm, Some(dir.path().join("plugins/a.wasm")));
    let files = p.grants.files.as_ref().unwrap();
    assert_eq!(files["passwd"], dir.path().join("etc/passwd"));
    assert_eq!(files["acl"], std::path::PathBuf::from("/abs/acl"));
    let corp = &p.grants.ldap.as_ref().unwrap()["corp"];
    assert_eq!(corp.ca_file, Some(dir.path().join("ca.pem")));
    assert_eq!(
        corp.bind_password_file,
        Some(dir.path().join("secrets/ldap"))
    );
}

#[test]
fn sql_grant_files_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    std::fs::write(
        &path,
        "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n\
         [plugin.grants.sql.users]\nsqlite = \"db/users.db\"\n\
         [plugin.grants.sql.pg]\npostgres = \"host=127.0.0.1 user=moat\"\n\
         password_file = \"pg-pw\"\n",
    )
    .unwrap();
    let c = Config::load(&path).unwrap();
    let sql = c.plugin_chain[0].grants.sql.as_ref().unwrap();
    assert_eq!(sql["users"].sqlite, Some(dir.path().join("db/users.db")));
    assert_eq!(sql["pg"].password_file, Some(dir.path().join("pg-pw")));
    assert_eq!((sql["pg"].max_rows, sql["pg"].timeout_ms), (1000, 1000));
}

#[test]
fn the_password_grant_is_a_flag_or_a_table() {
    let grant = |value: &str| {
        parse(&format!(
            "[[plugin]]\nname = \"a\"\nwasm = \"a.wasm\"\n[plugin.grants]\npassword = {value}\n"
        ))
        .unwrap()
        .plugin_chain[0]
            .grants
            .password
            .clone()
    };
    assert_eq!(grant("true"), Some(PasswordGrant::default()));
    assert!(PasswordGrant::default().pool_size >= 1);
    assert_eq!(grant("false"), None);
    assert_eq!(
        grant("{ pool_size = 3 }"),
        Some(PasswordGrant { pool_size: 3 })
    );
}

#[test]
fn bad_configs_name_file_line_and_key() {
    for &(what, text, line, key, fragment) in BAD {
        let err = match parse(text) {
            Ok(_) => panic!("{what}: parsed"),
            Err(e) => e,
        };
        let shown = err.to_string();
        let prefix = format!("moat.toml:{line}: {key}: ");
        assert!(
            shown.starts_with(&prefix),
            "{what}: expected prefix {prefix:?}, got {shown:?}"
        );
        assert!(
            shown.contains(fragment),
            "{what}: expected {fragment:?} in {shown:?}"
        );
        assert!(!shown.contains('\n'), "{what}: one line please: {shown:?}");
        match err {
            ConfigError::Invalid {
                file,
                line: Some(l),
                key: Some(k),
                ..
            } => {
                assert_eq!(
                    (file.as_str(), l, k.as_str()),
                    ("moat.toml", line, key),
                    "{what}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}
