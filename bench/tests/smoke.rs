//! Smoke test of the load generator, for CI: an in-process moat broker, a tiny fan-in, fan-out
//! and connections run through moat-bench's library API, and the books must balance (every
//! message sent arrives once at every subscriber of its topic, none lost, none twice).
//!
//! Rates are low and runs short (well under a second each) so that the test is quick and
//! passes on a busy machine: it checks that the generator works, not how fast anything is.

use std::net::SocketAddr;
use std::time::Duration;

use moat::{Broker, Config};
use moat_bench::{ConnConfig, PubSubConfig, PubSubReport, connections, scenario};

async fn start_broker() -> (Broker, SocketAddr) {
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addr();
    (broker, addr)
}

/// Short, fixed-rate settings: nothing a broker could be excused for dropping.
fn quick(mut cfg: PubSubConfig, qos: u8) -> PubSubConfig {
    cfg.qos = qos;
    cfg.rate = Some(2_000.0);
    cfg.duration = Duration::from_millis(400);
    cfg.warmup = Duration::from_millis(100);
    cfg.drain = Duration::from_secs(3);
    cfg
}

fn assert_balanced(r: &PubSubReport, subscribers_per_message: u64) {
    let c = &r.config;
    assert!(r.sent > 0, "{}: nothing sent", c.name);
    assert_eq!(r.expected, r.sent * subscribers_per_message, "{}", c.name);
    assert_eq!(r.delivered, r.expected, "{}: delivered", c.name);
    assert_eq!(r.lost, 0, "{}: lost", c.name);
    assert_eq!(r.duplicates, 0, "{}: duplicates", c.name);
    assert_eq!(r.foreign, 0, "{}: foreign", c.name);
    if c.qos > 0 {
        assert_eq!(r.acked, r.sent, "{}: acknowledged", c.name);
        assert_eq!(r.unacked, 0, "{}: unacknowledged", c.name);
    }
    assert!(r.latency_us.samples > 0, "{}: no latency samples", c.name);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.p99);
    // About 2000 msg/s over 0.4 s, give or take the start: the timeline was followed.
    assert!((600..=900).contains(&r.sent), "{}: sent {}", c.name, r.sent);
    // The JSON form is what compare.sh consumes.
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["kind"], "pubsub");
    assert!(json["latency_us"]["p99"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_fan_out_and_connections_balance() {
    let (broker, addr) = start_broker().await;

    let fan_in = scenario::run(&quick(PubSubConfig::fan_in(addr, 3), 1))
        .await
        .expect("fan-in runs");
    assert_balanced(&fan_in, 1);

    let mut fan_out = quick(PubSubConfig::fan_out(addr, 3), 2);
    fan_out.mqtt = 5;
    let fan_out = scenario::run(&fan_out).await.expect("fan-out runs");
    assert_balanced(&fan_out, 3);

    let mut conns = ConnConfig::new(addr, 50);
    conns.hold = Duration::ZERO;
    let conns = connections::run(&conns).await.expect("connections run");
    assert_eq!((conns.connected, conns.failed), (50, 0));
    assert!(conns.connects_per_sec > 0.0);

    broker.shutdown(Duration::from_secs(1)).await;

    // TLS is process-wide in moat-bench, so the TLS runs come last, in this same test (a
    // second test in this binary would run concurrently and find TLS switched on).
    tls_runs().await;
}

/// The same scenarios over TLS: a broker with a TLS listener whose certificate comes from a
/// CA made here, and moat-bench trusting that CA.
async fn tls_runs() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_path = write("ca.pem", ca.pem());
    let tls = moat::config::TlsConfig::new(
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    );
    let mut config = Config::default();
    config.listeners = vec![moat::config::ListenerConfig {
        protocol: moat::config::Protocol::Tls,
        tls: Some(tls),
        ..moat::config::ListenerConfig::tcp("tls", "127.0.0.1:0".parse().unwrap())
    }];
    config.sys.interval = Duration::ZERO;
    let broker = Broker::start(config).await.expect("TLS broker starts");
    let addr = broker.local_addr();
    moat_bench::transport::set_tls(&moat_bench::transport::TlsOptions {
        ca: &ca_path,
        server_name: "localhost",
        cert: None,
        key: None,
        resume: false,
    })
    .unwrap();

    let fan_in = scenario::run(&quick(PubSubConfig::fan_in(addr, 2), 1))
        .await
        .expect("fan-in over TLS runs");
    assert_balanced(&fan_in, 1);
    let mut conns = ConnConfig::new(addr, 20);
    conns.hold = Duration::ZERO;
    let conns = connections::run(&conns).await.expect("TLS connections run");
    assert_eq!((conns.connected, conns.failed), (20, 0));
    assert!(
        broker.metrics().sockets_accepted >= 20 + 3,
        "the runs went through the TLS listener"
    );
    broker.shutdown(Duration::from_secs(1)).await;
}
