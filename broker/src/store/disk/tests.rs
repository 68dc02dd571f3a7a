//! Tests of the disk store on its own: what is applied is what a reopened store loads, what
//! expired while it was closed is gone, and a bad file stops the open with its name.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{ReadableDatabase, ReadableTableMetadata};

use super::*;
use crate::codec::{ProtocolVersion, QoS};
use crate::message::{Message, MessageProperties};
use crate::store::{SessionRecord, SubscriptionRecord, Target, WillRecord};

fn config(durability: Durability) -> StorageConfig {
    StorageConfig {
        durability,
        ..StorageConfig::default()
    }
}

fn open(dir: &Path) -> DiskStore {
    DiskStore::open(dir, &config(Durability::Sync)).unwrap()
}

fn message(topic: &str, payload: &str, expiry: Option<u64>) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: MessageProperties::default(),
        received: Instant::now(),
        expiry: expiry.map(Duration::from_secs),
        publisher: Some("pub".into()),
    })
}

fn session(client_id: &str, expiry: u32, offline_since: Option<u64>) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        owner: Some("alice".into()),
        protocol: ProtocolVersion::V5,
        expiry_interval: expiry,
        subscriptions: vec![SubscriptionRecord {
            filter: "a/#".into(),
            options: Default::default(),
            identifier: Some(3),
            check_each_delivery: false,
        }],
        offline_since,
    }
}

fn target(client_id: &str, seq: u64) -> Target {
    Target {
        client_id: client_id.into(),
        seq,
        qos: QoS::ExactlyOnce,
        retain: false,
        identifiers: [3].into_iter().collect(),
    }
}

async fn apply(store: &DiskStore, change: Change) {
    store.apply(change).get().await.unwrap();
}

fn load(store: &DiskStore) -> Snapshot {
    match store.load() {
        Pending::Ready(s) => s.unwrap(),
        Pending::Later(_) => panic!("the snapshot is read at open"),
    }
}

/// Rows in a table of a closed store.
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    dir: &Path,
    table: TableDefinition<K, V>,
) -> u64 {
    let db = redb::Database::open(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    txn.open_table(table).unwrap().len().unwrap()
}

#[tokio::test]
async fn what_was_applied_is_loaded_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(load(&store).sessions.len(), 0);
    let kept = message("a/1", "kept", None);
    apply(
        &store,
        Change::Retained {
            topic: "a/1".into(),
            message: Some(kept.clone()),
        },
    )
    .await;
    apply(&store, Change::SessionSaved(session("s1", 600, None))).await;
    apply(&store, Change::SessionSaved(session("s2", 600, None))).await;
    apply(&store, Change::SessionSaved(session("pub", 600, None))).await;
    // One message queued for two sessions, and a second one for s1.
    let m = message("a/2", "queued", None);
    apply(
        &store,
        Change::Accepted {
            client_id: "pub".into(),
            packet_id: 7,
            message: m.clone(),
            targets: vec![target("s1", 10), target("s2", 11)],
            exactly_once: true,
        },
    )
    .await;
    apply(
        &store,
        Change::Routed {
            message: message("a/3", "second", None),
            targets: vec![target("s1", 12)],
        },
    )
    .await;
    apply(
        &store,
        Change::Sent {
            client_id: "s1".into(),
            seq: 10,
            packet_id: 99,
        },
    )
    .await;
    apply(
        &store,
        Change::Released {
            client_id: "s1".into(),
            seq: 10,
        },
    )
    .await;
    apply(
        &store,
        Change::Dequeued {
            client_id: "s2".into(),
            seq: 11,
        },
    )
    .await;
    apply(
        &store,
        Change::WillScheduled(WillRecord {
            client_id: "s2".into(),
            username: Some("u".into()),
            protocol: ProtocolVersion::V5,
            listener: "default".into(),
            identity: crate::policy::Identity {
                principal: "u".into(),
                roles: vec!["r".into()],
                expires_at: Some(9),
                session_state: bytes::Bytes::from_static(b"state"),
                authenticated_by: Some("acl".into()),
                state_version: 2,
            },
            message: message("will", "bye", None),
            publish_at: 1_000,
        }),
    )
    .await;
    drop(store);

    // The message for two sessions was stored once.
    assert_eq!(rows(dir.path(), MESSAGES), 2);
    let store = open(dir.path());
    let snap = load(&store);
    assert_eq!(snap.retained.len(), 1);
    assert_eq!(snap.retained[0].payload, kept.payload);
    let mut sessions = snap.sessions.clone();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    assert_eq!(
        sessions,
        vec![
            session("pub", 600, None),
            session("s1", 600, None),
            session("s2", 600, None)
        ]
    );
    let queued: Vec<_> = snap
        .queued
        .iter()
        .map(|q| {
            (
                q.target.clone(),
                q.message.payload.clone(),
                q.packet_id,
                q.released,
            )
        })
        .collect();
    assert_eq!(
        queued,
        vec![
            (target("s1", 10), Bytes::from("queued"), Some(99), true),
            (target("s1", 12), Bytes::from("second"), None, false),
        ]
    );
    assert_eq!(snap.inbound_qos2, vec![("pub".into(), 7)]);
    assert_eq!(snap.wills.len(), 1);
    assert_eq!(snap.wills[0].message.payload, Bytes::from("bye"));
    // Who the client was comes back whole, for the policy to judge the will as before.
    assert_eq!(&*snap.wills[0].listener, "default");
    let identity = &snap.wills[0].identity;
    assert_eq!(
        (
            &*identity.principal,
            identity.expires_at,
            &identity.session_state[..]
        ),
        ("u", Some(9), &b"state"[..])
    );
    assert_eq!(identity.authenticated_by.as_deref(), Some("acl"));
    assert_eq!((identity.roles.len(), identity.state_version), (1, 2));
    assert_eq!(snap.next_seq, 13);
}

