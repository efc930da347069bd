//! The shared segment and its two single-producer/single-consumer byte rings. All of the
//! transport's `unsafe` lives here.
//!
//! Layout of a segment (one `memfd`, mapped by both processes):
//!
//! ```text
//! 0      header: magic, version, ring capacity, challenge, response     (one page)
//! 4096   ring 0 control: write position | read position | wake word   (one page)
//! 8192   ring 0 data (capacity bytes)
//! ...    ring 1 control, ring 1 data
//! ```
//!
//! A ring is a byte pipe: the producer copies bytes into free space and publishes them by
//! advancing the write position (release); the consumer copies published bytes out and frees
//! them by advancing the read position (release). Frames of any size pass, in pieces if they
//! are larger than the ring. Positions only grow; `position % capacity` is the offset.
//!
//! The peer process is not trusted: every position read from the segment is checked, and every
//! copy is bounded by the ring's own capacity, so a corrupted or hostile segment can garble the
//! bytes of this link (the frame decoder then rejects them) but never make us touch memory
//! outside the mapping.

#![allow(unsafe_code)]

use memmap2::MmapMut;
use std::fs::File;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

const MAGIC: u64 = 0x5048_414c_414e_5831; // "PHALANX1"
const VERSION: u64 = 1;
const PAGE: usize = 4096;
/// What the acceptor writes next to the challenge to prove it mapped the segment.
const RESPONSE_MASK: u64 = 0x9e37_79b9_7f4a_7c15;

/// Header words (offsets in u64 units).
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_CAPACITY: usize = 2;
const H_CHALLENGE: usize = 3;
const H_RESPONSE: usize = 4;

/// Ring control words (offsets in bytes from the control page; each on its own cache line).
const C_WRITE: usize = 0;
const C_READ: usize = 128;
const C_WAKE: usize = 256;
const C_SLEEPING: usize = 384;

/// Why a segment or ring cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingError {
    #[error("cannot create or map the segment: {0}")]
    Map(#[from] std::io::Error),
    #[error("not a phalanx segment (magic, version or size mismatch)")]
    Header,
    #[error("ring positions are inconsistent (write {write}, read {read}, capacity {capacity})")]
    Corrupt {
        write: u64,
        read: u64,
        capacity: u64,
    },
}

/// A mapped segment holding two rings.
pub(crate) struct Segment {
    /// Keeps the mapping alive; all access goes through `base`.
    _map: MmapMut,
    /// Start of the mapping, taken from `map` while we held it mutably.
    base: *mut u8,
    len: usize,
    capacity: usize,
}

// SAFETY: `base` points into `map`, which lives as long as the segment and is never remapped;
// all access through it is atomic or to ring areas that the protocol gives to one side at a
// time, so the segment may move to and be shared with other threads.
unsafe impl Send for Segment {}
// SAFETY: see `Send`.
unsafe impl Sync for Segment {}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// The largest ring a peer may offer.
pub(crate) const MAX_CAPACITY: usize = 64 << 20;

fn segment_len(capacity: usize) -> usize {
    PAGE + 2 * (PAGE + capacity)
}

impl Segment {
    /// Creates an anonymous segment (a `memfd`: nothing appears in `/dev/shm`, and the memory
    /// is freed when the last process holding it exits) with rings of `capacity` bytes (a
    /// power of two), and writes the header with `challenge`.
    pub(crate) fn create(capacity: usize, challenge: u64) -> Result<(Self, File), RingError> {
        assert!(capacity.is_power_of_two() && capacity >= PAGE);
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "phalanx-shm",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len(segment_len(capacity) as u64)?;
        // Sealed at its size: neither side can shrink it under the other's mapping (a SIGBUS).
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
            .map_err(std::io::Error::from)?;
        let segment = Self::map(&file, capacity)?;
        segment.word(H_MAGIC).store(MAGIC, Ordering::Relaxed);
        segment.word(H_VERSION).store(VERSION, Ordering::Relaxed);
        segment
            .word(H_CAPACITY)
            .store(capacity as u64, Ordering::Relaxed);
        segment
            .word(H_CHALLENGE)
            .store(challenge, Ordering::Release);
        Ok((segment, file))
    }

