//! The bundled `ldap` plugin hook by hook, through the plugin SDK's harness (the broker's own
//! engine, sandbox and `ldap` capability, no broker), against a real slapd: both ways of
//! logging in, refusals (wrong, empty password, unknown users, user names that try to change
//! the DN or the filter), groups to roles to topics, the directory going down and coming back,
//! revocation, LDAPS and StartTLS, and configuration errors.

use std::time::Duration;

use moat::codec::ReasonCode;
use moat::config::{Grants, KvGrant, LdapDirectory};
use moat::policy::{ClientInfo, Identity, PublishKind};
use moat_plugin_sdk::harness::{Answer, AuthStep, Decision, Harness, Limits, SubscribeDecision};
use serde_json::{Value, json};

use super::slapd::{SERVICE_DN, SERVICE_PW, Slapd};

/// The directory grant for `url`, bound as the service account.
pub fn directory(url: String) -> LdapDirectory {
    LdapDirectory {
        url,
        bind_dn: Some(SERVICE_DN.into()),
        bind_password: Some(SERVICE_PW.into()),
        ..LdapDirectory::default()
    }
}

/// `kv` and the directory as `corp`.
pub fn grants(d: LdapDirectory) -> Grants {
    Grants {
        kv: Some(KvGrant::default()),
        ldap: Some([("corp".to_string(), d)].into()),
        ..Grants::default()
    }
}

/// Simple bind with a DN template, groups as groupOfNames entries, rechecked every second.
pub fn simple_bind() -> Value {
    json!({
        "directory": "corp",
        "user_dn": "uid={username},ou=people,dc=example,dc=org",
        "group_base": "ou=groups,dc=example,dc=org",
        "groups": {
            "operators": ["operator"],
            "cn=viewers,ou=groups,dc=example,dc=org": ["viewer"],
        },
        "default_roles": ["user"],
        "roles": {
            "operator": {"publish": ["plant/#"], "subscribe": ["plant/#"]},
            "viewer": {"subscribe": ["plant/+/status"]},
            "user": {"publish": ["users/%u/#"], "subscribe": ["users/%u/#", "inbox/%c"]},
        },
        "recheck_seconds": 1,
        "cache_seconds": 1,
    })
}

/// The same with search-then-bind.
pub fn search_then_bind() -> Value {
    with(
        simple_bind(),
        json!({
            "user_dn": null,
            "user_base": "ou=people,dc=example,dc=org",
            "user_filter": "(&(objectClass=inetOrgPerson)(uid={username}))",
        }),
    )
}

/// `base` with the keys of `extra` replaced (a null removes one).
pub fn with(mut base: Value, extra: Value) -> Value {
    let map = base.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            map.remove(k);
        } else {
            map.insert(k.clone(), v.clone());
        }
    }
    base
}

async fn load(config: &Value, grants: &Grants) -> Harness {
    try_load(config, grants)
        .await
        .unwrap_or_else(|e| panic!("loads with {config}: {e}"))
}

