//! Shared test fixtures: a broker per test, a raw packet-level client, client constructors.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use moat::codec::{self, Packet, ProtocolVersion};
use moat::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen at once. Generous: the machine is
/// shared and noisy, and a passing test never waits this long.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker serving one test.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
}

impl TestBroker {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub async fn stop(self) {
        self.broker.shutdown(Duration::from_secs(2)).await;
    }
}

/// Starts a broker on 127.0.0.1 with an ephemeral port, `$SYS` off, and `tweak` applied.
pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestBroker {
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    tweak(&mut config);
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addr();
    TestBroker { broker, addr }
}

/// Starts a broker with the defaults (but an ephemeral port and no `$SYS`).
pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

/// A client that speaks packets through moat's own codec, for checks at the byte level.
pub struct RawClient {
    stream: TcpStream,
    rbuf: BytesMut,
    pub version: ProtocolVersion,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            rbuf: BytesMut::new(),
            version,
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(packet, self.version, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        // The broker may already have closed: a write error is part of what is being tested.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` if the connection closed. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a packet or a close within the wait")
    }

    /// The next packet if one arrives within `d`, `None` otherwise (or on close).
    pub async fn recv_within(&mut self, d: Duration) -> Option<Packet> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .ok()
            .flatten()
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        loop {
            if let Some(n) = codec::check(&self.rbuf, u32::MAX).expect("server sent a bad packet") {
                let frame = self.rbuf.split_to(n).freeze();
                return Some(
                    codec::decode(frame, Some(self.version)).expect("server packet decodes"),
                );
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Asserts the connection closes (after any packets, which are returned).
    pub async fn closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        while let Some(p) = self.recv().await {
            seen.push(p);
        }
        seen
    }
}
