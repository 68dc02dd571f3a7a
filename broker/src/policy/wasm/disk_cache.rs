//! The on-disk cache of compiled plugins.
//!
//! A compiled component is native code that the broker maps and runs, so whoever can write
//! this directory can run code as the broker. The cache is therefore used only if the
//! directory is the broker user's own and nobody else may write to it: not a symlink, owned by
//! the effective user, no write permission for group or others. It is created with mode 0700;
//! an existing directory that fails these checks is refused at start with a message saying
//! why. Files are opened without following symlinks and must be the user's own as well.
//!
//! Keys are `<sha256 of the component>-<engine fingerprint>`, so a new wasmtime version or
//! other engine settings never load code compiled for another; wasmtime checks that again when
//! it deserializes.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// A checked cache directory.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

/// The default cache directory: `$XDG_CACHE_HOME/moat/plugins`, else `~/.cache/moat/plugins`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("moat").join("plugins"))
}

impl DiskCache {
    /// Opens (creating if needed) the cache at `dir` after checking it is safe to load native
    /// code from.
    pub fn open(dir: &Path) -> Result<DiskCache, LoadError> {
        let refuse = |why: String| LoadError::CacheDir {
            dir: dir.to_owned(),
            why,
        };
        if fs::symlink_metadata(dir).is_err() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| refuse(format!("cannot create it: {e}")))?;
        }
        let meta = fs::symlink_metadata(dir).map_err(|e| refuse(format!("cannot read it: {e}")))?;
        if meta.file_type().is_symlink() {
            return Err(refuse("it is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(refuse("it is not a directory".into()));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(refuse(format!(
                "it belongs to user {} and the broker runs as user {me}",
                meta.uid()
            )));
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "group or others may write to it (mode {:o}); chmod go-w it",
                meta.permissions().mode() & 0o777
            )));
        }
        Ok(DiskCache {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.cwasm"))
    }

    /// The compiled component stored under `key`, if there is a usable one.
    pub(super) fn load(&self, engine: &Engine, key: &str) -> Option<Component> {
        let path = self.path(key);
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .ok()?;
        let meta = file.metadata().ok()?;
        let me = rustix::process::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != me || meta.permissions().mode() & 0o022 != 0 {
            tracing::warn!(path = %path.display(), "ignoring a cached plugin that is not the broker's own file");
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).ok()?;
        // SAFETY: `Component::deserialize` trusts its input to be code wasmtime compiled. The
        // file is the broker user's own, in a directory only that user can write (checked in
        // `open` and above, without following symlinks), and its name carries the engine
        // fingerprint; wasmtime itself rejects output of another version or configuration.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, &bytes) };
        match component {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable cached plugin");
                None
            }
        }
    }

    /// Stores compiled code under `key` (written aside, then renamed into place).
    pub(super) fn store(&self, key: &str, native: &[u8]) {
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp)?;
            f.write_all(native)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), error = %e, "cannot cache a compiled plugin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cache");
        DiskCache::open(&dir).expect("created 0700");
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = DiskCache::open(&dir).unwrap_err().to_string();
        assert!(err.contains("group or others may write"), "{err}");
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = DiskCache::open(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }
}
