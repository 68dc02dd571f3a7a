//! TLS for `tls` and `wss` listeners: building the rustls server configuration from PEM files,
//! verifying client certificates (mutual TLS, CRLs), the facts a verified session gives the
//! policy ([`TlsInfo`]), and reloading certificates without dropping connections.
//!
//! Why rustls (through tokio-rustls): memory-safe, TLS 1.2 and 1.3 only (nothing older can be
//! switched on by mistake), and its crypto provider (aws-lc-rs) is already in the build through
//! the test clients. Certificates are read with the PEM parser of `rustls-pki-types`, which
//! rustls itself uses (the older `rustls-pemfile` is now a thin wrapper over it).
//!
//! Reload: a listener's [`ServerTls`] holds the current `Arc<rustls::ServerConfig>` behind a
//! short lock; each handshake clones the `Arc` once and keeps it, so a reload swaps the pointer
//! for *new* handshakes while connections that already finished theirs carry on with the
//! keys they negotiated. A reload that fails (a certificate written but not yet its key) keeps
//! the old configuration and is logged; the next change or SIGHUP tries again.
//!
//! Change detection polls the files' metadata (modification time, size, inode) every
//! `reload_interval` seconds rather than using inotify: certificate rotation is a rare event
//! that may wait seconds, polling four `stat`s costs nothing, and it sees the atomic symlink
//! swaps that Kubernetes and cert-manager use, which inotify watchers on the files miss.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytestring::ByteString;
use parking_lot::{Mutex, RwLock};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ClientCerts, IdentityAsUsername, Protocol, TlsConfig, TlsVersion};
use crate::policy::TlsInfo;

/// Why a TLS configuration could not be built. Each names the `[listener.tls]` key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
}

impl TlsError {
    /// The key of the `[listener.tls]` table this error is about, as `tls.cert`.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Invalid { key, .. } => key,
        }
    }
}

/// The TLS side of one listener: the current rustls configuration and how to rebuild it.
pub struct ServerTls {
    settings: TlsConfig,
    protocol: Protocol,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' metadata as of the last load attempt, to notice changes.
    stamps: Mutex<Vec<Stamp>>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode,
    })
}

impl ServerTls {
    /// Reads the files of `settings` and builds the configuration for a `protocol` listener.
    pub fn load(settings: &TlsConfig) -> Result<ServerTls, TlsError> {
        ServerTls::load_for(settings, Protocol::Tls)
    }

    /// As [`ServerTls::load`], for a listener of `protocol` (`tls` offers ALPN `mqtt`, `wss`
    /// offers `http/1.1`).
    pub fn load_for(settings: &TlsConfig, protocol: Protocol) -> Result<ServerTls, TlsError> {
        let stamps = ServerTls::stamps_of(settings);
        let config = build(settings, protocol)?;
        Ok(ServerTls {
            settings: settings.clone(),
            protocol,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(stamps),
        })
    }

    fn stamps_of(settings: &TlsConfig) -> Vec<Stamp> {
        settings
            .files()
            .into_iter()
            .map(|p| {
                stamp(p).unwrap_or(Stamp {
                    modified: None,
                    len: 0,
                    inode: 0,
                })
            })
            .collect()
    }

    /// The configuration for a handshake starting now.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// The listener's TLS settings.
    pub fn settings(&self) -> &TlsConfig {
        &self.settings
    }

    /// Rebuilds the configuration from the files and swaps it in for new handshakes. On error
    /// the current configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = ServerTls::stamps_of(&self.settings);
        let result = build(&self.settings, self.protocol);
        *self.stamps.lock() = stamps;
        *self.current.write() = Arc::new(result?);
        Ok(())
    }

    /// Whether any file changed since the last load attempt.
    pub fn files_changed(&self) -> bool {
        *self.stamps.lock() != ServerTls::stamps_of(&self.settings)
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// Every item of type `T` in the PEM file at `path`; at least one.
fn pem_items<T: PemObject>(key: &'static str, path: &Path, what: &str) -> Result<Vec<T>, TlsError> {
    let text = read(key, path)?;
    let items = T::pem_slice_iter(&text)
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| invalid(key, path, format!("not a valid PEM file: {e}")))?;
    if items.is_empty() {
        return Err(invalid(key, path, format!("no {what} in it")));
    }
    Ok(items)
}

