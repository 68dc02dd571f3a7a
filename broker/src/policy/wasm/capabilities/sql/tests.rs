//! The SQLite backend and the caps, on a database file made here (PostgreSQL is exercised
//! end to end, with a server the test starts: tests/tests/e2e/sql/).

use super::*;
use sql::Value;

fn grant(path: &std::path::Path, edit: impl FnOnce(&mut SqlConnection)) -> SqlConnections {
    let mut c = SqlConnection {
        sqlite: Some(path.to_owned()),
        ..SqlConnection::default()
    };
    edit(&mut c);
    SqlConnections::new(&[("users".to_string(), c)].into()).unwrap()
}

fn database() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "CREATE TABLE users (name TEXT PRIMARY KEY, hash TEXT, admin INTEGER, pic BLOB, \
                             score REAL);
         INSERT INTO users VALUES ('alice', '$argon2id$x', 1, x'0102', 1.5);
         INSERT INTO users VALUES ('bob', NULL, 0, NULL, NULL);",
    )
    .unwrap();
    (dir, path)
}

/// A value as text, to compare answers (the generated types have no `PartialEq`).
fn plain(rows: &sql::Rows) -> Vec<Vec<String>> {
    rows.rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| match v {
                    Value::Null => "null".to_owned(),
                    Value::Boolean(b) => format!("bool:{b}"),
                    Value::Integer(i) => format!("int:{i}"),
                    Value::Real(f) => format!("real:{f}"),
                    Value::Text(t) => format!("text:{t}"),
                    Value::Blob(b) => format!("blob:{b:?}"),
                })
                .collect()
        })
        .collect()
}

async fn query(
    c: &SqlConnections,
    statement: &str,
    params: Vec<Value>,
) -> Result<sql::Rows, QueryError> {
    c.0["users"].query(statement, params).await
}

#[tokio::test]
async fn binds_parameters_and_converts_every_type() {
    let (_dir, path) = database();
    let c = grant(&path, |_| {});
    let rows = query(
        &c,
        "SELECT name, hash, admin, pic, score FROM users WHERE name = $1",
        vec![Value::Text("alice".into())],
    )
    .await
    .unwrap();
    assert_eq!(rows.columns, ["name", "hash", "admin", "pic", "score"]);
    assert_eq!(
        plain(&rows),
        [[
            "text:alice",
            "text:$argon2id$x",
            "int:1",
            "blob:[1, 2]",
            "real:1.5"
        ]]
    );
    // `$2` names the second parameter even when it comes first in the text.
    let rows = query(
        &c,
        "SELECT $2 AS second, name FROM users WHERE name = $1",
        vec![Value::Text("bob".into()), Value::Integer(7)],
    )
    .await
    .unwrap();
    assert_eq!(plain(&rows), [["int:7", "text:bob"]]);
}

#[tokio::test]
async fn a_parameter_is_data_never_sql() {
    let (_dir, path) = database();
    let c = grant(&path, |_| {});
    for attempt in ["alice' OR '1'='1", "x'; DROP TABLE users; --"] {
        let rows = query(
            &c,
            "SELECT name FROM users WHERE name = $1",
            vec![Value::Text(attempt.into())],
        )
        .await
        .unwrap();
        assert!(rows.rows.is_empty(), "{attempt}");
    }
    let rows = query(&c, "SELECT count(*) FROM users", vec![])
        .await
        .unwrap();
    assert_eq!(plain(&rows), [["int:2"]]);
}

#[tokio::test]
async fn nothing_is_written_and_nothing_else_is_reached() {
    let (dir, path) = database();
    let c = grant(&path, |_| {});
    for statement in [
        "DELETE FROM users",
        "INSERT INTO users (name) VALUES ('eve')",
        "SELECT 1; DELETE FROM users",
    ] {
        let e = query(&c, statement, vec![]).await.unwrap_err();
        assert!(matches!(e, QueryError::Invalid(_)), "{statement}: {e:?}");
    }
    let other = dir.path().join("other.db");
    let attach = format!("ATTACH DATABASE '{}' AS other", other.display());
    assert!(matches!(
        query(&c, &attach, vec![]).await,
        Err(QueryError::Invalid(_))
    ));
    assert!(!other.exists());
    let rows = query(&c, "SELECT count(*) FROM users", vec![])
        .await
        .unwrap();
    assert_eq!(plain(&rows), [["int:2"]]);
}

#[tokio::test]
async fn answers_are_capped_not_cut() {
    let (_dir, path) = database();
    let rows1 = grant(&path, |c| c.max_rows = 1);
    assert!(matches!(
        query(&rows1, "SELECT name FROM users", vec![]).await,
        Err(QueryError::TooLarge)
    ));
    assert!(
        query(&rows1, "SELECT name FROM users LIMIT 1", vec![])
            .await
            .is_ok()
    );
    let bytes = grant(&path, |c| c.max_bytes = 64);
    assert!(matches!(
        query(&bytes, "SELECT zeroblob(100)", vec![]).await,
        Err(QueryError::TooLarge)
    ));
}

#[tokio::test]
async fn a_slow_statement_is_interrupted_at_the_timeout() {
    let (_dir, path) = database();
    let c = grant(&path, |c| c.timeout_ms = 200);
    let endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                   SELECT count(*) FROM n";
    let e = query(&c, endless, vec![]).await.unwrap_err();
    assert!(matches!(e, QueryError::Timeout(_)), "{e:?}");
    // The connection is usable afterwards.
    assert!(query(&c, "SELECT 1", vec![]).await.is_ok());
}

#[tokio::test]
async fn a_missing_database_is_unavailable_until_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.db");
    let c = grant(&path, |_| {});
    let e = query(&c, "SELECT 1", vec![]).await.unwrap_err();
    assert!(matches!(e, QueryError::Unavailable(_)), "{e:?}");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    assert!(query(&c, "SELECT 1", vec![]).await.is_ok());
}

#[test]
fn a_connection_string_without_a_host_or_a_bad_timeout_is_refused() {
    let base = SqlConnection {
        postgres: Some("host=127.0.0.1 user=moat".into()),
        ..SqlConnection::default()
    };
    assert_eq!(base.check(2000), Ok(()));
    let no_host = SqlConnection {
        postgres: Some("user=moat".into()),
        ..base.clone()
    };
    assert_eq!(no_host.check(2000).unwrap_err().0, "postgres");
    let slow = SqlConnection {
        timeout_ms: 2000,
        ..base.clone()
    };
    assert_eq!(slow.check(2000).unwrap_err().0, "timeout_ms");
    let both = SqlConnection {
        sqlite: Some("x.db".into()),
        ..base.clone()
    };
    assert_eq!(both.check(2000).unwrap_err().0, "sqlite");
}
