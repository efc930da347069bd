//! The QUIC mesh: one mutually authenticated QUIC connection per pair of nodes (quinn + rustls).
//!
//! # Links
//! Each side of a connection opens one long-lived unidirectional *main* stream and writes frames
//! to it straight from the calling task — no writer task in between (a cross-thread hop costs
//! ~20 µs on small VMs, more than the rest of a call). Frames larger than
//! [`QuicConfig::large_frame`] get a unidirectional stream of their own, so a big body never
//! holds up small calls behind it. The first frame on a main stream is a `DISCOVER` that names
//! the sender: that is how a link learns its peer's node id.
//!
//! # One connection per pair
//! When two nodes dial each other at once, both connections complete. The one dialed by the node
//! with the smaller id survives; the other is closed with reason `duplicate`. Both sides apply the
//! same rule, so exactly one remains.
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
//! after [`QuicConfig::write_timeout`] its link is closed. QUIC flow control bounds the bytes
//! buffered per peer, and the number of extra streams a peer may open is capped.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, identity::ClusterCa, transport::QuicTransport};
//!
//! let quic = QuicTransport::builder()
//!     .listen("0.0.0.0:4000".parse().unwrap())
//!     .seed("10.0.0.2:4000")
//!     .cluster_ca(ClusterCa::secret("9f1c2b7e0d4a8c3f6e5b1a2d7c9e0f4b"))
//!     .build();
//! let broker = Broker::builder().transport(quic).start().await?;
//! # Ok(()) }
//! ```

mod dial;
mod link;

use super::{Direction, LinkKind, LinkTable, PeerSource, TransportContext, Transporter};
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
use link::Link;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Settings of a [`QuicTransport`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuicConfig {
    /// Address to listen on. Default `0.0.0.0:0` (any interface, a free port).
    pub listen: SocketAddr,
    /// Seeds to dial, as `host:port`.
    pub seeds: Vec<String>,
    /// How membership is proven. `None`: [`ClusterCa::local`] at start.
    pub cluster_ca: Option<ClusterCa>,
    /// Give up a dial after this long. Default 2 s.
    pub connect_timeout: Duration,
    /// Close a link whose writes stall this long (peer not reading). Default 5 s.
    pub write_timeout: Duration,
    /// Close a connection silent for this long (QUIC idle timeout). Default 10 s.
    pub idle_timeout: Duration,
    /// Frames at least this large travel on a stream of their own. Default 64 KiB.
    pub large_frame: usize,
    /// Most streams a peer may have open towards us at once (each carries one large frame).
    /// Default 16.
    pub max_peer_streams: u32,
    /// Most large frames read from one peer at once; the rest wait in QUIC flow control. With
    /// the 16 MiB frame limit, what one peer can make us hold is this many frames. Default 2.
    pub max_large_frames_in_flight: usize,
    /// Longest a large frame may take to arrive once its stream opened. Default 30 s.
    pub large_frame_timeout: Duration,
    /// Announce and browse by mDNS on the interfaces we listen on. Default on.
    pub mdns: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
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

/// Builds a [`QuicTransport`].
#[derive(Debug, Default)]
pub struct QuicTransportBuilder {
    config: QuicConfig,
}

impl QuicTransportBuilder {
    /// Address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
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
    pub fn config(mut self, config: QuicConfig) -> Self {
        self.config = config;
        self
    }

    /// The transport, ready to hand to [`BrokerBuilder::transport`](crate::BrokerBuilder::transport).
    pub fn build(self) -> QuicTransport {
        QuicTransport {
            config: Arc::new(self.config),
            mesh: Arc::default(),
        }
    }
}

/// The QUIC transport (see the module docs). Clones share one mesh, so a clone kept after
/// handing the transport to a broker can still report links and authentication failures.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    config: Arc<QuicConfig>,
    mesh: Arc<OnceLock<Arc<Mesh>>>,
}

/// State shared by the accept loop, the dialer and every link.
pub(crate) struct Mesh {
    ctx: TransportContext,
    config: QuicConfig,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    links: LinkTable<Link>,
    dialer: DialPlan,
    auth_failures: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
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
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

impl QuicTransport {
    /// A builder with default settings.
    pub fn builder() -> QuicTransportBuilder {
        QuicTransportBuilder::default()
    }

    /// The bound socket address, once started.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.mesh.get().and_then(|m| m.endpoint.local_addr().ok())
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

    /// An authentication error if handshakes failed and no peer is linked: this node's
    /// membership does not match the cluster's.
    pub fn authentication_error(&self) -> Option<Error> {
        let failures = self.auth_failures();
        (failures > 0 && self.linked_nodes().is_empty()).then(|| authentication_error(failures))
    }

    fn mesh(&self) -> Result<&Arc<Mesh>> {
        self.mesh
            .get()
            .ok_or_else(|| Error::transport("QUIC transport is not started"))
    }
}

impl Transporter for QuicTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Quic
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
                .map_err(|_| Error::transport("QUIC transport started twice"))?;
            mesh.spawn_background();
            if self.config.mdns {
                mesh.start_mdns(credentials.clone())?;
            }
            tracing::info!(addresses = ?mesh.addresses, fingerprint = %credentials.fingerprint(), "QUIC mesh listening");
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let mesh = self.mesh()?;
            let link = mesh.link(node_id)?;
            let frame = mesh.ctx.codec.encode(packet)?;
            mesh.ctx
                .traffic
                .record(node_id, LinkKind::Quic, Direction::Sent, frame.len());
            link.send(frame, &mesh.config).await
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let mesh = self.mesh()?;
            let frame = mesh.ctx.codec.encode(packet)?;
            let links = mesh.links.all();
            for link in &links {
                mesh.ctx.traffic.record(
                    &link.node_id,
                    LinkKind::Quic,
                    Direction::Sent,
                    frame.len(),
                );
            }
            // Concurrently: one stalled peer must not hold up the others.
            let sends = links
                .iter()
                .map(|link| link.send(frame.clone(), &mesh.config));
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
            mesh.endpoint
                .close(link::CLOSE_BYE.into(), b"node stopping");
            let _ =
                tokio::time::timeout(Duration::from_millis(500), mesh.endpoint.wait_idle()).await;
        }
        .boxed()
    }
}

