//! The `ldap` capability: simple binds and searches on the directories the grant names
//! (`[plugin.grants.ldap.NAME]`), over plain LDAP, LDAPS or StartTLS.
//!
//! Why it is built this way:
//! - **Two kinds of connection.** Searches run on a few connections bound as the grant's service
//!   account (or anonymous without one), kept open and shared round-robin (LDAP multiplexes
//!   operations on one connection). A plugin's `bind` always opens a connection of its own and
//!   closes it after the answer: a user's bind must never change the identity later searches
//!   run under, and a connection that carried a user's password is not reused.
//! - **No unauthenticated bind.** A simple bind with a DN and an empty password is an
//!   "unauthenticated bind" that many servers answer with success (RFC 4513 section 5.1.2): an
//!   empty password, or an empty DN, is refused here as `invalid` before anything is sent.
//! - **Answers a plugin can act on.** Wrong credentials are `Ok(false)`; a directory that cannot
//!   be reached, a TLS failure or a refused service account is `unavailable`; no answer within
//!   the grant's `timeout_ms` (connecting included) is `timeout`. The configuration keeps that
//!   timeout at most a third of the plugin's authenticate deadline, so a login's calls end
//!   before the hook's own deadline and the plugin decides (deny, or next) rather than the
//!   hook's `on_failure`.
//! - **Capped answers.** A search asks the server for at most `max_entries + 1` entries and
//!   answers `too-large` beyond `max_entries`, or beyond [`MAX_ANSWER_BYTES`] of text.
//!   Binary attribute values (not UTF-8) are left out: the contract carries strings.
//! - **Recovery.** A pooled connection that broke (the server restarted) is dropped, and the
//!   call is tried once more on a fresh one; while the server is down every call fails fast
//!   with `unavailable`, and the first call after it is back succeeds.
//!
//! The client is the `ldap3` crate (tokio, with rustls: `super::tls`).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, SearchEntry, SearchOptions};
use url::Url;

use super::super::bindings::moat::policy::ldap as wit;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;
use crate::config::LdapDirectory;

/// Most bytes of text (DNs, attribute names and values) one search may answer.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// LDAP result codes (RFC 4511 appendix A) the answers depend on.
mod rc {
    pub const SUCCESS: u32 = 0;
    pub const SIZE_LIMIT_EXCEEDED: u32 = 4;
    pub const NO_SUCH_OBJECT: u32 = 32;
    pub const INVALID_DN_SYNTAX: u32 = 34;
    pub const INAPPROPRIATE_AUTHENTICATION: u32 = 48;
    pub const INVALID_CREDENTIALS: u32 = 49;
    pub const INSUFFICIENT_ACCESS_RIGHTS: u32 = 50;
}

/// Where a directory is: its URL and whether StartTLS upgrades it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: Url,
    starttls: bool,
}

impl Endpoint {
    /// Parses a grant's `url` (`ldap://host[:port]` or `ldaps://host[:port]`, nothing more).
    pub fn parse(text: &str, starttls: bool) -> Result<Endpoint, String> {
        let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match url.scheme() {
            "ldap" => {}
            "ldaps" if starttls => {
                return Err(format!(
                    "{text:?}: StartTLS upgrades an ldap:// connection; ldaps:// is TLS already"
                ));
            }
            "ldaps" => {}
            other => {
                return Err(format!(
                    "{text:?}: the scheme must be ldap or ldaps, not {other}"
                ));
            }
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{text:?}: the URL names no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{text:?}: credentials go in bind_dn and bind_password, not the URL"
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: the URL is scheme://host[:port], without a DN or parameters"
            ));
        }
        Ok(Endpoint { url, starttls })
    }
}

/// Why a call produced no answer; [`Failure::to_wit`] maps it onto `capability-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than the grant allows ({0})")]
    TooLarge(String),
}

impl Failure {
    pub fn to_wit(&self) -> CapabilityError {
        match self {
            Failure::Invalid(why) => CapabilityError::Invalid(why.clone()),
            Failure::Unavailable(why) => CapabilityError::Unavailable(why.clone()),
            Failure::Timeout(_) => CapabilityError::Timeout,
            Failure::TooLarge(_) => CapabilityError::TooLarge,
        }
    }
}

/// Search scopes, as the contract names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Base,
    OneLevel,
    Subtree,
}

