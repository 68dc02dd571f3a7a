//! What the sql tests share: a throwaway PostgreSQL server, the users and rules both databases
//! hold, and the plugin's configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use moat::config::{Grants, KvGrant, PasswordGrant, PluginConfig, SqlConnection};
use serde_json::json;

use crate::harness::{TestBroker, start_with};
use crate::static_acl::mosquitto_passwd;

/// The password of the role the broker connects as.
pub const ROLE_PASSWORD: &str = "moat-role-pw";

/// The schema, the same text for both databases.
pub const SCHEMA: &str = "
CREATE TABLE users (username TEXT PRIMARY KEY, password_hash TEXT, scram TEXT,
                    is_super BOOLEAN NOT NULL DEFAULT FALSE);
CREATE TABLE acl (username TEXT, client_id TEXT, topic TEXT NOT NULL, rw TEXT NOT NULL);
";

/// The queries the plugin runs: `$1` the user name, `$2` the client identifier.
pub fn queries() -> serde_json::Value {
    json!({
        "password_query": "SELECT password_hash FROM users WHERE username = $1",
        "scram_query": "SELECT scram FROM users WHERE username = $1",
        "superuser_query": "SELECT is_super FROM users WHERE username = $1",
        "acl_query": "SELECT topic, rw FROM acl WHERE username = $1 \
                      OR (username IS NULL AND (client_id IS NULL OR client_id = $2))",
    })
}

/// The users (name, password, kind of hash) and rules every database here holds.
pub struct Seed {
    /// `INSERT` statements, with literal values (test data, not plugin input).
    pub statements: Vec<String>,
}

/// alice: argon2id (`moat passwd`'s hash); bob: Mosquitto's `$7$` (by `mosquitto_passwd`);
/// carol: argon2id, no rules of her own; dave: superuser; erin: a SCRAM verifier only.
pub fn seed(dir: &Path) -> Seed {
    let argon = |pw: &str| moat::policy::wasm::new_password_hash(pw.as_bytes()).unwrap();
    let passwd = dir.join("mosquitto.passwd");
    mosquitto_passwd(&passwd, "bob", "bob-pw", true);
    let bob = std::fs::read_to_string(&passwd).unwrap();
    let bob = bob.trim().strip_prefix("bob:").unwrap().to_owned();
    assert!(bob.starts_with("$7$"), "{bob}");
    let erin = moat::policy::wasm::new_scram_verifier(b"erin-pw").unwrap();
    let user = |name: &str, hash: Option<&str>, scram: Option<&str>, superuser: bool| {
        let lit = |v: Option<&str>| v.map_or("NULL".to_owned(), |v| format!("'{v}'"));
        format!(
            "INSERT INTO users VALUES ('{name}', {}, {}, {superuser})",
            lit(hash),
            lit(scram)
        )
    };
    let rule = |user: Option<&str>, client: Option<&str>, topic: &str, rw: &str| {
        let lit = |v: Option<&str>| v.map_or("NULL".to_owned(), |v| format!("'{v}'"));
        format!(
            "INSERT INTO acl VALUES ({}, {}, '{topic}', '{rw}')",
            lit(user),
            lit(client)
        )
    };
    Seed {
        statements: vec![
            user("alice", Some(&argon("alice-pw")), None, false),
            user("bob", Some(&bob), None, false),
            user("carol", Some(&argon("carol-pw")), None, false),
            user("dave", Some(&argon("dave-pw")), None, true),
            user("erin", None, Some(&erin), false),
            rule(Some("alice"), None, "alice/#", "readwrite"),
            rule(Some("alice"), None, "alice/secret/#", "deny"),
            rule(Some("alice"), None, "public/#", "read"),
            rule(Some("bob"), None, "bob/#", "write"),
            rule(None, None, "devices/%c/#", "readwrite"),
            rule(None, Some("sensor-1"), "sensors/#", "write"),
        ],
    }
}

/// The plugin's `[[plugin]]` on connection `db`, with `extra` config keys.
pub fn plugin(db: SqlConnection, extra: serde_json::Value) -> PluginConfig {
    let mut config = queries();
    config["connection"] = json!("users");
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let serde_json::Value::Object(config) = config else {
        unreachable!()
    };
    PluginConfig {
        name: "sql".into(),
        bundled: Some("sql".into()),
        grants: Grants {
            sql: Some(BTreeMap::from([("users".to_string(), db)])),
            password: Some(PasswordGrant { pool_size: 2 }),
            kv: Some(KvGrant::default()),
            ..Grants::default()
        },
        config,
        // Generous: the tests share two busy cores.
        authorize_timeout_ms: 3000,
        authenticate_timeout_ms: 4000,
        ..PluginConfig::default()
    }
}

