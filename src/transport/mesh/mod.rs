//! The peer mesh: one mutually authenticated link per pair of nodes, over QUIC (quinn + rustls)
//! or, where UDP does not pass, over TCP with TLS 1.3 (tokio-rustls).
//!
//! # Links
//! Each side of a link writes frames straight from the calling task — no writer task in
//! between (a cross-thread hop costs ~20 µs on small VMs, more than the rest of a call). On QUIC
//! each side opens one long-lived unidirectional *main* stream, and frames larger than
//! [`MeshConfig::large_frame`] get a unidirectional stream of their own, so a big body never
//! holds up small calls behind it. On TCP every frame travels in order on the one TLS session.
//! The first frame either way is the sender's `INFO`; the node id it names must be the one its
//! certificate names.
//!
//! # QUIC first, TCP when UDP does not pass
//! With [`MeshLinks::Both`] (the default) a node listens for QUIC (UDP) and TCP on the same port
//! number, so one address — in seeds, mDNS and gossip — reaches both. A dial tries QUIC first
//! and falls back to TCP, per peer, when no candidate address answers QUIC within
//! [`MeshConfig::connect_timeout`]. A QUIC link that comes up while a TCP link to the same peer
//! exists replaces it (the TCP link is let go once what was sent on it has arrived). mDNS itself
//! travels over UDP: where UDP is dropped, nodes find each other through seeds.
//!
//! # One link per pair
//! When two nodes dial each other at once, both links complete. QUIC beats TCP; between two
//! links of one kind, the one dialed by the node with the smaller id survives and the other is
//! closed (QUIC reason `duplicate`). Both sides apply the same rule, so exactly one remains.
//!
//! # Discovery
//! Seeds (`host:port`) are dialed until they answer, then again whenever their link drops, with
//! exponential back-off and jitter. Peers learned from gossip (the `peers` list in `INFO`) are
//! dialed by the node with the smaller id; the other side dials only if no link appears within a
//! couple of seconds. Candidate addresses are dialed in parallel with a short timeout.
//!
//! # Hostile input
//! A frame that fails to decode, exceeds the size limit, or claims another sender closes the link
//! with a logged reason; other links are unaffected. A peer that stops reading makes writes stall:
//! after [`MeshConfig::write_timeout`] its link is closed. QUIC flow control bounds the bytes
//! buffered per peer and the number of extra streams a peer may open is capped; on TCP the
//! frame decoder never holds more than one frame (at most the frame limit), and at most 64
//! connections may sit between accept and hello at once, each for at most 5 s.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, identity::ClusterCa, transport::MeshTransport};
//!
//! let mesh = MeshTransport::builder()
//!     .listen("0.0.0.0:4000".parse().unwrap())
//!     .seed("10.0.0.2:4000")
//!     .cluster_ca(ClusterCa::secret("9f1c2b7e0d4a8c3f6e5b1a2d7c9e0f4b"))
//!     .build();
//! let broker = Broker::builder().transport(mesh).start().await?;
//! # Ok(()) }
//! ```

mod dial;
mod link;
mod quic;
mod session;
mod tcp;

use super::{
    Direction, LinkKind, LinkTable, PeerSource, PendingReply, TransportContext, Transporter,
    TrySend,
};
use crate::discovery::DialPlan;
use crate::discovery::address_record;
use crate::discovery::mdns::{Announcement, Mdns, OnFound};
use crate::error::{Error, ErrorKind, Result};
use crate::identity::{ClusterCa, Credentials};
use crate::limits::Limit;
use crate::protocol::packet::{Packet, PeerInfo};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use link::{Batching, Link};
use quic::QuicSide;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tcp::TcpSide;
use tokio::task::JoinHandle;

/// Which kinds of link a mesh node listens for and dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MeshLinks {
    /// QUIC only (UDP).
    Quic,
    /// TCP with TLS 1.3 only, for networks that drop UDP.
    Tcp,
    /// Both on the same port number: QUIC preferred, TCP when QUIC does not answer.
    #[default]
    Both,
}

