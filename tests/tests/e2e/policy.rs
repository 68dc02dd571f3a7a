//! The policy seam: the broker asks its `Policy` at connect, authenticate, publish, subscribe
//! and (when a subscribe verdict asks for it) each delivery, and acts on the answer. These
//! tests plug in a small policy of their own; the Wasm plugin runtime will sit behind the
//! same trait.

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use moat::codec::{ProtocolVersion, QoS, ReasonCode};
use moat::message::Message;
use moat::pending::Pending;
use moat::policy::{
    AllowAll, AuthOutcome, ClientInfo, Credentials, Denial, Identity, Policy, PublishKind,
    SubscribeVerdict, Verdict,
};
use moat::store::MemoryStore;
use moat::{Broker, Config};

use crate::harness::{RawClient, raw_connect_packet, raw_publish};

/// Users: anyone but `mallory`. Publish: not under `locked/`. Subscribe: not `forbidden/#`;
/// `#` only with each delivery checked. Deliver: nothing under `secret/`.
struct FencePolicy;

fn deny(reason: ReasonCode) -> Denial {
    Denial {
        reason,
        message: None,
    }
}

impl Policy for FencePolicy {
    fn on_connect(&self, client: &Arc<ClientInfo>) -> Pending<Verdict> {
        AllowAll.on_connect(client)
    }

    fn authenticate(&self, client: &Arc<ClientInfo>, c: Credentials) -> Pending<AuthOutcome> {
        if client.username.as_deref() == Some("mallory") {
            return AuthOutcome::Deny(deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD)).into();
        }
        AllowAll.authenticate(client, c)
    }

    fn continue_auth(
        &self,
        client: &Arc<ClientInfo>,
        state: bytes::Bytes,
        data: bytes::Bytes,
    ) -> Pending<AuthOutcome> {
        AllowAll.continue_auth(client, state, data)
    }

    fn authorize_publish(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        _: PublishKind,
        m: &Arc<Message>,
    ) -> Pending<Verdict> {
        if m.topic.starts_with("locked/") {
            Verdict::Deny(Denial::not_authorized()).into()
        } else {
            Verdict::allow().into()
        }
    }

    fn authorize_subscribe(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        filter: &ByteString,
        _: QoS,
    ) -> Pending<SubscribeVerdict> {
        match &**filter {
            "forbidden/#" => SubscribeVerdict::Deny(Denial::not_authorized()),
            "#" => SubscribeVerdict::Allow {
                check_each_delivery: true,
            },
            _ => SubscribeVerdict::Allow {
                check_each_delivery: false,
            },
        }
        .into()
    }

    fn authorize_deliver(
        &self,
        _: &Arc<ClientInfo>,
        _: &Arc<Identity>,
        topic: &ByteString,
    ) -> Pending<Verdict> {
        // Answered later, as a plugin waiting on a directory would.
        let denied = topic.starts_with("secret/");
        Pending::later(async move {
            tokio::task::yield_now().await;
            if denied {
                Verdict::Deny(Denial::not_authorized())
            } else {
                Verdict::allow()
            }
        })
    }
}

async fn start_fenced() -> Broker {
    let mut config = Config::default();
    config.apply_listen_overrides(&["127.0.0.1:0".parse().unwrap()]);
    config.sys.interval = Duration::ZERO;
    Broker::start_with(config, Arc::new(MemoryStore::new()), Arc::new(FencePolicy))
        .await
        .expect("broker starts")
}

/// A refused authentication gets its reason code in CONNACK (v5 0x86, 3.1.1 return code 4)
/// and the connection closes (MQTT-3.2.2-7).
#[tokio::test]
async fn refused_authentication_gets_bad_user_name_or_password() {
    let broker = start_fenced().await;
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut connect = raw_connect_packet(version, "m", true);
        connect.username = Some("mallory".into());
        let (mut client, ack) = RawClient::handshake(broker.local_addr(), connect).await;
        assert_eq!(
            ack.reason_code,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{version:?}"
        );
        assert!(!ack.session_present);
        assert!(client.closed().await.is_empty());
    }
    broker.shutdown(Duration::from_secs(1)).await;
}

/// A denied subscribe gets 0x87 (v5) or 0x80 (3.1.1) for that filter while the others in the
/// same SUBSCRIBE are granted.
#[tokio::test]
async fn denied_subscription_gets_not_authorized_in_suback() {
    let broker = start_fenced().await;
    for (version, expected) in [
        (ProtocolVersion::V5, ReasonCode::NOT_AUTHORIZED),
        (ProtocolVersion::V311, ReasonCode::UNSPECIFIED_ERROR),
    ] {
        let mut c = RawClient::connected(broker.local_addr(), version, "s", true).await;
        assert_eq!(
            c.subscribe_one(1, "forbidden/#", QoS::AtLeastOnce).await,
            vec![expected]
        );
        assert_eq!(
            c.subscribe_one(2, "open/#", QoS::AtLeastOnce).await,
            vec![ReasonCode::GRANTED_QOS_1]
        );
    }
    broker.shutdown(Duration::from_secs(1)).await;
}

/// A denied publish is acknowledged with 0x87 (v5) and reaches no subscriber.
#[tokio::test]
async fn denied_publish_is_refused_and_not_forwarded() {
    let broker = start_fenced().await;
    let addr = broker.local_addr();
    let mut sub = RawClient::connected(addr, ProtocolVersion::V5, "sub", true).await;
    sub.subscribe_one(1, "locked/+", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::connected(addr, ProtocolVersion::V5, "pub", true).await;
    publisher
        .send(&raw_publish(
            "locked/door",
            b"open",
            QoS::AtLeastOnce,
            Some(5),
        ))
        .await;
    match publisher.recv().await {
        Some(moat::codec::Packet::PubAck(ack)) => {
            assert_eq!(ack.packet_id, 5);
            assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    sub.expect_nothing(Duration::from_millis(300)).await;
    broker.shutdown(Duration::from_secs(1)).await;
}

/// "Allow, but check each delivery": a subscription to `#` receives what the deliver hook
/// allows and nothing it denies, even though the filter matches both (the read check
/// Mosquitto does per delivery).
#[tokio::test]
async fn wildcard_subscription_checked_per_delivery_does_not_leak_denied_topics() {
    let broker = start_fenced().await;
    let addr = broker.local_addr();
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut sub = RawClient::connected(addr, version, "watcher", true).await;
        assert_eq!(
            sub.subscribe_one(1, "#", QoS::AtMostOnce).await,
            vec![ReasonCode::GRANTED_QOS_0]
        );
        let mut publisher = RawClient::connected(addr, version, "pub", true).await;
        for topic in ["public/a", "secret/b", "public/c"] {
            publisher
                .send(&raw_publish(topic, b"x", QoS::AtMostOnce, None))
                .await;
        }
        assert_eq!(sub.expect_publish().await.topic, "public/a");
        assert_eq!(sub.expect_publish().await.topic, "public/c");
        sub.expect_nothing(Duration::from_millis(300)).await;
    }
    broker.shutdown(Duration::from_secs(1)).await;
}
