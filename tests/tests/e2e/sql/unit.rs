//! The sql plugin hook by hook through the plugin SDK's harness (the broker's own engine,
//! sandbox and capabilities, no broker), on an SQLite file: its configuration checks, its
//! placeholders, and a grant that lists the statements allowed.

use std::sync::Arc;
use std::time::Duration;

use moat::codec::ReasonCode;
use moat::config::{Grants, KvGrant, PasswordGrant, SqlConnection};
use moat::policy::PublishKind;
use moat_plugin_sdk::harness::{Answer, AuthStep, Decision, Harness, Limits};
use serde_json::{Value, json};

use super::support::{queries, seed, sqlite};

async fn load(config: Value, db: SqlConnection) -> Result<Harness, String> {
    let grants = Grants {
        sql: Some([("users".to_string(), db)].into()),
        password: Some(PasswordGrant { pool_size: 2 }),
        kv: Some(KvGrant::default()),
        ..Grants::default()
    };
    let limits = Limits {
        authorize_timeout: Duration::from_secs(3),
        authenticate_timeout: Duration::from_secs(4),
        ..Limits::default()
    };
    let wasm = moat::policy::wasm::bundled::get("sql").expect("sql is bundled");
    Harness::load_with_grants(wasm, &config.to_string(), limits, &grants)
        .await
        .map_err(|e| e.to_string())
}

fn config(edit: impl FnOnce(&mut Value)) -> Value {
    let mut c = queries();
    c["connection"] = json!("users");
    edit(&mut c);
    c
}

/// Queries take `$1` (user name) and `$2` (client identifier) only, `$` inside a quoted
/// literal is not a parameter, and a required key missing or an unknown key stops the load.
#[tokio::test]
async fn the_configuration_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqlConnection {
        sqlite: Some(sqlite(dir.path(), &seed(dir.path()))),
        ..SqlConnection::default()
    };
    let e = load(
        config(|c| c["acl_query"] = json!("SELECT topic, rw FROM acl WHERE username = $3")),
        db.clone(),
    )
    .await
    .err()
    .expect("$3 is refused");
    assert!(e.contains("$3"), "{e}");
    let e = load(config(|c| c["cache_secs"] = json!(5)), db.clone())
        .await
        .err()
        .expect("unknown keys are refused");
    assert!(e.contains("cache_secs"), "{e}");
    let e = load(
        config(|c| {
            c.as_object_mut().unwrap().remove("password_query");
        }),
        db.clone(),
    )
    .await
    .err()
    .expect("password_query is required");
    assert!(e.contains("password_query"), "{e}");

    // A `$` inside a literal is text: only `$1` is bound.
    let plugin = load(
        config(|c| {
            c["password_query"] = json!(
                "SELECT password_hash FROM users WHERE username = $1 \
                 AND password_hash NOT LIKE '$2$%'"
            )
        }),
        db,
    )
    .await
    .unwrap();
    let client = Harness::client("c1", Some("alice"));
    let answer = plugin
        .authenticate(&client, &Harness::password("alice-pw"))
        .await
        .unwrap();
    assert!(
        matches!(answer, Answer::Decided(AuthStep::Allow { .. })),
        "{answer:?}"
    );
}

/// With `statements` in the grant, the plugin's other queries are refused by the broker: the
/// login (its query listed) works, a publish (the ACL query not listed) is denied, never
/// allowed.
#[tokio::test]
async fn a_grant_listing_statements_refuses_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let q = queries();
    let db = SqlConnection {
        sqlite: Some(sqlite(dir.path(), &seed(dir.path()))),
        statements: Some(vec![
            q["password_query"].as_str().unwrap().to_owned(),
            q["superuser_query"].as_str().unwrap().to_owned(),
        ]),
        ..SqlConnection::default()
    };
    let plugin = load(config(|_| {}), db).await.unwrap();
    let client = Harness::client("c1", Some("alice"));
    let identity = match plugin
        .authenticate(&client, &Harness::password("alice-pw"))
        .await
        .unwrap()
    {
        Answer::Decided(AuthStep::Allow { identity, .. }) => identity,
        other => panic!("refused: {other:?}"),
    };
    let m = Arc::new(Harness::message("alice/x", b"x"));
    let answer = plugin
        .authorize_publish(&client, &identity, PublishKind::Message, &m)
        .await
        .unwrap();
    match answer {
        Answer::Decided(Decision::Deny(d)) => assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED),
        other => panic!("not denied: {other:?}"),
    }
}
