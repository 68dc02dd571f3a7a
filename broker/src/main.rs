//! The `moat` command: run the broker.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use moat::Broker;
use moat::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli::load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moat: {e}");
            return ExitCode::from(2);
        }
    };
    cli::init_tracing(&config.log.filter);
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
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("moat: {e}");
                return ExitCode::FAILURE;
            }
        };
        shutdown_signal().await;
        tracing::info!("shutting down");
        broker.shutdown(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
