//! Broker-wide counters and gauges, cheap enough to bump on every packet.
//!
//! One [`Metrics`] is shared (in an `Arc`) by every connection and the router. Each value is an
//! `AtomicU64` updated with `Relaxed` ordering: the numbers are statistics, nothing is
//! synchronised through them, and a relaxed `fetch_add` is a single uncontended-cache-line
//! instruction on the hot path. Values are grouped by who writes them (connection readers,
//! connection writers, session/router bookkeeping), each group on its own cache lines, so that
//! readers bumping "received" do not invalidate the line writers bump "sent" on.
//!
//! Counters only grow. Gauges go up and down in pairs (`inflight_added` / `inflight_removed`),
//! or are set outright where the owner knows the exact count (`set_retained`);
//! a gauge that would go below zero because of an unbalanced decrement reads as 0 in a
//! [`MetricsSnapshot`] rather than as a huge number. [`Metrics::snapshot`] gives plain numbers
//! for tests and for the `$SYS` topics (see `crate::sys`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a PUBLISH was not delivered to a subscriber that should have received it. A message
/// with no matching subscriber at all is not a drop: nobody was meant to receive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropCause {
    /// The subscriber's queue was full (`limits.max_queued_messages`; which message goes depends
    /// on `limits.queue_overflow`).
    QueueFull,
    /// The message expired (Message Expiry Interval or `limits.max_message_expiry`) before it
    /// could be sent.
    Expired,
    /// The message is larger than the subscriber's Maximum Packet Size (MQTT-3.1.2-25).
    TooLargeForClient,
    /// A policy plugin refused delivery to this subscriber.
    NotAuthorized,
}

impl DropCause {
    /// Every cause, in the order of [`MetricsSnapshot::dropped`].
    pub const ALL: [DropCause; 4] = [
        DropCause::QueueFull,
        DropCause::Expired,
        DropCause::TooLargeForClient,
        DropCause::NotAuthorized,
    ];

    fn index(self) -> usize {
        match self {
            DropCause::QueueFull => 0,
            DropCause::Expired => 1,
            DropCause::TooLargeForClient => 2,
            DropCause::NotAuthorized => 3,
        }
    }
}

/// A limit or defence that turned something away: counted per kind, so an operator sees which
/// limit clients run into (`$SYS/broker/limits/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// `limits.max_connections`.
    Connections,
    /// A listener's `max_connections`.
    ListenerConnections,
    /// `limits.max_connections_per_ip`.
    IpConnections,
    /// `limits.connection_rate_per_ip`.
    IpConnectionRate,
    /// No CONNECT within the listener's connect timeout.
    ConnectTimeout,
    /// A TLS handshake failed or did not finish within its deadline (bad or revoked client
    /// certificate, old protocol version, no shared cipher, timeout).
    TlsHandshake,
    /// A WebSocket upgrade failed (wrong path, no `mqtt` subprotocol, not WebSocket at all).
    WsHandshake,
    /// A WebSocket upgrade from a web origin not on the listener's allow-list.
    WsOrigin,
    /// A missing or malformed PROXY protocol header from a trusted balancer.
    ProxyHeader,
    /// A packet larger than `limits.max_packet_size`.
    PacketTooLarge,
    /// `limits.max_subscriptions_per_client`.
    Subscriptions,
    /// A topic over `limits.max_topic_length` or `limits.max_topic_levels`.
    TopicLimits,
    /// A PUBLISH held back by `limits.publish_rate_per_client` or `publish_bytes_per_client`.
    PublishRate,
    /// A retained message over one of the `limits.max_retained_*` quotas.
    Retained,
    /// `limits.max_persistent_sessions`.
    PersistentSessions,
    /// A refusal delayed after earlier authentication failures from the same address.
    AuthFailureDelay,
}

impl Limit {
    /// Every limit, in the order of [`MetricsSnapshot::limits`].
    pub const ALL: [Limit; 16] = [
        Limit::Connections,
        Limit::ListenerConnections,
        Limit::IpConnections,
        Limit::IpConnectionRate,
        Limit::ConnectTimeout,
        Limit::TlsHandshake,
        Limit::WsHandshake,
        Limit::WsOrigin,
        Limit::ProxyHeader,
        Limit::PacketTooLarge,
        Limit::Subscriptions,
        Limit::TopicLimits,
        Limit::PublishRate,
        Limit::Retained,
        Limit::PersistentSessions,
        Limit::AuthFailureDelay,
    ];

    /// Declaration order, which is the order of [`Limit::ALL`].
    fn index(self) -> usize {
        self as usize
    }
}

