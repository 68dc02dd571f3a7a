//! The byte stream under a client: plain TCP, or TLS (rustls) when `--tls-ca` is given.
//!
//! A [`Stream`] is an enum rather than a boxed trait object so that plain TCP keeps its
//! zero-cost split halves and pays one branch per read or write; TLS halves go through
//! `tokio::io::split`. The TLS settings are process-wide ([`set_tls`], from the command line),
//! so every scenario (handshake rate, throughput) runs over TLS without changes of its own.
//!
//! By default each connection makes a full handshake (the client keeps no session cache):
//! that is the cost a broker pays for each new device. `--tls-resume` lets the client resume
//! sessions instead, as long-lived clients reconnecting do.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf as TcpRead, WriteHalf as TcpWrite};
use tokio_rustls::client::TlsStream;

/// TLS settings of every connection of this process.
pub struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

static TLS: OnceLock<TlsClient> = OnceLock::new();

/// What `--tls-*` asked for.
pub struct TlsOptions<'a> {
    pub ca: &'a Path,
    pub server_name: &'a str,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub resume: bool,
}

/// Turns TLS on for every connection made from now on.
pub fn set_tls(o: &TlsOptions<'_>) -> Result<()> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(o.ca)
        .with_context(|| format!("reading {}", o.ca.display()))?
    {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (o.cert, o.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("--tls-cert and --tls-key go together"),
    };
    if !o.resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    config.alpn_protocols = vec![b"mqtt".to_vec()];
    let client = TlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name: ServerName::try_from(o.server_name.to_owned())?,
    };
    TLS.set(client)
        .map_err(|_| anyhow::anyhow!("TLS configured twice"))
}

/// A client connection's stream.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Wraps a connected socket: as it is, or after a TLS handshake if TLS is on.
    pub async fn over(tcp: TcpStream) -> io::Result<Stream> {
        match TLS.get() {
            None => Ok(Stream::Tcp(tcp)),
            Some(tls) => {
                let s = tls.connector.connect(tls.server_name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(s)))
            }
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Read and write halves usable at the same time.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.split();
                (ReadHalf::Tcp(r), WriteHalf::Tcp(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

type TlsRef<'a> = &'a mut TlsStream<TcpStream>;

pub enum ReadHalf<'a> {
    Tcp(TcpRead<'a>),
    Tls(tokio::io::ReadHalf<TlsRef<'a>>),
}

pub enum WriteHalf<'a> {
    Tcp(TcpWrite<'a>),
    Tls(tokio::io::WriteHalf<TlsRef<'a>>),
}

/// Forwards the `AsyncRead` of an enum to its variants.
macro_rules! read_impl {
    ($ty:ty) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Forwards the `AsyncWrite` of an enum to its variants.
macro_rules! write_impl {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
                    Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_flush(cx),
                    Self::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
                    Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

read_impl!(Stream);
read_impl!(ReadHalf<'_>);
write_impl!(Stream);
write_impl!(WriteHalf<'_>);
