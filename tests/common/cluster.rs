//! A cluster fixture: N brokers on one transport, started together, waited for until every one
//! sees all the others, and stopped together — explicitly with [`Cluster::stop`], or on drop.

use phalanx::identity::ClusterCa;
use phalanx::transport::{
    InProcBus, LinkKind, MeshLinks, MeshTransport, ShmTransport, Transporter,
};
use phalanx::{Broker, BrokerBuilder};
use std::sync::Arc;
use std::time::Duration;

/// How long a cluster may take to form.
const FORM: Duration = Duration::from_secs(10);

/// Brokers that know each other.
pub(crate) struct Cluster {
    nodes: Vec<Broker>,
    /// The in-process bus, for clusters made with [`Cluster::inproc`].
    pub(crate) bus: InProcBus,
    /// Each node's transports, by node id, for [`Cluster::sever`].
    transports: Vec<(String, Vec<Arc<dyn Transporter>>)>,
}

/// What a cluster's nodes talk over.
#[derive(Debug, Clone)]
pub(crate) enum Over {
    /// One in-process bus.
    InProc,
    /// The mesh over QUIC only.
    Quic,
    /// The mesh over TCP only.
    Tcp,
    /// Shared memory (found through the QUIC mesh).
    Shm,
    /// A NATS server at this URL.
    #[cfg(feature = "nats")]
    Nats(String),
    /// A Kafka cluster at this bootstrap address.
    #[cfg(feature = "kafka")]
    Kafka(String),
}

impl Over {
    /// The link every pair of nodes must be on before the cluster counts as formed.
    fn link(&self) -> LinkKind {
        match self {
            Self::InProc => LinkKind::InProc,
            Self::Quic => LinkKind::Quic,
            Self::Tcp => LinkKind::Tcp,
            Self::Shm => LinkKind::Shm,
            #[cfg(feature = "nats")]
            Self::Nats(_) => LinkKind::Nats,
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => LinkKind::Kafka,
        }
    }
}

impl Cluster {
    /// Starts one broker per id, made by `node` (with the id already set), and waits until each
    /// sees every other as available.
    pub(crate) async fn start(ids: &[&str], node: impl Fn(BrokerBuilder) -> BrokerBuilder) -> Self {
        Self::start_with_bus(InProcBus::new(), ids, node).await
    }

    /// Brokers in namespace `test` on one in-process bus, with short grace and drain periods.
    pub(crate) async fn inproc(ids: &[&str]) -> Self {
        let bus = InProcBus::new();
        let transport_bus = bus.clone();
        Self::start_with_bus(bus, ids, move |b| {
            fast_stop(b.namespace("test").transport(transport_bus.transport()))
        })
        .await
    }

    /// Brokers on QUIC over loopback with a shared secret and mDNS off, each seeded with the
    /// first one's address.
    pub(crate) async fn quic(ids: &[&str], secret: &str) -> Self {
        let mut nodes: Vec<Broker> = Vec::new();
        let mut seed = None;
        for id in ids {
            let quic = quic_loopback(secret, seed.iter().cloned());
            let broker = fast_stop(Broker::builder().node_id(*id).namespace("quic-test"))
                .heartbeat(Duration::from_millis(200), Duration::from_millis(2000))
                .transport(quic.clone())
                .start()
                .await
                .expect("broker starts");
            seed.get_or_insert_with(|| quic.local_addr().expect("listening").to_string());
            nodes.push(broker);
        }
        let cluster = Self {
            nodes,
            bus: InProcBus::new(),
            transports: Vec::new(),
        };
        cluster.wait_formed().await;
        cluster
    }

    /// Brokers in namespace `suite` over `over`, each seeded with the first one's address where
    /// that applies; formed once every pair is linked by `over`'s kind of link.
    pub(crate) async fn over(over: &Over, ids: &[&str]) -> Self {
        Self::over_with(over, ids, |_, builder| builder).await
    }

    /// Like [`Cluster::over`], each node's builder (with its id) passed through `node` first.
    pub(crate) async fn over_with(
        over: &Over,
        ids: &[&str],
        node: impl Fn(&str, BrokerBuilder) -> BrokerBuilder,
    ) -> Self {
        let bus = InProcBus::new();
        let mut nodes = Vec::new();
        let mut transports = Vec::new();
        let mut seed: Option<String> = None;
        for id in ids {
            let mut builder = node(
                id,
                fast_stop(Broker::builder().node_id(*id).namespace("suite"))
                    .heartbeat(Duration::from_millis(200), Duration::from_millis(2000)),
            );
            // Clones share their transport's state: the fixture keeps one to stop it.
            let mut own: Vec<Arc<dyn Transporter>> = Vec::new();
            let mut mesh = None;
            match over {
                Over::InProc => builder = builder.transport(bus.transport()),
                Over::Quic | Over::Shm | Over::Tcp => {
                    let links = match over {
                        Over::Tcp => MeshLinks::Tcp,
                        _ => MeshLinks::Quic,
                    };
                    let transport = mesh_loopback("suite", links, seed.iter().cloned());
                    mesh = Some(transport.clone());
                    own.push(Arc::new(transport.clone()));
                    builder = builder.transport(transport);
                    if matches!(over, Over::Shm) {
                        let shm = ShmTransport::builder().build();
                        own.push(Arc::new(shm.clone()));
                        builder = builder.transport(shm);
                    }
                }
                #[cfg(feature = "nats")]
                Over::Nats(url) => {
                    let nats = phalanx::transport::NatsTransport::builder(url.clone())
                        .cluster_ca(ClusterCa::secret(super::strong_secret("suite")))
                        .build();
                    own.push(Arc::new(nats.clone()));
                    builder = builder.transport(nats);
                }
                #[cfg(feature = "kafka")]
                Over::Kafka(brokers) => {
                    let kafka = phalanx::transport::KafkaTransport::builder(brokers.clone())
                        .cluster_ca(ClusterCa::secret(super::strong_secret("suite")))
                        .build();
                    own.push(Arc::new(kafka.clone()));
                    builder = builder.transport(kafka);
                }
            }
            nodes.push(builder.start().await.expect("broker starts"));
            if let Some(mesh) = mesh {
                seed.get_or_insert_with(|| mesh.local_addr().expect("listening").to_string());
            }
            transports.push((id.to_string(), own));
        }
        let cluster = Self {
            nodes,
            bus,
            transports,
        };
        cluster.wait_linked(Some(over.link())).await;
        cluster
    }

