//! One authenticated link to a peer, over QUIC or TCP: the send path (with corking), closing,
//! and the byte source its reader drains.

use super::MeshConfig;
use crate::error::{Error, Result};
use crate::transport::{LinkKind, TrafficMeter};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

/// Application close codes (QUIC carries them to the peer; TCP only logs them).
pub(super) const CLOSE_BYE: u32 = 0;
pub(super) const CLOSE_DUPLICATE: u32 = 1;
pub(super) const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_STALLED: u32 = 3;
pub(super) const CLOSE_SELF: u32 = 4;

/// First byte of every unidirectional QUIC stream.
pub(super) const STREAM_MAIN: u8 = 0;
pub(super) const STREAM_FRAME: u8 = 1;

/// Bytes asked of the stack per read.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// A TLS session over TCP, either side of the handshake.
pub(super) type TlsTcp = tokio_rustls::TlsStream<tokio::net::TcpStream>;

/// Why a TCP link closed; `None` while it is open.
pub(super) type CloseState = Option<Arc<str>>;

/// An authenticated connection to one peer.
pub(crate) struct Link {
    pub(super) node_id: Arc<str>,
    pub(super) outbound: bool,
    pub(super) kind: LinkKind,
    id: usize,
    pub(super) wire: Wire,
    /// Requests sent on this link still waiting for their answer.
    pub(super) waiting: Arc<AtomicUsize>,
    /// Told of every write to the wire.
    traffic: Arc<dyn TrafficMeter>,
    outbox: std::sync::Mutex<Outbox>,
}

/// What a link writes to.
pub(super) enum Wire {
    /// One QUIC connection: a long-lived main stream, plus a stream per large frame.
    Quic {
        conn: quinn::Connection,
        main: tokio::sync::Mutex<quinn::SendStream>,
        /// Large frames being read from this peer at once (at most
        /// `max_large_frames_in_flight`).
        large_frames: tokio::sync::Semaphore,
    },
    /// One TLS 1.3 session over TCP: every frame, small or large, in order.
    Tcp {
        writer: tokio::sync::Mutex<WriteHalf<TlsTcp>>,
        closed: watch::Sender<CloseState>,
    },
}

/// Small frames waiting to be written together: one write (one wake of the QUIC driver, one
/// TLS record) carries many frames, so a burst of calls costs a few datagrams, not one each.
///
/// Frames wait here for one of two writers. While the link's reader hands a batch of received
/// frames to the broker it *corks* the outbox and writes what the batch produced at once when
/// done ([`Link::flush`]). Otherwise the first frame of a burst starts a flush task, which
/// lets every task already runnable on its thread go first (one `yield_now`) — the callers
/// woken by one batch of answers all queue their next request — then writes them all.
///
/// Frames only leave the outbox while the main stream is locked, all of them at once, so none
/// can overtake another; past [`OUTBOX_LIMIT`] a sender writes itself and waits for it, which
/// is the back-pressure of a peer that stops reading.
#[derive(Default)]
struct Outbox {
    corked: bool,
    /// A flush task is on its way.
    flush_pending: bool,
    frames: BytesMut,
}

impl Outbox {
    /// Whether someone will write what the outbox holds: the reader that corked it, or a
    /// burst's writer.
    fn is_written_soon(&self) -> bool {
        self.corked || self.flush_pending
    }

    /// Whether senders must write their frames themselves (back-pressure).
    fn is_full(&self) -> bool {
        self.frames.len() >= OUTBOX_LIMIT
    }

    /// Encodes a frame with `encode` at the end of the outbox if someone will write it from
    /// here; `Ok(Some(len))` if it did. `Ok(None)` — and the outbox as it was — if nobody
    /// writes the outbox now, it is full, or the frame (`payload` bytes of payload) is large
    /// enough for a stream of its own (`large_frame`): a large body is told apart before it is
    /// encoded, so it never grows the outbox's buffer, and a frame whose headers make it large
    /// after all is taken back out. A failed encoding leaves the outbox as it was too.
    fn try_encode<E>(
        &mut self,
        payload: usize,
        large_frame: usize,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), E>,
    ) -> std::result::Result<Option<usize>, E> {
        if payload + FRAME_HEADROOM >= large_frame || !self.is_written_soon() || self.is_full() {
            return Ok(None);
        }
        let start = self.frames.len();
        if let Err(err) = encode(&mut self.frames) {
            self.frames.truncate(start);
            return Err(err);
        }
        let len = self.frames.len() - start;
        if len >= large_frame {
            self.frames.truncate(start);
            return Ok(None);
        }
        Ok(Some(len))
    }

    /// Puts a small `frame` in the outbox if someone will write it from there: the reader that
    /// corked the link, a burst's writer, or (when it starts a burst) its sender.
    fn hold(&mut self, frame: &[u8], batching: Batching) -> Held {
        let queued = self.is_written_soon();
        if !(queued || batching == Batching::Burst) || self.is_full() {
            return Held::No;
        }
        self.frames.extend_from_slice(frame);
        if queued {
            return Held::Yes;
        }
        self.flush_pending = true;
        Held::FirstOfBurst
    }
}

