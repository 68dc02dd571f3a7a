//! moat-bench with credentials (`--username`, `--password`, what `compare.sh --auth` uses)
//! against a broker that admits nobody without them: the bundled static-acl plugin on a
//! Mosquitto password file and ACL file. Credentials are process-wide in moat-bench, so this
//! is its own test binary.

use std::collections::BTreeMap;
use std::time::Duration;

use moat::config::{Grants, PasswordGrant, PluginConfig};
use moat::{Broker, Config};
use moat_bench::{ConnConfig, PubSubConfig, connections, scenario};

/// `mosquitto_passwd -b FILE bench secret` (Mosquitto 2.0.11, `$7$`, 101 iterations).
const PASSWD: &str = "bench:$7$101$x64vlE9tFDfUPVja$SzAZL9kw8opBaXYhXSXE+pvjeCyHFHJOMvSx4G05\
                      FRfQ4z45nQ/tUvq3dYstFZy986Vez1N0SA1+sPxlIMyZBg==\n";
const ACL: &str = "user bench\ntopic readwrite moat-bench/#\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_authenticate_with_the_given_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("passwd"), PASSWD).unwrap();
    std::fs::write(dir.path().join("acl"), ACL).unwrap();
    let files: BTreeMap<String, _> = ["passwd", "acl"]
        .into_iter()
        .map(|n| (n.to_string(), dir.path().join(n)))
        .collect();
    let serde_json::Value::Object(plugin_config) =
        serde_json::json!({"password_file": "passwd", "acl_file": "acl"})
    else {
        unreachable!()
    };
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    config.plugin_chain = vec![PluginConfig {
        name: "users".into(),
        bundled: Some("static-acl".into()),
        grants: Grants {
            files: Some(files),
            password: Some(PasswordGrant { pool_size: 1 }),
            ..Grants::default()
        },
        config: plugin_config,
        authorize_timeout_ms: 2000,
        ..PluginConfig::default()
    }];
    let broker = Broker::start(config).await.expect("broker starts");
    let addr = broker.local_addr();

    // Without credentials the broker refuses every connection...
    let mut conns = ConnConfig::new(addr, 5);
    conns.hold = Duration::ZERO;
    let refused = connections::run(&conns).await.expect("connections run");
    assert_eq!((refused.connected, refused.failed), (0, 5));

    // ...with them, connects and a QoS 1 fan-in go through, every message accounted for.
    moat_bench::wire::set_credentials("bench", Some("secret"));
    let admitted = connections::run(&conns).await.expect("connections run");
    assert_eq!((admitted.connected, admitted.failed), (5, 0));
    let mut fan_in = PubSubConfig::fan_in(addr, 2);
    fan_in.qos = 1;
    fan_in.rate = Some(1_000.0);
    fan_in.duration = Duration::from_millis(300);
    fan_in.warmup = Duration::from_millis(100);
    let r = scenario::run(&fan_in).await.expect("fan-in runs");
    assert!(r.sent > 0);
    assert_eq!((r.delivered, r.lost), (r.sent, 0));

    broker.shutdown(Duration::from_secs(1)).await;
}
