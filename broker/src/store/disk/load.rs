//! Opening the database at start: check its format, read it whole into a [`Snapshot`], and
//! purge what expired while the broker was down.
//!
//! Anything unreadable stops the start with an error naming the file (and the table and key
//! of a bad record): a broker that silently started empty would lose every persistent session
//! and acknowledged message it was trusted with. redb can panic on a file altered behind its
//! back rather than return an error, so the whole read runs under `catch_unwind` and a panic
//! becomes the same kind of error.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use redb::{Database, ReadableDatabase, ReadableTable};
use smallvec::SmallVec;

use super::records::{self, MessageV1, QueuedV1, SessionV1, WillV1};
use super::writer::Bodies;
use super::{BANS, FORMAT, INBOUND, MESSAGES, META, QUEUE, RETAINED, SESSIONS, WILLS};
use crate::codec::QoS;
use crate::message::Message;
use crate::store::{NEVER_EXPIRES, QueuedRecord, Snapshot, StoreError, Target};

/// redb's page cache. The broker reads the store only at start and keeps its working state in
/// memory, so the cache serves writes (the upper levels of the trees) and need not be large.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

pub(super) fn open_and_load(
    path: &Path,
) -> std::result::Result<(Database, Snapshot, Bodies), StoreError> {
    let shown = path.display().to_string();
    let fail = |what: String| StoreError(format!("{shown}: {what}"));
    if path.is_dir() {
        return Err(fail("is a directory, not a moat database".into()));
    }
    let outcome = std::panic::catch_unwind(|| {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "already in use (is another moat running with this data directory?)".to_string()
                }
                e => format!("cannot open the database: {e}"),
            })?;
        let (snapshot, bodies) = load(&db)?;
        Ok::<_, String>((db, snapshot, bodies))
    });
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(what)) => Err(fail(what)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(format!("the database is corrupt ({why})")))
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn io(e: impl std::fmt::Display) -> String {
    format!("cannot read the database: {e}")
}

fn bad(table: &str, key: impl std::fmt::Debug, why: String) -> String {
    format!("unreadable record in table `{table}`, key {key:?}: {why}")
}

/// What the scan found expired or orphaned, deleted in one write transaction afterwards (the
/// scan itself only reads, which is faster and leaves the file alone when nothing expired).
#[derive(Default)]
struct Purge {
    retained: Vec<String>,
    sessions: Vec<String>,
    queue: Vec<(String, u64)>,
    messages: Vec<u64>,
    inbound: Vec<(String, u16)>,
    wills: Vec<String>,
}

impl Purge {
    fn is_empty(&self) -> bool {
        self.retained.is_empty()
            && self.sessions.is_empty()
            && self.queue.is_empty()
            && self.messages.is_empty()
            && self.inbound.is_empty()
            && self.wills.is_empty()
    }
}