/// Builds the rustls configuration for `settings`.
fn build(settings: &TlsConfig, protocol: Protocol) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| invalid("tls.min_version", &settings.cert, e))?;

    let builder = match (&settings.client_ca, settings.client_certs()) {
        (Some(ca_path), mode) if mode != ClientCerts::None => {
            let mut roots = RootCertStore::empty();
            let cas: Vec<CertificateDer<'static>> =
                pem_items("tls.client_ca", ca_path, "CERTIFICATE")?;
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| invalid("tls.client_ca", ca_path, e))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl_path) = &settings.crl {
                let crls: Vec<CertificateRevocationListDer<'static>> =
                    pem_items("tls.crl", crl_path, "X509 CRL")?;
                verifier = verifier.with_crls(crls);
            }
            if mode == ClientCerts::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| {
                let (key, path) = match &settings.crl {
                    Some(crl) if e.to_string().contains("CRL") => ("tls.crl", crl),
                    _ => ("tls.client_ca", ca_path),
                };
                invalid(key, path, e)
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };

    let chain: Vec<CertificateDer<'static>> = pem_items("tls.cert", &settings.cert, "CERTIFICATE")?;
    let key_text = read("tls.key", &settings.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        invalid(
            "tls.key",
            &settings.key,
            format!("no private key (PKCS#8, PKCS#1 or SEC1 PEM) in it: {e}"),
        )
    })?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("tls.key", &settings.key, e))?;
    // ALPN: `mqtt` for MQTT over TLS (IANA registered), `http/1.1` for the WebSocket upgrade.
    // A client that offers ALPN without either is refused, as RFC 7301 says; one that offers
    // none is served.
    config.alpn_protocols = match protocol {
        Protocol::Wss => vec![b"http/1.1".to_vec()],
        _ => vec![b"mqtt".to_vec()],
    };
    Ok(config)
}

/// The facts of an established TLS session for the policy (see [`TlsInfo`]).
pub fn session_info(conn: &ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let suite = s.suite();
            suite
                .as_str()
                .map_or_else(|| format!("{suite:?}"), str::to_owned)
        })
        .unwrap_or_default();
    let mut info = TlsInfo {
        version,
        cipher,
        sni: conn.server_name().map(str::to_owned),
        ..TlsInfo::default()
    };
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf.as_ref());
        info.peer_fingerprint_sha256 = Some(hex(digest.as_ref()));
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
            info.peer_subject = Some(rfc4514(cert.subject()));
            info.peer_sans = sans(&cert);
        }
    }
    info
}

/// The user name `mode` takes from the verified client certificate, if it has one.
pub fn identity_username(conn: &ServerConnection, mode: IdentityAsUsername) -> Option<ByteString> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    use x509_parser::extensions::GeneralName;
    let san = |pick: fn(&GeneralName<'_>) -> Option<String>| {
        let ext = cert.subject_alternative_name().ok()??;
        ext.value.general_names.iter().find_map(pick)
    };
    let name = match mode {
        IdentityAsUsername::Off => None,
        IdentityAsUsername::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok().map(str::to_owned)),
        IdentityAsUsername::SanDns => san(|g| match g {
            GeneralName::DNSName(s) => Some((*s).to_owned()),
            _ => None,
        }),
        IdentityAsUsername::SanEmail => san(|g| match g {
            GeneralName::RFC822Name(s) => Some((*s).to_owned()),
            _ => None,
        }),
        IdentityAsUsername::SanUri => san(|g| match g {
            GeneralName::URI(s) => Some((*s).to_owned()),
            _ => None,
        }),
    };
    name.filter(|n| !n.is_empty()).map(ByteString::from)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Short names of the attribute types RFC 4514 (and common practice) gives short names.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("2.5.4.3", "CN"),
    ("2.5.4.6", "C"),
    ("2.5.4.7", "L"),
    ("2.5.4.8", "ST"),
    ("2.5.4.9", "STREET"),
    ("2.5.4.10", "O"),
    ("2.5.4.11", "OU"),
    ("2.5.4.5", "serialNumber"),
    ("0.9.2342.19200300.100.1.25", "DC"),
    ("0.9.2342.19200300.100.1.1", "UID"),
    ("1.2.840.113549.1.9.1", "emailAddress"),
];

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs, `+`
/// inside one, special characters escaped; a value that is not a string as `#` and hex.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|atv| {
                    let oid = atv.attr_type().to_id_string();
                    let ty = SHORT_NAMES
                        .iter()
                        .find(|(id, _)| *id == oid)
                        .map_or(oid.clone(), |(_, short)| (*short).to_owned());
                    let value = match atv.as_str() {
                        Ok(s) => escape_dn_value(s),
                        Err(_) => format!("#{}", hex(atv.attr_value().data)),
                    };
                    format!("{ty}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// Escapes an attribute value per RFC 4514 section 2.4.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
            continue;
        }
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The subject alternative names as text: DNS names, e-mail addresses, URIs, IP addresses.
fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                Some((*s).to_owned())
            }
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => {
                    Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped_as_rfc_4514_says() {
        assert_eq!(escape_dn_value("plain"), "plain");
        assert_eq!(escape_dn_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_dn_value("#lead"), "\\#lead");
        assert_eq!(escape_dn_value(" pad "), "\\ pad\\ ");
        assert_eq!(escape_dn_value("q\"<>;\\"), "q\\\"\\<\\>\\;\\\\");
    }

    #[test]
    fn subject_is_written_last_rdn_first() {
        let mut params = rcgen::CertificateParams::new(vec!["d.example".into()]).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "DE");
        dn.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        dn.push(rcgen::DnType::CommonName, "device-7");
        params.distinguished_name = dn;
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.1.2.3".parse().unwrap()));
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(
            "ops@example.com".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        assert_eq!(rfc4514(parsed.subject()), "CN=device-7,O=Acme\\, Inc.,C=DE");
        assert_eq!(
            sans(&parsed),
            vec!["d.example", "10.1.2.3", "ops@example.com"]
        );
    }
}
