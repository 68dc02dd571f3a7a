//! The bundled `static-acl` plugin, hook by hook, through the plugin SDK's harness (the
//! broker's own engine, sandbox and capabilities, no broker): Mosquitto's password and ACL
//! files as `mosquitto_passwd` and Mosquitto's documentation write them, the TOML form with
//! roles, configuration errors, and rereading the files.
//!
//! `static_acl_broker` drives the same plugin behind a real broker with real clients.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytestring::ByteString;
use moat::codec::QoS;
use moat::config::{Grants, PasswordGrant};
use moat::policy::{ClientInfo, Identity, PublishKind};
use moat_plugin_sdk::harness::{
    Answer, AuthStep, Decision, Harness, Limits, LoadError, SubscribeDecision,
};
use serde_json::{Value, json};

/// Runs the real `mosquitto_passwd -b` (Debian package `mosquitto`), creating the file with
/// `-c` when `create`.
pub fn mosquitto_passwd(file: &Path, user: &str, password: &str, create: bool) {
    let mut cmd = std::process::Command::new("mosquitto_passwd");
    if create {
        cmd.arg("-c");
    }
    let out = cmd
        .arg("-b")
        .arg(file)
        .arg(user)
        .arg(password)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_passwd: {e} (is `mosquitto` installed?)"));
    assert!(
        out.status.success(),
        "mosquitto_passwd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Grants of the files named (grant name, path) and of `password`.
pub fn grants(files: &[(&str, &Path)]) -> Grants {
    Grants {
        files: Some(
            files
                .iter()
                .map(|(n, p)| (n.to_string(), p.to_path_buf()))
                .collect::<BTreeMap<String, PathBuf>>(),
        ),
        password: Some(PasswordGrant { pool_size: 2 }),
        ..Grants::default()
    }
}

/// The bundled component.
pub fn component() -> &'static [u8] {
    moat::policy::wasm::bundled::get("static-acl").expect("static-acl is bundled")
}

/// Loads static-acl; the authorize timeout is generous because the tests share two busy
/// cores (the default 50 ms is a production setting, not a correctness one).
async fn load(config: Value, grants: &Grants) -> Result<Harness, LoadError> {
    let limits = Limits {
        authorize_timeout: std::time::Duration::from_secs(2),
        ..Limits::default()
    };
    Harness::load_with_grants(component(), &config.to_string(), limits, grants).await
}

/// Files for the tests: alice and bob from `mosquitto_passwd`, and Mosquitto's ACL forms.
struct Setup {
    dir: tempfile::TempDir,
}

const ACL: &str = "\
# Mosquitto's example shapes.
topic read public/#

user alice
topic readwrite sensors/#
topic deny sensors/secret/#
topic write cmd/alice

user bob
topic read sensors/+/temp
topic readwrite bob's room/notes

pattern readwrite devices/%c/#
pattern read inbox/%u/#
";

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        mosquitto_passwd(&passwd, "alice", "secret", true);
        mosquitto_passwd(&passwd, "bob", "hunter2", false);
        std::fs::write(dir.path().join("acl"), ACL).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn grants(&self) -> Grants {
        grants(&[("passwd", &self.path("passwd")), ("acl", &self.path("acl"))])
    }

    async fn plugin(&self, extra: Value) -> Harness {
        let mut config = json!({"password_file": "passwd", "acl_file": "acl"});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        load(config, &self.grants())
            .await
            .expect("static-acl loads")
    }
}

fn client(id: &str, user: Option<&str>) -> ClientInfo {
    Harness::client(id, user)
}

async fn login(p: &Harness, c: &ClientInfo, password: &str) -> Answer<AuthStep> {
    p.authenticate(c, &Harness::password(password))
        .await
        .expect("authenticate answers")
}

async fn identity(p: &Harness, c: &ClientInfo, password: &str) -> Identity {
    match login(p, c, password).await {
        Answer::Decided(AuthStep::Allow { identity, .. }) => identity,
        other => panic!("{:?} is refused: {other:?}", c.username),
    }
}

