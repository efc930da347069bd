//! A cluster fixture: N brokers on one transport, started together, waited for until every one
//! sees all the others, and stopped together — explicitly with [`Cluster::stop`], or on drop.

use phalanx::identity::ClusterCa;
use phalanx::transport::{InProcBus, MeshTransport};
use phalanx::{Broker, BrokerBuilder};
use std::time::Duration;

/// How long a cluster may take to form.
const FORM: Duration = Duration::from_secs(10);

/// Brokers that know each other.
pub(crate) struct Cluster {
    nodes: Vec<Broker>,
    /// The in-process bus, for clusters made with [`Cluster::inproc`].
    pub(crate) bus: InProcBus,
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
        };
        cluster.wait_formed().await;
        cluster
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
        let cluster = Self { nodes, bus };
        cluster.wait_formed().await;
        cluster
    }

    /// Waits until every node sees all the others as available.
    pub(crate) async fn wait_formed(&self) {
        let want = self.nodes.len() - 1;
        let formed = tokio::time::timeout(FORM, async {
            while !self.nodes.iter().all(|n| available_peers(n) == want) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(formed.is_ok(), "the cluster did not form within {FORM:?}");
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

/// A QUIC transport on a free loopback port, proving membership with `secret`, mDNS off.
pub(crate) fn quic_loopback(
    secret: &str,
    seeds: impl IntoIterator<Item = String>,
) -> MeshTransport {
    MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("loopback address"))
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
