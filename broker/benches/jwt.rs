//! What a CONNECT's authentication through the bundled `jwt` plugin costs: one `authenticate`
//! call with the token in the password, verified with a key from the configuration (HS256
//! with a shared secret, RS256 with a 2048-bit RSA public key), the claims checked and the
//! session's permissions built. Through the broker's own host (pool, CPU budget, timeout,
//! records), as the chain calls it; no network (the key set case differs only by the first
//! fetch, which the cache then saves).
//!
//! The tokens and keys are the test fixtures (`tests/fixtures/jwt/bench-tokens.json`).
//! Run with `cargo bench -p moat --bench jwt` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use moat::policy::wasm::{Answer, AuthStep, Harness, bundled};
use serde_json::{Value, json};

fn fixture(file: &str) -> String {
    let path = format!(
        "{}/../tests/fixtures/jwt/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn authenticate(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tokens: Value = serde_json::from_str(&fixture("bench-tokens.json")).unwrap();
    let wasm = bundled::get("jwt").expect("jwt is bundled");
    let cases = [
        (
            "HS256",
            json!({"keys": [{"secret": tokens["secret"]}]}),
            tokens["HS256"].as_str().unwrap(),
        ),
        (
            "RS256",
            json!({"keys": [{"kid": tokens["RS256_kid"], "alg": "RS256",
                             "pem": fixture(tokens["RS256_public_pem"].as_str().unwrap())}]}),
            tokens["RS256"].as_str().unwrap(),
        ),
    ];
    let client = Harness::client("bench-client", None);
    let mut g = c.benchmark_group("jwt authenticate");
    for (name, config, token) in cases {
        let plugin = rt
            .block_on(Harness::load(wasm, &config.to_string()))
            .expect("jwt loads");
        let credentials = Harness::password(token);
        match rt.block_on(plugin.authenticate(&client, &credentials)) {
            Ok(Answer::Decided(AuthStep::Allow { .. })) => {}
            other => panic!("{name}: the token is refused: {other:?}"),
        }
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(plugin.authenticate(&client, &credentials).await) })
        });
    }
    g.finish();
}

criterion_group!(benches, authenticate);
criterion_main!(benches);
