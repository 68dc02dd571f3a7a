//! What one authorize-publish decision costs, from the floor up:
//!
//! - `native`: the same topic-ACL check written in Rust, no plugin at all (the floor a
//!   decision cache should approach);
//! - `cache hit`: a session's `DecisionCache` answering, with the chain's stamp check;
//! - `uncached, Rust plugin`: one call into the bundled `allow-anonymous` plugin
//!   (wasm32-wasip2, through the broker's own host: pool, CPU budget, timeout, records);
//! - `uncached, through the chain`: the same question through `Chain`, as a session asks it
//!   (the boxed future included);
//! - `uncached, Python plugin` / `JavaScript plugin`: the tenant-isolation examples of
//!   `plugins/examples`, when their components have been built (by the tests or `.ci/run`;
//!   see `docs/writing-plugins.md`) and are named by `MOAT_BENCH_PYTHON_PLUGIN` /
//!   `MOAT_BENCH_JS_PLUGIN`, or found in `target/wasm-plugins/examples/`.
//!
//! And through the bundled `static-acl` plugin (group `static-acl authorize-publish`), on a
//! Mosquitto ACL file of realistic size (1000 users with three rules each, two `pattern`
//! lines): `uncached, plugin`, `uncached, through the chain` and `cache hit` as above.
//!
//! Run with `cargo bench -p moat --bench policy` (add `-- --quick` for a fast pass).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use moat::codec::{ProtocolVersion, QoS};
use moat::config::{Grants, PasswordGrant, PluginConfig};
use moat::message::Message;
use moat::policy::cache::{Action, DecisionCache};
use moat::policy::chain::Chain;
use moat::policy::wasm::{Answer, AuthStep, Harness, Limits, bundled};
use moat::policy::{AuthOutcome, ClientInfo, Credentials, Identity, Policy, PublishKind, Verdict};

fn client() -> Arc<ClientInfo> {
    Arc::new(ClientInfo {
        client_id: ByteString::from("sensor-0042"),
        username: Some(ByteString::from("alice")),
        remote_addr: "127.0.0.1:50123".parse().unwrap(),
        listener: Arc::from("default"),
        protocol: ProtocolVersion::V5,
        tls: None,
    })
}

fn message(topic: &str) -> Arc<Message> {
    Arc::new(Harness::message(topic, &[7u8; 64]))
}

/// The identity allow-anonymous gives its clients (its session state marks them).
fn anonymous(rt: &tokio::runtime::Runtime, plugin: &Harness) -> Identity {
    let outcome = rt.block_on(plugin.authenticate(&client(), &Default::default()));
    match outcome {
        Ok(moat::policy::wasm::Answer::Decided(moat::policy::wasm::AuthStep::Allow {
            identity,
            ..
        })) => identity,
        other => panic!("allow-anonymous refused: {other:?}"),
    }
}

/// The check a native ACL would make: the client's own subtree.
/// One uncached `authorize-publish` into `plugin`, straight through the harness.
fn bench_uncached(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    rt: &tokio::runtime::Runtime,
    plugin: &Harness,
    client: &Arc<ClientInfo>,
    identity: &Arc<Identity>,
    msg: &Arc<Message>,
) {
    g.bench_function(name, |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                plugin
                    .authorize_publish(client, identity, PublishKind::Message, msg)
                    .await
                    .unwrap(),
            )
        })
    });
}

fn native_check(client: &ClientInfo, topic: &str) -> bool {
    let rule = moat::topic::expand_pattern("tenants/%u/#", |k| match k {
        "username" => client.username.as_deref(),
        _ => None,
    });
    rule.is_some_and(|r| moat::topic::matches(&r, topic))
}