async fn try_load(config: &Value, grants: &Grants) -> Result<Harness, String> {
    let wasm = moat::policy::wasm::bundled::get("ldap").expect("ldap is bundled");
    // Generous authorize timeout: rechecks call the directory, and the tests share two busy
    // cores (the default 50 ms is a production setting, not a correctness one).
    let limits = Limits {
        authorize_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    Harness::load_with_grants(wasm, &config.to_string(), limits, grants)
        .await
        .map_err(|e| e.to_string())
}

async fn login(p: &Harness, user: &str, password: &str) -> Answer<AuthStep> {
    let client = Harness::client("dev-1", Some(user));
    p.authenticate(&client, &Harness::password(password))
        .await
        .expect("authenticate answers")
}

async fn admitted(p: &Harness, user: &str, password: &str) -> Identity {
    match login(p, user, password).await {
        Answer::Decided(AuthStep::Allow { identity, .. }) => identity,
        other => panic!("{user:?} is refused: {other:?}"),
    }
}

async fn refused(p: &Harness, user: &str, password: &str) -> ReasonCode {
    match login(p, user, password).await {
        Answer::Decided(AuthStep::Deny(d)) => d.reason,
        other => panic!("{user:?} is not refused: {other:?}"),
    }
}

async fn publish(p: &Harness, who: &Identity, topic: &str) -> Answer<Decision> {
    let client = Harness::client("dev-1", Some(&who.principal));
    p.authorize_publish(
        &client,
        who,
        PublishKind::Message,
        &Harness::message(topic, b"x"),
    )
    .await
    .expect("authorize-publish answers")
}

fn allowed(a: &Answer<Decision>) -> bool {
    matches!(a, Answer::Decided(Decision::Allow { .. }))
}

async fn subscribe(p: &Harness, who: &Identity, filter: &str) -> Answer<SubscribeDecision> {
    let client: ClientInfo = Harness::client("dev-1", Some(&who.principal));
    p.authorize_subscribe(&client, who, filter, None, moat::codec::QoS::AtLeastOnce)
        .await
        .expect("authorize-subscribe answers")
}

const BAD: ReasonCode = ReasonCode::BAD_USER_NAME_OR_PASSWORD;

#[tokio::test]
async fn simple_bind_admits_the_right_password_and_maps_groups_to_roles() {
    let s = Slapd::start();
    let p = load(&simple_bind(), &grants(directory(s.url()))).await;
    let alice = admitted(&p, "alice", "alice-pw").await;
    assert_eq!(alice.principal, "alice");
    assert_eq!(alice.roles, ["operator", "user", "viewer"]);
    let carol = admitted(&p, "carol", "carol-pw").await;
    assert_eq!(carol.roles, ["user"]);
    // A name that needs no escaping in a DN, but would be a wildcard in a filter.
    assert_eq!(admitted(&p, "a*b", "star-pw").await.roles, ["user"]);
    assert_eq!(refused(&p, "alice", "bob-pw").await, BAD);
    assert_eq!(refused(&p, "nobody", "alice-pw").await, BAD);
    assert_eq!(refused(&p, "alice", "").await, BAD);
}

/// RFC 4514: a user name cannot add an RDN or an attribute to the DN it is put in.
#[tokio::test]
async fn user_names_cannot_rewrite_the_bind_dn() {
    let s = Slapd::start();
    let p = load(&simple_bind(), &grants(directory(s.url()))).await;
    for user in [
        "alice,ou=people",
        "alice+cn=Alice",
        "*",
        "uid=alice,ou=people,dc=example,dc=org",
        "alice\\",
    ] {
        assert_eq!(refused(&p, user, "alice-pw").await, BAD, "{user:?}");
    }
}

#[tokio::test]
async fn search_then_bind_needs_exactly_one_entry_and_escapes_the_filter() {
    let s = Slapd::start();
    let p = load(&search_then_bind(), &grants(directory(s.url()))).await;
    assert_eq!(
        admitted(&p, "alice", "alice-pw").await.roles,
        ["operator", "user", "viewer"]
    );
    assert_eq!(
        admitted(&p, "bob", "bob-pw").await.roles,
        ["user", "viewer"]
    );
    // `a*b` is found as itself (the star escaped, RFC 4515), not as a wildcard.
    assert_eq!(admitted(&p, "a*b", "star-pw").await.roles, ["user"]);
    assert_eq!(refused(&p, "alice", "wrong").await, BAD);
    assert_eq!(refused(&p, "alice", "").await, BAD);
    assert_eq!(refused(&p, "nobody", "x").await, BAD);
    // Filter injection: each would match alice (or everybody) if spliced in as it is.
    for user in [
        "*",
        "a*",
        "alice)(uid=*",
        "*)(|(uid=*",
        "alice)(objectClass=*",
    ] {
        assert_eq!(refused(&p, user, "alice-pw").await, BAD, "{user:?}");
    }

    let next = load(
        &with(search_then_bind(), json!({"unknown_user": "next"})),
        &grants(directory(s.url())),
    )
    .await;
    assert!(matches!(login(&next, "nobody", "x").await, Answer::Next));
    assert_eq!(refused(&next, "alice", "wrong").await, BAD);
}

#[tokio::test]
async fn roles_grant_topics_with_placeholders_and_nothing_else() {
    let s = Slapd::start();
    let p = load(&simple_bind(), &grants(directory(s.url()))).await;
    let alice = admitted(&p, "alice", "alice-pw").await;
    let bob = admitted(&p, "bob", "bob-pw").await;
    assert!(allowed(&publish(&p, &alice, "plant/1/valve").await));
    assert!(!allowed(&publish(&p, &bob, "plant/1/valve").await));
    assert!(allowed(&publish(&p, &bob, "users/bob/notes").await));
    assert!(!allowed(&publish(&p, &bob, "users/alice/notes").await));
    assert!(matches!(
        subscribe(&p, &bob, "plant/+/status").await,
        Answer::Decided(SubscribeDecision::Allow {
            check_each_delivery: true
        })
    ));
    assert!(matches!(
        subscribe(&p, &bob, "plant/#").await,
        Answer::Decided(SubscribeDecision::Deny(_))
    ));
    assert!(matches!(
        subscribe(&p, &bob, "inbox/dev-1").await,
        Answer::Decided(SubscribeDecision::Allow { .. })
    ));
    // Another plugin's client is not this plugin's business.
    let other = Identity {
        principal: "svc".into(),
        ..Identity::default()
    };
    assert!(matches!(publish(&p, &other, "plant/1").await, Answer::Next));

    let next = load(
        &with(simple_bind(), json!({"no_match": "next"})),
        &grants(directory(s.url())),
    )
    .await;
    let bob = admitted(&next, "bob", "bob-pw").await;
    assert!(matches!(
        publish(&next, &bob, "plant/1").await,
        Answer::Next
    ));
}

/// Groups from an attribute of the user's entry (`memberOf` with OpenLDAP's overlay; the
/// test directory keeps group DNs in `seeAlso`).
#[tokio::test]
async fn groups_can_come_from_an_attribute_of_the_user() {
    let s = Slapd::start();
    let config = with(
        search_then_bind(),
        json!({"group_base": null, "member_of_attribute": "seeAlso"}),
    );
    let p = load(&config, &grants(directory(s.url()))).await;
    assert_eq!(
        admitted(&p, "carol", "carol-pw").await.roles,
        ["operator", "user"]
    );
    assert_eq!(admitted(&p, "alice", "alice-pw").await.roles, ["user"]);
    let simple = load(
        &with(
            simple_bind(),
            json!({"group_base": null, "member_of_attribute": "seeAlso"}),
        ),
        &grants(directory(s.url())),
    )
    .await;
    assert_eq!(
        admitted(&simple, "carol", "carol-pw").await.roles,
        ["operator", "user"]
    );
}

/// The directory down: logins get 0x88 (or next), rechecks deny (or next), never an allow;
/// all works again once it is back.
#[tokio::test]
async fn a_directory_that_is_down_denies_or_passes_and_recovers() {
    let mut s = Slapd::start();
    let g = grants(directory(s.url()));
    let deny = load(&simple_bind(), &g).await;
    let next = load(
        &with(simple_bind(), json!({"on_backend_error": "next"})),
        &g,
    )
    .await;
    let alice = admitted(&deny, "alice", "alice-pw").await;
    let alice_next = admitted(&next, "alice", "alice-pw").await;
    s.kill();
    assert_eq!(
        refused(&deny, "alice", "alice-pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
    assert!(matches!(
        login(&next, "alice", "alice-pw").await,
        Answer::Next
    ));
    // Once the roles read at login are older than recheck_seconds, the recheck fails.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        publish(&deny, &alice, "plant/1").await,
        Answer::Decided(Decision::Deny(_))
    ));
    assert!(matches!(
        publish(&next, &alice_next, "plant/1").await,
        Answer::Next
    ));
    s.restart();
    assert!(allowed(&publish(&deny, &alice, "plant/1").await));
    admitted(&deny, "alice", "alice-pw").await;
    admitted(&next, "bob", "bob-pw").await;
}

/// A user removed from a group, or from the directory, loses what it gave within
/// `recheck_seconds` (1 s here; the harness has no decision cache).
#[tokio::test]
async fn removed_memberships_and_users_are_refused_after_the_recheck() {
    let s = Slapd::start();
    let p = load(&simple_bind(), &grants(directory(s.url()))).await;
    let alice = admitted(&p, "alice", "alice-pw").await;
    let bob = admitted(&p, "bob", "bob-pw").await;
    assert!(allowed(&publish(&p, &alice, "plant/1").await));
    s.modify(
        "dn: cn=operators,ou=groups,dc=example,dc=org\nchangetype: modify\n\
         delete: member\nmember: uid=alice,ou=people,dc=example,dc=org\n",
    );
    s.modify("dn: uid=bob,ou=people,dc=example,dc=org\nchangetype: delete\n");
    // Still within the recheck time: the roles read at login stand.
    assert!(allowed(&publish(&p, &alice, "plant/1").await));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!allowed(&publish(&p, &alice, "plant/1").await));
    assert!(allowed(&publish(&p, &alice, "users/alice/x").await));
    match publish(&p, &bob, "users/bob/x").await {
        Answer::Decided(Decision::Deny(d)) => {
            assert!(d.message.unwrap_or_default().contains("no longer"));
        }
        other => panic!("a removed user is not refused: {other:?}"),
    }
    assert_eq!(refused(&p, "bob", "bob-pw").await, BAD);
    assert_eq!(
        admitted(&p, "alice", "alice-pw").await.roles,
        ["user", "viewer"]
    );
}

