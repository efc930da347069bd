//! A per-thread arena for the small byte buffers every call writes (encoded parameters and
//! results, frames): each is carved from one larger block instead of allocated on its own.
//!
//! A buffer frozen out of a `BytesMut` with spare room costs two allocations (the bytes and a
//! shared header); carved from the arena it costs none, and the block is reused in place once
//! every buffer carved from it is gone. A buffer keeps its whole block alive, so blocks are
//! small ([`BLOCK`]) and anything that may be large gets an allocation of its own.

use bytes::{Bytes, BytesMut};
use std::cell::RefCell;

/// Bytes per arena block.
const BLOCK: usize = 16 << 10;
/// Buffers expected to be larger than this are allocated on their own.
const LARGEST_CARVED: usize = BLOCK / 4;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Writes a buffer with `write` and returns it frozen; `expected` is the size it will likely
/// have. A failed write leaves nothing behind.
pub(crate) fn build<E>(
    expected: usize,
    write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Bytes, E> {
    if expected > LARGEST_CARVED {
        return alone(expected, write);
    }
    ARENA.with(|arena| {
        // A write that builds another buffer inside (none does today) gets its own.
        let Ok(mut arena) = arena.try_borrow_mut() else {
            return alone(expected, write);
        };
        if arena.capacity() < expected {
            // Reuses the block in place if nothing carved from it lives any more.
            arena.reserve(BLOCK);
        }
        match write(&mut arena) {
            Ok(()) => Ok(arena.split().freeze()),
            Err(err) => {
                arena.clear();
                Err(err)
            }
        }
    })
}

/// A buffer of its own.
fn alone<E>(
    expected: usize,
    write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Bytes, E> {
    let mut buf = BytesMut::with_capacity(expected);
    write(&mut buf)?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn buffers_are_independent_and_survive_the_block() {
        let kept: Vec<Bytes> = (0..5000u32)
            .map(|i| {
                build::<()>(8, |buf| {
                    buf.put_u32(i);
                    buf.put_u32(!i);
                    Ok(())
                })
                .unwrap()
            })
            .collect();
        for (i, bytes) in kept.iter().enumerate() {
            let i = i as u32;
            assert_eq!(&bytes[..], [i.to_be_bytes(), (!i).to_be_bytes()].concat());
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_large_buffers_stand_alone() {
        let failed = build(4, |buf| {
            buf.put_slice(b"half");
            Err("no")
        });
        assert_eq!(failed, Err("no"));
        let next = build::<()>(4, |buf| {
            buf.put_slice(b"next");
            Ok(())
        })
        .unwrap();
        assert_eq!(&next[..], b"next");
        let large = build::<()>(BLOCK * 4, |buf| {
            buf.put_bytes(7, BLOCK * 4);
            Ok(())
        })
        .unwrap();
        assert_eq!(large.len(), BLOCK * 4);
        // A buffer that outgrows its estimate is still whole.
        let grown = build::<()>(4, |buf| {
            buf.put_bytes(1, BLOCK * 3);
            Ok(())
        })
        .unwrap();
        assert!(grown.iter().all(|&b| b == 1) && grown.len() == BLOCK * 3);
    }
}
