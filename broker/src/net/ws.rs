//! MQTT over WebSocket (section 6 of both MQTT specifications) for `ws` and `wss` listeners:
//! the HTTP upgrade with its checks (path, `mqtt` subprotocol, `Origin` allow-list), and
//! [`WsStream`], which turns the WebSocket's binary messages back into a byte stream so the
//! session layer reads MQTT exactly as it does from TCP.
//!
//! Why tokio-tungstenite: the maintained WebSocket implementation for tokio, strict about the
//! protocol (masking, control frames, UTF-8 in close frames), with ping/pong and close handled
//! inside it. It works on messages, so the adapter here does the byte-stream part: MQTT does
//! not align packets with frames, so one packet may span several messages and one message may
//! carry several packets (MQTT-6.0.0-2); the adapter keeps the unread rest of the current
//! message and hands out bytes in order.
//!
//! The `Origin` check exists because browsers let any web page open a WebSocket to any
//! address, loopback included: without it, a page on the internet could talk to a broker on
//! the user's machine. Clients that send no `Origin` are not browsers and pass.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// What the upgrade request must satisfy on this listener.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub path: String,
    pub allowed_origins: Vec<String>,
    /// The largest MQTT packet accepted; WebSocket messages may be a little larger (several
    /// packets in one) but not unboundedly so.
    pub max_packet_size: u32,
}

/// Why an upgrade request was refused (the HTTP status the client got says the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another path than the listener's (404).
    Path,
    /// An `Origin` not on the allow-list (403).
    Origin,
    /// Subprotocols offered, none of them MQTT (400).
    Subprotocol,
}

/// The subprotocols accepted, preferred first: `mqtt` is the standard's (MQTT-6.0.0-3);
/// `mqttv3.1` is what some 3.1-era clients still offer.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

impl Upgrade {
    /// Checks an upgrade request: the subprotocol to answer with (`None` if the client offered
    /// none), or why it is refused.
    pub fn check(&self, request: &Request) -> Result<Option<&'static str>, Refusal> {
        if request.uri().path() != self.path {
            return Err(Refusal::Path);
        }
        if let Some(origin) = request.headers().get("origin") {
            let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
            let allowed = self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin));
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
        let offered: Vec<&str> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.is_empty() {
            return Ok(None);
        }
        SUBPROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)))
            .map(|p| Some(*p))
            .ok_or(Refusal::Subprotocol)
    }

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.max_packet_size as usize + 64 * 1024;
        WebSocketConfig::default()
            // The default 128 KiB would sit in every idle connection; MQTT packets are small
            // and a larger one just takes several reads.
            .read_buffer_size(8 * 1024)
            // Frames go out as soon as they are written; the session already batches packets
            // into one write.
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    /// Performs the upgrade on `stream`. `Err` carries the refusal, if that was the cause.
    pub async fn accept<S>(&self, stream: S) -> Result<WsStream<S>, (Option<Refusal>, WsError)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut refused = None;
        // The callback's type is tungstenite's: its error is the HTTP response itself.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| match self.check(request) {
            Ok(protocol) => {
                if let Some(p) = protocol {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", HeaderValue::from_static(p));
                }
                Ok(response)
            }
            Err(why) => {
                refused = Some(why);
                let (status, text) = match why {
                    Refusal::Path => (StatusCode::NOT_FOUND, "no MQTT endpoint at this path"),
                    Refusal::Origin => (StatusCode::FORBIDDEN, "origin not allowed"),
                    Refusal::Subprotocol => (StatusCode::BAD_REQUEST, "subprotocol mqtt required"),
                };
                let mut error = ErrorResponse::new(Some(text.to_owned()));
                *error.status_mut() = status;
                Err(error)
            }
        };
        let result = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            callback,
            Some(self.ws_config()),
        )
        .await;
        match result {
            Ok(ws) => Ok(WsStream::new(ws)),
            Err(e) => Err((refused, e)),
        }
    }
}

/// A WebSocket connection as a byte stream of MQTT: binary messages in, binary messages out.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    read: Bytes,
    /// A frame was handed to the WebSocket but not yet flushed to the socket.
    flush_pending: bool,
}

