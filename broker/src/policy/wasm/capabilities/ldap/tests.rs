//! The ldap capability without a directory: what it refuses before connecting, and how an
//! unreachable or silent server answers. Against a real slapd: `tests/tests/e2e/ldap/`.

use super::*;

#[test]
fn endpoints_are_ldap_or_ldaps_urls_without_a_dn() {
    assert!(Endpoint::parse("ldap://127.0.0.1:3890", false).is_ok());
    assert!(Endpoint::parse("ldap://ldap.example.org", true).is_ok());
    assert!(Endpoint::parse("ldaps://ldap.example.org:636/", false).is_ok());
    for (url, starttls) in [
        ("ldaps://ldap.example.org", true),
        ("http://ldap.example.org", false),
        ("ldap://ldap.example.org/dc=example,dc=org", false),
        ("ldap://admin:pw@ldap.example.org", false),
        ("ldap://ldap.example.org?cn", false),
        ("ldap:///", false),
        ("ldap.example.org", false),
    ] {
        assert!(Endpoint::parse(url, starttls).is_err(), "{url} accepted");
    }
}

fn directory(url: &str) -> Directory {
    Directory::new(&LdapDirectory {
        url: url.into(),
        ..LdapDirectory::default()
    })
    .unwrap()
}

#[tokio::test]
async fn empty_passwords_and_dns_are_refused_before_connecting() {
    // Nothing listens on port 1: a refusal that connected first would be `unavailable`.
    let d = directory("ldap://127.0.0.1:1");
    for (dn, password) in [("uid=a,dc=x", &b""[..]), ("", b"pw"), ("  ", b"pw")] {
        assert!(
            matches!(d.bind(dn, password).await, Err(Failure::Invalid(_))),
            "{dn:?}"
        );
    }
    assert!(matches!(
        d.bind("uid=a,dc=x", b"pw").await,
        Err(Failure::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_bad_filter_is_invalid_and_an_unreachable_directory_unavailable() {
    let d = directory("ldap://127.0.0.1:1");
    assert!(matches!(
        d.search("dc=x", Scope::Subtree, "(uid=a", &[]).await,
        Err(Failure::Invalid(_))
    ));
    assert!(matches!(
        d.search("dc=x", Scope::Subtree, "(uid=a)", &[]).await,
        Err(Failure::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_silent_directory_times_out_within_the_grant() {
    // Accepts the connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let d = Directory::new(&LdapDirectory {
        url: format!("ldap://{addr}"),
        timeout_ms: 200,
        ..LdapDirectory::default()
    })
    .unwrap();
    assert!(matches!(
        d.bind("uid=a,dc=x", b"pw").await,
        Err(Failure::Timeout(_))
    ));
    assert!(matches!(
        d.search("dc=x", Scope::Base, "(objectClass=*)", &[]).await,
        Err(Failure::Timeout(_))
    ));
}
