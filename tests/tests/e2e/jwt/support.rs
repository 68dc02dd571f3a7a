//! What the jwt tests share: the fixture keys (`tests/fixtures/jwt`), tokens signed with them,
//! and a small JWKS server on a loopback port that can rotate its keys, go down and come back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HMAC secret long enough for every HS algorithm's minimum.
pub const SECRET: &str = "an HMAC secret of thirty-two bytes or more";

fn fixture(file: &str) -> String {
    let path = format!("{}/fixtures/jwt/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The private key `name` (rsa1, rsa2, ec256, ec384, ed25519), PKCS#8 PEM.
pub fn private_pem(name: &str) -> String {
    fixture(&format!("{name}.pem"))
}

/// Its public key, SPKI PEM.
pub fn public_pem(name: &str) -> String {
    fixture(&format!("{name}.pub.pem"))
}

/// Its public key as a JWK with `kid`, and `alg` if given.
pub fn jwk(name: &str, kid: &str, alg: Option<&str>) -> Value {
    let all: Value = serde_json::from_str(&fixture("public.jwk.json")).unwrap();
    let mut key = all[name].clone();
    key["kid"] = kid.into();
    if let Some(alg) = alg {
        key["alg"] = alg.into();
    }
    key
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `sub`, expiring `exp_in` seconds from now, with publish and subscribe filters.
pub fn claims(sub: &str, exp_in: i64, publish: &[&str], subscribe: &[&str]) -> Value {
    json!({
        "sub": sub,
        "exp": now() as i64 + exp_in,
        "mqtt": {"pub": publish, "sub": subscribe},
    })
}

/// A key to sign with.
pub enum Signer<'a> {
    /// The HMAC secret given (any bytes: the algorithm-confusion test signs with a public key).
    Secret(&'a [u8]),
    /// The fixture private key of that name.
    Private(&'a str),
}

/// A token signed with `alg` by `signer`, with `kid` in its header.
pub fn sign(alg: &str, signer: Signer, kid: Option<&str>, claims: &Value) -> String {
    let alg: Algorithm = alg.parse().expect("a known algorithm");
    let key = match signer {
        Signer::Secret(s) => EncodingKey::from_secret(s),
        Signer::Private(name) => {
            let pem = private_pem(name);
            match alg {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
                _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
            }
            .expect("a fixture key")
        }
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("signs")
}

/// An unsigned token (`alg` as given, e.g. "none"), with an empty signature.
pub fn unsigned(alg: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT"});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `token` with its claims replaced and its signature kept: a forgery.
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

/// A JWKS server on 127.0.0.1: any GET gets the current key set.
pub struct JwksServer {
    pub addr: SocketAddr,
    keys: Arc<Mutex<Value>>,
    requests: Arc<AtomicUsize>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl JwksServer {
    pub async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            keys: Arc::new(Mutex::new(json!({ "keys": keys }))),
            requests: Arc::new(AtomicUsize::new(0)),
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: TcpListener) {
        let (keys, requests) = (self.keys.clone(), self.requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (keys, requests) = (keys.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    requests.fetch_add(1, Ordering::SeqCst);
                    let body = keys.lock().to_string();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        *self.task.lock() = Some(task);
    }

    /// The origin to grant: `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.origin())
    }

    /// Serves `keys` from now on (a key rotation).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.keys.lock() = json!({ "keys": keys });
    }

    /// The requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops listening: connections are refused until [`JwksServer::resume`].
    pub async fn stop(&self) {
        let task = self.task.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the port is free again");
        self.serve(listener);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}
