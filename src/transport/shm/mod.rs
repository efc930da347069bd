//! The shared-memory fast path between nodes on the same host (see [`ShmTransport`]).

mod handshake;
mod ring;

use super::{Direction, LinkKind, TransportContext, Transporter};
use crate::codec::FrameDecoder;
use crate::error::{Error, Result};
use crate::packet::Packet;
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use ring::Ring;
use rustc_hash::FxHashMap as HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

/// Default ring size per direction.
const DEFAULT_RING: usize = 4 << 20;
/// Longest wait for ring space before the link is declared stalled.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest sleep of an idle reader before it looks again (a safety net, not a poll).
const PARK: Duration = Duration::from_millis(100);
/// Spin iterations of an idle reader before it yields, adapted within these bounds.
const SPIN_MIN: u32 = 16;
const SPIN_MAX: u32 = 4096;
/// Yields of an idle reader after spinning, before it parks.
const YIELDS: u32 = 64;
/// Why a link closes when a thread panicked while reading it (its frame state is unknown).
const INBOX_POISONED: &str = "a thread panicked while reading the link";
/// Longest a lone caller reads its link itself before it sleeps like any other.
const ACTIVE_WAIT: Duration = Duration::from_micros(50);
/// How long the reader thread naps while callers read the link themselves; they wake it when
/// they leave frames behind, so this bounds only a frame that arrives just as they leave.
const DRIVEN_NAP: Duration = Duration::from_micros(200);
/// Spins between two looks of an active waiter before it yields once (another process may
/// need this CPU to answer).
const ACTIVE_SPINS: u32 = 64;

/// Builds a [`ShmTransport`].
#[derive(Debug, Clone)]
pub struct ShmTransportBuilder {
    dir: Option<PathBuf>,
    ring_capacity: usize,
}

impl ShmTransportBuilder {
    /// Where the Unix sockets live. Default: `$XDG_RUNTIME_DIR/phalanx`, else
    /// `/tmp/phalanx-<uid>`. Nodes only find each other's sockets through their INFO, so nodes
    /// with different directories still link.
    ///
    /// ```
    /// let shm = phalanx::transport::ShmTransport::builder().dir("/run/my-app/phalanx").build();
    /// # let _ = shm;
    /// ```
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Bytes per ring (rounded up to a power of two, at least 64 KiB). Default: 4 MiB.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.max(64 << 10).next_power_of_two();
        self
    }

    /// The transport, ready to be given to a broker.
    pub fn build(self) -> ShmTransport {
        ShmTransport {
            config: Arc::new(self),
            state: Arc::default(),
        }
    }
}

/// The shared-memory fast path between nodes on the same host.
///
/// Every node with this transport listens on a Unix socket in the user's runtime directory and
/// announces it in its INFO as `shm:<host id>:<token>:<socket path>`. INFO only travels over
/// authenticated links, so knowing a node's token proves cluster membership. When a node learns
/// of a peer with the same host identity (machine, boot and network namespace), the one with
/// the smaller node id dials the socket and they negotiate:
///
/// 1. both check the peer's credentials on the socket (same user id);
/// 2. the dialer creates a segment (a `memfd`, so nothing is ever left in `/dev/shm`) holding two
///    rings, writes a random challenge into it and sends it, with the token and the segment's
///    file descriptor, over the socket;
/// 3. the acceptor checks the token, maps the segment, finds the same challenge in it and writes
///    its answer into the segment; the dialer checks the answer and confirms.
///
/// Any failure leaves the pair on its other links (logged at debug). Then frames flow through
/// the rings exactly as through any other transport, and the broker prefers this link (link
/// kind `shm`). The socket stays open as the link's lifeline: when the peer dies, even by
/// `kill -9`, the socket reports it at once, the link closes, and calls in flight to that node
/// fail immediately with a retryable error. A corrupted ring closes the link with a logged
/// reason.
///
/// Each direction has a reader thread that spins briefly (adaptively: long spins collapse when
/// both processes share one CPU), yields, then sleeps on a futex; an idle link costs no CPU.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> phalanx::Result<()> {
/// use phalanx::transport::{QuicTransport, ShmTransport};
///
/// let broker = phalanx::Broker::builder()
///     .transport(QuicTransport::builder().build())
///     .transport(ShmTransport::builder().build())   // same-host peers switch to shared memory
///     .start()
///     .await?;
/// # broker.stop().await;
/// # Ok(()) }
/// ```
///
/// Clones share one state.
#[derive(Debug, Clone)]
pub struct ShmTransport {
    config: Arc<ShmTransportBuilder>,
    state: Arc<OnceLock<Running>>,
}

