//! The configuration of the policy: `[security]`, `[plugins]` and the `[[plugin]]` chain.
//!
//! Each `[[plugin]]` names a Wasm component (a file, or one bundled in the binary), the hooks it
//! serves, the listeners it applies to, its sandbox limits, the capabilities the operator grants
//! it, and its own `[plugin.config]` table, which the plugin receives as JSON in `init`. A
//! configuration with no `[[plugin]]` gets the default chain: the bundled `allow-anonymous`
//! plugin on the listeners bound to a loopback address.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// The `[security]` table: rules the broker enforces itself, whatever the plugins say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// `allow_anonymous_remote`: let the broker start although a listener on a non-loopback
    /// address admits clients without credentials (the plugin chain lets an anonymous client
    /// in there). Default: false, and such a configuration is refused at start.
    pub allow_anonymous_remote: bool,
    /// `foreign_session`: what happens when a principal presents the client identifier of a
    /// session another principal created: `"refuse"` (CONNACK 0x87) or `"replace"` (the old
    /// session ends and a fresh one starts). Default: `"refuse"`.
    pub foreign_session: ForeignSession,
}

/// `security.foreign_session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForeignSession {
    #[default]
    Refuse,
    Replace,
}

/// The `[plugins]` table: settings of the chain as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// `exhausted`: the answer when every plugin said "next" (or none serves the hook):
    /// `"deny"` or `"allow"`. The pre-check `on-connect` always goes on to authentication.
    /// Default: `"deny"`.
    pub exhausted: Exhausted,
    /// `cache_dir`: where compiled plugins are cached (native code: the directory must belong
    /// to the broker's user and be writable by nobody else; it is created with mode 0700).
    /// Default: `$XDG_CACHE_HOME/moat/plugins`, else `~/.cache/moat/plugins`.
    pub cache_dir: Option<PathBuf>,
    /// `decision_cache_size`: decisions each session may reuse (0 disables the cache).
    /// Default: 256.
    pub decision_cache_size: u32,
    /// `recheck_subscriptions`: after the plugins change while the broker runs, each live
    /// subscription is authorized again; a refused one is removed, and then `"disconnect"`
    /// also disconnects an MQTT 5 client with 0x87 Not authorized so it learns (a 3.1.1 client
    /// cannot be told and stays connected), `"drop"` removes it silently, and `"off"` does not
    /// re-check at all. Default: `"disconnect"`.
    pub recheck_subscriptions: RecheckSubscriptions,
    /// `watch_dir`: a folder watched for new plugin components: a file there named
    /// `<plugin name>.wasm`, for a plugin the configuration declares, replaces that plugin's
    /// component (its configuration and grants stay those of the configuration); other files
    /// are logged and ignored. The folder must belong to the broker's user and be writable by
    /// nobody else (checked at start). Write files aside and rename them into place. Default:
    /// none.
    pub watch_dir: Option<PathBuf>,
    /// `watch_interval_ms`: how often `watch_dir` is looked at, in milliseconds (10 to
    /// 3600000). Default: 1000.
    pub watch_interval_ms: u32,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            exhausted: Exhausted::Deny,
            cache_dir: None,
            decision_cache_size: 256,
            recheck_subscriptions: RecheckSubscriptions::Disconnect,
            watch_dir: None,
            watch_interval_ms: 1000,
        }
    }
}

/// `plugins.recheck_subscriptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecheckSubscriptions {
    #[default]
    Disconnect,
    Drop,
    Off,
}

/// `plugins.exhausted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exhausted {
    #[default]
    Deny,
    Allow,
}

/// A hook name in `plugin.hooks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookName {
    OnConnect,
    Authenticate,
    AuthorizePublish,
    AuthorizeSubscribe,
    AuthorizeDeliver,
}

/// `plugin.on_failure`: what a trap, a timeout or a malformed answer of this plugin means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Refuse (fail closed).
    #[default]
    Deny,
    /// Let the next plugin decide, as if this one had said "next"; never an allow.
    Next,
}