fn refused(a: &Answer<AuthStep>, reason: moat::codec::ReasonCode) -> bool {
    matches!(a, Answer::Decided(AuthStep::Deny(d)) if d.reason == reason)
}

async fn publish(p: &Harness, c: &ClientInfo, id: &Identity, topic: &str) -> Answer<Decision> {
    let m = Harness::message(topic, b"x");
    p.authorize_publish(c, id, PublishKind::Message, &m)
        .await
        .expect("authorize-publish answers")
}

async fn subscribe(
    p: &Harness,
    c: &ClientInfo,
    id: &Identity,
    f: &str,
) -> Answer<SubscribeDecision> {
    p.authorize_subscribe(c, id, f, None, QoS::AtLeastOnce)
        .await
        .expect("authorize-subscribe answers")
}

async fn deliver(p: &Harness, c: &ClientInfo, id: &Identity, topic: &str) -> Answer<Decision> {
    p.authorize_deliver(c, id, &ByteString::from(topic))
        .await
        .expect("authorize-deliver answers")
}

fn allowed(a: &Answer<Decision>) -> bool {
    matches!(a, Answer::Decided(Decision::Allow { .. }))
}

fn denied(a: &Answer<Decision>) -> bool {
    matches!(a, Answer::Decided(Decision::Deny(d)) if d.reason == moat::codec::ReasonCode::NOT_AUTHORIZED)
}

fn sub_allowed(check_each_delivery: bool) -> Answer<SubscribeDecision> {
    Answer::Decided(SubscribeDecision::Allow {
        check_each_delivery,
    })
}

fn sub_denied(a: &Answer<SubscribeDecision>) -> bool {
    matches!(a, Answer::Decided(SubscribeDecision::Deny(_)))
}

/// `mosquitto_passwd`'s `$7$` lines: the right password in, a wrong one out with "bad user
/// name or password", an unknown user out too (or passed on with `unknown_user = "next"`),
/// anonymous clients passed on by default.
#[tokio::test]
async fn mosquitto_password_file_authenticates() {
    let s = Setup::new();
    let p = s.plugin(json!({})).await;
    let alice = client("a-1", Some("alice"));
    let id = identity(&p, &alice, "secret").await;
    assert_eq!(&*id.principal, "alice");
    use moat::codec::ReasonCode as R;
    assert!(refused(
        &login(&p, &alice, "Secret").await,
        R::BAD_USER_NAME_OR_PASSWORD
    ));
    assert!(refused(
        &login(&p, &client("m", Some("mallory")), "secret").await,
        R::BAD_USER_NAME_OR_PASSWORD
    ));
    assert_eq!(login(&p, &client("anon", None), "").await, Answer::Next);

    let p = s
        .plugin(json!({"unknown_user": "next", "anonymous": "deny"}))
        .await;
    assert_eq!(
        login(&p, &client("m", Some("mallory")), "secret").await,
        Answer::Next
    );
    assert!(refused(
        &login(&p, &client("anon", None), "").await,
        R::NOT_AUTHORIZED
    ));
    assert!(refused(
        &login(&p, &alice, "wrong").await,
        R::BAD_USER_NAME_OR_PASSWORD
    ));
}