    /// Maps a segment received from a peer and checks it: sealed against resizing (or the peer
    /// could shrink it under our mapping), of a size that matches its header, with rings of at
    /// most [`MAX_CAPACITY`].
    pub(crate) fn open(file: &File) -> Result<Self, RingError> {
        use rustix::fs::SealFlags;
        let seals = rustix::fs::fcntl_get_seals(file).map_err(std::io::Error::from)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(RingError::Header);
        }
        let len = file.metadata()?.len() as usize;
        if len < segment_len(PAGE) || len > segment_len(MAX_CAPACITY) {
            return Err(RingError::Header);
        }
        let probe = Self::map(file, 0)?;
        let capacity = probe.word(H_CAPACITY).load(Ordering::Acquire) as usize;
        if probe.word(H_MAGIC).load(Ordering::Acquire) != MAGIC
            || probe.word(H_VERSION).load(Ordering::Acquire) != VERSION
            || !capacity.is_power_of_two()
            || !(PAGE..=MAX_CAPACITY).contains(&capacity)
            || segment_len(capacity) != len
        {
            return Err(RingError::Header);
        }
        Ok(Self { capacity, ..probe })
    }

    fn map(file: &File, capacity: usize) -> Result<Self, RingError> {
        // SAFETY: the file is a memfd shared with one peer process. We never form Rust
        // references to its bytes (only raw-pointer copies and atomics), so the peer changing
        // them concurrently cannot violate aliasing rules; the mapping stays alive as long as
        // `self` (and every `Ring` holds an `Arc` of it).
        let mut map = unsafe { MmapMut::map_mut(file)? };
        let base = map.as_mut_ptr();
        let len = map.len();
        Ok(Self {
            _map: map,
            base,
            len,
            capacity,
        })
    }

    /// The challenge the creator wrote.
    pub(crate) fn challenge(&self) -> u64 {
        self.word(H_CHALLENGE).load(Ordering::Acquire)
    }

    /// Proves (acceptor side) that this process can write the segment.
    pub(crate) fn respond(&self) {
        let challenge = self.challenge();
        self.word(H_RESPONSE)
            .store(challenge ^ RESPONSE_MASK, Ordering::Release);
    }

    /// Whether the peer answered the challenge in the segment (creator side).
    pub(crate) fn responded(&self) -> bool {
        self.word(H_RESPONSE).load(Ordering::Acquire) == self.challenge() ^ RESPONSE_MASK
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        self.atomic_u64(index * 8)
    }

    fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.len);
        // SAFETY: in bounds (checked above), 8-aligned (the mapping is page-aligned and the
        // offset a multiple of 8), and only ever accessed atomically by both processes.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= self.len);
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { &*(self.base.add(offset) as *const AtomicU32) }
    }

    fn control(&self, ring: usize) -> usize {
        PAGE + ring * (PAGE + self.capacity)
    }

    fn data(&self, ring: usize) -> usize {
        self.control(ring) + PAGE
    }
}

/// One ring of a segment, seen from one side.
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    segment: std::sync::Arc<Segment>,
    index: usize,
}

impl Ring {
    /// Ring `index` (0 or 1) of `segment`.
    pub(crate) fn new(segment: std::sync::Arc<Segment>, index: usize) -> Self {
        assert!(index < 2);
        Self { segment, index }
    }

    fn write_pos(&self) -> &AtomicU64 {
        self.segment
            .atomic_u64(self.segment.control(self.index) + C_WRITE)
    }

    fn read_pos(&self) -> &AtomicU64 {
        self.segment
            .atomic_u64(self.segment.control(self.index) + C_READ)
    }

    /// The futex word the consumer sleeps on; bumped by the producer to wake it.
    fn wake_word(&self) -> &AtomicU32 {
        self.segment
            .atomic_u32(self.segment.control(self.index) + C_WAKE)
    }

    fn sleeping(&self) -> &AtomicU32 {
        self.segment
            .atomic_u32(self.segment.control(self.index) + C_SLEEPING)
    }

    fn capacity(&self) -> u64 {
        self.segment.capacity as u64
    }

    /// Published bytes not yet consumed, checked against the capacity.
    fn positions(&self) -> Result<(u64, u64), RingError> {
        let write = self.write_pos().load(Ordering::Acquire);
        let read = self.read_pos().load(Ordering::Acquire);
        if write < read || write - read > self.capacity() {
            return Err(RingError::Corrupt {
                write,
                read,
                capacity: self.capacity(),
            });
        }
        Ok((write, read))
    }

    /// Producer: copies as much of `bytes` as fits and publishes it; returns how many bytes.
    /// Wakes the consumer if it sleeps.
    pub(crate) fn push(&self, bytes: &[u8]) -> Result<usize, RingError> {
        let (write, read) = self.positions()?;
        let free = (self.capacity() - (write - read)) as usize;
        let n = free.min(bytes.len());
        if n == 0 {
            return Ok(0);
        }
        self.publish(write, &bytes[..n]);
        Ok(n)
    }

