//! The broker's configuration: the TOML file format, its defaults, and loading it with errors
//! that say which file, line and key are wrong.
//!
//! A missing file section or key takes its default, and the defaults are safe to run with: one
//! plain TCP listener on `127.0.0.1:1883`, bounded queues and packet sizes. Every table denies
//! unknown keys, so a misspelt key is an error rather than a silently ignored setting.
//!
//! Loading happens in three steps, each reporting `file:line: key: message`:
//! 1. the text is parsed as TOML with `toml_edit`, which keeps the byte span of every key and
//!    value (syntax errors);
//! 2. the document is deserialized into [`Config`] through `serde_path_to_error`, which supplies
//!    the dotted key of a type error or unknown key (the span comes from `toml_edit`);
//! 3. `validate.rs` checks ranges and cross-field rules on the typed values, and the line of the
//!    offending key is looked up in the parsed document.
//!
//! Layout: this file holds the types and their defaults (their doc comments are the reference
//! for the README), `error.rs` the error type and line/key lookup, `validate.rs` the semantic
//! rules, and `example.toml` the commented example published as [`EXAMPLE`].

mod admin;
mod error;
mod listener;
mod plugins;
mod sql;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::codec::QoS;

pub use admin::AdminConfig;
pub use error::ConfigError;
pub use listener::{
    ClientCerts, DEFAULT_WS_PATH, IdentityAsUsername, ListenerConfig, Protocol, TlsConfig,
    TlsVersion,
};
pub use plugins::{
    Exhausted, ForeignSession, Grants, HookName, HttpGrant, KvGrant, LdapDirectory, OnFailure,
    PasswordGrant, PluginConfig, PluginsConfig, RecheckSubscriptions, SecurityConfig,
};
pub use sql::SqlConnection;

/// A commented example configuration listing every key with its default value. It parses to
/// [`Config::default()`] (a unit test checks this), so it doubles as the reference of defaults.
pub const EXAMPLE: &str = include_str!("example.toml");

/// The largest packet MQTT can express: a remaining length of 268,435,455 bytes plus a fixed
/// header of at most 5 bytes.
pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_455 + 5;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[[listener]]`: the sockets to accept connections on, one table per listener. Default:
    /// a single TCP listener named `default` on `127.0.0.1:1883` (loopback only, so a broker
    /// started without configuration is not reachable from the network). Writing any
    /// `[[listener]]` table replaces this default; at least one listener is required.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[limits]`: protocol limits and resource bounds.
    pub limits: Limits,
    /// `[sys]`: the `$SYS/broker/...` status topics.
    pub sys: SysConfig,
    /// `[log]`: diagnostics on standard error.
    pub log: LogConfig,
    /// `[server]`: the process itself.
    pub server: ServerConfig,
    /// `[storage]`: where durable state (retained messages, persistent sessions, their queued
    /// and in-flight messages) is kept, and how durable an acknowledgement is.
    pub storage: StorageConfig,
    /// `[security]`: rules the broker enforces whatever the plugins say.
    pub security: SecurityConfig,
    /// `[plugins]`: settings of the plugin chain as a whole.
    pub plugins: PluginsConfig,
    /// `[[plugin]]`: the policy plugins, in the order they are asked. Default: none, which
    /// means the bundled `allow-anonymous` plugin on the loopback listeners.
    #[serde(rename = "plugin")]
    pub plugin_chain: Vec<PluginConfig>,
    /// `[admin]`: the operator's HTTP API (plugins, clients, health, metrics). Off unless it
    /// has a token.
    pub admin: AdminConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: vec![ListenerConfig::default()],
            limits: Limits::default(),
            sys: SysConfig::default(),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            storage: StorageConfig::default(),
            security: SecurityConfig::default(),
            plugins: PluginsConfig::default(),
            plugin_chain: Vec::new(),
            admin: AdminConfig::default(),
        }
    }
}