/// Mosquitto's ACL semantics: a user's `topic` lines, `deny` before grants, `pattern` lines
/// with `%u` and `%c` for everyone, a filter with a space, and the lines before any `user`
/// for anonymous clients only.
#[tokio::test]
async fn mosquitto_acl_file_decides_publish_and_delivery() {
    let s = Setup::new();
    let p = s.plugin(json!({"anonymous": "allow"})).await;
    let alice = client("dev-7", Some("alice"));
    let a = identity(&p, &alice, "secret").await;
    assert!(allowed(&publish(&p, &alice, &a, "sensors/k1/temp").await));
    assert!(denied(&publish(&p, &alice, &a, "sensors/secret/key").await));
    assert!(allowed(&publish(&p, &alice, &a, "cmd/alice").await));
    assert!(
        denied(&deliver(&p, &alice, &a, "cmd/alice").await),
        "write only"
    );
    assert!(
        allowed(&publish(&p, &alice, &a, "devices/dev-7/state").await),
        "%c"
    );
    assert!(denied(
        &publish(&p, &alice, &a, "devices/dev-8/state").await
    ));
    assert!(
        allowed(&deliver(&p, &alice, &a, "inbox/alice/1").await),
        "%u"
    );
    assert!(
        denied(&publish(&p, &alice, &a, "inbox/alice/1").await),
        "read only"
    );
    assert!(
        denied(&deliver(&p, &alice, &a, "public/news").await),
        "anonymous lines are not alice's"
    );

    let bob = client("b", Some("bob"));
    let b = identity(&p, &bob, "hunter2").await;
    assert!(allowed(&publish(&p, &bob, &b, "bob's room/notes").await));
    assert!(denied(&publish(&p, &bob, &b, "sensors/k1/temp").await));

    let anon = client("visitor", None);
    let n = identity(&p, &anon, "").await;
    assert!(allowed(&deliver(&p, &anon, &n, "public/news").await));
    assert!(denied(&publish(&p, &anon, &n, "public/news").await));
    assert!(
        allowed(&publish(&p, &anon, &n, "devices/visitor/x").await),
        "%c applies"
    );
    assert!(
        denied(&deliver(&p, &anon, &n, "inbox/visitor/1").await),
        "no %u without a user"
    );
}

/// A subscription inside what the rules allow is allowed; one wider than them is allowed with
/// every delivery checked; one a deny rule covers, or no rule reaches, is refused.
#[tokio::test]
async fn subscriptions_wider_than_the_rules_check_each_delivery() {
    let s = Setup::new();
    let p = s
        .plugin(json!({"check_each_delivery": "when-needed"}))
        .await;
    let alice = client("a", Some("alice"));
    let a = identity(&p, &alice, "secret").await;
    assert_eq!(
        subscribe(&p, &alice, &a, "inbox/alice/#").await,
        sub_allowed(false)
    );
    assert_eq!(
        subscribe(&p, &alice, &a, "sensors/k1/#").await,
        sub_allowed(false)
    );
    // Readable, but sensors/secret/hum is denied: check each delivery.
    assert_eq!(
        subscribe(&p, &alice, &a, "sensors/+/hum").await,
        sub_allowed(true)
    );
    assert_eq!(
        subscribe(&p, &alice, &a, "sensors/#").await,
        sub_allowed(true)
    );
    assert_eq!(subscribe(&p, &alice, &a, "#").await, sub_allowed(true));
    assert!(sub_denied(
        &subscribe(&p, &alice, &a, "sensors/secret/#").await
    ));
    assert!(
        sub_denied(&subscribe(&p, &alice, &a, "cmd/alice").await),
        "write only"
    );
    assert!(sub_denied(&subscribe(&p, &alice, &a, "other/#").await));

    // By default every subscription checks its deliveries, as Mosquitto checks each read.
    let p = s.plugin(json!({})).await;
    assert_eq!(
        subscribe(&p, &alice, &a, "inbox/alice/#").await,
        sub_allowed(true)
    );
}

/// `scope = "own"` and `no_match = "next"` let other plugins decide for their clients and
/// topics; a password file without an ACL file lets the plugin's users do anything.
#[tokio::test]
async fn scope_no_match_and_no_acl() {
    let s = Setup::new();
    let p = s.plugin(json!({"scope": "own", "no_match": "next"})).await;
    let alice = client("a", Some("alice"));
    let a = identity(&p, &alice, "secret").await;
    assert_eq!(publish(&p, &alice, &a, "elsewhere").await, Answer::Next);
    assert!(denied(&publish(&p, &alice, &a, "sensors/secret/x").await));
    let stranger = Identity {
        principal: "carol".into(),
        ..Identity::default()
    };
    let carol = client("c", Some("carol"));
    assert_eq!(
        publish(&p, &carol, &stranger, "sensors/x").await,
        Answer::Next
    );

    let p = load(
        json!({"password_file": "passwd"}),
        &grants(&[("passwd", &s.path("passwd"))]),
    )
    .await
    .unwrap();
    let a = identity(&p, &alice, "secret").await;
    assert!(allowed(&publish(&p, &alice, &a, "anything/at/all").await));
    assert_eq!(subscribe(&p, &alice, &a, "#").await, sub_allowed(true));
    assert_eq!(publish(&p, &carol, &stranger, "x").await, Answer::Next);
}

