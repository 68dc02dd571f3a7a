//! The `http` capability against real servers on loopback ports: a small HTTP/1.1 server
//! written for the tests (so each answer, redirect and misbehaviour is exact) and a TLS one.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A server answering each request with what `answer` makes of its head; it records the
/// heads it saw.
struct Server {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

impl Server {
    async fn start(answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static) -> Server {
        Server::start_with(answer, None).await
    }

    /// With `tls`, the server speaks HTTPS.
    async fn start_with(
        answer: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (answer, seen, tls) = (answer.clone(), seen.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_one(s, &*answer, &seen).await;
                            }
                        }
                        None => serve_one(stream, &*answer, &seen).await,
                    }
                });
            }
        });
        Server { addr, heads, task }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

async fn serve_one(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    answer: &(dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync),
    seen: &Mutex<Vec<String>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    seen.lock().push(head.clone());
    match answer(&head) {
        Some(bytes) => {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
        // Never answer: hold the connection until the client gives up.
        None => tokio::time::sleep(Duration::from_secs(30)).await,
    }
}

fn ok(body: &str) -> Option<Vec<u8>> {
    Some(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn redirect(status: u16, location: &str) -> Option<Vec<u8>> {
    Some(
        format!(
            "HTTP/1.1 {status} Moved\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

fn grant(allow: &[&str]) -> HttpGrant {
    HttpGrant {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..HttpGrant::default()
    }
}

fn get(url: &str) -> Request {
    Request {
        method: "GET".into(),
        url: url.into(),
        ..Request::default()
    }
}

#[test]
fn only_ordinary_public_addresses_are_public() {
    for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
        assert!(is_public(public.parse().unwrap()), "{public}");
    }
    for special in [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fd00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "2001:db8::1",
    ] {
        assert!(!is_public(special.parse().unwrap()), "{special}");
    }
}

#[test]
fn origins_are_scheme_host_and_port_only() {
    assert_eq!(
        Origin::parse("https://Login.Example.com").unwrap(),
        Origin::parse("https://login.example.com:443/").unwrap()
    );
    assert_ne!(
        Origin::parse("http://example.com").unwrap(),
        Origin::parse("https://example.com").unwrap()
    );
    for bad in [
        "ftp://example.com",
        "https://example.com/path",
        "https://user:pw@example.com",
        "https://example.com/?q=1",
        "example.com",
        "file:///etc/passwd",
    ] {
        assert!(Origin::parse(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn a_granted_origin_is_fetched_with_headers_and_body() {
    let server = Server::start(|_| ok(r#"{"keys":[]}"#)).await;
    let client = HttpClient::new(&grant(&[&server.origin()])).unwrap();
    let mut request = get(&format!("{}/jwks.json?x=1", server.origin()));
    request.headers = vec![("accept".into(), "application/json".into())];
    let response = client.fetch(request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body, br#"{"keys":[]}"#);
    assert!(
        response
            .headers
            .contains(&("content-type".into(), "application/json".into()))
    );
    let head = &server.heads()[0];
    assert!(
        head.starts_with("GET /jwks.json?x=1 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("host: {}\r\n", server.addr)),
        "{head}"
    );
    assert!(lower.contains("accept: application/json\r\n"), "{head}");
    assert!(lower.contains("user-agent: moat/"), "{head}");
}

#[tokio::test]
async fn an_origin_not_granted_is_refused_before_any_connection() {
    let server = Server::start(|_| ok("secret")).await;
    let other = Server::start(|_| ok("x")).await;
    let client = HttpClient::new(&grant(&[&other.origin()])).unwrap();
    let refused = client.fetch(get(&server.origin())).await.unwrap_err();
    assert!(
        matches!(refused, FetchError::OriginNotGranted(_)),
        "{refused}"
    );
    assert!(matches!(refused.to_wit(), CapabilityError::NotGranted));
    // Same host, another scheme.
    let https = format!("https://{}", server.addr);
    assert!(matches!(
        client.fetch(get(&https)).await,
        Err(FetchError::OriginNotGranted(_))
    ));
    assert!(server.heads().is_empty());
}

#[tokio::test]
async fn a_name_resolving_to_loopback_needs_the_range_granted() {
    let server = Server::start(|_| ok("local")).await;
    let by_name = format!("http://localhost:{}", server.addr.port());
    let client = HttpClient::new(&grant(&[&by_name])).unwrap();
    let refused = client.fetch(get(&by_name)).await.unwrap_err();
    assert!(
        matches!(refused, FetchError::AddressNotGranted { .. }),
        "{refused}"
    );
    assert!(server.heads().is_empty());

    let client = HttpClient::new(&HttpGrant {
        allow_addresses: vec!["127.0.0.0/8".into(), "::1/128".into()],
        ..grant(&[&by_name])
    })
    .unwrap();
    assert_eq!(client.fetch(get(&by_name)).await.unwrap().body, b"local");
}

#[tokio::test]
async fn redirects_are_followed_only_to_granted_origins() {
    let target = Server::start(|_| ok("moved here")).await;
    let to = format!("{}/new", target.origin());
    let hop = Server::start(move |_| redirect(302, &to)).await;
    let both = HttpClient::new(&grant(&[&hop.origin(), &target.origin()])).unwrap();
    let response = both.fetch(get(&hop.origin())).await.unwrap();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, &b"moved here"[..])
    );
    assert!(target.heads()[0].starts_with("GET /new "));

    // The first origin is granted, the one it redirects to is not.
    let one = HttpClient::new(&grant(&[&hop.origin()])).unwrap();
    let refused = one.fetch(get(&hop.origin())).await.unwrap_err();
    assert!(
        matches!(refused, FetchError::OriginNotGranted(_)),
        "{refused}"
    );
    assert_eq!(
        target.heads().len(),
        1,
        "the refused hop reached the server"
    );
}

#[tokio::test]
async fn a_redirect_to_another_origin_drops_credentials() {
    let target = Server::start(|_| ok("ok")).await;
    let to = target.origin();
    let hop = Server::start(move |_| redirect(307, &to)).await;
    let client = HttpClient::new(&grant(&[&hop.origin(), &target.origin()])).unwrap();
    let mut request = get(&hop.origin());
    request.headers = vec![
        ("authorization".into(), "Bearer t".into()),
        ("x-trace".into(), "1".into()),
    ];
    client.fetch(request).await.unwrap();
    assert!(
        hop.heads()[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer t")
    );
    let second = target.heads()[0].to_ascii_lowercase();
    assert!(!second.contains("authorization"), "{second}");
    assert!(second.contains("x-trace: 1"), "{second}");
}

#[tokio::test]
async fn redirects_stop_at_the_grants_bound() {
    let server = Server::start(|head| {
        let n: u32 = head
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.trim_start_matches('/').parse().ok())
            .unwrap_or(0);
        redirect(302, &format!("/{}", n + 1))
    })
    .await;
    let client = HttpClient::new(&HttpGrant {
        max_redirects: 2,
        ..grant(&[&server.origin()])
    })
    .unwrap();
    let response = client.fetch(get(&server.origin())).await.unwrap();
    assert_eq!(response.status, 302, "the last redirect is the answer");
    assert_eq!(
        server.heads().len(),
        3,
        "the first request and two redirects"
    );
}

#[tokio::test]
async fn an_answer_over_the_body_cap_is_refused() {
    let big = "x".repeat(2000);
    let declared = Server::start(move |_| ok(&big)).await;
    let chunked = Server::start(|_| {
        let mut r =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        for _ in 0..4 {
            r.extend_from_slice(b"200\r\n");
            r.extend_from_slice(&[b'y'; 0x200]);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        Some(r)
    })
    .await;
    let client = HttpClient::new(&HttpGrant {
        max_body_bytes: 1000,
        ..grant(&[&declared.origin(), &chunked.origin()])
    })
    .unwrap();
    for server in [&declared, &chunked] {
        let e = client.fetch(get(&server.origin())).await.unwrap_err();
        assert_eq!(e, FetchError::TooLarge(1000));
        assert!(matches!(e.to_wit(), CapabilityError::TooLarge));
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = Server::start(|_| None).await;
    let client = HttpClient::new(&HttpGrant {
        timeout_ms: 300,
        ..grant(&[&server.origin()])
    })
    .unwrap();
    let e = client.fetch(get(&server.origin())).await.unwrap_err();
    assert!(matches!(e.to_wit(), CapabilityError::Timeout));
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = HttpClient::new(&grant(&[&origin])).unwrap();
    let e = client.fetch(get(&origin)).await.unwrap_err();
    assert!(matches!(e, FetchError::Unavailable(_)), "{e}");
}

#[tokio::test]
async fn requests_the_broker_must_shape_itself_are_invalid() {
    let server = Server::start(|_| ok("x")).await;
    let client = HttpClient::new(&grant(&[&server.origin()])).unwrap();
    for header in [
        "host",
        "Content-Length",
        "transfer-encoding",
        "proxy-authorization",
    ] {
        let mut r = get(&server.origin());
        r.headers = vec![(header.into(), "x".into())];
        assert!(
            matches!(client.fetch(r).await, Err(FetchError::Invalid(_))),
            "{header}"
        );
    }
    let mut r = get(&server.origin());
    r.method = "CONNECT".into();
    assert!(matches!(client.fetch(r).await, Err(FetchError::Invalid(_))));
    assert!(matches!(
        client.fetch(get("not a url")).await,
        Err(FetchError::Invalid(_))
    ));
    assert!(server.heads().is_empty());
}

#[tokio::test]
async fn https_is_verified_against_the_grants_ca_file() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let server = Server::start_with(|_| ok("over tls"), Some(acceptor)).await;
    let origin = format!("https://{}", server.addr);

    // Not trusted by the system's roots.
    let untrusted = HttpClient::new(&grant(&[&origin])).unwrap();
    let e = untrusted.fetch(get(&origin)).await.unwrap_err();
    assert!(
        matches!(e, FetchError::Unavailable(ref why) if why.contains("TLS")),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let trusted = HttpClient::new(&HttpGrant {
        ca_file: Some(ca),
        ..grant(&[&origin])
    })
    .unwrap();
    assert_eq!(trusted.fetch(get(&origin)).await.unwrap().body, b"over tls");
}

#[test]
fn a_missing_ca_file_is_a_grant_error() {
    let e = HttpClient::new(&HttpGrant {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..grant(&["https://example.com"])
    });
    assert!(e.is_err());
}
