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
//! Run with `cargo bench -p moat --bench policy` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use bytestring::ByteString;
use criterion::{Criterion, criterion_group, criterion_main};
use moat::codec::{ProtocolVersion, QoS};
use moat::message::{Message, MessageProperties};
use moat::policy::cache::{Action, DecisionCache};
use moat::policy::chain::Chain;
use moat::policy::wasm::{Harness, Limits, bundled};
use moat::policy::{ClientInfo, Identity, Policy, PublishKind, Verdict};

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
    Arc::new(Message {
        topic: ByteString::from(topic),
        payload: Bytes::from(vec![7u8; 64]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        received: Instant::now(),
        expiry: None,
        publisher: None,
    })
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
    g.bench_function("uncached, Rust plugin", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                plugin
                    .authorize_publish(&client, &identity, PublishKind::Message, &msg)
                    .await
                    .unwrap(),
            )
        })
    });

    // The same plugin as the default chain runs it, and a session's cache in front.
    let cache_dir = tempfile::tempdir().unwrap();
    let mut config = moat::Config::default();
    config.plugins.cache_dir = Some(cache_dir.path().to_owned());
    let chain = rt
        .block_on(Chain::load(&config))
        .expect("the default chain loads");
    let mut chain_identity = (*identity).clone();
    chain_identity.authenticated_by = Some(Arc::from("allow-anonymous"));
    let chain_identity = Arc::new(chain_identity);
    g.bench_function("uncached, through the chain", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                chain
                    .authorize_publish(&client, &chain_identity, PublishKind::Message, &msg)
                    .get()
                    .await,
            )
        })
    });
    let Verdict::Allow(grant) = rt.block_on(
        chain
            .authorize_publish(&client, &chain_identity, PublishKind::Message, &msg)
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
                black_box(&chain as &dyn Policy),
                Action::Publish,
                black_box(topic),
                QoS::AtLeastOnce,
                false,
                now,
            )
        })
    });

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
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                black_box(
                    plugin
                        .authorize_publish(&client, &identity, PublishKind::Message, &msg)
                        .await
                        .unwrap(),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