impl MeshLinks {
    fn quic(self) -> bool {
        matches!(self, Self::Quic | Self::Both)
    }

    fn tcp(self) -> bool {
        matches!(self, Self::Tcp | Self::Both)
    }
}

impl std::str::FromStr for MeshLinks {
    type Err = Error;

    /// `quic`, `tcp` or `both`.
    ///
    /// ```
    /// use phalanx::transport::MeshLinks;
    /// assert_eq!("tcp".parse::<MeshLinks>().unwrap(), MeshLinks::Tcp);
    /// assert!("udp".parse::<MeshLinks>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            "both" => Ok(Self::Both),
            other => Err(Error::validation(format!(
                "unknown mesh transport '{other}': expected quic, tcp or both"
            ))),
        }
    }
}

/// Settings of a [`MeshTransport`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Address to listen on. Default `0.0.0.0:0` (any interface, a free port).
    pub listen: SocketAddr,
    /// Which kinds of link to listen for and dial. Default [`MeshLinks::Both`].
    pub links: MeshLinks,
    /// Seeds to dial, as `host:port`.
    pub seeds: Vec<String>,
    /// How membership is proven. `None`: [`ClusterCa::local`] at start.
    pub cluster_ca: Option<ClusterCa>,
    /// Give up a dial after this long (per kind of link: a QUIC dial that gets no answer
    /// within it falls back to TCP). Default 2 s.
    pub connect_timeout: Duration,
    /// Close a link whose writes stall this long (peer not reading). Default 5 s.
    pub write_timeout: Duration,
    /// Close a QUIC connection silent for this long (QUIC idle timeout). Default 10 s.
    pub idle_timeout: Duration,
    /// Frames at least this large travel on a QUIC stream of their own. Default 64 KiB.
    pub large_frame: usize,
    /// Most QUIC streams a peer may have open towards us at once (each carries one large
    /// frame). Default 16.
    pub max_peer_streams: u32,
    /// Most large frames read from one QUIC peer at once; the rest wait in QUIC flow control.
    /// With the 16 MiB frame limit, what one peer can make us hold is this many frames.
    /// Default 2.
    pub max_large_frames_in_flight: usize,
    /// Longest a large frame may take to arrive, or to be written. Default 30 s.
    pub large_frame_timeout: Duration,
    /// Announce and browse by mDNS on the interfaces we listen on. Default on.
    pub mdns: bool,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            links: MeshLinks::default(),
            seeds: Vec::new(),
            cluster_ca: None,
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            large_frame: 64 * 1024,
            max_peer_streams: 16,
            max_large_frames_in_flight: 2,
            large_frame_timeout: Duration::from_secs(30),
            mdns: true,
        }
    }
}

/// Builds a [`MeshTransport`].
#[derive(Debug, Default)]
pub struct MeshTransportBuilder {
    config: MeshConfig,
}

impl MeshTransportBuilder {
    /// Address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Which kinds of link to use (default [`MeshLinks::Both`]).
    ///
    /// ```
    /// use phalanx::transport::{MeshLinks, MeshTransport};
    /// let tcp_only = MeshTransport::builder().links(MeshLinks::Tcp).build();
    /// # let _ = tcp_only;
    /// ```
    pub fn links(mut self, links: MeshLinks) -> Self {
        self.config.links = links;
        self
    }

    /// Adds a seed (`host:port`).
    pub fn seed(mut self, seed: impl Into<String>) -> Self {
        self.config.seeds.push(seed.into());
        self
    }

