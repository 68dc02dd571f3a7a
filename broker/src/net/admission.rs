//! Admission: whether a new connection may take a place, and the per-address defences.
//!
//! Checked once per accepted socket, in this order: the broker-wide `limits.max_connections`,
//! the listener's `max_connections`, the address's connection rate
//! (`limits.connection_rate_per_ip`, a token bucket) and its concurrent connections
//! (`limits.max_connections_per_ip`). An admitted connection holds a [`Ticket`] that gives its
//! places back when dropped, so every way a connection ends releases them.
//!
//! **Keys.** Addresses are limited by [`IpKey`]: an IPv4 address as is (an IPv4-mapped IPv6
//! address counts as its IPv4 address), an IPv6 address by its /64 network, because one host
//! usually owns a whole /64 and could otherwise rotate through 2^64 addresses. Behind a load
//! balancer the key is the client address from the PROXY header, not the balancer's.
//!
//! **Refusals that say why.** A refused connection is not simply closed: up to
//! [`REFUSING_AT_ONCE`] of them at a time are served far enough to read their CONNECT and
//! answer with CONNACK 0x89 (Server busy), 0x97 (Quota exceeded) or 0x9F (Connection rate
//! exceeded), so a well-behaved client learns to back off; beyond that they are closed at once,
//! so a flood costs no more than an accept.
//!
//! **Authentication failures** from one address are remembered here too: each failure doubles
//! the delay before the next refusal is sent (from 0.1 s up to `limits.auth_failure_delay_max`),
//! so that guessing passwords over many connections stays slow. A success does not reset it
//! (an attacker holding one valid account could otherwise interleave logins with guesses);
//! successes are never delayed, and ten quiet minutes forget the failures. The state per address is a
//! few words in one map behind a mutex that is taken per connection, never per message; a
//! sweep drops entries that hold nothing any more.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::codec::ReasonCode;
use crate::config::Limits;
use crate::metrics::Limit;

/// Refused connections served at once to tell them why; more are closed without a word.
pub const REFUSING_AT_ONCE: usize = 64;

/// The first delay after a failed authentication; each further failure doubles it.
const FIRST_AUTH_DELAY: Duration = Duration::from_millis(100);
/// Failures older than this are forgotten.
const AUTH_FAILURE_MEMORY: Duration = Duration::from_secs(600);
/// Entries beyond this trigger a sweep on insert; the map never grows much past it.
const MAX_TRACKED: usize = 1 << 20;

