//! The internal `$node` service every broker runs: what this node knows about the cluster.
//!
//! | action | returns |
//! |---|---|
//! | `$node.list` | every known node: id, available, link kind, host, addresses, services |
//! | `$node.services` | every service with the nodes that run it |
//! | `$node.actions` | every action with the nodes that serve it |
//! | `$node.events` | every subscription with its group and nodes |
//! | `$node.health` | this node: id, namespace, uptime, in-flight handlers, known nodes |
//! | `$node.metrics` | this node's [`MetricsSnapshot`](crate::metrics::MetricsSnapshot) |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! let broker = phalanx::Broker::builder().node_id("n1").start().await?;
//! let health = broker.call_json("$node.health", serde_json::Value::Null).await?;
//! assert_eq!(health["node_id"], "n1");
//! # broker.stop().await;
//! # Ok(()) }
//! ```

use super::Broker;
use crate::context::Context;
use crate::error::Result;
use crate::transport::LinkKind;
use serde::Serialize;
use std::collections::BTreeMap;

/// A node as `$node.list` shows it.
#[derive(Debug, Clone, Serialize)]
struct NodeView {
    id: String,
    available: bool,
    local: bool,
    link: LinkKind,
    host_id: String,
    instance_id: String,
    addresses: Vec<String>,
    services: Vec<String>,
    client_version: String,
}

#[derive(Debug, Clone, Serialize)]
struct ServiceView {
    name: String,
    version: Option<String>,
    nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct HealthView {
    node_id: String,
    namespace: String,
    instance_id: String,
    client_version: &'static str,
    pid: u32,
    uptime_ms: u64,
    in_flight: usize,
    nodes_available: usize,
    nodes_known: usize,
}

pub(crate) async fn start(broker: &Broker) -> Result<()> {
    broker
        .service("$node")
        .action(
            "list",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(list(&ctx.broker())) },
        )
        .action(
            "services",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(services(&ctx.broker())) },
        )
        .action(
            "actions",
            |ctx: Context, _: serde::de::IgnoredAny| async move {
                Ok(ctx.broker().inner.registry().action_views())
            },
        )
        .action(
            "events",
            |ctx: Context, _: serde::de::IgnoredAny| async move {
                Ok(ctx.broker().inner.registry().event_views())
            },
        )
        .action(
            "health",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(health(&ctx.broker())) },
        )
        .action(
            "metrics",
            |ctx: Context, _: serde::de::IgnoredAny| async move { Ok(ctx.broker().metrics()) },
        )
        .start()
        .await
}

fn list(broker: &Broker) -> Vec<NodeView> {
    let local = broker.info();
    let mut views = vec![NodeView {
        id: broker.node_id().to_owned(),
        available: !broker.is_stopping(),
        local: true,
        link: LinkKind::Local,
        host_id: local.host_id,
        instance_id: local.instance_id,
        addresses: local.addresses,
        services: local.services.into_iter().map(|s| s.full_name).collect(),
        client_version: local.client_version,
    }];
    let registry = broker.inner.registry();
    let mut remote: Vec<NodeView> = registry
        .nodes()
        .map(|(id, node)| NodeView {
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
        })
        .collect();
    remote.sort_by(|a, b| a.id.cmp(&b.id));
    views.extend(remote);
    views
}

fn services(broker: &Broker) -> Vec<ServiceView> {
    let mut map: BTreeMap<String, ServiceView> = BTreeMap::new();
    for node in list(broker).into_iter().filter(|n| n.available) {
        for service in node.services {
            map.entry(service.clone())
                .or_insert_with(|| ServiceView {
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

fn health(broker: &Broker) -> HealthView {
    let registry = broker.inner.registry();
    HealthView {
        node_id: broker.node_id().to_owned(),
        namespace: broker.namespace().to_owned(),
        instance_id: broker.instance_id().to_owned(),
        client_version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        uptime_ms: broker.uptime().as_millis() as u64,
        in_flight: broker.in_flight(),
        nodes_available: registry.nodes().filter(|(_, n)| n.available).count(),
        nodes_known: registry.nodes().count(),
    }
}
