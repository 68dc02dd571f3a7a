//! One subscribing connection: read, acknowledge, and account for every message.
//!
//! Each read takes whatever the socket has (up to [`wire::READ_BUFFER`]), and every PUBLISH in
//! it is handled in place: the stamp is read from the payload, the sequence number goes to the
//! publisher's [`SeqTracker`](crate::tracker::SeqTracker), and the latency (receive time minus
//! the stamped send time) goes to an HDR histogram. The clock is read once per read: the
//! messages of one read arrived together. QoS 1 and 2 acknowledgements are appended to the
//! write buffer and written by the same `select!` loop.
//!
//! Progress (distinct messages so far) is published through an atomic after each read so the
//! scenario can stop waiting as soon as everything expected has arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, bail};
use bytes::Buf;
use hdrhistogram::Histogram;
use moat::codec::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::payload::{Clock, Stamp};
use crate::tracker::Trackers;
use crate::wire::{self, Ack, Client, Incoming};

/// What one subscriber measures.
#[derive(Debug, Clone)]
pub struct SubscriberPlan {
    pub id: u32,
    pub run: u32,
    /// Messages sent (stamped) before this clock time are not counted in latency.
    pub warm_ns: u64,
    /// Messages received in `[warm_ns, end_ns]` count towards the delivery rate.
    pub end_ns: u64,
}

/// What one subscriber saw.
#[derive(Debug)]
pub struct SubscriberResult {
    pub id: u32,
    pub trackers: Trackers,
    /// End-to-end latency in ns, of distinct messages sent after the warm-up.
    pub latency: Histogram<u64>,
    /// Every PUBLISH received, duplicates and strangers included.
    pub received: u64,
    /// Distinct messages received.
    pub unique: u64,
    /// Distinct messages received inside the measurement window.
    pub in_window: u64,
    /// PUBLISH packets without this run's stamp (another run's leftovers, or someone else's).
    pub foreign: u64,
}

/// A fresh latency histogram in ns: 3 significant digits, growing to whatever is recorded
/// (memory grows with the logarithm of the largest value).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is valid")
}

/// Receives until `stop` is cancelled, then disconnects.
pub async fn run(
    mut client: Client,
    plan: SubscriberPlan,
    clock: Clock,
    progress: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Result<SubscriberResult> {
    let result = receive(&mut client, &plan, clock, &progress, &stop).await;
    client.disconnect().await;
    result
}

async fn receive(
    client: &mut Client,
    plan: &SubscriberPlan,
    clock: Clock,
    progress: &AtomicU64,
    stop: &CancellationToken,
) -> Result<SubscriberResult> {
    let Client {
        stream,
        rbuf,
        wbuf,
        version,
    } = client;
    let version = *version;
    let (mut rd, mut wr) = stream.split();
    let mut res = SubscriberResult {
        id: plan.id,
        trackers: Trackers::default(),
        latency: new_histogram(),
        received: 0,
        unique: 0,
        in_window: 0,
        foreign: 0,
    };
    loop {
        rbuf.reserve(wire::READ_BUFFER / 2);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            // Acknowledgements go out before more is read: the broker's inflight window
            // waits on them.
            r = wr.write_buf(wbuf), if !wbuf.is_empty() => {
                if r? == 0 {
                    bail!("subscriber {}: socket closed", plan.id);
                }
            }
            r = rd.read_buf(rbuf) => {
                if r? == 0 {
                    bail!("subscriber {}: broker closed the connection", plan.id);
                }
                let now = clock.now();
                let counted = now >= plan.warm_ns && now <= plan.end_ns;
                let mut off = 0;
                while let Some(n) = wire::next_frame(&rbuf[off..])? {
                    match wire::parse(&rbuf[off..off + n], version)? {
                        Incoming::Publish { qos, packet_id, payload } => {
                            res.received += 1;
                            match qos {
                                1 => wire::put_ack(wbuf, Ack::PubAck, packet_id),
                                2 => wire::put_ack(wbuf, Ack::PubRec, packet_id),
                                _ => {}
                            }
                            match Stamp::read(payload) {
                                Some(s) if s.run == plan.run => {
                                    if res.trackers.get(s.publisher).record(s.seq) {
                                        res.unique += 1;
                                        if counted {
                                            res.in_window += 1;
                                        }
                                        if s.sent_ns >= plan.warm_ns {
                                            let ns = now.saturating_sub(s.sent_ns).max(1);
                                            let _ = res.latency.record(ns);
                                        }
                                    }
                                }
                                _ => res.foreign += 1,
                            }
                        }
                        Incoming::Ack(Ack::PubRel, id) => wire::put_ack(wbuf, Ack::PubComp, id),
                        Incoming::Other(p) if matches!(*p, Packet::Disconnect(_)) => {
                            bail!("subscriber {}: broker sent {p:?}", plan.id)
                        }
                        _ => {}
                    }
                    off += n;
                }
                rbuf.advance(off);
                progress.store(res.unique, Ordering::Relaxed);
            }
        }
    }
    Ok(res)
}
