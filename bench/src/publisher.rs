//! One publishing connection: a send timeline, a QoS 1/2 window, batched writes.
//!
//! Two pacing modes:
//! - **As fast as possible**: the write buffer is topped up to `batch_bytes` whenever the
//!   socket takes data, so each `write` system call carries hundreds of messages and the
//!   broker's reading, not the generator, sets the pace (TCP backpressure).
//! - **Fixed rate**: message `k` is *due* at `start + k / rate`, a timeline fixed in advance.
//!   Each message is stamped with its due time, not the time it was actually written, so any
//!   stall (the window full, the socket full, the generator late) shows up as latency instead
//!   of silently lowering the rate: no coordinated omission. Waiting uses a tokio timer only
//!   when the next message is more than [`SPIN_BELOW_NS`] away; closer than that it yields in
//!   a loop, because tokio timers have 1 ms granularity, which would add up to 1 ms of
//!   generator-made latency at a few thousand messages a second.
//!
//! QoS 1 and 2 are pipelined: up to `window` messages are unacknowledged at once (PUBACK, or
//! PUBREC → PUBREL → PUBCOMP). Reads and writes share one `select!` loop on the split socket.

use std::time::Duration;

use anyhow::{Result, bail};
use bytes::Buf;
use moat::codec::{Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::payload::{Clock, Stamp};
use crate::wire::{self, Ack, Client, Incoming};

/// Closer than this to the next due time, the publisher yields instead of sleeping.
pub const SPIN_BELOW_NS: u64 = 2_000_000;

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct PublisherPlan {
    pub id: u32,
    pub run: u32,
    pub topic: String,
    pub qos: QoS,
    pub payload: usize,
    /// Messages per second for this publisher; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Clock time of the first message.
    pub start_ns: u64,
    /// Clock time after which nothing more is sent.
    pub end_ns: u64,
    /// Most QoS 1/2 messages unacknowledged at once.
    pub window: usize,
    /// Write buffer target in as-fast-as-possible mode.
    pub batch_bytes: usize,
    /// How long after `end_ns` to wait for the last acknowledgements.
    pub drain: Duration,
}

/// What one publisher did.
#[derive(Debug, Clone, Default)]
pub struct PublisherResult {
    pub id: u32,
    /// Messages handed to the socket.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged (PUBACK, or PUBCOMP for QoS 2).
    pub acked: u64,
    /// QoS 1/2 messages still unacknowledged when the drain time ran out.
    pub unacked: u64,
    /// At fixed rate: how far behind its timeline the publisher fell, at worst (ns).
    pub max_lag_ns: u64,
}

/// Packet identifiers in use, so that a slow acknowledgement never sees its id reused.
struct Ids {
    in_use: Vec<bool>,
    next: u16,
}

impl Ids {
    fn new() -> Ids {
        Ids {
            in_use: vec![false; 65536],
            next: 0,
        }
    }

    /// A free identifier; the window (at most 65535) guarantees there is one.
    fn take(&mut self) -> u16 {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next != 0 && !self.in_use[usize::from(self.next)] {
                self.in_use[usize::from(self.next)] = true;
                return self.next;
            }
        }
    }

    /// Frees `id`; false if it was not in use (an unexpected acknowledgement).
    fn free(&mut self, id: u16) -> bool {
        std::mem::replace(&mut self.in_use[usize::from(id)], false)
    }
}