/// Whether a small frame may wait for others to leave with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Batching {
    /// It is part of a burst (a request while others wait for their answers): it waits.
    Burst,
    /// It waits only behind frames already waiting; alone, it is written at once.
    IfQueued,
}

/// Bytes of small frames a link holds before senders wait for their own writes.
const OUTBOX_LIMIT: usize = 256 * 1024;
/// What a frame usually adds to its payload (envelope, names, meta): a payload this much under
/// the large-frame size is encoded into the outbox without a look at its whole size first.
const FRAME_HEADROOM: usize = 1024;

/// Whether [`Link::hold`] kept a frame for a later write.
enum Held {
    /// No: its sender writes it now.
    No,
    /// Yes, behind frames someone will write.
    Yes,
    /// Yes, as the first of a burst: its sender writes the burst.
    FirstOfBurst,
}

impl Link {
    /// A QUIC link whose main stream is `main`.
    pub(super) fn quic(
        node_id: Arc<str>,
        outbound: bool,
        conn: quinn::Connection,
        main: quinn::SendStream,
        config: &MeshConfig,
        traffic: Arc<dyn TrafficMeter>,
    ) -> Self {
        let wire = Wire::Quic {
            conn,
            main: tokio::sync::Mutex::new(main),
            large_frames: tokio::sync::Semaphore::new(config.max_large_frames_in_flight.max(1)),
        };
        Self::new(node_id, outbound, LinkKind::Quic, wire, traffic)
    }

    /// A TCP link writing to `writer`; `closed` tells its reader (see [`MainReader::tcp`]) when
    /// the link closes.
    pub(super) fn tcp(
        node_id: Arc<str>,
        outbound: bool,
        writer: WriteHalf<TlsTcp>,
        closed: watch::Sender<CloseState>,
        traffic: Arc<dyn TrafficMeter>,
    ) -> Self {
        let wire = Wire::Tcp {
            writer: tokio::sync::Mutex::new(writer),
            closed,
        };
        Self::new(node_id, outbound, LinkKind::Tcp, wire, traffic)
    }

    fn new(
        node_id: Arc<str>,
        outbound: bool,
        kind: LinkKind,
        wire: Wire,
        traffic: Arc<dyn TrafficMeter>,
    ) -> Self {
        /// Link ids, unique in this process whatever the link's kind.
        static NEXT_ID: AtomicUsize = AtomicUsize::new(1);
        Self {
            node_id,
            outbound,
            kind,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            wire,
            waiting: Arc::default(),
            traffic,
            outbox: Default::default(),
        }
    }

    pub(super) fn id(&self) -> usize {
        self.id
    }

    pub(super) fn is_closed(&self) -> bool {
        match &self.wire {
            Wire::Quic { conn, .. } => conn.close_reason().is_some(),
            Wire::Tcp { closed, .. } => closed.borrow().is_some(),
        }
    }

    /// Closes the link now; its reader stops and the broker hears the link went down.
    pub(super) fn close(&self, code: u32, reason: &str) {
        match &self.wire {
            Wire::Quic { conn, .. } => conn.close(code.into(), reason.as_bytes()),
            Wire::Tcp { closed, .. } => {
                closed.send_if_modified(|state| {
                    let open = state.is_none();
                    if open {
                        tracing::trace!(peer = %self.node_id, code, reason, "closing TCP link");
                        *state = Some(reason.into());
                    }
                    open
                });
            }
        }
    }

