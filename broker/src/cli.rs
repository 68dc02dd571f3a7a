//! The command line, and the start-up steps that depend on it: loading the configuration and
//! setting up diagnostics.
//!
//! The command line is kept small on purpose: everything else belongs in the configuration
//! file, so that a deployment's behaviour is written down in one place. `--listen` exists for
//! quick local runs and tests (like `mosquitto -p`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::Broker;
use crate::config::{Config, ConfigError};

/// moat: an MQTT 3.1.1 and 5.0 broker.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "moat", version, about)]
pub struct Cli {
    /// The configuration file (TOML). Without it, built-in defaults are used: one listener on
    /// 127.0.0.1:1883.
    #[arg(short = 'c', long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// `--listen ADDR`, repeatable: addresses to listen on instead of the configured listeners.
    #[arg(
        long,
        value_name = "ADDR",
        help = "Listen on ADDR (such as 0.0.0.0:1883 or [::]:1883) instead of the configured \
                listeners. May be given several times"
    )]
    pub listen: Vec<SocketAddr>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `moat` does besides running the broker.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Create, update (-D: delete) a user in a password file (argon2id), as static-acl reads
    /// it and mosquitto_passwd writes it.
    Passwd(crate::passwd::PasswdArgs),
    /// Change the plugins of a running broker through its admin API (`[admin]` in the
    /// configuration given with -c, or --admin and MOAT_ADMIN_TOKEN).
    Plugin {
        #[command(subcommand)]
        action: crate::admin::PluginAction,
        /// The admin API's address (default: `[admin] bind` of the configuration).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
}

