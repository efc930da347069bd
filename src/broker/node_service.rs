//! The internal `$node` service every broker runs: what this node knows about the cluster, as
//! the typed views of [`cluster`](crate::cluster) (the module docs list the actions).

use super::Broker;
use crate::cluster::{ActionInfo, EventInfo, NodeHealth, NodeInfo, ServiceInfo};
use crate::context::Context;
use crate::error::Result;
use crate::transport::LinkKind;
use std::collections::BTreeMap;

pub(crate) async fn start(broker: &Broker) -> Result<()> {
    broker
        .service("$node")
        .action(
            "list",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().nodes()) },
        )
        .action(
            "services",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().services()) },
        )
        .action(
            "actions",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().actions()) },
        )
        .action(
            "events",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().events()) },
        )
        .action(
            "health",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().health()) },
        )
        .action(
            "metrics",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().metrics()) },
        )
        .start()
        .await
}

impl Broker {
    /// Every node this broker knows, itself first (what `$node.list` returns).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().node_id("solo").start().await?;
    /// let nodes = broker.nodes();
    /// assert_eq!(nodes.len(), 1);
    /// assert!(nodes[0].local && nodes[0].available);
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let broker = self;
        let local = broker.info();
        let mut views = vec![NodeInfo {
            id: broker.node_id().to_owned(),
            available: !broker.is_stopping(),
            local: true,
            link: LinkKind::Local,
            host_id: local.host_id,
            instance_id: local.instance_id,
            addresses: local.addresses,
            services: local.services.into_iter().map(|s| s.full_name).collect(),
            client_version: local.client_version,
            cpu: None,
        }];
        let registry = broker.inner.registry();
        let mut remote: Vec<NodeInfo> = registry
            .nodes()
            .map(|(id, node)| NodeInfo {
                id: id.to_string(),
                available: node.available,
                local: false,
                link: node.link,
                host_id: node.info.host_id.clone(),
                instance_id: node.info.instance_id.clone(),
                addresses: node.info.addresses.clone(),
                services: if node.available {
                    node.info
                        .services
                        .iter()
                        .map(|s| s.full_name.clone())
                        .collect()
                } else {
                    Vec::new()
                },
                client_version: node.info.client_version.clone(),
                cpu: node.cpu,
            })
            .collect();
        remote.sort_by(|a, b| a.id.cmp(&b.id));
        views.extend(remote);
        views
    }

    /// Every service running on an available node, with those nodes (`$node.services`).
    pub fn services(&self) -> Vec<ServiceInfo> {
        let mut map: BTreeMap<String, ServiceInfo> = BTreeMap::new();
        for node in self.nodes().into_iter().filter(|n| n.available) {
            for service in node.services {
                map.entry(service.clone())
                    .or_insert_with(|| ServiceInfo {
                        version: service
                            .split_once('.')
                            .and_then(|(v, _)| v.strip_prefix('v'))
                            .filter(|v| v.chars().all(|c| c.is_ascii_digit()))
                            .map(str::to_owned),
                        name: service,
                        nodes: Vec::new(),
                    })
                    .nodes
                    .push(node.id.clone());
            }
        }
        map.into_values().collect()
    }

    /// Every action with the nodes that serve it (`$node.actions`).
    pub fn actions(&self) -> Vec<ActionInfo> {
        self.inner.registry().action_views()
    }

    /// Every event subscription with its group and nodes (`$node.events`).
    pub fn events(&self) -> Vec<EventInfo> {
        self.inner.registry().event_views()
    }

    /// This node's own state (`$node.health`).
    pub fn health(&self) -> NodeHealth {
        let broker = self;
        let registry = broker.inner.registry();
        NodeHealth {
            node_id: broker.node_id().to_owned(),
            namespace: broker.namespace().to_owned(),
            instance_id: broker.instance_id().to_owned(),
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: broker.uptime().as_millis() as u64,
            in_flight: broker.in_flight(),
            nodes_available: registry.nodes().filter(|(_, n)| n.available).count(),
            nodes_known: registry.nodes().count(),
        }
    }
}