/// The `[limits]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `max_packet_size`: the largest packet, in bytes including the fixed header, that a client
    /// may send. Larger packets close the connection (MQTT 5: reason 0x95, Packet too large);
    /// MQTT 5 clients are told the limit in CONNACK. Range 2 to 268435460. Default: 1048576
    /// (1 MiB).
    pub max_packet_size: u32,
    /// `receive_maximum`: how many QoS 1 and 2 PUBLISH packets a client may have sent to the
    /// broker without their acknowledgement being complete; advertised to MQTT 5 clients in
    /// CONNACK as Receive Maximum. Range 1 to 65535. Default: 1024.
    pub receive_maximum: u16,
    /// `max_inflight`: how many QoS 1 and 2 messages the broker sends to one client before
    /// waiting for acknowledgements. The window is the smaller of this and the client's own
    /// Receive Maximum. Range 1 to 65535. Default: 64.
    pub max_inflight: u16,
    /// `max_queued_messages`: how many messages are queued per client beyond the in-flight window
    /// (while it is offline, or while the window is full). 0 queues nothing. Range 0 to
    /// 4294967295. Default: 1000.
    pub max_queued_messages: u32,
    /// `queue_overflow`: what happens to a message for a client whose queue is full:
    /// `"drop-oldest"` discards the oldest queued message to make room, `"drop-newest"` discards
    /// the new one. Either way the drop is counted. Default: `"drop-oldest"`.
    pub queue_overflow: QueueOverflow,
    /// `queue_qos0_offline`: whether QoS 0 messages are queued for offline clients with a
    /// persistent session (QoS 1 and 2 always are). Default: `false`.
    pub queue_qos0_offline: bool,
    /// `slow_subscriber_timeout`: publisher backpressure. A PUBLISH that fills the queue of a
    /// connected subscriber pauses its publisher (the broker stops reading and acknowledging
    /// it) until that queue is down to half. A subscriber that takes nothing from its full
    /// queue for this many seconds is marked slow: publishers go on and its queue's overflow
    /// policy applies until it catches up. 0 turns backpressure off (full queues always drop).
    /// Offline sessions never pause publishers. Range 0 to 3600. Default: 2.
    #[serde(deserialize_with = "de_seconds")]
    pub slow_subscriber_timeout: Duration,
    /// `max_keepalive`: the longest keep alive, in seconds, a client may use. When it is below
    /// 65535 and an MQTT 5 client asks for 0 (no keep alive) or for more, the broker answers
    /// with Server Keep Alive set to this value; 65535 leaves clients' choices alone. Range 1 to
    /// 65535. Default: 65535.
    pub max_keepalive: u16,
    /// `topic_alias_maximum`: how many topic aliases an MQTT 5 client may use towards the broker
    /// (advertised in CONNACK); 0 disables them. Range 0 to 65535. Default: 64.
    pub topic_alias_maximum: u16,
    /// `max_session_expiry`: the longest session expiry interval, in seconds, granted to a
    /// client; a longer request is lowered to this. 4294967295 means sessions may never expire.
    /// Range 0 to 4294967295. Default: 4294967295.
    pub max_session_expiry: u32,
    /// `max_message_expiry`: if set, the longest time in seconds a message is kept for delivery
    /// (retained or queued); messages without an expiry, or with a longer one, get this one.
    /// Range 1 to 4294967295. Default: unset (messages without an expiry never expire).
    pub max_message_expiry: Option<u32>,
    /// `connect_timeout`: seconds a new connection has to send CONNECT before it is closed.
    /// Range 1 to 3600. Default: 10.
    #[serde(deserialize_with = "de_seconds")]
    pub connect_timeout: Duration,
    /// `max_topic_levels`: the most `/`-separated levels a topic name or filter may have.
    /// Range 1 to 65535. Default: 64.
    pub max_topic_levels: u16,
    /// `max_topic_length`: the longest topic name or filter, in bytes of UTF-8. Range 1 to
    /// 65535. Default: 65535.
    pub max_topic_length: u16,
    /// `max_subscriptions_per_client`: the most topic filters one session may be subscribed to;
    /// further subscriptions are refused (MQTT 5: reason 0x97, Quota exceeded; 3.1.1: 0x80).
    /// Range 1 to 4294967295. Default: 1000.
    pub max_subscriptions_per_client: u32,
    /// `maximum_qos`: the highest QoS the broker supports: 0, 1 or 2. MQTT 5 clients are told in
    /// CONNACK; subscriptions are granted at most this QoS. Default: 2.
    #[serde(deserialize_with = "de_qos")]
    pub maximum_qos: QoS,
    /// `retain_available`: whether retained messages are supported. When `false`, MQTT 5
    /// clients are told in CONNACK and a PUBLISH with the retain flag is refused. Default: `true`.
    pub retain_available: bool,
    /// `max_client_id_length`: the longest client identifier accepted, in bytes. MQTT requires
    /// at least 23 to be allowed. Range 23 to 65535. Default: 65535.
    pub max_client_id_length: u16,
    /// `max_connections`: the most client connections the broker holds at once, over all
    /// listeners; more are refused (MQTT 5: CONNACK 0x89, Server busy; 3.1.1: return code 3).
    /// Range 1 to 4294967295. Default: unset (no limit but the operating system's).
    pub max_connections: Option<u32>,
    /// `max_connections_per_ip`: the most connections from one client address (IPv6: one /64
    /// network) at once; more are refused (MQTT 5: CONNACK 0x97, Quota exceeded). Range 1 to
    /// 4294967295. Default: unset.
    pub max_connections_per_ip: Option<u32>,
    /// `connection_rate_per_ip`: new connections per second one client address (IPv6: /64)
    /// may open, in bursts of up to this many; faster ones are refused (MQTT 5: CONNACK 0x9F,
    /// Connection rate exceeded). Range 1 to 4294967295. Default: unset.
    pub connection_rate_per_ip: Option<u32>,
    /// `publish_rate_per_client`: PUBLISH packets per second one connection may send, in
    /// bursts of up to this many. A faster client is slowed down: the broker stops reading
    /// from it until it is back within the rate (nothing is lost, TCP pushes back). Range 1 to
    /// 4294967295. Default: unset.
    pub publish_rate_per_client: Option<u32>,
    /// `publish_bytes_per_client`: PUBLISH payload bytes per second one connection may send,
    /// in bursts of up to this many (a larger payload passes after a longer wait); slowed down
    /// like `publish_rate_per_client`. Range 1 to 4294967295. Default: unset.
    pub publish_bytes_per_client: Option<u32>,
    /// `max_retained_messages`: the most retained messages the broker keeps. A new retained
    /// topic beyond it is refused (MQTT 5 QoS 1/2: PUBACK/PUBREC 0x97, Quota exceeded; else
    /// dropped and counted); replacing or clearing one is always allowed. Range 1 to
    /// 4294967295. Default: unset.
    pub max_retained_messages: Option<u32>,
    /// `max_retained_bytes`: the most payload bytes of all retained messages together; refused
    /// like `max_retained_messages`. Range 1 to 2^63-1. Default: unset.
    pub max_retained_bytes: Option<u64>,
    /// `max_retained_messages_per_client`: the most retained messages one client identifier
    /// may have published that are still retained. Range 1 to 4294967295. Default: unset.
    pub max_retained_messages_per_client: Option<u32>,
    /// `max_retained_bytes_per_client`: the most payload bytes of those. Range 1 to 2^63-1.
    /// Default: unset.
    pub max_retained_bytes_per_client: Option<u64>,
    /// `max_persistent_sessions`: the most sessions with a non-zero expiry interval (kept
    /// while their client is offline). A CONNECT that would create one more is refused (MQTT
    /// 5: CONNACK 0x97, Quota exceeded). Range 1 to 4294967295. Default: unset.
    pub max_persistent_sessions: Option<u32>,
    /// `auth_failure_delay_max`: each refused authentication from an address (IPv6: its /64)
    /// is answered after a delay: 0.1 s, then 0.2 s, 0.4 s, ... up to this many seconds, so
    /// that guessing passwords is slow; 10 quiet minutes forget the failures. Successful
    /// logins are never delayed. 0 turns the delay off. Range 0 to 3600. Default: 10.
    #[serde(deserialize_with = "de_seconds")]
    pub auth_failure_delay_max: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size: 1_048_576,
            receive_maximum: 1024,
            max_inflight: 64,
            max_queued_messages: 1000,
            queue_overflow: QueueOverflow::DropOldest,
            queue_qos0_offline: false,
            slow_subscriber_timeout: Duration::from_secs(2),
            max_keepalive: 65535,
            topic_alias_maximum: 64,
            max_session_expiry: u32::MAX,
            max_message_expiry: None,
            connect_timeout: Duration::from_secs(10),
            max_topic_levels: 64,
            max_topic_length: 65535,
            max_subscriptions_per_client: 1000,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            max_client_id_length: 65535,
            max_connections: None,
            max_connections_per_ip: None,
            connection_rate_per_ip: None,
            publish_rate_per_client: None,
            publish_bytes_per_client: None,
            max_retained_messages: None,
            max_retained_bytes: None,
            max_retained_messages_per_client: None,
            max_retained_bytes_per_client: None,
            max_persistent_sessions: None,
            auth_failure_delay_max: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The Server Keep Alive to send an MQTT 5 client that asked for `requested` seconds, or
    /// `None` to accept its value: `Some(max_keepalive)` when `max_keepalive` is below 65535 and
    /// the client asked for 0 or for more than `max_keepalive`.
    pub fn server_keep_alive(&self, requested: u16) -> Option<u16> {
        let max = self.max_keepalive;
        (max < u16::MAX && (requested == 0 || requested > max)).then_some(max)
    }

    /// The outbound in-flight window for a client that advertised `client_receive_maximum`
    /// (65535 when it did not): the smaller of that and `max_inflight`.
    pub fn inflight_window(&self, client_receive_maximum: u16) -> u16 {
        self.max_inflight.min(client_receive_maximum).max(1)
    }
}

