//! The client side of MQTT on the wire: connecting, subscribing, and the hot-path packets.
//!
//! Rare packets (CONNECT, CONNACK, SUBSCRIBE, SUBACK, DISCONNECT) go through moat's own codec,
//! which encodes and decodes both directions and both protocol versions. The packets sent and
//! received hundreds of thousands of times a second (PUBLISH and its acknowledgements) are
//! written and parsed here by hand, straight between the socket buffers and the payload stamp:
//! no `Packet` values, no allocation, no copies beyond the one into the write buffer.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use moat::codec::{
    self, Connect, Disconnect, Packet, Properties, ProtocolVersion, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long the handshake and SUBACK may take before the run is declared failed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The user name and password every CONNECT carries (`--username`, `--password`).
struct Credentials {
    username: String,
    password: Option<Bytes>,
}

static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();

/// Makes every later CONNECT carry these credentials (set once, before any client connects).
pub fn set_credentials(username: &str, password: Option<&str>) {
    let _ = CREDENTIALS.set(Credentials {
        username: username.to_owned(),
        password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
    });
}

/// Read buffer size of a client. Large, so one read takes many packets at once.
pub const READ_BUFFER: usize = 256 * 1024;

/// Opens a TCP connection to `addr`, first binding to `source` (port chosen by the kernel) if
/// given: each local address has its own ephemeral port range, so spreading connections over
/// 127.0.0.2, 127.0.0.3, ... passes the ~28k-connection limit of one source address.
pub async fn open(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sets IP_BIND_ADDRESS_NO_PORT: `bind` then fixes only the address, and the port is chosen
/// by `connect` knowing the whole 4-tuple. Without it every `bind` to port 0 searches the
/// port range for a port free of *any* socket (TIME_WAIT ones from earlier runs included),
/// which after a few thousand connections costs milliseconds per connect in the kernel.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to a live c_int with its true size.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

/// One client connection with its buffers.
pub struct Client {
    pub stream: crate::transport::Stream,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
}

impl Client {
    /// Connects, sends CONNECT (clean start, no will, the `--username`/`--password` given) and waits for a
    /// successful CONNACK. Bytes the broker sends after the CONNACK stay in `rbuf`.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        version: ProtocolVersion,
        client_id: &str,
        keep_alive: u16,
    ) -> Result<Client> {
        Client::connect_session(addr, source, version, client_id, keep_alive, false).await
    }

    /// Like [`Client::connect`]; with `persistent` the session outlives the connection
    /// (3.1.1: clean session 0; 5.0: a session expiry of 300 s), which is what makes a broker
    /// with durable storage keep its QoS 1/2 messages on disk.
    pub async fn connect_session(
        addr: SocketAddr,
        source: Option<IpAddr>,
        version: ProtocolVersion,
        client_id: &str,
        keep_alive: u16,
        persistent: bool,
    ) -> Result<Client> {
        let tcp = open(addr, source)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, crate::transport::Stream::over(tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake with {addr} took over {HANDSHAKE_TIMEOUT:?}"))?
            .with_context(|| format!("TLS handshake with {addr}"))?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::with_capacity(4096),
            version,
        };
        let mut properties = Properties::default();
        if persistent && version == ProtocolVersion::V5 {
            properties.session_expiry_interval = Some(300);
        }
        let connect = Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: !(persistent && version == ProtocolVersion::V311),
            keep_alive,
            client_id: client_id.into(),
            will: None,
            username: CREDENTIALS.get().map(|c| c.username.as_str().into()),
            password: CREDENTIALS.get().and_then(|c| c.password.clone()),
            properties,
        }));
        client.send(&connect).await?;
        match client.recv_slow().await? {
            Packet::ConnAck(ack) if !ack.reason_code.is_error() => Ok(client),
            Packet::ConnAck(ack) => bail!(
                "{client_id}: connection refused, reason 0x{:02x}",
                ack.reason_code.0
            ),
            other => bail!("{client_id}: expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes to `filters` at `qos` and waits for a SUBACK granting every one.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<()> {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: filters
                .iter()
                .map(|f| (f.as_str().into(), options))
                .collect(),
            properties: Properties::default(),
        });
        self.send(&subscribe).await?;
        match self.recv_slow().await? {
            Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| !c.is_error()) => Ok(()),
            Packet::SubAck(ack) => bail!("subscription refused: {:?}", ack.reason_codes),
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }

    /// Sends DISCONNECT and closes, ignoring errors: the run is over either way.
    pub async fn disconnect(mut self) {
        let packet = Packet::Disconnect(Disconnect::new(ReasonCode::NORMAL_DISCONNECTION));
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.send(&packet).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// Encodes and writes one packet (slow path).
    async fn send(&mut self, packet: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Reads and decodes the next packet (slow path), within [`HANDSHAKE_TIMEOUT`].
    async fn recv_slow(&mut self) -> Result<Packet> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                if let Some(n) = codec::check(&self.rbuf, u32::MAX)? {
                    let frame = self.rbuf.split_to(n).freeze();
                    return Ok(codec::decode(frame, Some(self.version))?);
                }
                if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                    bail!("broker closed the connection");
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer from the broker within {HANDSHAKE_TIMEOUT:?}"))?
    }
}

/// The acknowledgement packets, by their first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck = 0x40,
    PubRec = 0x50,
    PubRel = 0x62,
    PubComp = 0x70,
}

