//! The writer thread: batches of [`Change`]s become write transactions, one commit each.
//!
//! The thread owns the database handle and the reference counts of stored message bodies, so
//! neither needs a lock. A message queued for N sessions is written once to `messages` and
//! referenced by N `queue` entries; when the last entry goes (acknowledged, dropped, or its
//! session ended), the body is deleted. Messages are recognised by their `Arc` address: the
//! writer holds a clone for as long as the body is stored, so an address cannot be reused for
//! another message meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, Table, WriteTransaction};

use super::records::{self, MessageV1, QueuedV1, SessionV1, WillV1};
use super::{BANS, INBOUND, Inner, MESSAGES, QUEUE, RETAINED, SESSIONS, WILLS};
use crate::message::Message;
use crate::store::{Change, Target};

/// Stored message bodies and who references them.
#[derive(Default)]
pub(super) struct Bodies {
    /// `Arc` address -> message id, for messages whose body is stored.
    pub ids: HashMap<usize, u64>,
    /// Message id -> (references from `queue`, the message).
    pub refs: HashMap<u64, (u32, Arc<Message>)>,
    pub next_id: u64,
}

/// Runs until the store is closed: wait for changes, apply them all in one transaction,
/// commit, announce the new durable ticket. `interval` is the batched-mode commit period.
pub(super) fn run(db: Database, mut bodies: Bodies, inner: &Inner, interval: Option<Duration>) {
    let mut batch = Vec::new();
    loop {
        let (ticket, closed) = {
            let mut inbox = inner.inbox.lock();
            match interval {
                None => {
                    while inbox.changes.is_empty() && !inbox.closed {
                        inner.wake.wait(&mut inbox);
                    }
                }
                Some(period) => {
                    // Commit on a fixed period; closing cuts the wait short.
                    let deadline = Instant::now() + period;
                    while !inbox.closed && !inner.wake.wait_until(&mut inbox, deadline).timed_out()
                    {
                    }
                }
            }
            std::mem::swap(&mut batch, &mut inbox.changes);
            (inbox.submitted, inbox.closed)
        };
        if !batch.is_empty() {
            let now = (Instant::now(), records::unix_ms_now());
            let outcome = begin(&db).and_then(|txn| {
                apply_all(&txn, &mut bodies, batch.drain(..), now)?;
                txn.commit().map_err(|e| format!("commit failed: {e}"))
            });
            match outcome {
                Ok(()) => {
                    inner.commits.fetch_add(1, Ordering::Relaxed);
                    inner.progress.send_modify(|p| p.durable = ticket);
                }
                Err(why) => {
                    let why: Arc<str> = format!("{}: {why}", inner.path.display()).into();
                    tracing::error!(error = %why, "store failed; QoS 1/2 messages are refused from now on");
                    inner.failed.store(true, Ordering::Release);
                    inner.progress.send_modify(|p| p.failed = Some(why));
                    batch.clear();
                    return;
                }
            }
        }
        if closed {
            return;
        }
    }
}

fn begin(db: &Database) -> Result<WriteTransaction> {
    db.begin_write()
        .map_err(|e| format!("cannot begin a transaction: {e}"))
}

/// The tables a batch writes to, opened once per transaction.
struct Tables<'t> {
    retained: Table<'t, &'static str, &'static [u8]>,
    sessions: Table<'t, &'static str, &'static [u8]>,
    messages: Table<'t, u64, &'static [u8]>,
    queue: Table<'t, (&'static str, u64), &'static [u8]>,
    inbound: Table<'t, (&'static str, u16), ()>,
    wills: Table<'t, &'static str, &'static [u8]>,
    bans: Table<'t, &'static str, ()>,
}

type Result<T = ()> = std::result::Result<T, String>;