/// The TOML form: users with argon2id hashes (as `moat passwd` writes), roles with `%u`,
/// default and anonymous roles; users of a Mosquitto password file get roles from it too.
#[tokio::test]
async fn toml_users_and_roles() {
    let s = Setup::new();
    let hash = moat::policy::wasm::new_password_hash(b"carol-pw").unwrap();
    let users = format!(
        r#"
default_roles = ["everyone"]
anonymous_roles = ["public"]

[users.carol]
password = "{hash}"
roles = ["operator"]

[users.alice]
roles = ["operator"]

[roles.operator]
readwrite = ["plant/%u/#"]
write = ["plant/commands"]
deny = ["plant/carol/private"]

[roles.everyone]
read = ["status/#"]

[roles.public]
read = ["public/#"]
"#
    );
    std::fs::write(s.path("users.toml"), users).unwrap();
    let g = grants(&[
        ("passwd", &s.path("passwd")),
        ("users", &s.path("users.toml")),
    ]);
    let p = load(
        json!({"password_file": "passwd", "users_file": "users", "anonymous": "allow"}),
        &g,
    )
    .await
    .unwrap();
    let carol = client("c", Some("carol"));
    let c = identity(&p, &carol, "carol-pw").await;
    assert_eq!(c.roles, vec!["everyone", "operator"]);
    assert!(allowed(&publish(&p, &carol, &c, "plant/carol/line1").await));
    assert!(denied(
        &publish(&p, &carol, &c, "plant/carol/private").await
    ));
    assert!(allowed(&publish(&p, &carol, &c, "plant/commands").await));
    assert!(allowed(&deliver(&p, &carol, &c, "status/ok").await));
    assert!(denied(&publish(&p, &carol, &c, "plant/alice/line1").await));
    // alice: password from the Mosquitto file, roles from the TOML file.
    let alice = client("a", Some("alice"));
    let a = identity(&p, &alice, "secret").await;
    assert!(allowed(&publish(&p, &alice, &a, "plant/alice/line1").await));
    let anon = client("v", None);
    let n = identity(&p, &anon, "").await;
    assert!(allowed(&deliver(&p, &anon, &n, "public/x").await));
    assert!(denied(&deliver(&p, &anon, &n, "status/ok").await));
}

