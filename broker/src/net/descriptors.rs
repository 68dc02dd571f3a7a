//! Sizing the process's file-descriptor table once, at start, before any thread exists.
//!
//! Linux grows a process's descriptor table by doubling it when a new descriptor does not fit
//! (at 64, 128, 256, ... open files), and in a multi-threaded process each growth waits for an
//! RCU grace period: measured here, `accept4` returning descriptor 256, 512 or 1024 took 5 to
//! 8 ms, during which the one worker thread accepted nothing. A burst of new clients paid it
//! once per doubling (a 35 ms stall in the first 2000 connections of a fresh broker, which
//! halved its connect rate against a single-threaded Mosquitto, which pays no grace period).
//! Asking for one high descriptor at start, while the process still has one thread, grows the
//! table in one step and without the wait; the kernel never shrinks it. The cost is the table
//! itself: 8 bytes and two bits per slot (about 0.5 MiB of kernel memory for 65,536 slots).

use std::os::fd::AsFd;

/// The most slots reserved when neither the configuration nor the limit says fewer.
const MOST: u64 = 65_536;

/// Grows the descriptor table to hold `wanted` descriptors (capped by the soft
/// `RLIMIT_NOFILE` and by [`MOST`]). Call before the runtime starts its threads. Failure only
/// costs the stall described above, so it is logged at debug level and otherwise ignored.
pub fn reserve(wanted: Option<u64>) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(MOST);
    let slots = wanted.unwrap_or(MOST).min(limit).min(MOST);
    if slots < 128 {
        return;
    }
    let grown = std::fs::File::open("/dev/null").and_then(|f| {
        // The lowest free descriptor at or above `slots - 1`: the table now holds `slots`.
        let high = rustix::io::fcntl_dupfd_cloexec(f.as_fd(), (slots - 1) as i32)?;
        drop(high);
        Ok(())
    });
    if let Err(e) = grown {
        tracing::debug!(slots, error = %e, "cannot reserve the descriptor table");
    }
}

#[cfg(test)]
mod tests {
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("FDSize:")).unwrap();
        line["FDSize:".len()..].trim().parse().unwrap()
    }

    #[test]
    fn the_table_holds_what_was_reserved_and_no_descriptor_is_left_open() {
        let open_before = std::fs::read_dir("/proc/self/fd").unwrap().count();
        super::reserve(Some(3000));
        assert!(table_size() >= 3000, "FDSize {}", table_size());
        // Other tests open files meanwhile, so allow for them, but not for a leaked 3000th.
        let open_after = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(
            open_after < open_before + 50,
            "{open_before} -> {open_after}"
        );
        assert!(!std::path::Path::new("/proc/self/fd/2999").exists());
    }
}