fn io(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn apply_all(
    txn: &WriteTransaction,
    bodies: &mut Bodies,
    changes: impl Iterator<Item = Change>,
    now: (Instant, u64),
) -> Result {
    let mut t = Tables {
        retained: txn.open_table(RETAINED).map_err(io)?,
        sessions: txn.open_table(SESSIONS).map_err(io)?,
        messages: txn.open_table(MESSAGES).map_err(io)?,
        queue: txn.open_table(QUEUE).map_err(io)?,
        inbound: txn.open_table(INBOUND).map_err(io)?,
        wills: txn.open_table(WILLS).map_err(io)?,
        bans: txn.open_table(BANS).map_err(io)?,
    };
    for change in changes {
        apply(&mut t, bodies, change, now)?;
    }
    Ok(())
}

fn apply(t: &mut Tables<'_>, bodies: &mut Bodies, change: Change, now: (Instant, u64)) -> Result {
    match change {
        Change::Retained { topic, message } => match message {
            Some(m) => {
                let value = records::encode(&MessageV1::from_message(&m, now));
                t.retained.insert(&*topic, value.as_slice()).map_err(io)?;
            }
            None => {
                t.retained.remove(&*topic).map_err(io)?;
            }
        },
        Change::SessionSaved(record) => {
            let value = records::encode(&SessionV1::from_record(&record));
            t.sessions
                .insert(&*record.client_id, value.as_slice())
                .map_err(io)?;
        }
        Change::SessionRemoved(client_id) => remove_session(t, bodies, &client_id)?,
        Change::Accepted {
            client_id,
            packet_id,
            message,
            targets,
            exactly_once,
        } => {
            queue(t, bodies, &message, &targets, now)?;
            if exactly_once {
                t.inbound.insert((&*client_id, packet_id), ()).map_err(io)?;
            }
        }
        Change::Routed { message, targets } => queue(t, bodies, &message, &targets, now)?,
        Change::Sent {
            client_id,
            seq,
            packet_id,
        } => update(t, &client_id, seq, |q| q.packet_id = Some(packet_id))?,
        Change::Released { client_id, seq } => update(t, &client_id, seq, |q| q.released = true)?,
        Change::Dequeued { client_id, seq } => {
            let old = t
                .queue
                .remove((&*client_id, seq))
                .map_err(io)?
                .map(|old| records::decode::<QueuedV1>(old.value()));
            if let Some(old) = old {
                release(t, bodies, old?.message)?;
            }
        }
        Change::InboundReleased {
            client_id,
            packet_id,
        } => {
            t.inbound.remove((&*client_id, packet_id)).map_err(io)?;
        }
        Change::WillScheduled(will) => {
            let value = records::encode(&WillV1::from_record(&will, now));
            t.wills
                .insert(&*will.client_id, value.as_slice())
                .map_err(io)?;
        }
        Change::WillRemoved(client_id) => {
            t.wills.remove(&*client_id).map_err(io)?;
        }
        Change::Banned(client_id) => {
            t.bans.insert(&*client_id, ()).map_err(io)?;
        }
        Change::Unbanned(client_id) => {
            t.bans.remove(&*client_id).map_err(io)?;
        }
    }
    Ok(())
}

/// Stores the message once (if it is not already) and one queue entry per target.
fn queue(
    t: &mut Tables<'_>,
    bodies: &mut Bodies,
    message: &Arc<Message>,
    targets: &[Target],
    now: (Instant, u64),
) -> Result {
    if targets.is_empty() {
        return Ok(());
    }
    let key = Arc::as_ptr(message) as usize;
    let id = match bodies.ids.get(&key) {
        Some(&id) => id,
        None => {
            let id = bodies.next_id;
            bodies.next_id += 1;
            let value = records::encode(&MessageV1::from_message(message, now));
            t.messages.insert(id, value.as_slice()).map_err(io)?;
            bodies.ids.insert(key, id);
            bodies.refs.insert(id, (0, message.clone()));
            id
        }
    };
    if let Some(entry) = bodies.refs.get_mut(&id) {
        entry.0 += targets.len() as u32;
    }
    for target in targets {
        let value = records::encode(&QueuedV1 {
            message: id,
            qos: target.qos as u8,
            retain: target.retain,
            identifiers: target.identifiers.to_vec(),
            packet_id: None,
            released: false,
        });
        t.queue
            .insert((&*target.client_id, target.seq), value.as_slice())
            .map_err(io)?;
    }
    Ok(())
}

/// Rewrites one queue entry, if it is still there.
fn update(t: &mut Tables<'_>, client_id: &str, seq: u64, f: impl FnOnce(&mut QueuedV1)) -> Result {
    let current = t
        .queue
        .get((client_id, seq))
        .map_err(io)?
        .map(|v| records::decode::<QueuedV1>(v.value()));
    let Some(current) = current else {
        return Ok(());
    };
    let mut q = current?;
    f(&mut q);
    t.queue
        .insert((client_id, seq), records::encode(&q).as_slice())
        .map_err(io)?;
    Ok(())
}

/// Drops one reference to a stored message body, deleting it with the last.
fn release(t: &mut Tables<'_>, bodies: &mut Bodies, id: u64) -> Result {
    let Some(entry) = bodies.refs.get_mut(&id) else {
        return Ok(());
    };
    entry.0 = entry.0.saturating_sub(1);
    if entry.0 == 0 {
        if let Some((_, message)) = bodies.refs.remove(&id) {
            bodies.ids.remove(&(Arc::as_ptr(&message) as usize));
        }
        t.messages.remove(id).map_err(io)?;
    }
    Ok(())
}

/// Deletes a session with everything that belongs to it.
fn remove_session(t: &mut Tables<'_>, bodies: &mut Bodies, client_id: &str) -> Result {
    t.sessions.remove(client_id).map_err(io)?;
    t.wills.remove(client_id).map_err(io)?;
    let mut ids = Vec::new();
    for entry in t
        .queue
        .extract_if((client_id, 0)..=(client_id, u64::MAX), |_, _| true)
        .map_err(io)?
    {
        let (_, value) = entry.map_err(io)?;
        let q: QueuedV1 = records::decode(value.value())?;
        ids.push(q.message);
    }
    for id in ids {
        release(t, bodies, id)?;
    }
    t.inbound
        .retain_in((client_id, 0)..=(client_id, u16::MAX), |_, _| false)
        .map_err(io)?;
    Ok(())
}
