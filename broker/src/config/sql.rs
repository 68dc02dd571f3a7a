//! `[plugin.grants.sql.NAME]`: the database connections the broker opens for a plugin, one
//! table per connection name (the name the plugin passes to `sql.query`).
//!
//! Each connection is either PostgreSQL (`postgres`, a libpq connection string or URL) or
//! SQLite (`sqlite`, a database file). Its checks live here with the keys, so `validate.rs`
//! only maps an error to its place in the file.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[plugin.grants.sql.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConnection {
    /// `postgres`: a PostgreSQL connection, as a libpq connection string
    /// (`"host=db.example.com user=moat dbname=mqtt sslmode=require"`) or URL
    /// (`"postgresql://moat@db.example.com/mqtt"`). TLS follows its `sslmode` (`disable`,
    /// `prefer` (the default) or `require`); certificates are always verified, against the
    /// system's roots and `ca_file`. Give either this or `sqlite`.
    pub postgres: Option<String>,
    /// `sqlite`: an SQLite database file, opened read-only (relative paths are relative to the
    /// configuration file). Give either this or `postgres`.
    pub sqlite: Option<PathBuf>,
    /// `password`: the PostgreSQL password (prefer `password_file`). Default: none, or the
    /// one in the connection string.
    pub password: Option<String>,
    /// `password_file`: a file whose first line is the PostgreSQL password, read at start
    /// (relative paths are relative to the configuration file).
    pub password_file: Option<PathBuf>,
    /// `ca_file`: PEM certificates trusted for PostgreSQL's TLS besides the system's.
    pub ca_file: Option<PathBuf>,
    /// `pool_size`: most connections open at once (1 to 64); a query waits for a free one
    /// within `timeout_ms`. Default: 4.
    pub pool_size: u32,
    /// `statements`: if given, the only statement texts the plugin may run on this
    /// connection (compared exactly); others are refused and logged. Default: any statement,
    /// always in a read-only transaction (PostgreSQL) or on a read-only connection (SQLite).
    pub statements: Option<Vec<String>>,
    /// `max_rows`: most rows one answer may have (1 to 100000); a larger answer is an error
    /// (`too-large`), never silently cut. Default: 1000.
    pub max_rows: u32,
    /// `max_bytes`: most bytes of column names and values in one answer (1 to 67108864).
    /// Default: 1 MiB.
    pub max_bytes: u32,
    /// `timeout_ms`: wall-clock limit of one query, waiting for a connection included (1 to
    /// 60000); must be below the plugin's `authenticate_timeout_ms`, so the plugin gets the
    /// error in time to act on it. Default: 1000.
    pub timeout_ms: u32,
    /// `connect_timeout_ms`: limit of opening a connection (1 to 60000); must be below the
    /// plugin's `authenticate_timeout_ms`. Default: 1000.
    pub connect_timeout_ms: u32,
}

impl Default for SqlConnection {
    fn default() -> Self {
        SqlConnection {
            postgres: None,
            sqlite: None,
            password: None,
            password_file: None,
            ca_file: None,
            pool_size: 4,
            statements: None,
            max_rows: 1000,
            max_bytes: 1 << 20,
            timeout_ms: 1000,
            connect_timeout_ms: 1000,
        }
    }
}

impl SqlConnection {
    /// Checks the connection; `deadline_ms` is the plugin's `authenticate_timeout_ms`. The key
    /// of the first bad value, and why.
    pub fn check(&self, deadline_ms: u32) -> Result<(), (&'static str, String)> {
        match (&self.postgres, &self.sqlite) {
            (None, None) => {
                return Err((
                    "postgres",
                    "give `postgres` (a connection string) or `sqlite` (a database file)".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err((
                    "sqlite",
                    "give either `postgres` or `sqlite`, not both".into(),
                ));
            }
            (Some(conn), None) => {
                let parsed = conn.parse::<tokio_postgres::Config>().map_err(|e| {
                    (
                        "postgres",
                        format!("not a PostgreSQL connection string: {e}"),
                    )
                })?;
                if parsed.get_hosts().is_empty() && parsed.get_hostaddrs().is_empty() {
                    return Err((
                        "postgres",
                        "name the server (`host=...`, or a URL `postgresql://HOST/DB`)".into(),
                    ));
                }
            }
            (None, Some(path)) => {
                if path.as_os_str().is_empty() {
                    return Err(("sqlite", "the path is empty".into()));
                }
                for key in [
                    ("password", self.password.is_some()),
                    ("password_file", self.password_file.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                ] {
                    if key.1 {
                        return Err((key.0, "only a `postgres` connection takes it".into()));
                    }
                }
            }
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err((
                "password_file",
                "give either `password` or `password_file`, not both".into(),
            ));
        }
        let ranged = [
            ("pool_size", u64::from(self.pool_size), 1, 64),
            ("max_rows", u64::from(self.max_rows), 1, 100_000),
            ("max_bytes", u64::from(self.max_bytes), 1, 64 << 20),
            ("timeout_ms", u64::from(self.timeout_ms), 1, 60_000),
            (
                "connect_timeout_ms",
                u64::from(self.connect_timeout_ms),
                1,
                60_000,
            ),
        ];
        for (key, value, min, max) in ranged {
            if !(min..=max).contains(&value) {
                return Err((key, format!("must be between {min} and {max}, got {value}")));
            }
        }
        for (key, value) in [
            ("timeout_ms", self.timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if value >= deadline_ms {
                return Err((
                    key,
                    format!(
                        "must be below the plugin's authenticate_timeout_ms ({deadline_ms}), \
                         so the plugin learns of a slow database in time, got {value}"
                    ),
                ));
            }
        }
        Ok(())
    }
}
