//! The jwt plugin hook by hook, through the plugin SDK's harness (the broker's own engine,
//! sandbox and capabilities, no broker): what it accepts, and every way a token is refused.

use moat::codec::{QoS, ReasonCode};
use moat::config::{Grants, HttpGrant, KvGrant};
use moat::policy::{ClientInfo, Credentials, Identity, PublishKind};
use moat_plugin_sdk::harness::{Answer, AuthStep, Decision, Harness, Limits, SubscribeDecision};
use serde_json::{Value, json};

use super::support::{
    JwksServer, SECRET, Signer, claims, jwk, now, public_pem, sign, tampered, unsigned,
};

/// The bundled plugin with `config`, granted `kv` and, with a JWKS server, `http` to it.
async fn load(config: Value, jwks: Option<&JwksServer>) -> Harness {
    let grants = Grants {
        kv: Some(KvGrant::default()),
        http: jwks.map(|s| HttpGrant {
            allow: vec![s.origin()],
            ..HttpGrant::default()
        }),
        ..Grants::default()
    };
    let wasm = moat::policy::wasm::bundled::get("jwt").expect("jwt is bundled");
    Harness::load_with_grants(wasm, &config.to_string(), Limits::default(), &grants)
        .await
        .unwrap_or_else(|e| panic!("loads with {config}: {e}"))
}

fn hs256() -> Value {
    json!({"keys": [{"secret": SECRET}]})
}

fn password(token: &str) -> Credentials {
    Harness::password(token)
}

async fn login(plugin: &Harness, client: &ClientInfo, token: &str) -> Answer<AuthStep> {
    plugin
        .authenticate(client, &password(token))
        .await
        .expect("no failure")
}

async fn admitted(plugin: &Harness, client: &ClientInfo, token: &str) -> Identity {
    match login(plugin, client, token).await {
        Answer::Decided(AuthStep::Allow { identity, .. }) => identity,
        other => panic!("refused: {other:?}"),
    }
}

/// The refusal's reason code and message.
async fn refused(plugin: &Harness, client: &ClientInfo, token: &str) -> (ReasonCode, String) {
    match login(plugin, client, token).await {
        Answer::Decided(AuthStep::Deny(d)) => (d.reason, d.message.unwrap_or_default()),
        other => panic!("not refused: {other:?}"),
    }
}

