//! PostgreSQL connections: a deadpool pool of tokio-postgres clients, TLS through rustls.
//!
//! Why these crates: tokio-postgres is the asynchronous PostgreSQL client of the tokio
//! ecosystem (pure Rust, the wire protocol's extended query flow, so parameters are always
//! bound); deadpool-postgres is the small pool built for it, whose lazy connections and
//! recycling give the "down at start, used again when back" behaviour for free; and
//! tokio-postgres-rustls plugs in the rustls the broker already uses for its listeners and the
//! `http` capability, so there is no OpenSSL in the binary.
//!
//! Each query runs as: a connection from the pool (waiting counts against the query's
//! timeout), `START TRANSACTION READ ONLY`, prepare (one statement), bind, rows read one by one
//! under the caps, `ROLLBACK`. The server also stops a statement at the grant's timeout
//! (`statement_timeout`), so a query the broker gave up on does not keep running there.

use std::error::Error as StdError;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::StreamExt as _;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Collector, Limits, QueryError};
use crate::config::SqlConnection;
use crate::policy::wasm::bindings::moat::policy::sql::{Rows, Value};
use crate::policy::wasm::capabilities::tls;

pub struct Postgres {
    pool: Pool,
}

impl Postgres {
    pub fn new(c: &SqlConnection) -> Result<Postgres, String> {
        let text = c.postgres.as_deref().unwrap_or_default();
        let mut config: tokio_postgres::Config = text
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection string: {e}"))?;
        if let Some(password) = &c.password {
            config.password(password);
        }
        if let Some(path) = &c.password_file {
            let content = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
            config.password(content.lines().next().unwrap_or_default());
        }
        let connect_timeout = std::time::Duration::from_millis(c.connect_timeout_ms.into());
        let timeout = std::time::Duration::from_millis(c.timeout_ms.into());
        config.connect_timeout(connect_timeout);
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            c.timeout_ms
        );
        config.options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("moat");
        }
        let tls = MakeRustlsConnect::new(tls::client_config(c.ca_file.as_deref(), Vec::new())?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                // A closed connection is noticed and replaced; a live one is reused as it is
                // (every query leaves it rolled back).
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(c.pool_size as usize)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Postgres { pool })
    }

    pub async fn query(
        &self,
        statement: &str,
        params: &[Value],
        limits: Limits,
    ) -> Result<Rows, QueryError> {
        let mut client = self.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(_) => QueryError::Timeout(limits.timeout),
            PoolError::Backend(e) => classify(&e),
            other => QueryError::Unavailable(other.to_string()),
        })?;
        let tx = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(|e| classify(&e))?;
        let prepared = tx.prepare(statement).await.map_err(|e| classify(&e))?;
        let bound: Vec<Param<'_>> = params.iter().map(Param).collect();
        let stream = tx
            .query_raw(&prepared, bound.iter().map(|p| p as &dyn ToSql))
            .await
            .map_err(|e| classify(&e))?;
        let columns = prepared.columns();
        let mut out = Collector::new(
            limits,
            columns.iter().map(|c| c.name().to_owned()).collect(),
        )?;
        let mut stream = std::pin::pin!(stream);
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| classify(&e))?;
            let values = columns
                .iter()
                .enumerate()
                .map(|(i, c)| value(&row, i, c.name(), c.type_()))
                .collect::<Result<Vec<_>, _>>()?;
            out.push(values)?;
        }
        // Nothing is ever committed; a failed rollback leaves a connection the pool drops.
        let _ = tx.rollback().await;
        Ok(out.rows)
    }
}

/// Sorts a client error into what the plugin can act on: the database being away (connection
/// errors, shutdown, too many connections, a refused login) is `unavailable`, a statement the
/// server cancelled at `statement_timeout` is `timeout`, anything about the statement itself
/// is `invalid`.
fn classify(e: &tokio_postgres::Error) -> QueryError {
    let Some(db) = e.as_db_error() else {
        return QueryError::Unavailable(e.to_string());
    };
    let code = db.code().code();
    if code == "57014" {
        return QueryError::Timeout(std::time::Duration::ZERO);
    }
    if ["08", "28", "53", "57", "58"]
        .iter()
        .any(|c| code.starts_with(c))
    {
        return QueryError::Unavailable(format!("{code}: {}", db.message()));
    }
    QueryError::Invalid(format!("{code}: {}", db.message()))
}

/// One column of a row as a contract value; types without a natural one are refused with a
/// hint (cast in the query).
fn value(row: &tokio_postgres::Row, i: usize, name: &str, ty: &Type) -> Result<Value, QueryError> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<Option<T>, QueryError> {
        row.try_get(i)
            .map_err(|e| QueryError::Invalid(format!("column {i}: {e}")))
    }
    let v = match *ty {
        Type::BOOL => get::<bool>(row, i)?.map(Value::Boolean),
        Type::INT2 => get::<i16>(row, i)?.map(|v| Value::Integer(v.into())),
        Type::INT4 => get::<i32>(row, i)?.map(|v| Value::Integer(v.into())),
        Type::INT8 => get::<i64>(row, i)?.map(Value::Integer),
        Type::OID => get::<u32>(row, i)?.map(|v| Value::Integer(v.into())),
        Type::FLOAT4 => get::<f32>(row, i)?.map(|v| Value::Real(v.into())),
        Type::FLOAT8 => get::<f64>(row, i)?.map(Value::Real),
        Type::BYTEA => get::<Vec<u8>>(row, i)?.map(Value::Blob),
        _ if <String as tokio_postgres::types::FromSql>::accepts(ty) => {
            get::<String>(row, i)?.map(Value::Text)
        }
        _ => {
            return Err(QueryError::Invalid(format!(
                "column {name:?} has type {ty}, which the sql capability does not convert; \
                 cast it in the query (e.g. `{name}::text`)"
            )));
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

/// A plugin's value bound to a parameter of whatever type the server inferred for it.
#[derive(Debug)]
struct Param<'a>(&'a Value);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let mismatch = || -> Box<dyn StdError + Sync + Send> {
            format!(
                "a {} value cannot be bound to a parameter of type {ty}",
                kind(self.0)
            )
            .into()
        };
        match self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Boolean(b) if *ty == Type::BOOL => b.to_sql(ty, out),
            Value::Integer(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT8 => i.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (*f as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Value::Text(t) if <&str as ToSql>::accepts(ty) => t.as_str().to_sql(ty, out),
            Value::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Integer(_) => "integer",
        Value::Real(_) => "real",
        Value::Text(_) => "text",
        Value::Blob(_) => "blob",
    }
}
