//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in front of the broker
//! writes a header with the real client's address before the client's bytes, so that per-IP
//! limits, the auth-failure delay and the logs see the client, not the balancer.
//!
//! A listener accepts the header only from the addresses in `proxy_protocol_from`; from those
//! it is required, from anyone else it is never parsed (a client that sends one anyway speaks
//! broken MQTT and is closed by the codec). Parsing is `ppp`'s, a small crate with no
//! dependencies that handles both versions and tells an incomplete header from a bad one.
//!
//! The header is read into a buffer together with whatever follows it in the same segments;
//! those bytes belong to the client and are handed back through [`Rewind`], so nothing is read
//! one byte at a time and nothing is lost.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest header accepted: a v1 header is at most 107 bytes; a v2 header is 16 bytes and
/// addresses plus TLVs, which real balancers keep to a few hundred bytes.
pub const MAX_HEADER: usize = 4096;
/// The longest v1 header, CRLF included (the specification's figure).
const V1_MAX: usize = 107;
/// How each version's header begins.
const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection closed before the PROXY header ended")]
    Closed,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("not a PROXY protocol header: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads a PROXY header from `stream`. Returns the client address it names (`None` for a
/// balancer's own health check: v2 LOCAL, v1 UNKNOWN, or a non-IP family) and the bytes read
/// past the header.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Option<SocketAddr>, Bytes), ProxyError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(ProxyError::Closed);
        }
        if let Some((addr, len)) = parse(&buf)? {
            buf.advance(len);
            return Ok((addr, buf.freeze()));
        }
        if buf.len() >= MAX_HEADER {
            return Err(ProxyError::TooLong);
        }
        buf.reserve(256);
    }
}

/// Parses a complete header at the start of `input`: `Ok(None)` if more bytes are needed,
/// otherwise the source address and the header's length.
pub fn parse(input: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyError> {
    // A v1 header is one line: parse it only once the line is complete, because `ppp` reads
    // a line cut short inside a number as a bad number rather than as incomplete.
    let mut input = input;
    let starts = |signature: &[u8]| {
        let n = input.len().min(signature.len());
        input[..n] == signature[..n]
    };
    if !starts(V1_SIGNATURE) && !starts(V2_SIGNATURE) {
        // Decided here: `ppp` reads a short non-header as an incomplete v1 one.
        return Err(ProxyError::Invalid("no PROXY protocol signature".into()));
    }
    if starts(V1_SIGNATURE) {
        match input.windows(2).take(V1_MAX).position(|w| w == b"\r\n") {
            Some(end) => input = &input[..end + 2],
            None if input.len() < V1_MAX => return Ok(None),
            None => {
                return Err(ProxyError::Invalid(
                    "v1 header without an end of line".into(),
                ));
            }
        }
    }
    let header = HeaderResult::parse(input);
    if header.is_incomplete() {
        return Ok(None);
    }
    match header {
        HeaderResult::V1(Ok(h)) => {
            let addr = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((addr, h.header.len())))
        }
        HeaderResult::V2(Ok(h)) => {
            let addr = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Some((addr, h.header.len())))
        }
        HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(format!("{e:?}"))),
        HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(format!("{e:?}"))),
    }
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend(addresses);
        h.extend(tlvs);
        h
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_source() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\nMQTT";
        let (addr, len) = parse(h).unwrap().unwrap();
        assert_eq!(addr, Some("192.0.2.7:51000".parse().unwrap()));
        assert_eq!(&h[len..], b"MQTT");
        let h = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 1883\r\n";
        let (addr, len) = parse(h).unwrap().unwrap();
        assert_eq!(addr, Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(len, h.len());
        let (addr, _) = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(addr, None);
    }

    #[test]
    fn v2_proxy_local_and_tlvs() {
        let mut a = vec![198, 51, 100, 9, 10, 0, 0, 1];
        a.extend(40000u16.to_be_bytes());
        a.extend(1883u16.to_be_bytes());
        let h = v2(1, 0x11, &a, &[0x04, 0x00, 0x01, 0x00]);
        let mut input = h.clone();
        input.extend(b"\x10\x0c");
        let (addr, len) = parse(&input).unwrap().unwrap();
        assert_eq!(addr, Some("198.51.100.9:40000".parse().unwrap()));
        assert_eq!(len, h.len());
        let local = v2(0, 0x00, &[], &[]);
        assert_eq!(parse(&local).unwrap().unwrap(), (None, 16));
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete_not_an_error() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 1883\r\n".to_vec();
        let mut a = vec![0u8; 12];
        a[0] = 203;
        let v2h = v2(1, 0x11, &a, &[]);
        for h in [v1, v2h] {
            for n in 0..h.len() {
                assert!(parse(&h[..n]).unwrap().is_none(), "prefix of {n} bytes");
            }
            assert!(parse(&h).unwrap().is_some());
        }
    }

    #[test]
    fn garbage_is_refused() {
        // An MQTT CONNECT where a header should be, and mangled headers.
        for bad in [
            &b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"[..],
            b"\x10",
            b"QUIT",
            b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n",
            b"PROXY TCP9 1.2.3.4 4.5.6.7 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 4.5.6.7 99999 2\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // A v2 signature with a bad version nibble.
        let mut h = v2(1, 0x11, &[0; 12], &[]);
        h[12] = 0x31;
        assert!(parse(&h).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic fuzz: prefixes of both signatures followed by noise.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..20_000 {
            let mut input: Vec<u8> = match round % 3 {
                0 => b"PROXY ".to_vec(),
                1 => b"\r\n\r\n\0\r\nQUIT\n".to_vec(),
                _ => Vec::new(),
            };
            let len = (next() % 64) as usize;
            input.extend((0..len).map(|_| next() as u8));
            if let Ok(Some((_, n))) = parse(&input) {
                assert!(n <= input.len());
            }
        }
    }

    #[tokio::test]
    async fn rewind_yields_the_rest_after_the_header() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"PROXY TCP4 192.0.2.7 10.0.0.1 5 6\r\nhello")
            .await
            .unwrap();
        drop(a);
        let mut b = b;
        let (addr, rest) = read_header(&mut b).await.unwrap();
        assert_eq!(addr, Some("192.0.2.7:5".parse().unwrap()));
        let mut s = Rewind::new(rest, b);
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello");
    }
}
