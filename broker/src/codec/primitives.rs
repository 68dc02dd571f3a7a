//! The data representations of section 1.5: integers, Variable Byte Integers, UTF-8 strings and
//! binary data, read from and written to the wire.
//!
//! Everything else in the codec is built on the two types here, so the safety rules of the
//! decoder live in one place:
//!
//! * [`Reader`] walks one complete frame. Every read is bounds-checked and fails with a
//!   Malformed Packet instead of panicking, and strings and binary data come back as
//!   zero-copy slices of the frame's [`Bytes`]. Strings are checked for well-formed UTF-8
//!   (MQTT-1.5.4-1) and for U+0000 (MQTT-1.5.4-2) before they are handed out.
//! * [`Sink`] is written to by the encoder. It has two implementations: [`BytesMut`], which
//!   writes, and [`Counter`], which only adds up lengths. Every packet is encoded by one generic
//!   function run over both, so `encoded_len` cannot drift from `encode`.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use super::DecodeError;

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

/// The largest value a Variable Byte Integer can hold (section 1.5.5), hence the largest
/// remaining length of a packet.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// A field runs past the end of the packet (or of its property block): the remaining length
/// is shorter than the content claims.
const SHORT: DecodeError = DecodeError::Malformed("packet ends inside a field");

/// A bounds-checked cursor over `frame[pos..end]`.
pub(crate) struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `frame[pos..]`.
    pub(crate) fn new(frame: &'a Bytes, pos: usize) -> Reader<'a> {
        Reader {
            frame,
            pos: pos.min(frame.len()),
            end: frame.len(),
        }
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// Moves past `n` bytes, returning their range in the frame.
    fn advance(&mut self, n: usize) -> Result<std::ops::Range<usize>> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.end)
            .ok_or(SHORT)?;
        self.pos = end;
        Ok(start..end)
    }

    /// The next `n` bytes, borrowed.
    pub(crate) fn raw(&mut self, n: usize) -> Result<&'a [u8]> {
        let range = self.advance(n)?;
        let frame: &'a Bytes = self.frame;
        frame.get(range).ok_or(SHORT)
    }

    /// The next `n` bytes as a zero-copy slice of the frame.
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes> {
        let range = self.advance(n)?;
        Ok(self.frame.slice(range))
    }

    /// Byte (section 1.5.1).
    pub(crate) fn u8(&mut self) -> Result<u8> {
        self.raw(1)?.first().copied().ok_or(SHORT)
    }

    /// Two Byte Integer, big-endian (section 1.5.2).
    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b: [u8; 2] = self.raw(2)?.try_into().map_err(|_| SHORT)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Four Byte Integer, big-endian (section 1.5.3).
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b: [u8; 4] = self.raw(4)?.try_into().map_err(|_| SHORT)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Variable Byte Integer (section 1.5.5): at most four bytes, in the shortest form
    /// (MQTT-1.5.5-1).
    pub(crate) fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(NON_MINIMAL_VARINT);
                }
                return Ok(value);
            }
        }
        Err(LONG_VARINT)
    }

    /// Binary Data: a two byte length and that many bytes (section 1.5.6), zero-copy.
    pub(crate) fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()?;
        self.bytes(usize::from(n))
    }

    /// UTF-8 Encoded String (section 1.5.4), zero-copy, checked.
    pub(crate) fn string(&mut self) -> Result<ByteString> {
        let b = self.binary()?;
        utf8(b)
    }

    /// Everything up to the end, zero-copy (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        let range = self.pos..self.end;
        self.pos = self.end;
        self.frame.slice(range)
    }

    /// A reader over the next `n` bytes, which this reader skips (a property block).
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader<'a>> {
        let range = self.advance(n)?;
        Ok(Reader {
            frame: self.frame,
            pos: range.start,
            end: range.end,
        })
    }

    /// Fails if anything is left: bytes beyond the packet's grammar are a Malformed Packet.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "unexpected bytes after the end of the packet",
            ))
        }
    }
}

pub(crate) const NON_MINIMAL_VARINT: DecodeError =
    DecodeError::Malformed("variable byte integer not in its shortest form (MQTT-1.5.5-1)");
pub(crate) const LONG_VARINT: DecodeError =
    DecodeError::Malformed("variable byte integer longer than four bytes (section 1.5.5)");

/// Checks that `b` is a valid UTF-8 Encoded String body: well-formed UTF-8 (MQTT-1.5.4-1) and no
/// U+0000 (MQTT-1.5.4-2); both are a Malformed Packet. U+0000 is only ever encoded as the byte
/// 0x00 in well-formed UTF-8, so a byte search finds it.
pub(crate) fn utf8(b: Bytes) -> Result<ByteString> {
    if b.contains(&0) {
        return Err(DecodeError::Malformed(
            "string contains U+0000 (MQTT-1.5.4-2)",
        ));
    }
    ByteString::try_from(b)
        .map_err(|_| DecodeError::Malformed("string is not well-formed UTF-8 (MQTT-1.5.4-1)"))
}

/// Checks a Topic Name (section 4.7): at least one character (MQTT-4.7.3-1) and no wildcard
/// (MQTT-3.3.2-2, MQTT-4.7.0-1). Both are reported as a Protocol Error: the bytes are a valid
/// string, it is their meaning that breaks a rule.
pub(crate) fn check_topic_name(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(DecodeError::Protocol("empty topic name (MQTT-4.7.3-1)"));
    }
    if has_wildcard(topic) {
        return Err(DecodeError::Protocol(
            "wildcard in a topic name (MQTT-4.7.0-1)",
        ));
    }
    Ok(())
}