/// Waits until clock time `due`: a timer for the bulk of the wait, yielding for the rest.
async fn pace(clock: Clock, due: u64) {
    loop {
        let now = clock.now();
        if now >= due {
            return;
        }
        if due - now > SPIN_BELOW_NS {
            let wake = clock.instant(due - SPIN_BELOW_NS / 2);
            tokio::time::sleep_until(wake.into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Publishes according to `plan`, then disconnects.
pub async fn run(mut client: Client, plan: PublisherPlan, clock: Clock) -> Result<PublisherResult> {
    let result = publish(&mut client, &plan, clock).await;
    client.disconnect().await;
    result
}

async fn publish(
    client: &mut Client,
    plan: &PublisherPlan,
    clock: Clock,
) -> Result<PublisherResult> {
    let Client {
        stream,
        rbuf,
        wbuf,
        version,
    } = client;
    let version = *version;
    let (mut rd, mut wr) = stream.split();
    let mut res = PublisherResult {
        id: plan.id,
        ..Default::default()
    };
    let acked_qos = plan.qos != QoS::AtMostOnce;
    let window = if acked_qos {
        plan.window.clamp(1, 65535)
    } else {
        usize::MAX
    };
    let mut ids = Ids::new();
    let mut inflight = 0usize;
    let ns_per_msg = plan.rate.map(|r| 1e9 / r);
    let due_of = |seq: u64| -> u64 {
        match ns_per_msg {
            Some(step) => plan.start_ns + (seq as f64 * step) as u64,
            None => plan.start_ns,
        }
    };
    let drain_end = plan.end_ns + plan.drain.as_nanos() as u64;
    let mut seq = 0u64;

    pace(clock, plan.start_ns).await;
    loop {
        let now = clock.now();
        let producing = now < plan.end_ns;
        if producing {
            while inflight < window {
                let due = due_of(seq);
                if ns_per_msg.is_some() {
                    if due > now || due >= plan.end_ns {
                        break;
                    }
                    res.max_lag_ns = res.max_lag_ns.max(now - due);
                } else if wbuf.len() >= plan.batch_bytes {
                    break;
                }
                let packet_id = if acked_qos { ids.take() } else { 0 };
                wire::put_publish_header(
                    wbuf,
                    version,
                    &plan.topic,
                    plan.qos,
                    packet_id,
                    plan.payload,
                );
                let stamp = Stamp {
                    run: plan.run,
                    publisher: plan.id,
                    seq,
                    sent_ns: if ns_per_msg.is_some() { due } else { now },
                };
                stamp.write(plan.payload, wbuf);
                seq += 1;
                if acked_qos {
                    inflight += 1;
                }
            }
        } else if (wbuf.is_empty() && inflight == 0) || now >= drain_end {
            break;
        }

        // Wait for whichever comes first: the socket taking data, an acknowledgement, the
        // next due time, or the end of the run.
        let next_due = due_of(seq);
        let may_send = producing && inflight < window;
        let wait_for_timeline = may_send && ns_per_msg.is_some() && wbuf.is_empty();
        let deadline = if producing { plan.end_ns } else { drain_end };
        rbuf.reserve(wire::READ_BUFFER / 4);
        tokio::select! {
            biased;
            r = rd.read_buf(rbuf) => {
                if r? == 0 {
                    bail!("publisher {}: broker closed the connection", plan.id);
                }
                let mut off = 0;
                while let Some(n) = wire::next_frame(&rbuf[off..])? {
                    match wire::parse(&rbuf[off..off + n], version)? {
                        Incoming::Ack(Ack::PubAck | Ack::PubComp, id) if ids.free(id) => {
                            inflight -= 1;
                            res.acked += 1;
                        }
                        Incoming::Ack(Ack::PubRec, id) => wire::put_ack(wbuf, Ack::PubRel, id),
                        Incoming::Other(p) if matches!(*p, Packet::Disconnect(_)) => bail!(
                            "publisher {}: broker sent {p:?}", plan.id
                        ),
                        _ => {}
                    }
                    off += n;
                }
                rbuf.advance(off);
            }
            r = wr.write_buf(wbuf), if !wbuf.is_empty() => {
                if r? == 0 {
                    bail!("publisher {}: socket closed", plan.id);
                }
                if ns_per_msg.is_none() {
                    // One batch per turn: a flat-out publisher would otherwise keep the
                    // thread for a whole tokio budget (128 writes) while the subscribers,
                    // which measure, wait.
                    tokio::task::yield_now().await;
                }
            }
            _ = pace(clock, next_due), if wait_for_timeline => {}
            _ = tokio::time::sleep_until(clock.instant(deadline).into()) => {}
        }
    }
    res.sent = seq;
    res.unacked = inflight as u64;
    Ok(res)
}