impl<S> WsStream<S> {
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream {
            inner,
            read: Bytes::new(),
            flush_pending: false,
        }
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Drives a pending flush. The session stops writing once its buffer is empty, so a frame
    /// the socket could not take at once is pushed out from the read side too.
    fn poll_pending_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.flush_pending {
            ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(io_error)?;
            self.flush_pending = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Poll::Ready(Err(e)) = this.poll_pending_flush(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            if !this.read.is_empty() {
                let n = this.read.len().min(buf.remaining());
                buf.put_slice(&this.read[..n]);
                this.read.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.read = data,
                // MQTT-6.0.0-1: MQTT travels in binary frames only; anything else closes.
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame (MQTT-6.0.0-1)",
                    )));
                }
                // Pings are answered inside tungstenite; a close ends the stream after it.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Backpressure: the previous frame reaches the socket before another is accepted.
        ready!(this.poll_pending_flush(cx))?;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(io_error)?;
        Pin::new(&mut this.inner)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io_error)?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => r.map_err(io_error)?,
            Poll::Pending => this.flush_pending = true,
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(io_error)?;
        this.flush_pending = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.inner).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    fn upgrade(origins: &[&str]) -> Upgrade {
        Upgrade {
            path: "/mqtt".into(),
            allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            max_packet_size: 1 << 20,
        }
    }

    fn request(path: &str, origin: Option<&str>, protocols: Option<&str>) -> Request {
        let mut r = format!("ws://localhost{path}")
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            r.headers_mut().insert("origin", o.parse().unwrap());
        }
        if let Some(p) = protocols {
            r.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        r.map(|_| ())
    }

    #[test]
    fn subprotocol_mqtt_is_chosen_and_required_when_any_is_offered() {
        let u = upgrade(&[]);
        assert_eq!(
            u.check(&request("/mqtt", None, Some("mqtt"))),
            Ok(Some("mqtt"))
        );
        assert_eq!(
            u.check(&request("/mqtt", None, Some("wamp, mqttv3.1"))),
            Ok(Some("mqttv3.1"))
        );
        assert_eq!(u.check(&request("/mqtt", None, None)), Ok(None));
        assert_eq!(
            u.check(&request("/mqtt", None, Some("chat"))),
            Err(Refusal::Subprotocol)
        );
        assert_eq!(
            u.check(&request("/other", None, Some("mqtt"))),
            Err(Refusal::Path)
        );
    }

    #[test]
    fn origins_outside_the_allow_list_are_refused() {
        let none = upgrade(&[]);
        let page = Some("http://evil.example");
        assert_eq!(
            none.check(&request("/mqtt", page, Some("mqtt"))),
            Err(Refusal::Origin)
        );
        let listed = upgrade(&["https://app.example.com/"]);
        assert_eq!(
            listed.check(&request(
                "/mqtt",
                Some("HTTPS://APP.example.com"),
                Some("mqtt")
            )),
            Ok(Some("mqtt"))
        );
        assert_eq!(
            listed.check(&request("/mqtt", page, Some("mqtt"))),
            Err(Refusal::Origin)
        );
        let any = upgrade(&["*"]);
        assert_eq!(
            any.check(&request("/mqtt", page, Some("mqtt"))),
            Ok(Some("mqtt"))
        );
    }

    /// MQTT-6.0.0-2: packets need not align with frames; bytes come out in order whatever the
    /// split.
    #[tokio::test]
    async fn bytes_cross_message_boundaries_in_both_directions() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = upgrade(&[]).accept(server_io).await.unwrap();
            let mut got = vec![0u8; 10];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.write_all(b"!").await.unwrap();
            s.flush().await.unwrap();
            got
        });
        let req = "ws://localhost/mqtt".into_client_request().unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, client_io)
            .await
            .unwrap();
        use futures_util::{SinkExt, StreamExt};
        // One "packet" split over three messages, the last also carrying the next one's start.
        for part in [&b"\x10\x03"[..], b"ab", b"c\xe0\x00\x30\x01x"] {
            ws.send(Message::binary(part.to_vec())).await.unwrap();
        }
        let mut echoed = Vec::new();
        while echoed.len() < 11 {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(b) => echoed.extend_from_slice(&b),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(server.await.unwrap(), b"\x10\x03abc\xe0\x00\x30\x01x");
        assert_eq!(echoed, b"\x10\x03abc\xe0\x00\x30\x01x!");
    }

    #[tokio::test]
    async fn a_text_frame_closes_the_stream() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut s = upgrade(&[]).accept(server_io).await.unwrap();
            let mut b = [0u8; 4];
            s.read(&mut b).await
        });
        let req = "ws://localhost/mqtt".into_client_request().unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, client_io)
            .await
            .unwrap();
        use futures_util::SinkExt;
        ws.send(Message::text("hello")).await.unwrap();
        assert!(server.await.unwrap().is_err());
    }
}