#[tokio::test]
async fn ldaps_and_starttls_verify_the_directory_certificate() {
    let s = Slapd::start();
    let ldaps = LdapDirectory {
        ca_file: Some(s.ca_file.clone()),
        ..directory(s.tls_url())
    };
    let p = load(&search_then_bind(), &grants(ldaps)).await;
    admitted(&p, "alice", "alice-pw").await;
    assert_eq!(refused(&p, "alice", "wrong").await, BAD);

    let starttls = LdapDirectory {
        starttls: true,
        ca_file: Some(s.ca_file.clone()),
        ..directory(s.url())
    };
    let p = load(&search_then_bind(), &grants(starttls)).await;
    admitted(&p, "bob", "bob-pw").await;

    // Without the test CA the certificate is not trusted: the directory is unavailable.
    let p = load(&search_then_bind(), &grants(directory(s.tls_url()))).await;
    assert_eq!(
        refused(&p, "alice", "alice-pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_wrong_service_password_or_an_ungranted_directory_is_unavailable() {
    let s = Slapd::start();
    let wrong = LdapDirectory {
        bind_password: Some("nope".into()),
        ..directory(s.url())
    };
    let p = load(&search_then_bind(), &grants(wrong)).await;
    assert_eq!(
        refused(&p, "alice", "alice-pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
    let p = load(&simple_bind(), &Grants::default()).await;
    assert_eq!(
        refused(&p, "alice", "alice-pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
}

#[tokio::test]
async fn configuration_errors_say_what_is_wrong() {
    let g = grants(directory("ldap://127.0.0.1:1".into()));
    for (config, why) in [
        (with(simple_bind(), json!({"directory": ""})), "directory"),
        (
            with(simple_bind(), json!({"user_base": "dc=x"})),
            "not both",
        ),
        (
            with(simple_bind(), json!({"user_dn": null})),
            "give `user_dn`",
        ),
        (
            with(simple_bind(), json!({"user_dn": "uid=alice,dc=x"})),
            "{username}",
        ),
        (
            with(search_then_bind(), json!({"user_filter": "uid={username}"})),
            "in parentheses",
        ),
        (
            with(simple_bind(), json!({"groups": {"x": ["nobody"]}})),
            "no role \"nobody\"",
        ),
        (
            with(
                simple_bind(),
                json!({"roles": {"operator": {"publish": ["a/#/b"]}, "viewer": {}, "user": {}}}),
            ),
            "roles.operator.publish",
        ),
        (
            with(simple_bind(), json!({"member_of_attribute": "memberOf"})),
            "not both",
        ),
        (
            with(simple_bind(), json!({"on_backend_error": "allow"})),
            "allow",
        ),
        (with(simple_bind(), json!({"typo": 1})), "typo"),
    ] {
        let e = try_load(&config, &g).await.err().unwrap_or_else(|| {
            panic!("{config} loads");
        });
        assert!(e.contains(why), "expected {why:?} in {e:?}");
    }
}

/// The configuration example of the plugin's README is a valid broker configuration, and the
/// plugin accepts its `[plugin.config]`.
#[tokio::test]
async fn the_readme_example_is_a_valid_configuration() {
    let readme = include_str!("../../../../plugins/ldap/README.md");
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a toml example");
    let config = moat::config::Config::from_str_named(example, "plugins/ldap/README.md")
        .unwrap_or_else(|e| panic!("{e}"));
    let plugin = &config.plugin_chain[0];
    assert_eq!(plugin.bundled.as_deref(), Some("ldap"));
    let corp = &plugin.grants.ldap.as_ref().unwrap()["corp"];
    assert_eq!(corp.url, "ldaps://ldap.example.org");
    let p = load(
        &Value::Object(plugin.config.clone()),
        &grants(directory("ldap://127.0.0.1:1".into())),
    )
    .await;
    // The directory of this grant does not exist: the example's deny on a backend error.
    assert_eq!(
        refused(&p, "alice", "pw").await,
        ReasonCode::SERVER_UNAVAILABLE
    );
}
