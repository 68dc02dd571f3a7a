//! Listeners: accept sockets, apply the listener defences, set up the transport, and hand each
//! connection to a session task.
//!
//! The session layer takes any `AsyncRead + AsyncWrite` stream, so every transport is a
//! wrapper around the accepted socket built here, and [`Peer`] carries what the transport
//! established (the client's real address, TLS facts, the certificate's user name) to the
//! session. Plain TCP without a PROXY header goes straight from `accept` to the session with
//! the bare `TcpStream`: nothing is added to its per-read path. Every other transport is boxed
//! (`Box<dyn Io>`): one indirect call per read and write, paid only on those listeners, and
//! the session code is compiled twice rather than once per transport combination.
//!
//! The steps of a connection, each bounded in time:
//! 1. PROXY protocol header, from trusted balancers only ([`proxy`]);
//! 2. admission: connection limits and per-address rate ([`admission`]); a refused client is
//!    still told why in CONNACK when the refusal budget allows;
//! 3. TLS handshake with its deadline ([`tls`]), and/or WebSocket upgrade with its path,
//!    subprotocol and origin checks ([`ws`]);
//! 4. the MQTT session (`crate::session::serve`), which reads CONNECT within the listener's
//!    connect timeout.
//!
//! Layout: this file holds [`Listener`] (a bound listener and its settings), the accept loop
//! and the per-connection steps; `admission`, `proxy`, `tls` and `ws` one concept each.

pub mod admission;
pub mod descriptors;
pub mod proxy;
pub mod tls;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::broker::Shared;
use crate::codec::ReasonCode;
use crate::config::{IdentityAsUsername, Limits, ListenerConfig, Protocol};
use crate::metrics::Limit;
use crate::policy::TlsInfo;
use admission::{ListenerCount, Ticket};
use tls::ServerTls;

/// How long a trusted balancer has to send the PROXY header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream a session can be served over.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// What the transport established about a connection, for the session.
pub struct Peer {
    /// The client's address (from the PROXY header behind a balancer).
    pub remote: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The TLS session's facts, on `tls` and `wss` listeners.
    pub tls: Option<Arc<TlsInfo>>,
    /// With `identity_as_username`: the user name from the client certificate (`None` when
    /// the client has none), which replaces the one in CONNECT.
    pub cert_username: Option<Option<ByteString>>,
    /// How long the client has to send CONNECT.
    pub connect_timeout: Duration,
    /// Set when a limit refused the connection: the session reads CONNECT only to answer it
    /// with this reason code.
    pub refusal: Option<ReasonCode>,
    /// The places the connection holds; released when the `Peer` is dropped.
    pub(crate) places: Places,
}

/// What a connection holds while it is served: its admission ticket, or the permit to be told
/// it was refused.
#[derive(Default)]
pub(crate) struct Places {
    _ticket: Option<Ticket>,
    _refusing: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Places {
    /// What an admitted connection keeps while it is served: its ticket (the permit to be told
    /// of a refusal only matters to a refused one). Smaller, because it is kept in every
    /// connection's task.
    pub(crate) fn into_ticket(self) -> Option<Ticket> {
        self._ticket
    }
}

impl Peer {
    /// A peer with no TLS, no refusal and no admission ticket (embedding, tests).
    pub fn new(remote: SocketAddr, listener: Arc<str>, connect_timeout: Duration) -> Peer {
        Peer {
            remote,
            listener,
            tls: None,
            cert_username: None,
            connect_timeout,
            refusal: None,
            places: Places::default(),
        }
    }
}

/// A bound listener: its socket's settings, TLS state and connection count.
pub struct Listener {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub config: ListenerConfig,
    /// `tls` and `wss` listeners only.
    pub tls: Option<Arc<ServerTls>>,
    upgrade: Option<ws::Upgrade>,
    count: Arc<ListenerCount>,
    connect_timeout: Duration,
}

/// A listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
}

impl Listener {
    /// Loads the listener's TLS files and binds its socket.
    pub async fn bind(
        config: &ListenerConfig,
        limits: &Limits,
    ) -> Result<(Arc<Listener>, TcpListener), BindError> {
        let tls = match &config.tls {
            Some(t) if config.protocol.is_tls() => {
                Some(Arc::new(ServerTls::load_for(t, config.protocol)?))
            }
            _ => None,
        };
        let bind_error = |source| BindError::Bind {
            addr: config.bind,
            source,
        };
        let socket = TcpListener::bind(config.bind).await.map_err(bind_error)?;
        let addr = socket.local_addr().map_err(bind_error)?;
        let upgrade = config.protocol.is_ws().then(|| ws::Upgrade {
            path: config.ws_path().to_owned(),
            allowed_origins: config.allowed_origins.clone().unwrap_or_default(),
            max_packet_size: limits.max_packet_size,
        });
        let listener = Listener {
            name: Arc::from(config.name.as_str()),
            addr,
            config: config.clone(),
            tls,
            upgrade,
            count: Arc::new(ListenerCount::new(config.max_connections)),
            connect_timeout: config.connect_timeout.unwrap_or(limits.connect_timeout),
        };
        listener.warn_if_exposed();
        Ok((Arc::new(listener), socket))
    }