/// One entry of a search's answer: its DN and its textual attributes, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dn: String,
    pub attributes: Vec<(String, Vec<String>)>,
}

/// The `ldap` capability of one plugin: its granted directories, by name.
pub struct Directories {
    by_name: BTreeMap<String, Arc<Directory>>,
}

impl Directories {
    /// Prepares the grant's directories (no connection yet); fails if a `ca_file` or a
    /// `bind_password_file` cannot be read.
    pub fn new(grant: &BTreeMap<String, LdapDirectory>) -> Result<Directories, String> {
        let by_name = grant
            .iter()
            .map(|(name, d)| {
                let directory = Directory::new(d).map_err(|e| format!("directory {name}: {e}"))?;
                Ok((name.clone(), Arc::new(directory)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Directories { by_name })
    }

    /// The directory the grant calls `name`.
    pub fn get(&self, name: &str) -> Option<&Directory> {
        self.by_name.get(name).map(|d| &**d)
    }
}

/// One granted directory: where it is, how to reach it, and its service-account connections.
pub struct Directory {
    endpoint: Endpoint,
    settings: LdapConnSettings,
    service: Option<(String, String)>,
    timeout: Duration,
    max_entries: usize,
    /// The service-account connections, used round-robin; `None` until first needed, and
    /// again after one broke.
    slots: Vec<tokio::sync::Mutex<Option<Ldap>>>,
    next: AtomicUsize,
}

impl Directory {
    fn new(grant: &LdapDirectory) -> Result<Directory, String> {
        let endpoint = Endpoint::parse(&grant.url, grant.starttls)?;
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_millis(grant.connect_timeout_ms.into()))
            .set_starttls(grant.starttls);
        if endpoint.url.scheme() == "ldaps" || grant.starttls {
            let config = super::tls::client_config(grant.ca_file.as_deref(), Vec::new())?;
            settings = settings.set_config(Arc::new(config));
        }
        let password = match (&grant.bind_password, &grant.bind_password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read bind_password_file {}: {e}", path.display())
                })?;
                let first = text.lines().next().unwrap_or_default().to_owned();
                if first.is_empty() {
                    return Err(format!(
                        "bind_password_file {}: the first line is empty",
                        path.display()
                    ));
                }
                Some(first)
            }
            (None, None) => None,
        };
        let service = grant.bind_dn.clone().zip(password);
        Ok(Directory {
            endpoint,
            settings,
            service,
            timeout: Duration::from_millis(grant.timeout_ms.into()),
            max_entries: grant.max_entries as usize,
            slots: (0..grant.pool_size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// A simple bind as `dn` on a connection of its own: true if the credentials are right.
    pub async fn bind(&self, dn: &str, password: &[u8]) -> Result<bool, Failure> {
        if password.is_empty() {
            return Err(Failure::Invalid(
                "an empty password is refused: it would be an unauthenticated bind \
                 (RFC 4513 section 5.1.2)"
                    .into(),
            ));
        }
        if dn.trim().is_empty() {
            return Err(Failure::Invalid(
                "an empty DN is refused: it would be an anonymous bind".into(),
            ));
        }
        let password = std::str::from_utf8(password)
            .map_err(|_| Failure::Invalid("the password is not UTF-8".into()))?;
        self.within(async {
            let mut ldap = self.connect().await?;
            let answer = ldap.simple_bind(dn, password).await;
            // The connection carried a user's password: close it whatever the answer.
            let mut closing = ldap.clone();
            tokio::spawn(async move {
                let _ = closing.unbind().await;
            });
            let result = answer.map_err(broken)?;
            match result.rc {
                rc::SUCCESS => Ok(true),
                rc::INVALID_CREDENTIALS
                | rc::INAPPROPRIATE_AUTHENTICATION
                | rc::INSUFFICIENT_ACCESS_RIGHTS => Ok(false),
                rc::INVALID_DN_SYNTAX => Err(Failure::Invalid(format!(
                    "{dn:?} is not a DN: {}",
                    result.text
                ))),
                code => Err(Failure::Unavailable(format!(
                    "the bind failed with result code {code}: {}",
                    result.text
                ))),
            }
        })
        .await
    }

    /// A search on a service-account connection.
    pub async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attributes: &[String],
    ) -> Result<Vec<Entry>, Failure> {
        let scope = match scope {
            Scope::Base => ldap3::Scope::Base,
            Scope::OneLevel => ldap3::Scope::OneLevel,
            Scope::Subtree => ldap3::Scope::Subtree,
        };
        // A filter that does not parse is the plugin's mistake, not the directory's.
        ldap3::parse_filter(filter)
            .map_err(|_| Failure::Invalid(format!("{filter:?} is not an LDAP filter")))?;
        self.within(async {
            let (mut ldap, reused, slot) = self.service().await?;
            match self
                .search_on(&mut ldap, base, scope, filter, attributes)
                .await
            {
                Err(Broken(why)) => {
                    self.forget(slot).await;
                    if !reused {
                        return Err(Failure::Unavailable(why));
                    }
                    // A kept connection may have died since (the server restarted): once more
                    // on a fresh one.
                    let (mut ldap, _, slot) = self.service().await?;
                    let answer = self
                        .search_on(&mut ldap, base, scope, filter, attributes)
                        .await;
                    if answer.is_err() {
                        self.forget(slot).await;
                    }
                    answer.map_err(|Broken(why)| Failure::Unavailable(why))?
                }
                Ok(answer) => answer,
            }
        })
        .await
    }

    /// Runs `work` under the grant's timeout.
    async fn within<T>(
        &self,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| Failure::Timeout(self.timeout))?
    }

    /// A new connection (TLS as the grant says), its driver running beside it.
    async fn connect(&self) -> Result<Ldap, Failure> {
        let (conn, ldap) =
            LdapConnAsync::from_url_with_settings(self.settings.clone(), &self.endpoint.url)
                .await
                .map_err(|e| {
                    Failure::Unavailable(format!("cannot connect to {}: {e}", self.endpoint.url))
                })?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!("ldap: connection ended: {e}");
            }
        });
        Ok(ldap)
    }

    /// A service-account connection: the next slot's, opened (and bound) if it has none.
    /// Also says whether it was kept from before, and its slot.
    async fn service(&self) -> Result<(Ldap, bool, usize), Failure> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[i].lock().await;
        if let Some(ldap) = slot.as_mut()
            && !ldap.is_closed()
        {
            return Ok((ldap.clone(), true, i));
        }
        let mut ldap = self.connect().await?;
        if let Some((dn, password)) = &self.service {
            let result = ldap.simple_bind(dn, password).await.map_err(|e| {
                Failure::Unavailable(format!("the service account's bind failed: {e}"))
            })?;
            if result.rc != rc::SUCCESS {
                tracing::warn!(
                    "ldap: the directory {} refused the service account {dn:?} (result code {}: {})",
                    self.endpoint.url,
                    result.rc,
                    result.text
                );
                return Err(Failure::Unavailable(format!(
                    "the directory refused the service account (result code {})",
                    result.rc
                )));
            }
        }
        *slot = Some(ldap.clone());
        Ok((ldap, false, i))
    }

    /// Drops the connection of `slot` (it broke).
    async fn forget(&self, slot: usize) {
        if let Some(mut ldap) = self.slots[slot].lock().await.take() {
            tokio::spawn(async move {
                let _ = ldap.unbind().await;
            });
        }
    }

    /// One search on `ldap`: `Err` if the connection broke, else the answer.
    async fn search_on(
        &self,
        ldap: &mut Ldap,
        base: &str,
        scope: ldap3::Scope,
        filter: &str,
        attributes: &[String],
    ) -> Result<Result<Vec<Entry>, Failure>, Broken> {
        let limit = i32::try_from(self.max_entries + 1).unwrap_or(i32::MAX);
        let seconds = i32::try_from(self.timeout.as_secs().max(1)).unwrap_or(i32::MAX);
        ldap.with_search_options(SearchOptions::new().sizelimit(limit).timelimit(seconds));
        let answer = match ldap.search(base, scope, filter, attributes).await {
            Ok(answer) => answer,
            Err(LdapError::FilterParsing) => {
                return Ok(Err(Failure::Invalid(format!(
                    "{filter:?} is not an LDAP filter"
                ))));
            }
            Err(e) => return Err(Broken(format!("the search failed: {e}"))),
        };
        let (raw, result) = (answer.0, answer.1);
        match result.rc {
            rc::SUCCESS => {}
            rc::SIZE_LIMIT_EXCEEDED => {
                return Ok(Err(Failure::TooLarge(format!(
                    "more than {} entries",
                    self.max_entries
                ))));
            }
            // The base does not exist (e.g. a user's own entry, removed): nothing found.
            rc::NO_SUCH_OBJECT => return Ok(Ok(Vec::new())),
            rc::INVALID_DN_SYNTAX => {
                return Ok(Err(Failure::Invalid(format!("{base:?} is not a DN"))));
            }
            code => {
                return Ok(Err(Failure::Unavailable(format!(
                    "the search failed with result code {code}: {}",
                    result.text
                ))));
            }
        }
        if raw.len() > self.max_entries {
            return Ok(Err(Failure::TooLarge(format!(
                "more than {} entries",
                self.max_entries
            ))));
        }
        let mut bytes = 0;
        let mut entries = Vec::with_capacity(raw.len());
        for r in raw {
            // ldap3 panics on an entry it cannot decode: a broken server answer, not a reason
            // to take the broker's task down.
            let Ok(e) = std::panic::catch_unwind(AssertUnwindSafe(|| SearchEntry::construct(r)))
            else {
                return Err(Broken(
                    "the directory sent an entry that does not decode".into(),
                ));
            };
            bytes += e.dn.len();
            let mut attributes: Vec<(String, Vec<String>)> = e.attrs.into_iter().collect();
            attributes.sort();
            bytes += attributes
                .iter()
                .map(|(n, v)| n.len() + v.iter().map(String::len).sum::<usize>())
                .sum::<usize>();
            if bytes > MAX_ANSWER_BYTES {
                return Ok(Err(Failure::TooLarge(format!(
                    "more than {MAX_ANSWER_BYTES} bytes"
                ))));
            }
            entries.push(Entry {
                dn: e.dn,
                attributes,
            });
        }
        Ok(Ok(entries))
    }
}