/// Keeps a group of atomics on cache lines of its own (128 bytes: two 64-byte lines, since
/// x86 prefetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Client and session counts: bumped on connect, disconnect and expiry.
#[derive(Debug, Default)]
struct Clients {
    connected: AtomicU64,
    total: AtomicU64,
    maximum: AtomicU64,
    disconnected: AtomicU64,
    expired: AtomicU64,
    refused: AtomicU64,
    sockets: AtomicU64,
    marked_slow: AtomicU64,
}

/// Traffic in one direction: bumped by connection readers (received) or writers (sent).
#[derive(Debug, Default)]
struct Traffic {
    messages: AtomicU64,
    bytes: AtomicU64,
    publish: AtomicU64,
    publish_bytes: AtomicU64,
}

/// Store and session-state gauges, and drops: bumped by the router and sessions.
#[derive(Debug, Default)]
struct Store {
    retained: AtomicU64,
    subscriptions: AtomicU64,
    inflight: AtomicU64,
    queued: AtomicU64,
    dropped: [AtomicU64; 4],
}

/// The broker's counters and gauges. See the module documentation.
#[derive(Debug, Default)]
pub struct Metrics {
    clients: Padded<Clients>,
    received: Padded<Traffic>,
    sent: Padded<Traffic>,
    store: Padded<Store>,
    limits: Padded<[AtomicU64; Limit::ALL.len()]>,
}

/// Adds `n` to a gauge (or counter).
fn add(gauge: &AtomicU64, n: usize) {
    gauge.fetch_add(n as u64, Relaxed);
}

/// Takes `n` from a gauge. An unbalanced decrement wraps, and reads as 0 (see [`gauge`]).
fn sub(gauge: &AtomicU64, n: usize) {
    gauge.fetch_sub(n as u64, Relaxed);
}

