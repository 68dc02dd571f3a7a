//! SQLite databases: rusqlite (with SQLite built in, `bundled`), on tokio's blocking threads.
//!
//! Why rusqlite: it is the maintained binding of the field, and `bundled` compiles SQLite into
//! the binary, so the embedded default needs no system library. SQLite calls block, so each
//! query runs on a blocking thread, at most `pool_size` at once (a semaphore whose permit
//! goes into the thread); connections are kept for reuse, one per such place.
//!
//! A connection is opened read-only, with no room for `ATTACH` (a statement cannot reach other
//! files), and a progress handler that interrupts a statement running past the query's
//! deadline, so a thread given up on by the caller does not stay busy. A connection that
//! failed for a reason other than the statement is dropped, and the next query opens a fresh
//! one (a database file replaced or restored is picked up).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, OpenFlags};
use tokio::sync::Semaphore;

use super::{Collector, Limits, QueryError};
use crate::policy::wasm::bindings::moat::policy::sql::{Rows, Value};

pub struct Sqlite {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
    permits: Arc<Semaphore>,
}

impl Sqlite {
    pub fn new(path: &Path, pool_size: u32) -> Sqlite {
        Sqlite {
            path: Arc::new(path.to_owned()),
            idle: Arc::default(),
            permits: Arc::new(Semaphore::new(pool_size as usize)),
        }
    }

    pub async fn query(
        &self,
        statement: &str,
        params: Vec<Value>,
        limits: Limits,
    ) -> Result<Rows, QueryError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| QueryError::Unavailable("closed".into()))?;
        let deadline = Instant::now() + limits.timeout;
        let (path, idle) = (self.path.clone(), self.idle.clone());
        let statement = statement.to_owned();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = idle.lock().pop();
            let mut conn = match taken {
                Some(c) => c,
                None => open(&path)?,
            };
            conn.progress_handler(1000, Some(move || Instant::now() >= deadline))
                .map_err(|e| QueryError::Unavailable(e.to_string()))?;
            let answer = run(&conn, &statement, &params, limits);
            if matches!(
                answer,
                Ok(_) | Err(QueryError::Invalid(_) | QueryError::TooLarge)
            ) {
                idle.lock().push(conn);
            }
            answer
        })
        .await
        .map_err(|e| QueryError::Unavailable(format!("query thread failed: {e}")))?
    }
}

fn open(path: &Path) -> Result<rusqlite::Connection, QueryError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(path, flags)
        .map_err(|e| QueryError::Unavailable(format!("{}: {e}", path.display())))?;
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
        .map_err(|e| QueryError::Unavailable(e.to_string()))?;
    Ok(conn)
}

fn run(
    conn: &rusqlite::Connection,
    statement: &str,
    params: &[Value],
    limits: Limits,
) -> Result<Rows, QueryError> {
    let mut stmt = conn.prepare(statement).map_err(|e| classify(&e))?;
    for i in 1..=stmt.parameter_count() {
        // `$N` and `?N` name the N-th parameter, as in PostgreSQL; others count by position.
        let index = stmt
            .parameter_name(i)
            .and_then(|n| n.get(1..))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(i);
        let value = params.get(index.wrapping_sub(1)).ok_or_else(|| {
            QueryError::Invalid(format!(
                "the statement uses parameter {index}, but {} were given",
                params.len()
            ))
        })?;
        stmt.raw_bind_parameter(i, bind(value))
            .map_err(|e| classify(&e))?;
    }
    let columns: Vec<String> = stmt.column_names().map(String::from).collect();
    let width = columns.len();
    let mut out = Collector::new(limits, columns)?;
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(|e| classify(&e))? {
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i).map_err(|e| classify(&e))? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Integer(v),
                ValueRef::Real(v) => Value::Real(v),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(values)?;
    }
    Ok(out.rows)
}

fn bind(v: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Boolean(b) => ValueRef::Integer((*b).into()),
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Real(f) => ValueRef::Real(*f),
        Value::Text(t) => ValueRef::Text(t.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// The database being away or broken is `unavailable`, an interrupted statement `timeout`,
/// anything about the statement itself (syntax, a write) `invalid`.
fn classify(e: &rusqlite::Error) -> QueryError {
    let Some(code) = e.sqlite_error_code() else {
        return QueryError::Invalid(e.to_string());
    };
    match code {
        ErrorCode::OperationInterrupted => QueryError::Timeout(std::time::Duration::ZERO),
        ErrorCode::CannotOpen
        | ErrorCode::DatabaseBusy
        | ErrorCode::DatabaseLocked
        | ErrorCode::DatabaseCorrupt
        | ErrorCode::NotADatabase
        | ErrorCode::SystemIoFailure
        | ErrorCode::PermissionDenied
        | ErrorCode::OutOfMemory => QueryError::Unavailable(e.to_string()),
        _ => QueryError::Invalid(e.to_string()),
    }
}
