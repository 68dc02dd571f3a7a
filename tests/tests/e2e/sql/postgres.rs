//! The sql plugin on a real PostgreSQL (initdb in a temporary directory, a loopback port, a
//! password-authenticated role): logins, ACL, SCRAM, the database going away and coming
//! back, and revocation within the stated time.

use std::time::Duration;

use moat::codec::{ProtocolVersion, ReasonCode};
use moat::config::Exhausted;
use serde_json::json;

use super::checks::{self, SLACK, refused_within};
use super::support::{Postgres, broker, plugin, seed};
use crate::harness::{RawClient, TestBroker, WAIT, start_with};
use crate::plugins::login;
use crate::scram::scram_login;
use crate::static_acl_broker::{connack, puback, until_connack, until_puback};

#[tokio::test]
async fn postgres_users_and_acl_decide() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&seed(dir.path())).await;
    let b = broker(plugin(pg.connection(), json!({}))).await;
    checks::logins(&b).await;
    checks::acl(&b).await;
    b.stop().await;
}

/// MQTT 5 enhanced authentication with the verifier the SCRAM query returns: the client checks
/// the server's signature; a wrong password and an unknown user fail alike (0x86).
#[tokio::test]
async fn postgres_scram_sha_256() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&seed(dir.path())).await;
    let b = broker(plugin(pg.connection(), json!({}))).await;
    assert_eq!(
        scram_login(&b, "erin", "erin-pw").await,
        (ReasonCode::SUCCESS, true)
    );
    for (user, password) in [("erin", "wrong"), ("nobody", "erin-pw")] {
        assert_eq!(
            scram_login(&b, user, password).await.0,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{user}"
        );
    }
    b.stop().await;
}

/// With the database stopped, logins get 0x88 Server unavailable and a connected client's
/// publishes 0x87 (never an allow), with a logged reason; after a restart both work again
/// without touching the broker.
#[tokio::test]
async fn postgres_down_denies_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&seed(dir.path())).await;
    let b = broker(plugin(pg.connection(), json!({"cache_seconds": 1}))).await;
    let mut alice = checks_client(&b).await;
    assert_eq!(
        puback(&mut alice, 1, "alice/x").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    pg.stop();
    assert_eq!(
        connack(&b, ProtocolVersion::V5, "alice", "alice-pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
    refused_within(&mut alice, "alice/x", WAIT).await;
    pg.resume();
    until_connack(&b, "alice", "alice-pw", ReasonCode::SUCCESS).await;
    until_puback(&mut alice, "alice/x", ReasonCode::NO_MATCHING_SUBSCRIBERS).await;
    b.stop().await;
}

/// `on_backend_error = "next"`: with the database stopped the plugin passes, and the chain's
/// end decides (here `exhausted = "allow"`, to make the pass visible: the plugin itself never
/// allows); a wrong password is still refused while the database is up.
#[tokio::test]
async fn postgres_down_passes_to_the_next_plugin_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&seed(dir.path())).await;
    let p = plugin(pg.connection(), json!({"on_backend_error": "next"}));
    let b = start_with(|c| {
        c.plugin_chain = vec![p];
        c.plugins.exhausted = Exhausted::Allow;
        c.limits.auth_failure_delay_max = Duration::ZERO;
    })
    .await;
    assert_eq!(
        connack(&b, ProtocolVersion::V5, "alice", "wrong").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    pg.stop();
    assert_eq!(
        connack(&b, ProtocolVersion::V5, "alice", "wrong").await,
        ReasonCode::SUCCESS
    );
    b.stop().await;
}

async fn checks_client(b: &TestBroker) -> RawClient {
    let (c, ack) = RawClient::handshake(
        b.addr,
        login(ProtocolVersion::V5, "alice-1", "alice", "alice-pw"),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    c
}

/// A deleted ACL row and a deleted user stop being honoured within `cache_seconds` (the
/// plugin keeps no cache of its own) for clients connected all along; a deleted user's next
/// login is refused at once.
#[tokio::test]
async fn postgres_revocation_within_cache_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&seed(dir.path())).await;
    let cache = Duration::from_secs(2);
    let b = broker(plugin(pg.connection(), json!({"cache_seconds": 2}))).await;
    let mut alice = checks_client(&b).await;
    let allowed = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(puback(&mut alice, 1, "alice/x").await, allowed);
    pg.execute("DELETE FROM acl WHERE username = 'alice' AND topic = 'alice/#'")
        .await;
    refused_within(&mut alice, "alice/x", cache + SLACK).await;

    let (mut bob, _) =
        RawClient::handshake(b.addr, login(ProtocolVersion::V5, "bob-1", "bob", "bob-pw")).await;
    assert_eq!(puback(&mut bob, 1, "bob/x").await, allowed);
    pg.execute("DELETE FROM users WHERE username = 'bob'").await;
    assert_eq!(
        connack(&b, ProtocolVersion::V5, "bob", "bob-pw").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    refused_within(&mut bob, "bob/x", cache + SLACK).await;
    b.stop().await;
}

/// TLS to PostgreSQL (`sslmode=require`): with the server's CA in the grant's `ca_file` the
/// broker connects and logins work; without it the certificate is refused (the system's roots
/// do not know that CA), so the database is unavailable (0x88), never used unverified.
#[tokio::test]
async fn postgres_over_tls_verifies_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::certs::Ca::new("moat sql test CA");
    let pg = Postgres::start_tls(&seed(dir.path()), &ca).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let mut db = pg.connection();
    db.postgres = Some(format!(
        "host=127.0.0.1 port={} user=moat dbname=postgres sslmode=require",
        pg.port
    ));
    for (ca_file, want) in [
        (Some(ca_file), ReasonCode::SUCCESS),
        (None, ReasonCode::SERVER_UNAVAILABLE),
    ] {
        let mut db = db.clone();
        db.ca_file = ca_file;
        let b = broker(plugin(db, json!({}))).await;
        assert_eq!(
            connack(&b, ProtocolVersion::V5, "alice", "alice-pw").await,
            want
        );
        b.stop().await;
    }
}