/// What to discard when a client's queue is full (`limits.queue_overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOverflow {
    /// `"drop-oldest"`: discard the oldest queued message and queue the new one.
    #[default]
    DropOldest,
    /// `"drop-newest"`: keep the queue and discard the new message.
    DropNewest,
}

/// The `[sys]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SysConfig {
    /// `interval`: seconds between updates of the `$SYS/broker/...` topics; 0 disables them.
    /// Range 0 to 86400. Default: 10.
    #[serde(deserialize_with = "de_seconds")]
    pub interval: Duration,
}

impl Default for SysConfig {
    fn default() -> Self {
        SysConfig {
            interval: Duration::from_secs(10),
        }
    }
}

impl SysConfig {
    /// Whether `$SYS` topics are published at all (`interval` is not 0).
    pub fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// The `[server]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// `worker_threads`: threads serving connections (1 to 1024). Default: one per CPU core.
    /// Set it to 1 to pin the broker to one core for benchmarks.
    pub worker_threads: Option<usize>,
}

/// The `[storage]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `backend`: `"disk"` keeps durable state in an embedded database (redb) under `dir`, so
    /// retained messages, persistent sessions and acknowledged QoS 1/2 messages survive a
    /// restart or a crash; `"memory"` keeps it in the process only (lost when it ends).
    /// Default: `"disk"`.
    pub backend: StorageBackend,
    /// `dir`: the data directory, created if missing; the database is the file `moat.redb` in
    /// it. Default: the platform's state directory for moat: `$XDG_STATE_HOME/moat`, or
    /// `~/.local/state/moat` when `XDG_STATE_HOME` is unset (never the current directory).
    pub dir: Option<std::path::PathBuf>,
    /// `durability`: when a QoS 1/2 message counts as accepted. `"sync"`: it is on disk
    /// (fsync) before PUBACK/PUBREC is sent; concurrent connections share one commit (group
    /// commit). `"batched"`: acknowledged at once and committed every `commit_interval_ms`; a
    /// crash can lose what was acknowledged in the last interval. Default: `"sync"`.
    pub durability: Durability,
    /// `commit_interval_ms`: milliseconds between commits in `"batched"` mode. Range 1 to
    /// 10000. Default: 10.
    pub commit_interval_ms: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Disk,
            dir: None,
            durability: Durability::Sync,
            commit_interval_ms: 10,
        }
    }
}

