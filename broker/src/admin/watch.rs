//! The watched plugin folder (`plugins.watch_dir`): dropping `<name>.wasm` there replaces the
//! component of the plugin the configuration declares as `name`, through
//! [`Control::replace`](super::Control::replace) like the API does (so with the pin check, the
//! self-check and the drain). Other files are logged once and ignored.
//!
//! The folder is looked at every `plugins.watch_interval_ms` (file size and modification
//! time), rather than through inotify: one `read_dir` of a few entries a second costs nothing,
//! works on every file system, and a half-written file only means one refused swap and
//! another try once the writer is done (write aside and rename into place to avoid even
//! that). A file is applied when it appears or changes and its content differs from what
//! serves; at start, files already there are applied too.
//!
//! Whoever can write the folder chooses the broker's policy, so it is refused at start unless
//! it belongs to the broker's user and nobody else may write to it; files in it must be the
//! user's own, not symbolic links, and not writable by others either.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Control;

/// The folder cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("plugins.watch_dir {dir}: {why}")]
pub struct WatchError {
    pub dir: PathBuf,
    pub why: String,
}

/// Why a file or folder is not trusted, if it is not: a symbolic link, another user's, or
/// writable by group or others.
fn untrusted(meta: &std::fs::Metadata) -> Option<String> {
    let me = rustix::process::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        return Some("it is a symbolic link".into());
    }
    if meta.uid() != me {
        return Some(format!(
            "it belongs to user {} and the broker runs as user {me}",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "group or others may write to it (mode {:o}); chmod go-w it",
            mode & 0o777
        ));
    }
    None
}

/// Checks `dir` and starts watching it until the broker shuts down.
pub fn watch(control: Arc<Control>, dir: PathBuf, interval: Duration) -> Result<(), WatchError> {
    let refuse = |why: String| WatchError {
        dir: dir.clone(),
        why,
    };
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| refuse(e.to_string()))?;
    if !meta.is_dir() && !meta.file_type().is_symlink() {
        return Err(refuse("it is not a directory".into()));
    }
    if let Some(why) = untrusted(&meta) {
        return Err(refuse(why));
    }
    tracing::info!(dir = %dir.display(), ?interval, "watching for plugin components");
    let shared = control.shared().clone();
    let shutdown = shared.shutdown.clone();
    shared.spawn(async move {
        let mut seen: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        let mut ignored: HashSet<PathBuf> = HashSet::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => scan(&control, &dir, &mut seen, &mut ignored).await,
                _ = shutdown.cancelled() => break,
            }
        }
    });
    Ok(())
}

/// One look at the folder.
async fn scan(
    control: &Control,
    dir: &Path,
    seen: &mut HashMap<PathBuf, (u64, SystemTime)>,
    ignored: &mut HashSet<PathBuf>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the plugin folder");
            return;
        }
    };
    let declared: HashSet<String> = control
        .config
        .lock()
        .plugin_chain
        .iter()
        .map(|p| p.name.clone())
        .collect();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wasm"))
            .filter(|n| declared.contains(*n))
            .map(str::to_owned);
        let Some(name) = name else {
            if !hidden(&path) && ignored.insert(path.clone()) {
                tracing::info!(file = %path.display(),
                    "ignoring a file in the plugin folder: not `<name>.wasm` for a plugin the \
                     configuration declares");
            }
            continue;
        };
        let stamp = (
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if seen.get(&path) == Some(&stamp) {
            continue;
        }
        seen.insert(path.clone(), stamp);
        if let Some(why) = untrusted(&meta) {
            tracing::warn!(file = %path.display(), why, "refusing a plugin file");
            continue;
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read a plugin file");
                continue;
            }
        };
        let serving = control
            .chain
            .slots()
            .iter()
            .find(|s| *s.name == *name)
            .map(|s| crate::policy::wasm::hex(&s.generation().hash));
        if serving.as_deref() == Some(&*crate::policy::wasm::sha256_hex(&bytes)) {
            continue;
        }
        tracing::info!(plugin = %name, file = %path.display(), "plugin folder: replacing");
        // `replace` logs a refusal itself; the file is tried again when it changes.
        let _ = control.replace(&name, Some(bytes)).await;
    }
}

/// Editors' and writers' temporary files (`.name.wasm.tmp`, `.#name`): not worth a log line.
fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}