async fn refused_bad(plugin: &Harness, token: &str, why: &str) {
    let client = Harness::client("dev-1", Some("alice"));
    let (reason, message) = refused(plugin, &client, token).await;
    assert_eq!(reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{message}");
    assert!(message.contains(why), "expected {why:?} in {message:?}");
}

#[tokio::test]
async fn a_valid_token_lets_the_client_in_with_the_permissions_of_its_claims() {
    let plugin = load(
        json!({"keys": [{"secret": SECRET}], "roles_claim": "roles", "leeway_seconds": 5}),
        None,
    )
    .await;
    let client = Harness::client("dev-1", Some("alice"));
    let mut c = claims(
        "alice",
        600,
        &[
            "devices/%c/telemetry",
            "users/%u/#",
            "tenants/${tenant}/+/up",
        ],
        &["devices/%c/cmd/#"],
    );
    c["roles"] = json!(["ops", "viewer"]);
    c["tenant"] = json!("acme");
    let identity = admitted(
        &plugin,
        &client,
        &sign("HS256", Signer::Secret(SECRET.as_bytes()), None, &c),
    )
    .await;
    assert_eq!(&*identity.principal, "alice");
    assert_eq!(identity.roles, vec!["ops", "viewer"]);
    // The session ends when the token does (its exp plus the leeway).
    assert_eq!(identity.expires_at, Some(c["exp"].as_u64().unwrap() + 5));

    for (topic, allowed) in [
        ("devices/dev-1/telemetry", true),
        ("devices/dev-2/telemetry", false),
        ("users/alice/a/b", true),
        ("users/bob/a", false),
        ("tenants/acme/x/up", true),
        ("tenants/other/x/up", false),
    ] {
        let m = std::sync::Arc::new(Harness::message(topic, b"x"));
        let answer = plugin
            .authorize_publish(&client, &identity, PublishKind::Message, &m)
            .await
            .unwrap();
        match (allowed, answer) {
            (true, Answer::Decided(Decision::Allow { .. })) => {}
            (false, Answer::Decided(Decision::Deny(d))) => {
                assert_eq!(d.reason, ReasonCode::NOT_AUTHORIZED)
            }
            (_, other) => panic!("publish to {topic}: {other:?}"),
        }
    }
    for (filter, allowed) in [
        ("devices/dev-1/cmd/reboot", true),
        ("devices/dev-1/cmd/#", true),
        ("devices/+/cmd/#", false),
        ("#", false),
    ] {
        let answer = plugin
            .authorize_subscribe(&client, &identity, filter, None, QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(
            matches!(answer, Answer::Decided(SubscribeDecision::Allow { .. })),
            allowed,
            "subscribe to {filter}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn every_supported_algorithm_verifies_with_its_key() {
    let plugin = load(
        json!({"keys": [
            {"kid": "hs", "secret": SECRET},
            {"kid": "rsa", "alg": "RS256", "pem": public_pem("rsa1")},
            {"kid": "rsa-any", "jwk": jwk("rsa2", "ignored", None)},
            {"kid": "p256", "alg": "ES256", "pem": public_pem("ec256")},
            {"kid": "p384", "jwk": jwk("ec384", "p384", None)},
            {"kid": "ed", "alg": "EdDSA", "pem": public_pem("ed25519")},
        ]}),
        None,
    )
    .await;
    let client = Harness::client("dev-1", None);
    let c = claims("svc", 600, &[], &[]);
    for (alg, signer, kid) in [
        ("HS256", Signer::Secret(SECRET.as_bytes()), "hs"),
        ("HS384", Signer::Secret(SECRET.as_bytes()), "hs"),
        ("HS512", Signer::Secret(SECRET.as_bytes()), "hs"),
        ("RS256", Signer::Private("rsa1"), "rsa"),
        ("RS384", Signer::Private("rsa2"), "rsa-any"),
        ("RS512", Signer::Private("rsa2"), "rsa-any"),
        ("PS256", Signer::Private("rsa2"), "rsa-any"),
        ("ES256", Signer::Private("ec256"), "p256"),
        ("ES384", Signer::Private("ec384"), "p384"),
        ("EdDSA", Signer::Private("ed25519"), "ed"),
    ] {
        let token = sign(alg, signer, Some(kid), &c);
        match login(&plugin, &client, &token).await {
            Answer::Decided(AuthStep::Allow { .. }) => {}
            other => panic!("{alg}: {other:?}"),
        }
    }
    // A key pinned to RS256 by its configuration refuses RS512 from the same key pair.
    let token = sign("RS512", Signer::Private("rsa1"), Some("rsa"), &c);
    refused_bad(&plugin, &token, "does not fit key \"rsa\"").await;
}

#[tokio::test]
async fn a_forged_signature_is_refused() {
    let plugin = load(
        json!({"keys": [
            {"kid": "hs", "secret": SECRET},
            {"kid": "rsa", "alg": "RS256", "pem": public_pem("rsa1")},
        ]}),
        None,
    )
    .await;
    let honest = claims("alice", 600, &["alice/#"], &[]);
    let greedy = claims("alice", 600, &["#"], &[]);
    let hs = sign(
        "HS256",
        Signer::Secret(SECRET.as_bytes()),
        Some("hs"),
        &honest,
    );
    refused_bad(
        &plugin,
        &tampered(&hs, &greedy),
        "signature does not verify",
    )
    .await;
    let other_secret = b"another secret, also thirty-two bytes long";
    let forged = sign("HS256", Signer::Secret(other_secret), Some("hs"), &greedy);
    refused_bad(&plugin, &forged, "signature does not verify").await;
    // Signed by another RSA key under the configured key's id.
    let forged = sign("RS256", Signer::Private("rsa2"), Some("rsa"), &greedy);
    refused_bad(&plugin, &forged, "signature does not verify").await;
    let rs = sign("RS256", Signer::Private("rsa1"), Some("rsa"), &honest);
    refused_bad(
        &plugin,
        &tampered(&rs, &greedy),
        "signature does not verify",
    )
    .await;
}

#[tokio::test]
async fn unsigned_tokens_are_refused() {
    let plugin = load(hs256(), None).await;
    let c = claims("alice", 600, &["#"], &[]);
    for alg in ["none", "None", "NONE"] {
        refused_bad(&plugin, &unsigned(alg, &c), "alg \"none\"").await;
    }
    refused_bad(&plugin, &unsigned("HS1", &c), "not accepted").await;
}

/// Algorithm confusion: an HS256 token "signed" with the RSA public key as its HMAC secret must
/// not verify against that RSA key.
#[tokio::test]
async fn an_hmac_token_against_an_rsa_public_key_is_refused() {
    let pem = public_pem("rsa1");
    let plugin = load(
        json!({"keys": [{"kid": "rsa", "alg": "RS256", "pem": pem}]}),
        None,
    )
    .await;
    let c = claims("mallory", 600, &["#"], &[]);
    let confused = sign("HS256", Signer::Secret(pem.as_bytes()), Some("rsa"), &c);
    refused_bad(
        &plugin,
        &confused,
        "HS256 does not fit key \"rsa\" (an RSA key)",
    )
    .await;
    let confused = sign("HS256", Signer::Secret(pem.as_bytes()), None, &c);
    refused_bad(&plugin, &confused, "no key").await;
    // Through a JWK without `alg` too: an RSA key never verifies an HMAC.
    let plugin = load(json!({"keys": [{"jwk": jwk("rsa1", "rsa", None)}]}), None).await;
    let confused = sign("HS256", Signer::Secret(pem.as_bytes()), Some("rsa"), &c);
    refused_bad(&plugin, &confused, "does not fit").await;
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
    let plugin = load(
        json!({"keys": [{"secret": SECRET}], "leeway_seconds": 30}),
        None,
    )
    .await;
    let key = || Signer::Secret(SECRET.as_bytes());
    refused_bad(
        &plugin,
        &sign("HS256", key(), None, &claims("a", -120, &[], &[])),
        "expired",
    )
    .await;
    let client = Harness::client("dev-1", None);
    admitted(
        &plugin,
        &client,
        &sign("HS256", key(), None, &claims("a", -10, &[], &[])),
    )
    .await;

    let mut early = claims("a", 600, &[], &[]);
    early["nbf"] = json!(now() + 300);
    refused_bad(
        &plugin,
        &sign("HS256", key(), None, &early),
        "not valid yet",
    )
    .await;
    early["nbf"] = json!(now() + 10);
    admitted(&plugin, &client, &sign("HS256", key(), None, &early)).await;

    let mut endless = claims("a", 600, &[], &[]);
    endless.as_object_mut().unwrap().remove("exp");
    refused_bad(
        &plugin,
        &sign("HS256", key(), None, &endless),
        "no `exp` claim",
    )
    .await;
}

#[tokio::test]
async fn the_issuer_and_audience_must_be_the_configured_ones() {
    let plugin = load(
        json!({"keys": [{"secret": SECRET}], "issuer": "https://login.example.com/",
               "audience": ["mqtt", "devices"]}),
        None,
    )
    .await;
    let key = || Signer::Secret(SECRET.as_bytes());
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut c = claims("a", 600, &[], &[]);
        if let Some(iss) = iss {
            c["iss"] = iss.into();
        }
        if let Some(aud) = aud {
            c["aud"] = aud;
        }
        sign("HS256", key(), None, &c)
    };
    let client = Harness::client("dev-1", None);
    admitted(
        &plugin,
        &client,
        &with(Some("https://login.example.com/"), Some(json!("mqtt"))),
    )
    .await;
    admitted(
        &plugin,
        &client,
        &with(
            Some("https://login.example.com/"),
            Some(json!(["web", "devices"])),
        ),
    )
    .await;
    refused_bad(
        &plugin,
        &with(Some("https://evil.example/"), Some(json!("mqtt"))),
        "issuer",
    )
    .await;
    refused_bad(&plugin, &with(None, Some(json!("mqtt"))), "no `iss` claim").await;
    refused_bad(
        &plugin,
        &with(Some("https://login.example.com/"), Some(json!("web"))),
        "audience",
    )
    .await;
    refused_bad(
        &plugin,
        &with(Some("https://login.example.com/"), None),
        "no `aud` claim",
    )
    .await;
}

#[tokio::test]
async fn the_token_can_be_bound_to_the_client_id_and_user_name() {
    let plugin = load(
        json!({"keys": [{"secret": SECRET}], "client_id_claim": "cid",
               "username_claim": "preferred_username"}),
        None,
    )
    .await;
    let mut c = claims("alice", 600, &[], &[]);
    c["cid"] = json!("dev-1");
    c["preferred_username"] = json!("alice");
    let token = sign("HS256", Signer::Secret(SECRET.as_bytes()), None, &c);
    admitted(&plugin, &Harness::client("dev-1", Some("alice")), &token).await;
    let (_, why) = refused(&plugin, &Harness::client("dev-2", Some("alice")), &token).await;
    assert!(why.contains("client identifier"), "{why}");
    let (_, why) = refused(&plugin, &Harness::client("dev-1", Some("bob")), &token).await;
    assert!(why.contains("user"), "{why}");
    let (_, why) = refused(&plugin, &Harness::client("dev-1", None), &token).await;
    assert!(why.contains("user"), "{why}");
}

#[tokio::test]
async fn a_password_that_is_no_token_is_left_to_the_next_plugin() {
    let plugin = load(hs256(), None).await;
    let client = Harness::client("dev-1", Some("alice"));
    for password in ["hunter2", "a.b", "a.b.c.d", "not a.jwt.at all"] {
        assert_eq!(
            login(&plugin, &client, password).await,
            Answer::Next,
            "{password}"
        );
    }
    let none = Credentials::default();
    assert_eq!(
        plugin.authenticate(&client, &none).await.unwrap(),
        Answer::Next
    );
}

#[tokio::test]
async fn enhanced_authentication_data_carries_the_token_for_its_method() {
    let plugin = load(
        json!({"keys": [{"secret": SECRET}], "auth_method": "JWT"}),
        None,
    )
    .await;
    let client = Harness::client("dev-1", None);
    let token = sign(
        "HS256",
        Signer::Secret(SECRET.as_bytes()),
        None,
        &claims("a", 600, &[], &[]),
    );
    let enhanced = |method: &str, data: &str| Credentials {
        auth_method: Some(method.into()),
        auth_data: Some(bytes::Bytes::copy_from_slice(data.as_bytes())),
        ..Credentials::default()
    };
    assert!(matches!(
        plugin.authenticate(&client, &enhanced("JWT", &token)).await,
        Ok(Answer::Decided(AuthStep::Allow { .. }))
    ));
    assert!(matches!(
        plugin
            .authenticate(&client, &enhanced("JWT", "garbage"))
            .await,
        Ok(Answer::Decided(AuthStep::Deny(_)))
    ));
    assert_eq!(
        plugin
            .authenticate(&client, &enhanced("SCRAM-SHA-256", &token))
            .await,
        Ok(Answer::Next)
    );
}

/// A token naming a key the set lacks asks for the set again, but at most once per
/// `jwks_min_refresh_seconds`: a flood of made-up key ids costs the identity provider one
/// request a minute.
#[tokio::test]
async fn an_unknown_kid_refreshes_the_key_set_at_most_once_per_interval() {
    let server = JwksServer::start(vec![jwk("rsa1", "k1", Some("RS256"))]).await;
    let plugin = load(json!({"jwks_url": server.url()}), Some(&server)).await;
    let client = Harness::client("dev-1", None);
    let c = claims("svc", 600, &[], &[]);
    admitted(
        &plugin,
        &client,
        &sign("RS256", Signer::Private("rsa1"), Some("k1"), &c),
    )
    .await;
    assert_eq!(server.requests(), 1, "the first token fetches the set");
    admitted(
        &plugin,
        &client,
        &sign("RS256", Signer::Private("rsa1"), Some("k1"), &c),
    )
    .await;
    assert_eq!(server.requests(), 1, "a known key needs no fetch");

    server.set_keys(vec![jwk("rsa2", "k2", Some("RS256"))]);
    for kid in ["k2", "made-up-1", "made-up-2", "k2"] {
        let token = sign("RS256", Signer::Private("rsa2"), Some(kid), &c);
        refused_bad(&plugin, &token, "no key").await;
    }
    assert_eq!(server.requests(), 1, "no refresh within the minute");

    // With a one-second interval the rotated key is picked up once the interval has passed.
    let server = JwksServer::start(vec![jwk("rsa1", "k1", Some("RS256"))]).await;
    let plugin = load(
        json!({"jwks_url": server.url(), "jwks_min_refresh_seconds": 1}),
        Some(&server),
    )
    .await;
    admitted(
        &plugin,
        &client,
        &sign("RS256", Signer::Private("rsa1"), Some("k1"), &c),
    )
    .await;
    server.set_keys(vec![jwk("rsa2", "k2", Some("RS256"))]);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let k2 = sign("RS256", Signer::Private("rsa2"), Some("k2"), &c);
    admitted(&plugin, &client, &k2).await;
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn bad_configurations_stop_the_plugin_from_loading() {
    let wasm = moat::policy::wasm::bundled::get("jwt").unwrap();
    for (config, why) in [
        (json!({}), "give `keys` or `jwks_url`"),
        (json!({"keys": [{"secret": "short"}]}), "at least 32 bytes"),
        (
            json!({"keys": [{"pem": public_pem("rsa1")}]}),
            "needs its `alg`",
        ),
        (
            json!({"keys": [{"alg": "HS256", "pem": public_pem("rsa1")}]}),
            "never a PEM key",
        ),
        (
            json!({"keys": [{"alg": "ES256", "pem": public_pem("rsa1")}]}),
            "not a public key for ES256",
        ),
        (
            json!({"keys": [{"secret": SECRET, "alg": "RS256"}]}),
            "does not fit",
        ),
        (
            json!({"keys": [{"secret": SECRET}], "algorithms": ["none"]}),
            "not supported",
        ),
        (json!({"jwks_url": "ftp://x"}), "not an http(s) URL"),
        (
            json!({"keys": [{"secret": SECRET}], "colour": "blue"}),
            "unknown field",
        ),
    ] {
        let e = match Harness::load(wasm, &config.to_string()).await {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{config} loaded"),
        };
        assert!(e.contains(why), "{config}: expected {why:?} in {e:?}");
    }
}