    /// Producer: copies all of `bytes` and publishes them if they fit now; whether they did
    /// (nothing is written when they do not).
    pub(crate) fn push_whole(&self, bytes: &[u8]) -> Result<bool, RingError> {
        let (write, read) = self.positions()?;
        let free = (self.capacity() - (write - read)) as usize;
        if free < bytes.len() {
            return Ok(false);
        }
        self.publish(write, bytes);
        Ok(true)
    }

    /// Copies `bytes` in at `write`, publishes them and wakes a sleeping consumer.
    fn publish(&self, write: u64, bytes: &[u8]) {
        let n = bytes.len();
        self.copy_in(write, bytes);
        self.write_pos().store(write + n as u64, Ordering::SeqCst);
        // SeqCst pairs with the consumer's `sleeping` store then position re-check: either it
        // sees our bytes, or we see it asleep and wake it.
        if self.sleeping().load(Ordering::SeqCst) != 0 {
            self.wake_word().fetch_add(1, Ordering::SeqCst);
            let _ = rustix::thread::futex::wake(
                self.wake_word(),
                rustix::thread::futex::Flags::empty(),
                1,
            );
        }
    }

    /// Consumer: appends every published byte to `out` and frees them; returns how many.
    pub(crate) fn pop(&self, out: &mut bytes::BytesMut) -> Result<usize, RingError> {
        let (write, read) = self.positions()?;
        let n = (write - read) as usize;
        if n > 0 {
            self.copy_out(read, n, out);
            self.read_pos().store(write, Ordering::Release);
        }
        Ok(n)
    }

    /// Consumer: sleeps until the producer publishes something or `timeout` passes.
    pub(crate) fn park(&self, timeout: Duration) -> Result<(), RingError> {
        let seq = self.wake_word().load(Ordering::SeqCst);
        self.sleeping().store(1, Ordering::SeqCst);
        let (write, read) = self.positions()?;
        if write == read {
            let timeout = rustix::thread::futex::Timespec {
                tv_sec: timeout.as_secs() as i64,
                tv_nsec: i64::from(timeout.subsec_nanos()),
            };
            // EAGAIN (the word moved), EINTR and the timeout all just mean "look again".
            let _ = rustix::thread::futex::wait(
                self.wake_word(),
                rustix::thread::futex::Flags::empty(),
                seq,
                Some(&timeout),
            );
        }
        self.sleeping().store(0, Ordering::SeqCst);
        Ok(())
    }

    /// Whether the ring holds no published bytes: a hint for deciding to read or sleep, safe
    /// to ask from any thread while the consumer reads (so not validated; [`Ring::pop`] is).
    pub(crate) fn is_empty(&self) -> bool {
        // Read first: it never passes the write position, which only grows.
        let read = self.read_pos().load(Ordering::Acquire);
        self.write_pos().load(Ordering::Acquire) == read
    }

