//! The decoder never panics: every prefix of every valid packet, and a few thousand
//! deterministic mutations of valid and invalid packets, go through `check` and `decode` in all
//! three connection states. Whatever still decodes must encode and decode back to itself, with
//! `encoded_len` agreeing, which also exercises the encoder on odd but valid inputs.

use super::*;

/// xorshift64*, deterministic so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const STATES: [Option<ProtocolVersion>; 3] =
    [None, Some(ProtocolVersion::V311), Some(ProtocolVersion::V5)];

/// Valid frames of every packet type in both versions.
fn valid_frames() -> Vec<(Vec<u8>, ProtocolVersion)> {
    let mut out = Vec::new();
    for sample in samples() {
        out.push((
            encode_checked(&sample.packet, ProtocolVersion::V5).to_vec(),
            ProtocolVersion::V5,
        ));
        if !sample.v5_only {
            out.push((
                encode_checked(&sample.packet, ProtocolVersion::V311).to_vec(),
                ProtocolVersion::V311,
            ));
        }
    }
    out
}

/// Splits a frame into its first byte and body (trusting its header), for re-framing.
fn split(frame: &[u8]) -> (u8, &[u8]) {
    let header = 1 + frame
        .iter()
        .skip(1)
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(1, |p| p + 1);
    (frame[0], frame.get(header..).unwrap_or(&[]))
}

/// Decodes `bytes` in every connection state; for each success, checks that it round trips.
fn exercise(bytes: &[u8]) {
    let _ = check(bytes, u32::MAX);
    let _ = check(bytes, 64);
    for state in STATES {
        if let Ok(packet) = decode(Bytes::copy_from_slice(bytes), state) {
            let v = match (&packet, state) {
                (Packet::Connect(c), _) => c.protocol,
                (_, Some(v)) => v,
                (_, None) => unreachable!("only CONNECT decodes before CONNECT"),
            };
            let again = encode_checked(&packet, v);
            assert_eq!(check(&again, u32::MAX), Ok(Some(again.len())));
            let back = decode(again, decode_version(&packet, v))
                .unwrap_or_else(|e| panic!("re-encoded {packet:?} from {bytes:02x?} fails: {e}"));
            assert_eq!(back, packet, "from {bytes:02x?}");
        }
    }
}

#[test]
fn every_prefix_of_every_valid_packet_is_handled() {
    for (frame, version) in valid_frames() {
        for cut in 0..frame.len() {
            let prefix = &frame[..cut];
            // An incomplete packet is never an error and never complete.
            assert_eq!(
                check(prefix, u32::MAX),
                Ok(None),
                "{frame:02x?} cut at {cut}"
            );
            assert!(decode(Bytes::copy_from_slice(prefix), Some(version)).is_err());
            // The same prefix of the body, re-framed so the remaining length agrees: the
            // remaining length is shorter than the content claims.
            let (first, body) = split(&frame);
            if cut < body.len() {
                exercise(&super::frame(first, &body[..cut]));
            }
        }
        exercise(&frame);
    }
}

#[test]
fn mutated_packets_never_panic_and_what_decodes_round_trips() {
    let mut seeds: Vec<Vec<u8>> = valid_frames().into_iter().map(|(f, _)| f).collect();
    seeds.extend(
        super::malformed::invalid_frames()
            .into_iter()
            .map(|(f, _)| f),
    );
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut decoded = 0usize;
    for _ in 0..20_000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(6) {
                0 if !bytes.is_empty() => bytes[at] ^= 1 << rng.below(8),
                1 if !bytes.is_empty() => bytes[at] = rng.byte(),
                2 => bytes.insert(at.min(bytes.len()), rng.byte()),
                3 if !bytes.is_empty() => {
                    bytes.remove(at);
                }
                4 => bytes.truncate(at),
                _ => {
                    // Interesting values: boundaries of lengths, flags and reason codes.
                    let v = [0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF, 0x26, 0x0B][rng.below(8)];
                    if let Some(b) = bytes.get_mut(at) {
                        *b = v;
                    }
                }
            }
        }
        exercise(&bytes);
        // Re-frame so the remaining length agrees with the mutated body, to get past framing.
        if !bytes.is_empty() {
            let (first, body) = split(&bytes);
            let reframed = super::frame(first, body);
            exercise(&reframed);
            decoded += STATES
                .iter()
                .filter(|s| decode(Bytes::from(reframed.clone()), **s).is_ok())
                .count();
        }
    }
    if std::env::var_os("CODEC_SHOW_ROWS").is_some() {
        eprintln!("{decoded} mutants decoded");
    }
    // The mutations are not all trivially rejected.
    assert!(decoded > 1_000, "only {decoded} mutants decoded");
}