/// A started transport.
struct Running {
    ctx: TransportContext,
    host_id: String,
    token: String,
    path: PathBuf,
    address: String,
    links: Mutex<HashMap<Arc<str>, Arc<Link>>>,
    dialing: Mutex<Vec<Arc<str>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One negotiated link.
struct Link {
    node_id: Arc<str>,
    outgoing: Ring,
    writer: tokio::sync::Mutex<()>,
    /// The ring the peer writes, for looking (whoever holds `inbox` reads it).
    incoming: Ring,
    /// Reading the incoming ring: the reader thread, or a caller waiting actively.
    inbox: Mutex<Inbox>,
    /// Callers waiting actively on this link; while any does, the reader thread stays asleep.
    drivers: AtomicUsize,
    /// The reader thread, woken when the last active waiter leaves.
    reader: OnceLock<std::thread::Thread>,
    closed: Arc<AtomicBool>,
    lifeline: Mutex<Option<JoinHandle<()>>>,
}

/// The read side of a link: the ring and the frames cut from it so far.
struct Inbox {
    ring: Ring,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl ShmTransport {
    /// A builder with the defaults.
    ///
    /// ```
    /// let shm = phalanx::transport::ShmTransport::builder().ring_capacity(1 << 20).build();
    /// # let _ = shm;
    /// ```
    pub fn builder() -> ShmTransportBuilder {
        ShmTransportBuilder {
            dir: None,
            ring_capacity: DEFAULT_RING,
        }
    }

    /// Nodes with an open shared-memory link.
    pub fn linked_nodes(&self) -> Vec<String> {
        self.state.get().map_or_else(Vec::new, |s| {
            s.links
                .lock()
                .expect("links lock")
                .keys()
                .map(|k| k.to_string())
                .collect()
        })
    }

    fn running(&self) -> Result<&Running> {
        self.state
            .get()
            .ok_or_else(|| Error::transport("shared-memory transport not started"))
    }
}

fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("phalanx"),
        _ => std::env::temp_dir().join(format!("phalanx-{}", rustix::process::getuid().as_raw())),
    }
}

/// A file-name-safe form of `s`.
fn token(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect()
}