#[tokio::test]
async fn bans_are_loaded_after_reopening_until_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, Change::Banned("mallory".into())).await;
    apply(&store, Change::Banned("eve".into())).await;
    apply(&store, Change::Unbanned("eve".into())).await;
    drop(store);
    let store = open(dir.path());
    assert_eq!(load(&store).bans, ["mallory"]);
    apply(&store, Change::Unbanned("mallory".into())).await;
    drop(store);
    assert!(load(&open(dir.path())).bans.is_empty());
}

#[tokio::test]
async fn a_removed_session_takes_its_queue_inbound_ids_and_will_along() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    apply(&store, Change::SessionSaved(session("s1", 600, None))).await;
    apply(
        &store,
        Change::Accepted {
            client_id: "s1".into(),
            packet_id: 1,
            message: message("a/1", "x", None),
            targets: vec![target("s1", 1), target("s1", 2)],
            exactly_once: true,
        },
    )
    .await;
    apply(&store, Change::SessionRemoved("s1".into())).await;
    drop(store);
    for n in [
        rows(dir.path(), SESSIONS),
        rows(dir.path(), QUEUE),
        rows(dir.path(), MESSAGES),
        rows(dir.path(), INBOUND),
    ] {
        assert_eq!(n, 0);
    }
}

#[tokio::test]
async fn what_expired_while_the_store_was_closed_is_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let long_ago = unix_now() - 3600;
    apply(
        &store,
        Change::SessionSaved(session("gone", 60, Some(long_ago))),
    )
    .await;
    apply(
        &store,
        Change::SessionSaved(session("alive", 7200, Some(long_ago))),
    )
    .await;
    apply(&store, Change::SessionSaved(session("online", 60, None))).await;
    apply(
        &store,
        Change::Routed {
            message: message("a/1", "for both", None),
            targets: vec![target("gone", 1), target("alive", 2)],
        },
    )
    .await;
    apply(
        &store,
        Change::Routed {
            message: message("a/2", "short-lived", Some(1)),
            targets: vec![target("alive", 3)],
        },
    )
    .await;
    apply(
        &store,
        Change::Retained {
            topic: "r".into(),
            message: Some(message("r", "short-lived", Some(1))),
        },
    )
    .await;
    drop(store);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let store = open(dir.path());
    let snap = load(&store);
    let mut ids: Vec<_> = snap.sessions.iter().map(|s| s.client_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["alive", "online"]);
    assert_eq!(snap.queued.len(), 1);
    assert_eq!(snap.queued[0].target, target("alive", 2));
    assert!(snap.retained.is_empty());
    drop(store);
    assert_eq!(rows(dir.path(), QUEUE), 1, "purged on disk too");
    assert_eq!(rows(dir.path(), MESSAGES), 1);
    assert_eq!(rows(dir.path(), RETAINED), 0);
}

#[test]
fn a_corrupt_file_stops_the_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let err = DiskStore::open(dir.path(), &config(Durability::Sync))
        .err()
        .expect("refused");
    assert!(err.0.contains(&path.display().to_string()), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x5a; 64 * 1024],
        "left alone"
    );
}

#[tokio::test]
async fn a_damaged_record_stops_the_open_and_names_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(SESSIONS)
            .unwrap()
            .insert("c9", [9u8, 9, 9].as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let err = DiskStore::open(dir.path(), &config(Durability::Sync))
        .err()
        .expect("refused");
    assert!(err.0.contains(FILE_NAME), "{err}");
    assert!(
        err.0.contains("`sessions`") && err.0.contains("\"c9\""),
        "{err}"
    );
}

#[test]
fn a_store_from_a_newer_release_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = DiskStore::open(dir.path(), &config(Durability::Sync))
        .err()
        .expect("refused");
    assert!(err.0.contains("newer moat"), "{err}");
}

#[test]
fn a_store_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = DiskStore::open(dir.path(), &config(Durability::Sync))
        .err()
        .expect("refused");
    assert!(err.0.contains("already in use"), "{err}");
}

#[tokio::test]
async fn batched_durability_acknowledges_at_once_and_commits_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(Durability::Batched);
    c.commit_interval_ms = 10_000;
    let store = DiskStore::open(dir.path(), &c).unwrap();
    let pending = store.apply(Change::SessionSaved(session("s1", 60, None)));
    assert!(matches!(pending, Pending::Ready(Ok(()))), "no wait");
    store.close().get().await.unwrap();
    assert!(
        store
            .apply(Change::SessionRemoved("s1".into()))
            .get()
            .await
            .is_err()
    );
    drop(store);
    assert_eq!(rows(dir.path(), SESSIONS), 1);
}

#[tokio::test]
async fn concurrent_changes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let waits: Vec<_> = (0..200)
        .map(|i| store.apply(Change::SessionSaved(session(&format!("c{i}"), 60, None))))
        .collect();
    for w in waits {
        w.get().await.unwrap();
    }
    let commits = store.inner.commits.load(Ordering::Relaxed);
    assert!(commits < 200, "{commits} commits for 200 changes");
}

#[test]
fn the_data_directory_and_file_are_the_brokers_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    drop(open(&dir));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(super::FILE_NAME)), 0o600);
}
