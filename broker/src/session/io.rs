//! The socket side of a connection: one poll that writes what is buffered and reads what has
//! arrived, and the sizing of the two buffers.
//!
//! Reads and writes go through one `&mut IO`, polled from a single `select!` branch, rather
//! than through `tokio::io::split` halves: splitting costs an allocation and a lock per read
//! and write, and the connection task never reads and writes at the same instant anyway.
//!
//! Memory per idle connection is what this module is careful about. An idle connection holds
//! no read buffer at all: the buffer is released whenever everything in it has been handled,
//! and a read with no buffer first goes to a block on the stack, so memory is only allocated
//! once bytes have really arrived, in the size they need. A write buffer that grew for a burst
//! is released once drained.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A read into an empty connection goes here first (on the stack, not in the task).
const STACK_READ: usize = 2048;
/// Below this much free space the read buffer grows by [`READ_CHUNK`] before the next read.
const MIN_READ_SPACE: usize = 256;
/// What a busy reader reads at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A drained write buffer larger than this is released rather than kept.
const RETAINED_WRITE_CAPACITY: usize = 64 * 1024;

/// What one poll of the socket did.
pub(super) enum IoEvent {
    /// Bytes were read into the read buffer.
    Read,
    /// Some of the write buffer went out.
    Wrote,
    /// The peer closed, or the socket failed.
    Closed,
}

/// Writes from `wbuf` if it holds anything, else (or if the write would block) reads into
/// `rbuf` if `read`. Pending only when neither can make progress.
pub(super) fn poll_io<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    read: bool,
    cx: &mut Context<'_>,
) -> Poll<IoEvent> {
    if !wbuf.is_empty()
        && let Poll::Ready(r) = tokio_util::io::poll_write_buf(Pin::new(&mut *io), cx, wbuf)
    {
        return Poll::Ready(match r {
            Ok(n) if n > 0 => IoEvent::Wrote,
            _ => IoEvent::Closed,
        });
    }
    if !read {
        return Poll::Pending;
    }
    let n = if rbuf.capacity() > rbuf.len() {
        ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, rbuf))
    } else {
        // No buffer (idle): read onto the stack, and allocate for what arrived.
        let mut stack = [0u8; STACK_READ];
        let mut buf = ReadBuf::new(&mut stack);
        ready!(Pin::new(io).poll_read(cx, &mut buf)).map(|()| {
            let got = buf.filled();
            let room = if got.len() == STACK_READ {
                READ_CHUNK
            } else {
                got.len()
            };
            rbuf.reserve(room);
            rbuf.extend_from_slice(got);
            got.len()
        })
    };
    Poll::Ready(match n {
        Ok(n) if n > 0 => IoEvent::Read,
        _ => IoEvent::Closed,
    })
}

/// Keeps the buffers sized to the traffic before the connection waits: a busy reader gets
/// room for a large read, and buffers with nothing in them are released (see the module doc).
pub(super) fn size_buffers(rbuf: &mut BytesMut, wbuf: &mut BytesMut) {
    if rbuf.is_empty() {
        if rbuf.capacity() > 0 {
            *rbuf = BytesMut::new();
        }
    } else if rbuf.capacity() - rbuf.len() < MIN_READ_SPACE {
        rbuf.reserve(READ_CHUNK);
    }
    if wbuf.is_empty() && wbuf.capacity() > RETAINED_WRITE_CAPACITY {
        *wbuf = BytesMut::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_buffers_are_released_and_busy_ones_grow() {
        let mut rbuf = BytesMut::with_capacity(512);
        let mut wbuf = BytesMut::with_capacity(128 * 1024);
        size_buffers(&mut rbuf, &mut wbuf);
        assert_eq!((rbuf.capacity(), wbuf.capacity()), (0, 0));

        let mut rbuf = BytesMut::with_capacity(300);
        rbuf.extend_from_slice(&[0; 200]);
        size_buffers(&mut rbuf, &mut wbuf);
        assert!(rbuf.capacity() - rbuf.len() >= READ_CHUNK);
    }

    #[tokio::test]
    async fn a_read_without_a_buffer_allocates_what_arrived() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &[7; 10])
            .await
            .unwrap();
        let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
        let ev = std::future::poll_fn(|cx| poll_io(&mut server, &mut rbuf, &mut wbuf, true, cx));
        assert!(matches!(ev.await, IoEvent::Read));
        assert_eq!(&rbuf[..], &[7; 10]);
        assert!(
            rbuf.capacity() < 64,
            "sized to the read: {}",
            rbuf.capacity()
        );

        // A read that fills the stack block is followed by a large buffer.
        tokio::io::AsyncWriteExt::write_all(&mut client, &[1; 3 * STACK_READ])
            .await
            .unwrap();
        let (mut rbuf, mut wbuf) = (BytesMut::new(), BytesMut::new());
        let ev = std::future::poll_fn(|cx| poll_io(&mut server, &mut rbuf, &mut wbuf, true, cx));
        assert!(matches!(ev.await, IoEvent::Read));
        assert_eq!(rbuf.len(), STACK_READ);
        assert!(rbuf.capacity() >= READ_CHUNK);
    }
}
