//! The broker's `ldap` capability itself against a real slapd, without a plugin: a user's
//! bind never changes the identity searches run under, answers are capped, wrong credentials
//! are `false`, and a restarted directory is picked up by the next call.

use std::collections::BTreeMap;

use moat::config::LdapDirectory;
use moat::policy::wasm::capabilities::ldap::{Directories, Failure, Scope};

use super::slapd::Slapd;
use super::unit::directory;

fn corp(d: LdapDirectory) -> Directories {
    Directories::new(&BTreeMap::from([("corp".to_string(), d)])).unwrap()
}

const ALICE: &str = "uid=alice,ou=people,dc=example,dc=org";
const GROUPS: &str = "ou=groups,dc=example,dc=org";

/// Only the service account may read the groups: after users bind (right and wrong
/// passwords), searches on the pool still see them, so no bind ran on a pooled connection.
#[tokio::test]
async fn a_user_bind_never_changes_who_searches() {
    let s = Slapd::start();
    let directories = corp(LdapDirectory {
        pool_size: 1,
        ..directory(s.url())
    });
    let d = directories.get("corp").unwrap();
    let groups = || d.search(GROUPS, Scope::OneLevel, "(objectClass=groupOfNames)", &[]);
    assert_eq!(groups().await.unwrap().len(), 2);
    assert_eq!(d.bind(ALICE, b"alice-pw").await, Ok(true));
    assert_eq!(d.bind(ALICE, b"wrong").await, Ok(false));
    assert_eq!(
        d.bind("uid=nobody,ou=people,dc=example,dc=org", b"x").await,
        Ok(false)
    );
    assert!(matches!(d.bind(ALICE, b"").await, Err(Failure::Invalid(_))));
    let found = groups().await.unwrap();
    assert_eq!(found.len(), 2, "the searches now run as someone else");
    // The test means something only if alice herself sees no groups.
    let out = std::process::Command::new("ldapsearch")
        .args(["-x", "-LLL", "-H", &s.url(), "-D", ALICE, "-w", "alice-pw"])
        .args(["-b", GROUPS, "(objectClass=groupOfNames)", "dn"])
        .output()
        .expect("cannot run ldapsearch (install the Debian package ldap-utils)");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listed.contains("cn=operators"),
        "alice reads the groups: {listed}"
    );
    let out = std::process::Command::new("ldapsearch")
        .args(["-x", "-LLL", "-H", &s.url(), "-D", super::slapd::SERVICE_DN])
        .args([
            "-w",
            super::slapd::SERVICE_PW,
            "-b",
            GROUPS,
            "(objectClass=groupOfNames)",
            "dn",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cn=operators"));
    assert!(
        found
            .iter()
            .any(|e| e.dn == "cn=operators,ou=groups,dc=example,dc=org")
    );
}

#[tokio::test]
async fn searches_answer_attributes_and_are_capped_at_max_entries() {
    let s = Slapd::start();
    let directories = corp(LdapDirectory {
        max_entries: 3,
        ..directory(s.url())
    });
    let d = directories.get("corp").unwrap();
    let people = "ou=people,dc=example,dc=org";
    let found = d
        .search(
            people,
            Scope::OneLevel,
            "(uid=alice)",
            &["cn".into(), "sn".into()],
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].dn, ALICE);
    assert_eq!(
        found[0].attributes,
        vec![
            ("cn".to_string(), vec!["Alice".to_string()]),
            ("sn".to_string(), vec!["Liddell".to_string()]),
        ]
    );
    // Four people, three allowed.
    assert!(matches!(
        d.search(people, Scope::OneLevel, "(objectClass=inetOrgPerson)", &[])
            .await,
        Err(Failure::TooLarge(_))
    ));
    // A base that does not exist (a removed entry) is an empty answer, not an error.
    assert_eq!(
        d.search(
            "uid=gone,ou=people,dc=example,dc=org",
            Scope::Base,
            "(objectClass=*)",
            &[]
        )
        .await,
        Ok(Vec::new())
    );
}

/// Killed: every call answers `unavailable` at once (the kept connection is found closed and
/// dropped); restarted: the next call connects afresh and succeeds.
#[tokio::test]
async fn a_restarted_directory_is_picked_up_by_the_next_call() {
    let mut s = Slapd::start();
    let directories = corp(directory(s.url()));
    let d = directories.get("corp").unwrap();
    let alice = || d.search(ALICE, Scope::Base, "(objectClass=*)", &[]);
    assert_eq!(alice().await.unwrap().len(), 1);
    s.kill();
    assert!(matches!(alice().await, Err(Failure::Unavailable(_))));
    assert!(matches!(
        d.bind(ALICE, b"alice-pw").await,
        Err(Failure::Unavailable(_))
    ));
    s.restart();
    assert_eq!(alice().await.unwrap().len(), 1);
    assert_eq!(d.bind(ALICE, b"alice-pw").await, Ok(true));
}