/// A broker running `plugin` alone, without the growing delay of refusals to one address
/// (the tests fail logins on purpose).
pub async fn broker(plugin: PluginConfig) -> TestBroker {
    start_with(|c| {
        c.plugin_chain = vec![plugin];
        c.limits.auth_failure_delay_max = std::time::Duration::ZERO;
    })
    .await
}

/// A PostgreSQL server of the machine's installation, in a temporary directory, on a loopback
/// port; run as the `postgres` user when the tests run as root (initdb refuses root). The
/// broker connects as role `moat` with a password (scram-sha-256 over TCP); the test itself
/// administers through the Unix socket in the directory.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Serve TLS with `server.pem`/`server.key` in the directory.
    tls: bool,
}

/// The newest `/usr/lib/postgresql/*/bin`. Missing PostgreSQL fails the test: CI installs it.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); .ci/run installs it",
    )
}

fn as_server_user(program: &Path) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// initdb, start, and create role `moat` and the schema, seeded.
    pub async fn start(seed: &Seed) -> Postgres {
        Postgres::start_with(seed, None).await
    }

    /// The same, serving TLS (and plain connections) with a certificate for 127.0.0.1 that
    /// `ca` issued.
    pub async fn start_tls(seed: &Seed, ca: &crate::certs::Ca) -> Postgres {
        Postgres::start_with(seed, Some(ca)).await
    }

    async fn start_with(seed: &Seed, ca: Option<&crate::certs::Ca>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if unsafe { libc::geteuid() } == 0 {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:postgres").arg(dir.path());
                    c
                },
                "chown",
            );
        }
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-U",
            "postgres",
        ]);
        run(initdb, "initdb");
        if let Some(ca) = ca {
            use std::os::unix::fs::PermissionsExt;
            let leaf = ca.server(&[]);
            let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
            std::fs::write(&cert, &leaf.cert_pem).unwrap();
            std::fs::write(&key, &leaf.key_pem).unwrap();
            // The server reads its key only if nobody else may.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            if unsafe { libc::geteuid() } == 0 {
                let mut chown = Command::new("chown");
                chown.arg("postgres:postgres").arg(&cert).arg(&key);
                run(chown, "chown");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            dir,
            bin,
            port,
            tls: ca.is_some(),
        };
        pg.resume();
        let admin = pg.admin().await;
        admin
            .batch_execute(&format!(
                "CREATE ROLE moat LOGIN PASSWORD '{ROLE_PASSWORD}'; {SCHEMA} {}; \
                 GRANT SELECT ON users, acl TO moat;",
                seed.statements.join(";\n")
            ))
            .await
            .unwrap();
        pg
    }

    /// Starts the server (again), on the same port.
    pub fn resume(&self) {
        let mut ctl = as_server_user(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-h 127.0.0.1 -p {} -k {} -c fsync=off{}",
                self.port,
                self.dir.path().display(),
                if self.tls {
                    format!(
                        " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                        self.dir.path().join("server.pem").display(),
                        self.dir.path().join("server.key").display()
                    )
                } else {
                    String::new()
                }
            ))
            .arg("start");
        run(ctl, "pg_ctl start");
    }

    /// Stops the server (fast shutdown: sessions are ended).
    pub fn stop(&self) {
        let mut ctl = as_server_user(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(ctl, "pg_ctl stop");
    }

    /// A superuser session through the Unix socket.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Runs `statement` as the superuser.
    pub async fn execute(&self, statement: &str) {
        self.admin().await.batch_execute(statement).await.unwrap();
    }

    /// The broker's connection: role `moat`, its password from a file.
    pub fn connection(&self) -> SqlConnection {
        let password_file = self.dir.path().join("role-password");
        std::fs::write(&password_file, format!("{ROLE_PASSWORD}\n")).unwrap();
        SqlConnection {
            postgres: Some(format!(
                "host=127.0.0.1 port={} user=moat dbname=postgres sslmode=disable",
                self.port
            )),
            password_file: Some(password_file),
            ..SqlConnection::default()
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let mut ctl = as_server_user(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.output();
    }
}

/// An SQLite database file with the schema, seeded.
pub fn sqlite(dir: &Path, seed: &Seed) -> PathBuf {
    let path = dir.join("users.db");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(SCHEMA).unwrap();
    for s in &seed.statements {
        db.execute(s, []).unwrap();
    }
    path
}

/// Runs `statement` on the SQLite file (as the operator would, beside the broker).
pub fn sqlite_execute(path: &Path, statement: &str) {
    rusqlite::Connection::open(path)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}