    /// Ends our side and waits (bounded) until the peer has *handled* everything written so
    /// far, then closes. Data acknowledged by the peer's stack is not enough: a close makes the
    /// peer drop what its reader has not taken yet. So the peer closes the link itself once its
    /// reader reaches the end of what we sent (see `read_main`), and we wait for that.
    pub(super) async fn close_gracefully(&self, within: Duration) {
        let handled = async {
            // What callers queued before the stop leaves first.
            if self.write_held(None, within).await.is_err() {
                return;
            }
            match &self.wire {
                Wire::Quic { conn, main, .. } => {
                    if main.lock().await.finish().is_ok() {
                        conn.closed().await;
                    }
                }
                Wire::Tcp { writer, closed } => {
                    if writer.lock().await.shutdown().await.is_ok() {
                        let _ = closed.subscribe().wait_for(Option::is_some).await;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(within, handled).await;
        self.close(CLOSE_BYE, "node stopping");
    }

    /// Sends one frame. A small frame of a burst, or one sent while others wait in the outbox,
    /// joins the outbox (see [`Outbox`]) and is written with the others; any other is written
    /// now. On QUIC large frames go on a stream of their own, on TCP in order on the one
    /// session. A write that stalls past the timeout closes the link.
    pub(super) async fn send(
        self: &Arc<Self>,
        frame: Bytes,
        config: &MeshConfig,
        batching: Batching,
    ) -> Result<()> {
        let large = frame.len() >= config.large_frame;
        if !large {
            match self.hold(&frame, batching) {
                Held::No => {}
                Held::Yes => return Ok(()),
                // The first frame of a burst: this sender writes the burst, after one yield.
                Held::FirstOfBurst => return self.write_burst(config.write_timeout).await,
            }
        }
        match &self.wire {
            Wire::Quic { conn, .. } if large => {
                let write = async {
                    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                    stream
                        .write_all(&[STREAM_FRAME])
                        .await
                        .map_err(|e| e.to_string())?;
                    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
                    stream.finish().map_err(|e| e.to_string())?;
                    self.traffic.wrote(&self.node_id, self.kind);
                    Ok(())
                };
                self.bounded(write, config.large_frame_timeout).await
            }
            _ => {
                let within = if large {
                    config.large_frame_timeout
                } else {
                    config.write_timeout
                };
                self.write_held(Some(&frame), within).await
            }
        }
    }

    /// Encodes a small frame with `encode` straight into the outbox if someone will write it
    /// from there anyway (the reader that corked the link, or a burst's writer): one lock, and
    /// no buffer of the frame's own to copy from. See [`Outbox::try_encode`].
    pub(super) fn try_hold_encoded<E>(
        &self,
        payload: usize,
        encode: impl FnOnce(&mut BytesMut) -> std::result::Result<(), E>,
        config: &MeshConfig,
    ) -> std::result::Result<Option<usize>, E> {
        self.outbox
            .lock()
            .expect("outbox lock")
            .try_encode(payload, config.large_frame, encode)
    }

    /// Puts a small `frame` in the outbox if someone will write it from there (see
    /// [`Outbox::hold`]).
    fn hold(&self, frame: &[u8], batching: Batching) -> Held {
        self.outbox
            .lock()
            .expect("outbox lock")
            .hold(frame, batching)
    }

    /// Writes what the outbox holds once every task already runnable on this thread had its
    /// turn to add to it (one `yield_now`), from the sender that started the burst: no task to
    /// spawn (and no other worker woken to run it). A sender dropped while it yields hands the
    /// write to a task; a failed write closes the link.
    async fn write_burst(self: &Arc<Self>, within: Duration) -> Result<()> {
        /// Hands the burst to a flush task unless the sender got to write it.
        struct Pending<'a>(Option<&'a Arc<Link>>, Duration);
        impl Drop for Pending<'_> {
            fn drop(&mut self) {
                if let Some(link) = self.0.take() {
                    link.flush_soon(self.1);
                }
            }
        }
        let mut pending = Pending(Some(self), within);
        tokio::task::yield_now().await;
        pending.0 = None;
        self.write_outbox(within).await
    }

    /// Writes what the outbox holds from a task of its own (a burst whose sender was dropped
    /// before writing it).
    fn flush_soon(self: &Arc<Self>, within: Duration) {
        let link = self.clone();
        tokio::spawn(async move {
            let _ = link.write_outbox(within).await;
        });
    }

    /// Writes what the outbox holds; a failed write closes the link.
    async fn write_outbox(&self, within: Duration) -> Result<()> {
        let written = self.write_held(None, within).await;
        if let Err(err) = &written {
            tracing::debug!(peer = %self.node_id, %err, "closing link: write failed");
            self.close(CLOSE_STALLED, "write failed");
        }
        written
    }

    /// Writes every frame held in the outbox, then `frame` if given, on the main stream; lets
    /// sends through again if the reader had corked it.
    async fn write_held(&self, frame: Option<&[u8]>, within: Duration) -> Result<()> {
        let write = async {
            // The main stream is taken before the outbox is emptied: a frame sent meanwhile
            // waits behind this write and cannot overtake the frames taken here.
            let mut main = self.lock_main().await?;
            let held = {
                let mut outbox = self.outbox.lock().expect("outbox lock");
                outbox.corked = false;
                outbox.flush_pending = false;
                outbox.frames.split()
            };
            if !held.is_empty() {
                main.write(&held).await?;
                self.traffic.wrote(&self.node_id, self.kind);
            }
            if let Some(frame) = frame {
                main.write(frame).await?;
                self.traffic.wrote(&self.node_id, self.kind);
            }
            Ok(())
        };
        self.bounded(write, within).await
    }

    /// Takes the link's write order: while held, no other frame reaches the main stream.
    async fn lock_main(&self) -> std::result::Result<MainWriter<'_>, String> {
        match &self.wire {
            Wire::Quic { main, .. } => Ok(MainWriter::Quic(main.lock().await)),
            Wire::Tcp { writer, closed } => {
                if let Some(reason) = &*closed.borrow() {
                    return Err(format!("closed: {reason}"));
                }
                Ok(MainWriter::Tcp(writer.lock().await))
            }
        }
    }

    /// Holds back small frames until [`Link::flush`]: the reader corks before it delivers a batch.
    pub(super) fn cork(&self) {
        self.outbox.lock().expect("outbox lock").corked = true;
    }

    /// Lets sends through again without writing what was held: the reader is gone, the link is
    /// closing, and whoever sends next must learn it rather than fill a buffer nobody writes.
    pub(super) fn uncork_discarding(&self) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        outbox.corked = false;
        outbox.flush_pending = false;
        outbox.frames = BytesMut::new();
    }

