//! The checks both databases must pass, on a broker running the sql plugin over the seeded
//! users and rules (`support::seed`).

use std::time::{Duration, Instant};

use moat::codec::{ProtocolVersion, QoS, ReasonCode};

use crate::harness::{RawClient, TestBroker};
use crate::plugins::{expected, login};
use crate::static_acl_broker::{connack, puback};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// A publish nobody receives but the broker allowed.
const ALLOWED: ReasonCode = ReasonCode::NO_MATCHING_SUBSCRIBERS;

async fn client(b: &TestBroker, id: &str, user: &str, password: &str) -> RawClient {
    let (c, ack) = RawClient::handshake(b.addr, login(V5, id, user, password)).await;
    assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{user} as {id}");
    c
}

/// An argon2id and a `$7$` hash let their users in (MQTT 5 and 3.1.1); a wrong password, an
/// unknown user and user names that try SQL injection get 0x86 (3.1.1: 4), and the connection
/// closes (MQTT-3.2.2-7).
pub async fn logins(b: &TestBroker) {
    for version in [V5, V311] {
        for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
            assert_eq!(
                connack(b, version, user, password).await,
                ReasonCode::SUCCESS,
                "{version:?} {user}"
            );
        }
        for (user, password) in [
            ("alice", "bob-pw"),
            ("nobody", "alice-pw"),
            ("alice' OR '1'='1", "alice-pw"),
            ("' OR 1=1 --", "x"),
            ("alice'; DROP TABLE users; --", "alice-pw"),
        ] {
            let (mut c, ack) =
                RawClient::handshake(b.addr, login(version, "c", user, password)).await;
            assert_eq!(
                ack.reason_code,
                expected(version, ReasonCode::BAD_USER_NAME_OR_PASSWORD, 4),
                "{version:?} {user:?}"
            );
            assert!(c.closed().await.is_empty());
        }
    }
    // The injection attempts changed nothing.
    assert_eq!(
        connack(b, V5, "alice", "alice-pw").await,
        ReasonCode::SUCCESS
    );
}

/// The ACL rows decide publishes (PUBACK 0x87 when refused) and subscriptions (SUBACK 0x87):
/// a user's own rules with a deny inside an allow, a read-only rule, a `%c` pattern row for
/// everyone, a row bound to one client identifier that an injected identifier does not reach,
/// and a superuser.
pub async fn acl(b: &TestBroker) {
    let mut alice = client(b, "alice-1", "alice", "alice-pw").await;
    assert_eq!(puback(&mut alice, 1, "alice/x").await, ALLOWED);
    let refused = ReasonCode::NOT_AUTHORIZED;
    assert_eq!(puback(&mut alice, 2, "alice/secret/x").await, refused);
    assert_eq!(puback(&mut alice, 3, "public/news").await, refused);
    assert_eq!(puback(&mut alice, 4, "devices/alice-1/t").await, ALLOWED);
    assert_eq!(puback(&mut alice, 5, "devices/other/t").await, refused);
    assert_eq!(puback(&mut alice, 6, "bob/x").await, refused);
    assert_eq!(
        alice.subscribe_one(7, "public/#", QoS::AtLeastOnce).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        alice
            .subscribe_one(8, "alice/secret/#", QoS::AtLeastOnce)
            .await,
        [refused]
    );
    assert_eq!(
        alice.subscribe_one(9, "bob/#", QoS::AtLeastOnce).await,
        [refused]
    );
    // bob may write his topics but not read them.
    let mut bob = client(b, "bob-1", "bob", "bob-pw").await;
    assert_eq!(puback(&mut bob, 1, "bob/x").await, ALLOWED);
    assert_eq!(
        bob.subscribe_one(2, "bob/#", QoS::AtLeastOnce).await,
        [refused]
    );
    // A row for client `sensor-1` only: an identifier built to widen the query gets nothing.
    let mut sensor = client(b, "sensor-1", "carol", "carol-pw").await;
    assert_eq!(puback(&mut sensor, 1, "sensors/t").await, ALLOWED);
    for id in ["x' OR '1'='1", "' OR client_id IS NOT NULL --"] {
        let mut c = client(b, id, "carol", "carol-pw").await;
        assert_eq!(puback(&mut c, 1, "sensors/t").await, refused, "{id}");
    }
    let mut dave = client(b, "dave-1", "dave", "dave-pw").await;
    assert_eq!(puback(&mut dave, 1, "anything/at/all").await, ALLOWED);
}

/// What a revocation test allows beyond the stated time (`cache_seconds`): the test's own
/// publishes and round trips on a busy machine.
pub const SLACK: Duration = Duration::from_secs(2);

/// Publishes by `c` to `topic` until one is refused; fails if none is within `within`.
pub async fn refused_within(c: &mut RawClient, topic: &str, within: Duration) {
    let start = Instant::now();
    for id in 100.. {
        if puback(c, id, topic).await == ReasonCode::NOT_AUTHORIZED {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{topic} still allowed after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
