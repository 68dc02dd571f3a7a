//! The admin HTTP API: HTTP/1.1 on hyper, JSON in and out.
//!
//! Off unless `[admin]` gives a token. Every request but `/healthz` and `/readyz` (for probes)
//! must carry `Authorization: Bearer TOKEN`; the comparison is of SHA-256 digests, in
//! constant time, so neither the token's content nor its length leaks through timing. The
//! `Host` header must name the address the API is bound to, `localhost` or a loopback
//! address, which defeats DNS rebinding from a browser on the same machine. Plugin
//! configurations (which hold secrets) are never returned.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once started, 503 while shutting down |
//! | `GET /metrics` | Prometheus text (see `metrics`) |
//! | `GET /plugins` | the chain: name, generation, SHA-256, hooks, counters |
//! | `POST /plugins/NAME` | load NAME (body: the component, or JSON [`LoadRequest`], or empty for the configuration's declaration); `?position=N` |
//! | `PUT /plugins/NAME` | replace NAME's component (body: the component, or JSON `{"path": ...}`, or empty: its file again) |
//! | `DELETE /plugins/NAME` | unload NAME |
//! | `PUT /plugins` | reorder: JSON `{"order": ["a", "b"]}` |
//! | `POST /reload` | reread the configuration, as SIGHUP does |
//! | `GET /clients` | connected clients |
//! | `POST /clients/ID/kick` | disconnect ID (0x98), keeping its session |
//! | `POST /clients/reauthenticate` | send every client (`?plugin=NAME`: that plugin's) to authenticate again (0x98) |
//! | `POST /clients/ID/ban`, `DELETE /clients/ID/ban`, `GET /bans` | ban a client id (0x8A at CONNECT; kept in the store, so it outlives a restart) |
//!
//! A request body that starts with `\0asm` is a component; anything else non-empty is JSON.
//! Changes answer 200 with what is now serving, or 4xx with `{"error": ...}` and leave the
//! chain as it was.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Control, LoadRequest, ReloadError};
use crate::config::AdminConfig;
use crate::policy::chain::SwapError;

/// A running admin API.
#[derive(Debug, Clone, Copy)]
pub struct AdminServer {
    /// Where it listens (useful with port 0).
    pub addr: SocketAddr,
}

struct Api {
    control: Arc<Control>,
    token_digest: [u8; 32],
    addr: SocketAddr,
    max_body: usize,
}

/// Reads the token from the configuration or its file (which must be private).
fn token(config: &AdminConfig) -> Result<String, String> {
    if let Some(t) = &config.token {
        return Ok(t.clone());
    }
    let path = config
        .token_file
        .as_ref()
        .ok_or("no admin token configured")?;
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "admin.token_file {}: group or others may read or write it (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
    let t = text.trim();
    if t.len() < 16 {
        return Err(format!(
            "admin.token_file {}: the token must be at least 16 characters",
            path.display()
        ));
    }
    Ok(t.to_owned())
}

/// Binds the API and serves it until the broker shuts down.
pub async fn serve(control: Arc<Control>, config: &AdminConfig) -> Result<AdminServer, String> {
    let token = token(config)?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| format!("admin API on {}: {e}", config.bind))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("admin API: {e}"))?;
    let api = Arc::new(Api {
        token_digest: Sha256::digest(token.as_bytes()).into(),
        control: control.clone(),
        addr,
        max_body: (config.max_body_mib as usize) << 20,
    });
    let shared = control.shared().clone();
    let shutdown = shared.shutdown.clone();
    shared.spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin API: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let api = api.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = conn => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    });
    tracing::info!(admin = %addr, "admin API ready");
    Ok(AdminServer { addr })
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().expect("a valid content type"),
    );
    r
}

fn json_reply(status: StatusCode, value: &impl serde::Serialize) -> Reply {
    let body = serde_json::to_vec(value).unwrap_or_default();
    reply(status, "application/json", body)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    json_reply(status, &json!({ "error": message.to_string() }))
}

fn swap_error(e: &SwapError) -> Reply {
    let status = match e {
        SwapError::NoSuchPlugin(_) => StatusCode::NOT_FOUND,
        SwapError::Exists(_) => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e)
}

