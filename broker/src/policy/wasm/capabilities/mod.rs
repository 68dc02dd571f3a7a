//! The capabilities the host offers a plugin beyond its own memory, one file each, as the
//! operator grants them per plugin in `[plugin.grants]`.
//!
//! Each file implements the host side of one WIT interface (`wit/capabilities.wit`) for
//! [`HostState`](super::host::HostState). A call to a capability the operator did not grant
//! answers `not-granted` (an error value, never a trap), and the attempt is logged
//! ([`PluginContext::refuse`](super::host::PluginContext)).
//!
//! - `kv`: a private key-value space with TTLs and a quota, shared by all instances.
//! - `files`: the granted files, read once per generation ([`FileSnapshot`]); a change on
//!   disk starts a new generation (`policy::chain::watch`).
//! - `password`: password hashes checked on a bounded blocking pool ([`PasswordPool`]).
//! - [`http`]: outgoing HTTP(S) to granted origins, checked after name resolution and on
//!   every redirect ([`http::HttpClient`]).
//! - [`ldap`]: simple binds and searches on granted directories (plain, LDAPS, StartTLS),
//!   searches on pooled service-account connections, each bind on a connection of its own
//!   ([`ldap::Directories`]).
//! - [`sql`]: queries on database connections the broker owns, PostgreSQL or SQLite, bound
//!   parameters, read-only, capped and timed ([`sql::SqlConnections`]).
//!
//! `tls` holds the TLS client settings `http`, `ldap` and `sql` share.
//!
//! What a plugin was granted lives in [`Granted`], one per plugin, shared by its generations;
//! only the file snapshot belongs to a generation.

mod files;
pub mod http;
mod kv;
pub mod ldap;
mod password;
pub mod sql;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;

pub use files::{FileSnapshot, Fingerprint, MAX_FILE_BYTES};
use kv::KvSpace;
pub use password::{
    Caps as PasswordCaps, PasswordPool, hash_new as new_password_hash,
    scram_new as new_scram_verifier,
};

use super::LoadError;
use crate::config::Grants;

/// What one plugin was granted, ready to serve.
pub struct Granted {
    pub(in crate::policy::wasm) kv: Option<Mutex<KvSpace>>,
    /// The granted files, by the name the plugin asks for.
    pub files: Option<Arc<BTreeMap<String, PathBuf>>>,
    pub(in crate::policy::wasm) password: Option<PasswordPool>,
    pub(in crate::policy::wasm) http: Option<http::HttpClient>,
    pub(in crate::policy::wasm) ldap: Option<ldap::Directories>,
    pub(in crate::policy::wasm) sql: Option<sql::SqlConnections>,
}

impl Granted {
    /// Fails if a grant refers to something that cannot be had (a `ca_file`, an `ldap`
    /// grant's `bind_password_file`, an `sql` connection's `password_file`).
    pub fn new(grants: &Grants) -> Result<Granted, LoadError> {
        let http = grants
            .http
            .as_ref()
            .map(http::HttpClient::new)
            .transpose()
            .map_err(|why| LoadError::Grant {
                capability: "http",
                why,
            })?;
        let ldap = grants
            .ldap
            .as_ref()
            .map(ldap::Directories::new)
            .transpose()
            .map_err(|why| LoadError::Grant {
                capability: "ldap",
                why,
            })?;
        let sql = grants
            .sql
            .as_ref()
            .map(sql::SqlConnections::new)
            .transpose()
            .map_err(|why| LoadError::Grant {
                capability: "sql",
                why,
            })?;
        Ok(Granted {
            kv: grants.kv.as_ref().map(|g| Mutex::new(KvSpace::new(g))),
            files: grants.files.clone().map(Arc::new),
            password: grants.password.as_ref().map(PasswordPool::new),
            http,
            ldap,
            sql,
        })
    }

    /// Reads the granted files (blocking); an empty snapshot without a `files` grant.
    pub fn read_files(&self) -> FileSnapshot {
        match &self.files {
            Some(grant) => FileSnapshot::read(grant),
            None => FileSnapshot::default(),
        }
    }
}