impl StorageConfig {
    /// The data directory: `dir` if set, else the platform's state directory for moat
    /// (`$XDG_STATE_HOME/moat`, else `$HOME/.local/state/moat`). `None` when neither `dir`,
    /// `XDG_STATE_HOME` nor `HOME` is set.
    pub fn data_dir(&self) -> Option<std::path::PathBuf> {
        if let Some(dir) = &self.dir {
            return Some(dir.clone());
        }
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(state) = env("XDG_STATE_HOME") {
            return Some(std::path::PathBuf::from(state).join("moat"));
        }
        env("HOME").map(|home| std::path::PathBuf::from(home).join(".local/state/moat"))
    }
}

/// Where durable state lives (`storage.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// `"disk"`: the embedded database under `storage.dir`.
    #[default]
    Disk,
    /// `"memory"`: nothing survives the process.
    Memory,
}

/// When an accepted QoS 1/2 message is acknowledged (`storage.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `"sync"`: after it is on disk (group commit).
    #[default]
    Sync,
    /// `"batched"`: at once; committed every `commit_interval_ms`.
    Batched,
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `filter`: which diagnostics to print, as a `tracing` env-filter directive such as
    /// `"info"` or `"warn,moat=debug"`. The `RUST_LOG` environment variable, when set, takes
    /// precedence. Default: `"info"`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".to_owned(),
        }
    }
}

