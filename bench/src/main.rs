//! The `moat-bench` binary: parse the command line, run one scenario on a tokio runtime of the
//! requested size, print the report as a table or as JSON.

use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use moat_bench::cli::{Cli, Plan};
use moat_bench::report::proc_status_kb;
use moat_bench::{connections, scenario, summarize};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(builder.enable_all().build()?)
}

fn run(cli: &Cli) -> Result<()> {
    let g = &cli.global;
    g.apply_tls()?;
    g.apply_credentials();
    match cli.plan() {
        Plan::Summarize { file, baseline } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
            }
            print!("{}", summarize::summarize(&text, baseline.as_deref())?);
        }
        Plan::PubSub(cfg) => {
            let mut report = runtime(g.threads)?.block_on(scenario::run(&cfg))?;
            report.tag = g.tag.clone();
            report.broker_peak_rss_kb = g.broker_pid.and_then(|pid| proc_status_kb(pid, "VmHWM"));
            if g.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_table());
            }
        }
        Plan::Connections(cfg) => {
            let mut report = runtime(g.threads)?.block_on(connections::run(&cfg))?;
            report.tag = g.tag.clone();
            if g.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_table());
            }
        }
    }
    Ok(())
}
