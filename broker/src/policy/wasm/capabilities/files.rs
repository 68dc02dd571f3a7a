//! `files`: read-only access to the files the operator granted, each under the name the grant
//! gives it (`files = { passwords = "/etc/moat/passwd" }`).
//!
//! A generation of the plugin reads every granted file once, when it is created: a
//! [`FileSnapshot`]. All its instances see that same content, however many are created later,
//! so two calls never disagree because a file changed in between. A change on disk is noticed
//! by the chain's watcher (`policy::chain::watch`), which starts a new generation with a new
//! snapshot and puts it in service only if its `init` succeeds.
//!
//! A granted file that cannot be read is not a load error here: the plugin's `read` answers
//! `unavailable` with the reason, and the plugin decides (static-acl refuses to start).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::super::bindings::moat::policy::files;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;

/// Largest granted file a plugin may read: the whole file is copied into each instance that
/// asks for it.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// What `stat` says about one file: enough to notice a change without reading it. `None`
/// for a file that cannot be examined (missing, no permission).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    len: u64,
    modified: Option<SystemTime>,
    /// The inode and change time catch a replacement by rename (what editors and
    /// `mosquitto_passwd` do) even when size and modification time happen to match.
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stat {
    fn of(path: &Path) -> Option<Stat> {
        let m = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Some(Stat {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            inode: (m.dev(), m.ino()),
            #[cfg(unix)]
            changed: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The state of every granted file on disk, in the grant's order: equal fingerprints mean
/// nothing needs rereading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<Stat>>);

impl Fingerprint {
    /// Looks at the granted files now (one `stat` each).
    pub fn now(grant: &BTreeMap<String, PathBuf>) -> Fingerprint {
        Fingerprint(grant.values().map(|p| Stat::of(p)).collect())
    }
}

/// Why a granted file has no content for the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unreadable {
    TooLarge,
    Failed(String),
}

/// The granted files as one generation of a plugin sees them; see the module doc.
#[derive(Debug, Default)]
pub struct FileSnapshot {
    files: BTreeMap<String, Result<Arc<[u8]>, Unreadable>>,
    fingerprint: Fingerprint,
}

impl FileSnapshot {
    /// Reads every granted file (blocking: call it off the async workers). The fingerprint is
    /// taken first, so a change during the read shows as a difference at the next look.
    pub fn read(grant: &BTreeMap<String, PathBuf>) -> FileSnapshot {
        let fingerprint = Fingerprint::now(grant);
        let files = grant
            .iter()
            .map(|(name, path)| (name.clone(), read_capped(path)))
            .collect();
        FileSnapshot { files, fingerprint }
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// Whether `other` has the same content (a `touch` changes the fingerprint, not this).
    pub fn same_content(&self, other: &FileSnapshot) -> bool {
        self.files == other.files
    }
}

fn read_capped(path: &Path) -> Result<Arc<[u8]>, Unreadable> {
    let failed = |e: std::io::Error| Unreadable::Failed(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Unreadable::TooLarge);
    }
    Ok(bytes.into())
}

impl files::Host for HostState {
    async fn read(&mut self, name: String) -> wasmtime::Result<Result<Vec<u8>, CapabilityError>> {
        Ok(match self.files.files.get(&name) {
            Some(Ok(bytes)) => Ok(bytes.to_vec()),
            Some(Err(Unreadable::TooLarge)) => Err(CapabilityError::TooLarge),
            Some(Err(Unreadable::Failed(why))) => Err(CapabilityError::Unavailable(why.clone())),
            None => {
                // The name comes from the plugin: keep the log line short.
                let shown: String = name.chars().take(64).collect();
                Err(self.ctx.refuse(&format!("files ({shown:?})")))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_keeps_what_it_read_and_notices_changes_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, "alice\n").unwrap();
        let grant: BTreeMap<_, _> = [
            ("users".to_string(), path.clone()),
            ("missing".to_string(), dir.path().join("nope")),
        ]
        .into();
        let first = FileSnapshot::read(&grant);
        assert_eq!(first.files["users"].as_deref().ok(), Some(&b"alice\n"[..]));
        assert!(matches!(first.files["missing"], Err(Unreadable::Failed(_))));
        assert_eq!(&Fingerprint::now(&grant), first.fingerprint());

        // Replaced by rename, as editors and mosquitto_passwd do.
        let tmp = dir.path().join("users.tmp");
        std::fs::write(&tmp, "alice\nbob\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(&Fingerprint::now(&grant), first.fingerprint());
        let second = FileSnapshot::read(&grant);
        assert!(!second.same_content(&first));
        assert_eq!(
            first.files["users"].as_deref().ok(),
            Some(&b"alice\n"[..]),
            "the old snapshot is unchanged"
        );
    }

    #[test]
    fn a_file_over_the_cap_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let snapshot = FileSnapshot::read(&[("big".to_string(), path)].into());
        assert_eq!(snapshot.files["big"], Err(Unreadable::TooLarge));
    }
}
