//! `check` on the remaining length boundaries of section 1.5.5 and the maximum packet size, and
//! `connect_version`.

use super::*;

/// A fixed header for a PUBLISH with the given remaining length.
fn header(remaining: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(0x30);
    primitives::Sink::varint(&mut out, remaining);
    out.to_vec()
}

#[test]
fn remaining_length_boundaries() {
    // (remaining length, bytes of the fixed header) per section 1.5.5.
    let cases = [
        (0usize, 2usize),
        (127, 2),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
        (2_097_151, 4),
        (2_097_152, 5),
        (268_435_455, 5),
    ];
    for (remaining, header_len) in cases {
        let hdr = header(remaining);
        assert_eq!(hdr.len(), header_len, "{remaining}");
        let total = header_len + remaining;
        // Every strict prefix of the header: read more.
        for cut in 0..hdr.len() {
            assert_eq!(check(&hdr[..cut], 16), Ok(None), "{remaining} cut at {cut}");
        }
        // Header alone: complete only for an empty body.
        let expect = (remaining == 0).then_some(total);
        assert_eq!(check(&hdr, u32::MAX), Ok(expect), "{remaining}");
        assert_eq!(
            check(&hdr, total as u32),
            Ok(expect),
            "{remaining} at the limit"
        );
        // One byte over the maximum: refused before the body is buffered (MQTT-3.1.2-24).
        assert_eq!(
            check(&hdr, total as u32 - 1),
            Err(DecodeError::TooLarge {
                size: total as u64,
                max: total as u32 - 1
            }),
            "{remaining}"
        );
        // With the body buffered (for the sizes that are cheap to build), plus the start of
        // the next packet.
        if remaining <= 2_097_152 {
            let mut buf = hdr.clone();
            buf.resize(total, 0xAA);
            assert_eq!(check(&buf, u32::MAX), Ok(Some(total)));
            assert_eq!(
                check(&buf[..total - usize::from(remaining > 0)], u32::MAX),
                Ok(expect)
            );
            buf.extend_from_slice(&[0xC0, 0x00]);
            assert_eq!(check(&buf, u32::MAX), Ok(Some(total)));
        }
    }
}

#[test]
fn malformed_remaining_lengths() {
    // MQTT-1.5.5-1 / section 2.2.3: four continuation bytes are already too many.
    for buf in [
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF][..],
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        &[0x30, 0x80, 0x80, 0x80, 0x80, 0x00],
    ] {
        assert!(
            matches!(check(buf, u32::MAX), Err(DecodeError::Malformed(_))),
            "{buf:02x?}"
        );
        assert!(matches!(
            decode(Bytes::copy_from_slice(buf), Some(ProtocolVersion::V5)),
            Err(DecodeError::Malformed(_))
        ));
    }
    // Not the shortest form.
    for buf in [
        &[0x30, 0x80, 0x00][..],
        &[0x30, 0xFF, 0x80, 0x00],
        &[0x30, 0x80, 0x80, 0x80, 0x00],
    ] {
        assert!(
            matches!(check(buf, u32::MAX), Err(DecodeError::Malformed(_))),
            "{buf:02x?}"
        );
    }
    // Three continuation bytes: the fourth may still end it.
    assert_eq!(check(&[0x30, 0xFF, 0xFF, 0xFF], u32::MAX), Ok(None));
}

#[test]
fn too_large_is_reported_from_the_header_alone() {
    let buf = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    assert_eq!(
        check(&buf, 1024),
        Err(DecodeError::TooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    assert_eq!(
        check(&buf, 1024).unwrap_err().reason_code(),
        ReasonCode::PACKET_TOO_LARGE
    );
    // Exactly at the limit is fine.
    let mut small = vec![0x30, 0x05];
    assert_eq!(check(&small, 7), Ok(None));
    small.extend_from_slice(&[0, 1, b't', b'x', b'y']);
    assert_eq!(check(&small, 7), Ok(Some(7)));
    assert!(matches!(
        check(&small, 6),
        Err(DecodeError::TooLarge { size: 7, max: 6 })
    ));
}

#[test]
fn connect_version_is_lenient() {
    let v3 = [
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
    ];
    assert_eq!(connect_version(&v3), Some(ProtocolVersion::V311));
    // A v5 CONNECT that does not decode (reserved flag, truncated) still says it is v5.
    let broken_v5 = [0x10, 0x7F, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x01];
    assert!(decode(Bytes::copy_from_slice(&broken_v5), None).is_err());
    assert_eq!(connect_version(&broken_v5), Some(ProtocolVersion::V5));
    // Not a CONNECT, or not a protocol this broker knows.
    let mqisdp = [
        0x10, 0x0E, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 60,
    ];
    assert_eq!(connect_version(&mqisdp), None);
    assert_eq!(connect_version(&[0x30, 0x02, 0, 0]), None);
    assert_eq!(connect_version(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01]), None);
    for cut in 0..v3.len() {
        let expect = (cut > 8).then_some(ProtocolVersion::V311);
        assert_eq!(connect_version(&v3[..cut]), expect, "cut at {cut}");
    }
}

#[test]
fn decode_reason_codes_match_the_error_class() {
    assert_eq!(
        DecodeError::Malformed("x").reason_code(),
        ReasonCode::MALFORMED_PACKET
    );
    assert_eq!(
        DecodeError::Protocol("x").reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        DecodeError::UnsupportedProtocol("x").reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
}