/// Reads a gauge, as 0 if decrements have outnumbered increments.
fn gauge(value: &AtomicU64) -> u64 {
    let v = value.load(Relaxed);
    if v > i64::MAX as u64 { 0 } else { v }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    // --- clients ---------------------------------------------------------------------------

    /// A TCP connection was accepted (before any CONNECT).
    pub fn socket_accepted(&self) {
        add(&self.clients.0.sockets, 1);
    }

    /// A client's CONNECT was accepted: connected clients and the total go up, and the
    /// high-water mark follows. If it resumed an offline session, also call
    /// [`Metrics::offline_session_resumed`].
    pub fn client_connected(&self) {
        let c = &self.clients.0;
        let now = c.connected.fetch_add(1, Relaxed).wrapping_add(1);
        c.total.fetch_add(1, Relaxed);
        if now <= i64::MAX as u64 {
            c.maximum.fetch_max(now, Relaxed);
        }
    }

    /// A connected client went away. `session_kept`: its session stays, offline, to receive
    /// messages until it expires or the client comes back (counted as disconnected).
    pub fn client_disconnected(&self, session_kept: bool) {
        let c = &self.clients.0;
        sub(&c.connected, 1);
        if session_kept {
            add(&c.disconnected, 1);
        }
    }

    /// A client reconnected to its offline session, which is no longer disconnected.
    pub fn offline_session_resumed(&self) {
        sub(&self.clients.0.disconnected, 1);
    }

    /// An offline session reached its expiry interval and was removed.
    pub fn offline_session_expired(&self) {
        let c = &self.clients.0;
        sub(&c.disconnected, 1);
        add(&c.expired, 1);
    }

    /// An offline session was restored from the store at start.
    pub fn offline_session_restored(&self) {
        add(&self.clients.0.disconnected, 1);
    }

    /// A CONNECT was refused (bad protocol, identifier, credentials, policy, ...).
    pub fn connect_refused(&self) {
        add(&self.clients.0.refused, 1);
    }

    /// A connected subscriber took nothing from its full queue while a publisher waited on it,
    /// and was marked slow: its queue's overflow policy applies until it catches up.
    pub fn subscriber_marked_slow(&self) {
        add(&self.clients.0.marked_slow, 1);
    }

    // --- traffic ---------------------------------------------------------------------------

    /// A packet of any type, `bytes` long on the wire, was read from a client.
    pub fn packet_received(&self, bytes: usize) {
        let t = &self.received.0;
        add(&t.messages, 1);
        add(&t.bytes, bytes);
    }

    /// A packet of any type, `bytes` long on the wire, was written to a client.
    pub fn packet_sent(&self, bytes: usize) {
        let t = &self.sent.0;
        add(&t.messages, 1);
        add(&t.bytes, bytes);
    }

    /// A PUBLISH with a payload of `payload_bytes` was received (in addition to
    /// [`Metrics::packet_received`] for the packet itself).
    pub fn publish_received(&self, payload_bytes: usize) {
        let t = &self.received.0;
        add(&t.publish, 1);
        add(&t.publish_bytes, payload_bytes);
    }

    /// A PUBLISH with a payload of `payload_bytes` was sent (in addition to
    /// [`Metrics::packet_sent`]).
    pub fn publish_sent(&self, payload_bytes: usize) {
        let t = &self.sent.0;
        add(&t.publish, 1);
        add(&t.publish_bytes, payload_bytes);
    }

    /// A message for one subscriber was discarded undelivered.
    pub fn publish_dropped(&self, cause: DropCause) {
        add(&self.store.0.dropped[cause.index()], 1);
    }

    /// A limit or defence turned something away.
    pub fn limit_hit(&self, limit: Limit) {
        add(&self.limits.0[limit.index()], 1);
    }

    // --- store gauges ----------------------------------------------------------------------

    /// Sets the retained message count outright (e.g. after loading persisted state).
    pub fn set_retained(&self, count: usize) {
        self.store.0.retained.store(count as u64, Relaxed);
    }

    /// Sets the subscription count outright (the router knows it exactly).
    pub fn set_subscriptions(&self, count: usize) {
        self.store.0.subscriptions.store(count as u64, Relaxed);
    }

    /// An outbound QoS 1 or 2 message was sent and awaits acknowledgement.
    pub fn inflight_added(&self) {
        add(&self.store.0.inflight, 1);
    }

    /// `n` in-flight messages completed or were discarded (e.g. with their session).
    pub fn inflight_removed(&self, n: usize) {
        sub(&self.store.0.inflight, n);
    }

    /// A message was queued for a client (offline, or its in-flight window full).
    pub fn queued_added(&self) {
        add(&self.store.0.queued, 1);
    }

    /// `n` messages went back into a queue they had been taken from.
    pub fn queued_returned(&self, n: usize) {
        add(&self.store.0.queued, n);
    }

    /// `n` queued messages left the queue (sent, dropped, expired, or the session ended).
    pub fn queued_removed(&self, n: usize) {
        sub(&self.store.0.queued, n);
    }

    /// The current values. Each is read atomically, but not all at the same instant.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let c = &self.clients.0;
        let (r, s, st) = (&self.received.0, &self.sent.0, &self.store.0);
        MetricsSnapshot {
            clients_connected: gauge(&c.connected),
            clients_total: c.total.load(Relaxed),
            clients_maximum: c.maximum.load(Relaxed),
            clients_disconnected: gauge(&c.disconnected),
            clients_expired: c.expired.load(Relaxed),
            connects_refused: c.refused.load(Relaxed),
            sockets_accepted: c.sockets.load(Relaxed),
            subscribers_marked_slow: c.marked_slow.load(Relaxed),
            messages_received: r.messages.load(Relaxed),
            messages_sent: s.messages.load(Relaxed),
            bytes_received: r.bytes.load(Relaxed),
            bytes_sent: s.bytes.load(Relaxed),
            publish_received: r.publish.load(Relaxed),
            publish_sent: s.publish.load(Relaxed),
            publish_bytes_received: r.publish_bytes.load(Relaxed),
            publish_bytes_sent: s.publish_bytes.load(Relaxed),
            dropped: std::array::from_fn(|i| st.dropped[i].load(Relaxed)),
            retained_messages: gauge(&st.retained),
            subscriptions: gauge(&st.subscriptions),
            inflight: gauge(&st.inflight),
            queued_messages: gauge(&st.queued),
            limits: std::array::from_fn(|i| self.limits.0[i].load(Relaxed)),
        }
    }
}

/// The values of [`Metrics`] at one moment, as plain numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Clients connected now (gauge).
    pub clients_connected: u64,
    /// CONNECTs accepted since start.
    pub clients_total: u64,
    /// The most clients connected at once since start.
    pub clients_maximum: u64,
    /// Persistent sessions whose client is offline (gauge).
    pub clients_disconnected: u64,
    /// Offline sessions removed because they expired, since start.
    pub clients_expired: u64,
    /// CONNECTs refused since start.
    pub connects_refused: u64,
    /// TCP connections accepted since start.
    pub sockets_accepted: u64,
    /// Times a connected subscriber was marked slow (it stopped taking messages while a
    /// publisher waited on its full queue), since start.
    pub subscribers_marked_slow: u64,
    /// Packets of every type received.
    pub messages_received: u64,
    /// Packets of every type sent.
    pub messages_sent: u64,
    /// Bytes received, all packets.
    pub bytes_received: u64,
    /// Bytes sent, all packets.
    pub bytes_sent: u64,
    /// PUBLISH packets received.
    pub publish_received: u64,
    /// PUBLISH packets sent.
    pub publish_sent: u64,
    /// PUBLISH payload bytes received.
    pub publish_bytes_received: u64,
    /// PUBLISH payload bytes sent.
    pub publish_bytes_sent: u64,
    /// Messages dropped, by cause, indexed as [`DropCause::ALL`]; see [`Self::dropped_by`].
    pub dropped: [u64; 4],
    /// Retained messages stored (gauge).
    pub retained_messages: u64,
    /// Subscriptions, over all sessions (gauge).
    pub subscriptions: u64,
    /// Outbound QoS 1/2 messages awaiting acknowledgement (gauge).
    pub inflight: u64,
    /// Messages queued for clients (gauge).
    pub queued_messages: u64,
    /// Times each limit turned something away, indexed as [`Limit::ALL`]; see
    /// [`Self::limited`].
    pub limits: [u64; Limit::ALL.len()],
}