/// Removes sockets of processes that no longer exist (`…-<pid>.sock`).
fn remove_stale_sockets(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_suffix(".sock")
            .and_then(|n| n.rsplit('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Transporter for ShmTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Shm
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            // Without a usable socket the node still works, over its other links.
            let (path, listener) = match self.listen(&ctx) {
                Ok(listening) => listening,
                Err(err) => {
                    tracing::warn!(%err, "shared memory disabled");
                    return Ok(());
                }
            };
            let host_id = ctx.host_id.to_string();
            let secret = format!("{:032x}", rand::random::<u128>());
            let running = Running {
                address: format!("shm:{host_id}:{secret}:{}", path.display()),
                host_id,
                token: secret,
                path,
                ctx,
                links: Mutex::default(),
                dialing: Mutex::default(),
                tasks: Mutex::default(),
                stopped: AtomicBool::new(false),
            };
            self.state
                .set(running)
                .map_err(|_| Error::transport("shared-memory transport started twice"))?;
            let this = self.clone();
            let accept = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    let this = this.clone();
                    tokio::spawn(async move { this.accept(stream).await });
                }
            });
            self.running()?
                .tasks
                .lock()
                .expect("tasks lock")
                .push(accept);
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let running = self.running()?;
            let link = running
                .links
                .lock()
                .expect("links lock")
                .get(node_id)
                .cloned()
                .ok_or_else(|| Error::transport(format!("no shared-memory link to '{node_id}'")))?;
            let frame = running.ctx.codec.encode(packet)?;
            running
                .ctx
                .traffic
                .record(node_id, LinkKind::Shm, Direction::Sent, frame.len());
            self.write(&link, frame).await
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            // Before start there is nobody to tell.
            let Some(running) = self.state.get() else {
                return Ok(());
            };
            let frame = running.ctx.codec.encode(packet)?;
            let links: Vec<Arc<Link>> = running
                .links
                .lock()
                .expect("links lock")
                .values()
                .cloned()
                .collect();
            for link in links {
                running.ctx.traffic.record(
                    &link.node_id,
                    LinkKind::Shm,
                    Direction::Sent,
                    frame.len(),
                );
                // One stalled peer is that link's problem, not the broadcast's.
                let _ = self.write(&link, frame.clone()).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn wait_actively(&self, node_id: &str, done: &mut dyn FnMut() -> bool) -> bool {
        let Some(running) = self.state.get() else {
            return false;
        };
        let Some(link) = running
            .links
            .lock()
            .expect("links lock")
            .get(node_id)
            .cloned()
        else {
            return false;
        };
        let look = || match link.inbox.try_lock() {
            Ok(mut inbox) => read_frames(running, &link, &mut inbox).map(drop),
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

    fn addresses(&self) -> Vec<String> {
        self.state
            .get()
            .map_or_else(Vec::new, |s| vec![s.address.clone()])
    }

    fn learn_peer(&self, node_id: &str, addresses: &[String]) {
        let Some(running) = self.state.get() else {
            return;
        };
        let Some(peer) = addresses.iter().find_map(|a| PeerAddress::parse(a)) else {
            return;
        };
        // Same host only; the smaller node id dials, so a pair negotiates once.
        if peer.host_id != running.host_id
            || *running.ctx.node_id >= *node_id
            || running.stopped.load(Ordering::Acquire)
            || running
                .links
                .lock()
                .expect("links lock")
                .contains_key(node_id)
        {
            return;
        }
        {
            let mut dialing = running.dialing.lock().expect("dialing lock");
            if dialing.iter().any(|n| &**n == node_id) {
                return;
            }
            dialing.push(node_id.into());
        }
        let this = self.clone();
        let node_id: Arc<str> = node_id.into();
        tokio::spawn(async move {
            this.dial(node_id.clone(), peer).await;
            if let Some(running) = this.state.get() {
                running
                    .dialing
                    .lock()
                    .expect("dialing lock")
                    .retain(|n| *n != node_id);
            }
        });
    }

    fn drop_peer(&self, node_id: &str) {
        if let Some(running) = self.state.get() {
            let link = running.links.lock().expect("links lock").remove(node_id);
            if let Some(link) = link {
                link.close();
            }
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(running) = self.state.get() else {
                return;
            };
            running.stopped.store(true, Ordering::Release);
            for task in std::mem::take(&mut *running.tasks.lock().expect("tasks lock")) {
                task.abort();
            }
            let links: Vec<Arc<Link>> = running
                .links
                .lock()
                .expect("links lock")
                .drain()
                .map(|(_, l)| l)
                .collect();
            for link in links {
                link.close();
            }
            let _ = std::fs::remove_file(&running.path);
        }
        .boxed()
    }
}

/// A peer's announced shared-memory address.
#[derive(Debug, Clone)]
struct PeerAddress {
    host_id: String,
    token: String,
    path: PathBuf,
}

impl PeerAddress {
    /// `shm:<host id>:<token>:<path>`; the host id may itself contain `:`.
    fn parse(address: &str) -> Option<Self> {
        let rest = address.strip_prefix("shm:")?;
        let (head, path) = rest.split_once(":/")?;
        let (host_id, token) = head.rsplit_once(':')?;
        Some(Self {
            host_id: host_id.to_owned(),
            token: token.to_owned(),
            path: PathBuf::from(format!("/{path}")),
        })
    }
}

impl Link {
    /// Closes the link (idempotent): the reader thread exits, the socket closes, and the peer
    /// sees it at once.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(task) = self.lifeline.lock().expect("lifeline lock").take() {
            task.abort();
        }
    }
}

