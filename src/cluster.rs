//! Typed views of the cluster: what the `$node` service of every broker returns, as Rust types.
//!
//! Any node can ask any other (`CallOptions::node`) and decode the answer into these types;
//! [`Broker::nodes`](crate::Broker::nodes) and friends ask the local broker without a call.
//!
//! | action | returns |
//! |---|---|
//! | `$node.list` | `Vec<`[`NodeInfo`]`>`: every known node, this one first |
//! | `$node.services` | `Vec<`[`ServiceInfo`]`>`: every service with the nodes that run it |
//! | `$node.actions` | `Vec<`[`ActionInfo`]`>`: every action with the nodes that serve it |
//! | `$node.events` | `Vec<`[`EventInfo`]`>`: every subscription with its group and nodes |
//! | `$node.health` | [`NodeHealth`]: this node's uptime, load and view of the cluster |
//! | `$node.metrics` | [`MetricsSnapshot`](crate::metrics::MetricsSnapshot) |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::cluster::{NodeHealth, NodeInfo};
//!
//! let broker = phalanx::Broker::builder().node_id("n1").start().await?;
//! let nodes: Vec<NodeInfo> = broker.call("$node.list", ()).await?;
//! assert_eq!((nodes[0].id.as_str(), nodes[0].local), ("n1", true));
//! let health: NodeHealth = broker.call("$node.health", ()).await?;
//! assert_eq!(health.node_id, "n1");
//! # broker.stop().await;
//! # Ok(()) }
//! ```

use crate::transport::LinkKind;
use serde::{Deserialize, Serialize};

/// A node as `$node.list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The node's id.
    pub id: String,
    /// Whether calls may be sent to it now.
    pub available: bool,
    /// Whether it is the node that answered.
    pub local: bool,
    /// How the answering node reaches it.
    pub link: LinkKind,
    /// Its machine, boot and network namespace (equal for nodes that can share memory).
    pub host_id: String,
    /// Changes on every start of the node.
    pub instance_id: String,
    /// Where peers can reach it.
    pub addresses: Vec<String>,
    /// Full names of the services it runs (empty while unavailable).
    pub services: Vec<String>,
    /// The Phalanx version it runs.
    pub client_version: String,
    /// Its CPU use in percent, from its last heartbeat (none for the answering node itself).
    #[serde(default)]
    pub cpu: Option<f32>,
}

/// A service as `$node.services` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// Full name (`v2.users` for version 2 of `users`).
    pub name: String,
    /// The version, if the service has one.
    pub version: Option<String>,
    /// The available nodes that run it.
    pub nodes: Vec<String>,
}

/// An action as `$node.actions` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActionInfo {
    /// Full name (`service.action`).
    pub name: String,
    /// The nodes that serve it.
    pub nodes: Vec<String>,
    /// Whether the answering node serves it itself.
    pub local: bool,
    /// Whether every node serving it declares it safe to run twice.
    #[serde(default)]
    pub idempotent: bool,
    /// The Protobuf messages it takes and answers, for a Protobuf action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<crate::protocol::packet::ProtoTypes>,
}

/// An event subscription as `$node.events` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EventInfo {
    /// The pattern listened to (`*` and `**` wildcards allowed).
    pub name: String,
    /// The group that shares each emitted event.
    pub group: String,
    /// The nodes listening.
    pub nodes: Vec<String>,
}

/// A node's own state, as `$node.health` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeHealth {
    /// The node's id.
    pub node_id: String,
    /// Its namespace.
    pub namespace: String,
    /// Changes on every start of the node.
    pub instance_id: String,
    /// The Phalanx version it runs.
    pub client_version: String,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Handlers running now.
    pub in_flight: usize,
    /// Other nodes it can call now.
    pub nodes_available: usize,
    /// Other nodes it knows of, available or not.
    pub nodes_known: usize,
}
