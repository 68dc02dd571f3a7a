//! Changing plugins while the broker serves: replacing a plugin's component (through the
//! broker's controls, the admin HTTP API and the watched folder), loading, reordering and
//! unloading plugins, reloading the configuration, and what clients see: the new policy from
//! the moment a swap returns, broken components refused with the old policy serving on,
//! clients of an unloaded or changed authenticating plugin sent to authenticate again, revoked
//! subscriptions removed. The load test swaps 24 times under continuous QoS 1 traffic.
//!
//! Distinct components come from one build of `test-policy`: its baked version (seven
//! characters after a marker in its data) is overwritten in the bytes ([`versioned`]), and
//! with `version_topic = "v"` a publish to `v/<version>` is allowed only by that version.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moat::admin::AdminClient;
use moat::codec::{Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};
use moat::config::PluginConfig;
use moat::metrics::DropCause;
use serde_json::{Value, json};

use crate::harness::{RawClient, TestBroker, raw_publish, start_with};
use crate::plugins::{components, login, test_policy};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;
const TOKEN: &str = "admin-token-for-the-tests";

/// `test-policy`'s component with its baked version set to `version` (seven characters).
pub(crate) fn versioned(version: &str) -> Vec<u8> {
    assert_eq!(version.len(), 7, "a baked version is seven characters");
    let mut bytes = std::fs::read(components::TEST_POLICY).unwrap();
    let marker = b"moat-test-policy-version:";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("the marker is in the component");
    bytes[at + marker.len()..at + marker.len() + 7].copy_from_slice(version.as_bytes());
    bytes
}

fn version(n: u32) -> String {
    format!("{n:07}")
}

/// The gate: anonymous clients in; `t/#` allowed (cached); `v/<version>` allowed only for the
/// version baked in; subscriptions to `t/#` and `s/#` allowed.
fn gate() -> PluginConfig {
    test_policy(
        "gate",
        json!({
            "auth": {"anonymous": "allow"},
            "version_topic": "v",
            "publish": [{"filter": "t/#", "verdict": "allow", "cache": 60}],
            "subscribe": [{"filter": "t/#", "verdict": "allow"}, {"filter": "s/#", "verdict": "allow"}],
        }),
    )
}

/// A QoS 1 PUBLISH and the reason code of its PUBACK.
async fn publish1(c: &mut RawClient, topic: &str, id: u16) -> ReasonCode {
    c.send(&raw_publish(topic, b"x", QoS::AtLeastOnce, Some(id)))
        .await;
    loop {
        match c.recv().await {
            Some(Packet::PubAck(r)) if r.packet_id == id => return r.reason_code,
            Some(_) => {}
            None => panic!("the connection closed while waiting for PUBACK {id}"),
        }
    }
}

/// Asserts that `v/<allowed>` is allowed (0x10 No matching subscribers: nobody listens
/// there) and `v/<denied>` denied, right now.
async fn policy_is(c: &mut RawClient, allowed: &str, denied: &str) {
    assert_eq!(
        publish1(c, &format!("v/{allowed}"), 1).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS,
        "version {allowed} serves"
    );
    assert_eq!(
        publish1(c, &format!("v/{denied}"), 2).await,
        ReasonCode::NOT_AUTHORIZED,
        "version {denied} no longer serves"
    );
}

async fn start_gate(tweak: impl FnOnce(&mut moat::Config)) -> TestBroker {
    start_with(|c| {
        c.plugin_chain = vec![gate()];
        c.admin.token = Some(TOKEN.into());
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
        tweak(c);
    })
    .await
}

fn api(b: &TestBroker) -> AdminClient {
    AdminClient::new(b.broker.admin_addr().expect("the admin API runs"), TOKEN)
}

