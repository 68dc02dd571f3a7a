//! The task that serves one connection, from the first byte to the will message.
//!
//! One task per connection does everything for it: read and decode, handle, pump the mailbox,
//! write, keep alive. Doing reads and writes in one `select!` loop (rather than a reader task
//! and a writer task) keeps the session state single-owner and lock-free, and gives natural
//! backpressure: while the write buffer is over its high-water mark the task stops reading
//! from the client and stops taking deliveries from the mailbox, which then applies its own
//! bound. In the other direction, a PUBLISH that fills a subscriber's mailbox pauses this
//! task's reading (not its writing) until the subscriber drains (`backpressure`).

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::backpressure::{self, Pause};
use super::handshake::{self, Admitted, Refused};
use super::{Delivery, Kick, Session, SessionRef, SessionState};
use crate::broker::Shared;
use crate::codec::{self, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode, Will};
use crate::net::Peer;
use crate::policy::{ClientInfo, Identity};
use crate::store::NEVER_EXPIRES;

/// The read buffer a connection starts with.
const INITIAL_READ_BUFFER: usize = 512;
/// Below this much free space the read buffer grows by [`READ_CHUNK`] before the next read.
const MIN_READ_SPACE: usize = 256;
const READ_CHUNK: usize = 16 * 1024;
/// A drained write buffer larger than this is released rather than kept.
const RETAINED_WRITE_CAPACITY: usize = 64 * 1024;

/// Stop reading from the client and taking deliveries once this much is waiting to be written.
pub(super) const WRITE_HIGH_WATER: usize = 256 * 1024;

/// How long a closed connection keeps draining what the client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// The largest packet MQTT can frame: remaining length maximum plus a 5-byte fixed header.
const MAX_PACKET: usize = codec::MAX_REMAINING_LENGTH + 5;

/// The packet without its Reason String and User Properties, which the server must leave out
/// rather than exceed the client's Maximum Packet Size (MQTT-3.1.2-25 and the per-packet rules
/// such as MQTT-3.2.2-19, MQTT-3.4.2-2). `None` for a PUBLISH, whose properties belong to the
/// application message, or when there is nothing to remove.
pub(super) fn without_diagnostics(packet: &Packet) -> Option<Packet> {
    let mut packet = packet.clone();
    let properties = match &mut packet {
        Packet::ConnAck(p) => &mut p.properties,
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            &mut p.properties
        }
        Packet::SubAck(p) => &mut p.properties,
        Packet::UnsubAck(p) => &mut p.properties,
        Packet::Disconnect(p) => &mut p.properties,
        Packet::Auth(p) => &mut p.properties,
        _ => return None,
    };
    if properties.reason_string.is_none() && properties.user_properties.is_empty() {
        return None;
    }
    properties.reason_string = None;
    properties.user_properties.clear();
    Some(packet)
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent DISCONNECT; `with_will` for reason 0x04.
    Disconnected { with_will: bool },
    /// The broker closes it, telling a v5 client this reason first (0x8E takeover, 0x8B
    /// shutdown, 0x81/0x82/... a bad packet, 0x8D keep alive).
    Closed(ReasonCode),
    /// The socket closed or failed.
    Lost,
}

/// A connection past its handshake: the client, its session, and the negotiated limits.
pub(super) struct Conn<IO> {
    pub shared: Arc<Shared>,
    reader: ReadHalf<IO>,
    writer: WriteHalf<IO>,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
    pub client: ClientInfo,
    pub identity: Identity,
    pub session: Arc<Session>,
    pub me: SessionRef,
    pub state: tokio::sync::OwnedMutexGuard<SessionState>,
    generation: u64,
    pub(super) kick: Arc<Kick>,
    /// The publish rate limits, if any (`throttle.rs`).
    pub(super) throttle: Option<Box<super::throttle::Throttle>>,
    /// 1.5 times the keep alive (MQTT-3.1.2-24), `None` when it is 0.
    keep_alive: Option<Duration>,
    last_packet: Instant,
    /// The client's Maximum Packet Size (MQTT-3.1.2-24): larger packets are not sent to it.
    pub client_max_packet: u32,
    /// The client's Receive Maximum: our outbound QoS 1/2 window (MQTT-4.9.0-1).
    pub send_window: usize,
    /// The client's Topic Alias Maximum: aliases we may use towards it.
    pub client_alias_max: u16,
    /// Topic aliases the client set, index alias - 1 (section 3.3.2.3.4).
    pub inbound_aliases: Vec<Option<ByteString>>,
    /// Topic aliases we set towards the client.
    pub outbound_aliases: HashMap<ByteString, u16>,
    /// The client allows reason strings and user properties on acknowledgements (MQTT-3.1.2-29).
    pub problem_info: bool,
    will: Option<Will>,
    pub scratch: Vec<Delivery>,
    /// Some subscription was allowed only with "check each delivery".
    pub check_deliveries: bool,
    /// Subscribers whose mailbox the last PUBLISH filled; handing them to [`Conn::pause`]
    /// empties it.
    pub congested: Vec<Arc<Session>>,
    /// While set, no packet is read or handled: this publisher waits for `congested`.
    paused: Option<Pause>,
    /// Acknowledgements waiting for their messages to be durable (`acks`).
    pub acks: std::collections::VecDeque<super::acks::Deferred>,
}