    /// Cuts node `id` off without a goodbye: its transports stop (its broker does not say
    /// DISCONNECT), as when its process dies.
    pub(crate) async fn sever(&self, id: &str) {
        let own = self.transports.iter().find(|(node, _)| node == id);
        match own {
            Some((_, own)) if !own.is_empty() => {
                for transport in own {
                    transport.stop().await;
                }
            }
            _ => self.bus.sever(id),
        }
    }

    async fn start_with_bus(
        bus: InProcBus,
        ids: &[&str],
        node: impl Fn(BrokerBuilder) -> BrokerBuilder,
    ) -> Self {
        let mut nodes = Vec::new();
        for id in ids {
            let broker = node(Broker::builder().node_id(*id))
                .start()
                .await
                .expect("broker starts");
            nodes.push(broker);
        }
        let cluster = Self {
            nodes,
            bus,
            transports: Vec::new(),
        };
        cluster.wait_formed().await;
        cluster
    }

    /// Waits until every node sees all the others as available.
    pub(crate) async fn wait_formed(&self) {
        self.wait_linked(None).await;
    }

    /// Waits until every node sees all the others as available, over `link` if given.
    async fn wait_linked(&self, link: Option<LinkKind>) {
        let want = self.nodes.len() - 1;
        let linked = |node: &Broker| {
            node.nodes()
                .iter()
                .filter(|n| n.available && !n.local && link.is_none_or(|l| n.link == l))
                .count()
        };
        let formed = tokio::time::timeout(FORM, async {
            while !self.nodes.iter().all(|n| linked(n) == want) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            formed.is_ok(),
            "the cluster did not form over {link:?} within {FORM:?}"
        );
    }

    /// The broker with `id`.
    pub(crate) fn node(&self, id: &str) -> &Broker {
        self.nodes
            .iter()
            .find(|n| n.node_id() == id)
            .unwrap_or_else(|| panic!("no node '{id}' in the cluster"))
    }

    /// Every broker, in start order.
    pub(crate) fn nodes(&self) -> &[Broker] {
        &self.nodes
    }

    /// Stops every broker gracefully.
    pub(crate) async fn stop(mut self) {
        for node in std::mem::take(&mut self.nodes) {
            node.stop().await;
        }
    }
}

impl Drop for Cluster {
    /// A test that failed before [`Cluster::stop`] still stops its brokers (in the background,
    /// while its runtime lives).
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for node in nodes {
                runtime.spawn(async move { node.stop().await });
            }
        }
    }
}

/// Other nodes `broker` can call now.
pub(crate) fn available_peers(broker: &Broker) -> usize {
    broker
        .nodes()
        .iter()
        .filter(|n| n.available && !n.local)
        .count()
}

/// Short stop grace and drain, so tests do not wait for them.
pub(crate) fn fast_stop(builder: BrokerBuilder) -> BrokerBuilder {
    builder
        .stop_grace(Duration::from_millis(20))
        .drain_timeout(Duration::from_secs(1))
}

/// A QUIC-only mesh transport on a free loopback port, proving membership with `secret`, mDNS
/// off.
pub(crate) fn quic_loopback(
    secret: &str,
    seeds: impl IntoIterator<Item = String>,
) -> MeshTransport {
    mesh_loopback(secret, MeshLinks::Quic, seeds)
}

/// A mesh transport over `links` on a free loopback port, proving membership with `secret`,
/// mDNS off.
pub(crate) fn mesh_loopback(
    secret: &str,
    links: MeshLinks,
    seeds: impl IntoIterator<Item = String>,
) -> MeshTransport {
    MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("loopback address"))
        .links(links)
        .seeds(seeds)
        .cluster_ca(ClusterCa::secret(super::strong_secret(secret)))
        .mdns(false)
        .build()
}

/// A bare QUIC connection to `addr` as member `node_id` of the cluster of `secret`: it passes
/// mutual TLS, and then says whatever the test writes.
pub(crate) async fn member_connection(
    secret: &str,
    node_id: &str,
    addr: std::net::SocketAddr,
) -> quinn::Connection {
    let creds = ClusterCa::secret(super::strong_secret(secret))
        .credentials(node_id)
        .expect("member credentials");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(
        creds.client_config().expect("client config"),
    )
    .expect("QUIC client config");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
        .connect(addr, phalanx::identity::CLUSTER_SERVER_NAME)
        .expect("connect")
        .await
        .expect("a member passes mutual TLS")
}