    fn copy_in(&self, position: u64, bytes: &[u8]) {
        let capacity = self.capacity() as usize;
        let offset = (position % self.capacity()) as usize;
        let first = bytes.len().min(capacity - offset);
        let base = self.segment.data(self.index);
        assert!(bytes.len() <= capacity && base + capacity <= self.segment.len);
        // SAFETY: both destination ranges lie inside this ring's data area (offset < capacity,
        // first ≤ capacity - offset, the rest ≤ offset), inside the mapping (asserted above);
        // the source is our own slice, which cannot overlap the mapping.
        unsafe {
            let data = self.segment.base.add(base);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(offset), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, bytes.len() - first);
        }
    }

    fn copy_out(&self, position: u64, n: usize, out: &mut bytes::BytesMut) {
        let capacity = self.capacity() as usize;
        let offset = (position % self.capacity()) as usize;
        let first = n.min(capacity - offset);
        let base = self.segment.data(self.index);
        assert!(n <= capacity && base + capacity <= self.segment.len);
        out.reserve(n);
        // SAFETY: the source ranges lie inside this ring's data area (as in `copy_in`); the
        // destination is spare capacity of `out` reserved above, and `set_len` covers exactly
        // the bytes written.
        unsafe {
            let data = self.segment.base.add(base);
            let dst = out.as_mut_ptr().add(out.len());
            std::ptr::copy_nonoverlapping(data.add(offset), dst, first);
            std::ptr::copy_nonoverlapping(data, dst.add(first), n - first);
            out.set_len(out.len() + n);
        }
    }

    /// Overwrites this ring's positions (tests of corruption handling).
    #[cfg(test)]
    pub(crate) fn corrupt(&self) {
        self.write_pos().store(u64::MAX / 2, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pair(capacity: usize) -> (Ring, Ring) {
        let (segment, file) = Segment::create(capacity, 42).unwrap();
        let other = Arc::new(Segment::open(&file).unwrap());
        (Ring::new(Arc::new(segment), 0), Ring::new(other, 0))
    }

    #[test]
    fn header_and_challenge_round_trip() {
        let (segment, file) = Segment::create(PAGE, 7).unwrap();
        let peer = Segment::open(&file).unwrap();
        assert_eq!(peer.challenge(), 7);
        assert!(!segment.responded());
        peer.respond();
        assert!(segment.responded());
        assert_eq!(peer.capacity, PAGE);
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_refused() {
        let fd = rustix::fs::memfd_create("junk", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let file = File::from(fd);
        file.set_len(segment_len(PAGE) as u64).unwrap();
        assert!(matches!(Segment::open(&file), Err(RingError::Header)));
    }

    #[test]
    fn a_segment_cannot_be_resized_and_an_unsealed_one_is_refused() {
        let (_segment, file) = Segment::create(PAGE, 7).unwrap();
        // What a hostile peer would do to make the other side's next access a SIGBUS.
        assert!(
            file.set_len(PAGE as u64).is_err(),
            "sealed against shrinking"
        );
        // A well-formed header in a memfd that could still shrink: refused.
        let fd = rustix::fs::memfd_create("unsealed", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let unsealed = File::from(fd);
        unsealed.set_len(segment_len(PAGE) as u64).unwrap();
        let mut header = Vec::new();
        for word in [MAGIC, VERSION, PAGE as u64, 7] {
            header.extend_from_slice(&word.to_ne_bytes());
        }
        std::os::unix::fs::FileExt::write_all_at(&unsealed, &header, 0).unwrap();
        assert!(matches!(Segment::open(&unsealed), Err(RingError::Header)));
    }

    #[test]
    fn bytes_wrap_around_the_end() {
        let (producer, consumer) = pair(PAGE);
        let mut out = bytes::BytesMut::new();
        for round in 0..10u8 {
            let chunk = vec![round; 3000];
            assert_eq!(producer.push(&chunk).unwrap(), 3000);
            assert_eq!(consumer.pop(&mut out).unwrap(), 3000);
            assert!(out.iter().all(|&b| b == round));
            out.clear();
        }
        // Full: only the free space is taken.
        assert_eq!(producer.push(&[1; 5000]).unwrap(), PAGE);
        assert_eq!(producer.push(&[1]).unwrap(), 0);
    }

    #[test]
    fn a_whole_push_writes_all_or_nothing() {
        let (producer, consumer) = pair(PAGE);
        let mut out = bytes::BytesMut::new();
        assert!(producer.push_whole(&[7; 3000]).unwrap());
        // 3000 of PAGE taken: a frame larger than what is left is not cut in two.
        assert!(!producer.push_whole(&vec![8; PAGE - 2999]).unwrap());
        assert!(producer.push_whole(&vec![9; PAGE - 3000]).unwrap());
        assert_eq!(consumer.pop(&mut out).unwrap(), PAGE);
        assert!(out[..3000].iter().all(|&b| b == 7));
        assert!(out[3000..].iter().all(|&b| b == 9));
    }

    #[test]
    fn corrupted_positions_are_an_error_not_a_crash() {
        let (producer, consumer) = pair(PAGE);
        producer.corrupt();
        let mut out = bytes::BytesMut::new();
        assert!(matches!(
            consumer.pop(&mut out),
            Err(RingError::Corrupt { .. })
        ));
        assert!(matches!(
            producer.push(b"x"),
            Err(RingError::Corrupt { .. })
        ));
    }

    /// A producer and a consumer thread move 64 MiB through a small ring, with parking: every
    /// byte arrives once, in order.
    #[test]
    fn concurrent_producer_and_consumer_keep_order() {
        let (producer, consumer) = pair(PAGE * 4);
        const TOTAL: usize = 64 << 20;
        let reader = std::thread::spawn(move || {
            let mut out = bytes::BytesMut::new();
            let mut seen = 0usize;
            while seen < TOTAL {
                if consumer.pop(&mut out).unwrap() == 0 {
                    consumer.park(Duration::from_millis(10)).unwrap();
                    continue;
                }
                for &b in out.iter() {
                    assert_eq!(b, (seen % 251) as u8, "byte {seen}");
                    seen += 1;
                }
                out.clear();
            }
        });
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < TOTAL {
            let n = producer
                .push(&data[sent..(sent + 7919).min(TOTAL)])
                .unwrap();
            if n == 0 {
                std::thread::yield_now();
            }
            sent += n;
        }
        reader.join().unwrap();
        assert!(producer.is_empty());
    }
}
