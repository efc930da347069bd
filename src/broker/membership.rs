//! Membership: who is in the cluster. A node joins when its INFO arrives (and its peers' addresses
//! are passed to the transports), is asked for its INFO when we meet it, and tells the others
//! whom it knows (gossip), so nodes that joined through different seeds find each other.

use super::Broker;
use crate::limits::Limit;
use crate::payload::encode_msgpack;
use crate::protocol::packet::{Discover, Info, PROTOCOL_VERSION, Packet, PacketBody};
use crate::registry::NodeChange;
use crate::transport::{LinkKind, PeerSource};
use std::sync::Arc;

impl Broker {
    pub(super) fn apply_info(&self, sender: Arc<str>, info: Info, link: LinkKind) {
        if info.namespace != *self.inner.namespace {
            tracing::debug!(peer = %sender, namespace = %info.namespace, "ignoring a node of another namespace");
            return;
        }
        if info.protocol_version != PROTOCOL_VERSION {
            tracing::warn!(peer = %sender, version = info.protocol_version, "ignoring a node speaking another protocol version");
            return;
        }
        if let Err(refusal) = self.inner.limits.check_info(&info) {
            self.inner.metrics.limit_hit(
                Limit::InfoRefused,
                format_args!("INFO of '{sender}' refused: {refusal}"),
            );
            return;
        }
        let known = self.inner.registry().node(&sender).is_some();
        if !known && self.inner.registry().node_count() >= self.inner.limits.max_nodes {
            self.inner.metrics.limit_hit(
                Limit::InfoRefused,
                format_args!(
                    "INFO of '{sender}' refused: already {} nodes known",
                    self.inner.limits.max_nodes
                ),
            );
            return;
        }
        // Only a link that authenticates its peer makes the INFO the node's own word on where
        // it can be reached; what it says of others is always hearsay.
        let source = match link {
            LinkKind::Nats | LinkKind::Kafka => PeerSource::Hearsay,
            _ => PeerSource::Itself,
        };
        for transport in &self.inner.transports {
            transport.learn_peer(&sender, &info.addresses, source);
            for peer in &info.peers {
                if *peer.node_id != *self.inner.node_id {
                    transport.learn_gossip(peer);
                }
            }
        }
        let services = info.services.len();
        let change = self.inner.registry_mut().apply_info(&sender, info, link);
        match change {
            NodeChange::Joined => {
                tracing::info!(peer = %sender, %link, services, "node connected");
                self.internal_event("$node.connected", &sender);
                self.gossip();
            }
            NodeChange::Updated => self.internal_event("$services.changed", &sender),
            NodeChange::Unchanged => {}
        }
    }

    /// Passes on the peers we know (our INFO, same seq) so a newcomer and the rest of the mesh
    /// find each other even when they joined through different seeds.
    fn gossip(&self) {
        let info = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
        let broker = self.clone();
        tokio::spawn(async move {
            for transport in &broker.inner.transports {
                if let Err(err) = transport.broadcast(&info).await {
                    tracing::debug!(%err, "gossip not sent");
                }
            }
        });
    }

    /// Wakes whoever waits on the registry and raises `event` (and `$services.changed`) here.
    pub(super) fn internal_event(&self, event: &str, node_id: &str) {
        self.inner.mark_registry_changed();
        self.report_registry_sizes();
        let data = match encode_msgpack(&serde_json::json!({ "node": node_id })) {
            Ok(data) => data,
            Err(err) => return tracing::warn!(%event, %err, "internal event failed"),
        };
        self.raise_local(event, data.clone());
        if event != "$services.changed" {
            self.raise_local("$services.changed", data);
        }
    }

    /// Asks one node for its INFO.
    pub(crate) fn discover(&self, node_id: &Arc<str>) {
        let link = self.inner.registry().node(node_id).map(|n| n.link);
        let discover = Packet::new(
            self.inner.node_id.clone(),
            PacketBody::Discover(Discover {}),
        );
        for transport in &self.inner.transports {
            if link.is_none_or(|l| transport.carries(l)) {
                let (transport, node_id, discover) =
                    (transport.clone(), node_id.clone(), discover.clone());
                tokio::spawn(async move {
                    if let Err(err) = transport.send(&node_id, &discover).await {
                        tracing::debug!(peer = %node_id, %err, "DISCOVER not sent");
                    }
                });
            }
        }
    }

    /// Announces our INFO and asks every reachable node for theirs — in that order, so a peer
    /// has met us before its reply lets us call it.
    pub(crate) async fn discover_all(&self) {
        let discover = Packet::new(
            self.inner.node_id.clone(),
            PacketBody::Discover(Discover {}),
        );
        let info = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
        for transport in &self.inner.transports {
            for packet in [&info, &discover] {
                if let Err(err) = transport.broadcast(packet).await {
                    tracing::debug!(%err, "discovery broadcast failed");
                }
            }
        }
    }
}
