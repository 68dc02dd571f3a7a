//! The `[[listener]]` tables: transports (`tcp`, `tls`, `ws`, `wss`), their TLS settings, and
//! the limits that belong to one listener rather than to the whole broker.
//!
//! Kept apart from `mod.rs` because a listener is the one part of the configuration that points
//! at files (certificates, keys, CRLs): those are read and checked while the configuration is
//! validated, so a missing or unreadable certificate is reported as `file:line: key: message`
//! like any other mistake (see `validate.rs`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use super::{de_seconds, de_socket_addr};

/// The URL path MQTT over WebSocket is served on unless `path` says otherwise (Mosquitto,
/// HiveMQ and EMQX use the same).
pub const DEFAULT_WS_PATH: &str = "/mqtt";

/// One `[[listener]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// `name`: identifies the listener in logs. Must be unique among listeners. Default:
    /// `listener-N`, where N is the listener's position (from 0) in the file.
    #[serde(default)]
    pub name: String,
    /// `bind`: the IP address and port to listen on, e.g. `"0.0.0.0:1883"` or `"[::]:1883"`.
    /// Host names are not resolved. Must differ between listeners. Default: `"127.0.0.1:1883"`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub bind: SocketAddr,
    /// `protocol`: the transport: `"tcp"`, `"tls"`, `"ws"` or `"wss"`. `tls` and `wss` need a
    /// `[listener.tls]` table. Default: `"tcp"`.
    pub protocol: Protocol,
    /// `[listener.tls]`: certificate, key and client-certificate settings; required for `tls`
    /// and `wss`, refused for the others.
    pub tls: Option<TlsConfig>,
    /// `path`: the HTTP path WebSocket clients connect to (`ws`, `wss` only). Default: `"/mqtt"`.
    pub path: Option<String>,
    /// `allowed_origins`: the web origins (`"https://app.example.com"`) whose pages may connect
    /// (`ws`, `wss` only). A handshake with an `Origin` header not in the list is refused with
    /// HTTP 403; one without (not a browser) is let through. `"*"` allows every origin.
    /// Default: empty, so no web page can reach the listener until it is listed.
    pub allowed_origins: Option<Vec<String>>,
    /// `max_connections`: the most connections this listener holds at once; more are refused
    /// (MQTT 5: CONNACK 0x89, Server busy). Default: unset (only `limits.max_connections`).
    pub max_connections: Option<u32>,
    /// `connect_timeout`: seconds a new connection on this listener has to send CONNECT,
    /// counted after the TLS or WebSocket handshake. Default: `limits.connect_timeout`.
    #[serde(deserialize_with = "de_opt_seconds")]
    pub connect_timeout: Option<Duration>,
    /// `proxy_protocol_from`: addresses or networks (`"10.0.0.0/8"`, `"192.0.2.7"`) of load
    /// balancers that put a PROXY protocol header (v1 or v2) before each connection. From
    /// those the header is required and the client address it names is the one logged and
    /// limited; from any other address no header is accepted. Default: empty (no PROXY
    /// protocol).
    #[serde(deserialize_with = "de_networks")]
    pub proxy_protocol_from: Vec<IpNet>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "default".to_owned(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 1883)),
            protocol: Protocol::Tcp,
            tls: None,
            path: None,
            allowed_origins: None,
            max_connections: None,
            connect_timeout: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl ListenerConfig {
    /// A plain TCP listener on `bind`.
    pub fn tcp(name: &str, bind: SocketAddr) -> ListenerConfig {
        ListenerConfig {
            name: name.to_owned(),
            bind,
            ..ListenerConfig::default()
        }
    }

    /// The WebSocket path (`path` or [`DEFAULT_WS_PATH`]).
    pub fn ws_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_WS_PATH)
    }
}

/// The transport of a listener (`listener.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `"tcp"`: MQTT directly over TCP.
    #[default]
    Tcp,
    /// `"tls"`: MQTT over TLS 1.2 or 1.3 (port 8883 by convention).
    Tls,
    /// `"ws"`: MQTT over WebSocket, for browsers (section 6 of both MQTT specifications).
    Ws,
    /// `"wss"`: MQTT over WebSocket over TLS.
    Wss,
}

impl Protocol {
    /// Whether the transport runs TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Tls | Protocol::Wss)
    }

    /// Whether the transport is WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Protocol::Ws | Protocol::Wss)
    }

    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }
}

