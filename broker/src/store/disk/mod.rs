//! [`DiskStore`]: durable state in an embedded database (redb), with group commit.
//!
//! Why redb (measured on this project's 2-core machine, see docs/architecture.md): a single
//! file (a corrupt or locked store is one path to name in the error), no background threads or
//! compaction competing with the broker for the cores, a full scan of a million records in
//! about 0.26 s (fjall: 0.57 s) and crash recovery of a 300 MB file in 0.23 s; commit costs
//! were on a par with fjall's.
//!
//! How it works: the broker's `apply` calls push their [`Change`]s onto one inbox (a short
//! mutex) and get a ticket number. One writer thread takes everything in the inbox at once,
//! applies it in a single write transaction and commits it with one fsync, then publishes the
//! highest ticket it made durable; every connection waiting on a ticket at or below it wakes.
//! While one commit is being fsynced the next batch gathers, so under load many connections'
//! messages share each fsync (group commit) and throughput does not fall to one fsync per
//! message. In `batched` durability `apply` returns at once and the writer commits every
//! `commit_interval_ms`.
//!
//! A failed commit (disk full, I/O error) marks the store failed: from then on every `apply`
//! is refused, so no publisher is acknowledged for a message that may be lost; the broker
//! keeps serving everything else.
//!
//! Layout: `records` holds the versioned postcard records, `load` reads the database at start
//! (and purges what expired meanwhile), `writer` applies batches of changes to it.

mod load;
mod records;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use redb::TableDefinition;
use tokio::sync::watch;

use super::{Change, Snapshot, Store, StoreError};
use crate::config::{Durability, StorageConfig};
use crate::pending::Pending;

pub use records::unix_now;

/// The database file inside the data directory.
pub const FILE_NAME: &str = "moat.redb";

/// The layout of keys and tables this release writes (stored under `format` in `meta`). Each
/// value carries its own record version too (see `records`).
const FORMAT: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Message bodies of queued messages, by id: a message queued for N sessions is stored once.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// Queued and inflight messages: (client id, journal sequence) -> which message, how.
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
/// Inbound QoS 2 packet ids awaiting PUBREL.
const INBOUND: TableDefinition<(&str, u16), ()> = TableDefinition::new("inbound_qos2");
const WILLS: TableDefinition<&str, &[u8]> = TableDefinition::new("wills");
/// Client ids the operator banned. A database written before bans were stored has no such
/// table, which reads as no bans: no new format number.
const BANS: TableDefinition<&str, ()> = TableDefinition::new("bans");

