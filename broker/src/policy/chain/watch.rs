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

//!
//! The chain changes while the broker runs (plugins replaced, loaded, unloaded), so each look
//! walks the slots serving now, remembering what it saw per slot. A renewal is one more change
//! of the chain: it takes the chain's change lock, is dropped if the slot got another
//! generation meanwhile (a replacement wins over a renewal of what it replaced), and the
//! broker is told ([`Chain::on_change`](super::Chain::on_change)) so connected clients'
//! subscriptions are re-checked.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::State;
use super::slot::Slot;
use crate::policy::wasm::capabilities::{FileSnapshot, Fingerprint};
use crate::policy::wasm::hex;

/// How often the granted files are looked at.
pub const POLL: Duration = Duration::from_millis(1000);
/// How long a changed file must stay unchanged before it is read.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching the granted files of the chain's plugins. The task ends when the chain is
/// dropped.
pub(super) fn spawn(state: &Arc<State>) {
    tokio::spawn(watch(Arc::downgrade(state)));
}

async fn watch(chain: Weak<State>) {
    // What was last acted on, per slot (the slot itself is held weakly: one unloaded is
    // forgotten).
    let mut seen: Vec<(Weak<Slot>, Fingerprint)> = Vec::new();
    loop {
        tokio::time::sleep(POLL).await;
        let Some(state) = chain.upgrade() else {
            return;
        };
        seen.retain(|(slot, _)| slot.strong_count() > 0);
        let slots = state.layout.load().slots.clone();
        for slot in slots {
            let g = slot.generation();
            if g.ctx.granted.files.is_none() {
                continue;
            }
            let at = match seen
                .iter()
                .position(|(s, _)| s.as_ptr() == Arc::as_ptr(&slot))
            {
                Some(at) => at,
                None => {
                    seen.push((Arc::downgrade(&slot), g.files.fingerprint().clone()));
                    continue;
                }
            };
            if check(&state, &slot, &mut seen[at].1).await {
                let listener = state.on_change.lock().clone();
                if let Some(listener) = listener {
                    listener();
                }
            }
        }
    }
}

/// Looks at one plugin's files; on a settled change, rereads them and renews the plugin.
/// `seen` is the state last acted on, so a change that failed to load is not retried until
/// the files change again. True if a new generation was installed.
async fn check(state: &State, slot: &Slot, seen: &mut Fingerprint) -> bool {
    let current = slot.generation();
    let Some(grant) = current.ctx.granted.files.clone() else {
        return false;
    };
    let now = Fingerprint::now(&grant);
    if now == *seen {
        return false;
    }
    tokio::time::sleep(SETTLE).await;
    if Fingerprint::now(&grant) != now {
        // Still being written: look again at the next poll.
        return false;
    }
    let read = {
        let grant = grant.clone();
        tokio::task::spawn_blocking(move || FileSnapshot::read(&grant)).await
    };
    let Ok(snapshot) = read else {
        return false;
    };
    *seen = snapshot.fingerprint().clone();
    if snapshot.same_content(&current.files) {
        return false;
    }
    let _one = state.changes.lock().await;
    if !Arc::ptr_eq(&current, &slot.generation()) {
        // Replaced meanwhile: the new generation read the files itself.
        return false;
    }
    let number = slot.take_generation_number();
    match current.renew(number, Arc::new(snapshot)).await {
        Ok(next) if next.manifest != current.manifest => {
            tracing::warn!(plugin = %slot.name,
                "a granted file changed, but the plugin's new generation declares another \
                 manifest (hooks, payload or session-state version); the current generation \
                 stays");
            false
        }
        Ok(next) => {
            slot.install(next);
            tracing::info!(plugin = %slot.name, generation = number,
                sha256 = %hex(&current.hash),
                "a granted file changed: the plugin was re-initialised and its cached decisions dropped");
            true
        }
        Err(error) => {
            tracing::warn!(plugin = %slot.name, %error,
                "a granted file changed, but the plugin refused the new content; the current \
                 generation stays until the files change again");
            false
        }
    }
}