fn load(db: &Database) -> Result<(Snapshot, Bodies)> {
    check_format(db)?;
    let txn = db.begin_read().map_err(io)?;
    let mut purge = Purge::default();
    let now = (Instant::now(), records::unix_ms_now());
    let now_secs = now.1 / 1000;
    let mut snapshot = Snapshot {
        next_seq: 1,
        ..Snapshot::default()
    };

    // Retained messages; expired ones are purged.
    if let Some(table) = open(&txn, RETAINED)? {
        for entry in table.iter().map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let topic = k.value();
            let message = records::decode::<MessageV1>(v.value())
                .and_then(|m| m.into_message(now))
                .map_err(|e| bad("retained", topic, e))?;
            match message {
                Some(m) => snapshot.retained.push(Arc::new(m)),
                None => purge.retained.push(topic.to_owned()),
            }
        }
    }

    // Sessions; those whose expiry passed while the broker was down are purged below.
    let mut live = HashSet::new();
    if let Some(table) = open(&txn, SESSIONS)? {
        for entry in table.iter().map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let client_id = k.value();
            let record = records::decode::<SessionV1>(v.value())
                .and_then(|s| s.into_record(client_id))
                .map_err(|e| bad("sessions", client_id, e))?;
            let expired = record.expiry_interval != NEVER_EXPIRES
                && record
                    .offline_since
                    .is_some_and(|t| t + u64::from(record.expiry_interval) <= now_secs);
            if expired {
                purge.sessions.push(client_id.to_owned());
            } else {
                live.insert(client_id.to_owned());
                snapshot.sessions.push(record);
            }
        }
    }

    // Message bodies; expired ones count as missing.
    let mut bodies = Bodies {
        next_id: 1,
        ..Bodies::default()
    };
    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    if let Some(table) = open(&txn, MESSAGES)? {
        for entry in table.iter().map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let id = k.value();
            bodies.next_id = bodies.next_id.max(id + 1);
            let message = records::decode::<MessageV1>(v.value())
                .and_then(|m| m.into_message(now))
                .map_err(|e| bad("messages", id, e))?;
            if let Some(m) = message {
                messages.insert(id, Arc::new(m));
            }
        }
    }

    // Queue entries of live sessions whose message is still alive; the rest is purged.
    if let Some(table) = open(&txn, QUEUE)? {
        for entry in table.iter().map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let (client_id, seq) = k.value();
            snapshot.next_seq = snapshot.next_seq.max(seq + 1);
            let q = records::decode::<QueuedV1>(v.value())
                .map_err(|e| bad("queue", (client_id, seq), e))?;
            let message = messages.get(&q.message);
            let (true, Some(message)) = (live.contains(client_id), message) else {
                purge.queue.push((client_id.to_owned(), seq));
                continue;
            };
            let qos = QoS::from_u8(q.qos)
                .ok_or_else(|| bad("queue", (client_id, seq), format!("bad QoS {}", q.qos)))?;
            let refs = bodies
                .refs
                .entry(q.message)
                .or_insert_with(|| (0, message.clone()));
            refs.0 += 1;
            snapshot.queued.push(QueuedRecord {
                target: Target {
                    client_id: ByteString::from(client_id),
                    seq,
                    qos,
                    retain: q.retain,
                    identifiers: SmallVec::from_vec(q.identifiers),
                },
                message: message.clone(),
                packet_id: q.packet_id,
                released: q.released,
            });
        }
    }
    // Bodies nobody references any more (expired ones included).
    if let Some(table) = open(&txn, MESSAGES)? {
        for entry in table.iter().map_err(io)? {
            let (k, _) = entry.map_err(io)?;
            if !bodies.refs.contains_key(&k.value()) {
                purge.messages.push(k.value());
            }
        }
    }
    for (id, (_, m)) in &bodies.refs {
        bodies.ids.insert(Arc::as_ptr(m) as usize, *id);
    }

    // Inbound QoS 2 ids of live sessions.
    if let Some(table) = open(&txn, INBOUND)? {
        for entry in table.iter().map_err(io)? {
            let (k, _) = entry.map_err(io)?;
            let (client_id, packet_id) = k.value();
            if live.contains(client_id) {
                snapshot
                    .inbound_qos2
                    .push((ByteString::from(client_id), packet_id));
            } else {
                purge.inbound.push((client_id.to_owned(), packet_id));
            }
        }
    }

    // Delayed wills: all are handed over (a will whose session ended while the broker was
    // down is due now); an expired will message is dropped.
    if let Some(table) = open(&txn, WILLS)? {
        for entry in table.iter().map_err(io)? {
            let (k, v) = entry.map_err(io)?;
            let client_id = k.value();
            let will = records::decode::<WillV1>(v.value())
                .and_then(|w| w.into_record(client_id, now))
                .map_err(|e| bad("wills", client_id, e))?;
            match will {
                Some(w) => snapshot.wills.push(w),
                None => purge.wills.push(client_id.to_owned()),
            }
        }
    }
    if let Some(table) = open(&txn, BANS)? {
        for entry in table.iter().map_err(io)? {
            let (k, _) = entry.map_err(io)?;
            snapshot.bans.push(ByteString::from(k.value()));
        }
    }
    drop(txn);
    if !purge.is_empty() {
        apply_purge(db, &purge).map_err(|e| format!("cannot purge expired state: {e}"))?;
        tracing::info!(
            sessions = purge.sessions.len(),
            queued = purge.queue.len(),
            retained = purge.retained.len(),
            "purged what expired while the broker was down"
        );
    }
    Ok((snapshot, bodies))
}

/// A table for reading; `None` if it was never created (a new database).
fn open<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

fn apply_purge(db: &Database, purge: &Purge) -> std::result::Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut t = txn.open_table(RETAINED)?;
        for topic in &purge.retained {
            t.remove(topic.as_str())?;
        }
        let mut t = txn.open_table(SESSIONS)?;
        for client_id in &purge.sessions {
            t.remove(client_id.as_str())?;
        }
        let mut t = txn.open_table(QUEUE)?;
        for (client_id, seq) in &purge.queue {
            t.remove((client_id.as_str(), *seq))?;
        }
        let mut t = txn.open_table(MESSAGES)?;
        for id in &purge.messages {
            t.remove(*id)?;
        }
        let mut t = txn.open_table(INBOUND)?;
        for (client_id, packet_id) in &purge.inbound {
            t.remove((client_id.as_str(), *packet_id))?;
        }
        let mut t = txn.open_table(WILLS)?;
        for client_id in &purge.wills {
            t.remove(client_id.as_str())?;
        }
    }
    txn.commit()?;
    Ok(())
}

/// Checks (or, for a new database, writes) the format number.
fn check_format(db: &Database) -> Result {
    let found = {
        let txn = db.begin_read().map_err(io)?;
        match open(&txn, META)? {
            Some(meta) => meta.get("format").map_err(io)?.map(|v| v.value()),
            None => None,
        }
    };
    match found {
        Some(FORMAT) => Ok(()),
        Some(newer) if newer > FORMAT => Err(format!(
            "written by a newer moat (store format {newer}; this release reads {FORMAT})"
        )),
        Some(older) => Err(format!(
            "store format {older} is not supported by this release (reads {FORMAT})"
        )),
        None => {
            let txn = db.begin_write().map_err(io)?;
            txn.open_table(META)
                .map_err(io)?
                .insert("format", FORMAT)
                .map_err(io)?;
            // The writer creates every table it uses in its first transaction.
            txn.commit().map_err(io)
        }
    }
}