/// What per-address limits are keyed by; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Net([u8; 8]),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    IpKey::V6Net([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            IpKey::V6Net(n) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(n);
                write!(f, "{}/64", Ipv6Addr::from(o))
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`. Used for the connection
/// rate per address here and for the publish rates per connection (`session::throttle`).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket refilling at `rate` per second, holding `rate` (at least 1).
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// Takes `n` tokens, going into debt if need be, and returns how long to wait until the
    /// debt is paid (zero if there was enough). A single take larger than the burst is allowed
    /// and simply waits longer, so a packet larger than the byte rate still gets through.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether the bucket is full again by `now`.
    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[derive(Debug)]
struct PerIp {
    connections: u32,
    /// The connection rate, when limited.
    rate: Option<TokenBucket>,
    auth_failures: u32,
    last_failure: Instant,
}

impl PerIp {
    fn new(now: Instant, rate: Option<f64>) -> PerIp {
        PerIp {
            connections: 0,
            rate: rate.map(|r| TokenBucket::new(r, now)),
            auth_failures: 0,
            last_failure: now,
        }
    }

    /// Whether the entry carries no information any more (nothing open, bucket full, no
    /// failures worth remembering).
    fn idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.rate.as_ref().is_none_or(|b| b.full(now))
            && (self.auth_failures == 0
                || now.duration_since(self.last_failure) > AUTH_FAILURE_MEMORY)
    }
}

/// A connection that was turned away, and whether it may still be told so.
pub struct Refused {
    pub limit: Limit,
    /// The CONNACK reason code that says which limit.
    pub reason: ReasonCode,
    /// Held while the refusal is being served; `None`: close at once.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Counts of one listener, shared with its tickets.
#[derive(Debug, Default)]
pub struct ListenerCount {
    open: AtomicU32,
    max: Option<u32>,
}

impl ListenerCount {
    pub fn new(max: Option<u32>) -> ListenerCount {
        ListenerCount {
            open: AtomicU32::new(0),
            max,
        }
    }

    /// Connections open on the listener now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }
}

/// The broker-wide admission state; see the module doc.
pub struct Admission {
    max_connections: Option<u32>,
    max_per_ip: Option<u32>,
    rate_per_ip: Option<f64>,
    auth_delay_max: Duration,
    open: AtomicU32,
    per_ip: Mutex<HashMap<IpKey, PerIp>>,
    refusing: Arc<Semaphore>,
}

/// A place taken by an admitted connection; dropping it gives the place back.
pub struct Ticket {
    admission: Arc<Admission>,
    listener: Arc<ListenerCount>,
    ip: Option<IpKey>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        self.listener.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let now = Instant::now();
            let mut map = self.admission.per_ip.lock();
            if let Some(e) = map.get_mut(&ip) {
                e.connections = e.connections.saturating_sub(1);
                if e.idle(now) {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Takes one place in `counter` unless it is at `max`.
fn take(counter: &AtomicU32, max: Option<u32>) -> bool {
    match max {
        None => {
            counter.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(max) => counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok(),
    }
}

impl Admission {
    pub fn new(limits: &Limits) -> Arc<Admission> {
        Arc::new(Admission {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            rate_per_ip: limits.connection_rate_per_ip.map(f64::from),
            auth_delay_max: limits.auth_failure_delay_max,
            open: AtomicU32::new(0),
            per_ip: Mutex::new(HashMap::new()),
            refusing: Arc::new(Semaphore::new(REFUSING_AT_ONCE)),
        })
    }

    /// Connections admitted and open now, over all listeners.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether per-address state is needed at admission.
    fn tracks_ips(&self) -> bool {
        self.max_per_ip.is_some() || self.rate_per_ip.is_some()
    }

    /// Admits a connection from `ip` on a listener, or says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        listener: &Arc<ListenerCount>,
        ip: IpAddr,
    ) -> Result<Ticket, Refused> {
        if !take(&self.open, self.max_connections) {
            return Err(self.refused(Limit::Connections, ReasonCode::SERVER_BUSY));
        }
        if !take(&listener.open, listener.max) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(self.refused(Limit::ListenerConnections, ReasonCode::SERVER_BUSY));
        }
        let mut ticket = Ticket {
            admission: self.clone(),
            listener: listener.clone(),
            ip: None,
        };
        if !self.tracks_ips() {
            return Ok(ticket);
        }
        let key = IpKey::from(ip);
        let now = Instant::now();
        let mut map = self.per_ip.lock();
        let entry = self.entry(&mut map, key, now);
        if let Some(bucket) = &mut entry.rate
            && !bucket.try_take(now)
        {
            drop(map);
            return Err(self.refused(
                Limit::IpConnectionRate,
                ReasonCode::CONNECTION_RATE_EXCEEDED,
            ));
        }
        if let Some(max) = self.max_per_ip
            && entry.connections >= max
        {
            drop(map);
            return Err(self.refused(Limit::IpConnections, ReasonCode::QUOTA_EXCEEDED));
        }
        entry.connections += 1;
        ticket.ip = Some(key);
        Ok(ticket)
    }

    /// The entry of `key`, created if new; a full table is swept first.
    fn entry<'m>(
        &self,
        map: &'m mut HashMap<IpKey, PerIp>,
        key: IpKey,
        now: Instant,
    ) -> &'m mut PerIp {
        if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
            map.retain(|_, e| !e.idle(now));
        }
        map.entry(key)
            .or_insert_with(|| PerIp::new(now, self.rate_per_ip))
    }

    fn refused(&self, limit: Limit, reason: ReasonCode) -> Refused {
        Refused {
            limit,
            reason,
            permit: self.refusing.clone().try_acquire_owned().ok(),
        }
    }

    /// Records a failed authentication from `ip`; returns how long to wait before telling the
    /// client.
    pub fn auth_failed(&self, ip: IpAddr) -> Duration {
        if self.auth_delay_max.is_zero() {
            return Duration::ZERO;
        }
        let key = IpKey::from(ip);
        let now = Instant::now();
        let mut map = self.per_ip.lock();
        let entry = self.entry(&mut map, key, now);
        if now.duration_since(entry.last_failure) > AUTH_FAILURE_MEMORY {
            entry.auth_failures = 0;
        }
        entry.auth_failures = entry.auth_failures.saturating_add(1);
        entry.last_failure = now;
        let doublings = (entry.auth_failures - 1).min(16);
        (FIRST_AUTH_DELAY * (1u32 << doublings)).min(self.auth_delay_max)
    }

    /// Drops entries that hold nothing any more (called periodically).
    pub fn sweep(&self) {
        let now = Instant::now();
        self.per_ip.lock().retain(|_, e| !e.idle(now));
    }

    /// Addresses tracked now (for tests and diagnostics).
    pub fn tracked(&self) -> usize {
        self.per_ip.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
        let mut l = Limits::default();
        f(&mut l);
        l
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_bit_network_and_mapped_v4_by_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::from(a), IpKey::from(b));
        assert_ne!(IpKey::from(a), IpKey::from(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(IpKey::from(mapped), IpKey::from(v4));
        assert_eq!(IpKey::from(a).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn tickets_give_places_back() {
        let a = Admission::new(&limits(|l| {
            l.max_connections = Some(2);
            l.max_connections_per_ip = Some(1);
        }));
        let lc = Arc::new(ListenerCount::new(None));
        let ip1: IpAddr = "192.0.2.1".parse().unwrap();
        let ip2: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = a.admit(&lc, ip1).ok().unwrap();
        let r = a.admit(&lc, ip1).err().unwrap();
        assert_eq!(
            (r.limit, r.reason),
            (Limit::IpConnections, ReasonCode::QUOTA_EXCEEDED)
        );
        let t2 = a.admit(&lc, ip2).ok().unwrap();
        let r = a.admit(&lc, "192.0.2.3".parse().unwrap()).err().unwrap();
        assert_eq!(
            (r.limit, r.reason),
            (Limit::Connections, ReasonCode::SERVER_BUSY)
        );
        assert_eq!((a.open(), lc.open()), (2, 2));
        drop(t1);
        drop(t2);
        assert_eq!((a.open(), lc.open(), a.tracked()), (0, 0, 0));
        assert!(a.admit(&lc, ip1).is_ok());
    }

    #[test]
    fn listener_limit_does_not_leak_a_global_place() {
        let a = Admission::new(&limits(|_| {}));
        let lc = Arc::new(ListenerCount::new(Some(1)));
        let _t = a.admit(&lc, "192.0.2.1".parse().unwrap()).ok().unwrap();
        let r = a.admit(&lc, "192.0.2.1".parse().unwrap()).err().unwrap();
        assert_eq!(r.limit, Limit::ListenerConnections);
        assert_eq!(a.open(), 1);
    }

    #[test]
    fn connection_rate_is_a_bucket_per_address() {
        let a = Admission::new(&limits(|l| l.connection_rate_per_ip = Some(3)));
        let lc = Arc::new(ListenerCount::new(None));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..3 {
            drop(a.admit(&lc, ip).ok().unwrap());
        }
        let r = a.admit(&lc, ip).err().unwrap();
        assert_eq!(r.reason, ReasonCode::CONNECTION_RATE_EXCEEDED);
        assert!(a.admit(&lc, "192.0.2.10".parse().unwrap()).is_ok());
    }

    #[test]
    fn auth_failure_delay_doubles_up_to_the_cap_and_resets() {
        let a = Admission::new(&limits(|l| {
            l.auth_failure_delay_max = Duration::from_secs(1)
        }));
        let ip: IpAddr = "2001:db8::5".parse().unwrap();
        let other_host_same_net: IpAddr = "2001:db8::6".parse().unwrap();
        let delays: Vec<_> = (0..6).map(|_| a.auth_failed(ip).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(a.auth_failed(other_host_same_net).as_millis(), 1000);
        assert_eq!(
            a.auth_failed("2001:db8:0:1::5".parse().unwrap())
                .as_millis(),
            100
        );
        let off = Admission::new(&limits(|l| l.auth_failure_delay_max = Duration::ZERO));
        assert_eq!(off.auth_failed(ip), Duration::ZERO);
    }

    #[test]
    fn refusals_beyond_the_budget_are_silent() {
        let a = Admission::new(&limits(|l| l.max_connections = Some(1)));
        let lc = Arc::new(ListenerCount::new(None));
        let _t = a.admit(&lc, "192.0.2.1".parse().unwrap()).ok().unwrap();
        let held: Vec<_> = (0..REFUSING_AT_ONCE)
            .map(|_| a.admit(&lc, "192.0.2.1".parse().unwrap()).err().unwrap())
            .collect();
        assert!(held.iter().all(|r| r.permit.is_some()));
        let r = a.admit(&lc, "192.0.2.1".parse().unwrap()).err().unwrap();
        assert!(r.permit.is_none());
    }
}
