//! Interoperability with clients that are not ours: the Mosquitto command line clients
//! (`mosquitto_pub`, `mosquitto_sub`, Debian's mosquitto-clients 2.0) and the Eclipse Paho
//! Python client (`tests/python/paho_interop.py`). Each test starts a broker in process and
//! runs the external client against its port, with a time limit, killing it if the test ends
//! first.
//!
//! `mosquitto_sub` gives no sign that its subscription is in place, so the tests wait for the
//! broker's subscription count to go up before publishing.

use std::process::Stdio;
use std::time::Duration;

use moat::codec::{ProtocolVersion, QoS};
use tokio::process::{Child, Command};

use crate::harness::flows::{Peer, V4, text};
use crate::harness::{self, TestBroker, WAIT};

/// A `mosquitto_pub` or `mosquitto_sub` command against the broker, output captured.
pub fn mosquitto(bin: &str, broker: &TestBroker, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn spawn(mut cmd: Command, what: &str) -> Child {
    cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot run {what}: {e} (are mosquitto-clients / python3 installed?)")
    })
}

/// Waits for `child` to exit successfully within `limit`; returns its standard output.
async fn finish(child: Child, what: &str, limit: Duration) -> String {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `mosquitto_pub` with `args` to completion.
async fn mosquitto_pub(broker: &TestBroker, args: &[&str]) {
    let what = format!("mosquitto_pub {}", args.join(" "));
    finish(
        spawn(mosquitto("mosquitto_pub", broker, args), &what),
        &what,
        WAIT,
    )
    .await;
}

/// Starts `mosquitto_sub` with `args` and waits until its `filters` subscriptions exist (or
/// until it has exited already: with retained messages, `-C` may be reached at once).
async fn start_mosquitto_sub(broker: &TestBroker, args: &[&str], filters: u64) -> Child {
    let before = broker.broker.metrics().subscriptions;
    // -W: mosquitto_sub gives up by itself if the test's own limit somehow does not apply.
    let mut all = vec!["-W", "20"];
    all.extend_from_slice(args);
    let mut child = spawn(mosquitto("mosquitto_sub", broker, &all), "mosquitto_sub");
    harness::eventually("mosquitto_sub has subscribed", || {
        broker.broker.metrics().subscriptions >= before + filters
            || matches!(child.try_wait(), Ok(Some(_)))
    })
    .await;
    child
}

/// The output lines of a finished `mosquitto_sub`, sorted (separate `mosquitto_pub`
/// processes are separate connections, so their messages may be routed in either order).
async fn sub_lines(child: Child) -> Vec<String> {
    let out = finish(child, "mosquitto_sub", WAIT).await;
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// `mosquitto_sub` receives what `mosquitto_pub` publishes at QoS 0, 1 and 2, over MQTT
/// 3.1.1 and 5.0; each message arrives at the QoS it was published with, as the subscription
/// grants QoS 2 (MQTT-3.8.4-7 / 3.1.1: MQTT-3.8.4-6).
#[tokio::test]
async fn mosquitto_sub_receives_mosquitto_pub_at_each_qos() {
    for version in ["mqttv311", "mqttv5"] {
        let broker = harness::start().await;
        let sub = start_mosquitto_sub(
            &broker,
            &[
                "-V",
                version,
                "-q",
                "2",
                "-t",
                "interop/#",
                "-C",
                "3",
                "-F",
                "%t %q %p",
            ],
            1,
        )
        .await;
        for q in ["0", "1", "2"] {
            let topic = format!("interop/q{q}");
            let payload = format!("payload-{q}");
            mosquitto_pub(
                &broker,
                &["-V", version, "-q", q, "-t", &topic, "-m", &payload],
            )
            .await;
        }
        assert_eq!(
            sub_lines(sub).await,
            [
                "interop/q0 0 payload-0",
                "interop/q1 1 payload-1",
                "interop/q2 2 payload-2"
            ],
            "{version}"
        );
    }
}

/// `mosquitto_pub -r` stores a retained message that a later `mosquitto_sub` gets with the
/// retain flag (MQTT-3.3.1-5, MQTT-3.3.1-9 / 3.1.1: MQTT-3.3.1-8); `-r -n` (empty payload)
/// deletes it (MQTT-3.3.1-6 / 3.1.1: MQTT-3.3.1-10).
#[tokio::test]
async fn mosquitto_retained_messages_reach_later_subscribers_and_can_be_deleted() {
    let broker = harness::start().await;
    mosquitto_pub(&broker, &["-q", "1", "-r", "-t", "ret/a", "-m", "kept"]).await;
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            "ret/marker",
            "-m",
            "marker",
        ],
    )
    .await;

    let sub = start_mosquitto_sub(&broker, &["-t", "ret/#", "-C", "2", "-F", "%r %t %p"], 1).await;
    assert_eq!(
        sub_lines(sub).await,
        ["1 ret/a kept", "1 ret/marker marker"]
    );

    mosquitto_pub(&broker, &["-q", "1", "-r", "-n", "-t", "ret/a"]).await;
    let sub = start_mosquitto_sub(
        &broker,
        &["-V", "mqttv5", "-t", "ret/#", "-C", "1", "-F", "%r %t %p"],
        1,
    )
    .await;
    assert_eq!(sub_lines(sub).await, ["1 ret/marker marker"]);
    assert_eq!(broker.broker.metrics().retained_messages, 1);
}

