//! The one trait every transport implements, and the transports themselves.
//!
//! A [`Transporter`] moves [`Packet`]s between this node and others. The broker above it never
//! knows whether a packet crossed a QUIC stream, a shared-memory ring or a NATS subject; it sees
//! the same packets and keeps one registry.
//!
//! # Two shapes behind one trait
//!
//! * **Point-to-point links** (in-process bus, QUIC, TCP, shared memory): the transport keeps one
//!   authenticated link per peer. [`Transporter::send`] writes to that peer's link;
//!   [`Transporter::broadcast`] writes to every open link. When a link comes up the transport
//!   reports [`TransportHandler::on_link_up`] (the broker then exchanges `INFO`); when it closes —
//!   connection lost, peer crashed — it reports [`TransportHandler::on_link_down`], and the broker
//!   fails that node's in-flight calls at once.
//! * **A bus** (NATS): `send` publishes on the target node's subject, `broadcast` on the
//!   namespace's broadcast subject. There are no per-peer links: `on_link_up` is not called (the
//!   broker broadcasts `DISCOVER` after [`Transporter::start`]), and liveness comes from the
//!   broker's heartbeat lease and `DISCONNECT` packets. A bus may balance a group's events
//!   itself (Kafka, with consumer groups: [`Transporter::balances_events`]); the broker then
//!   tells it what the node's services listen to ([`Transporter::listen`]) and hands it each
//!   group's event instead of choosing the member.
//!
//! Either way inbound packets arrive through [`TransportHandler::on_packet`], which never blocks:
//! the broker completes responses in place and spawns handlers for requests and events.
//!
//! ```
//! use phalanx::transport::{InProcBus, LinkKind, Transporter};
//!
//! let bus = InProcBus::new();
//! let transport = bus.transport();
//! assert_eq!(transport.kind(), LinkKind::InProc);
//! ```

#[cfg(any(feature = "nats", feature = "kafka"))]
mod bus;
#[cfg(any(feature = "nats", feature = "kafka"))]
mod envelope;
mod inproc;
#[cfg(feature = "kafka")]
mod kafka;
mod link_table;
mod mesh;
#[cfg(feature = "nats")]
mod nats;
mod reply;
mod shm;

pub use inproc::{InProcBus, InProcTransport};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaTransport, KafkaTransportBuilder};
pub(crate) use link_table::LinkTable;
pub use mesh::{MeshConfig, MeshLinks, MeshTransport, MeshTransportBuilder};
#[cfg(feature = "nats")]
pub use nats::{NatsTransport, NatsTransportBuilder};
pub use reply::PendingReply;
pub(crate) use reply::ReplySender;
pub use shm::{ShmTransport, ShmTransportBuilder};

pub use crate::discovery::PeerSource;
use crate::error::Result;
pub use crate::protocol::codec::{Codec, FrameDecoder};
pub use crate::protocol::packet::{EventInfo, Packet};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The kind of link used to reach a node, fastest first.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// The node is this broker itself.
    Local,
    /// Another broker in this process.
    InProc,
    /// Shared memory on this host.
    Shm,
    /// QUIC.
    Quic,
    /// TCP with TLS, where UDP does not pass.
    Tcp,
    /// A NATS bus.
    Nats,
    /// A Kafka bus.
    Kafka,
}

impl LinkKind {
    /// The lowercase name shown by the CLI and `$node.list`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::InProc => "inproc",
            Self::Shm => "shm",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::Nats => "nats",
            Self::Kafka => "kafka",
        }
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a transport reports to the broker. Implemented by the broker.
pub trait TransportHandler: Send + Sync + 'static {
    /// A packet arrived over `link`. Must not block.
    fn on_packet(&self, packet: Packet, link: LinkKind);
    /// A point-to-point link to `node_id` is up and authenticated.
    fn on_link_up(&self, node_id: &str, link: LinkKind);
    /// The link to `node_id` closed.
    fn on_link_down(&self, node_id: &str, link: LinkKind);
    /// A bus transport lost (`up == false`) or regained its connection.
    fn on_bus(&self, link: LinkKind, up: bool);
    /// The first packet to send on a new link: this node's `INFO`, so the peer knows us before
    /// anything else we send on that link arrives.
    fn hello(&self) -> Packet;
}

/// Counts the frames a transport moves and the limits it enforces (the broker hands in its
/// metrics).
pub trait TrafficMeter: Send + Sync + 'static {
    /// One frame of `bytes` (length prefix included) went to or came from `peer` over `link`
    /// (`*` for a bus broadcast).
    fn record(&self, peer: &str, link: LinkKind, direction: Direction, bytes: usize);

    /// One write to the wire to `peer` over `link`, however many frames it carried (transports
    /// that write a burst's frames together report their writes: frames per write is how well
    /// they batch).
    fn wrote(&self, peer: &str, link: LinkKind) {
        let _ = (peer, link);
    }

    /// `limit` bit `n` times; `detail` says how (logged, rate-limited).
    fn limit_hit(&self, limit: crate::limits::Limit, n: u64, detail: &str) {
        let _ = (limit, n, detail);
    }
}

