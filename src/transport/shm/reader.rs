//! The reader thread of a link: moves frames out of the incoming ring and hands them to the
//! broker. An idle reader spins briefly (adaptively: long spins collapse when both processes
//! share one CPU), yields, then sleeps on the ring's futex, so an idle link costs no CPU.

use super::link::{Inbox, Link};
use super::{Running, ShmTransport};
use crate::transport::{Direction, LinkKind};
use std::sync::TryLockError;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Longest sleep of an idle reader before it looks again (a safety net, not a poll).
const PARK: Duration = Duration::from_millis(100);
/// Spin iterations of an idle reader before it yields, adapted within these bounds.
const SPIN_MIN: u32 = 16;
const SPIN_MAX: u32 = 4096;
/// Spins between two yields of a spinning reader.
const SPINS_PER_YIELD: u32 = 64;
/// Yields of an idle reader after spinning, before it parks.
const YIELDS: u32 = 64;
/// Why a link closes when a thread panicked while reading it (its frame state is unknown).
pub(super) const INBOX_POISONED: &str = "a thread panicked while reading the link";
/// How long the reader thread naps while callers read the link themselves; they wake it when
/// they leave frames behind, so this bounds only a frame that arrives just as they leave.
const DRIVEN_NAP: Duration = Duration::from_micros(200);

impl ShmTransport {
    /// Reads frames until the link closes; `Err` says why it broke.
    ///
    /// Spins briefly (adaptively), yields, then sleeps on the ring's futex; sleeps on its thread
    /// handle instead while a caller reads the link itself (see `active_wait`).
    pub(super) fn read_loop(&self, link: &Link) -> std::result::Result<(), String> {
        let running = self.running().map_err(|e| e.to_string())?;
        let mut spin = SPIN_MIN;
        while !link.closed.load(Ordering::Acquire) {
            if link.drivers.load(Ordering::Acquire) > 0 {
                std::thread::park_timeout(DRIVEN_NAP);
                continue;
            }
            let read = match link.inbox.try_lock() {
                Ok(mut inbox) => read_frames(running, link, &mut inbox)?,
                Err(TryLockError::WouldBlock) => {
                    // A caller is reading right now.
                    std::thread::yield_now();
                    continue;
                }
                Err(TryLockError::Poisoned(_)) => return Err(INBOX_POISONED.into()),
            };
            if read > 0 {
                continue;
            }
            let mut found = false;
            for turn in 1..=spin {
                // Politely: other threads of either process may need this CPU to produce
                // what we wait for (two processes' threads often share two CPUs).
                if turn % SPINS_PER_YIELD == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                if !link.incoming.is_empty() {
                    found = true;
                    break;
                }
            }
            if found {
                spin = (spin * 2).min(SPIN_MAX);
                continue;
            }
            spin = (spin / 2).max(SPIN_MIN);
            // Yielding keeps this thread awake through short gaps without taking the CPU
            // from anyone runnable; only a longer silence parks it on the futex.
            let mut woke = false;
            for _ in 0..YIELDS {
                std::thread::yield_now();
                if !link.incoming.is_empty() {
                    woke = true;
                    break;
                }
            }
            if !woke {
                link.incoming.park(PARK).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// Moves every published byte out of the ring and hands each complete frame to the broker;
/// returns how many bytes it read. `Err` says why the link must close.
pub(super) fn read_frames(
    running: &Running,
    link: &Link,
    inbox: &mut Inbox,
) -> std::result::Result<usize, String> {
    let Inbox { ring, decoder, buf } = inbox;
    let read = ring.pop(buf).map_err(|e| e.to_string())?;
    if read == 0 {
        return Ok(0);
    }
    loop {
        let buffered = buf.len();
        match decoder.decode(buf) {
            Ok(Some(packet)) => {
                if *packet.sender != *link.node_id {
                    return Err(format!("frame claims to come from '{}'", packet.sender));
                }
                running.ctx.traffic.record(
                    &link.node_id,
                    LinkKind::Shm,
                    Direction::Received,
                    buffered - buf.len(),
                );
                running.ctx.handler.on_packet(packet, LinkKind::Shm);
            }
            Ok(None) => break,
            Err(err) => return Err(format!("malformed frame: {err}")),
        }
    }
    Ok(read)
}