async fn call(api: &AdminClient, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let (status, text) = api.request(method, path, body).await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// A swap returns once the new generation serves: the very next publish is decided by it,
/// and an allow the old one gave (cached for a minute) no longer counts.
#[tokio::test]
async fn a_replacement_decides_every_publish_after_the_swap_returns() {
    let b = start_gate(|_| {}).await;
    let control = b.broker.control().unwrap();
    let mut c = RawClient::connected(b.addr, V5, "prober", true).await;
    policy_is(&mut c, "0000000", "0000001").await;
    for n in 1..=3 {
        let swapped = control
            .replace("gate", Some(versioned(&version(n))))
            .await
            .expect("the swap succeeds");
        assert_eq!(swapped.generation, u64::from(n) + 1);
        assert!(swapped.drained, "{swapped:?}");
        policy_is(&mut c, &version(n), &version(n - 1)).await;
    }
    b.stop().await;
}

/// Invalid Wasm, a component whose `init` fails and one that traps on its first call are all
/// refused, with the error, and the old generation keeps serving.
#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_policy_keeps_serving() {
    let b = start_gate(|_| {}).await;
    let control = b.broker.control().unwrap();
    let mut c = RawClient::connected(b.addr, V5, "prober", true).await;
    let broken: [(Vec<u8>, &str); 3] = [
        (
            b"\0asm\x0d\0\x01\0 not really".to_vec(),
            "not a valid WebAssembly component",
        ),
        (versioned("initerr"), "init failed"),
        (versioned("trapped"), "self-check: authorize-publish"),
    ];
    for (bytes, why) in broken {
        let e = control.replace("gate", Some(bytes)).await.unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
        assert_eq!(
            b.broker.plugins().unwrap().slots()[0].generation().number,
            1
        );
        policy_is(&mut c, "0000000", "0000001").await;
    }
    // Through the API: 422 with the reason, nothing changed.
    let (status, body) = call(&api(&b), "PUT", "/plugins/gate", versioned("trapped")).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("self-check"),
        "{body}"
    );
    policy_is(&mut c, "0000000", "0000001").await;
    b.stop().await;
}