/// Counts nothing: for a transport started outside a broker.
impl TrafficMeter for () {
    fn record(&self, _: &str, _: LinkKind, _: Direction, _: usize) {}
}

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Direction {
    /// To the peer.
    Sent,
    /// From the peer.
    Received,
}

/// What a transport needs to know about the node it serves.
#[derive(Clone)]
#[non_exhaustive]
pub struct TransportContext {
    /// This node's id.
    pub node_id: Arc<str>,
    /// This node's namespace.
    pub namespace: Arc<str>,
    /// Identity of this machine, boot and network namespace: nodes with the same host id can
    /// share memory.
    pub host_id: Arc<str>,
    /// Frame limits.
    pub codec: Codec,
    /// Where to report packets and link changes.
    pub handler: Arc<dyn TransportHandler>,
    /// Where to count traffic.
    pub traffic: Arc<dyn TrafficMeter>,
}

impl TransportContext {
    /// The context of a transport started outside a broker (a tool, a test, a bridge): node
    /// `node_id` in `namespace`, reporting to `handler`, with the default frame limits, no
    /// traffic counting and a host id of its own (so it shares memory with nobody).
    ///
    /// ```
    /// use phalanx::transport::{LinkKind, Packet, TransportContext, TransportHandler};
    /// use std::sync::Arc;
    ///
    /// struct Quiet;
    /// impl TransportHandler for Quiet {
    ///     fn on_packet(&self, _: Packet, _: LinkKind) {}
    ///     fn on_link_up(&self, _: &str, _: LinkKind) {}
    ///     fn on_link_down(&self, _: &str, _: LinkKind) {}
    ///     fn on_bus(&self, _: LinkKind, _: bool) {}
    ///     fn hello(&self) -> Packet {
    ///         Packet::new("tool-1", phalanx::protocol::packet::PacketBody::Disconnect(Default::default()))
    ///     }
    /// }
    /// let ctx = TransportContext::new("tool-1", "shop", Arc::new(Quiet));
    /// assert_eq!(&*ctx.node_id, "tool-1");
    /// ```
    pub fn new(
        node_id: impl Into<Arc<str>>,
        namespace: impl Into<Arc<str>>,
        handler: Arc<dyn TransportHandler>,
    ) -> Self {
        let node_id = node_id.into();
        Self {
            host_id: format!("standalone-{node_id}").into(),
            node_id,
            namespace: namespace.into(),
            codec: Codec::default(),
            handler,
            traffic: Arc::new(()),
        }
    }
}

impl fmt::Debug for TransportContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportContext")
            .field("node_id", &self.node_id)
            .field("namespace", &self.namespace)
            .field("host_id", &self.host_id)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

/// What [`Transporter::try_send`] and [`Transporter::try_request`] did, with what they hand back.
///
/// ```
/// use phalanx::transport::TrySend;
///
/// let outcome: TrySend<()> = TrySend::WouldWait(());
/// assert!(matches!(outcome, TrySend::WouldWait(())));
/// ```
#[derive(Debug)]
pub enum TrySend<T> {
    /// The packet is on its way.
    Sent(T),
    /// Nothing was sent: sending would have to wait.
    WouldWait(T),
}

impl TrySend<()> {
    /// Whether a frame was taken (`sent`) or not, as a transport's `try_send` answers it.
    pub(crate) fn sent_if(sent: bool) -> Self {
        if sent {
            Self::Sent(())
        } else {
            Self::WouldWait(())
        }
    }
}

