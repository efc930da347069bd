//! The shared-memory fast path between nodes on the same host (see [`ShmTransport`]).
//!
//! - `mod.rs`: the builder and the [`Transporter`] implementation;
//! - `socket`: the Unix socket each node listens on, and the addresses peers announce;
//! - `handshake`: negotiating a link over that socket (credentials, token, challenge);
//! - `ring`: the segment and its two single-producer rings — the crate's only `unsafe`;
//! - `link`: one negotiated link: writing, its lifeline and its reader thread;
//! - `reader`: the reader thread's loop (spin, yield, then futex);
//! - `active_wait`: a lone caller reading its own link instead of waiting for a wake-up.

mod active_wait;
mod handshake;
mod link;
mod reader;
mod ring;
mod socket;
#[cfg(test)]
mod tests;

use super::{
    Direction, LinkKind, LinkTable, PeerSource, PendingReply, TransportContext, Transporter,
    TrySend,
};
use crate::error::{Error, Result};
use crate::protocol::packet::Packet;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use link::Link;
use socket::PeerAddress;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::task::JoinHandle;

/// Default ring size per direction.
const DEFAULT_RING: usize = 4 << 20;
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
        self.ring_capacity = bytes
            .max(64 << 10)
            .next_power_of_two()
            .min(ring::MAX_CAPACITY);
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
/// use phalanx::transport::{MeshTransport, ShmTransport};
///
/// let broker = phalanx::Broker::builder()
///     .transport(MeshTransport::builder().build())
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
    links: LinkTable<Link>,
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
        self.state
            .get()
            .map_or_else(Vec::new, |s| s.links.node_ids())
    }

    fn running(&self) -> Result<&Running> {
        self.state
            .get()
            .ok_or_else(|| Error::transport("shared-memory transport not started"))
    }
}

impl Transporter for ShmTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Shm
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            // Without a usable socket the node still works, over its other links.
            let dir = self.config.dir.clone().unwrap_or_else(socket::default_dir);
            let (path, listener) = match socket::listen(&dir, &ctx.node_id) {
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
                links: LinkTable::default(),
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
            let link = self.link(node_id)?;
            self.send_on(&link, packet).await
        }
        .boxed()
    }

    fn try_send(&self, node_id: &str, packet: &Packet) -> Result<TrySend<()>> {
        let link = self.link(node_id)?;
        self.try_send_on(&link, packet).map(TrySend::sent_if)
    }

    fn try_request(
        &self,
        node_id: &str,
        packet: &Packet,
        mut reply: PendingReply,
    ) -> Result<TrySend<PendingReply>> {
        let link = self.link(node_id)?;
        // A call alone in flight reads its answer on this thread: that is `request`'s work.
        if link.waiting.load(Ordering::Acquire) == 0 {
            return Ok(TrySend::WouldWait(reply));
        }
        reply.count_in(&link.waiting);
        if !self.try_send_on(&link, packet)? {
            return Ok(TrySend::WouldWait(reply));
        }
        // As `request` does: answers already here wake their tasks on this thread.
        self.read_while_waiting(&link, &mut || true);
        Ok(TrySend::Sent(reply))
    }

    fn request<'a>(
        &'a self,
        node_id: &'a str,
        packet: &'a Packet,
        mut reply: PendingReply,
    ) -> BoxFuture<'a, Result<PendingReply>> {
        async move {
            let link = self.link(node_id)?;
            let alone = reply.count_in(&link.waiting) == 1;
            self.send_on(&link, packet).await?;
            // Read the link here once: answers already there (for other calls too) wake their
            // tasks on this thread. A call alone in flight keeps reading for a while.
            self.read_while_waiting(&link, &mut || reply.is_ready() || !alone);
            Ok(reply)
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
            let links = running.links.all();
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

    fn addresses(&self) -> Vec<String> {
        self.state
            .get()
            .map_or_else(Vec::new, |s| vec![s.address.clone()])
    }

    fn learn_peer(&self, node_id: &str, addresses: &[String], source: PeerSource) {
        // A socket is only dialed on the node's own word: hearsay could name anyone's socket.
        let Some(running) = self.state.get().filter(|_| source == PeerSource::Itself) else {
            return;
        };
        let Some(peer) = addresses.iter().find_map(|a| PeerAddress::parse(a)) else {
            return;
        };
        // Same host only; the smaller node id dials, so a pair negotiates once.
        if peer.host_id != running.host_id
            || *running.ctx.node_id >= *node_id
            || running.stopped.load(Ordering::Acquire)
            || running.links.contains(node_id)
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
            let link = running.links.remove(node_id);
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
            let links = running.links.drain();
            for link in links {
                link.close();
            }
            let _ = std::fs::remove_file(&running.path);
        }
        .boxed()
    }
}

impl ShmTransport {
    /// The open link to `node_id`.
    fn link(&self, node_id: &str) -> Result<Arc<Link>> {
        self.running()?
            .links
            .get(node_id)
            .ok_or_else(|| Error::transport(format!("no shared-memory link to '{node_id}'")))
    }

    /// Encodes `packet` and writes it to `link`.
    async fn send_on(&self, link: &Link, packet: &Packet) -> Result<()> {
        let running = self.running()?;
        let frame = running.ctx.codec.encode(packet)?;
        running
            .ctx
            .traffic
            .record(&link.node_id, LinkKind::Shm, Direction::Sent, frame.len());
        self.write(link, frame).await
    }

    /// Encodes `packet` and writes it to `link` if it fits now; whether it did.
    fn try_send_on(&self, link: &Link, packet: &Packet) -> Result<bool> {
        let running = self.running()?;
        let frame = running.ctx.codec.encode(packet)?;
        let sent = self.try_write(link, &frame)?;
        if sent {
            running
                .ctx
                .traffic
                .record(&link.node_id, LinkKind::Shm, Direction::Sent, frame.len());
        }
        Ok(sent)
    }

    /// Forgets the link to `node_id` and tells the broker.
    fn lost(&self, node_id: &str, reason: &str) {
        let Some(running) = self.state.get() else {
            return;
        };
        let link = running.links.remove(node_id);
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
}