impl MetricsSnapshot {
    /// Messages dropped for `cause`.
    pub fn dropped_by(&self, cause: DropCause) -> u64 {
        self.dropped[cause.index()]
    }

    /// Times `limit` turned something away.
    pub fn limited(&self, limit: Limit) -> u64 {
        self.limits[limit.index()]
    }

    /// Messages dropped for any cause.
    pub fn publish_dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Messages held by the broker: retained plus queued (Mosquitto's "stored").
    pub fn messages_stored(&self) -> u64 {
        self.retained_messages + self.queued_messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero() {
        assert_eq!(Metrics::new().snapshot(), MetricsSnapshot::default());
    }

    #[test]
    fn clients_and_sessions() {
        let m = Metrics::new();
        m.socket_accepted();
        m.client_connected();
        m.client_connected();
        m.client_connected();
        m.client_disconnected(true);
        m.client_disconnected(false);
        m.connect_refused();
        m.subscriber_marked_slow();
        let s = m.snapshot();
        assert_eq!(s.subscribers_marked_slow, 1);
        assert_eq!(s.clients_connected, 1);
        assert_eq!(s.clients_total, 3);
        assert_eq!(s.clients_maximum, 3);
        assert_eq!(s.clients_disconnected, 1);
        assert_eq!(s.connects_refused, 1);
        assert_eq!(s.sockets_accepted, 1);

        m.client_connected();
        m.offline_session_resumed();
        let s = m.snapshot();
        assert_eq!(
            (
                s.clients_connected,
                s.clients_maximum,
                s.clients_disconnected
            ),
            (2, 3, 0)
        );

        m.client_disconnected(true);
        m.offline_session_expired();
        let s = m.snapshot();
        assert_eq!(
            (
                s.clients_connected,
                s.clients_disconnected,
                s.clients_expired
            ),
            (1, 0, 1)
        );
        assert_eq!(s.clients_total, 4);
    }

    #[test]
    fn traffic_and_drops() {
        let m = Metrics::new();
        m.packet_received(10);
        m.publish_received(4);
        m.packet_received(2);
        m.packet_sent(10);
        m.publish_sent(4);
        m.publish_dropped(DropCause::QueueFull);
        m.publish_dropped(DropCause::QueueFull);
        m.publish_dropped(DropCause::NotAuthorized);
        let s = m.snapshot();
        assert_eq!((s.messages_received, s.bytes_received), (2, 12));
        assert_eq!((s.publish_received, s.publish_bytes_received), (1, 4));
        assert_eq!(
            (
                s.messages_sent,
                s.bytes_sent,
                s.publish_sent,
                s.publish_bytes_sent
            ),
            (1, 10, 1, 4)
        );
        assert_eq!(s.dropped_by(DropCause::QueueFull), 2);
        assert_eq!(s.dropped_by(DropCause::NotAuthorized), 1);
        assert_eq!(s.dropped_by(DropCause::Expired), 0);
        assert_eq!(s.publish_dropped(), 3);
        for (i, cause) in DropCause::ALL.iter().enumerate() {
            assert_eq!(cause.index(), i);
        }
    }

    #[test]
    fn gauges_go_both_ways_and_never_read_negative() {
        let m = Metrics::new();
        m.set_retained(1);
        m.set_subscriptions(3);
        m.inflight_added();
        m.queued_added();
        m.queued_added();
        m.queued_removed(1);
        let s = m.snapshot();
        assert_eq!(
            (
                s.retained_messages,
                s.subscriptions,
                s.inflight,
                s.queued_messages
            ),
            (1, 3, 1, 1)
        );
        assert_eq!(s.messages_stored(), 2);

        m.inflight_removed(2);
        assert_eq!(
            m.snapshot().inflight,
            0,
            "an unbalanced decrement reads as 0"
        );
        m.set_retained(7);
        assert_eq!(m.snapshot().retained_messages, 7);
    }

    #[test]
    fn is_shared_across_threads() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.packet_received(3);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = m.snapshot();
        assert_eq!((s.messages_received, s.bytes_received), (4000, 12000));
    }
}
