//! The bundled `static-acl` plugin behind a real broker: a password file made by the real
//! `mosquitto_passwd` and a Mosquitto ACL file, driven by the Mosquitto command line clients,
//! rumqttc and the raw client; the reason codes of every refusal; a `#` subscription that
//! must not leak; files changed under a running broker; and `moat passwd`.
//!
//! A change to a granted file is in service within about 1.1 s (the watcher looks every
//! second and reads a file that stood still for 0.1 s) plus the plugin's `init`; the tests
//! allow [`WAIT`] for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use moat::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use moat::config::PluginConfig;
use serde_json::json;
use tokio::process::Command;

use crate::harness::{RawClient, Rumqtt5, TestBroker, WAIT, raw_publish, start_with};
use crate::plugins::{login, login_refused};
use crate::static_acl::{grants, mosquitto_passwd};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

const ACL: &str = "\
user admin
topic readwrite #

user bob
topic read public/#
topic write bob/#
";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    /// admin/admin-pw and bob/bob-pw by `mosquitto_passwd`, and [`ACL`].
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        mosquitto_passwd(&passwd, "admin", "admin-pw", true);
        mosquitto_passwd(&passwd, "bob", "bob-pw", false);
        std::fs::write(dir.path().join("acl"), ACL).unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[[plugin]]` of static-acl on these files.
    fn plugin(&self) -> PluginConfig {
        let serde_json::Value::Object(config) =
            json!({"password_file": "passwd", "acl_file": "acl"})
        else {
            unreachable!()
        };
        PluginConfig {
            name: "files".into(),
            bundled: Some("static-acl".into()),
            grants: grants(&[("passwd", &self.path("passwd")), ("acl", &self.path("acl"))]),
            config,
            // Generous: the tests share two busy cores.
            authorize_timeout_ms: 2000,
            ..PluginConfig::default()
        }
    }

    async fn broker(&self) -> TestBroker {
        let plugin = self.plugin();
        start_with(|c| c.plugin_chain = vec![plugin]).await
    }
}

/// Publishes at QoS 1 and returns the PUBACK's reason code.
pub async fn puback(c: &mut RawClient, packet_id: u16, topic: &str) -> ReasonCode {
    c.send(&raw_publish(topic, b"x", QoS::AtLeastOnce, Some(packet_id)))
        .await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.reason_code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

pub async fn connack(
    b: &TestBroker,
    version: ProtocolVersion,
    user: &str,
    password: &str,
) -> ReasonCode {
    let (_, ack) = RawClient::handshake(b.addr, login(version, "c", user, password)).await;
    ack.reason_code
}

/// A password made by `mosquitto_passwd` lets its user in; a wrong password and an unknown
/// user get 0x86 Bad user name or password (3.1.1: return code 4), and the connection closes
/// (MQTT-3.2.2-7).
#[tokio::test]
async fn mosquitto_passwords_admit_and_refuse_with_0x86() {
    let f = Files::new();
    let b = f.broker().await;
    for version in [V5, V311] {
        assert_eq!(
            connack(&b, version, "bob", "bob-pw").await,
            ReasonCode::SUCCESS
        );
        for (user, password) in [("bob", "admin-pw"), ("nobody", "bob-pw")] {
            login_refused(&b, version, "c", user, password).await;
        }
    }
    b.stop().await;
}

/// A publish the ACL does not allow gets PUBACK 0x87 Not authorized; a subscription it does
/// not allow gets SUBACK 0x87; allowed ones go through.
#[tokio::test]
async fn acl_refusals_get_0x87_in_puback_and_suback() {
    let f = Files::new();
    let b = f.broker().await;
    let (mut bob, ack) = RawClient::handshake(b.addr, login(V5, "bob-1", "bob", "bob-pw")).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        puback(&mut bob, 1, "secret/plans").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback(&mut bob, 2, "public/news").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        puback(&mut bob, 3, "bob/status").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        bob.subscribe_one(4, "secret/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::NOT_AUTHORIZED]
    );
    assert_eq!(
        bob.subscribe_one(5, "public/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::GRANTED_QOS_1]
    );
    b.stop().await;
}

/// `mosquitto_pub`/`mosquitto_sub` as `user`.
fn mosquitto(bin: &str, b: &TestBroker, user: &str, password: &str, args: &[&str]) -> Command {
    let mut all = vec!["-u", user, "-P", password];
    all.extend_from_slice(args);
    crate::interop::mosquitto(bin, b, &all)
}

async fn run(mut cmd: Command) -> std::process::Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("the command finishes")
        .expect("the command runs (is mosquitto-clients installed?)")
}

/// bob subscribes to `#`, which reaches topics he may not read: the subscription is allowed,
/// each delivery is checked, and only `public/...` reaches him, for `mosquitto_sub` (3.1.1
/// and 5) and for rumqttc (5), while admin publishes a secret first.
#[tokio::test]
async fn a_hash_subscription_does_not_leak_denied_topics() {
    let f = Files::new();
    let b = f.broker().await;
    let before = b.broker.metrics().subscriptions;
    for version in ["mqttv311", "mqttv5"] {
        let sub = mosquitto(
            "mosquitto_sub",
            &b,
            "bob",
            "bob-pw",
            &[
                "-V", version, "-q", "1", "-t", "#", "-C", "1", "-v", "-W", "20",
            ],
        )
        .spawn()
        .expect("mosquitto_sub runs");
        crate::harness::eventually("mosquitto_sub has subscribed", || {
            b.broker.metrics().subscriptions > before
        })
        .await;
        for topic in ["secret/plans", "public/news"] {
            let out = run(mosquitto(
                "mosquitto_pub",
                &b,
                "admin",
                "admin-pw",
                &["-V", version, "-q", "1", "-t", topic, "-m", "m"],
            ))
            .await;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = tokio::time::timeout(WAIT, sub.wait_with_output())
            .await
            .expect("mosquitto_sub gets one message")
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "public/news m\n",
            "{version}"
        );
        crate::harness::eventually("mosquitto_sub's subscription is gone", || {
            b.broker.metrics().subscriptions == before
        })
        .await;
    }

    let (mut bob, _) = Rumqtt5::connect(b.addr, "bob-r", |o| {
        o.set_credentials("bob", "bob-pw");
    })
    .await;
    bob.subscribe("#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let (admin, _) = Rumqtt5::connect(b.addr, "admin-r", |o| {
        o.set_credentials("admin", "admin-pw");
    })
    .await;
    for topic in ["secret/a", "secret/b", "public/c"] {
        admin
            .client
            .publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
    }
    let p = bob.next_publish().await;
    assert_eq!(&p.topic[..], b"public/c");
    b.stop().await;
}