/// One `[[plugin]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// `name`: identifies the plugin in logs and metrics. Required; unique.
    pub name: String,
    /// `wasm`: the component file (relative paths are relative to the configuration file).
    pub wasm: Option<PathBuf>,
    /// `bundled`: the name of a plugin embedded in the binary (e.g. `"allow-anonymous"`),
    /// instead of `wasm`.
    pub bundled: Option<String>,
    /// `sha256`: if set, the component's bytes must have this SHA-256 (hex), or it is refused.
    pub sha256: Option<String>,
    /// `hooks`: the hooks the broker calls this plugin for; default: all its manifest lists.
    pub hooks: Option<Vec<HookName>>,
    /// `listeners`: the listeners whose clients this plugin decides about; default: all.
    pub listeners: Option<Vec<String>>,
    /// `on_failure`: `"deny"` (default) or `"next"`.
    pub on_failure: OnFailure,
    /// `min_instances`: instances kept ready (1 to 1024). Default: 1.
    pub min_instances: u32,
    /// `max_instances`: most instances at once, so most concurrent calls (1 to 1024); a call
    /// that finds them all busy waits up to its timeout, then fails. Default: 16.
    pub max_instances: u32,
    /// `memory_limit_mib`: linear memory per instance, in MiB (1 to 4096). Default: 64.
    pub memory_limit_mib: u32,
    /// `cpu_budget_ms`: guest CPU time per call before it is stopped (1 to 60000). Default: 100.
    pub cpu_budget_ms: u32,
    /// `authenticate_timeout_ms`: wall-clock limit of on-connect, authenticate and
    /// continue-auth calls, waiting on capabilities included (1 to 60000). Default: 2000.
    pub authenticate_timeout_ms: u32,
    /// `authorize_timeout_ms`: the same for authorize-publish, -subscribe and -deliver (1 to
    /// 60000). Default: 50.
    pub authorize_timeout_ms: u32,
    /// `[plugin.grants]`: capabilities the operator grants.
    pub grants: Grants,
    /// `[plugin.config]`: the plugin's own settings, passed to its `init` as JSON.
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            name: String::new(),
            wasm: None,
            bundled: None,
            sha256: None,
            hooks: None,
            listeners: None,
            on_failure: OnFailure::Deny,
            min_instances: 1,
            max_instances: 16,
            memory_limit_mib: 64,
            cpu_budget_ms: 100,
            authenticate_timeout_ms: 2000,
            authorize_timeout_ms: 50,
            grants: Grants::default(),
            config: serde_json::Map::new(),
        }
    }
}

/// `[plugin.grants]`: what a plugin may use beyond its own memory. Nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// `[plugin.grants.kv]`: a private key-value space.
    pub kv: Option<KvGrant>,
    /// `files = { NAME = "PATH", ... }`: read-only access to these files, each under the name
    /// the plugin asks for (relative paths are relative to the configuration file). A change
    /// to one of them starts a new generation of the plugin (within about a second).
    pub files: Option<BTreeMap<String, PathBuf>>,
    /// `password = true`, or `[plugin.grants.password]` with `pool_size`: password hashes
    /// checked by the broker (argon2, bcrypt, PBKDF2, Mosquitto's `$7$` and `$6$`).
    #[serde(deserialize_with = "de_password_grant")]
    pub password: Option<PasswordGrant>,
    /// `[plugin.grants.http]`: outgoing HTTP(S) to the origins it lists.
    pub http: Option<HttpGrant>,
    /// `[plugin.grants.ldap.NAME]`: bind and search on the directories it names, each under
    /// the name the plugin asks for.
    pub ldap: Option<BTreeMap<String, LdapDirectory>>,
    /// `[plugin.grants.sql.NAME]`: database connections, by the name the plugin asks for
    /// (see [`SqlConnection`](super::SqlConnection)).
    pub sql: Option<BTreeMap<String, super::SqlConnection>>,
}

/// `[plugin.grants.password]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordGrant {
    /// `pool_size`: most hashes this plugin has checked at once, each on a thread of the
    /// broker's blocking pool (1 to 64); a login waits for a free place, within its
    /// `authenticate_timeout_ms`. Default: half the CPU cores, at least 1.
    pub pool_size: u32,
}

impl Default for PasswordGrant {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PasswordGrant {
            pool_size: (cores / 2).max(1) as u32,
        }
    }
}

