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
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::acks::Acks;
use super::backpressure::{self, Pause};
use super::handshake::{self, Admitted, Refused};
use super::inbound::Handled;
use super::io::{self, IoEvent};
use super::keepalive;
use super::{Kick, Session, SessionRef, SessionState};
use crate::broker::Shared;
use crate::codec::{self, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode, Will};
use crate::net::Peer;
use crate::net::admission::Ticket;
use crate::policy::cache::DecisionCache;
use crate::policy::{ClientInfo, Identity};
use crate::store::{NEVER_EXPIRES, StoreError};

/// The read buffer for the handshake: a CONNECT rarely needs more.
const CONNECT_READ_BUFFER: usize = 512;

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

/// The topic aliases of an MQTT 5 connection, both ways (section 3.3.2.3.4).
#[derive(Default)]
pub(super) struct TopicAliases {
    /// Set by the client, index alias - 1.
    pub inbound: Vec<Option<ByteString>>,
    /// Set by the broker towards the client.
    pub outbound: HashMap<ByteString, u16>,
}

/// The enhanced authentication of a connection (section 4.12).
pub(super) struct EnhancedAuth {
    /// The Authentication Method of CONNECT: re-authentication must use it (section 4.12.1).
    pub method: ByteString,
    /// The state of a re-authentication in progress.
    pub pending: Option<bytes::Bytes>,
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
    io: IO,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    pub version: ProtocolVersion,
    pub client: Arc<ClientInfo>,
    pub identity: Arc<Identity>,
    /// Decisions this session may reuse.
    pub decisions: DecisionCache,
    /// MQTT 5 enhanced authentication, for clients that used it (most do not: boxed).
    pub auth: Option<Box<EnhancedAuth>>,
    /// This connection's session (also its key in the subscription tree).
    pub me: SessionRef,
    pub state: tokio::sync::OwnedMutexGuard<SessionState>,
    generation: u64,
    pub(super) kick: Arc<Kick>,
    /// The publish rate limits, if any (`throttle.rs`).
    pub(super) throttle: Option<Box<super::throttle::Throttle>>,
    /// The admission ticket this connection holds (see `net::admission`), released with it.
    ticket: Option<Ticket>,
    /// 1.5 times the keep alive in milliseconds (MQTT-3.1.2-24); 0 when it is off.
    keep_alive_ms: u32,
    /// The client's Maximum Packet Size (MQTT-3.1.2-24): larger packets are not sent to it.
    pub client_max_packet: u32,
    /// The client's Receive Maximum: our outbound QoS 1/2 window (MQTT-4.9.0-1).
    pub send_window: u16,
    /// The client's Topic Alias Maximum: aliases we may use towards it.
    pub client_alias_max: u16,
    /// Allocated when the first topic alias is used (most connections never use one).
    pub aliases: Option<Box<TopicAliases>>,
    /// The client allows reason strings and user properties on acknowledgements (MQTT-3.1.2-29).
    pub problem_info: bool,
    /// Boxed: most clients have none, and it would be a fifth of this struct.
    will: Option<Box<Will>>,
    /// Some subscription was allowed only with "check each delivery".
    pub check_deliveries: bool,
    /// While set, no packet is read or handled: this publisher waits for `congested`.
    paused: Option<Pause>,
    /// Acknowledgements waiting for their messages to be durable (`acks`).
    pub acks: Acks,
}

/// Serves one accepted connection until it closes. `peer` is what the transport established
/// (see [`crate::net::Peer`]); the places it holds are released when the connection ends.
///
/// The socket and its facts travel boxed into the handshake, which consumes them: a task
/// future keeps every argument of an `async fn` for its whole life, and this future is memory
/// per idle connection.
pub fn serve<IO>(shared: Arc<Shared>, io: IO, peer: Peer) -> impl Future<Output = ()> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let accepted = Box::new(Accepted { shared, io, peer });
    async move {
        let Some(mut conn) = Box::pin(handshake(accepted)).await else {
            return;
        };
        let end = conn.run().await;
        Box::pin(conn.finish(end)).await;
    }
}

/// A socket before its CONNECT.
struct Accepted<IO> {
    shared: Arc<Shared>,
    io: IO,
    peer: Peer,
}