impl Mesh {
    fn start(
        ctx: TransportContext,
        config: QuicConfig,
        credentials: &Credentials,
    ) -> Result<Arc<Self>> {
        let quic_error =
            |e: &dyn std::fmt::Display| Error::transport(format!("QUIC setup failed: {e}"));
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(credentials.server_config()?)
                .map_err(|e| quic_error(&e))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(credentials.client_config()?)
                .map_err(|e| quic_error(&e))?;
        let transport = Arc::new(transport_config(&config)?);
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server_config, config.listen).map_err(|e| {
            Error::transport(format!("cannot listen on {}: {e}", config.listen)).with_source(e)
        })?;
        let local = endpoint.local_addr().map_err(|e| quic_error(&e))?;
        let addresses = announce_addresses(local);
        let record = address_record::sign(credentials, &ctx.node_id, &ctx.namespace, &addresses)?;
        let dialer = DialPlan::new(&config.seeds);
        Ok(Arc::new(Self {
            ctx,
            config,
            endpoint,
            client_config,
            links: LinkTable::default(),
            dialer,
            auth_failures: AtomicU64::new(0),
            tasks: Mutex::default(),
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
        let accept = tokio::spawn(self.clone().accept_loop());
        let dial = tokio::spawn(dial::run(self.clone()));
        self.tasks
            .lock()
            .expect("tasks lock")
            .extend([accept, dial]);
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let mesh = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => mesh.run_connection(conn, false, None).await,
                    Err(err) => mesh.handshake_failed(&remote.to_string(), &err),
                }
            });
        }
    }

    /// Records a failed handshake; TLS failures count as authentication failures.
    fn handshake_failed(&self, peer: &str, err: &quinn::ConnectionError) {
        if is_auth_failure(err) {
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            // Counted and logged at a bounded rate: a stranger's attempts must not flood the log.
            self.ctx.traffic.limit_hit(
                Limit::LinkRefused,
                1,
                &format!("{peer} failed mutual authentication: {err}"),
            );
        } else {
            tracing::debug!(%peer, %err, "handshake failed");
        }
    }

    fn link(&self, node_id: &str) -> Result<Arc<Link>> {
        self.links
            .get(node_id)
            .ok_or_else(|| Error::transport(format!("no QUIC link to node '{node_id}'")))
    }

    pub(crate) fn is_linked(&self, node_id: &str) -> bool {
        self.links.contains(node_id)
    }

    /// Adds a link unless a better one to the same peer exists (see "One connection per pair").
    /// Returns whether the link was kept and whether it is the first to that peer.
    fn register(&self, link: &Arc<Link>) -> (bool, bool) {
        let preferred_outbound = *self.ctx.node_id < *link.node_id;
        let (kept, replaced) = self.links.insert_if(
            link.node_id.clone(),
            link.clone(),
            |existing| match existing {
                None => true,
                Some(existing) if existing.is_closed() => true,
                Some(existing) => {
                    link.outbound == preferred_outbound && existing.outbound != preferred_outbound
                }
            },
        );
        match replaced {
            Some(existing) if !existing.is_closed() => {
                existing.close(link::CLOSE_DUPLICATE, "duplicate");
                (kept, false)
            }
            _ => (kept, kept),
        }
    }

    /// Removes `link` if it is still the registered one; returns whether it was.
    fn unregister(&self, link: &Link) -> bool {
        self.links
            .remove_if(&link.node_id, |current| current.id() == link.id())
            .is_some()
    }
}

/// Bytes a peer may send ahead of what we have read, over all streams of its connection.
const CONNECTION_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

fn transport_config(config: &QuicConfig) -> Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| Error::transport(format!("invalid idle timeout: {e}")).with_source(e))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.idle_timeout / 4))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(config.max_peer_streams.into())
        // Unread bytes one peer may have buffered here across all its streams.
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    Ok(transport)
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

fn is_auth_failure(err: &quinn::ConnectionError) -> bool {
    match err {
        quinn::ConnectionError::TransportError(e) => {
            // TLS alerts are carried as CRYPTO_ERROR codes 0x100..=0x1ff.
            let code = u64::from(e.code);
            (0x100..=0x1ff).contains(&code)
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..=0x1ff).contains(&code)
        }
        _ => false,
    }
}

/// An authentication error for a node that never joined because handshakes failed.
fn authentication_error(failures: u64) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!("{failures} handshake(s) failed: this node's cluster membership (secret or CA) does not match its peers'"),
    )
    .with_type("AUTHENTICATION_FAILED")
}
