//! What every benchmark message carries, and the clock its timestamps come from.
//!
//! The payload starts with a fixed 24-byte stamp, little-endian:
//!
//! | bytes  | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | 0..4   | run id: tells this run's messages from a previous run's leftovers |
//! | 4..8   | publisher id                                                      |
//! | 8..16  | sequence number, from 0 per publisher                             |
//! | 16..24 | send time, ns on the [`Clock`] (the *intended* time at fixed rate) |
//!
//! and is padded with zeros to the requested size. Publishers and subscribers live in one
//! process, so one monotonic clock serves both ends and no clock sync is needed.

use std::time::Instant;

/// Length of the stamp; the smallest payload the generator can send.
pub const STAMP_LEN: usize = 24;

/// A monotonic clock in nanoseconds since the run's epoch, shared by every task.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch.
    #[inline]
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The [`Instant`] of a clock reading, for tokio timers.
    pub fn instant(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

/// The decoded stamp of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run: u32,
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl Stamp {
    /// Appends the stamp and `size - STAMP_LEN` zero bytes to `out`.
    #[inline]
    pub fn write(&self, size: usize, out: &mut bytes::BytesMut) {
        out.extend_from_slice(&self.run.to_le_bytes());
        out.extend_from_slice(&self.publisher.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.sent_ns.to_le_bytes());
        let pad = size.saturating_sub(STAMP_LEN);
        if pad > 0 {
            out.resize(out.len() + pad, 0);
        }
    }

    /// The stamp at the start of `payload`, or `None` if it is too short to carry one.
    #[inline]
    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let s: &[u8; STAMP_LEN] = payload.get(..STAMP_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&s[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Stamp {
            run: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_pads() {
        let s = Stamp {
            run: 7,
            publisher: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut out = bytes::BytesMut::new();
        s.write(64, &mut out);
        assert_eq!(out.len(), 64);
        assert_eq!(Stamp::read(&out), Some(s));
        assert_eq!(Stamp::read(&out[..10]), None);
    }
}