/// From CONNECT to a connection ready to serve, or `None` if it was refused or went away.
async fn handshake<IO>(accepted: Box<Accepted<IO>>) -> Option<Conn<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        shared,
        mut io,
        mut peer,
    } = *accepted;
    let places = std::mem::take(&mut peer.places);
    // Released once the connection is idle (`io::size_buffers`).
    let mut rbuf = BytesMut::with_capacity(CONNECT_READ_BUFFER);
    let read = handshake::read_connect(&shared, &mut io, &mut rbuf, peer.connect_timeout);
    let connect = match read.await {
        Ok(c) => c,
        Err(Refused::ConnAck(version, denial)) => {
            handshake::send_refusal(&shared, &mut io, version, denial, None).await;
            return None;
        }
        Err(Refused::Silent) => return None,
    };
    let mut conn = handshake::accept(shared, connect, io, rbuf, peer).await?;
    conn.ticket = places.into_ticket();
    Some(conn)
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    /// Sets up the served connection and queues its CONNACK and resent inflight messages.
    pub(super) async fn start(
        shared: Arc<Shared>,
        admitted: Admitted,
        io: IO,
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
        let policy_seen = admitted.policy_seen;

        let p = &connect.properties;
        let mut conn = Conn {
            version,
            keep_alive_ms: u32::from(keep_alive) * 1500,
            client_max_packet: p.maximum_packet_size.unwrap_or(u32::MAX),
            send_window: p
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(limits.max_inflight),
            client_alias_max: p.topic_alias_maximum.unwrap_or(0),
            aliases: None,
            problem_info: p.request_problem_information != Some(0),
            will: admitted.connect.will.clone().map(Box::new),
            decisions: DecisionCache::default(),
            auth: p.authentication_method.clone().map(|method| {
                Box::new(EnhancedAuth {
                    method,
                    pending: None,
                })
            }),
            client: admitted.client,
            identity: admitted.identity,
            me: SessionRef(admitted.session),
            state: admitted.state,
            generation: admitted.generation,
            kick: admitted.kick,
            throttle: super::throttle::Throttle::new(limits),
            ticket: None,
            io,
            rbuf,
            wbuf: BytesMut::new(),
            check_deliveries: false,
            acks: Default::default(),
            paused: None,
            shared,
        };
        conn.update_delivery_checks();
        conn.set_identity_expiry();
        conn.kick
            .set_connected(conn.client.clone(), conn.identity.clone());
        // The plugins may have changed since the handshake asked them: if so, the restored
        // subscriptions are re-checked (or the client sent to authenticate again).
        conn.shared
            .policy_changes
            .settle_admitted(policy_seen, &conn.me.0);
        // A ban that came after the handshake's check found no attached connection to close
        // (`admin::Control::ban` inserts, then looks): this look, after the attach, closes
        // the gap.
        if conn.shared.bans.read().contains(&conn.client.client_id) {
            conn.me.0.disconnect(ReasonCode::ADMINISTRATIVE_ACTION);
        }
        conn.shared.metrics.client_connected();
        conn.send(&connack);
        conn.me.0.set_journaled(conn.journaled());
        if conn.state.expiry_interval > 0 {
            conn.persist_session(None).await;
        }
        conn.me.0.set_online(true);
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
    ///
    /// Deliveries, a takeover and shutdown all wake the task through the session's one
    /// [`Session::woken`]; why it woke is read from the mailbox and the [`Kick`] (one waiter
    /// instead of three keeps this future, which every idle connection holds, small).
    async fn run(&mut self) -> End {
        if self.shared.shutdown.is_cancelled() {
            // Shutdown kicked the sessions it found before this one was attached.
            return End::Closed(ReasonCode::SERVER_SHUTTING_DOWN);
        }
        self.touch_keep_alive();
        loop {
            if let Some(reason) = self.kick.fired() {
                return End::Closed(reason);
            }
            // The plugins changed (rare): boxed, so its state stays out of this future.
            if self.kick.take_recheck()
                && let Some(end) = Box::pin(self.recheck_subscriptions()).await
            {
                return end;
            }
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
            io::size_buffers(&mut self.rbuf, &mut self.wbuf);
            let can_read =
                self.wbuf.len() < WRITE_HIGH_WATER && self.paused.is_none() && self.may_defer();
            tokio::select! {
                biased;
                _ = self.me.0.woken() => {}
                event = std::future::poll_fn(|cx| {
                    io::poll_io(&mut self.io, &mut self.rbuf, &mut self.wbuf, can_read, cx)
                }), if can_read || !self.wbuf.is_empty() => match event {
                    IoEvent::Read => self.touch_keep_alive(),
                    IoEvent::Wrote => {}
                    IoEvent::Closed => return End::Lost,
                },
                waited = std::future::poll_fn(|cx| poll_waits(&mut self.paused, &mut self.acks, cx)),
                    if self.paused.is_some() || !self.acks.is_empty() => match waited {
                    Waited::Durable(r) => {
                        if let Some(end) = self.front_done(r) {
                            return end;
                        }
                    }
                    Waited::Resumed(list) => {
                        self.paused = None;
                        backpressure::recycle(list);
                        // The client's packets waited in the socket, unread, through no fault
                        // of its own: the pause does not count against its keep alive.
                        self.touch_keep_alive();
                    }
                },
            }
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
            let end = match self.handle(packet) {
                Handled::Done(end) => end,
                later => later.finish().await,
            };
            if end.is_some() {
                return end;
            }
            if self.paused.is_some() {
                // Checked after every PUBLISH, so the rest of this read is not routed into
                // full mailboxes; it stays buffered until the pause ends.
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
    pub(super) fn pause(&mut self, congested: Vec<Arc<Session>>) {
        let timeout = self.shared.config.limits.slow_subscriber_timeout;
        self.paused = Some(backpressure::pause(congested, timeout, self.shared.clone()));
        self.kick.set_deadline(keepalive::NEVER);
    }

    /// Tells the keep-alive sweep when the identity expires: the connection is closed then
    /// (MQTT 5: 0xA0 Maximum connect time).
    pub(super) fn set_identity_expiry(&self) {
        let at = self.identity.expires_at.map_or(keepalive::NEVER, |unix| {
            let left_ms = (unix * 1000).saturating_sub(unix_ms_now());
            self.shared.now_ms() + left_ms
        });
        self.kick.set_expiry(at);
    }

    /// When the identity expires, for capping cached decisions.
    pub(super) fn identity_deadline(&self) -> Option<std::time::Instant> {
        let at = self.identity.expires_at?;
        let left_ms = (at * 1000).saturating_sub(unix_ms_now());
        Some(std::time::Instant::now() + Duration::from_millis(left_ms))
    }

    /// A packet arrived (or a pause ended): the keep alive starts again.
    fn touch_keep_alive(&mut self) {
        if self.keep_alive_ms > 0 {
            let deadline = self.shared.now_ms() + u64::from(self.keep_alive_ms);
            self.kick.set_deadline(deadline);
        }
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
                self.io.write_all_buf(&mut self.wbuf).await?;
                self.io.flush().await
            })
            .await;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), self.io.shutdown()).await;
        self.me.0.set_online(false);

        let will = self.will.take().filter(|_| send_will);
        let expiry = self.state.expiry_interval;
        if let Some(will) = will {
            self.shared.publish_will(
                *will,
                self.client.clone(),
                self.identity.clone(),
                self.me.0.clone(),
                self.generation,
                expiry,
            );
        }
        // Whoever took the session over now owns it; otherwise it ends or starts expiring.
        let detached = self.me.0.detach(self.generation);
        self.shared
            .metrics
            .client_disconnected(detached && expiry > 0);
        if detached {
            if expiry == 0 {
                self.shared.end_session(&self.me.0, &self.state).await;
            } else {
                // The store learns when the session went offline, so that a restart can tell
                // whether it expired meanwhile.
                self.persist_session(Some(crate::store::disk::unix_now()))
                    .await;
                if expiry != NEVER_EXPIRES {
                    self.shared
                        .schedule_expiry(self.me.0.clone(), self.generation, expiry);
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
            let Conn { mut io, state, .. } = self;
            drop(state);
            // On the heap: in the future it would make every connection's end 4 KiB larger to
            // set up, lingering or not.
            let mut sink = vec![0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = io.read(&mut sink).await {
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
        let owner = self.me.0.owner();
        let record = self
            .state
            .record(&self.client.client_id, &owner, offline_since);
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
/// Milliseconds since the Unix epoch, now.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the serving loop waits for besides its socket and its session.
enum Waited {
    /// The pause ended (`backpressure`); the list is for reuse.
    Resumed(Vec<Arc<Session>>),
    /// The front waiting acknowledgement's message is durable, or the store failed (`acks`).
    Durable(Result<(), StoreError>),
}

/// Polls both in one `select!` branch (one future instead of two in every connection's task).
fn poll_waits(
    paused: &mut Option<Pause>,
    acks: &mut Acks,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Waited> {
    if let Some(pause) = paused
        && let std::task::Poll::Ready(list) = std::pin::Pin::as_mut(&mut **pause).poll(cx)
    {
        return std::task::Poll::Ready(Waited::Resumed(list));
    }
    acks.poll_front(cx).map(Waited::Durable)
}

#[cfg(test)]
mod tests {
    fn future_size<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection's task holds this future, so its size is memory per idle connection.
    /// The handshake, the end of a connection, packet handling that waits for a policy or a
    /// store, and per-delivery policy checks are boxed to keep them out of it; the keep alive
    /// is swept by one broker task rather than timed in each. This guards against a change
    /// that pulls a large state back in. (488 bytes when written; tokio rounds a task to
    /// multiples of 128 bytes with about 104 of its own, so 536 keeps it at 640.)
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
        assert!(size <= 536, "connection future is {size} bytes");
    }
}
