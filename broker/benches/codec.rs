//! The codec's hot path: decoding and encoding a PUBLISH with a 64-byte payload, in MQTT 3.1.1
//! and in MQTT 5.0 with a couple of properties.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use moat::codec::{
    Packet, Properties, PropertyValues, ProtocolVersion, Publish, QoS, check, decode, encode,
    encoded_len,
};

fn publish(version: ProtocolVersion) -> Packet {
    let properties = match version {
        ProtocolVersion::V311 => Properties::default(),
        ProtocolVersion::V5 => Properties::from(PropertyValues {
            message_expiry_interval: Some(3600),
            user_properties: vec![("trace-id".into(), "4bf92f3577b34da6".into())],
            ..PropertyValues::default()
        }),
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/building-7/floor-3/temperature".into(),
        packet_id: Some(4242),
        properties,
        payload: Bytes::from_static(&[0x5A; 64]),
    })
}

fn bench(c: &mut Criterion) {
    for (name, version) in [("v311", ProtocolVersion::V311), ("v5", ProtocolVersion::V5)] {
        let packet = publish(version);
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf);
        let frame = buf.freeze();

        let mut group = c.benchmark_group(format!("publish_64b_{name}"));
        group.throughput(Throughput::Bytes(frame.len() as u64));
        // check + decode + drop. The packet is consumed inside the closure: returning it would
        // make criterion read all of its (large) bytes back as a side effect, which costs more
        // than decoding it.
        group.bench_function("decode", |b| {
            b.iter(|| {
                let f = black_box(&frame);
                let n = check(f, 1 << 20).unwrap().unwrap();
                let packet = decode(f.slice(..n), Some(version)).unwrap();
                black_box(&packet);
            })
        });
        let mut out = BytesMut::with_capacity(4096);
        group.bench_function("encode", |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&packet), version, &mut out);
                black_box(out.len())
            })
        });
        group.bench_function("encoded_len", |b| {
            b.iter(|| encoded_len(black_box(&packet), version))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