/// A `[listener.tls]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `cert`: PEM file with the server certificate followed by its intermediates. Relative
    /// paths are relative to the working directory. Required.
    pub cert: PathBuf,
    /// `key`: PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: PathBuf,
    /// `client_ca`: PEM bundle of the CAs that issue client certificates. Setting it turns on
    /// mutual TLS. Default: unset.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `client_certs`: `"required"` (a client without a valid certificate fails the TLS
    /// handshake) or `"optional"` (clients may present none, but one they present must be
    /// valid). Needs `client_ca`. Default: `"required"` when `client_ca` is set.
    #[serde(default)]
    pub client_certs: Option<ClientCerts>,
    /// `crl`: PEM file of certificate revocation lists; a client certificate revoked by one is
    /// refused. It must hold a current CRL from every CA that issues client certificates
    /// (a certificate whose issuer has none is refused too: fail closed). Needs `client_ca`.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// `identity_as_username`: take the MQTT user name from the verified client certificate
    /// instead of from CONNECT: `"cn"` (subject common name), `"san-dns"`, `"san-email"`,
    /// `"san-uri"` (the first such subject alternative name), or `"off"`. When on, a client
    /// without such a certificate has no user name, whatever CONNECT says. Needs `client_ca`.
    /// Default: `"off"`.
    #[serde(default)]
    pub identity_as_username: IdentityAsUsername,
    /// `min_version`: the oldest TLS version accepted: `"1.2"` or `"1.3"`. Older versions are
    /// never accepted. Default: `"1.2"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// `handshake_timeout`: seconds a client has to complete the TLS handshake. Range 1 to
    /// 600. Default: 10.
    #[serde(default = "default_handshake_timeout", deserialize_with = "de_seconds")]
    pub handshake_timeout: Duration,
    /// `reload_interval`: seconds between checks of the files above for changes; a change
    /// reloads them for new connections without dropping existing ones (as SIGHUP does).
    /// 0 turns the check off (SIGHUP still reloads). Range 0 to 86400. Default: 10.
    #[serde(default = "default_reload_interval", deserialize_with = "de_seconds")]
    pub reload_interval: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl TlsConfig {
    /// A TLS table with the given certificate and key and every other key at its default.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            client_certs: None,
            crl: None,
            identity_as_username: IdentityAsUsername::Off,
            min_version: TlsVersion::V1_2,
            handshake_timeout: default_handshake_timeout(),
            reload_interval: default_reload_interval(),
        }
    }

    /// Whether clients must, may, or cannot present a certificate.
    pub fn client_certs(&self) -> ClientCerts {
        match (&self.client_ca, self.client_certs) {
            (None, _) => ClientCerts::None,
            (Some(_), Some(c)) => c,
            (Some(_), None) => ClientCerts::Required,
        }
    }

    /// Every file the TLS settings read, for change detection.
    pub fn files(&self) -> Vec<&std::path::Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.client_ca.as_deref());
        files.extend(self.crl.as_deref());
        files
    }
}

/// `client_certs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// No client certificates asked for (no `client_ca`).
    #[serde(skip)]
    None,
    /// `"optional"`.
    Optional,
    /// `"required"`.
    Required,
}

/// `identity_as_username`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityAsUsername {
    /// `"off"`: the user name comes from CONNECT.
    #[default]
    Off,
    /// `"cn"`: the subject's common name.
    Cn,
    /// `"san-dns"`: the first DNS name among the subject alternative names.
    SanDns,
    /// `"san-email"`: the first e-mail address among them.
    SanEmail,
    /// `"san-uri"`: the first URI among them.
    SanUri,
}

/// `min_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum TlsVersion {
    /// `"1.2"`: TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    /// `"1.3"`: TLS 1.3 only.
    #[serde(rename = "1.3")]
    V1_3,
}

fn de_opt_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_seconds(d).map(Some)
}