/// Serves one accepted connection until it closes. `peer` is what the transport established
/// (see [`crate::net::Peer`]); the places it holds are released when the connection ends.
pub async fn serve<IO>(shared: Arc<Shared>, io: IO, mut peer: Peer)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let _places = std::mem::take(&mut peer.places);
    let (mut reader, mut writer) = tokio::io::split(io);
    // Small: a CONNECT rarely needs more, and an idle connection keeps this block.
    let mut rbuf = BytesMut::with_capacity(INITIAL_READ_BUFFER);
    let read = handshake::read_connect(&shared, &mut reader, &mut rbuf, peer.connect_timeout);
    let connect = match Box::pin(read).await {
        Ok(c) => c,
        Err(Refused::ConnAck(version, denial)) => {
            handshake::send_refusal(&shared, &mut writer, version, denial, None).await;
            return;
        }
        Err(Refused::Silent) => return,
    };
    let Some(mut conn) = Box::pin(handshake::accept(
        shared, connect, reader, writer, rbuf, peer,
    ))
    .await
    else {
        return;
    };
    let end = conn.run().await;
    Box::pin(conn.finish(end)).await;
}

impl<IO: AsyncRead + AsyncWrite> Conn<IO> {
    /// Sets up the served connection and queues its CONNACK and resent inflight messages.
    pub(super) async fn start(
        shared: Arc<Shared>,
        admitted: Admitted,
        reader: ReadHalf<IO>,
        writer: WriteHalf<IO>,
        rbuf: BytesMut,
    ) -> Conn<IO> {
        let limits = &shared.config.limits;
        let connect = &admitted.connect;
        let version = connect.protocol;

        // Keep alive, possibly overridden by the server (section 3.2.2.3.14).
        let mut keep_alive = connect.keep_alive;
        let mut server_keep_alive = None;
        if version == ProtocolVersion::V5
            && (keep_alive == 0 || keep_alive > limits.max_keepalive)
            && limits.max_keepalive < u16::MAX
        {
            keep_alive = limits.max_keepalive;
            server_keep_alive = Some(keep_alive);
        }
        let connack = handshake::connack(&shared, &admitted, server_keep_alive);

        let p = &connect.properties;
        let mut conn = Conn {
            version,
            keep_alive: (keep_alive > 0)
                .then(|| Duration::from_millis(u64::from(keep_alive) * 1500)),
            last_packet: Instant::now(),
            client_max_packet: p.maximum_packet_size.unwrap_or(u32::MAX),
            send_window: usize::from(p.receive_maximum.unwrap_or(u16::MAX))
                .min(usize::from(limits.max_inflight)),
            client_alias_max: p.topic_alias_maximum.unwrap_or(0),
            inbound_aliases: Vec::new(),
            outbound_aliases: HashMap::new(),
            problem_info: p.request_problem_information != Some(0),
            will: admitted.connect.will.clone(),
            me: SessionRef::new(&admitted.session),
            client: admitted.client,
            identity: admitted.identity,
            session: admitted.session,
            state: admitted.state,
            generation: admitted.generation,
            kick: admitted.kick,
            throttle: super::throttle::Throttle::new(limits),
            reader,
            writer,
            rbuf,
            wbuf: BytesMut::new(),
            scratch: Vec::new(),
            check_deliveries: false,
            congested: Vec::new(),
            acks: std::collections::VecDeque::new(),
            paused: None,
            shared,
        };
        conn.update_delivery_checks();
        conn.shared.metrics.client_connected();
        conn.send(&connack);
        conn.session.set_journaled(conn.journaled());
        if conn.state.expiry_interval > 0 {
            conn.persist_session(None).await;
        }
        conn.session.set_online(true);
        // MQTT-4.4.0-1: resend unacknowledged PUBLISH (DUP) and PUBREL on a resumed session.
        conn.resend_inflight();
        tracing::debug!(client = %conn.client.client_id, remote = %conn.client.remote_addr,
            present = admitted.session_present, "client connected");
        conn
    }