    /// Adds seeds (`host:port` each).
    pub fn seeds<I: IntoIterator<Item = S>, S: Into<String>>(mut self, seeds: I) -> Self {
        self.config.seeds.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// How this node proves membership (default: [`ClusterCa::local`]).
    pub fn cluster_ca(mut self, cluster_ca: ClusterCa) -> Self {
        self.config.cluster_ca = Some(cluster_ca);
        self
    }

    /// Turns mDNS discovery on or off (default on).
    pub fn mdns(mut self, enabled: bool) -> Self {
        self.config.mdns = enabled;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: MeshConfig) -> Self {
        self.config = config;
        self
    }

    /// The transport, ready to hand to [`BrokerBuilder::transport`](crate::BrokerBuilder::transport).
    pub fn build(self) -> MeshTransport {
        MeshTransport {
            config: Arc::new(self.config),
            mesh: Arc::default(),
        }
    }
}

/// The mesh transport (see the module docs). Clones share one mesh, so a clone kept after
/// handing the transport to a broker can still report links and authentication failures.
#[derive(Debug, Clone)]
pub struct MeshTransport {
    config: Arc<MeshConfig>,
    mesh: Arc<OnceLock<Arc<Mesh>>>,
}

/// State shared by the accept loops, the dialer and every link.
pub(crate) struct Mesh {
    ctx: TransportContext,
    config: MeshConfig,
    quic: Option<QuicSide>,
    tcp: Option<TcpSide>,
    links: LinkTable<Link>,
    dialer: DialPlan,
    auth_failures: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    local: SocketAddr,
    addresses: Vec<String>,
    /// Our addresses signed with our certificate key, for others to gossip.
    record: Bytes,
    /// Checks the records others gossip.
    credentials: Credentials,
    mdns: Mutex<Option<Arc<Mdns>>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.ctx.node_id)
            .field("links", &self.config.links)
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// Why a dial made no link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DialFailure {
    /// Nothing answered (timeout, unreachable, refused port): worth trying another kind of link.
    Silent,
    /// Something answered and refused us (or we it): another kind of link would fare no better.
    Refused,
}

/// The first of `attempts` to connect; if none does, the most telling failure.
async fn first_connected<T>(
    attempts: impl IntoIterator<
        Item = impl std::future::Future<Output = std::result::Result<T, DialFailure>>,
    >,
) -> std::result::Result<T, DialFailure> {
    use futures_util::StreamExt;
    let mut pending: futures_util::stream::FuturesUnordered<_> = attempts.into_iter().collect();
    let mut failure = DialFailure::Silent;
    while let Some(attempt) = pending.next().await {
        match attempt {
            Ok(connected) => return Ok(connected),
            Err(why) => failure = failure.max(why),
        }
    }
    Err(failure)
}

impl MeshTransport {
    /// A builder with default settings.
    pub fn builder() -> MeshTransportBuilder {
        MeshTransportBuilder::default()
    }

    /// The bound socket address (UDP and TCP share its port), once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.mesh.get().map(|m| m.local)
    }

    /// Handshakes that failed because a peer could not prove membership (or we could not).
    pub fn auth_failures(&self) -> u64 {
        self.mesh
            .get()
            .map_or(0, |m| m.auth_failures.load(Ordering::Relaxed))
    }

    /// Node ids with an open link.
    pub fn linked_nodes(&self) -> Vec<String> {
        self.mesh
            .get()
            .map_or_else(Vec::new, |m| m.links.node_ids())
    }

    /// The kind of the open link to `node_id` (QUIC or TCP), if any.
    pub fn link_kind(&self, node_id: &str) -> Option<LinkKind> {
        self.mesh.get()?.links.get(node_id).map(|link| link.kind)
    }

    /// An authentication error if handshakes failed and no peer is linked: this node's
    /// membership does not match the cluster's.
    pub fn authentication_error(&self) -> Option<Error> {
        let failures = self.auth_failures();
        (failures > 0 && self.linked_nodes().is_empty()).then(|| authentication_error(failures))
    }

    fn mesh(&self) -> Result<&Arc<Mesh>> {
        self.mesh
            .get()
            .ok_or_else(|| Error::transport("mesh transport is not started"))
    }
}

impl Transporter for MeshTransport {
    fn kind(&self) -> LinkKind {
        if self.config.links.quic() {
            LinkKind::Quic
        } else {
            LinkKind::Tcp
        }
    }

