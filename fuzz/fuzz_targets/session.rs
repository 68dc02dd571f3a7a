//! Packet sequences through the session state machine: a real broker (in-memory store,
//! allow-all policy) serves two in-memory connections. A well-formed CONNECT and SUBSCRIBE to
//! `#` open the watcher; the fuzzer's bytes, cut into chunks by its first byte, are what the
//! other client sends after its own CONNECT. Whatever they are, the broker must not panic,
//! must close or answer, and must keep serving the watcher.

#![no_main]

use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use moat::codec::{
    self, Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions,
};
use moat::{Broker, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn connect(version: ProtocolVersion, id: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let packet = Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 0,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    codec::encode(&packet, version, &mut out);
    out
}

async fn drain(mut io: DuplexStream) {
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), io.read(&mut buf)).await {
        if n == 0 {
            break;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else { return };
    let version = if first & 1 == 0 { ProtocolVersion::V311 } else { ProtocolVersion::V5 };
    let chunk = usize::from(first >> 1).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    runtime.block_on(async {
        let mut config = Config::default();
        config.listeners.clear();
        config.sys.interval = Duration::ZERO;
        let broker = Broker::start(config).await.unwrap();
        let remote = "127.0.0.1:1".parse().unwrap();

        // The watcher: subscribed to everything, must survive whatever the other client does.
        let (mut watcher, server_side) = tokio::io::duplex(1 << 16);
        let b = &broker;
        let watch = b.serve_connection(server_side, remote, "fuzz");
        let fuzzed = async {
            watcher.write_all(&connect(version, "watcher")).await.unwrap();
            let mut sub = BytesMut::new();
            codec::encode(
                &Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    filters: vec![("#".into(), SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() })],
                    properties: Properties::default(),
                }),
                version,
                &mut sub,
            );
            watcher.write_all(&sub).await.unwrap();

            let (mut client, server_side) = tokio::io::duplex(1 << 16);
            let serve = b.serve_connection(server_side, remote, "fuzz");
            let send = async {
                let _ = client.write_all(&connect(version, "fuzzed")).await;
                for piece in body.chunks(chunk) {
                    if client.write_all(piece).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                drop(client.shutdown().await);
                drain(client).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), async { tokio::join!(serve, send) }).await;
            drop(watcher);
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), async { tokio::join!(watch, fuzzed) }).await;
        broker.shutdown(Duration::from_millis(100)).await;
    });
});
