//! The `sql` capability: queries on database connections the broker owns, by the names the
//! operator gives them in `[plugin.grants.sql.NAME]`: PostgreSQL through a pool (`postgres`),
//! SQLite files (`sqlite`).
//!
//! What holds whatever statement a plugin sends:
//! - parameters are always bound (the wire protocol's bind step, SQLite's bind calls), never
//!   spliced into the text; only one statement runs per call (PostgreSQL's extended protocol
//!   takes one, rusqlite refuses a text with a second);
//! - nothing is written: SQLite files are opened read-only and cannot attach other files;
//!   each PostgreSQL query runs in its own `READ ONLY` transaction, always rolled back;
//! - the grant may list the exact statements allowed (`statements`); another is refused as an
//!   ungranted capability is, and logged;
//! - answers are capped (`max_rows`, `max_bytes`: too large is an error, never a silent cut),
//!   and every call has a wall-clock limit (`timeout_ms`, waiting for a connection included),
//!   which configuration checks keep below the plugin's own deadline so that the plugin gets
//!   `timeout` or `unavailable` in time to act on it (deny, or let the next plugin decide).
//!
//! Connections are opened lazily: a database that is down at start does not stop the broker,
//! and one that comes back is used again without a restart (the pool replaces broken
//! connections).
//!
//! Placeholders are `$1`, `$2`, ... for both backends (SQLite also reads `?1`, `?`, `:name` by
//! position), so a plugin's queries read the same whichever database the operator chose.

mod postgres;
mod sqlite;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::super::bindings::moat::policy::sql;
use super::super::bindings::moat::policy::types::CapabilityError;
use super::super::host::HostState;
use crate::config::SqlConnection;

/// The granted connections of one plugin, by name.
pub struct SqlConnections(BTreeMap<String, Connection>);

struct Connection {
    backend: Backend,
    statements: Option<HashSet<String>>,
    limits: Limits,
}

enum Backend {
    Postgres(postgres::Postgres),
    Sqlite(sqlite::Sqlite),
}

/// The caps of one connection's answers.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_rows: usize,
    max_bytes: usize,
    timeout: Duration,
}

/// Why a query produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum QueryError {
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the answer exceeds the grant's max_rows or max_bytes")]
    TooLarge,
}

impl QueryError {
    fn to_wit(&self) -> CapabilityError {
        match self {
            QueryError::Timeout(_) => CapabilityError::Timeout,
            QueryError::Unavailable(why) => CapabilityError::Unavailable(why.clone()),
            QueryError::Invalid(why) => CapabilityError::Invalid(why.clone()),
            QueryError::TooLarge => CapabilityError::TooLarge,
        }
    }
}

/// An answer being collected under the caps.
struct Collector {
    limits: Limits,
    rows: sql::Rows,
    bytes: usize,
}

impl Collector {
    fn new(limits: Limits, columns: Vec<String>) -> Result<Collector, QueryError> {
        let bytes = columns.iter().map(String::len).sum();
        let mut c = Collector {
            limits,
            rows: sql::Rows {
                columns,
                rows: Vec::new(),
            },
            bytes: 0,
        };
        c.count(bytes)?;
        Ok(c)
    }

    fn count(&mut self, bytes: usize) -> Result<(), QueryError> {
        self.bytes += bytes;
        if self.bytes > self.limits.max_bytes {
            return Err(QueryError::TooLarge);
        }
        Ok(())
    }

    fn push(&mut self, row: Vec<sql::Value>) -> Result<(), QueryError> {
        if self.rows.rows.len() >= self.limits.max_rows {
            return Err(QueryError::TooLarge);
        }
        let bytes = row
            .iter()
            .map(|v| match v {
                sql::Value::Text(t) => t.len(),
                sql::Value::Blob(b) => b.len(),
                _ => 8,
            })
            .sum();
        self.count(bytes)?;
        self.rows.rows.push(row);
        Ok(())
    }
}

impl SqlConnections {
    /// Prepares the granted connections (nothing is opened yet). Fails on a password file
    /// that cannot be read or a `ca_file` without certificates.
    pub fn new(grant: &BTreeMap<String, SqlConnection>) -> Result<SqlConnections, String> {
        let mut connections = BTreeMap::new();
        for (name, c) in grant {
            let limits = Limits {
                max_rows: c.max_rows as usize,
                max_bytes: c.max_bytes as usize,
                timeout: Duration::from_millis(c.timeout_ms.into()),
            };
            let backend = match (&c.postgres, &c.sqlite) {
                (Some(_), _) => Backend::Postgres(
                    postgres::Postgres::new(c).map_err(|e| format!("connection {name:?}: {e}"))?,
                ),
                (None, Some(path)) => Backend::Sqlite(sqlite::Sqlite::new(path, c.pool_size)),
                (None, None) => return Err(format!("connection {name:?}: no database")),
            };
            let statements = c.statements.as_ref().map(|s| s.iter().cloned().collect());
            connections.insert(
                name.clone(),
                Connection {
                    backend,
                    statements,
                    limits,
                },
            );
        }
        Ok(SqlConnections(connections))
    }
}

impl Connection {
    async fn query(
        &self,
        statement: &str,
        params: Vec<sql::Value>,
    ) -> Result<sql::Rows, QueryError> {
        let limits = self.limits;
        let run = async {
            match &self.backend {
                Backend::Postgres(pg) => pg.query(statement, &params, limits).await,
                Backend::Sqlite(lite) => lite.query(statement, params, limits).await,
            }
        };
        tokio::time::timeout(limits.timeout, run)
            .await
            .map_err(|_| QueryError::Timeout(limits.timeout))?
    }
}

/// Most parameters one query may bind.
const MAX_PARAMS: usize = 64;

impl sql::Host for HostState {
    async fn query(
        &mut self,
        connection: String,
        statement: String,
        params: Vec<sql::Value>,
    ) -> wasmtime::Result<Result<sql::Rows, CapabilityError>> {
        let ctx = self.ctx.clone();
        // Names and statements come from the plugin: keep log lines short.
        let shown = |text: &str| text.chars().take(80).collect::<String>();
        let Some(db) = ctx.granted.sql.as_ref().and_then(|c| c.0.get(&connection)) else {
            return Ok(Err(ctx.refuse(&format!("sql ({:?})", shown(&connection)))));
        };
        if db
            .statements
            .as_ref()
            .is_some_and(|allowed| !allowed.contains(&statement))
        {
            return Ok(Err(ctx.refuse_because(
                "sql",
                &format!(
                    "statement {:?} is not one the grant of connection {connection:?} lists",
                    shown(&statement)
                ),
            )));
        }
        if params.len() > MAX_PARAMS {
            return Ok(Err(CapabilityError::Invalid(format!(
                "at most {MAX_PARAMS} parameters"
            ))));
        }
        Ok(match db.query(&statement, params).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                tracing::debug!(plugin = %ctx.name, connection, "sql: {e}");
                Err(e.to_wit())
            }
        })
    }
}

#[cfg(test)]
mod tests;
