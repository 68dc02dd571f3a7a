//! The `[admin]` table: the operator's HTTP API (see `crate::admin`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[admin]`. The API is off unless `token` or `token_file` is set.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// `bind`: the address the API listens on. It must be a loopback address unless
    /// `allow_remote` is set. Default: `"127.0.0.1:9883"`.
    #[serde(deserialize_with = "super::de_socket_addr")]
    pub bind: SocketAddr,
    /// `token`: the bearer token every request must carry (`Authorization: Bearer TOKEN`), at
    /// least 16 characters. Prefer `token_file`, which keeps it out of the configuration.
    pub token: Option<String>,
    /// `token_file`: a file holding the token (surrounding white space ignored); it must not
    /// be readable or writable by group or others.
    pub token_file: Option<PathBuf>,
    /// `allow_remote`: allow `bind` on a non-loopback address. Default: false.
    pub allow_remote: bool,
    /// `max_body_mib`: the largest request body, in MiB (a plugin component can be large:
    /// a Python one is about 20 MiB). Range 1 to 1024. Default: 64.
    pub max_body_mib: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 9883)),
            token: None,
            token_file: None,
            allow_remote: false,
            max_body_mib: 64,
        }
    }
}

impl AdminConfig {
    /// Whether the API is to run.
    pub fn enabled(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }
}

// By hand: the token is a secret and must not reach a log through `{:?}`.
impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "<secret>"))
            .field("token_file", &self.token_file)
            .field("allow_remote", &self.allow_remote)
            .field("max_body_mib", &self.max_body_mib)
            .finish()
    }
}
