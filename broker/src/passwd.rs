//! `moat passwd [-D] [--stdin] FILE USER`: creates, updates or deletes one user's entry in a
//! password file of the format Mosquitto's `mosquitto_passwd` writes (`user:hash` lines),
//! which the bundled `static-acl` plugin reads.
//!
//! New and updated entries are argon2id (PHC string, m=19 MiB, t=2, p=1, a random salt), or
//! with `--scram` a SCRAM-SHA-256 verifier (RFC 5803), which also serves MQTT 5 SCRAM logins:
//! the broker's `password` capability checks both, as it checks the `$7$` and `$6$` entries
//! `mosquitto_passwd` wrote, which are kept as they are. Every other line (other users,
//! comments) is kept byte for byte, in order.
//!
//! The password is read from the terminal without echo, twice; or, with `--stdin` (for
//! scripts), as the first line of standard input. The file is replaced atomically: written
//! to a temporary file beside it with mode 0600, synced, then renamed over it, so a reader
//! (the broker's file watcher) never sees half a file and the hashes are never readable by
//! others, whatever the umask.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// `moat passwd`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PasswdArgs {
    /// Delete USER instead of setting its password.
    #[arg(short = 'D', long = "delete")]
    pub delete: bool,
    /// Read the password from the first line of standard input instead of the terminal.
    #[arg(long)]
    pub stdin: bool,
    /// Store a SCRAM-SHA-256 verifier (RFC 5803; PBKDF2-SHA256, 4096 iterations) instead of
    /// an argon2id hash: it serves MQTT 5 SCRAM-SHA-256 logins and plain-password logins.
    #[arg(long)]
    pub scram: bool,
    /// The password file; created if missing.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The user name.
    #[arg(value_name = "USER")]
    pub user: String,
}

/// Why `moat passwd` failed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    #[error("invalid user name {0:?}: it must be non-empty, without ':' or control characters")]
    BadUser(String),
    #[error("user {user:?} is not in {file}")]
    NoSuchUser { user: String, file: PathBuf },
    #[error("the passwords do not match")]
    Mismatch,
    #[error("the password is empty")]
    EmptyPassword,
    #[error("cannot read the password: {0}")]
    ReadPassword(std::io::Error),
    #[error("cannot read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {file}: {source}")]
    Write {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Runs `moat passwd`.
pub fn run(args: &PasswdArgs) -> Result<(), PasswdError> {
    check_user(&args.user)?;
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !args.delete => String::new(),
        Err(source) => {
            return Err(PasswdError::Read {
                file: args.file.clone(),
                source,
            });
        }
    };
    let entry = if args.delete {
        None
    } else {
        let password = if args.stdin {
            password_from(std::io::stdin().lock())?
        } else {
            password_from_terminal()?
        };
        let hash = if args.scram {
            crate::policy::wasm::new_scram_verifier(password.as_bytes())
        } else {
            crate::policy::wasm::new_password_hash(password.as_bytes())
        }
        .map_err(PasswdError::Hash)?;
        Some(format!("{}:{hash}", args.user))
    };
    let Some(updated) = update(&text, &args.user, entry.as_deref()) else {
        return Err(PasswdError::NoSuchUser {
            user: args.user.clone(),
            file: args.file.clone(),
        });
    };
    write_atomically(&args.file, &updated).map_err(|source| PasswdError::Write {
        file: args.file.clone(),
        source,
    })
}

fn check_user(user: &str) -> Result<(), PasswdError> {
    if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
        return Err(PasswdError::BadUser(user.to_owned()));
    }
    Ok(())
}

/// The file's text with `user`'s line replaced by `entry` (appended if there was none), or
/// removed when `entry` is `None`; `None` when there was nothing to remove.
fn update(text: &str, user: &str, entry: Option<&str>) -> Option<String> {
    let prefix = format!("{user}:");
    let mut out = String::with_capacity(text.len() + 128);
    let mut found = false;
    for line in text.lines() {
        if line.starts_with(&prefix) && !found {
            found = true;
            if let Some(e) = entry {
                out.push_str(e);
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    match (found, entry) {
        (false, None) => None,
        (false, Some(e)) => {
            out.push_str(e);
            out.push('\n');
            Some(out)
        }
        (true, _) => Some(out),
    }
}

/// The first line of `input`, without its line ending.
fn password_from(mut input: impl BufRead) -> Result<String, PasswdError> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(PasswdError::ReadPassword)?;
    let password = line.trim_end_matches(['\n', '\r']).to_owned();
    if password.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    Ok(password)
}

/// Asks twice on the terminal, without echo.
fn password_from_terminal() -> Result<String, PasswdError> {
    let first = rpassword::prompt_password("Password: ").map_err(PasswdError::ReadPassword)?;
    if first.is_empty() {
        return Err(PasswdError::EmptyPassword);
    }
    let second =
        rpassword::prompt_password("Reenter password: ").map_err(PasswdError::ReadPassword)?;
    if first != second {
        return Err(PasswdError::Mismatch);
    }
    Ok(first)
}

/// Writes `text` to a temporary file beside `file` (mode 0600), syncs it, renames it over
/// `file`, and syncs the directory.
fn write_atomically(file: &Path, text: &str) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.moat-passwd-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = write_then_rename(&options, &tmp, file, text, &dir);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_then_rename(
    options: &std::fs::OpenOptions,
    tmp: &Path,
    file: &Path,
    text: &str,
    dir: &Path,
) -> std::io::Result<()> {
    let mut f = options.open(tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(tmp, file)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_appends_and_deletes_keeping_other_lines() {
        let text = "# users\nalice:$7$101$a$b\nbob:$6$c$d\n";
        assert_eq!(
            update(text, "alice", Some("alice:NEW")).unwrap(),
            "# users\nalice:NEW\nbob:$6$c$d\n"
        );
        assert_eq!(
            update(text, "carol", Some("carol:NEW")).unwrap(),
            "# users\nalice:$7$101$a$b\nbob:$6$c$d\ncarol:NEW\n"
        );
        assert_eq!(
            update(text, "bob", None).unwrap(),
            "# users\nalice:$7$101$a$b\n"
        );
        assert_eq!(update(text, "carol", None), None);
        // `al` is not a prefix match for `alice`.
        assert_eq!(
            update(text, "al", Some("al:X")).unwrap(),
            "# users\nalice:$7$101$a$b\nbob:$6$c$d\nal:X\n"
        );
    }

    #[test]
    fn bad_user_names_and_empty_passwords_are_refused() {
        for bad in ["", "a:b", "a\nb"] {
            assert!(matches!(check_user(bad), Err(PasswdError::BadUser(_))));
        }
        assert_eq!(
            password_from(&b"s3cret\r\nignored\n"[..]).unwrap(),
            "s3cret"
        );
        assert!(matches!(
            password_from(&b"\n"[..]),
            Err(PasswdError::EmptyPassword)
        ));
    }

    #[test]
    fn the_file_is_written_with_mode_0600_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        std::fs::write(&file, "bob:$6$c$d\n").unwrap();
        let hash = crate::policy::wasm::new_password_hash(b"pw").unwrap();
        let updated = update(
            &std::fs::read_to_string(&file).unwrap(),
            "alice",
            Some(&format!("alice:{hash}")),
        )
        .unwrap();
        write_atomically(&file, &updated).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("bob:$6$c$d\nalice:$argon2id$"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }
}
