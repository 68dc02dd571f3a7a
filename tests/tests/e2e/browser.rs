//! MQTT over WebSocket from a real browser: headless Debian Chromium, driven by playwright-core
//! (`tests/browser/run.mjs`), loads a page from a loopback HTTP server started here; the page
//! (`tests/browser/page.html`) uses MQTT.js to connect over `ws` and `wss`, subscribe, publish
//! and receive, and checks that a listener whose origin allow-list does not name the page
//! refuses it. `.ci/run` installs chromium and runs `npm ci` in `tests/browser/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use moat::config::{ListenerConfig, Protocol};
use moat::metrics::Limit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::tls::{Pki, listener, start_with_listeners};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Serves the test page and MQTT.js on 127.0.0.1 until the test ends; returns the port.
async fn serve_page() -> u16 {
    let page = std::fs::read(browser_dir().join("page.html")).expect("page.html");
    let mqtt_js = std::fs::read(browser_dir().join("node_modules/mqtt/dist/mqtt.min.js"))
        .expect("MQTT.js is installed (cd tests/browser && npm ci)");
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = server.accept().await else {
                return;
            };
            let (page, mqtt_js) = (page.clone(), mqtt_js.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request);
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let (status, kind, body) = match path.split('?').next() {
                    Some("/") => ("200 OK", "text/html", page),
                    Some("/mqtt.min.js") => ("200 OK", "text/javascript", mqtt_js),
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    port
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        out.extend(std::iter::repeat_n('=', 3 - chunk.len()));
    }
    out
}

/// Chromium with MQTT.js round-trips messages over `ws` and over `wss` (its certificate from
/// the test's CA, trusted by key), and a `ws` listener that does not list the page's origin
/// refuses it.
#[tokio::test]
async fn chromium_with_mqtt_js_talks_over_ws_and_wss() {
    let http = serve_page().await;
    let origin = format!("http://127.0.0.1:{http}");
    let pki = Pki::new();
    let allowed = Some(vec![origin.clone()]);
    let listeners = vec![
        ListenerConfig {
            name: "ws".into(),
            allowed_origins: allowed.clone(),
            ..listener(Protocol::Ws, None)
        },
        ListenerConfig {
            name: "wss".into(),
            allowed_origins: allowed,
            ..listener(Protocol::Wss, Some(pki.tls()))
        },
        ListenerConfig {
            name: "elsewhere".into(),
            allowed_origins: Some(vec!["https://app.example.com".into()]),
            ..listener(Protocol::Ws, None)
        },
    ];
    let b = start_with_listeners(listeners).await;
    let port = |name: &str| {
        let l = b.broker.listeners().iter().find(|(n, _)| &**n == name);
        l.unwrap().1.port()
    };
    let url = format!(
        "{origin}/?broker=ws://127.0.0.1:{}/mqtt&broker=wss://127.0.0.1:{}/mqtt\
         &denied=ws://127.0.0.1:{}/mqtt",
        port("ws"),
        port("wss"),
        port("elsewhere")
    );
    let spki = {
        let key = rcgen::KeyPair::from_pem(&pki.server.key_pem).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        base64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki).as_ref())
    };
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg("run.mjs")
            .args([&url, &spki])
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser test finishes within two minutes")
    .expect("node runs (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser checks failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches("\"ok\":true").count(), 3, "{stdout}");
    assert!(b.broker.metrics().limited(Limit::WsOrigin) >= 1);
    b.stop().await;
}

#[test]
fn base64_matches_the_rfc_4648_examples() {
    for (input, expected) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), expected);
    }
}