/// Runs the `moat` command: parse the command line, load the configuration, open the store,
/// serve until SIGINT or SIGTERM. The `moat` binary is this function; the end-to-end tests
/// run it as a separate process too (to kill it with SIGKILL).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Passwd(args)) = &cli.command {
        return match crate::passwd::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("moat passwd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Plugin { action, admin }) = &cli.command {
        return crate::admin::run_plugin_command(cli.config.as_deref(), *admin, action);
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moat: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config.log.filter);
    // Room for every connection allowed, plus the store, plugins' files and listeners.
    crate::net::descriptors::reserve(config.limits.max_connections.map(|n| u64::from(n) + 256));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.server.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let broker = match Broker::open(config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("moat: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(control) = broker.control() {
            control.set_source(crate::admin::ConfigSource {
                path: cli.config.clone(),
                listen: cli.listen.clone(),
            });
        }
        serve_until_shutdown(&broker).await;
        tracing::info!("shutting down");
        broker.shutdown(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

/// Runs until SIGINT or SIGTERM. SIGHUP reloads the TLS certificates of every TLS listener
/// (new handshakes use them; established connections carry on) and rereads the configuration
/// for the plugin chain (a configuration that does not load keeps the running chain; the log
/// says why).
async fn serve_until_shutdown(broker: &Broker) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hup.recv() => {
                    let n = broker.reload_certificates();
                    tracing::info!(listeners = n, "SIGHUP: TLS certificates reloaded");
                    if let Some(control) = broker.control() {
                        match control.reload().await {
                            Ok(swapped) => tracing::info!(changed = swapped.len(),
                                "SIGHUP: plugin chain reloaded from the configuration"),
                            Err(e) => tracing::error!(error = %e,
                                "SIGHUP: the plugin chain was not reloaded; the running one \
                                 keeps serving"),
                        }
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = broker;
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The configuration `cli` asks for: the `--config` file, or the defaults, with `--listen`
/// applied on top.
pub fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    config.apply_listen_overrides(&cli.listen);
    Ok(config)
}

/// Sends `tracing` output to standard error, filtered by `RUST_LOG` when it is set and valid,
/// otherwise by `filter` (the configuration's `log.filter`, already validated). Does nothing
/// if a global subscriber is already installed (as in tests).
pub fn init_tracing(filter: &str) {
    let (env_filter, rejected) = choose_filter(std::env::var("RUST_LOG").ok().as_deref(), filter);
    let installed = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok();
    if let (true, Some(error)) = (installed, rejected) {
        tracing::warn!("ignoring RUST_LOG: {error}; using log.filter {filter:?}");
    }
}

/// The filter to use given the value of `RUST_LOG` (if any) and the configured one, and why
/// `RUST_LOG` was rejected if it was set but invalid. An invalid configured filter (which
/// validation rules out) falls back to `info`.
fn choose_filter(rust_log: Option<&str>, configured: &str) -> (EnvFilter, Option<String>) {
    let mut rejected = None;
    if let Some(directives) = rust_log.filter(|d| !d.trim().is_empty()) {
        match EnvFilter::builder().parse(directives) {
            Ok(filter) => return (filter, None),
            Err(e) => rejected = Some(format!("{directives:?}: {e}")),
        }
    }
    let filter = EnvFilter::builder()
        .parse(configured)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    (filter, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "moat",
            "-c",
            "/etc/moat.toml",
            "--listen",
            "0.0.0.0:1883",
            "--listen",
            "[::1]:1884",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("/etc/moat.toml")));
        assert_eq!(
            cli.listen,
            vec![
                "0.0.0.0:1883".parse::<SocketAddr>().unwrap(),
                "[::1]:1884".parse().unwrap()
            ]
        );

        let cli = Cli::try_parse_from(["moat", "--config=x.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(cli.listen.is_empty());

        let cli = Cli::try_parse_from(["moat"]).unwrap();
        assert_eq!(
            cli,
            Cli {
                config: None,
                listen: vec![],
                command: None,
            }
        );
    }

    #[test]
    fn rejects_bad_flags() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().kind();
        assert_eq!(
            kind(&["moat", "--listen", "localhost"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["moat", "--bogus"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["moat", "--config"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["moat", "--version"]), ErrorKind::DisplayVersion);
        assert_eq!(kind(&["moat", "--help"]), ErrorKind::DisplayHelp);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn load_config_applies_file_then_overrides() {
        let cli = Cli::try_parse_from(["moat"]).unwrap();
        assert_eq!(load_config(&cli).unwrap(), Config::default());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("moat.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_inflight = 9\n[[listener]]\nbind = \"127.0.0.1:2000\"\n",
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let cli = Cli::try_parse_from(["moat", "-c", file]).unwrap();
        let config = load_config(&cli).unwrap();
        assert_eq!(config.limits.max_inflight, 9);
        assert_eq!(config.listeners[0].bind, "127.0.0.1:2000".parse().unwrap());

        let cli = Cli::try_parse_from(["moat", "-c", file, "--listen", "127.0.0.1:3000"]).unwrap();
        let config = load_config(&cli).unwrap();
        assert_eq!(config.limits.max_inflight, 9);
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(config.listeners[0].name, "listen-0");
        assert_eq!(config.listeners[0].bind, "127.0.0.1:3000".parse().unwrap());

        let missing = dir.path().join("missing.toml");
        let cli = Cli::try_parse_from(["moat", "-c", missing.to_str().unwrap()]).unwrap();
        assert!(matches!(load_config(&cli), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn rust_log_wins_when_valid() {
        let shown =
            |(f, rejected): (EnvFilter, Option<String>)| (f.to_string(), rejected.is_some());
        assert_eq!(shown(choose_filter(None, "warn")), ("warn".into(), false));
        assert_eq!(
            shown(choose_filter(Some(""), "warn")),
            ("warn".into(), false)
        );
        assert_eq!(
            shown(choose_filter(Some("debug"), "warn")),
            ("debug".into(), false)
        );
        assert_eq!(
            shown(choose_filter(Some("moat=loud"), "warn")),
            ("warn".into(), true)
        );
        assert_eq!(
            shown(choose_filter(None, "moat=loud")),
            ("info".into(), false)
        );
    }
}
