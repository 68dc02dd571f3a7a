//! The TLS client settings the capabilities that reach out (`http`, `ldap`, `sql`) share: rustls with
//! the process's crypto provider (aws-lc-rs, as the listeners), the system's trusted roots and
//! the grant's own CA certificates.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A client configuration trusting the system's roots and those in `ca_file`, offering `alpn`.
pub fn client_config(
    ca_file: Option<&Path>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    // A system without a certificate store still works with `ca_file`.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate in it", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}
