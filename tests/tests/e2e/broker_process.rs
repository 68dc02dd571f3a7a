//! The broker as its own process, for the tests that need the real binary (SIGKILL, SIGHUP,
//! the `moat plugin` client): `moat-test-broker` (the `moat` command, built into this test
//! package) started on a configuration file, its standard error read line by line as it
//! comes.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// How long a start, or a log line a test waits for, may take on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

/// A running broker process; killed when dropped.
pub struct BrokerProcess {
    child: Child,
    /// The MQTT listener's address, from the "listening" log line.
    pub addr: SocketAddr,
    log: Receiver<String>,
    /// Lines read but not yet asked for.
    unread: VecDeque<String>,
}

impl BrokerProcess {
    /// Starts `moat --config CONFIG ARGS...` and waits until it listens. A line that says the
    /// start failed (an error, or the binary's own `moat:` message) fails the test with it.
    pub fn start(config: &Path, args: &[&str]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moat-test-broker"))
            .arg("--config")
            .arg(config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the broker binary runs");
        let (tx, log) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut broker = BrokerProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            log,
            unread: VecDeque::new(),
        };
        broker.addr = broker.wait_for(|line| {
            assert!(
                !line.contains("ERROR") && !line.starts_with("moat:"),
                "the broker did not start: {line}"
            );
            log_field(line, "listening", "addr=")
        });
        broker
    }

    /// The value `f` finds in the first log line (read earlier but not yet asked for, or
    /// coming) that gives one; fails the test after [`WAIT`].
    pub fn wait_for<T>(&mut self, mut f: impl FnMut(&str) -> Option<T>) -> T {
        if let Some(found) = self.unread.iter().position(|l| f(l).is_some()) {
            let line = self.unread.remove(found).unwrap();
            return f(&line).unwrap();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let line = self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|e| panic!("the awaited log line did not come: {e}"));
            match f(&line) {
                Some(value) => return value,
                None => self.unread.push_back(line),
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// SIGKILL: no shutdown, no last commit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The socket address after `key` in a log line that contains `marker`.
pub fn log_field(line: &str, marker: &str, key: &str) -> Option<SocketAddr> {
    if !line.contains(marker) {
        return None;
    }
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}