impl Config {
    /// Reads and checks the configuration file at `path`. Errors name the file as given.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_str_named(&text, &path.display().to_string())?;
        // Plugin files, granted files and CA files, the watched folder and the token file named
        // relative to the configuration file.
        let base = path.parent().unwrap_or(Path::new(""));
        let mut paths: Vec<&mut std::path::PathBuf> = Vec::new();
        for plugin in &mut config.plugin_chain {
            let granted = plugin.grants.files.iter_mut().flat_map(|f| f.values_mut());
            let ca = plugin
                .grants
                .http
                .iter_mut()
                .filter_map(|h| h.ca_file.as_mut());
            let ldap = plugin
                .grants
                .ldap
                .iter_mut()
                .flat_map(|d| d.values_mut())
                .flat_map(|d| d.ca_file.iter_mut().chain(d.bind_password_file.iter_mut()));
            paths.extend(plugin.wasm.iter_mut().chain(granted).chain(ca).chain(ldap));
            for db in plugin.grants.sql.iter_mut().flat_map(|s| s.values_mut()) {
                paths.extend(db.sqlite.iter_mut());
                paths.extend(db.password_file.iter_mut());
                paths.extend(db.ca_file.iter_mut());
            }
        }
        paths.extend(config.plugins.watch_dir.as_mut());
        paths.extend(config.admin.token_file.as_mut());
        for path in paths {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }

    /// Parses and checks configuration `text`; `file_name` is only used in error messages.
    pub fn from_str_named(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        let doc = toml_edit::ImDocument::parse(text)
            .map_err(|e| error::syntax_error(text, file_name, &e))?;
        let de = toml_edit::de::Deserializer::from(doc.clone());
        let mut config: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| error::serde_error(text, file_name, doc.as_item(), e))?;
        config.name_listeners();
        validate::validate(&config)
            .map_err(|e| error::semantic_error(text, file_name, doc.as_item(), e))?;
        Ok(config)
    }

    /// Replaces all listeners by plain TCP listeners on `addrs`, named `listen-0`, `listen-1`,
    /// ... (the `--listen` command line option). Does nothing when `addrs` is empty.
    pub fn apply_listen_overrides(&mut self, addrs: &[SocketAddr]) {
        if addrs.is_empty() {
            return;
        }
        self.listeners = addrs
            .iter()
            .enumerate()
            .map(|(i, &bind)| ListenerConfig::tcp(&format!("listen-{i}"), bind))
            .collect();
    }

    /// Gives listeners without a `name` (deserialized as empty) their default name.
    fn name_listeners(&mut self) {
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            if listener.name.is_empty() {
                listener.name = format!("listener-{i}");
            }
        }
    }
}

/// Reads a socket address from a string, with a message that shows the bad value.
pub(crate) fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an IP address and port such as \"0.0.0.0:1883\" or \"[::]:1883\" \
             (host names are not resolved), got {text:?}"
        ))
    })
}

/// Reads a whole number of seconds.
pub(crate) fn de_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Seconds;
    impl serde::de::Visitor<'_> for Seconds {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number of seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }
        fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(secs), &self))
        }
    }
    d.deserialize_u64(Seconds)
}

/// Reads a QoS level from its number.
fn de_qos<'de, D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
    let n = i64::deserialize(d)?;
    u8::try_from(n)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| serde::de::Error::custom(format!("must be 0, 1 or 2, got {n}")))
}