/// `password = true | false | { pool_size = N }`.
fn de_password_grant<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PasswordGrant>, D::Error> {
    struct Grant;
    impl<'de> serde::de::Visitor<'de> for Grant {
        type Value = Option<PasswordGrant>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true, false or a table with `pool_size`")
        }
        fn visit_bool<E: serde::de::Error>(self, granted: bool) -> Result<Self::Value, E> {
            Ok(granted.then(PasswordGrant::default))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            PasswordGrant::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Grant)
}

/// `[plugin.grants.kv]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KvGrant {
    /// `max_entries`: most keys at once (1 to 10000000). Default: 10000.
    pub max_entries: u32,
    /// `max_bytes`: most bytes of keys and values together (1 to 1073741824). Default: 16 MiB.
    pub max_bytes: u64,
}

impl Default for KvGrant {
    fn default() -> Self {
        KvGrant {
            max_entries: 10_000,
            max_bytes: 16 << 20,
        }
    }
}

/// `[plugin.grants.http]`: outgoing HTTP(S) requests, to listed origins only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpGrant {
    /// `allow`: the origins (`scheme://host[:port]`, `http` or `https`) the plugin may send
    /// requests to, redirects included. Required: at least one.
    pub allow: Vec<String>,
    /// `allow_addresses`: address ranges (CIDR, e.g. `"10.0.0.0/8"`) beyond the public internet
    /// that the names of allowed origins may resolve to. A name that resolves only to loopback,
    /// private, link-local or other special-purpose addresses is refused unless they are listed
    /// here; an origin written as an IP address allows that one address. Default: none.
    pub allow_addresses: Vec<String>,
    /// `timeout_ms`: wall-clock limit of one request, redirects included (1 to 60000); the
    /// plugin's own call timeout still applies. Default: 2000.
    pub timeout_ms: u32,
    /// `max_body_bytes`: the largest request or response body (1 to 67108864). Default: 1 MiB.
    pub max_body_bytes: u32,
    /// `max_redirects`: redirects followed per request (0 to 10); past that the redirect itself
    /// is the answer. Default: 3.
    pub max_redirects: u32,
    /// `ca_file`: PEM certificates trusted for `https` besides the system's (relative paths are
    /// relative to the configuration file). Default: none.
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpGrant {
    fn default() -> Self {
        HttpGrant {
            allow: Vec::new(),
            allow_addresses: Vec::new(),
            timeout_ms: 2000,
            max_body_bytes: 1 << 20,
            max_redirects: 3,
            ca_file: None,
        }
    }
}

impl HttpGrant {
    /// Checks the grant: the key (and list index) of the first bad value, and why.
    pub fn check(&self) -> Result<(), (&'static str, Option<usize>, String)> {
        use crate::policy::wasm::capabilities::http::Origin;
        if self.allow.is_empty() {
            return Err((
                "allow",
                None,
                "list at least one origin, e.g. \"https://login.example.com\"".into(),
            ));
        }
        for (i, origin) in self.allow.iter().enumerate() {
            Origin::parse(origin).map_err(|why| ("allow", Some(i), why))?;
        }
        for (i, net) in self.allow_addresses.iter().enumerate() {
            net.parse::<ipnet::IpNet>().map_err(|_| {
                (
                    "allow_addresses",
                    Some(i),
                    format!("{net:?} is not an address range such as \"10.0.0.0/8\""),
                )
            })?;
        }
        let ranged = [
            ("timeout_ms", u64::from(self.timeout_ms), 1, 60_000),
            (
                "max_body_bytes",
                u64::from(self.max_body_bytes),
                1,
                64 << 20,
            ),
            ("max_redirects", u64::from(self.max_redirects), 0, 10),
        ];
        for (key, value, min, max) in ranged {
            if !(min..=max).contains(&value) {
                return Err((
                    key,
                    None,
                    format!("must be between {min} and {max}, got {value}"),
                ));
            }
        }
        Ok(())
    }
}