/// Moves packets between this node and the others.
pub trait Transporter: Send + Sync + 'static {
    /// The kind of link this transport provides.
    fn kind(&self) -> LinkKind;

    /// Whether this transport carries links of kind `link` (a mesh carries QUIC and TCP links;
    /// every other transport just its [`kind`](Transporter::kind)).
    fn carries(&self, link: LinkKind) -> bool {
        self.kind() == link
    }

    /// Starts listening / connecting; inbound traffic goes to `ctx.handler` from now on.
    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>>;

    /// Sends `packet` to one node. Fails (retryable) if no link to it exists.
    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>>;

    /// Sends `packet` to one node if that needs no waiting (room in the link's buffer, no
    /// other writer holding it): [`TrySend::Sent`], or [`TrySend::WouldWait`] with nothing
    /// sent, and then the caller awaits [`send`](Transporter::send). A reply on the hot path
    /// goes out this way without a future to box. The default always would wait.
    ///
    /// ```
    /// use phalanx::protocol::packet::{Discover, PacketBody};
    /// use phalanx::transport::{InProcBus, Packet, Transporter, TrySend};
    ///
    /// let transport = InProcBus::new().transport();
    /// let packet = Packet::new("me", PacketBody::Discover(Discover {}));
    /// assert!(matches!(
    ///     transport.try_send("someone", &packet),
    ///     Ok(TrySend::WouldWait(()))
    /// ));
    /// ```
    fn try_send(&self, node_id: &str, packet: &Packet) -> Result<TrySend<()>> {
        let _ = (node_id, packet);
        Ok(TrySend::WouldWait(()))
    }

    /// Sends `packet` to every node this transport reaches.
    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>>;

    /// Addresses where peers can reach this node (announced in `INFO`).
    fn addresses(&self) -> Vec<String> {
        Vec::new()
    }

    /// Learns where a node can be reached, and who says so ([`PeerSource`]: the node itself in
    /// its INFO, or hearsay); a point-to-point transport may dial it. Buses ignore it.
    fn learn_peer(&self, node_id: &str, addresses: &[String], source: PeerSource) {
        let _ = (node_id, addresses, source);
    }

    /// The broker declared `node_id` down (e.g. its heartbeat lease expired): close any link to
    /// it, so writes waiting on it fail now. Buses ignore it.
    fn drop_peer(&self, node_id: &str) {
        let _ = node_id;
    }

    /// Learns of a peer another member passed on by gossip. The default takes its addresses as
    /// hearsay; the mesh only dials what the peer's own signed record vouches for.
    fn learn_gossip(&self, peer: &crate::protocol::packet::PeerInfo) {
        self.learn_peer(&peer.node_id, &peer.addresses, PeerSource::Hearsay);
    }

    /// This node's addresses on this transport, signed for others to pass on (see
    /// [`learn_gossip`](Transporter::learn_gossip)); `None` if it has none to vouch for.
    fn address_record(&self) -> Option<bytes::Bytes> {
        None
    }

    /// The broker forgot `node_id` (down for [`Limits::forget_down_nodes_after`](crate::limits::Limits)):
    /// stop dialing it and drop what is kept for it. Buses ignore it.
    fn forget_peer(&self, node_id: &str) {
        let _ = node_id;
    }

    /// Sends a REQUEST to `node_id` and hands back its `reply`, which the broker fills when the
    /// RESPONSE arrives. The default sends and returns at once; a transport may do more before
    /// it returns (shared memory reads its own link on the calling thread while a call is
    /// alone in flight: a thread wake-up costs more than its round trip).
    fn request<'a>(
        &'a self,
        node_id: &'a str,
        packet: &'a Packet,
        reply: PendingReply,
    ) -> BoxFuture<'a, Result<PendingReply>> {
        self.send(node_id, packet)
            .map(|sent| sent.map(|()| reply))
            .boxed()
    }

    /// [`request`](Transporter::request) if it needs no waiting: [`TrySend::Sent`] with the
    /// `reply` to await, or [`TrySend::WouldWait`] handing `reply` back with nothing sent (the
    /// caller then awaits `request`). The default is [`try_send`](Transporter::try_send).
    ///
    /// ```
    /// use phalanx::protocol::packet::{Discover, PacketBody};
    /// use phalanx::transport::{InProcBus, Packet, PendingReply, Transporter, TrySend};
    ///
    /// let transport = InProcBus::new().transport();
    /// let packet = Packet::new("me", PacketBody::Discover(Discover {}));
    /// let reply = PendingReply::abandoned();
    /// match transport.try_request("someone", &packet, reply) {
    ///     Ok(TrySend::WouldWait(reply)) => drop(reply), // then: transport.request(..).await
    ///     other => panic!("the in-process bus always awaits: {other:?}"),
    /// }
    /// ```
    fn try_request(
        &self,
        node_id: &str,
        packet: &Packet,
        reply: PendingReply,
    ) -> Result<TrySend<PendingReply>> {
        Ok(match self.try_send(node_id, packet)? {
            TrySend::Sent(()) => TrySend::Sent(reply),
            TrySend::WouldWait(()) => TrySend::WouldWait(reply),
        })
    }

    /// Whether this transport balances a group's events among its members itself (Kafka, with
    /// consumer groups): the broker then hands it each group's event with
    /// [`emit_balanced`](Transporter::emit_balanced) instead of sending the event to the node
    /// its registry picked. Every other transport leaves balancing to the broker.
    fn balances_events(&self) -> bool {
        false
    }

    /// Delivers `packet`, an EVENT for one group, to one member listening in `listening.group`
    /// with the pattern `listening.name`, chosen by the bus. Only called when
    /// [`balances_events`](Transporter::balances_events); the default refuses.
    fn emit_balanced<'a>(
        &'a self,
        listening: &'a EventInfo,
        packet: &'a Packet,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = packet;
        let refused = crate::Error::transport(format!(
            "{} does not balance events (group '{}')",
            self.kind(),
            listening.group
        ));
        futures_util::future::ready(Err(refused)).boxed()
    }

    /// This node's services listen to `subscriptions` now (every pattern and group once; empty
    /// when the broker stops). A transport that balances events itself joins and leaves its
    /// groups here, and the broker announces the services once this returns; the others have
    /// nothing to do.
    fn listen<'a>(&'a self, subscriptions: &'a [EventInfo]) -> BoxFuture<'a, Result<()>> {
        let _ = subscriptions;
        futures_util::future::ready(Ok(())).boxed()
    }

    /// Closes every link and stops accepting new ones.
    fn stop(&self) -> BoxFuture<'_, ()>;
}