    /// Appends a packet to the write buffer, first dropping what the client said it does not
    /// want: oversized packets are not sent (MQTT-3.1.2-24); a reason string or user
    /// properties that make an acknowledgement too large are removed first (MQTT-3.1.2-25).
    pub fn send(&mut self, packet: &Packet) -> bool {
        let limit = u64::from(self.client_max_packet).min(MAX_PACKET as u64);
        let stripped;
        let packet = if codec::encoded_len(packet, self.version) as u64 <= limit {
            packet
        } else {
            match without_diagnostics(packet) {
                Some(p) if codec::encoded_len(&p, self.version) as u64 <= limit => {
                    stripped = p;
                    &stripped
                }
                _ => return false,
            }
        };
        let before = self.wbuf.len();
        codec::encode(packet, self.version, &mut self.wbuf);
        self.shared.metrics.packet_sent(self.wbuf.len() - before);
        true
    }

    /// Serves packets until the connection ends.
    async fn run(&mut self) -> End {
        let shutdown = self.shared.shutdown.clone();
        let kick = self.kick.clone();
        let session = self.session.clone();
        let mut keep_alive_timer = pin!(tokio::time::sleep(
            self.keep_alive.unwrap_or(Duration::MAX / 4)
        ));
        loop {
            // Packets already buffered (pipelined behind CONNECT, or left when the write buffer
            // filled) are handled before waiting for more bytes.
            if !self.rbuf.is_empty()
                && self.wbuf.len() < WRITE_HIGH_WATER
                && self.paused.is_none()
                && self.may_defer()
                && let Some(end) = self.handle_frames().await
            {
                return end;
            }
            if let Some(end) = self.send_ready_acks() {
                return end;
            }
            self.pump().await;
            self.size_buffers();
            let can_read =
                self.wbuf.len() < WRITE_HIGH_WATER && self.paused.is_none() && self.may_defer();
            let can_pump = can_read && self.window_open();
            tokio::select! {
                biased;
                reason = kick.wait() => return End::Closed(reason),
                _ = shutdown.cancelled() => return End::Closed(ReasonCode::SERVER_SHUTTING_DOWN),
                r = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return End::Lost;
                    }
                }
                r = self.reader.read_buf(&mut self.rbuf), if can_read => {
                    match r {
                        Ok(0) | Err(_) => return End::Lost,
                        Ok(_) => self.last_packet = Instant::now(),
                    }
                }
                r = super::acks::front_durable(&mut self.acks), if !self.acks.is_empty() => {
                    if let Some(end) = self.front_done(r) {
                        return end;
                    }
                }
                _ = session.woken(), if can_pump => {}
                list = resumed(&mut self.paused), if self.paused.is_some() => {
                    self.paused = None;
                    self.congested = list;
                    // The client's packets waited in the socket, unread, through no fault of
                    // its own: the pause does not count against its keep alive.
                    self.last_packet = Instant::now();
                }
                _ = &mut keep_alive_timer, if self.keep_alive.is_some() => {
                    let ka = self.keep_alive.unwrap_or_default();
                    if self.paused.is_some() {
                        self.last_packet = Instant::now();
                    }
                    let deadline = self.last_packet + ka;
                    if Instant::now() >= deadline {
                        // MQTT-3.1.2-24: no packet within 1.5 x keep alive.
                        return End::Closed(ReasonCode::KEEP_ALIVE_TIMEOUT);
                    }
                    keep_alive_timer.as_mut().reset(deadline);
                }
            }
        }
    }

    /// Keeps the buffers sized to the traffic: a busy reader gets room for a large read, and a
    /// write buffer that grew for a burst is released once it has drained, so an idle
    /// connection holds only small blocks.
    fn size_buffers(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPACE {
            self.rbuf.reserve(READ_CHUNK);
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > RETAINED_WRITE_CAPACITY {
            self.wbuf = BytesMut::new();
        }
    }

    /// Decodes and handles every whole packet in the read buffer.
    async fn handle_frames(&mut self) -> Option<End> {
        loop {
            let n = match codec::check(&self.rbuf, self.shared.config.limits.max_packet_size) {
                Ok(Some(n)) => n,
                Ok(None) => return None,
                Err(e) => {
                    if matches!(e, codec::DecodeError::TooLarge { .. }) {
                        self.shared
                            .metrics
                            .limit_hit(crate::metrics::Limit::PacketTooLarge);
                    }
                    tracing::debug!(client = %self.client.client_id, error = %e, "bad packet");
                    return Some(End::Closed(e.reason_code()));
                }
            };
            let frame = self.rbuf.split_to(n).freeze();
            self.shared.metrics.packet_received(n);
            let packet = match codec::decode(frame, Some(self.version)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(client = %self.client.client_id, error = %e, "bad packet");
                    return Some(End::Closed(e.reason_code()));
                }
            };
            if let Some(end) = self.handle(packet).await {
                return Some(end);
            }
            if !self.congested.is_empty() {
                // Checked after every PUBLISH, so the rest of this read is not routed into
                // full mailboxes; it stays buffered until the pause ends.
                self.pause();
                return None;
            }
            if self.wbuf.len() >= WRITE_HIGH_WATER || !self.may_defer() {
                // Let the writer (or the store) catch up before reading more; the rest stays
                // buffered.
                return None;
            }
        }
    }

    /// Stops handling this client's packets until the subscribers in `congested` drain.
    fn pause(&mut self) {
        let list = std::mem::take(&mut self.congested);
        let timeout = self.shared.config.limits.slow_subscriber_timeout;
        self.paused = Some(backpressure::pause(list, timeout, self.shared.clone()));
    }

    /// Ends the connection: tell the client why (v5), flush, publish the will if due, and
    /// either keep the session for its expiry interval or end it.
    async fn finish(mut self, end: End) {
        let send_will = match end {
            End::Disconnected { with_will } => with_will,
            End::Closed(ReasonCode::SERVER_SHUTTING_DOWN) => false,
            End::Closed(_) | End::Lost => true,
        };
        if let End::Closed(reason) = end
            && self.version == ProtocolVersion::V5
        {
            // MQTT-4.13.1-1 / section 4.13.2: DISCONNECT with the reason, then close.
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: reason,
                properties: Properties::default(),
            }));
        }
        if end != End::Lost && !self.wbuf.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                self.writer.write_all_buf(&mut self.wbuf).await?;
                self.writer.flush().await
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.writer.shutdown()).await;
        self.session.set_online(false);

        let will = self.will.take().filter(|_| send_will);
        let expiry = self.state.expiry_interval;
        if let Some(will) = will {
            self.shared.publish_will(
                will,
                self.client.clone(),
                self.identity.clone(),
                self.session.clone(),
                self.generation,
                expiry,
            );
        }
        // Whoever took the session over now owns it; otherwise it ends or starts expiring.
        let detached = self.session.detach(self.generation);
        self.shared
            .metrics
            .client_disconnected(detached && expiry > 0);
        if detached {
            if expiry == 0 {
                self.shared.end_session(&self.session, &self.state).await;
            } else {
                // The store learns when the session went offline, so that a restart can tell
                // whether it expired meanwhile.
                self.persist_session(Some(crate::store::disk::unix_now()))
                    .await;
                if expiry != NEVER_EXPIRES {
                    self.shared
                        .schedule_expiry(self.session.clone(), self.generation, expiry);
                }
            }
        }
        tracing::debug!(client = %self.client.client_id, ?end, "client disconnected");

        // Lingering close when the broker ended the connection (not at shutdown), once the
        // session is released: the write side is already shut down (FIN after our
        // DISCONNECT); keep reading and discarding what the client still sends until it
        // closes, for at most LINGER. Closing at once would make the kernel answer that data
        // with a RST, which can destroy the DISCONNECT (and acknowledgements before it) on
        // the client side or fail the client's writes before it has read them.
        if matches!(end, End::Closed(r) if r != ReasonCode::SERVER_SHUTTING_DOWN) {
            let Conn {
                mut reader, state, ..
            } = self;
            drop(state);
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = reader.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
    }

    /// Records the session in the store (persistent sessions only); `offline_since` when its
    /// connection has ended.
    pub async fn persist_session(&mut self, offline_since: Option<u64>) {
        if self.state.expiry_interval == 0 {
            return;
        }
        let record = self.state.record(&self.client.client_id, offline_since);
        if let Err(e) = self
            .shared
            .store
            .apply(crate::store::Change::SessionSaved(record))
            .get()
            .await
        {
            tracing::error!(client = %self.client.client_id, error = %e, "could not save session");
        }
    }
}
/// The end of a pause, or never when there is none (a disabled `select!` branch still builds
/// its future).
async fn resumed(paused: &mut Option<Pause>) -> Vec<Arc<Session>> {
    match paused {
        Some(pause) => pause.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    fn future_size<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection's task holds this future, so its size is memory per idle connection.
    /// The handshake and the end of a connection are boxed to keep them out of it; this guards
    /// against a change that pulls a large state back in.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let mut config = crate::Config::default();
        config.listeners.clear();
        let broker = crate::Broker::start(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let remote = "127.0.0.1:1".parse().unwrap();
        let peer = crate::net::Peer::new(remote, "t".into(), std::time::Duration::from_secs(1));
        let task = super::serve(broker.shared().clone(), socket, peer);
        let size = future_size(&task);
        assert!(size <= 4096, "connection future is {size} bytes");
    }
}
