//! What a layer may use of the node it serves, handed to it once when the broker starts.
//!
//! Layers sit below the broker and never hold it: a layer that reports (the metrics layer) or
//! announces (the circuit breaker's `$circuit-breaker.*` events) gets this handle instead.

use crate::metrics::BrokerMetrics;
use crate::payload::encode_msgpack;
use bytes::Bytes;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// Raises an event (name, MessagePack data) on the listeners of this node only.
pub(crate) type LocalEventSink = dyn Fn(&str, Bytes) + Send + Sync;

/// The node a layer serves: its id, its metrics and its local event bus.
///
/// ```
/// use phalanx::middleware::{Middleware, NodeHandle};
///
/// /// Says hello on this node's bus when its broker starts.
/// struct Hello;
///
/// impl Middleware for Hello {
///     fn name(&self) -> &'static str { "hello" }
///     fn on_start(&self, node: &NodeHandle) {
///         node.broadcast_local("hello.started", &node.node_id());
///     }
/// }
/// # let _ = Hello;
/// ```
#[derive(Clone)]
pub struct NodeHandle {
    node_id: Arc<str>,
    pub(crate) metrics: Arc<BrokerMetrics>,
    events: Arc<LocalEventSink>,
}

impl fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// A handle on the node `node_id`, whose local events go to `events`.
    pub(crate) fn new(
        node_id: Arc<str>,
        metrics: Arc<BrokerMetrics>,
        events: Arc<LocalEventSink>,
    ) -> Self {
        Self {
            node_id,
            metrics,
            events,
        }
    }

    /// The node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Raises `event` on this node's listeners, outside the emit middleware and without
    /// waiting for them (safe to call while holding a lock). An unencodable `data` is logged.
    pub fn broadcast_local<T: Serialize + ?Sized>(&self, event: &str, data: &T) {
        match encode_msgpack(data) {
            Ok(data) => (self.events)(event, data),
            Err(err) => tracing::warn!(%event, %err, "local event not raised"),
        }
    }
}
