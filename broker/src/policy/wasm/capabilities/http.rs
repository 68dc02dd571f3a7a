//! The `http` capability: a plugin's outgoing HTTP(S) requests, to the origins its grant lists
//! and nowhere else (e.g. a JWKS to fetch, an authentication webhook to call).
//!
//! Every hop of a request, the first and each redirect, goes through the same steps, so no
//! step can be skipped by a redirect or a DNS answer:
//! 1. its origin (scheme, host, port) must be one the grant lists;
//! 2. the host name is resolved here, and every address is checked: public unicast addresses
//!    pass; loopback, private, link-local (cloud metadata services live there) and the other
//!    special-purpose ranges pass only if the grant lists them (`allow_addresses`) or the
//!    origin is written as that very address;
//! 3. the socket connects to an address that passed, so a second lookup cannot swap it for
//!    another one (DNS rebinding);
//! 4. TLS (rustls, the system's roots plus the grant's `ca_file`) verifies the host name;
//! 5. one HTTP/1.1 request, whose answer is read up to the grant's body cap.
//!
//! Redirects (301, 302, 303, 307, 308) are followed here, at most `max_redirects` of them;
//! one to another origin drops the credentials the plugin sent (`authorization`, `cookie`).
//! The whole exchange runs under the grant's timeout, and the plugin's own wall-clock timeout
//! still covers the call.
//!
//! Why hyper's bare client connection rather than a client library: the checks above need the
//! resolution, the socket and each redirect in our hands. A library with its own resolver,
//! connection pool, redirect policy and proxy settings (reqwest reads `HTTP_PROXY` from the
//! environment, and skips its resolver for addresses written as IPs) would have to be
//! switched off piece by piece, and a missed piece is a hole. No pool: a plugin fetches rarely
//! (a key set, a webhook per connect), and a fresh connection is checked afresh.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

use crate::config::HttpGrant;
use crate::policy::wasm::bindings::moat::policy::http as wit;
use crate::policy::wasm::bindings::moat::policy::types::CapabilityError;
use crate::policy::wasm::host::HostState;

/// Most headers a plugin may send.
const MAX_REQUEST_HEADERS: usize = 64;

/// Headers the broker writes itself (or that would let a plugin smuggle a second request or
/// talk to a proxy); a plugin setting one gets `invalid`.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
];

/// Headers dropped when a redirect leaves the origin the plugin addressed.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// An origin: scheme, host and port. Two URLs may be fetched under the same grant entry only if
/// all three are equal (hosts compare as the URL standard writes them: lowercase names,
/// normalised addresses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    host: Host<String>,
    port: u16,
}

impl Origin {
    /// Parses an origin of the grant's `allow` list: `scheme://host[:port]`, nothing more.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: an origin carries no credentials"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "{text:?}: an origin is scheme://host[:port], without a path"
            ));
        }
        Origin::of(&url).ok_or_else(|| format!("{text:?}: only http and https origins are allowed"))
    }

    /// The origin of `url`, if it is an `http` or `https` URL with a host.
    fn of(url: &Url) -> Option<Origin> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(Origin {
            https,
            host: url.host()?.to_owned(),
            port: url.port_or_known_default()?,
        })
    }

    /// The address the origin is written as, if it is one.
    fn literal(&self) -> Option<IpAddr> {
        match &self.host {
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(a) => Some(IpAddr::V6(*a)),
            Host::Domain(_) => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            Host::Ipv6(a) => write!(f, "{scheme}://[{a}]:{}", self.port),
            host => write!(f, "{scheme}://{host}:{}", self.port),
        }
    }
}

/// Why a request produced no answer. [`FetchError::to_wit`] maps it onto the contract's
/// `capability-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0} is not an origin the grant allows")]
    OriginNotGranted(String),
    #[error("{host} resolves only to addresses the grant does not allow ({addresses})")]
    AddressNotGranted { host: String, addresses: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("the body is larger than the grant's {0} bytes")]
    TooLarge(usize),
}

