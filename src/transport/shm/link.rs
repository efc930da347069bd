//! One negotiated link: two rings in a shared segment, a writer that waits for ring space, the
//! socket kept open as a lifeline (the peer's exit, even by `kill -9`, closes the link at once)
//! and a reader thread.

use super::ShmTransport;
use super::reader::INBOX_POISONED;
use super::ring::{self, Ring};
use crate::error::{Error, Result};
use crate::protocol::codec::FrameDecoder;
use crate::transport::LinkKind;
use bytes::{Bytes, BytesMut};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Longest wait for ring space before the link is declared stalled.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// One negotiated link.
pub(super) struct Link {
    pub(super) node_id: Arc<str>,
    pub(super) outgoing: Ring,
    pub(super) writer: tokio::sync::Mutex<()>,
    /// The ring the peer writes, for looking (whoever holds `inbox` reads it).
    pub(super) incoming: Ring,
    /// Reading the incoming ring: the reader thread, or a caller waiting actively.
    pub(super) inbox: Mutex<Inbox>,
    /// Requests sent on this link still waiting for their answer.
    pub(super) waiting: Arc<AtomicUsize>,
    /// Callers waiting actively on this link; while any does, the reader thread stays asleep.
    pub(super) drivers: AtomicUsize,
    /// The reader thread, woken when the last active waiter leaves.
    pub(super) reader: OnceLock<std::thread::Thread>,
    pub(super) closed: Arc<AtomicBool>,
    pub(super) lifeline: Mutex<Option<JoinHandle<()>>>,
}

/// The read side of a link: the ring and the frames cut from it so far.
pub(super) struct Inbox {
    pub(super) ring: Ring,
    pub(super) decoder: FrameDecoder,
    pub(super) buf: BytesMut,
}

impl Link {
    /// Closes the link (idempotent): the reader thread exits, the socket closes, and the peer
    /// sees it at once.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self.lifeline.lock().expect("lifeline lock").take() {
            task.abort();
        }
    }
}

impl ShmTransport {
    /// Copies `frame` into the link's outgoing ring, waiting for space if the peer is behind.
    pub(super) async fn write(&self, link: &Link, frame: Bytes) -> Result<()> {
        let _turn = link.writer.lock().await;
        let mut sent = 0;
        let mut backoff = Duration::from_micros(20);
        // The clock is read only once the ring is full: most writes never wait.
        let mut started = None;
        while sent < frame.len() {
            if link.closed.load(Ordering::Acquire) {
                return Err(closed(link));
            }
            match link.outgoing.push(&frame[sent..]) {
                Ok(0) => {
                    let waited = started
                        .get_or_insert_with(tokio::time::Instant::now)
                        .elapsed();
                    if waited > WRITE_TIMEOUT {
                        self.lost(&link.node_id, "the peer stopped reading");
                        return Err(Error::transport("shared-memory peer stopped reading"));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(1));
                }
                Ok(n) => {
                    sent += n;
                    backoff = Duration::from_micros(20);
                }
                Err(err) => {
                    self.lost(&link.node_id, &err.to_string());
                    return Err(broken(&err));
                }
            }
        }
        Ok(())
    }

    /// Copies `frame` whole into the link's outgoing ring if it fits now and no other writer
    /// holds the link; whether it did (nothing is written when it did not).
    pub(super) fn try_write(&self, link: &Link, frame: &[u8]) -> Result<bool> {
        let Ok(_turn) = link.writer.try_lock() else {
            return Ok(false);
        };
        if link.closed.load(Ordering::Acquire) {
            return Err(closed(link));
        }
        link.outgoing.push_whole(frame).map_err(|err| {
            self.lost(&link.node_id, &err.to_string());
            broken(&err)
        })
    }

    /// Starts a negotiated link: `outgoing` is the ring this side writes.
    pub(super) fn link_up(
        &self,
        node_id: Arc<str>,
        stream: std::os::unix::net::UnixStream,
        segment: ring::Segment,
        outgoing: usize,
    ) {
        let Ok(running) = self.running() else { return };
        let segment = Arc::new(segment);
        let incoming = Ring::new(segment.clone(), 1 - outgoing);
        let link = Arc::new(Link {
            node_id: node_id.clone(),
            outgoing: Ring::new(segment, outgoing),
            writer: tokio::sync::Mutex::new(()),
            incoming: incoming.clone(),
            inbox: Mutex::new(Inbox {
                ring: incoming,
                decoder: FrameDecoder::new(running.ctx.codec),
                buf: BytesMut::with_capacity(64 << 10),
            }),
            waiting: Arc::default(),
            drivers: AtomicUsize::new(0),
            reader: OnceLock::new(),
            closed: Arc::new(AtomicBool::new(false)),
            lifeline: Mutex::new(None),
        });
        let (kept, _) = running
            .links
            .insert_if(node_id.clone(), link.clone(), |current| {
                current.is_none() && !running.stopped.load(Ordering::Acquire)
            });
        if !kept {
            return;
        }
        // The lifeline: the socket carries nothing more, so any readable event is the end.
        let this = self.clone();
        let peer = node_id.clone();
        let lifeline = tokio::spawn(async move {
            let reason = match stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(stream))
            {
                Ok(mut stream) => {
                    let mut byte = [0u8; 1];
                    match stream.read(&mut byte).await {
                        Ok(0) => "the peer closed it or exited".to_owned(),
                        Ok(_) => "unexpected bytes on the control socket".to_owned(),
                        Err(err) => err.to_string(),
                    }
                }
                Err(err) => err.to_string(),
            };
            this.lost(&peer, &reason);
        });
        *link.lifeline.lock().expect("lifeline lock") = Some(lifeline);
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let reading = link.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("phalanx-shm-{node_id}"))
            .spawn(move || {
                let _runtime = runtime.enter();
                let read = std::panic::catch_unwind(AssertUnwindSafe(|| this.read_loop(&reading)));
                let reason = match read {
                    Ok(Ok(())) => return,
                    Ok(Err(reason)) => reason,
                    Err(_) => INBOX_POISONED.to_owned(),
                };
                this.lost(&reading.node_id, &reason);
            });
        match spawned {
            Ok(handle) => {
                let _ = link.reader.set(handle.thread().clone());
            }
            Err(err) => {
                self.lost(&link.node_id, &format!("cannot start its reader: {err}"));
                return;
            }
        }
        tracing::debug!(peer = %link.node_id, "shared-memory link up");
        running.ctx.handler.on_link_up(&link.node_id, LinkKind::Shm);
    }
}

/// The error of a write to a closed link.
fn closed(link: &Link) -> Error {
    Error::transport(format!("shared-memory link to '{}' closed", link.node_id))
}

/// The error of a write to a ring found broken.
fn broken(err: &ring::RingError) -> Error {
    Error::transport(format!("shared-memory link broken: {err}"))
}