/// The API wants the token and a Host that names it; it lists, loads, reorders, replaces and
/// unloads plugins, never shows their configuration, and serves Prometheus metrics.
#[tokio::test]
async fn the_admin_api_changes_the_chain_and_keeps_secrets() {
    let b = start_with(|c| {
        let mut users = gate();
        users.config.insert(
            "auth".into(),
            json!({"users": {"alice": {"password": "s3cret-pass"}}, "anonymous": "allow"}),
        );
        c.plugin_chain = vec![users];
        c.admin.token = Some(TOKEN.into());
        c.admin.bind = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let addr = b.broker.admin_addr().unwrap();
    let api = api(&b);

    let (status, _) = call(
        &AdminClient::new(addr, "not-the-token-at-all"),
        "GET",
        "/plugins",
        vec![],
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(raw_http(addr, "GET /plugins", "evil.example").await, 421);
    assert_eq!(
        raw_http(addr, "GET /healthz", &format!("localhost:{}", addr.port())).await,
        200
    );
    assert_eq!(raw_http(addr, "GET /readyz", &addr.to_string()).await, 200);

    let (status, list) = call(&api, "GET", "/plugins", vec![]).await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "gate");
    assert_eq!(list[0]["generation"], 1);
    assert_eq!(
        list[0]["sha256"],
        moat::policy::wasm::sha256_hex(&versioned("0000000"))
    );
    assert!(!list.to_string().contains("s3cret-pass"), "{list}");

    let (status, s) = call(&api, "PUT", "/plugins/gate", versioned("0000002")).await;
    assert_eq!((status, s["generation"].clone()), (200, json!(2)), "{s}");

    let load = json!({"path": components::TEST_POLICY, "config": {"auth": {"anonymous": "next"}}});
    let (status, s) = call(
        &api,
        "POST",
        "/plugins/second?position=0",
        load.to_string().into(),
    )
    .await;
    assert_eq!(status, 200, "{s}");
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = call(&api, "GET", "/plugins", vec![]).await;
    assert_eq!(names(&list), ["second", "gate"]);
    let (status, _) = call(&api, "POST", "/plugins/second", vec![]).await;
    assert_eq!(status, 409, "a second plugin of the same name");
    let order = json!({"order": ["gate", "second"]}).to_string().into();
    let (status, list) = call(&api, "PUT", "/plugins", order).await;
    assert_eq!(
        (status, names(&list)),
        (200, vec!["gate".to_owned(), "second".to_owned()])
    );
    let (status, list) = call(&api, "DELETE", "/plugins/second", vec![]).await;
    assert_eq!((status, names(&list)), (200, vec!["gate".to_owned()]));
    let (status, _) = call(&api, "DELETE", "/plugins/second", vec![]).await;
    assert_eq!(status, 404);

    // A client's decisions show in the metrics, under the generation that took them.
    let mut c = RawClient::connected(b.addr, V5, "metered", true).await;
    assert_eq!(
        publish1(&mut c, "v/0000002", 1).await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    let (status, text) = api.request("GET", "/metrics", vec![]).await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "moat_clients_connected 1",
        "moat_plugin_allows_total{plugin=\"gate\",generation=\"2\",hook=\"authorize-publish\"} 1",
        "moat_plugin_call_duration_seconds_count{plugin=\"gate\",generation=\"2\",hook=\"authorize-publish\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }

    // Clients: listed, kicked (0x98, session kept), banned (0x8A at CONNECT).
    let (_, clients) = call(&api, "GET", "/clients", vec![]).await;
    assert_eq!(clients[0]["client_id"], "metered");
    assert_eq!(clients[0]["authenticated_by"], "gate");
    let (status, _) = call(&api, "POST", "/clients/metered/kick", vec![]).await;
    assert_eq!(status, 200);
    c.expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION).await;
    let (status, _) = call(&api, "POST", "/clients/metered/ban", vec![]).await;
    assert_eq!(status, 200);
    let (_, ack) = RawClient::handshake(
        b.addr,
        crate::harness::raw_connect_packet(V5, "metered", true),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::BANNED);
    let (status, _) = call(&api, "DELETE", "/clients/metered/ban", vec![]).await;
    assert_eq!(status, 200);
    let mut again = RawClient::connected(b.addr, V5, "metered", true).await;
    let (status, n) = call(&api, "POST", "/clients/reauthenticate?plugin=gate", vec![]).await;
    assert_eq!((status, n["disconnected"].clone()), (200, json!(1)));
    again
        .expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    b.stop().await;
}

/// The status code of a bare HTTP/1.1 request with the token and `host` as Host.
async fn raw_http(addr: std::net::SocketAddr, request_line: &str, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{request_line} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Unloading the plugin that authenticated a client disconnects it (0x98) and keeps its
/// session; it reconnects through the chain as it now is. Clients of other plugins stay.
#[tokio::test]
async fn unloading_the_authenticating_plugin_sends_its_clients_to_authenticate_again() {
    let users = |name: &str| {
        test_policy(
            name,
            json!({
                "auth": {"users": {"alice": {"password": "pw"}}, "unknown": "next", "anonymous": "next"},
                "publish": [{"filter": "#", "verdict": "allow"}],
            }),
        )
    };
    let anonymous = test_policy("anonymous", json!({"auth": {"anonymous": "allow"}}));
    let b = start_with(|c| c.plugin_chain = vec![users("first"), users("second"), anonymous]).await;
    let mut connect = login(V5, "alice-device", "alice", "pw");
    connect.clean_start = false;
    connect.properties = moat::codec::Properties::from(moat::codec::PropertyValues {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    let (mut alice, ack) = RawClient::handshake(b.addr, connect.clone()).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let mut other = RawClient::connected(b.addr, V311, "anonymous-one", true).await;

    b.broker.control().unwrap().unload("first").await.unwrap();
    alice
        .expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION)
        .await;
    other.expect_nothing(Duration::from_millis(300)).await;
    let (_, ack) = RawClient::handshake(b.addr, connect).await;
    assert_eq!(
        ack.reason_code,
        ReasonCode::SUCCESS,
        "authenticated by `second` now"
    );
    assert!(ack.session_present, "the session was kept");
    b.stop().await;
}

/// A broker running the plugins of the configuration file at `path`, which
/// [`moat::admin::Control::reload`] rereads.
async fn start_from_file(path: &std::path::Path) -> TestBroker {
    let config = moat::Config::load(path).unwrap();
    let b = start_with(|c| c.plugin_chain = config.plugin_chain.clone()).await;
    b.broker
        .control()
        .unwrap()
        .set_source(moat::admin::ConfigSource {
            path: Some(path.to_owned()),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
        });
    b
}

/// A configuration whose plugin declares another session-state version sends the clients it
/// authenticated to authenticate again; a configuration that does not load changes nothing.
#[tokio::test]
async fn a_reload_with_a_new_session_state_version_disconnects_that_plugins_clients() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    let write = |state_version: u32, subscribe: &str| {
        let text = format!(
            "[[plugin]]\nname = \"gate\"\nwasm = {:?}\n[plugin.config]\nstate_version = {state_version}\n\
             auth = {{ anonymous = \"allow\" }}\n\
             subscribe = [{{ filter = \"s/#\", verdict = \"{subscribe}\" }}]\n",
            components::TEST_POLICY
        );
        std::fs::write(&path, text).unwrap();
    };
    write(1, "allow");
    let b = start_from_file(&path).await;
    let control = b.broker.control().unwrap();
    let mut c = RawClient::connected(b.addr, V5, "stateful", true).await;

    std::fs::write(&path, "[[plugin]\nname = ").unwrap();
    let e = control.reload().await.unwrap_err();
    assert!(e.to_string().contains("moat.toml"), "{e}");
    c.expect_nothing(Duration::from_millis(200)).await;

    write(1, "allow");
    control.reload().await.unwrap();
    c.expect_nothing(Duration::from_millis(200)).await;

    write(2, "allow");
    control.reload().await.unwrap();
    c.expect_disconnect(ReasonCode::ADMINISTRATIVE_ACTION).await;
    b.stop().await;
}

/// After a change, live subscriptions are authorized again: a refused filter is removed; the
/// MQTT 5 client is told with DISCONNECT 0x87, the 3.1.1 client (which cannot be told) just
/// stops receiving it.
#[tokio::test]
async fn subscriptions_the_new_policy_refuses_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moat.toml");
    let write = |verdict: &str| {
        let text = format!(
            "[[plugin]]\nname = \"gate\"\nwasm = {:?}\n[plugin.config]\n\
             auth = {{ anonymous = \"allow\" }}\n\
             publish = [{{ filter = \"#\", verdict = \"allow\" }}]\n\
             subscribe = [{{ filter = \"s/#\", verdict = \"{verdict}\" }}]\n",
            components::TEST_POLICY
        );
        std::fs::write(&path, text).unwrap();
    };
    write("allow");
    let b = start_from_file(&path).await;
    let control = b.broker.control().unwrap();
    let mut v5 = RawClient::connected(b.addr, V5, "sub5", true).await;
    assert_eq!(
        v5.subscribe_one(1, "s/#", QoS::AtMostOnce).await,
        [ReasonCode::SUCCESS]
    );
    let mut v3 = RawClient::connected(b.addr, V311, "sub3", true).await;
    assert_eq!(
        v3.subscribe_one(1, "s/#", QoS::AtMostOnce).await,
        [ReasonCode::SUCCESS]
    );
    let mut publisher = RawClient::connected(b.addr, V5, "pub", true).await;

    write("deny");
    control.reload().await.unwrap();
    v5.expect_disconnect(ReasonCode::NOT_AUTHORIZED).await;
    crate::harness::eventually("the 3.1.1 subscription is gone", || {
        b.broker.metrics().subscriptions == 0
    })
    .await;
    publisher
        .send(&raw_publish("s/x", b"after", QoS::AtMostOnce, None))
        .await;
    v3.expect_nothing(Duration::from_millis(300)).await;
    b.stop().await;
}

/// A file named after a declared plugin in the watched folder replaces its component; other
/// files are ignored; a folder others may write to is refused at start.
#[tokio::test]
async fn the_watched_folder_replaces_declared_plugins() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let refused = moat::Broker::start({
        let mut c = crate::harness::test_config();
        c.plugin_chain = vec![gate()];
        c.plugins.watch_dir = Some(dir.path().to_owned());
        c
    })
    .await;
    let Err(e) = refused else {
        panic!("started with a world-writable folder")
    };
    assert!(e.to_string().contains("group or others may write"), "{e}");

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let b = start_gate(|c| {
        c.plugins.watch_dir = Some(dir.path().to_owned());
        c.plugins.watch_interval_ms = 20;
    })
    .await;
    let mut c = RawClient::connected(b.addr, V5, "prober", true).await;
    std::fs::write(dir.path().join("stranger.wasm"), versioned("0000009")).unwrap();
    drop_in(dir.path(), "gate", &versioned("0000005"));
    wait_for_hash(&b, &versioned("0000005")).await;
    policy_is(&mut c, "0000005", "0000000").await;
    assert_eq!(
        b.broker.plugins().unwrap().slots().len(),
        1,
        "stranger.wasm ignored"
    );
    b.stop().await;
}

/// Writes `bytes` aside, then renames them into place as `<name>.wasm`.
fn drop_in(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

/// Waits until the gate serves `bytes` (a compile on a busy machine can take seconds).
async fn wait_for_hash(b: &TestBroker, bytes: &[u8]) {
    let want = moat::policy::wasm::sha256_hex(bytes);
    let deadline = Instant::now() + Duration::from_secs(60);
    while moat::policy::wasm::hex(&b.broker.plugins().unwrap().slots()[0].generation().hash) != want
    {
        assert!(
            Instant::now() < deadline,
            "the folder's component never served"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The test: QoS 1 publishers and subscribers run without pause while the
/// authorize-publish plugin is replaced 24 times, through the API and the watched folder
/// alternately. No connection drops, every acknowledged message reaches every subscriber, and
/// after each swap returns the new version's policy decides at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dozen_swaps_under_qos1_load_lose_nothing() {
    const PUBLISHERS: usize = 3;
    const SUBSCRIBERS: usize = 2;
    const WINDOW: u64 = 64;
    const SWAPS: u32 = 24;
    let dir = tempfile::tempdir().unwrap();
    let b = start_gate(|c| {
        c.plugins.watch_dir = Some(dir.path().to_owned());
        c.plugins.watch_interval_ms = 20;
    })
    .await;
    let addr = b.addr;
    let stop = Arc::new(AtomicBool::new(false));

    let mut subscribers = Vec::new();
    for s in 0..SUBSCRIBERS {
        let mut c = RawClient::connected(addr, V5, &format!("load-sub-{s}"), true).await;
        // Granted QoS 1.
        assert_eq!(
            c.subscribe_one(1, "t/#", QoS::AtLeastOnce).await,
            [ReasonCode(1)]
        );
        let stop = stop.clone();
        subscribers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut quiet_since = None;
            loop {
                match c.recv_within(Duration::from_millis(100)).await {
                    Some(Packet::Publish(p)) => {
                        quiet_since = None;
                        let id = p.packet_id.expect("QoS 1");
                        c.send(&Packet::PubAck(PubResponse {
                            packet_id: id,
                            reason_code: ReasonCode::SUCCESS,
                            properties: Default::default(),
                        }))
                        .await;
                        seen.insert(String::from_utf8(p.payload.to_vec()).unwrap());
                    }
                    Some(other) => panic!("subscriber {s}: unexpected {other:?}"),
                    None => {
                        // Quiet (or closed: the final check tells them apart).
                        if stop.load(Ordering::Acquire) {
                            let since = *quiet_since.get_or_insert_with(Instant::now);
                            if since.elapsed() > Duration::from_secs(1) {
                                return (seen, c);
                            }
                        }
                    }
                }
            }
        }));
    }

    let acked = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut c = RawClient::connected(addr, V5, &format!("load-pub-{p}"), true).await;
        let (stop, acked) = (stop.clone(), acked.clone());
        publishers.push(tokio::spawn(async move {
            let (mut sent, mut done) = (0u64, 0u64);
            while !(stop.load(Ordering::Acquire) && done == sent) {
                while sent - done < WINDOW && !stop.load(Ordering::Acquire) {
                    let id = (sent % 65_535) as u16 + 1;
                    let payload = format!("{p}:{sent}");
                    c.send(&raw_publish(
                        &format!("t/{p}"),
                        payload.as_bytes(),
                        QoS::AtLeastOnce,
                        Some(id),
                    ))
                    .await;
                    sent += 1;
                }
                match c.recv().await {
                    Some(Packet::PubAck(r)) => {
                        assert_eq!(r.reason_code, ReasonCode::SUCCESS, "publisher {p}: {r:?}");
                        done += 1;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("publisher {p}: expected PUBACK, got {other:?}"),
                }
            }
            (p, sent, c)
        }));
    }

    // The swaps, with a probe after each.
    let api = api(&b);
    let mut probe = RawClient::connected(addr, V5, "prober", true).await;
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    for n in 1..=SWAPS {
        // Four versions in turn: the first round compiles, later ones hit the compile cache.
        let v = version(n % 4 + 1);
        let before = version((n - 1) % 4 + 1);
        let before = if n == 1 { version(0) } else { before };
        let bytes = versioned(&v);
        let t = Instant::now();
        if n % 2 == 0 {
            let (status, s) = call(&api, "PUT", "/plugins/gate", bytes).await;
            assert_eq!(status, 200, "swap {n}: {s}");
        } else {
            drop_in(dir.path(), "gate", &bytes);
            wait_for_hash(&b, &bytes).await;
        }
        longest = longest.max(t.elapsed());
        policy_is(&mut probe, &v, &before).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);

    let mut total = 0;
    let mut publisher_clients = Vec::new();
    for task in publishers {
        let (p, sent, c) = task.await.expect("a publisher ran to the end");
        total += sent;
        publisher_clients.push((p, sent, c));
    }
    for task in subscribers {
        let (seen, mut c) = task.await.expect("a subscriber ran to the end");
        for (p, sent, _) in &publisher_clients {
            for i in 0..*sent {
                assert!(
                    seen.contains(&format!("{p}:{i}")),
                    "message {p}:{i} was lost"
                );
            }
        }
        c.expect_nothing(Duration::from_millis(10)).await;
    }
    for (_, _, mut c) in publisher_clients {
        c.expect_nothing(Duration::from_millis(10)).await;
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    eprintln!(
        "{SWAPS} swaps in {elapsed:?} (longest {longest:?}); {total} QoS 1 messages, {rate:.0}/s \
         acknowledged, each delivered to {SUBSCRIBERS} subscribers"
    );
    // (The probe's refused publishes count as drops, NotAuthorized; nothing else may.)
    let m = b.broker.metrics();
    for cause in [
        DropCause::QueueFull,
        DropCause::Expired,
        DropCause::TooLargeForClient,
    ] {
        assert_eq!(m.dropped_by(cause), 0, "{cause:?}");
    }
    b.stop().await;
}