/// Appends a success acknowledgement. Both protocol versions use the same four bytes: MQTT 5
/// lets the reason code and properties be left out when the reason is Success.
#[inline]
pub fn put_ack(out: &mut BytesMut, ack: Ack, packet_id: u16) {
    out.put_u8(ack as u8);
    out.put_u8(2);
    out.put_u16(packet_id);
}

/// Appends a PUBLISH header for a payload of `payload_len` bytes, which the caller appends next.
#[inline]
pub fn put_publish_header(
    out: &mut BytesMut,
    version: ProtocolVersion,
    topic: &str,
    qos: QoS,
    packet_id: u16,
    payload_len: usize,
) {
    let qos_bits = qos as u8;
    let mut remaining = 2 + topic.len() + payload_len;
    if qos_bits > 0 {
        remaining += 2;
    }
    if version == ProtocolVersion::V5 {
        remaining += 1; // property length 0
    }
    out.reserve(5 + remaining);
    out.put_u8(0x30 | (qos_bits << 1));
    let mut r = remaining;
    loop {
        let byte = (r & 0x7F) as u8;
        r >>= 7;
        if r == 0 {
            out.put_u8(byte);
            break;
        }
        out.put_u8(byte | 0x80);
    }
    out.put_u16(topic.len() as u16);
    out.put_slice(topic.as_bytes());
    if qos_bits > 0 {
        out.put_u16(packet_id);
    }
    if version == ProtocolVersion::V5 {
        out.put_u8(0);
    }
}

/// A packet from the broker, as the hot path sees it.
#[derive(Debug)]
pub enum Incoming<'a> {
    Publish {
        qos: u8,
        packet_id: u16,
        payload: &'a [u8],
    },
    Ack(Ack, u16),
    /// Anything else, decoded by the codec (PINGRESP, DISCONNECT, ...).
    Other(Box<Packet>),
}

/// Splits the next whole packet off the front of `buf`: `Ok(None)` until one is buffered.
#[inline]
pub fn next_frame(buf: &[u8]) -> Result<Option<usize>> {
    Ok(codec::check(buf, u32::MAX)?)
}

/// Parses one whole frame as delimited by [`next_frame`].
#[inline]
pub fn parse(frame: &[u8], version: ProtocolVersion) -> Result<Incoming<'_>> {
    let first = frame[0];
    // Skip the fixed header: the first byte and the remaining length varint.
    let mut i = 1;
    while frame[i] & 0x80 != 0 {
        i += 1;
    }
    i += 1;
    let body = &frame[i..];
    let ack = match first {
        0x40 => Some(Ack::PubAck),
        0x50 => Some(Ack::PubRec),
        0x62 => Some(Ack::PubRel),
        0x70 => Some(Ack::PubComp),
        _ => None,
    };
    if let Some(ack) = ack {
        let id = body
            .get(..2)
            .ok_or_else(|| anyhow!("short acknowledgement"))?;
        let code = body.get(2).copied().unwrap_or(0);
        if code >= 0x80 {
            bail!("broker answered {ack:?} with reason 0x{code:02x}");
        }
        return Ok(Incoming::Ack(ack, u16::from_be_bytes([id[0], id[1]])));
    }
    if first >> 4 != 3 {
        let packet = codec::decode(Bytes::copy_from_slice(frame), Some(version))?;
        return Ok(Incoming::Other(Box::new(packet)));
    }
    let qos = (first >> 1) & 3;
    let short = || anyhow!("short PUBLISH");
    let topic_len = usize::from(u16::from_be_bytes(
        body.get(..2).ok_or_else(short)?.try_into()?,
    ));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        let id = body.get(at..at + 2).ok_or_else(short)?;
        packet_id = u16::from_be_bytes([id[0], id[1]]);
        at += 2;
    }
    if version == ProtocolVersion::V5 {
        // Skip the properties: a varint length, then that many bytes.
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = *body.get(at).ok_or_else(short)?;
            at += 1;
            len |= usize::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += len;
    }
    let payload = body.get(at..).ok_or_else(short)?;
    Ok(Incoming::Publish {
        qos,
        packet_id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written PUBLISH decodes with moat's codec, and parses back, in both versions.
    #[test]
    fn publish_header_matches_the_codec() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let mut out = BytesMut::new();
                let payload = vec![7u8; 300];
                put_publish_header(&mut out, version, "bench/0", qos, 42, payload.len());
                out.extend_from_slice(&payload);
                let n = next_frame(&out).unwrap().unwrap();
                assert_eq!(n, out.len());
                // A client-to-server PUBLISH decodes the same as server-to-client.
                let decoded = codec::decode(out.clone().freeze(), Some(version)).unwrap();
                let Packet::Publish(p) = decoded else {
                    panic!("not a publish")
                };
                assert_eq!(p.qos, qos);
                assert_eq!(&p.topic[..], "bench/0");
                assert_eq!(&p.payload[..], &payload[..]);
                match parse(&out, version).unwrap() {
                    Incoming::Publish {
                        qos: q,
                        packet_id,
                        payload: pl,
                    } => {
                        assert_eq!(q, qos as u8);
                        assert_eq!(packet_id, if q > 0 { 42 } else { 0 });
                        assert_eq!(pl, &payload[..]);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    fn acks_parse() {
        let mut out = BytesMut::new();
        put_ack(&mut out, Ack::PubRel, 513);
        assert!(matches!(
            parse(&out, ProtocolVersion::V5).unwrap(),
            Incoming::Ack(Ack::PubRel, 513)
        ));
    }
}
