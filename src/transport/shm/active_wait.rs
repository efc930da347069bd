//! The active wait: after sending a request, the caller reads its link once on its own thread —
//! answers already there (for other calls too) are handled here, and the tasks they wake run
//! here instead of being woken from the reader thread. A call alone in flight keeps reading for
//! a short while: on shared memory the answer comes back faster than a thread wake-up. The
//! reader thread naps meanwhile, and the waiter steps aside as soon as other tasks wait for the
//! runtime.

use super::ShmTransport;
use super::link::Link;
use super::reader::{INBOX_POISONED, read_frames};
use std::sync::TryLockError;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest a lone caller reads its link itself before it sleeps like any other.
const ACTIVE_WAIT: Duration = Duration::from_micros(50);
/// Spins between two looks of an active waiter before it yields once (another process may
/// need this CPU to answer).
const ACTIVE_SPINS: u32 = 64;

impl ShmTransport {
    /// Reads `link` on the calling thread (see the module docs) until `done` says the caller
    /// has what it waits for, or the budget runs out; whether `done` ended it.
    pub(super) fn read_while_waiting(&self, link: &Link, done: &mut dyn FnMut() -> bool) -> bool {
        let Ok(running) = self.running() else {
            return false;
        };
        let node_id = &*link.node_id;
        let look = || match link.inbox.try_lock() {
            Ok(mut inbox) => read_frames(running, link, &mut inbox).map(drop),
            Err(TryLockError::WouldBlock) => Ok(()),
            Err(TryLockError::Poisoned(_)) => Err(INBOX_POISONED.to_owned()),
        };
        // The first look costs nobody anything: frames already there (answers to other calls
        // too) are handled on this thread, and the tasks they wake run here, without a thread
        // wake-up.
        if let Err(reason) = look() {
            self.lost(node_id, &reason);
            return done();
        }
        if done() {
            return true;
        }
        // Tasks woken from other threads wait in the runtime's shared queue: they need this
        // thread more than an early answer does.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .map(|h| h.metrics());
        let others_wait = || runtime.as_ref().is_some_and(|m| m.global_queue_depth() > 0);
        link.drivers.fetch_add(1, Ordering::AcqRel);
        let started = std::time::Instant::now();
        let mut looks = 0u32;
        let outcome = loop {
            if let Err(reason) = look() {
                self.lost(node_id, &reason);
                break done();
            }
            if done() {
                break true;
            }
            if link.closed.load(Ordering::Acquire)
                || started.elapsed() > ACTIVE_WAIT
                || others_wait()
            {
                break false;
            }
            looks += 1;
            if looks.is_multiple_of(ACTIVE_SPINS) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        };
        // The reader thread naps while callers read; wake it only if something is waiting (a
        // wake-up costs as much as a round trip, and the next lone call would read it anyway).
        if link.drivers.fetch_sub(1, Ordering::AcqRel) == 1
            && !link.incoming.is_empty()
            && let Some(reader) = link.reader.get()
        {
            reader.unpark();
        }
        outcome
    }
}
