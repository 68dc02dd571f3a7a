//! The command line: one subcommand per scenario, options shared by all of them, and the
//! translation into [`PubSubConfig`] and [`ConnConfig`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::connections::ConnConfig;
use crate::scenario::PubSubConfig;

/// moat-bench: an MQTT load generator. Measures delivered messages per second, loss,
/// duplicates and end-to-end latency (from the intended send time), or connect rate and broker
/// memory per idle connection.
#[derive(Debug, Parser)]
#[command(name = "moat-bench", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every scenario takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The broker's address.
    #[arg(short, long, global = true, default_value = "127.0.0.1:1883")]
    pub broker: SocketAddr,
    /// Protocol version spoken by every client.
    #[arg(long, global = true, value_enum, default_value = "3.1.1")]
    pub mqtt: Mqtt,
    /// Tokio worker threads; 1 runs everything on one thread (the least overhead).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one line of JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// A label for the broker under test, carried into the report (for `summarize`).
    #[arg(long, global = true)]
    pub tag: Option<String>,
    /// The scenario's name in the report (default: derived from its shape).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// The broker's process id: its memory (VmRSS, VmHWM) is read from /proc.
    #[arg(long, global = true)]
    pub broker_pid: Option<u32>,
    /// Connect over TLS, trusting the CAs in this PEM file.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The server name to ask for (SNI) and to verify the certificate against.
    #[arg(long, global = true, default_value = "localhost")]
    pub tls_name: String,
    /// A client certificate (PEM) to present, for mutual TLS; with --tls-key.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Resume TLS sessions across connections (default: a full handshake for every one).
    #[arg(long, global = true)]
    pub tls_resume: bool,
    /// The user name every client sends in its CONNECT (default: none).
    #[arg(long, global = true)]
    pub username: Option<String>,
    /// The password every client sends; needs --username (MQTT 3.1.1 allows no password
    /// without a user name).
    #[arg(long, global = true, requires = "username")]
    pub password: Option<String>,
}

impl Global {
    /// Turns TLS on if `--tls-ca` asks for it.
    pub fn apply_tls(&self) -> anyhow::Result<()> {
        let Some(ca) = &self.tls_ca else {
            return Ok(());
        };
        crate::transport::set_tls(&crate::transport::TlsOptions {
            ca,
            server_name: &self.tls_name,
            cert: self.tls_cert.as_deref(),
            key: self.tls_key.as_deref(),
            resume: self.tls_resume,
        })
    }
}