impl ShmTransport {
    /// Binds this node's socket in the runtime directory.
    fn listen(&self, ctx: &TransportContext) -> Result<(PathBuf, tokio::net::UnixListener)> {
        let dir = self.config.dir.clone().unwrap_or_else(default_dir);
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| Error::transport(format!("cannot use {}: {e}", dir.display())))?;
        remove_stale_sockets(&dir);
        let path = dir.join(format!(
            "{}-{:08x}-{}.sock",
            token(&ctx.node_id),
            rand::random::<u32>(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| Error::transport(format!("cannot listen on {}: {e}", path.display())))?;
        Ok((path, listener))
    }

    /// Copies `frame` into the link's outgoing ring, waiting for space if the peer is behind.
    async fn write(&self, link: &Link, frame: Bytes) -> Result<()> {
        let _turn = link.writer.lock().await;
        let mut sent = 0;
        let mut backoff = Duration::from_micros(20);
        let started = tokio::time::Instant::now();
        while sent < frame.len() {
            if link.closed.load(Ordering::Acquire) {
                return Err(Error::transport(format!(
                    "shared-memory link to '{}' closed",
                    link.node_id
                )));
            }
            match link.outgoing.push(&frame[sent..]) {
                Ok(0) => {
                    if started.elapsed() > WRITE_TIMEOUT {
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
                    return Err(Error::transport(format!(
                        "shared-memory link broken: {err}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Forgets the link to `node_id` and tells the broker.
    fn lost(&self, node_id: &str, reason: &str) {
        let Some(running) = self.state.get() else {
            return;
        };
        let link = running.links.lock().expect("links lock").remove(node_id);
        if let Some(link) = link {
            tracing::info!(peer = %node_id, reason, "shared-memory link closed");
            link.close();
            if !running.stopped.load(Ordering::Acquire) {
                running.ctx.handler.on_link_down(node_id, LinkKind::Shm);
            }
        }
    }

    async fn dial(&self, node_id: Arc<str>, peer: PeerAddress) {
        let Ok(running) = self.running() else { return };
        let offer = handshake::Offer {
            node_id: running.ctx.node_id.to_string(),
            namespace: running.ctx.namespace.to_string(),
            token: peer.token.clone(),
            challenge: rand::random(),
        };
        let capacity = self.config.ring_capacity;
        let path = peer.path.clone();
        let expected = node_id.to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            handshake::dial(&path, &offer, capacity, &expected)
        })
        .await;
        match outcome {
            Ok(Ok((stream, segment))) => {
                // Ring 0 carries dialer → acceptor.
                self.link_up(node_id, stream, segment, 0);
            }
            Ok(Err(err)) => {
                tracing::debug!(peer = %node_id, %err, "no shared-memory link; staying on the network")
            }
            Err(err) => tracing::debug!(peer = %node_id, %err, "shared-memory dial task failed"),
        }
    }

    async fn accept(&self, stream: tokio::net::UnixStream) {
        let Ok(running) = self.running() else { return };
        let Ok(stream) = stream.into_std() else {
            return;
        };
        let expect = handshake::Expect {
            namespace: running.ctx.namespace.to_string(),
            token: running.token.clone(),
            node_id: running.ctx.node_id.to_string(),
        };
        let outcome = tokio::task::spawn_blocking(move || handshake::accept(stream, &expect)).await;
        match outcome {
            Ok(Ok((stream, segment, peer))) => self.link_up(peer.into(), stream, segment, 1),
            Ok(Err(err)) => tracing::debug!(%err, "refused a shared-memory link"),
            Err(err) => tracing::debug!(%err, "shared-memory accept task failed"),
        }
    }

    /// Starts a negotiated link: `outgoing` is the ring this side writes.
    fn link_up(
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
            drivers: AtomicUsize::new(0),
            reader: OnceLock::new(),
            closed: Arc::new(AtomicBool::new(false)),
            lifeline: Mutex::new(None),
        });
        {
            let mut links = running.links.lock().expect("links lock");
            if running.stopped.load(Ordering::Acquire) || links.contains_key(&node_id) {
                return;
            }
            links.insert(node_id.clone(), link.clone());
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

    /// Reads frames until the link closes; `Err` says why it broke.
    ///
    /// Spins briefly (adaptively), yields, then sleeps on the ring's futex; sleeps on its thread
    /// handle instead while a caller reads the link itself ([`Transporter::wait_actively`]).
    fn read_loop(&self, link: &Link) -> std::result::Result<(), String> {
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
            for _ in 0..spin {
                std::hint::spin_loop();
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
fn read_frames(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::packet::{PacketBody, Ping};
    use crate::transport::TransportHandler;

    /// A ping id that makes the recording handler panic.
    const PANIC_ON_PING: u64 = u64::MAX;

    /// Records what a transport reports.
    #[derive(Default)]
    struct Recorder {
        events: Mutex<Vec<String>>,
        /// Ping ids, and whether the link's reader thread delivered each.
        pings: Mutex<Vec<(u64, bool)>>,
    }

    impl TransportHandler for Recorder {
        fn on_packet(&self, packet: Packet, link: LinkKind) {
            if let PacketBody::Ping(ping) = &packet.body {
                assert_ne!(ping.id, PANIC_ON_PING, "the handler panics on this ping");
                let by_reader = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("phalanx-shm"));
                self.pings.lock().unwrap().push((ping.id, by_reader));
            }
            let what = format!("packet {} {:?} {link}", packet.sender, packet.kind());
            self.events.lock().unwrap().push(what);
        }
        fn on_link_up(&self, node_id: &str, link: LinkKind) {
            self.events
                .lock()
                .unwrap()
                .push(format!("up {node_id} {link}"));
        }
        fn on_link_down(&self, node_id: &str, link: LinkKind) {
            self.events
                .lock()
                .unwrap()
                .push(format!("down {node_id} {link}"));
        }
        fn on_bus(&self, _: LinkKind, _: bool) {}
        fn hello(&self) -> Packet {
            Packet::new("unused", PacketBody::Ping(Ping { id: 0, time_us: 0 }))
        }
    }

    impl Recorder {
        async fn wait_for(&self, event: &str) {
            let seen = tokio::time::timeout(Duration::from_secs(5), async {
                while !self.events.lock().unwrap().iter().any(|e| e == event) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                seen.is_ok(),
                "no '{event}' in {:?}",
                self.events.lock().unwrap()
            );
        }
    }

    async fn node(id: &str, dir: &std::path::Path) -> (ShmTransport, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let transport = ShmTransport::builder()
            .dir(dir)
            .ring_capacity(64 << 10)
            .build();
        transport
            .start(TransportContext {
                node_id: id.into(),
                namespace: "t".into(),
                host_id: "test-host".into(),
                codec: Codec::new(1 << 20),
                handler: recorder.clone(),
                traffic: Arc::new(()),
            })
            .await
            .unwrap();
        (transport, recorder)
    }

    /// A fresh socket directory for one test.
    fn test_dir() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("phalanx-shm-test-{:x}", rand::random::<u32>()))
    }

    /// Nodes "a" and "b" in `dir`, once both see their shared-memory link up.
    async fn linked_pair(
        dir: &std::path::Path,
    ) -> ((ShmTransport, Arc<Recorder>), (ShmTransport, Arc<Recorder>)) {
        let (a, a_seen) = node("a", dir).await;
        let (b, b_seen) = node("b", dir).await;
        a.learn_peer("b", &b.addresses());
        a_seen.wait_for("up b shm").await;
        b_seen.wait_for("up a shm").await;
        ((a, a_seen), (b, b_seen))
    }

    #[tokio::test]
    async fn an_unusable_directory_disables_shared_memory_without_failing() {
        let (transport, _) = node("a", std::path::Path::new("/proc/no-such-dir")).await;
        assert!(transport.addresses().is_empty());
        let ping = Packet::new("a", PacketBody::Ping(Ping { id: 1, time_us: 2 }));
        assert!(transport.send("b", &ping).await.is_err());
        transport.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupted_ring_closes_the_link_on_both_sides() {
        let dir = test_dir();
        let (a, a_seen) = node("a", &dir).await;
        let (b, b_seen) = node("b", &dir).await;
        // A wrong token is refused: the pair stays apart.
        let forged = b.addresses()[0].replace(&b.state.get().unwrap().token, "forged");
        a.learn_peer("b", &[forged]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(a.linked_nodes().is_empty());

        a.learn_peer("b", &b.addresses());
        a_seen.wait_for("up b shm").await;
        b_seen.wait_for("up a shm").await;
        // A frame three times the ring's size streams through it.
        let big = crate::packet::Event {
            event: "big".into(),
            data: Bytes::from(vec![7u8; 200_000]),
            ..Default::default()
        };
        a.send("b", &Packet::new("a", PacketBody::Event(big)))
            .await
            .unwrap();
        b_seen.wait_for("packet a Event shm").await;
        let ping = Packet::new("a", PacketBody::Ping(Ping { id: 1, time_us: 2 }));
        a.send("b", &ping).await.unwrap();
        b_seen.wait_for("packet a Ping shm").await;

        let link = a.state.get().unwrap().links.lock().unwrap()["b"].clone();
        link.outgoing.corrupt();
        b_seen.wait_for("down a shm").await;
        a_seen.wait_for("down b shm").await;
        assert!(a.send("b", &ping).await.is_err());
        a.stop().await;
        b.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Callers reading the link themselves and the reader thread take turns without losing,
    /// duplicating or reordering a frame.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn active_waiters_and_the_reader_thread_share_the_link() {
        const FRAMES: u64 = 20_000;
        let dir = test_dir();
        let ((a, _), (b, b_seen)) = linked_pair(&dir).await;

        // The waiter is running before the first frame leaves.
        let (waiting, waiter_started) = tokio::sync::oneshot::channel();
        let (waiter, seen) = (b.clone(), b_seen.clone());
        let active = tokio::task::spawn_blocking(move || {
            let count = || seen.pings.lock().unwrap().len() as u64;
            let give_up = std::time::Instant::now() + Duration::from_secs(20);
            let _ = waiting.send(());
            while count() < FRAMES && std::time::Instant::now() < give_up {
                waiter.wait_actively("a", &mut || count() == FRAMES);
                std::thread::sleep(Duration::from_micros(30));
            }
        });
        waiter_started.await.unwrap();
        let sender = tokio::spawn(async move {
            for id in 0..FRAMES {
                let ping = Packet::new("a", PacketBody::Ping(Ping { id, time_us: 0 }));
                a.send("b", &ping).await.unwrap();
                if id % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            a
        });
        active.await.unwrap();
        let a = sender.await.unwrap();
        let pings = b_seen.pings.lock().unwrap().clone();
        assert!(
            pings.iter().map(|(id, _)| *id).eq(0..FRAMES),
            "in order, once each: {} frames",
            pings.len()
        );
        let by_reader = pings.iter().filter(|(_, by_reader)| *by_reader).count();
        assert!(
            by_reader > 0 && by_reader < pings.len(),
            "both the reader thread ({by_reader}) and the waiter read frames"
        );
        assert_eq!(b.linked_nodes(), ["a"]);
        a.stop().await;
        b.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A panic while a frame is handled closes the link (both sides see it) instead of leaving
    /// the link without a reader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_reading_closes_the_link() {
        let dir = test_dir();
        let ((a, a_seen), (b, b_seen)) = linked_pair(&dir).await;
        let fatal = Ping {
            id: PANIC_ON_PING,
            time_us: 0,
        };
        a.send("b", &Packet::new("a", PacketBody::Ping(fatal)))
            .await
            .unwrap();
        b_seen.wait_for("down a shm").await;
        a_seen.wait_for("down b shm").await;
        assert!(b.linked_nodes().is_empty());
        a.stop().await;
        b.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_parse_with_colons_in_the_host_id() {
        let a =
            PeerAddress::parse("shm:abc:def:net:[4026531840]:0123abcd:/run/user/0/phalanx/n1.sock")
                .unwrap();
        assert_eq!(a.host_id, "abc:def:net:[4026531840]");
        assert_eq!(a.token, "0123abcd");
        assert_eq!(a.path, PathBuf::from("/run/user/0/phalanx/n1.sock"));
        assert!(PeerAddress::parse("127.0.0.1:7000").is_none());
    }
}