fn example_plugin(env: &str, file: &str) -> Option<(PathBuf, String)> {
    let path = std::env::var_os(env).map(PathBuf::from).or_else(|| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm-plugins/examples")
            .join(file);
        p.is_file().then_some(p)
    })?;
    let config = r#"{"users": {"alice": {"password": "secret", "tenant": "alice"}}}"#;
    Some((path, config.to_owned()))
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let topic = "tenants/alice/site3/line2/temperature";
    let client = client();
    let msg = message(topic);
    let mut g = c.benchmark_group("authorize-publish");

    g.bench_function("native", |b| {
        b.iter(|| native_check(black_box(&client), black_box(topic)))
    });

    // The bundled Rust plugin, called directly.
    let bytes = bundled::get("allow-anonymous").expect("bundled");
    let plugin = rt
        .block_on(Harness::load(bytes, r#"{"listeners": ["default"]}"#))
        .expect("loads");
    let identity = Arc::new(anonymous(&rt, &plugin));
    bench_uncached(
        &mut g,
        "uncached, Rust plugin",
        &rt,
        &plugin,
        &client,
        &identity,
        &msg,
    );

    // The same plugin as the default chain runs it, and a session's cache in front.
    let cache_dir = tempfile::tempdir().unwrap();
    let mut config = moat::Config::default();
    config.plugins.cache_dir = Some(cache_dir.path().to_owned());
    let chain = rt
        .block_on(Chain::load(&config))
        .expect("the default chain loads");
    let mut chain_identity = (*identity).clone();
    chain_identity.authenticated_by = Some(Arc::from("allow-anonymous"));
    chain_and_cache(
        &mut g,
        &rt,
        &chain,
        &client,
        &Arc::new(chain_identity),
        &msg,
    );

    for (name, env, file) in [
        (
            "uncached, Python plugin",
            "MOAT_BENCH_PYTHON_PLUGIN",
            "tenant_python.wasm",
        ),
        (
            "uncached, JavaScript plugin",
            "MOAT_BENCH_JS_PLUGIN",
            "tenant_js.wasm",
        ),
    ] {
        let Some((path, config)) = example_plugin(env, file) else {
            eprintln!("{name}: skipped (no component; set {env})");
            continue;
        };
        // The JavaScript engine's heap settles between 64 and 80 MiB after some 100k calls
        // (the default cap of 64 MiB stops it there): give both the limit the docs advise.
        let limits = Limits {
            memory_bytes: 128 << 20,
            ..Limits::default()
        };
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let plugin = rt
            .block_on(Harness::load_with(&bytes, &config, limits))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let identity = match rt.block_on(plugin.authenticate(&client, &Harness::password("secret")))
        {
            Ok(moat::policy::wasm::Answer::Decided(moat::policy::wasm::AuthStep::Allow {
                identity,
                ..
            })) => Arc::new(identity),
            other => panic!("{name}: alice is refused: {other:?}"),
        };
        bench_uncached(&mut g, name, &rt, &plugin, &client, &identity, &msg);
    }
    g.finish();
}

/// `uncached, through the chain` and `cache hit`: `chain` asked as a session asks it, and a
/// session's cache holding its allow.
fn chain_and_cache(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    chain: &Chain,
    client: &Arc<ClientInfo>,
    identity: &Arc<Identity>,
    msg: &Arc<Message>,
) {
    g.bench_function("uncached, through the chain", |b| {
        b.to_async(rt).iter(|| async {
            black_box(
                chain
                    .authorize_publish(client, identity, PublishKind::Message, msg)
                    .get()
                    .await,
            )
        })
    });
    let Verdict::Allow(grant) = rt.block_on(
        chain
            .authorize_publish(client, identity, PublishKind::Message, msg)
            .get(),
    ) else {
        panic!("the chain allows");
    };
    let mut cache = DecisionCache::default();
    let now = Instant::now();
    cache.remember(
        256,
        Action::Publish,
        &msg.topic,
        msg.qos,
        msg.retain,
        &grant,
        now,
        None,
    );
    g.bench_function("cache hit", |b| {
        b.iter(|| {
            cache.allows(
                black_box(chain as &dyn Policy),
                Action::Publish,
                black_box(&msg.topic),
                QoS::AtLeastOnce,
                false,
                now,
            )
        })
    });
}

/// `mosquitto_passwd -b FILE alice secret` (Mosquitto 2.0.11).
const ALICE: &str = "alice:$7$101$x64vlE9tFDfUPVja$SzAZL9kw8opBaXYhXSXE+pvjeCyHFHJOMvSx4G05\
                     FRfQ4z45nQ/tUvq3dYstFZy986Vez1N0SA1+sPxlIMyZBg==";

/// A password file with alice and an ACL file with 1000 users (alice the 501st).
fn static_acl_files(dir: &std::path::Path) -> Grants {
    use std::fmt::Write as _;
    let passwd = dir.join("passwd");
    let acl = dir.join("acl");
    std::fs::write(&passwd, format!("{ALICE}\n")).unwrap();
    let mut text = String::from("topic read public/#\n");
    for i in 0..1000 {
        let user = if i == 500 {
            "alice".to_owned()
        } else {
            format!("user{i}")
        };
        writeln!(
            text,
            "user {user}\ntopic readwrite plant/{i}/#\ntopic read status/#\n\
             topic deny plant/{i}/safety/#\n"
        )
        .unwrap();
    }
    text.push_str("pattern readwrite devices/%c/#\npattern read inbox/%u/#\n");
    std::fs::write(&acl, text).unwrap();
    Grants {
        files: Some(BTreeMap::from([
            ("passwd".to_owned(), passwd),
            ("acl".to_owned(), acl),
        ])),
        password: Some(PasswordGrant { pool_size: 1 }),
        ..Grants::default()
    }
}

fn static_acl(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let grants = static_acl_files(dir.path());
    let config_json = r#"{"password_file": "passwd", "acl_file": "acl"}"#;
    let credentials = Credentials {
        password: Some(Bytes::from_static(b"secret")),
        ..Credentials::default()
    };
    let client = client();
    // alice's own subtree: the walk passes her rules, the deny rule and the patterns.
    let msg = message("plant/500/line2/temperature");
    let mut g = c.benchmark_group("static-acl authorize-publish");

    let bytes = bundled::get("static-acl").expect("static-acl is bundled");
    let plugin = rt
        .block_on(Harness::load_with_grants(
            bytes,
            config_json,
            Limits::default(),
            &grants,
        ))
        .expect("loads");
    let identity = match rt.block_on(plugin.authenticate(&client, &credentials)) {
        Ok(Answer::Decided(AuthStep::Allow { identity, .. })) => Arc::new(identity),
        other => panic!("alice is refused: {other:?}"),
    };
    bench_uncached(
        &mut g,
        "uncached, plugin",
        &rt,
        &plugin,
        &client,
        &identity,
        &msg,
    );

    let cache_dir = tempfile::tempdir().unwrap();
    let mut config = moat::Config::default();
    config.plugins.cache_dir = Some(cache_dir.path().to_owned());
    let serde_json::Value::Object(plugin_config) = serde_json::from_str(config_json).unwrap()
    else {
        unreachable!("a JSON object")
    };
    config.plugin_chain = vec![PluginConfig {
        name: "files".into(),
        bundled: Some("static-acl".into()),
        grants,
        config: plugin_config,
        ..PluginConfig::default()
    }];
    let chain = rt.block_on(Chain::load(&config)).expect("the chain loads");
    let identity = match rt.block_on(chain.authenticate(&client, credentials).get()) {
        AuthOutcome::Allow { identity, .. } => Arc::new(identity),
        other => panic!("alice is refused by the chain: {other:?}"),
    };
    chain_and_cache(&mut g, &rt, &chain, &client, &identity, &msg);
    g.finish();
}

criterion_group!(benches, decisions, static_acl);
criterion_main!(benches);