impl Global {
    /// Makes every CONNECT carry `--username` and `--password`, if given.
    pub fn apply_credentials(&self) {
        if let Some(username) = &self.username {
            crate::wire::set_credentials(username, self.password.as_deref());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mqtt {
    #[value(name = "3.1.1", alias = "4", alias = "311")]
    V311,
    #[value(name = "5", alias = "5.0")]
    V5,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// N publishers -> 1 subscriber, one topic.
    FanIn {
        /// Publishers.
        #[arg(short = 'n', long = "publishers", default_value_t = 4)]
        n: usize,
        #[command(flatten)]
        load: Load,
    },
    /// 1 publisher -> N subscribers, one topic.
    FanOut {
        /// Subscribers.
        #[arg(short = 'n', long = "subscribers", default_value_t = 16)]
        n: usize,
        #[command(flatten)]
        load: Load,
    },
    /// N publishers -> N subscribers, each pair on its own topic.
    ManyToMany {
        /// Publisher/subscriber pairs.
        #[arg(short = 'n', long = "pairs", default_value_t = 8)]
        n: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Any shape: publisher i publishes to topic i % T, subscriber j subscribes to j % T.
    Custom {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[command(flatten)]
        load: Load,
    },
    /// Open and hold N idle connections; report connect rate and broker memory per connection.
    Connections {
        /// Connections to open.
        #[arg(short = 'n', long = "count", default_value_t = 1000)]
        n: usize,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Loopback source addresses to spread over (127.0.0.2, .3, ...); default: one per
        /// 5,000 connections for a loopback broker, 0 = no binding.
        #[arg(long)]
        source_ips: Option<usize>,
        /// The first source address.
        #[arg(long, default_value = "127.0.0.2")]
        source_base: Ipv4Addr,
        /// Seconds to hold the connections once all are up.
        #[arg(long, default_value_t = 1.0)]
        hold: f64,
        /// A file to create once every connection is up.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Reduce JSON reports (one per line) to a Markdown table of medians and ratios.
    Summarize {
        /// The file of JSON lines ("-" for standard input).
        file: PathBuf,
        /// The tag ratios are taken against (default: the first tag in the file).
        #[arg(long)]
        baseline: Option<String>,
    },
}

/// Load options of the publish/subscribe scenarios.
#[derive(Debug, Clone, Args)]
pub struct Load {
    /// QoS of the messages and the subscriptions.
    #[arg(short, long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 24: the stamp).
    #[arg(short, long, default_value_t = 64)]
    pub payload: usize,
    /// Total messages per second over all publishers, on a fixed timeline; omit for as fast as
    /// possible.
    #[arg(short, long)]
    pub rate: Option<f64>,
    /// Seconds of sending.
    #[arg(short, long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start left out of the rate and the latency.
    #[arg(short, long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Most unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Write buffer target per publisher when sending as fast as possible, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub batch_bytes: usize,
    /// Seconds to wait for the last acknowledgements and deliveries.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Topics are PREFIX/0, PREFIX/1, ...
    #[arg(long, default_value = "moat-bench")]
    pub topic_prefix: String,
    /// Persistent sessions (3.1.1 clean session 0, 5.0 session expiry 300 s), so that a
    /// broker with durable storage stores the QoS 1/2 messages.
    #[arg(long)]
    pub persistent: bool,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Load {
    /// Applies these options to a scenario.
    pub fn apply(&self, cfg: &mut PubSubConfig) {
        cfg.qos = self.qos;
        cfg.payload = self.payload;
        cfg.rate = self.rate;
        cfg.duration = secs(self.duration);
        cfg.warmup = secs(self.warmup);
        cfg.window = self.window;
        cfg.batch_bytes = self.batch_bytes;
        cfg.drain = secs(self.drain);
        cfg.topic_prefix = self.topic_prefix.clone();
        cfg.persistent = self.persistent;
    }
}

/// What the command line asks for.
pub enum Plan {
    PubSub(PubSubConfig),
    Connections(ConnConfig),
    Summarize {
        file: PathBuf,
        baseline: Option<String>,
    },
}

impl Cli {
    pub fn plan(&self) -> Plan {
        let g = &self.global;
        let mqtt = match g.mqtt {
            Mqtt::V311 => 4,
            Mqtt::V5 => 5,
        };
        let pubsub = |mut cfg: PubSubConfig, load: &Load| {
            load.apply(&mut cfg);
            cfg.mqtt = mqtt;
            let qos = format!(" QoS {}", cfg.qos);
            cfg.name = g.name.clone().unwrap_or(cfg.name + &qos);
            Plan::PubSub(cfg)
        };
        match &self.command {
            Command::FanIn { n, load } => pubsub(PubSubConfig::fan_in(g.broker, *n), load),
            Command::FanOut { n, load } => pubsub(PubSubConfig::fan_out(g.broker, *n), load),
            Command::ManyToMany { n, load } => pubsub(PubSubConfig::pairs(g.broker, *n), load),
            Command::Custom {
                publishers,
                subscribers,
                topics,
                load,
            } => {
                let cfg = PubSubConfig {
                    name: format!("custom {publishers}->{subscribers} over {topics} topic(s)"),
                    publishers: *publishers,
                    subscribers: *subscribers,
                    topics: *topics,
                    ..PubSubConfig::new(g.broker)
                };
                pubsub(cfg, load)
            }
            Command::Connections {
                n,
                concurrency,
                source_ips,
                source_base,
                hold,
                ready_file,
            } => {
                let mut cfg = ConnConfig::new(g.broker, *n);
                cfg.mqtt = mqtt;
                if let Some(name) = &g.name {
                    cfg.name = name.clone();
                }
                cfg.concurrency = *concurrency;
                if let Some(k) = source_ips {
                    cfg.source_ips = *k;
                }
                cfg.source_base = *source_base;
                cfg.hold = secs(*hold);
                cfg.ready_file = ready_file.clone();
                cfg.broker_pid = g.broker_pid;
                Plan::Connections(cfg)
            }
            Command::Summarize { file, baseline } => Plan::Summarize {
                file: file.clone(),
                baseline: baseline.clone(),
            },
        }
    }
}