    fn carries(&self, link: LinkKind) -> bool {
        match link {
            LinkKind::Quic => self.config.links.quic(),
            LinkKind::Tcp => self.config.links.tcp(),
            _ => false,
        }
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            let cluster_ca = match &self.config.cluster_ca {
                Some(m) => m.clone(),
                None => ClusterCa::local()?,
            };
            let credentials = cluster_ca.credentials(&ctx.node_id)?;
            let mesh = Mesh::start(ctx, (*self.config).clone(), &credentials)?;
            self.mesh
                .set(mesh.clone())
                .map_err(|_| Error::transport("mesh transport started twice"))?;
            mesh.spawn_background();
            if self.config.mdns {
                mesh.start_mdns(credentials.clone())?;
            }
            tracing::info!(addresses = ?mesh.addresses, links = ?self.config.links, fingerprint = %credentials.fingerprint(), "mesh listening");
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let mesh = self.mesh()?;
            let link = mesh.link(node_id)?;
            mesh.send_on(&link, packet, Batching::IfQueued).await
        }
        .boxed()
    }

    fn try_send(&self, node_id: &str, packet: &Packet) -> Result<TrySend<()>> {
        let mesh = self.mesh()?;
        let link = mesh.link(node_id)?;
        mesh.try_send_on(&link, packet).map(TrySend::sent_if)
    }

    fn try_request(
        &self,
        node_id: &str,
        packet: &Packet,
        mut reply: PendingReply,
    ) -> Result<TrySend<PendingReply>> {
        let mesh = self.mesh()?;
        let link = mesh.link(node_id)?;
        // A call alone in flight leaves at once: that is `request`'s work.
        if link.waiting.load(Ordering::Acquire) == 0 || !mesh.try_send_on(&link, packet)? {
            return Ok(TrySend::WouldWait(reply));
        }
        reply.count_in(&link.waiting);
        Ok(TrySend::Sent(reply))
    }

    fn request<'a>(
        &'a self,
        node_id: &'a str,
        packet: &'a Packet,
        mut reply: PendingReply,
    ) -> BoxFuture<'a, Result<PendingReply>> {
        async move {
            let mesh = self.mesh()?;
            let link = mesh.link(node_id)?;
            // A call alone in flight leaves at once; with others waiting, calls are bursty
            // (their answers come back together) and leave together.
            let batching = if reply.count_in(&link.waiting) > 1 {
                Batching::Burst
            } else {
                Batching::IfQueued
            };
            mesh.send_on(&link, packet, batching).await?;
            Ok(reply)
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let mesh = self.mesh()?;
            let frame = mesh.ctx.codec.encode(packet)?;
            let links = mesh.links.all();
            for link in &links {
                mesh.ctx
                    .traffic
                    .record(&link.node_id, link.kind, Direction::Sent, frame.len());
            }
            // Concurrently: one stalled peer must not hold up the others.
            let sends = links
                .iter()
                .map(|link| link.send(frame.clone(), &mesh.config, Batching::IfQueued));
            for (link, result) in links
                .iter()
                .zip(futures_util::future::join_all(sends).await)
            {
                if let Err(err) = result {
                    tracing::debug!(peer = %link.node_id, %err, "broadcast not delivered");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn addresses(&self) -> Vec<String> {
        self.mesh
            .get()
            .map_or_else(Vec::new, |m| m.addresses.clone())
    }

    fn learn_peer(&self, node_id: &str, addresses: &[String], source: PeerSource) {
        if let Some(mesh) = self.mesh.get() {
            // Only socket addresses: other transports announce theirs in the same list.
            let ours: Vec<String> = addresses
                .iter()
                .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
                .cloned()
                .collect();
            mesh.dialer.learn(node_id, &ours, source);
        }
    }

    fn learn_gossip(&self, peer: &PeerInfo) {
        let Some(mesh) = self.mesh.get() else { return };
        // Only where the peer itself says it is: a member relaying gossip cannot redirect it.
        let vouched = peer.address_record.as_deref().map(|record| {
            address_record::verify(
                &mesh.credentials,
                record,
                &peer.node_id,
                &mesh.ctx.namespace,
            )
        });
        match vouched {
            Some(Ok(addresses)) => {
                let ours: Vec<String> = addresses
                    .into_iter()
                    .filter(|a| a.parse::<SocketAddr>().is_ok())
                    .collect();
                mesh.dialer.learn(&peer.node_id, &ours, PeerSource::Signed);
            }
            Some(Err(why)) => mesh.ctx.traffic.limit_hit(
                Limit::DialHearsay,
                1,
                &format!("gossip about '{}' not taken: {why}", peer.node_id),
            ),
            None => mesh.ctx.traffic.limit_hit(
                Limit::DialHearsay,
                1,
                &format!(
                    "gossip about '{}' not taken: no signed record",
                    peer.node_id
                ),
            ),
        }
    }

    fn address_record(&self) -> Option<Bytes> {
        self.mesh.get().map(|mesh| mesh.record.clone())
    }

    fn forget_peer(&self, node_id: &str) {
        if let Some(mesh) = self.mesh.get() {
            mesh.dialer.forget(node_id);
        }
    }

    fn drop_peer(&self, node_id: &str) {
        let Some(mesh) = self.mesh.get() else { return };
        if let Some(link) = mesh.links.get(node_id) {
            link.close(link::CLOSE_BYE, "declared down");
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(mesh) = self.mesh.get() else { return };
            let mdns = mesh.mdns.lock().expect("mdns lock").take();
            if let Some(mdns) = mdns {
                mdns.stop().await;
            }
            for task in std::mem::take(&mut *mesh.tasks.lock().expect("tasks lock")) {
                task.abort();
            }
            let links = mesh.links.drain();
            futures_util::future::join_all(
                links
                    .iter()
                    .map(|link| link.close_gracefully(Duration::from_secs(1))),
            )
            .await;
            if let Some(quic) = &mesh.quic {
                quic.endpoint
                    .close(link::CLOSE_BYE.into(), b"node stopping");
                let _ = tokio::time::timeout(Duration::from_millis(500), quic.endpoint.wait_idle())
                    .await;
            }
        }
        .boxed()
    }
}

/// Attempts at finding a port free for both UDP and TCP when the listen port is 0.
const PORT_ATTEMPTS: usize = 16;

impl Mesh {
    fn start(
        ctx: TransportContext,
        config: MeshConfig,
        credentials: &Credentials,
    ) -> Result<Arc<Self>> {
        let (quic, tcp) = bind(&config, credentials)?;
        let local = match (&quic, &tcp) {
            (Some(quic), _) => quic.local_addr()?,
            (None, Some(tcp)) => tcp.local_addr(),
            (None, None) => unreachable!("a mesh listens on QUIC, TCP or both"),
        };
        let addresses = announce_addresses(local);
        let record = address_record::sign(credentials, &ctx.node_id, &ctx.namespace, &addresses)?;
        let dialer = DialPlan::new(&config.seeds);
        Ok(Arc::new(Self {
            ctx,
            config,
            quic,
            tcp,
            links: LinkTable::default(),
            dialer,
            auth_failures: AtomicU64::new(0),
            tasks: Mutex::default(),
            local,
            addresses,
            record,
            credentials: credentials.clone(),
            mdns: Mutex::default(),
        }))
    }

    fn start_mdns(self: &Arc<Self>, credentials: Credentials) -> Result<()> {
        let me = Announcement {
            node_id: self.ctx.node_id.to_string(),
            namespace: self.ctx.namespace.to_string(),
            credentials,
            addresses: self
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
        };
        let mesh = Arc::downgrade(self);
        let on_found: OnFound = Arc::new(move |node_id, addresses, source| {
            if let Some(mesh) = mesh.upgrade() {
                mesh.dialer.learn(node_id, &addresses, source);
            }
        });
        let mdns = Mdns::start(me, on_found)?;
        *self.mdns.lock().expect("mdns lock") = Some(Arc::new(mdns));
        Ok(())
    }

    fn spawn_background(self: &Arc<Self>) {
        let mut tasks = vec![tokio::spawn(dial::run(self.clone()))];
        if self.quic.is_some() {
            tasks.push(tokio::spawn(self.clone().accept_quic()));
        }
        if self.tcp.is_some() {
            tasks.push(tokio::spawn(self.clone().accept_tcp()));
        }
        self.tasks.lock().expect("tasks lock").extend(tasks);
    }

    /// Records a failed handshake (`auth`: one side could not prove membership) and says what
    /// it means for a dial: refused, or no answer.
    fn handshake_failed(&self, peer: &str, auth: bool, err: &dyn std::fmt::Display) -> DialFailure {
        if auth {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            // Counted and logged at a bounded rate: a stranger's attempts must not flood the log.
            self.ctx.traffic.limit_hit(
                Limit::LinkRefused,
                1,
                &format!("{peer} failed mutual authentication: {err}"),
            );
            DialFailure::Refused
        } else {
            tracing::debug!(%peer, %err, "handshake failed");
            DialFailure::Silent
        }
    }

    /// Encodes `packet` and sends it on `link`.
    async fn send_on(&self, link: &Arc<Link>, packet: &Packet, batching: Batching) -> Result<()> {
        let frame = self.ctx.codec.encode(packet)?;
        self.ctx
            .traffic
            .record(&link.node_id, link.kind, Direction::Sent, frame.len());
        link.send(frame, &self.config, batching).await
    }

    /// Encodes `packet` and adds it to `link`'s outbox if someone writes that anyway (the
    /// reader that corked the link, a burst's writer); whether it did.
    fn try_send_on(&self, link: &Link, packet: &Packet) -> Result<bool> {
        let held = link.try_hold_encoded(
            packet.payload_len(),
            |buf| self.ctx.codec.encode_into(packet, buf),
            &self.config,
        )?;
        if let Some(len) = held {
            self.ctx
                .traffic
                .record(&link.node_id, link.kind, Direction::Sent, len);
        }
        Ok(held.is_some())
    }

    fn link(&self, node_id: &str) -> Result<Arc<Link>> {
        self.links
            .get(node_id)
            .ok_or_else(|| Error::transport(format!("no mesh link to node '{node_id}'")))
    }

    pub(crate) fn is_linked(&self, node_id: &str) -> bool {
        self.links.contains(node_id)
    }
}

/// Binds what `config.links` asks for. With both, TCP takes the port QUIC got, so one address
/// reaches either; when the port was left to the system and TCP finds it taken, both try again.
fn bind(
    config: &MeshConfig,
    credentials: &Credentials,
) -> Result<(Option<QuicSide>, Option<TcpSide>)> {
    let listen = config.listen;
    match config.links {
        MeshLinks::Quic => Ok((Some(QuicSide::bind(config, credentials, listen)?), None)),
        MeshLinks::Tcp => Ok((None, Some(TcpSide::bind(credentials, listen)?))),
        MeshLinks::Both => {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let quic = QuicSide::bind(config, credentials, listen)?;
                let same_port = SocketAddr::new(listen.ip(), quic.local_addr()?.port());
                match TcpSide::bind(credentials, same_port) {
                    Ok(tcp) => return Ok((Some(quic), Some(tcp))),
                    Err(_) if listen.port() == 0 && attempt < PORT_ATTEMPTS => continue,
                    Err(err) => return Err(err),
                }
            }
        }
    }
}

/// Addresses peers can dial: the bound one, or every non-loopback interface address when bound
/// to the unspecified address (loopback only if there is nothing else).
fn announce_addresses(local: SocketAddr) -> Vec<String> {
    if !local.ip().is_unspecified() {
        return vec![local.to_string()];
    }
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let port = local.port();
    let mut external: Vec<String> = interfaces
        .iter()
        .filter(|i| !i.is_loopback() && i.ip().is_ipv4() == local.is_ipv4())
        .map(|i| SocketAddr::new(i.ip(), port).to_string())
        .collect();
    if external.is_empty() {
        let loopback = if local.is_ipv4() { "127.0.0.1" } else { "::1" };
        external.push(format!("{loopback}:{port}"));
    }
    external
}

/// An authentication error for a node that never joined because handshakes failed.
fn authentication_error(failures: u64) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!("{failures} handshake(s) failed: this node's cluster membership (secret or CA) does not match its peers'"),
    )
    .with_type("AUTHENTICATION_FAILED")
}
