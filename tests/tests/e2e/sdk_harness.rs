//! The plugin SDK's harness (`moat_plugin_sdk::harness`, feature `harness`): a plugin's hooks
//! called directly, with the broker's own engine and sandbox but no broker, as a plugin author
//! writes unit tests.

use moat::codec::QoS;
use moat::policy::PublishKind;
use moat_plugin_sdk::harness::{Answer, AuthStep, Decision, Harness, SubscribeDecision};

use crate::plugins::components;

const CONFIG: &str = r#"{
    "auth": {"users": {"alice": {"password": "s3cret", "roles": ["ops"]}}},
    "publish": [{"filter": "ops/#", "verdict": "allow", "cache": 30, "role": "ops"}],
    "subscribe": [{"filter": "devices/%u/#", "verdict": "allow"}]
}"#;

#[tokio::test]
async fn a_plugin_is_tested_hook_by_hook_without_a_broker() {
    let plugin = Harness::load_file(components::TEST_POLICY, CONFIG)
        .await
        .expect("loads");
    let client = Harness::client("dev-1", Some("alice"));

    let identity = match plugin
        .authenticate(&client, &Harness::password("s3cret"))
        .await
    {
        Ok(Answer::Decided(AuthStep::Allow { identity, .. })) => identity,
        other => panic!("alice is refused: {other:?}"),
    };
    assert_eq!(&*identity.principal, "alice");
    assert_eq!(identity.roles, vec!["ops"]);
    assert!(matches!(
        plugin
            .authenticate(&client, &Harness::password("guess"))
            .await,
        Ok(Answer::Decided(AuthStep::Deny(_)))
    ));

    let message = |topic: &str| {
        std::sync::Arc::new(moat::message::Message {
            topic: topic.into(),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            received: std::time::Instant::now(),
            expiry: None,
            publisher: None,
        })
    };
    let publish = |topic| {
        let m = message(topic);
        let (plugin, client, identity) = (&plugin, &client, &identity);
        async move {
            plugin
                .authorize_publish(client, identity, PublishKind::Message, &m)
                .await
        }
    };
    assert_eq!(
        publish("ops/restart").await,
        Ok(Answer::Decided(Decision::Allow { cache_seconds: 30 }))
    );
    assert_eq!(publish("other/x").await, Ok(Answer::Next));

    assert_eq!(
        plugin
            .authorize_subscribe(
                &client,
                &identity,
                "devices/alice/+",
                None,
                QoS::AtLeastOnce
            )
            .await,
        Ok(Answer::Decided(SubscribeDecision::Allow {
            check_each_delivery: false
        }))
    );
    assert_eq!(
        plugin
            .authorize_subscribe(&client, &identity, "devices/#", None, QoS::AtLeastOnce)
            .await,
        Ok(Answer::Next)
    );
}