/// Reads a list of addresses or CIDR networks; a bare address is a network of one.
fn de_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "expected an IP address or network such as \"10.0.0.0/8\", got {text:?}"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    fn error(text: &str) -> String {
        match Config::from_str_named(text, "moat.toml") {
            Ok(_) => panic!("parsed: {text}"),
            Err(e @ ConfigError::Invalid { .. }) => e.to_string(),
            Err(e) => panic!("{e}"),
        }
    }

    /// Real PEM files in a temporary directory: a certificate, its key, and a stray key.
    fn files() -> (tempfile::TempDir, String, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p.display().to_string()
        };
        let c = write("cert.pem", cert.pem());
        let k = write("key.pem", key.serialize_pem());
        let o = write("other.pem", other.serialize_pem());
        (dir, c, k, o)
    }

    #[test]
    fn every_transport_parses_with_its_settings() {
        let (_dir, cert, key, _) = files();
        let text = format!(
            r#"
[[listener]]
name = "mqtts"
bind = "0.0.0.0:8883"
protocol = "tls"
max_connections = 100
connect_timeout = 5
proxy_protocol_from = ["10.0.0.0/8", "192.0.2.7"]
[listener.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{cert}"
client_certs = "optional"
identity_as_username = "san-dns"
min_version = "1.3"
handshake_timeout = 3
reload_interval = 0

[[listener]]
bind = "127.0.0.1:8080"
protocol = "ws"
path = "/broker"
allowed_origins = ["https://app.example.com"]
"#
        );
        let c = Config::from_str_named(&text, "moat.toml").unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.protocol, Protocol::Tls);
        assert_eq!(l.max_connections, Some(100));
        assert_eq!(l.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(l.proxy_protocol_from.len(), 2);
        assert!(
            l.proxy_protocol_from[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap())
        );
        let tls = l.tls.as_ref().unwrap();
        assert_eq!(tls.client_certs(), ClientCerts::Optional);
        assert_eq!(tls.identity_as_username, IdentityAsUsername::SanDns);
        assert_eq!(tls.min_version, TlsVersion::V1_3);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
        assert_eq!(tls.reload_interval, Duration::ZERO);
        let ws = &c.listeners[1];
        assert_eq!((ws.protocol, ws.ws_path()), (Protocol::Ws, "/broker"));
        assert_eq!(
            ws.allowed_origins.as_deref().unwrap(),
            ["https://app.example.com"]
        );
        // client_ca without client_certs means required.
        let mut t = tls.clone();
        t.client_certs = None;
        assert_eq!(t.client_certs(), ClientCerts::Required);
    }

    #[test]
    fn listener_rules_name_file_line_and_key() {
        for (text, expected) in [
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"tls\"\n",
                "moat.toml:1: listener[0].tls: a tls listener needs a [listener.tls] table",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\n",
                "moat.toml:3: listener[0].tls: a tcp listener does not use TLS",
            ),
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\npath = \"/mqtt\"\n",
                "moat.toml:3: listener[0].path: only ws and wss listeners have a path",
            ),
            (
                "[[listener]]\nprotocol = \"ws\"\npath = \"mqtt\"\n",
                "moat.toml:3: listener[0].path: must start with /",
            ),
            (
                "[[listener]]\nallowed_origins = [\"*\"]\n",
                "moat.toml:2: listener[0].allowed_origins: only ws and wss",
            ),
            (
                "[[listener]]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n",
                "moat.toml:2: listener[0].proxy_protocol_from: expected an IP address or network",
            ),
            (
                "[[listener]]\nconnect_timeout = 0\n",
                "moat.toml:2: listener[0].connect_timeout: must be between 1 and 3600, got 0",
            ),
            (
                "[[listener]]\nprotocol = \"tls\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\ncrl = \"r\"\n",
                "moat.toml:6: listener[0].tls.crl: needs client_ca",
            ),
            (
                "[[listener]]\nprotocol = \"wss\"\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nhandshake_timeout = 0\n",
                "moat.toml:6: listener[0].tls.handshake_timeout: must be between 1 and 600",
            ),
            (
                "[[listener]]\nprotocol = \"tls\"\n[listener.tls]\ncert = \"c\"\n",
                "moat.toml:3: listener[0].tls: missing field `key`",
            ),
        ] {
            let shown = error(text);
            assert!(
                shown.starts_with(expected),
                "expected {expected:?}, got {shown:?}"
            );
        }
    }

    #[test]
    fn unreadable_or_mismatched_tls_files_name_the_key() {
        let (_dir, cert, key, other) = files();
        let table = |cert: &str, key: &str, extra: &str| {
            format!(
                "[[listener]]\nprotocol = \"tls\"\n[listener.tls]\ncert = \"{cert}\"\n\
                 key = \"{key}\"\n{extra}"
            )
        };
        let shown = error(&table("/nonexistent/cert.pem", &key, ""));
        assert!(
            shown.starts_with(
                "moat.toml:4: listener[0].tls.cert: cannot read /nonexistent/cert.pem"
            ),
            "{shown}"
        );
        let shown = error(&table(&cert, &cert, ""));
        assert!(
            shown.starts_with("moat.toml:5: listener[0].tls.key: "),
            "{shown}"
        );
        assert!(shown.contains("no private key"), "{shown}");
        let shown = error(&table(&cert, &other, ""));
        assert!(
            shown.starts_with("moat.toml:5: listener[0].tls.key: "),
            "{shown}"
        );
        let shown = error(&table(&key, &key, ""));
        assert!(
            shown.starts_with("moat.toml:4: listener[0].tls.cert: "),
            "{shown}"
        );
        assert!(shown.contains("no CERTIFICATE in it"), "{shown}");
        let shown = error(&table(
            &cert,
            &key,
            &format!("client_ca = \"{cert}\"\ncrl = \"{cert}\"\n"),
        ));
        assert!(
            shown.starts_with("moat.toml:7: listener[0].tls.crl: "),
            "{shown}"
        );
        // And a good table loads.
        Config::from_str_named(&table(&cert, &key, ""), "moat.toml").unwrap();
    }
}