    /// Safe defaults: unencrypted MQTT off the loopback interface is worth a loud word.
    fn warn_if_exposed(&self) {
        if exposed(self.addr, self.config.protocol) {
            tracing::warn!(
                listener = %self.name,
                addr = %self.addr,
                protocol = self.config.protocol.as_str(),
                "UNENCRYPTED listener on a non-loopback address: passwords and messages cross \
                 the network in clear text; use protocol \"tls\" or \"wss\""
            );
        }
    }

    /// Connections open on this listener now.
    pub fn open_connections(&self) -> u32 {
        self.count.open()
    }

    /// Whether `ip` is a balancer allowed to send a PROXY header here.
    fn trusts_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.config
            .proxy_protocol_from
            .iter()
            .any(|net| net.contains(&ip))
    }

    /// Whether a connection can skip every optional step (the plain TCP fast path).
    fn plain(&self) -> bool {
        self.config.protocol == Protocol::Tcp && self.config.proxy_protocol_from.is_empty()
    }
}

/// Whether a listener on `addr` sends MQTT in clear text beyond this machine: a `tcp` or `ws`
/// listener on anything but a loopback address (an IPv4-mapped IPv6 loopback included).
fn exposed(addr: SocketAddr, protocol: Protocol) -> bool {
    let loopback = match addr.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        ip => ip.is_loopback(),
    };
    !loopback && !protocol.is_tls()
}