/// What a request body holds.
enum Body {
    Empty,
    Component(Vec<u8>),
    Json(serde_json::Value),
}

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        if !self.host_ok(&req) {
            return error(StatusCode::MISDIRECTED_REQUEST, "unexpected Host header");
        }
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let method = req.method().clone();
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (&method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => return reply(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, ["readyz"]) => {
                return if self.control.shared().shutdown.is_cancelled() {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain",
                        "shutting down\n",
                    )
                } else {
                    reply(StatusCode::OK, "text/plain", "ready\n")
                };
            }
            _ => {}
        }
        if !self.authorized(&req) {
            let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
            r.headers_mut().insert(
                "www-authenticate",
                "Bearer".parse().expect("a valid header"),
            );
            return r;
        }
        let body = match self.body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let c = &self.control;
        match (&method, segs.as_slice()) {
            (&Method::GET, ["metrics"]) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                super::metrics::render(c),
            ),
            (&Method::GET, ["plugins"]) => json_reply(StatusCode::OK, &c.plugins()),
            (&Method::PUT, ["plugins"]) => {
                let order = match &body {
                    Body::Json(v) => v
                        .get("order")
                        .and_then(|o| serde_json::from_value::<Vec<String>>(o.clone()).ok()),
                    _ => None,
                };
                let Some(order) = order else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "expected JSON {\"order\": [\"name\", ...]}",
                    );
                };
                match c.reorder(&order).await {
                    Ok(()) => json_reply(StatusCode::OK, &c.plugins()),
                    Err(e) => swap_error(&e),
                }
            }
            (&Method::POST, ["plugins", name]) => {
                let (mut request, bytes) = match body {
                    Body::Empty => (LoadRequest::default(), None),
                    Body::Component(b) => (LoadRequest::default(), Some(b)),
                    Body::Json(v) => match serde_json::from_value::<LoadRequest>(v) {
                        Ok(r) => (r, None),
                        Err(e) => return error(StatusCode::BAD_REQUEST, e),
                    },
                };
                if let Some(p) = query_param(&query, "position") {
                    match p.parse() {
                        Ok(n) => request.position = Some(n),
                        Err(_) => return error(StatusCode::BAD_REQUEST, "bad position"),
                    }
                }
                match c.load(name, request, bytes).await {
                    Ok(s) => json_reply(StatusCode::OK, &s),
                    Err(e) => swap_error(&e),
                }
            }
            (&Method::PUT, ["plugins", name]) => {
                let bytes = match body {
                    Body::Empty => None,
                    Body::Component(b) => Some(b),
                    Body::Json(v) => match v.get("path").and_then(|p| p.as_str()) {
                        Some(path) => match std::fs::read(path) {
                            Ok(b) => Some(b),
                            Err(e) => {
                                return error(
                                    StatusCode::UNPROCESSABLE_ENTITY,
                                    format!("{path}: {e}"),
                                );
                            }
                        },
                        None => return error(StatusCode::BAD_REQUEST, "expected {\"path\": ...}"),
                    },
                };
                match c.replace(name, bytes).await {
                    Ok(s) => json_reply(StatusCode::OK, &s),
                    Err(e) => swap_error(&e),
                }
            }
            (&Method::DELETE, ["plugins", name]) => match c.unload(name).await {
                Ok(()) => json_reply(StatusCode::OK, &c.plugins()),
                Err(e) => swap_error(&e),
            },
            (&Method::POST, ["reload"]) => match c.reload().await {
                Ok(s) => json_reply(StatusCode::OK, &s),
                Err(ReloadError::Swap(e)) => swap_error(&e),
                Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
            },
            (&Method::GET, ["clients"]) => json_reply(StatusCode::OK, &c.clients()),
            (&Method::POST, ["clients", "reauthenticate"]) => {
                let n = c.reauthenticate(query_param(&query, "plugin"));
                json_reply(StatusCode::OK, &json!({ "disconnected": n }))
            }
            (&Method::POST, ["clients", id, "kick"]) => match c.kick(id) {
                true => json_reply(StatusCode::OK, &json!({ "kicked": id })),
                false => error(
                    StatusCode::NOT_FOUND,
                    format!("client {id:?} is not connected"),
                ),
            },
            (&Method::POST, ["clients", id, "ban"]) => match c.ban(id).await {
                Ok(()) => json_reply(StatusCode::OK, &json!({ "banned": id })),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("client id {id:?} is banned until the broker stops, not kept: {e}"),
                ),
            },
            (&Method::DELETE, ["clients", id, "ban"]) => match c.unban(id).await {
                Ok(true) => json_reply(StatusCode::OK, &json!({ "unbanned": id })),
                Ok(false) => error(
                    StatusCode::NOT_FOUND,
                    format!("client id {id:?} is not banned"),
                ),
                Err(e) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "the ban on {id:?} is lifted until the broker stops, not for good: {e}"
                    ),
                ),
            },
            (&Method::GET, ["bans"]) => json_reply(StatusCode::OK, &c.bans()),
            _ => error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {method} {path}"),
            ),
        }
    }

    /// The request's body, read up to `max_body`.
    async fn body(&self, req: Request<Incoming>) -> Result<Body, Reply> {
        let collected = Limited::new(req.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, e))?
            .to_bytes();
        if collected.is_empty() {
            return Ok(Body::Empty);
        }
        if collected.starts_with(b"\0asm") {
            return Ok(Body::Component(collected.to_vec()));
        }
        serde_json::from_slice(&collected)
            .map(Body::Json)
            .map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                )
            })
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(given) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest[..].ct_eq(&self.token_digest[..]).into()
    }

    /// Whether the Host header names this server: its address, `localhost` or a loopback
    /// address, with its port or none.
    fn host_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(host) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let port = self.addr.port().to_string();
        let name = match host.rsplit_once(':') {
            Some((name, p)) if !name.is_empty() && !p.contains(']') => {
                if p != port {
                    return false;
                }
                name
            }
            _ => host,
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.addr.ip(),
            Err(_) => false,
        }
    }
}

fn query_param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}
