//! SCRAM-SHA-256 as MQTT 5 enhanced authentication (section 4.12) through the bundled
//! `static-acl` plugin, with a client written here from RFC 5802/7677 that checks the server's
//! signature: a verifier written by `moat passwd --scram`, a wrong password, an unknown user
//! (whose challenge looks like a real one), and the same entry used for a plain password.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use moat::codec::{Auth, Packet, Properties, PropertyValues, ProtocolVersion, ReasonCode};
use moat::config::PluginConfig;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::harness::{RawClient, TestBroker, raw_connect_packet, start_with};
use crate::plugins::login;
use crate::static_acl::grants;
use crate::static_acl_broker::moat_passwd;

const METHOD: &str = "SCRAM-SHA-256";

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// A broker with static-acl on a password file holding `dave`'s SCRAM verifier (made by
/// `moat passwd --scram`) and nothing else.
async fn broker(dir: &std::path::Path) -> TestBroker {
    let passwd = dir.join("passwd");
    let out = moat_passwd(
        &["--stdin", "--scram"],
        &passwd,
        Some("dave"),
        "correct horse\n",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&passwd).unwrap();
    assert!(text.starts_with("dave:SCRAM-SHA-256$4096:"), "{text}");
    let serde_json::Value::Object(config) = json!({"password_file": "passwd"}) else {
        unreachable!()
    };
    let plugin = PluginConfig {
        name: "files".into(),
        bundled: Some("static-acl".into()),
        grants: grants(&[("passwd", &passwd)]),
        config,
        authorize_timeout_ms: 2000,
        ..PluginConfig::default()
    };
    start_with(|c| c.plugin_chain = vec![plugin]).await
}

fn auth(data: &[u8]) -> Packet {
    Packet::Auth(Auth {
        reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
        properties: Properties::from(PropertyValues {
            authentication_method: Some(METHOD.into()),
            authentication_data: Some(bytes::Bytes::copy_from_slice(data)),
            ..PropertyValues::default()
        }),
    })
}

/// Runs the exchange as `user` with `password`; returns the CONNACK's reason code, and, on
/// success, whether the server's signature was right.
pub async fn scram_login(b: &TestBroker, user: &str, password: &str) -> (ReasonCode, bool) {
    let client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
    let client_first_bare = format!("n={user},r={client_nonce}");
    let mut connect = raw_connect_packet(ProtocolVersion::V5, "scram-client", true);
    connect.properties.authentication_method = Some(METHOD.into());
    connect.properties.authentication_data =
        Some(bytes::Bytes::from(format!("n,,{client_first_bare}")));
    let mut c = RawClient::connect(b.addr, ProtocolVersion::V5).await;
    c.send(&Packet::Connect(Box::new(connect))).await;
    let server_first = match c.recv().await {
        Some(Packet::Auth(a)) => {
            assert_eq!(a.reason_code, ReasonCode::CONTINUE_AUTHENTICATION);
            String::from_utf8(a.properties.authentication_data.clone().unwrap().to_vec()).unwrap()
        }
        Some(Packet::ConnAck(ack)) => return (ack.reason_code, false),
        other => panic!("expected AUTH, got {other:?}"),
    };
    let attr = |k: &str| {
        server_first
            .split(',')
            .find_map(|a| a.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} in {server_first}"))
            .to_owned()
    };
    let (nonce, salt, iterations) = (attr("r="), attr("s="), attr("i="));
    assert!(nonce.starts_with(client_nonce) && nonce.len() > client_nonce.len());
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.as_bytes(),
        &B64.decode(salt).unwrap(),
        iterations.parse().unwrap(),
        &mut salted,
    );
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    c.send(&auth(
        format!("{without_proof},p={}", B64.encode(proof)).as_bytes(),
    ))
    .await;
    match c.recv().await {
        Some(Packet::ConnAck(ack)) => {
            let server_key = hmac(&salted, b"Server Key");
            let expected = format!(
                "v={}",
                B64.encode(hmac(&server_key, auth_message.as_bytes()))
            );
            let signed = ack.properties.authentication_data.as_deref() == Some(expected.as_bytes());
            (ack.reason_code, signed)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// The right password logs in and the CONNACK carries the server signature the client
/// expects; a wrong password and an unknown user get 0x86 after a challenge of the same shape;
/// the SCRAM entry also serves a plain-password CONNECT.
#[tokio::test]
async fn scram_sha_256_logs_in_and_proves_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    assert_eq!(
        scram_login(&b, "dave", "correct horse").await,
        (ReasonCode::SUCCESS, true)
    );
    assert_eq!(
        scram_login(&b, "dave", "wrong horse").await.0,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    assert_eq!(
        scram_login(&b, "nobody", "correct horse").await.0,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    let (_, ack) = RawClient::handshake(
        b.addr,
        login(ProtocolVersion::V5, "plain", "dave", "correct horse"),
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
    b.stop().await;
}
