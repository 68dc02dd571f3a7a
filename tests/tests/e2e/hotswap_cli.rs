//! The operator's triggers on the real `moat` process: `moat plugin list|replace|unload|load`
//! against its admin API (token from the configuration's `token_file`), and SIGHUP rereading
//! the configuration (a broken one keeps the running chain, and the log says why).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};

use crate::broker_process::{BrokerProcess, log_field};
use crate::harness::{RawClient, raw_publish};
use crate::plugins::components;

/// The broker process and its admin API's address.
struct Broker {
    process: BrokerProcess,
    admin: SocketAddr,
}

/// Writes the configuration: the gate allows publishing to `t/#` when `t_verdict` says so.
fn write_config(dir: &Path, t_verdict: &str) {
    let text = format!(
        "[sys]\ninterval = 0\n[log]\nfilter = \"info\"\n[plugins]\ncache_dir = {:?}\n\
         [admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"token\"\n\
         [[plugin]]\nname = \"gate\"\nwasm = {:?}\n[plugin.config]\n\
         auth = {{ anonymous = \"allow\" }}\n\
         publish = [{{ filter = \"t/#\", verdict = \"{t_verdict}\" }}]\n",
        crate::harness::plugin_cache_dir(),
        components::TEST_POLICY,
    );
    std::fs::write(dir.join("moat.toml"), text).unwrap();
}

fn start(dir: &Path) -> Broker {
    use std::os::unix::fs::PermissionsExt;
    let token = dir.join("token");
    std::fs::write(&token, "a-token-only-the-operator-knows\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut process = BrokerProcess::start(&dir.join("moat.toml"), &["--listen", "127.0.0.1:0"]);
    let admin = process.wait_for(|line| log_field(line, "admin API ready", "admin="));
    Broker { process, admin }
}

/// Runs `moat -c moat.toml plugin --admin ADDR <args>`: exit success and standard output.
fn moat_plugin(dir: &Path, b: &Broker, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moat-test-broker"))
        .arg("-c")
        .arg(dir.join("moat.toml"))
        .args(["plugin", "--admin", &b.admin.to_string()])
        .args(args)
        .env_remove("MOAT_ADMIN_TOKEN")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Publishes to `t/x` at QoS 1 until the PUBACK's reason is `want` (a SIGHUP is applied in
/// the background).
async fn until_publish_is(c: &mut RawClient, want: ReasonCode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in 1u16.. {
        c.send(&raw_publish("t/x", b"x", QoS::AtLeastOnce, Some(id)))
            .await;
        match c.recv().await {
            Some(Packet::PubAck(r)) if r.reason_code == want => return,
            Some(Packet::PubAck(_)) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "the policy never changed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(b: &Broker) {
    b.process.signal(libc::SIGHUP);
}

/// `moat plugin` lists and replaces through the API with the configuration's token; SIGHUP
/// applies a changed configuration and refuses a broken one, keeping the running chain.
#[tokio::test]
async fn the_moat_plugin_command_and_sighup_change_a_running_broker() {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "allow");
    let mut b = start(dir.path());

    let (ok, out) = moat_plugin(dir.path(), &b, &["list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"name\":\"gate\"") && out.contains("\"generation\":1"),
        "{out}"
    );
    let (ok, out) = moat_plugin(dir.path(), &b, &["replace", "gate", "/nonexistent.wasm"]);
    assert!(!ok && out.contains("/nonexistent.wasm"), "{out}");
    let (ok, out) = moat_plugin(dir.path(), &b, &["replace", "gate"]);
    assert!(ok && out.contains("\"generation\":2"), "{out}");

    let mut c = RawClient::connected(b.process.addr, ProtocolVersion::V5, "cli-prober", true).await;
    // 0x10: allowed, and nobody subscribes.
    until_publish_is(&mut c, ReasonCode::NO_MATCHING_SUBSCRIBERS).await;

    write_config(dir.path(), "deny");
    sighup(&b);
    until_publish_is(&mut c, ReasonCode::NOT_AUTHORIZED).await;

    std::fs::write(dir.path().join("moat.toml"), "[[plugin]]\nname = 42\n").unwrap();
    sighup(&b);
    let line = b
        .process
        .wait_for(|line| line.contains("was not reloaded").then(|| line.to_owned()));
    assert!(
        line.contains("moat.toml:2"),
        "names the file and line: {line}"
    );
    until_publish_is(&mut c, ReasonCode::NOT_AUTHORIZED).await;
    write_config(dir.path(), "deny");
    let (ok, out) = moat_plugin(dir.path(), &b, &["unload", "gate"]);
    assert!(ok, "{out}");
    let (ok, out) = moat_plugin(dir.path(), &b, &["list"]);
    assert!(ok && out.trim() == "[]", "{out}");
}
