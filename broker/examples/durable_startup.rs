//! How long the broker takes to accept connections with a large store.
//!
//! `fill DIR N`: writes N retained messages (64-byte payloads, topics
//! `fleet/<building>/<device>/state`) into the store in DIR, through the same `DiskStore` the
//! broker uses.
//! `measure DIR MOAT`: starts the `moat` binary at path MOAT on that data directory (port
//! 1896) and reports the time from spawning it to the first CONNACK, then stops it.
//!
//! ```sh
//! cargo build --release -p moat --examples
//! target/release/examples/durable_startup fill /tmp/moat-1m 1000000
//! target/release/examples/durable_startup measure /tmp/moat-1m target/release/moat
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use moat::codec::{self, Connect, Packet, Properties, ProtocolVersion, QoS};
use moat::config::{Durability, StorageConfig};
use moat::message::{Message, MessageProperties};
use moat::store::{Change, DiskStore, Store};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("fill") if args.len() == 4 => fill(Path::new(&args[2]), args[3].parse().unwrap()),
        Some("measure") if args.len() == 4 => measure(Path::new(&args[2]), Path::new(&args[3])),
        _ => {
            eprintln!("usage: durable_startup fill DIR N | measure DIR MOAT");
            std::process::exit(2);
        }
    }
}

fn fill(dir: &Path, n: u64) {
    let config = StorageConfig {
        durability: Durability::Batched,
        commit_interval_ms: 100,
        ..StorageConfig::default()
    };
    let store = DiskStore::open(dir, &config).expect("store opens");
    let t = Instant::now();
    let payload = Bytes::from(vec![b'x'; 64]);
    for i in 0..n {
        let topic = format!("fleet/{}/{}/state", i / 1000, i % 1000);
        let message = Arc::new(Message {
            topic: topic.as_str().into(),
            payload: payload.clone(),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: MessageProperties::default(),
            received: Instant::now(),
            expiry: None,
            publisher: Some("filler".into()),
        });
        store.apply_detached(Change::Retained {
            topic: topic.into(),
            message: Some(message),
        });
    }
    let _ = store.close();
    drop(store);
    let size = std::fs::metadata(dir.join(moat::store::disk::FILE_NAME))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "wrote {n} retained messages in {:.2} s ({} MB)",
        t.elapsed().as_secs_f64(),
        size / 1_000_000
    );
}

fn measure(dir: &Path, moat: &Path) {
    let config = dir.join("startup.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nbind = \"127.0.0.1:1896\"\n[sys]\ninterval = 0\n[log]\nfilter = \"info\"\n[storage]\ndir = {:?}\n",
            dir
        ),
    )
    .unwrap();
    let t = Instant::now();
    let mut child = Command::new(moat)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .spawn()
        .expect("moat runs");
    let connected = loop {
        if let Some(elapsed) = try_connect(t) {
            break Some(elapsed);
        }
        if t.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.kill();
    let _ = child.wait();
    match connected {
        Some(d) => println!("first CONNACK {:.3} s after start", d.as_secs_f64()),
        None => println!("no CONNACK within 60 s"),
    }
}

/// Connects and completes an MQTT handshake; the time since `t` when the CONNACK arrived.
fn try_connect(t: Instant) -> Option<Duration> {
    let mut s = TcpStream::connect("127.0.0.1:1896").ok()?;
    let mut out = BytesMut::new();
    let connect = Connect {
        protocol: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 0,
        client_id: "startup-probe".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    codec::encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V311,
        &mut out,
    );
    s.write_all(&out).ok()?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).ok()?;
    (ack[0] == 0x20).then(|| t.elapsed())
}