/// Does `topic` contain `+` or `#`? Written as a branch-free fold rather than `any` so that it
/// vectorises: topics are short and usually clean, so scanning all of it is the fast path.
pub(crate) fn has_wildcard(topic: &str) -> bool {
    topic
        .bytes()
        .fold(false, |found, b| found | (b == b'+') | (b == b'#'))
}

/// A packet identifier that must be non-zero (MQTT-2.2.1-3); zero is a Protocol Error.
pub(crate) fn packet_id(r: &mut Reader<'_>) -> Result<u16> {
    match r.u16()? {
        0 => Err(DecodeError::Protocol("packet identifier 0 (MQTT-2.2.1-3)")),
        id => Ok(id),
    }
}

/// How many bytes the Variable Byte Integer for `v` takes. Values above the maximum are counted
/// as four bytes, matching what [`Sink::varint`] writes for them.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Where the encoder writes. See the module doc for why there are two implementations.
pub(crate) trait Sink {
    /// True for [`Counter`]: a nested block whose length is already known can then be added
    /// with [`Sink::skip`] instead of walked again.
    const COUNTS_ONLY: bool = false;

    /// Accounts for `n` bytes without writing them; only meaningful when `COUNTS_ONLY`.
    fn skip(&mut self, _n: usize) {}

    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn raw(&mut self, v: &[u8]);
    /// A Variable Byte Integer; values above [`MAX_REMAINING_LENGTH`] are clamped to it (only a
    /// caller bug can produce one, and clamping keeps the stream in step with `varint_len`).
    fn varint(&mut self, v: usize);

    /// Binary Data. More than 65,535 bytes cannot be represented; such data (a caller bug) is
    /// truncated rather than desynchronising the stream.
    fn binary(&mut self, v: &[u8]) {
        let n = v.len().min(usize::from(u16::MAX));
        self.u16(n as u16);
        self.raw(&v[..n]);
    }

    /// UTF-8 Encoded String, with the same length limit as [`Sink::binary`].
    fn string(&mut self, v: &str) {
        self.binary(v.as_bytes());
    }
}

/// A [`Sink`] that only counts.
#[derive(Default)]
pub(crate) struct Counter(pub usize);

impl Sink for Counter {
    const COUNTS_ONLY: bool = true;

    fn skip(&mut self, n: usize) {
        self.0 += n;
    }
    fn u8(&mut self, _: u8) {
        self.0 += 1;
    }
    fn u16(&mut self, _: u16) {
        self.0 += 2;
    }
    fn u32(&mut self, _: u32) {
        self.0 += 4;
    }
    fn raw(&mut self, v: &[u8]) {
        self.0 += v.len();
    }
    fn varint(&mut self, v: usize) {
        self.0 += varint_len(v);
    }
}

impl Sink for BytesMut {
    fn u8(&mut self, v: u8) {
        self.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.put_u16(v);
    }
    fn u32(&mut self, v: u32) {
        self.put_u32(v);
    }
    fn raw(&mut self, v: &[u8]) {
        self.put_slice(v);
    }
    fn varint(&mut self, v: usize) {
        let mut v = v.min(MAX_REMAINING_LENGTH);
        loop {
            let digit = (v & 0x7F) as u8;
            v >>= 7;
            if v == 0 {
                self.put_u8(digit);
                return;
            }
            self.put_u8(digit | 0x80);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_at_every_length_boundary() {
        for v in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = BytesMut::new();
            out.varint(v);
            assert_eq!(out.len(), varint_len(v), "length of {v}");
            let frame = out.freeze();
            let mut r = Reader::new(&frame, 0);
            assert_eq!(r.varint().unwrap() as usize, v);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn varint_rejects_five_bytes_and_non_minimal_forms() {
        // MQTT-1.5.5-1 / section 1.5.5: at most four bytes, shortest form.
        for (bytes, err) in [
            (&[0xFF, 0xFF, 0xFF, 0xFF, 0x01][..], LONG_VARINT),
            (&[0x80, 0x00][..], NON_MINIMAL_VARINT),
            (&[0xFF, 0x80, 0x00][..], NON_MINIMAL_VARINT),
            (&[0x80][..], SHORT),
        ] {
            let frame = Bytes::copy_from_slice(bytes);
            assert_eq!(Reader::new(&frame, 0).varint(), Err(err), "{bytes:02x?}");
        }
    }

    #[test]
    fn strings_are_checked_and_not_copied() {
        let frame = Bytes::from_static(b"\x00\x03a/b\x00\x02\xC3\x28\x00\x01\x00\x00\x05ab");
        let mut r = Reader::new(&frame, 0);
        let s = r.string().unwrap();
        assert_eq!(&*s, "a/b");
        // The string points into the frame.
        assert_eq!(s.as_bytes().as_ptr(), frame[2..].as_ptr());
        assert!(matches!(r.string(), Err(DecodeError::Malformed(m)) if m.contains("1.5.4-1")));
        assert!(matches!(r.string(), Err(DecodeError::Malformed(m)) if m.contains("1.5.4-2")));
        assert_eq!(r.string(), Err(SHORT));
    }

    #[test]
    fn oversized_binary_is_truncated_consistently() {
        let big = vec![7u8; 70_000];
        let mut out = BytesMut::new();
        let mut count = Counter::default();
        out.binary(&big);
        count.binary(&big);
        assert_eq!(out.len(), count.0);
        assert_eq!(out.len(), 2 + 65_535);
    }
}