/// Bad files stop the plugin from loading with an error naming the file and line (or key);
/// the files must be granted.
#[tokio::test]
async fn bad_files_are_refused_with_file_and_line() {
    let s = Setup::new();
    let cases: &[(&str, &str, &str)] = &[
        (
            "acl",
            "user alice\ntopic read a/#\nsubscribe a\n",
            "acl line 3",
        ),
        ("acl", "topic read a/#/b\n", "acl line 1"),
        ("passwd", "alice:plaintext\n", "passwd line 1"),
        ("passwd", "# ok\nnocolon\n", "passwd line 2"),
    ];
    for (file, text, want) in cases {
        std::fs::write(s.path(file), text).unwrap();
        let err = load(
            json!({"password_file": "passwd", "acl_file": "acl"}),
            &s.grants(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{text:?} accepted"));
        assert!(err.to_string().contains(want), "{err} (wanted {want})");
        // Put the good files back.
        let good = Setup::new();
        std::fs::copy(good.path("passwd"), s.path("passwd")).unwrap();
        std::fs::copy(good.path("acl"), s.path("acl")).unwrap();
    }
    std::fs::write(s.path("users.toml"), "[users.x]\nroles = [\"nope\"]\n").unwrap();
    let err = load(
        json!({"users_file": "users"}),
        &grants(&[("users", &s.path("users.toml"))]),
    )
    .await
    .err()
    .expect("unknown role refused");
    assert!(err.to_string().contains("no role called \"nope\""), "{err}");
    // A file the operator did not grant cannot be read.
    let err = load(json!({"acl_file": "acl"}), &grants(&[]))
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("NotGranted"), "{err}");
    let err = load(json!({}), &s.grants())
        .await
        .err()
        .expect("nothing to do");
    assert!(err.to_string().contains("password_file"), "{err}");
}

/// A new generation reads the files anew: a removed user's session is refused, a new rule
/// applies; a broken file keeps the current generation.
#[tokio::test]
async fn rereading_the_files_applies_changes() {
    let s = Setup::new();
    let mut p = s.plugin(json!({})).await;
    let bob = client("b", Some("bob"));
    let b = identity(&p, &bob, "hunter2").await;
    assert!(denied(&publish(&p, &bob, &b, "cmd/bob").await));

    std::fs::write(
        s.path("acl"),
        format!("{ACL}\nuser bob\ntopic write cmd/bob\n"),
    )
    .unwrap();
    p.reload_files().await.unwrap();
    assert_eq!(p.number, 2);
    assert!(allowed(&publish(&p, &bob, &b, "cmd/bob").await));

    let text = std::fs::read_to_string(s.path("passwd")).unwrap();
    let without_bob: String = text
        .lines()
        .filter(|l| !l.starts_with("bob:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(s.path("passwd"), without_bob).unwrap();
    p.reload_files().await.unwrap();
    assert!(
        denied(&publish(&p, &bob, &b, "cmd/bob").await),
        "bob was removed"
    );
    assert!(refused(
        &login(&p, &bob, "hunter2").await,
        moat::codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD
    ));

    std::fs::write(s.path("acl"), "bogus line\n").unwrap();
    assert!(p.reload_files().await.is_err());
    assert_eq!(p.number, 3, "the current generation stays");
    let alice = client("a", Some("alice"));
    let a = identity(&p, &alice, "secret").await;
    assert!(allowed(&publish(&p, &alice, &a, "sensors/x").await));
}

/// An argon2id hash over the broker's cost limit (4 GiB, 100 passes) is refused at login
/// (0x88 Server unavailable, logged) instead of being computed.
#[tokio::test]
async fn an_absurd_hash_cost_is_not_computed() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    std::fs::write(
        &passwd,
        "eve:$argon2id$v=19$m=4194304,t=100,p=1$bW9hdC1kdW1teS1zYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    )
    .unwrap();
    let p = load(
        json!({"password_file": "passwd"}),
        &grants(&[("passwd", &passwd)]),
    )
    .await
    .unwrap();
    let answer = login(&p, &client("e", Some("eve")), "x").await;
    assert!(
        refused(&answer, moat::codec::ReasonCode::SERVER_UNAVAILABLE),
        "{answer:?}"
    );
}

/// The wall-clock timeout of a hook covers time spent in the host: a login whose hash takes
/// seconds (argon2id at the cost limit, 64 MiB x 16 passes) fails at `authenticate_timeout`
/// with a timeout, fail-closed, instead of holding the connection for the hash, while a login
/// with a cheap hash (Mosquitto's `$7$`) passes under the same limit.
#[tokio::test]
async fn a_slow_hash_is_cut_by_the_wall_clock_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    mosquitto_passwd(&passwd, "quick", "secret", true);
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str(
        "slow:$argon2id$v=19$m=65536,t=16,p=1$bW9hdC1kdW1teS1zYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    );
    std::fs::write(&passwd, text).unwrap();
    let limits = Limits {
        authenticate_timeout: std::time::Duration::from_millis(300),
        ..Limits::default()
    };
    let p = Harness::load_with_grants(
        component(),
        &json!({"password_file": "passwd"}).to_string(),
        limits,
        &grants(&[("passwd", &passwd)]),
    )
    .await
    .unwrap();
    let answer = p
        .authenticate(&client("s", Some("slow")), &Harness::password("x"))
        .await;
    assert_eq!(answer, Err(moat_plugin_sdk::harness::Failure::Timeout));
    identity(&p, &client("q", Some("quick")), "secret").await;
}
