//! What replacing a plugin while decisions flow costs: the swap's own latency (prepare,
//! self-check, install, drain) and the worst stall of an authorize-publish decided meanwhile,
//! for a component already compiled (the compile cache has it: a restart, or a version seen
//! before) and for one never seen (compiled during the swap, competing with the deciders for
//! the cores).
//!
//! Two tasks ask the chain (the bundled `allow-anonymous` plugin, uncached) without pause;
//! each round replaces the plugin with a variant of its component (the same code with a
//! custom section appended, so a distinct content hash). A swap compiles on one thread at the
//! lowest priority; the last row, for comparison, compiles variants on every core at normal
//! priority (as the start does, and as swaps did before) beside the deciders, without
//! swapping. Not a criterion benchmark: a swap is
//! a one-off event whose tail matters, so it prints the median and worst of each figure.
//!
//! Run with `cargo bench -p moat --bench swap` (`SWAP_ROUNDS=N` for another number of swaps
//! of each kind than 20).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytestring::ByteString;
use moat::codec::ProtocolVersion;
use moat::policy::chain::Chain;
use moat::policy::wasm::{Harness, bundled};
use moat::policy::{AuthOutcome, ClientInfo, Policy, PublishKind};

const ROUNDS: u64 = 20;
const DECIDERS: usize = 2;
/// The issue's target: no publish stalled longer.
const STALL: Duration = Duration::from_millis(20);

/// `base` with a custom section carrying `n`: a valid component with another hash.
fn variant(base: &[u8], n: u64) -> Vec<u8> {
    let name = b"moat-bench";
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(&n.to_le_bytes());
    let mut out = base.to_vec();
    out.push(0);
    out.push(content.len() as u8);
    out.extend_from_slice(&content);
    out
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut config = moat::Config::default();
    config.plugins.cache_dir = Some(cache.path().to_owned());
    let chain = rt
        .block_on(Chain::load(&config))
        .expect("the default chain loads");
    let client = Arc::new(ClientInfo {
        client_id: ByteString::from("bench"),
        username: None,
        remote_addr: "127.0.0.1:40000".parse().unwrap(),
        listener: Arc::from("default"),
        protocol: ProtocolVersion::V5,
        tls: None,
    });
    let identity = match rt.block_on(chain.authenticate(&client, Default::default()).get()) {
        AuthOutcome::Allow { identity, .. } => Arc::new(identity),
        other => panic!("allow-anonymous refused: {other:?}"),
    };
    let message = Arc::new(Harness::message("sensors/bench/temperature", b"21.5"));

    // The deciders: record the longest decision since the last reset, in nanoseconds, and
    // count those over `STALL` (the longest alone grows with the time watched, as the noise of
    // a shared machine accumulates; the count over the time tells a swap's doing from it).
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicU64::new(0));
    let decided = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut deciders = Vec::new();
    for _ in 0..DECIDERS {
        let (chain, client, identity, message) = (
            chain.clone(),
            client.clone(),
            identity.clone(),
            message.clone(),
        );
        let (stop, worst, stalled, decided, failed) = (
            stop.clone(),
            worst.clone(),
            stalled.clone(),
            decided.clone(),
            failed.clone(),
        );
        deciders.push(rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let v = chain
                    .authorize_publish(&client, &identity, PublishKind::Message, &message)
                    .get()
                    .await;
                if !v.is_allow() {
                    // A call that overran its timeout fails closed: count it.
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let took = t.elapsed();
                if took > STALL {
                    stalled.fetch_add(1, Ordering::Relaxed);
                }
                worst.fetch_max(took.as_nanos() as u64, Ordering::Relaxed);
                decided.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }
    let base = bundled::get("allow-anonymous").unwrap().to_vec();

    // Without swaps, for comparison.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
    worst.store(0, Ordering::Relaxed);
    stalled.store(0, Ordering::Relaxed);
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    println!(
        "no swap: worst decision {:?} over 1 s ({} decisions, {} over {STALL:?})",
        Duration::from_nanos(worst.load(Ordering::Relaxed)),
        decided.swap(0, Ordering::Relaxed),
        stalled.load(Ordering::Relaxed),
    );

    let rounds = std::env::var("SWAP_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ROUNDS);
    let load = |v: &[u8]| rt.block_on(Harness::load(v, r#"{"listeners": ["default"]}"#));
    for (n, kind) in ["precompiled", "uncompiled ", "all-cores compile, no swap"]
        .into_iter()
        .enumerate()
    {
        let offset = 1_000 * (n as u64 + 1);
        let variants: Vec<Vec<u8>> = (0..rounds).map(|n| variant(&base, offset + n)).collect();
        if n == 0 {
            for v in &variants {
                load(v).expect("the variant compiles");
            }
        }
        let (mut swaps, mut stalls, mut over) = (Vec::new(), Vec::new(), 0);
        for v in variants {
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
            worst.store(0, Ordering::Relaxed);
            stalled.store(0, Ordering::Relaxed);
            let t = Instant::now();
            if n < 2 {
                rt.block_on(chain.replace("allow-anonymous", Some(v)))
                    .expect("the swap succeeds");
            } else {
                // What a swap that compiles cost before swaps compiled in the background:
                // cranelift on every core (as at start), beside the deciders.
                load(&v).expect("the variant compiles");
            }
            swaps.push(t.elapsed());
            stalls.push(Duration::from_nanos(worst.load(Ordering::Relaxed)));
            over += stalled.load(Ordering::Relaxed);
        }
        let busy: Duration = swaps.iter().sum();
        println!(
            "{kind}: took median {:?}, worst {:?}; decision meanwhile: worst median {:?}, \
             worst {:?}; {over} decisions over {STALL:?} in {busy:?}; \
             {} decisions failed closed (timeout)",
            percentile(&mut swaps, 0.5),
            percentile(&mut swaps, 1.0),
            percentile(&mut stalls, 0.5),
            percentile(&mut stalls, 1.0),
            failed.swap(0, Ordering::Relaxed),
        );
    }
    stop.store(true, Ordering::Relaxed);
    for d in deciders {
        rt.block_on(d).unwrap();
    }
}