/// Wildcard subscriptions through `mosquitto_sub`: `+` for one level, `#` for the parent and
/// everything below (section 4.7.1). A message matching neither would be among the first four
/// printed, as it is published second.
#[tokio::test]
async fn mosquitto_sub_wildcard_subscriptions() {
    let broker = harness::start().await;
    let sub = start_mosquitto_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-t",
            "site/+/temp",
            "-t",
            "alarm/#",
            "-C",
            "4",
            "-v",
        ],
        2,
    )
    .await;
    for (topic, payload) in [
        ("site/a/temp", "21"),
        ("site/b/humidity", "40"),
        ("site/c/temp", "19"),
        ("alarm", "fire"),
        ("alarm/x/y", "smoke"),
    ] {
        mosquitto_pub(&broker, &["-t", topic, "-m", payload]).await;
    }
    assert_eq!(
        sub_lines(sub).await,
        [
            "alarm fire",
            "alarm/x/y smoke",
            "site/a/temp 21",
            "site/c/temp 19"
        ]
    );
}

/// MQTT 5 properties set with `mosquitto_pub -D publish ...` reach `mosquitto_sub -V mqttv5`
/// unaltered: user properties in order, content type, correlation data, response topic and
/// payload format (MQTT-3.3.2-4, -15, -16, -17, -18, -20).
#[tokio::test]
async fn mosquitto_v5_properties_round_trip() {
    let broker = harness::start().await;
    let sub = start_mosquitto_sub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-t",
            "props/t",
            "-C",
            "1",
            "-F",
            "%t|%p|%P|%C|%D|%R|%F",
        ],
        1,
    )
    .await;
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "props/t",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "k",
            "v1",
            "-D",
            "publish",
            "user-property",
            "z",
            "v2",
            "-D",
            "publish",
            "user-property",
            "k",
            "v3",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "correlation-data",
            "corr-42",
            "-D",
            "publish",
            "response-topic",
            "props/reply",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    )
    .await;
    assert_eq!(
        sub_lines(sub).await,
        ["props/t|hello|k:v1 z:v2 k:v3|text/plain|corr-42|props/reply|1"]
    );
}

/// `mosquitto_pub -V mqttv5` to a raw MQTT 5 subscriber (byte-exact properties, QoS 2 flow)
/// and a rumqttc 3.1.1 subscriber (no properties in 3.1.1, QoS capped by its subscription).
#[tokio::test]
async fn mosquitto_pub_to_raw_and_rumqttc_subscribers() {
    let broker = harness::start().await;
    let mut raw = Peer::connect(broker.addr, ProtocolVersion::V5, "interop-raw").await;
    raw.subscribe("mix/#", QoS::ExactlyOnce).await;
    let mut v4 = V4::connect(broker.addr, "interop-rumqttc").await;
    v4.subscribe("mix/+", rumqttc::QoS::AtLeastOnce).await;

    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv5",
            "-q",
            "2",
            "-t",
            "mix/t",
            "-m",
            "from mosquitto",
            "-D",
            "publish",
            "user-property",
            "origin",
            "mosquitto_pub",
            "-D",
            "publish",
            "message-expiry-interval",
            "120",
        ],
    )
    .await;

    let p = raw.recv_publish().await;
    assert_eq!(text(&p), ("mix/t".into(), "from mosquitto".into()));
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let props: Vec<(&str, &str)> = p
        .properties
        .user_properties
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    assert_eq!(props, [("origin", "mosquitto_pub")]);
    let expiry = p
        .properties
        .message_expiry_interval
        .expect("message expiry forwarded");
    assert!((115..=120).contains(&expiry), "expiry {expiry}");

    let p = v4.recv_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("mix/t", &b"from mosquitto"[..])
    );
    assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
}