    /// Writes every frame held since [`Link::cork`] in one write and lets sends through again.
    pub(super) async fn flush(&self, config: &MeshConfig) -> Result<()> {
        self.write_held(None, config.write_timeout).await
    }

    /// Runs a write under a timeout; a write that stalls past it closes the link.
    async fn bounded(
        &self,
        write: impl std::future::Future<Output = std::result::Result<(), String>>,
        within: Duration,
    ) -> Result<()> {
        // The timer is only registered if the write has to wait; nothing is allocated.
        match tokio::time::timeout(within, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::transport(format!(
                "{} link to '{}' failed: {err}",
                self.kind, self.node_id
            ))),
            Err(_) => {
                tracing::warn!(peer = %self.node_id, link = %self.kind, "closing link: peer stopped reading");
                self.close(CLOSE_STALLED, "peer stopped reading");
                Err(Error::transport(format!(
                    "{} link to '{}' stalled",
                    self.kind, self.node_id
                )))
            }
        }
    }
}

/// The main stream of a link, locked for one write.
enum MainWriter<'a> {
    Quic(tokio::sync::MutexGuard<'a, quinn::SendStream>),
    Tcp(tokio::sync::MutexGuard<'a, WriteHalf<TlsTcp>>),
}

impl MainWriter<'_> {
    async fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        match self {
            Self::Quic(main) => main.write_all(bytes).await.map_err(|e| e.to_string()),
            Self::Tcp(writer) => {
                writer.write_all(bytes).await.map_err(|e| e.to_string())?;
                // TLS may hold back what the socket did not take at once.
                writer.flush().await.map_err(|e| e.to_string())
            }
        }
    }
}

/// Where a link's reader takes bytes from.
pub(super) enum MainReader {
    /// The peer's QUIC main stream.
    Quic(quinn::RecvStream),
    /// The read half of the TLS session, and the link's close signal.
    Tcp(ReadHalf<TlsTcp>, watch::Receiver<CloseState>),
}

