//! `moat plugin list|load|replace|unload|reload`: the command line's client of the admin API.
//!
//! It finds the API and its token in the same configuration file the broker runs with
//! (`[admin] bind` and `token` or `token_file`), or in `--admin ADDR` and the `MOAT_ADMIN_TOKEN`
//! environment variable, and prints the API's JSON answer. A refused change exits with 1 and
//! the API's error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// What `moat plugin` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum PluginAction {
    /// List the plugins in the chain, with their generations and counters.
    List,
    /// Load a plugin: the configuration's declaration of NAME, or FILE with no grants.
    Load {
        name: String,
        /// The component file (default: the one the configuration declares).
        file: Option<PathBuf>,
        /// Position in the chain, 0 first (default: last).
        #[arg(long)]
        position: Option<usize>,
    },
    /// Replace NAME's component with FILE (default: read its configured file again).
    Replace { name: String, file: Option<PathBuf> },
    /// Take NAME out of the chain.
    Unload { name: String },
    /// Reread the configuration file, as SIGHUP does.
    Reload,
}

/// A client of one broker's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    token: String,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> AdminClient {
        AdminClient {
            addr,
            token: token.into(),
        }
    }

    /// Sends one request (`method` such as `"GET"`); the answer's status code and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let content_type = if body.starts_with(b"\0asm") {
            "application/wasm"
        } else {
            "application/json"
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The API's address and token from `config` (or the defaults), `--admin` and
/// `MOAT_ADMIN_TOKEN`.
fn client_for(config: Option<&Path>, admin: Option<SocketAddr>) -> Result<AdminClient, String> {
    let config = match config {
        Some(path) => crate::Config::load(path).map_err(|e| e.to_string())?,
        None => crate::Config::default(),
    };
    let addr = admin.unwrap_or(config.admin.bind);
    let token = match std::env::var("MOAT_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => match (&config.admin.token, &config.admin.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| format!("admin.token_file {}: {e}", file.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(
                    "no admin token: give the broker's configuration (-c FILE, with \
                     [admin] token or token_file) or set MOAT_ADMIN_TOKEN"
                        .into(),
                );
            }
        },
    };
    Ok(AdminClient::new(addr, token))
}

/// Runs one `moat plugin` command; prints the answer.
pub fn run_plugin_command(
    config: Option<&Path>,
    admin: Option<SocketAddr>,
    action: &PluginAction,
) -> ExitCode {
    let outcome = (|| {
        let client = client_for(config, admin)?;
        let read = |file: &Option<PathBuf>| -> Result<Vec<u8>, String> {
            match file {
                Some(f) => std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())),
                None => Ok(Vec::new()),
            }
        };
        let (method, path, body) = match action {
            PluginAction::List => ("GET", "/plugins".to_owned(), Vec::new()),
            PluginAction::Load {
                name,
                file,
                position,
            } => {
                let query = position
                    .map(|p| format!("?position={p}"))
                    .unwrap_or_default();
                (
                    "POST",
                    format!("/plugins/{}{query}", encode(name)),
                    read(file)?,
                )
            }
            PluginAction::Replace { name, file } => {
                ("PUT", format!("/plugins/{}", encode(name)), read(file)?)
            }
            PluginAction::Unload { name } => {
                ("DELETE", format!("/plugins/{}", encode(name)), Vec::new())
            }
            PluginAction::Reload => ("POST", "/reload".to_owned(), Vec::new()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(client.request(method, &path, body))
    })();
    match outcome {
        Ok((status, body)) if (200..300).contains(&status) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("moat: {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("moat: {e}");
            ExitCode::FAILURE
        }
    }
}

fn encode(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}