/// The PostgreSQL example of the plugin's README, configuration and SQL as written (the
/// server's address and the role's name aside), admits a user and applies its rows.
#[tokio::test]
async fn the_readme_example_works() {
    let readme = include_str!("../../../../plugins/sql/README.md");
    let block = |fence: &str| {
        readme
            .split(fence)
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("the README has a {fence} block"))
    };
    let config = moat::config::Config::from_str_named(block("```toml\n"), "plugins/sql/README.md")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut p = config.plugin_chain[0].clone();
    assert_eq!(p.bundled.as_deref(), Some("sql"));

    let pg = Postgres::start(&super::support::Seed { statements: vec![] }).await;
    // The README's role is `moat`, which the test server already has for other tests.
    let sql = block("```sql\n")
        .replace("ROLE moat", "ROLE readme")
        .replace("TO moat;", "TO readme;");
    let hash = moat::policy::wasm::new_password_hash(b"alice-pw").unwrap();
    pg.execute(&format!(
        "{sql}; INSERT INTO mqtt_users (username, password_hash) VALUES ('alice', '{hash}')"
    ))
    .await;
    let users = p.grants.sql.as_mut().unwrap().get_mut("users").unwrap();
    users.postgres = Some(format!(
        "host=127.0.0.1 port={} user=readme dbname=postgres sslmode=disable",
        pg.port
    ));
    users.password_file = None;
    users.password = Some("...".into());
    let b = broker(p).await;
    let (mut alice, ack) = RawClient::handshake(
        b.addr,
        login(ProtocolVersion::V5, "dev-7", "alice", "alice-pw"),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    let allowed = ReasonCode::NO_MATCHING_SUBSCRIBERS;
    assert_eq!(puback(&mut alice, 1, "sensors/t").await, allowed);
    assert_eq!(
        puback(&mut alice, 2, "sensors/secret/t").await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(puback(&mut alice, 3, "devices/dev-7/t").await, allowed);
    b.stop().await;
}