/// A connection that broke during an operation, and why.
struct Broken(String);

fn broken(e: LdapError) -> Failure {
    Failure::Unavailable(format!("the directory did not answer: {e}"))
}

impl wit::Host for HostState {
    async fn bind(
        &mut self,
        directory: String,
        dn: String,
        password: Vec<u8>,
    ) -> wasmtime::Result<Result<bool, CapabilityError>> {
        let ctx = self.ctx.clone();
        let Some(d) = granted(&ctx, &directory) else {
            return Ok(Err(refuse(&ctx, &directory)));
        };
        Ok(d.bind(&dn, &password).await.map_err(|e| {
            tracing::debug!(plugin = %ctx.name, directory, "ldap bind: {e}");
            e.to_wit()
        }))
    }

    async fn search(
        &mut self,
        directory: String,
        base: String,
        scope: wit::Scope,
        filter: String,
        attributes: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<wit::Entry>, CapabilityError>> {
        let ctx = self.ctx.clone();
        let Some(d) = granted(&ctx, &directory) else {
            return Ok(Err(refuse(&ctx, &directory)));
        };
        let scope = match scope {
            wit::Scope::Base => Scope::Base,
            wit::Scope::OneLevel => Scope::OneLevel,
            wit::Scope::Subtree => Scope::Subtree,
        };
        Ok(match d.search(&base, scope, &filter, &attributes).await {
            Ok(entries) => Ok(entries
                .into_iter()
                .map(|e| wit::Entry {
                    dn: e.dn,
                    attributes: e.attributes,
                })
                .collect()),
            Err(e) => {
                tracing::debug!(plugin = %ctx.name, directory, "ldap search: {e}");
                Err(e.to_wit())
            }
        })
    }
}

fn granted<'a>(ctx: &'a super::super::host::PluginContext, name: &str) -> Option<&'a Directory> {
    ctx.granted.ldap.as_ref()?.get(name)
}

/// The answer to a directory the grant does not name (or no `ldap` grant at all), logged.
fn refuse(ctx: &super::super::host::PluginContext, name: &str) -> CapabilityError {
    if ctx.granted.ldap.is_none() {
        return ctx.refuse("ldap");
    }
    // The name comes from the plugin: keep the log line short.
    let shown: String = name.chars().take(64).collect();
    ctx.refuse_because("ldap", &format!("no directory {shown:?} is granted"))
}

#[cfg(test)]
mod tests;
