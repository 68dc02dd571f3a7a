//! The sql plugin on an SQLite file the test creates: logins, ACL, SCRAM, revocation.

use std::time::Duration;

use moat::codec::{ProtocolVersion, ReasonCode};
use moat::config::SqlConnection;
use serde_json::json;

use super::checks::{self, SLACK, refused_within};
use super::support::{broker, plugin, seed, sqlite, sqlite_execute};
use crate::harness::RawClient;
use crate::plugins::login;
use crate::scram::scram_login;
use crate::static_acl_broker::{connack, puback};

fn connection(path: &std::path::Path) -> SqlConnection {
    SqlConnection {
        sqlite: Some(path.to_owned()),
        ..SqlConnection::default()
    }
}

#[tokio::test]
async fn sqlite_users_acl_and_scram_decide() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(dir.path(), &seed(dir.path()));
    let p = plugin(connection(&db), json!({}));
    let b = broker(p).await;
    checks::logins(&b).await;
    checks::acl(&b).await;
    assert_eq!(
        scram_login(&b, "erin", "erin-pw").await,
        (ReasonCode::SUCCESS, true)
    );
    assert_eq!(
        scram_login(&b, "erin", "wrong").await.0,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    b.stop().await;
}

/// A deleted rule and a deleted user stop being honoured within `cache_seconds`.
#[tokio::test]
async fn sqlite_revocation_within_cache_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite(dir.path(), &seed(dir.path()));
    let p = plugin(connection(&db), json!({"cache_seconds": 2}));
    let b = broker(p).await;
    let cache = Duration::from_secs(2);
    let (mut alice, _) = RawClient::handshake(
        b.addr,
        login(ProtocolVersion::V5, "alice-1", "alice", "alice-pw"),
    )
    .await;
    assert_eq!(
        puback(&mut alice, 1, "alice/x").await,
        ReasonCode::NO_MATCHING_SUBSCRIBERS
    );
    sqlite_execute(&db, "DELETE FROM acl WHERE topic = 'alice/#'");
    refused_within(&mut alice, "alice/x", cache + SLACK).await;
    sqlite_execute(&db, "DELETE FROM users WHERE username = 'alice'");
    assert_eq!(
        connack(&b, ProtocolVersion::V5, "alice", "alice-pw").await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    refused_within(&mut alice, "devices/alice-1/x", cache + SLACK).await;
    b.stop().await;
}