/// Accepts connections until shutdown.
pub async fn accept_loop(shared: Arc<Shared>, listener: Arc<Listener>, socket: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = socket.accept() => r,
        };
        match accepted {
            Ok((stream, remote)) => {
                shared.metrics.socket_accepted();
                // MQTT packets are small and latency matters more than batching.
                let _ = stream.set_nodelay(true);
                if listener.plain() {
                    let Some(peer) = admit(&shared, &listener, remote) else {
                        continue;
                    };
                    shared.spawn(crate::session::serve(shared.clone(), stream, peer));
                } else {
                    shared.spawn(connection(shared.clone(), listener.clone(), stream, remote));
                }
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Admission for a connection from `remote`: a peer to serve (possibly only to be told it is
/// refused), or `None` to close at once.
fn admit(shared: &Arc<Shared>, listener: &Arc<Listener>, remote: SocketAddr) -> Option<Peer> {
    let mut peer = Peer::new(remote, listener.name.clone(), listener.connect_timeout);
    match shared.admission.admit(&listener.count, remote.ip()) {
        Ok(ticket) => peer.places._ticket = Some(ticket),
        Err(refused) => {
            shared.metrics.limit_hit(refused.limit);
            tracing::debug!(listener = %listener.name, %remote, limit = ?refused.limit,
                "connection refused");
            peer.refusal = Some(refused.reason);
            peer.places._refusing = Some(refused.permit?);
        }
    }
    Some(peer)
}

/// Every step of a connection that is not plain TCP; see the module doc.
async fn connection(
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    mut stream: TcpStream,
    mut remote: SocketAddr,
) {
    let mut prefix = Bytes::new();
    if listener.trusts_proxy(remote.ip()) {
        match tokio::time::timeout(PROXY_HEADER_TIMEOUT, proxy::read_header(&mut stream)).await {
            Ok(Ok((client, rest))) => {
                // A balancer's own health check names no client; it is served as itself.
                if let Some(client) = client {
                    remote = client;
                }
                prefix = rest;
            }
            Ok(Err(e)) => {
                shared.metrics.limit_hit(Limit::ProxyHeader);
                tracing::debug!(listener = %listener.name, balancer = %remote, error = %e,
                    "bad PROXY header");
                return;
            }
            Err(_) => {
                shared.metrics.limit_hit(Limit::ProxyHeader);
                tracing::debug!(listener = %listener.name, balancer = %remote,
                    "no PROXY header in time");
                return;
            }
        }
    }
    let Some(mut peer) = admit(&shared, &listener, remote) else {
        return;
    };
    let stream = proxy::Rewind::new(prefix, stream);
    let io: Box<dyn Io> = match listener.config.protocol {
        Protocol::Tcp => Box::new(stream),
        Protocol::Tls => match tls_handshake(&shared, &listener, stream, &mut peer).await {
            Some(s) => Box::new(s),
            None => return,
        },
        Protocol::Ws => match ws_upgrade(&shared, &listener, stream, &peer).await {
            Some(s) => Box::new(s),
            None => return,
        },
        Protocol::Wss => {
            let Some(s) = tls_handshake(&shared, &listener, stream, &mut peer).await else {
                return;
            };
            match ws_upgrade(&shared, &listener, s, &peer).await {
                Some(s) => Box::new(s),
                None => return,
            }
        }
    };
    crate::session::serve(shared, io, peer).await;
}

/// The TLS handshake within the listener's deadline; records the session's facts in `peer`.
async fn tls_handshake<S: Io>(
    shared: &Shared,
    listener: &Listener,
    stream: S,
    peer: &mut Peer,
) -> Option<tokio_rustls::server::TlsStream<S>> {
    let tls = listener.tls.as_ref()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let deadline = tls.settings().handshake_timeout;
    let result = tokio::time::timeout(deadline, acceptor.accept(stream)).await;
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.limit_hit(Limit::TlsHandshake);
            tracing::debug!(listener = %listener.name, remote = %peer.remote, error = %e,
                "TLS handshake failed");
            return None;
        }
        Err(_) => {
            shared.metrics.limit_hit(Limit::TlsHandshake);
            tracing::debug!(listener = %listener.name, remote = %peer.remote,
                "TLS handshake timed out");
            return None;
        }
    };
    let conn = stream.get_ref().1;
    peer.tls = Some(Arc::new(tls::session_info(conn)));
    let mode = tls.settings().identity_as_username;
    if mode != IdentityAsUsername::Off {
        peer.cert_username = Some(tls::identity_username(conn, mode));
    }
    Some(stream)
}

/// The WebSocket upgrade within the listener's connect timeout.
async fn ws_upgrade<S: Io>(
    shared: &Shared,
    listener: &Listener,
    stream: S,
    peer: &Peer,
) -> Option<ws::WsStream<S>> {
    let upgrade = listener.upgrade.as_ref()?;
    match tokio::time::timeout(listener.connect_timeout, upgrade.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err((refusal, e))) => {
            let limit = match refusal {
                Some(ws::Refusal::Origin) => Limit::WsOrigin,
                _ => Limit::WsHandshake,
            };
            shared.metrics.limit_hit(limit);
            tracing::debug!(listener = %listener.name, remote = %peer.remote, error = %e,
                "WebSocket upgrade refused");
            None
        }
        Err(_) => {
            shared.metrics.limit_hit(Limit::WsHandshake);
            tracing::debug!(listener = %listener.name, remote = %peer.remote,
                "WebSocket upgrade timed out");
            None
        }
    }
}

/// Reloads the certificates of every TLS listener whose files changed (or all, with
/// `force`, as on SIGHUP). Returns how many were reloaded; failures keep the old certificates.
pub fn reload_certificates(listeners: &[Arc<Listener>], force: bool) -> usize {
    let mut reloaded = 0;
    for l in listeners {
        let Some(tls) = &l.tls else { continue };
        if !force && !tls.files_changed() {
            continue;
        }
        match tls.reload() {
            Ok(()) => {
                reloaded += 1;
                tracing::info!(listener = %l.name, "TLS certificates reloaded");
            }
            Err(e) => {
                tracing::error!(listener = %l.name, error = %e,
                    "TLS certificates not reloaded; keeping the previous ones");
            }
        }
    }
    reloaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clear_text_off_loopback_is_exposed() {
        let at = |a: &str| a.parse::<SocketAddr>().unwrap();
        for (addr, protocol, expected) in [
            ("0.0.0.0:1883", Protocol::Tcp, true),
            ("[::]:1883", Protocol::Ws, true),
            ("192.0.2.1:1883", Protocol::Tcp, true),
            ("0.0.0.0:8883", Protocol::Tls, false),
            ("[::]:8443", Protocol::Wss, false),
            ("127.0.0.1:1883", Protocol::Tcp, false),
            ("127.8.9.10:1883", Protocol::Ws, false),
            ("[::1]:1883", Protocol::Tcp, false),
            ("[::ffff:127.0.0.1]:1883", Protocol::Tcp, false),
            ("[::ffff:192.0.2.1]:1883", Protocol::Tcp, true),
        ] {
            assert_eq!(exposed(at(addr), protocol), expected, "{addr} {protocol:?}");
        }
    }
}