/// `[plugin.grants.ldap.NAME]`: one directory server the broker connects to for the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdapDirectory {
    /// `url`: `ldap://host[:port]` or `ldaps://host[:port]` (TLS from the first byte).
    /// Required.
    pub url: String,
    /// `starttls`: upgrade an `ldap://` connection with StartTLS before anything is sent.
    /// Default: false.
    pub starttls: bool,
    /// `ca_file`: PEM certificates trusted for TLS besides the system's (relative paths are
    /// relative to the configuration file). Default: none.
    pub ca_file: Option<PathBuf>,
    /// `bind_dn`: the service account searches run as. Default: none (anonymous searches).
    pub bind_dn: Option<String>,
    /// `bind_password`: its password; or `bind_password_file`, a file whose first line is it
    /// (relative paths are relative to the configuration file). One of them with `bind_dn`.
    pub bind_password: Option<String>,
    pub bind_password_file: Option<PathBuf>,
    /// `connect_timeout_ms`: limit of the TCP (and TLS) connection (1 to 60000, at most
    /// `timeout_ms`). Default: 300.
    pub connect_timeout_ms: u32,
    /// `timeout_ms`: wall-clock limit of one bind or search, connecting included (1 to 60000).
    /// A login may make three calls (search, bind, group search), so it must be at most a
    /// third of the plugin's `authenticate_timeout_ms`. Default: 600.
    pub timeout_ms: u32,
    /// `max_entries`: most entries one search may answer (1 to 10000); a search finding more
    /// answers `too-large`. Default: 100.
    pub max_entries: u32,
    /// `pool_size`: service-account connections kept open and used at once (1 to 64).
    /// Default: 4.
    pub pool_size: u32,
}

impl Default for LdapDirectory {
    fn default() -> Self {
        LdapDirectory {
            url: String::new(),
            starttls: false,
            ca_file: None,
            bind_dn: None,
            bind_password: None,
            bind_password_file: None,
            connect_timeout_ms: 300,
            timeout_ms: 600,
            max_entries: 100,
            pool_size: 4,
        }
    }
}

impl LdapDirectory {
    /// Checks the directory against the plugin's `authenticate_timeout_ms`: the key of the
    /// first bad value, and why.
    pub fn check(&self, authenticate_timeout_ms: u32) -> Result<(), (&'static str, String)> {
        crate::policy::wasm::capabilities::ldap::Endpoint::parse(&self.url, self.starttls)
            .map_err(|why| ("url", why))?;
        match (&self.bind_dn, &self.bind_password, &self.bind_password_file) {
            (Some(_), Some(_), Some(_)) => {
                return Err((
                    "bind_password_file",
                    "give either `bind_password` or `bind_password_file`, not both".into(),
                ));
            }
            (Some(dn), None, None) => {
                return Err((
                    "bind_dn",
                    format!(
                        "{dn:?} needs `bind_password` or `bind_password_file` (an empty \
                         password would be an unauthenticated bind)"
                    ),
                ));
            }
            (Some(dn), _, _) if dn.trim().is_empty() => {
                return Err(("bind_dn", "must not be empty".into()));
            }
            (Some(_), Some(p), None) if p.is_empty() => {
                return Err(("bind_password", "must not be empty".into()));
            }
            (None, Some(_), _) => {
                return Err(("bind_password", "a password needs `bind_dn`".into()));
            }
            (None, _, Some(_)) => {
                return Err(("bind_password_file", "a password needs `bind_dn`".into()));
            }
            _ => {}
        }
        let ranged = [
            ("connect_timeout_ms", self.connect_timeout_ms, 1, 60_000),
            ("timeout_ms", self.timeout_ms, 1, 60_000),
            ("max_entries", self.max_entries, 1, 10_000),
            ("pool_size", self.pool_size, 1, 64),
        ];
        for (key, value, min, max) in ranged {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must be between {min} and {max}, got {value}")));
            }
        }
        if self.connect_timeout_ms > self.timeout_ms {
            return Err((
                "connect_timeout_ms",
                format!("must not exceed timeout_ms ({})", self.timeout_ms),
            ));
        }
        if u64::from(self.timeout_ms) * 3 > u64::from(authenticate_timeout_ms) {
            return Err((
                "timeout_ms",
                format!(
                    "{} ms is more than a third of the plugin's authenticate_timeout_ms \
                     ({authenticate_timeout_ms} ms): a login may make three LDAP calls, which \
                     must end before the hook's deadline",
                    self.timeout_ms
                ),
            ));
        }
        Ok(())
    }
}