/// `mosquitto_sub` reads the broker's `$SYS/broker/version` (a filter naming the `$SYS`
/// level matches `$` topics; MQTT-4.7.2-1 only excludes leading wildcards).
#[tokio::test]
async fn mosquitto_sub_reads_sys_version() {
    let broker = harness::start_with(|c| c.sys.interval = Duration::from_secs(1)).await;
    let sub = start_mosquitto_sub(&broker, &["-t", "$SYS/broker/version", "-C", "1"], 1).await;
    assert_eq!(
        sub_lines(sub).await,
        [format!("moat {}", env!("CARGO_PKG_VERSION"))]
    );
}

/// A `mosquitto_sub` with a will that is killed (its socket closed without DISCONNECT) has its
/// will published (MQTT-3.1.2-8 / 3.1.1: MQTT-3.1.2-8), over 3.1.1 and 5.0.
#[tokio::test]
async fn will_of_a_killed_mosquitto_client_is_published() {
    let broker = harness::start().await;
    let mut watcher = Peer::connect(broker.addr, ProtocolVersion::V5, "interop-will-watch").await;
    watcher.subscribe("interop/will/#", QoS::AtLeastOnce).await;
    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("interop/will/{version}");
        let mut client = start_mosquitto_sub(
            &broker,
            &[
                "-V",
                version,
                "-t",
                "interop/idle",
                "--will-topic",
                &topic,
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
            ],
            1,
        )
        .await;
        client.start_kill().expect("kill mosquitto_sub");
        let _ = tokio::time::timeout(WAIT, client.wait()).await;
        let p = watcher.recv_publish().await;
        assert_eq!(text(&p), (topic, "gone".into()));
        assert_eq!((p.qos, p.retain), (QoS::AtLeastOnce, false));
    }
    watcher.assert_no_publish().await;
}

/// Runs one check of `tests/python/paho_interop.py` against a fresh broker.
async fn paho(check: &str) {
    let broker = harness::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/paho_interop.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--port", &broker.port().to_string(), "--check", check])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("paho_interop.py --check {check}");
    let out = finish(spawn(cmd, &what), &what, 6 * WAIT).await;
    assert_eq!(out.trim(), format!("ok: {check}"), "{what} output");
}

/// Paho (3.1.1 and 5.0): publish and receive at QoS 0, 1 and 2, in order and at the
/// published QoS.
#[tokio::test]
async fn paho_publishes_and_receives_at_each_qos() {
    paho("qos").await;
}

/// Paho (3.1.1 and 5.0): the will is published when the connection is lost (MQTT-3.1.2-8)
/// and discarded after a normal DISCONNECT (MQTT-3.1.2-10 / 3.1.1: MQTT-3.1.2-10; 5.0:
/// MQTT-3.14.4-3).
#[tokio::test]
async fn paho_will_published_only_on_connection_loss() {
    paho("will").await;
}

/// Paho (3.1.1 and 5.0): retained messages for later subscribers with the retain flag, live
/// copies without it, deletion by an empty retained message (section 3.3.1.3).
#[tokio::test]
async fn paho_retained_messages() {
    paho("retained").await;
}

/// Paho 5.0: content type, user properties (in order), correlation data, response topic,
/// payload format, message expiry and subscription identifier round trip (MQTT-3.3.2-4, -6,
/// -15, -16, -17, -18, -20, MQTT-3.3.4-3).
#[tokio::test]
async fn paho_v5_publish_properties_round_trip() {
    paho("properties").await;
}