impl FetchError {
    /// Whether the grant refused the request (logged by the host as a refusal).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FetchError::OriginNotGranted(_) | FetchError::AddressNotGranted { .. }
        )
    }

    pub fn to_wit(&self) -> CapabilityError {
        match self {
            FetchError::OriginNotGranted(_) | FetchError::AddressNotGranted { .. } => {
                CapabilityError::NotGranted
            }
            FetchError::Invalid(why) => CapabilityError::Invalid(why.clone()),
            FetchError::Unavailable(why) => CapabilityError::Unavailable(why.clone()),
            FetchError::Timeout(_) => CapabilityError::Timeout,
            FetchError::TooLarge(_) => CapabilityError::TooLarge,
        }
    }
}

/// A request as a plugin makes it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

/// The answer of the last hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The `http` capability of one plugin: its grant, ready to use. Shared by all its instances.
pub struct HttpClient {
    origins: Vec<Origin>,
    extra_addresses: Vec<IpNet>,
    timeout: Duration,
    max_body: usize,
    max_redirects: u32,
    tls: TlsConnector,
}

impl HttpClient {
    /// Builds the client of a grant checked by the configuration (so its origins and ranges
    /// parse); fails if the grant's `ca_file` cannot be read.
    pub fn new(grant: &HttpGrant) -> Result<HttpClient, String> {
        let origins = grant
            .allow
            .iter()
            .map(|o| Origin::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        let extra_addresses = grant
            .allow_addresses
            .iter()
            .map(|n| {
                n.parse()
                    .map_err(|_| format!("{n:?} is not an address range"))
            })
            .collect::<Result<Vec<IpNet>, _>>()?;
        Ok(HttpClient {
            origins,
            extra_addresses,
            timeout: Duration::from_millis(grant.timeout_ms.into()),
            max_body: grant.max_body_bytes as usize,
            max_redirects: grant.max_redirects,
            tls: tls_connector(grant.ca_file.as_deref())?,
        })
    }

    /// Sends `request`, following redirects, under the grant's rules and timeout.
    pub async fn fetch(&self, request: Request) -> Result<Response, FetchError> {
        tokio::time::timeout(self.timeout, self.follow(request))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))?
    }

    async fn follow(&self, request: Request) -> Result<Response, FetchError> {
        let mut method = parse_method(&request.method)?;
        let mut headers = parse_headers(&request.headers)?;
        let mut body = Bytes::from(request.body.unwrap_or_default());
        if body.len() > self.max_body {
            return Err(FetchError::TooLarge(self.max_body));
        }
        let mut url = Url::parse(&request.url)
            .map_err(|e| FetchError::Invalid(format!("{:?} is not a URL: {e}", request.url)))?;
        let first = self.granted(&url)?;
        let mut hops = 0;
        loop {
            let origin = self.granted(&url)?;
            let response = self
                .send_once(&url, &origin, &method, &headers, &body)
                .await?;
            let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::OK);
            let location = response
                .headers
                .iter()
                .find(|(n, _)| n == "location")
                .map(|(_, v)| v.clone());
            let followed = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let (true, Some(location)) = (followed, location) else {
                return Ok(response);
            };
            if hops == self.max_redirects {
                return Ok(response);
            }
            hops += 1;
            url = url.join(&location).map_err(|e| {
                FetchError::Unavailable(format!("a redirect to {location:?}, not a URL: {e}"))
            })?;
            // 303, and 301/302 after a POST, turn into a GET without a body (as browsers do);
            // 307 and 308 repeat the request as it was.
            let to_get = status == StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && method == Method::POST);
            if to_get && method != Method::HEAD {
                method = Method::GET;
                body = Bytes::new();
                headers.retain(|(n, _)| !n.as_str().starts_with("content-"));
            }
            if Origin::of(&url).as_ref() != Some(&first) {
                headers.retain(|(n, _)| !CREDENTIAL_HEADERS.contains(&n.as_str()));
            }
        }
    }

    /// The origin of `url` if the grant lists it.
    fn granted(&self, url: &Url) -> Result<Origin, FetchError> {
        match Origin::of(url) {
            Some(origin) if self.origins.contains(&origin) => Ok(origin),
            Some(origin) => Err(FetchError::OriginNotGranted(origin.to_string())),
            None => Err(FetchError::OriginNotGranted(format!(
                "{}://{}",
                url.scheme(),
                url.host_str().unwrap_or("")
            ))),
        }
    }

    /// Whether a connection to `ip` is allowed for `origin`; see the module doc.
    fn address_allowed(&self, ip: IpAddr, origin: &Origin) -> bool {
        let ip = canonical(ip);
        is_public(ip)
            || origin.literal().map(canonical) == Some(ip)
            || self.extra_addresses.iter().any(|net| net.contains(&ip))
    }

    /// Resolves the origin's host and connects to the first allowed address that answers.
    async fn connect(&self, origin: &Origin) -> Result<TcpStream, FetchError> {
        let candidates: Vec<IpAddr> = match &origin.host {
            Host::Domain(name) => tokio::net::lookup_host((name.as_str(), origin.port))
                .await
                .map_err(|e| FetchError::Unavailable(format!("cannot resolve {name}: {e}")))?
                .map(|a| a.ip())
                .collect(),
            _ => origin.literal().into_iter().collect(),
        };
        let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) = candidates
            .into_iter()
            .partition(|ip| self.address_allowed(*ip, origin));
        if allowed.is_empty() {
            return Err(FetchError::AddressNotGranted {
                host: origin.host.to_string(),
                addresses: refused
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let mut last = None;
        for ip in allowed {
            match TcpStream::connect(SocketAddr::new(ip, origin.port)).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(format!("{ip}: {e}")),
            }
        }
        Err(FetchError::Unavailable(format!(
            "cannot connect to {origin} ({})",
            last.unwrap_or_default()
        )))
    }

    /// One hop: connect, TLS if `https`, one request, its answer read up to the cap.
    async fn send_once(
        &self,
        url: &Url,
        origin: &Origin,
        method: &Method,
        headers: &[(HeaderName, HeaderValue)],
        body: &Bytes,
    ) -> Result<Response, FetchError> {
        let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
        let authority = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut builder = hyper::Request::builder()
            .method(method.clone())
            .uri(if target.is_empty() { "/" } else { target })
            .header(header::HOST, authority);
        if !headers.iter().any(|(n, _)| *n == header::USER_AGENT) {
            builder = builder.header(
                header::USER_AGENT,
                concat!("moat/", env!("CARGO_PKG_VERSION")),
            );
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body.clone()))
            .map_err(|e| FetchError::Invalid(format!("cannot build the request: {e}")))?;
        let tcp = self.connect(origin).await?;
        if !origin.https {
            return self.exchange(TokioIo::new(tcp), request).await;
        }
        let name = match &origin.host {
            Host::Domain(d) => ServerName::try_from(d.clone())
                .map_err(|e| FetchError::Invalid(format!("{d:?} is not a TLS server name: {e}")))?,
            Host::Ipv4(a) => ServerName::IpAddress(IpAddr::V4(*a).into()),
            Host::Ipv6(a) => ServerName::IpAddress(IpAddr::V6(*a).into()),
        };
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Unavailable(format!("TLS with {origin}: {e}")))?;
        self.exchange(TokioIo::new(tls), request).await
    }

    async fn exchange<T>(
        &self,
        io: T,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<Response, FetchError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let unavailable = |e: hyper::Error| FetchError::Unavailable(format!("HTTP: {e}"));
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(unavailable)?;
        // The connection runs beside us; dropping the guard (an answer read, an error, the
        // timeout) stops it and closes the socket.
        let _connection = AbortOnDrop(tokio::spawn(connection));
        let response = sender.send_request(request).await.map_err(unavailable)?;
        let (parts, mut body) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(FetchError::TooLarge(self.max_body));
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(unavailable)?.into_data() {
                if bytes.len() + data.len() > self.max_body {
                    return Err(FetchError::TooLarge(self.max_body));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status: parts.status.as_u16(),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: bytes,
        })
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_method(method: &str) -> Result<Method, FetchError> {
    let m = Method::from_bytes(method.as_bytes())
        .map_err(|_| FetchError::Invalid(format!("{method:?} is not an HTTP method")))?;
    match m {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => Ok(m),
        _ => Err(FetchError::Invalid(format!(
            "method {method} is not allowed (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)"
        ))),
    }
}

fn parse_headers(
    headers: &[(String, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, FetchError> {
    if headers.len() > MAX_REQUEST_HEADERS {
        return Err(FetchError::Invalid(format!(
            "at most {MAX_REQUEST_HEADERS} headers"
        )));
    }
    headers
        .iter()
        .map(|(name, value)| {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FetchError::Invalid(format!("{name:?} is not a header name")))?;
            if RESERVED_HEADERS.contains(&n.as_str()) || n.as_str().starts_with("proxy-") {
                return Err(FetchError::Invalid(format!(
                    "the broker sets the {n} header itself"
                )));
            }
            let v = HeaderValue::from_str(value)
                .map_err(|_| FetchError::Invalid(format!("the value of {name} is not valid")))?;
            Ok((n, v))
        })
        .collect()
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an ordinary public unicast address: not in any IANA special-purpose range
/// (loopback, private, shared, link-local, documentation, benchmarking, multicast, reserved,
/// unique-local, translation and tunnelling prefixes). What the standard library's unstable
/// `is_global` will say, written out here.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    const SPECIAL: &[(u32, u8)] = &[
        (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
        (0x0A00_0000, 8),  // 10.0.0.0/8 private
        (0x6440_0000, 10), // 100.64.0.0/10 shared (carrier-grade NAT)
        (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
        (0xA9FE_0000, 16), // 169.254.0.0/16 link-local (cloud metadata)
        (0xAC10_0000, 12), // 172.16.0.0/12 private
        (0xC000_0000, 24), // 192.0.0.0/24 protocol assignments
        (0xC000_0200, 24), // 192.0.2.0/24 documentation
        (0xC058_6300, 24), // 192.88.99.0/24 6to4 relay
        (0xC0A8_0000, 16), // 192.168.0.0/16 private
        (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
        (0xC633_6400, 24), // 198.51.100.0/24 documentation
        (0xCB00_7100, 24), // 203.0.113.0/24 documentation
        (0xE000_0000, 4),  // 224.0.0.0/4 multicast
        (0xF000_0000, 4),  // 240.0.0.0/4 reserved, broadcast
    ];
    let bits = u32::from(ip);
    !SPECIAL
        .iter()
        .any(|&(net, len)| bits >> (32 - len) == net >> (32 - len))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    const SPECIAL: &[(u128, u8)] = &[
        (0x0064_ff9b_0001 << 80, 48), // 64:ff9b:1::/48 local-use translation
        (0x0064_ff9b << 96, 96),      // 64:ff9b::/96 NAT64 (reaches any IPv4 address)
        (0x0100 << 112, 64),          // 100::/64 discard
        (0x2001 << 112, 23),          // 2001::/23 protocol assignments (Teredo...)
        (0x2001_0db8 << 96, 32),      // 2001:db8::/32 documentation
        (0x2002 << 112, 16),          // 2002::/16 6to4 (embeds any IPv4 address)
        (0x3fff << 112, 20),          // 3fff::/20 documentation
    ];
    let bits = u128::from(ip);
    // Global unicast is 2000::/3; everything else (loopback, unspecified, unique-local,
    // link-local, multicast, IPv4-compatible) is not public.
    bits >> 125 == 1
        && !SPECIAL
            .iter()
            .any(|&(net, len)| bits >> (128 - len) == net >> (128 - len))
}

/// rustls as every capability sets it up (`super::tls`), speaking HTTP/1.1.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<TlsConnector, String> {
    let config = super::tls::client_config(ca_file, vec![b"http/1.1".to_vec()])?;
    Ok(TlsConnector::from(Arc::new(config)))
}

impl wit::Host for HostState {
    async fn fetch(
        &mut self,
        request: wit::Request,
    ) -> wasmtime::Result<Result<wit::Response, CapabilityError>> {
        let ctx = self.ctx.clone();
        let Some(client) = &ctx.granted.http else {
            return Ok(Err(ctx.refuse("http")));
        };
        let request = Request {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        Ok(match client.fetch(request).await {
            Ok(r) => Ok(wit::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(e) if e.is_refusal() => Err(ctx.refuse_because("http", &e)),
            Err(e) => {
                tracing::debug!(plugin = %ctx.name, "http: {e}");
                Err(e.to_wit())
            }
        })
    }
}

#[cfg(test)]
mod tests;
