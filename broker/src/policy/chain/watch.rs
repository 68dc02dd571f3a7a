//! Watching the files granted to plugins (`[plugin.grants] files`): when one changes, the
//! plugin is re-initialised as a new generation with the new content, and its cached decisions
//! are dropped.
//!
//! One task per chain looks at the granted files every [`POLL`] (a `stat` each, no read).
//! Polling rather than inotify: it sees a file replaced by rename (what editors and
//! `mosquitto_passwd` do), a file that appears after being missing, and a symlink retargeted
//! (Kubernetes config maps), with no watch to re-arm, and costs nothing worth measuring for a
//! handful of files. A change is read only once the file has stood still for [`SETTLE`], so a
//! file caught half-written is not loaded.
//!
//! The new generation is made off the hot path ([`Generation::renew`]: instantiate and `init`,
//! nothing compiled) and put in service only if `init` accepts the new files and the manifest
//! is unchanged; otherwise the old one keeps serving and the reason is logged once, until the
//! files change again. A change therefore takes effect within about `POLL + SETTLE` plus the
//! plugin's `init` time.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;
use super::slot::Slot;
use crate::policy::wasm::capabilities::{FileSnapshot, Fingerprint};
use crate::policy::wasm::hex;

/// How often the granted files are looked at.
pub const POLL: Duration = Duration::from_millis(1000);
/// How long a changed file must stay unchanged before it is read.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching the granted files of the chain's plugins, if any has some. The task ends
/// when the chain is dropped.
pub(super) fn spawn(inner: &Arc<Inner>) {
    let watched: Vec<(usize, Fingerprint)> = inner
        .slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.generation().ctx.granted.files.is_some())
        .map(|(i, s)| (i, s.generation().files.fingerprint().clone()))
        .collect();
    if watched.is_empty() {
        return;
    }
    let chain = Arc::downgrade(inner);
    tokio::spawn(watch(chain, watched));
}

async fn watch(chain: Weak<Inner>, mut watched: Vec<(usize, Fingerprint)>) {
    loop {
        tokio::time::sleep(POLL).await;
        let Some(inner) = chain.upgrade() else {
            return;
        };
        for (index, seen) in &mut watched {
            check(&inner.slots[*index], seen).await;
        }
    }
}

/// Looks at one plugin's files; on a settled change, rereads them and renews the plugin.
/// `seen` is the state last acted on, so a change that failed to load is not retried until
/// the files change again.
async fn check(slot: &Slot, seen: &mut Fingerprint) {
    let current = slot.generation();
    let Some(grant) = current.ctx.granted.files.clone() else {
        return;
    };
    let now = Fingerprint::now(&grant);
    if now == *seen {
        return;
    }
    tokio::time::sleep(SETTLE).await;
    if Fingerprint::now(&grant) != now {
        // Still being written: look again at the next poll.
        return;
    }
    let read = {
        let grant = grant.clone();
        tokio::task::spawn_blocking(move || FileSnapshot::read(&grant)).await
    };
    let Ok(snapshot) = read else {
        return;
    };
    *seen = snapshot.fingerprint().clone();
    if snapshot.same_content(&current.files) {
        return;
    }
    match current.renew(current.number + 1, Arc::new(snapshot)).await {
        Ok(next) if next.manifest != current.manifest => {
            tracing::warn!(plugin = %slot.name,
                "a granted file changed, but the plugin's new generation declares another \
                 manifest (hooks, payload or session-state version); the current generation \
                 stays");
        }
        Ok(next) => {
            let number = next.number;
            slot.install(next);
            tracing::info!(plugin = %slot.name, generation = number,
                sha256 = %hex(&current.hash),
                "a granted file changed: the plugin was re-initialised and its cached decisions dropped");
        }
        Err(error) => {
            tracing::warn!(plugin = %slot.name, %error,
                "a granted file changed, but the plugin refused the new content; the current \
                 generation stays until the files change again");
        }
    }
}
