//! The decoder on arbitrary bytes: frames are delimited with `check` and decoded in each
//! connection state (before CONNECT, 3.1.1, 5.0). Anything that decodes must re-encode to bytes
//! that decode to the same packet, and `encoded_len` must match what `encode` writes.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use moat::codec::{self, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    for version in [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)] {
        let mut rest = data;
        while let Ok(Some(n)) = codec::check(rest, 1 << 20) {
            let frame = Bytes::copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            let Ok(packet) = codec::decode(frame, version) else {
                break;
            };
            let v = match (&packet, version) {
                (codec::Packet::Connect(c), _) => c.protocol,
                (_, Some(v)) => v,
                (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
            };
            let mut out = BytesMut::new();
            codec::encode(&packet, v, &mut out);
            assert_eq!(out.len(), codec::encoded_len(&packet, v));
            let state = if matches!(packet, codec::Packet::Connect(_)) { None } else { Some(v) };
            let again = codec::decode(out.freeze(), state).expect("re-encoded packet decodes");
            assert_eq!(again, packet);
        }
    }
});