/// Publishes until the PUBACK says `want`, within [`WAIT`].
pub async fn until_puback(c: &mut RawClient, topic: &str, want: ReasonCode) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for id in 1.. {
        if puback(c, id, topic).await == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{topic}: never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until the broker answers `user`/`password` with `want`, within [`WAIT`].
pub async fn until_connack(b: &TestBroker, user: &str, password: &str, want: ReasonCode) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while connack(b, V5, user, password).await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}: never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Files changed under a running broker take effect without a restart: a granted publish, a
/// revoked one (its cached allow dropped), a changed password, a removed user, for a client
/// connected all along.
#[tokio::test]
async fn changed_files_take_effect_while_running() {
    let f = Files::new();
    let b = f.broker().await;
    let (mut bob, _) = RawClient::handshake(b.addr, login(V5, "bob-1", "bob", "bob-pw")).await;
    assert_eq!(
        puback(&mut bob, 1, "cmd/bob").await,
        ReasonCode::NOT_AUTHORIZED
    );
    let allowed = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(
        puback(&mut bob, 2, "bob/x").await,
        allowed,
        "allowed and now cached"
    );

    // Written in place (not renamed): the watcher waits for it to stand still.
    std::fs::write(
        f.path("acl"),
        ACL.replace("topic write bob/#", "topic write cmd/bob"),
    )
    .unwrap();
    until_puback(&mut bob, "cmd/bob", allowed).await;
    assert_eq!(
        puback(&mut bob, 100, "bob/x").await,
        ReasonCode::NOT_AUTHORIZED
    );

    // mosquitto_passwd replaces the file by rename.
    mosquitto_passwd(&f.path("passwd"), "bob", "new-pw", false);
    until_connack(&b, "bob", "new-pw", ReasonCode::SUCCESS).await;
    assert_eq!(
        connack(&b, V5, "bob", "bob-pw").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );

    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(f.path("passwd"))
        .arg("bob")
        .status()
        .unwrap();
    assert!(status.success());
    until_puback(&mut bob, "cmd/bob", ReasonCode::NOT_AUTHORIZED).await;
    b.stop().await;
}

/// Runs `moat passwd` (the test package's copy of the `moat` binary) with `password` on
/// standard input.
pub async fn moat_passwd(
    args: &[&str],
    file: &Path,
    user: Option<&str>,
    password: &str,
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_moat-test-broker"))
        .arg("passwd")
        .args(args)
        .arg(file)
        .args(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(password.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("moat passwd finishes")
        .unwrap()
}

/// `moat passwd --stdin FILE USER` adds an argon2id entry beside `mosquitto_passwd`'s, in a
/// file of mode 0600, which the broker accepts (and picks up while running); `-D` deletes it.
#[tokio::test]
async fn moat_passwd_writes_entries_the_broker_accepts() {
    let f = Files::new();
    let passwd = f.path("passwd");
    let b = f.broker().await;
    let out = moat_passwd(&["--stdin"], &passwd, Some("carol"), "carol-pw\n").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&passwd).unwrap();
    assert!(text.starts_with("admin:$7$101$"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("carol:$argon2id$v=19$m=19456,t=2,p=1$")),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&passwd).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    std::fs::write(
        f.path("acl"),
        format!("{ACL}\nuser carol\ntopic write carol/#\n"),
    )
    .unwrap();
    until_connack(&b, "carol", "carol-pw", ReasonCode::SUCCESS).await;

    let out = moat_passwd(&["-D"], &passwd, None, "").await;
    assert!(!out.status.success(), "no USER given");
    let out = moat_passwd(&["-D"], &passwd, Some("carol"), "").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until_connack(
        &b,
        "carol",
        "carol-pw",
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
    )
    .await;
    let out = moat_passwd(&["-D"], &passwd, Some("carol"), "").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in"));
    b.stop().await;
}