/// The embedded database store; see the module doc.
pub struct DiskStore {
    inner: Arc<Inner>,
    durability: Durability,
    snapshot: Mutex<Option<Snapshot>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the broker's tasks and the writer thread share.
struct Inner {
    path: PathBuf,
    inbox: Mutex<Inbox>,
    wake: Condvar,
    /// The highest ticket that is durable, or why the store failed.
    progress: watch::Sender<Progress>,
    failed: AtomicBool,
    /// Commits so far (group commit shows as far fewer commits than changes).
    commits: AtomicU64,
}

#[derive(Default)]
struct Inbox {
    changes: Vec<Change>,
    /// Tickets handed out so far (the last change's ticket).
    submitted: u64,
    closed: bool,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    durable: u64,
    failed: Option<Arc<str>>,
}

impl DiskStore {
    /// Opens (or creates) the database in `dir`, reads it whole and purges what expired while
    /// the broker was down. Errors name the file.
    ///
    /// The data holds what plugins keep in their clients' session state (stored wills carry
    /// it), so it is the broker user's alone: the directory is created with mode 0700 and the
    /// database file set to 0600; an existing directory others may read is warned about.
    pub fn open(dir: &Path, config: &StorageConfig) -> Result<DiskStore, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                StoreError(format!(
                    "{}: cannot create the data directory: {e}",
                    dir.display()
                ))
            })?;
        if let Ok(meta) = std::fs::metadata(dir)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the data directory is open to other users; it holds session state (chmod 700 it)");
        }
        let path = dir.join(FILE_NAME);
        let started = std::time::Instant::now();
        let (db, snapshot, state) = load::open_and_load(&path)?;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        let inner = Arc::new(Inner {
            path: path.clone(),
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            failed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        });
        let interval = match config.durability {
            Durability::Sync => None,
            Durability::Batched => Some(Duration::from_millis(u64::from(
                config.commit_interval_ms.max(1),
            ))),
        };
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("moat-store".into())
                .spawn(move || writer::run(db, state, &inner, interval))
                .map_err(|e| StoreError(format!("cannot start the store thread: {e}")))?
        };
        tracing::info!(path = %path.display(), durability = ?config.durability,
            retained = snapshot.retained.len(), sessions = snapshot.sessions.len(),
            queued = snapshot.queued.len(), wills = snapshot.wills.len(), seconds = started.elapsed().as_secs_f64(),
            "store opened");
        Ok(DiskStore {
            inner,
            durability: config.durability,
            snapshot: Mutex::new(Some(snapshot)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn refused(&self) -> StoreError {
        let failed = self.inner.progress.borrow().failed.clone();
        StoreError(match failed {
            Some(why) => why.to_string(),
            None => format!("{}: closed", self.inner.path.display()),
        })
    }

    /// Queues a change and returns its ticket.
    fn submit(&self, change: Change) -> Result<u64, StoreError> {
        let mut inbox = self.inner.inbox.lock();
        if inbox.closed || self.inner.failed.load(Ordering::Acquire) {
            return Err(self.refused());
        }
        inbox.changes.push(change);
        inbox.submitted += 1;
        let ticket = inbox.submitted;
        drop(inbox);
        self.inner.wake.notify_one();
        Ok(ticket)
    }

    fn wait(&self, ticket: u64) -> Pending<Result<(), StoreError>> {
        let mut rx = self.inner.progress.subscribe();
        Pending::later(async move {
            let outcome = rx
                .wait_for(|p| p.durable >= ticket || p.failed.is_some())
                .await
                .map(|p| (p.durable >= ticket, p.failed.clone()));
            match outcome {
                Ok((true, _)) => Ok(()),
                Ok((false, why)) => Err(StoreError(why.as_deref().unwrap_or("failed").into())),
                Err(_) => Err(StoreError("store closed".into())),
            }
        })
    }

    /// Commits what is queued, stops the writer and releases the file (at shutdown).
    fn shut(&self) -> Result<(), StoreError> {
        let handle = self.writer.lock().take();
        let Some(handle) = handle else {
            return Ok(());
        };
        self.inner.inbox.lock().closed = true;
        self.inner.wake.notify_one();
        let _ = handle.join();
        match self.inner.progress.borrow().failed.clone() {
            Some(why) => Err(StoreError(why.to_string())),
            None => Ok(()),
        }
    }
}

/// Whether a change needs the database at all.
fn worth_writing(change: &Change) -> bool {
    match change {
        // Accepted by a non-persistent publisher for non-persistent subscribers only: nothing
        // outlives a crash, so there is nothing to write and nothing to wait for.
        Change::Accepted {
            targets,
            exactly_once,
            ..
        } => !targets.is_empty() || *exactly_once,
        Change::Routed { targets, .. } => !targets.is_empty(),
        // The broker's own `$SYS` topics are regenerated every interval; restoring stale
        // ones would only mislead.
        Change::Retained { topic, .. } => !topic.starts_with("$SYS/"),
        _ => true,
    }
}

impl Store for DiskStore {
    fn load(&self) -> Pending<Result<Snapshot, StoreError>> {
        // The snapshot was read by `open`; a second load gets an empty one (nothing is read
        // twice into a running broker).
        Ok(self.snapshot.lock().take().unwrap_or_default()).into()
    }

    fn apply(&self, change: Change) -> Pending<Result<(), StoreError>> {
        if !worth_writing(&change) {
            return Ok(()).into();
        }
        match self.submit(change) {
            Err(e) => Err(e).into(),
            Ok(_) if self.durability == Durability::Batched => Ok(()).into(),
            Ok(ticket) => self.wait(ticket),
        }
    }

    fn apply_detached(&self, change: Change) {
        if worth_writing(&change) {
            // A failed store already said so when it failed.
            let _ = self.submit(change);
        }
    }

    fn journals_messages(&self) -> bool {
        true
    }

    fn close(&self) -> Pending<Result<(), StoreError>> {
        // Joining the writer blocks for at most one commit; shutdown is the only caller.
        self.shut().into()
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        if let Err(e) = self.shut() {
            tracing::error!(error = %e, "store: last commit failed");
        }
    }
}

#[cfg(test)]
mod tests;