impl MainReader {
    /// The reader of a TCP session, and the signal that stops it (handed to [`Link::tcp`]).
    pub(super) fn tcp(read: ReadHalf<TlsTcp>) -> (Self, watch::Sender<CloseState>) {
        let (closed, watch) = watch::channel(None);
        (Self::Tcp(read, watch), closed)
    }

    /// Appends what arrived to `buf`: `Ok(true)` if something did, `Ok(false)` at the end of
    /// the peer's stream, an error if the link broke or was closed here.
    pub(super) async fn read_into(
        &mut self,
        buf: &mut BytesMut,
    ) -> std::result::Result<bool, String> {
        match self {
            Self::Quic(recv) => match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => {
                    buf.extend_from_slice(&chunk.bytes);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(err) => Err(err.to_string()),
            },
            Self::Tcp(half, closed) => {
                if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                    buf.reserve(READ_CHUNK);
                }
                tokio::select! {
                    read = half.read_buf(buf) => match read {
                        Ok(0) => Ok(false),
                        Ok(_) => Ok(true),
                        Err(err) => Err(err.to_string()),
                    },
                    _ = closed.wait_for(Option::is_some) => Err("closed".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGE: usize = 64 * 1024;

    /// An outbox the link's reader has corked, holding `held` already.
    fn corked_with(held: &[u8]) -> Outbox {
        let mut outbox = Outbox {
            corked: true,
            ..Outbox::default()
        };
        outbox.frames.extend_from_slice(held);
        outbox
    }

    fn write(bytes: &[u8]) -> impl FnOnce(&mut BytesMut) -> std::result::Result<(), ()> + '_ {
        move |buf| {
            buf.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn a_frame_is_encoded_into_the_outbox_only_when_someone_writes_it() {
        let mut idle = Outbox::default();
        let mut encoded = false;
        let held = idle.try_encode(5, LARGE, |_| {
            encoded = true;
            Ok::<(), ()>(())
        });
        assert_eq!(held, Ok(None));
        assert!(!encoded, "nothing is encoded for an outbox nobody writes");

        let mut corked = corked_with(b"one");
        assert_eq!(corked.try_encode(3, LARGE, write(b"two")), Ok(Some(3)));
        assert_eq!(&corked.frames[..], b"onetwo");
    }

    #[test]
    fn a_large_body_is_not_encoded_into_the_outbox() {
        let mut corked = corked_with(b"");
        let mut encoded = false;
        let held = corked.try_encode(LARGE - 10, LARGE, |_| {
            encoded = true;
            Ok::<(), ()>(())
        });
        assert_eq!(held, Ok(None));
        assert!(!encoded);
        assert_eq!(
            corked.frames.capacity(),
            0,
            "the outbox's buffer did not grow"
        );
    }

    #[test]
    fn a_frame_its_headers_make_large_is_taken_back_out() {
        let mut corked = corked_with(b"one");
        let large = vec![7u8; LARGE];
        assert_eq!(corked.try_encode(10, LARGE, write(&large)), Ok(None));
        assert_eq!(&corked.frames[..], b"one");
    }

    #[test]
    fn a_failed_encoding_leaves_the_outbox_as_it_was() {
        let mut corked = corked_with(b"one");
        let failed = corked.try_encode(3, LARGE, |buf| {
            buf.extend_from_slice(b"half");
            Err("broken")
        });
        assert_eq!(failed, Err("broken"));
        assert_eq!(&corked.frames[..], b"one");
    }

    #[test]
    fn a_full_outbox_takes_no_more_frames() {
        let mut full = corked_with(&vec![0u8; OUTBOX_LIMIT]);
        assert_eq!(full.try_encode(3, LARGE, write(b"two")), Ok(None));
        assert!(matches!(full.hold(b"two", Batching::Burst), Held::No));
        assert_eq!(full.frames.len(), OUTBOX_LIMIT);
    }

    #[test]
    fn a_burst_starts_in_an_idle_outbox_and_a_lone_frame_does_not() {
        let mut idle = Outbox::default();
        assert!(matches!(idle.hold(b"lone", Batching::IfQueued), Held::No));
        assert!(idle.frames.is_empty());
        assert!(matches!(
            idle.hold(b"first", Batching::Burst),
            Held::FirstOfBurst
        ));
        assert!(idle.flush_pending);
        assert!(matches!(idle.hold(b"next", Batching::IfQueued), Held::Yes));
        assert_eq!(&idle.frames[..], b"firstnext");
    }
}
