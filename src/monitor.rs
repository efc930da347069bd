//! A live view of the whole cluster, computed from every node's metric snapshots — what
//! `phalanx top` and the gateway's dashboard show. Rates and quantiles come from the difference
//! between two snapshots of each node, merged across nodes by histogram: never an average of
//! percentiles.

use crate::CallOptions;
use crate::broker::Broker;
use crate::cluster::NodeInfo;
use crate::metrics::{BreakerMetrics, LatencyHistogram, LinkMetrics, MetricsSnapshot};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Refreshes of history kept per action (a minute at one per second).
pub const HISTORY: usize = 60;

/// A node as the cluster view shows it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NodeRow {
    /// The node's id.
    pub id: String,
    /// Its host id, shortened.
    pub host: String,
    /// How the watching node reaches it.
    pub link: String,
    /// CPU use in percent, from its last heartbeat.
    pub cpu: Option<f32>,
    /// Milliseconds since it started (from its snapshot).
    pub uptime_ms: Option<u64>,
    /// Handlers running on it.
    pub in_flight: Option<usize>,
    /// Whether it is up (within its lease).
    pub available: bool,
}

/// An action over the last refresh interval, across every node that serves it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ActionRow {
    /// The action's full name.
    pub name: String,
    /// Calls served per second.
    pub calls_per_s: f64,
    /// Of which failed, per second.
    pub errors_per_s: f64,
    /// Median latency of the interval, merged across nodes.
    pub p50_ms: f64,
    /// 99th percentile latency of the interval, merged across nodes.
    pub p99_ms: f64,
    /// Nodes serving it.
    pub nodes: usize,
    /// Circuits not closed for it.
    pub open_circuits: usize,
    /// Calls per second, oldest first.
    pub history: Vec<f64>,
}

/// An event, received per second across the cluster.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct EventRow {
    /// The event's name.
    pub name: String,
    /// Received per second, across the cluster.
    pub per_s: f64,
}

/// A link between two nodes, as the nodes' traffic counters show it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct LinkRow {
    /// One end (the node that counted the traffic).
    pub from: String,
    /// The other end.
    pub to: String,
    /// `quic`, `shm`, `nats`…
    pub kind: String,
    /// Bytes both ways per second over the last interval.
    pub bytes_per_s: f64,
}

/// The cluster as last seen, and what is needed to compute the next view.
///
/// ```no_run
/// # async fn watch(broker: &phalanx::Broker) {
/// use std::time::Duration;
/// let mut cluster = phalanx::monitor::Cluster::default();
/// loop {
///     cluster.refresh(broker, Duration::from_secs(1)).await;
///     for action in &cluster.actions {
///         println!("{} {:.0}/s p99 {:.2} ms", action.name, action.calls_per_s, action.p99_ms);
///     }
///     tokio::time::sleep(Duration::from_secs(1)).await;
/// }
/// # }
/// ```
#[derive(Debug, Default, Serialize)]
pub struct Cluster {
    #[serde(skip)]
    previous: BTreeMap<String, (Instant, MetricsSnapshot)>,
    #[serde(skip)]
    history: BTreeMap<String, VecDeque<f64>>,
    /// Every node but the watching one.
    pub nodes: Vec<NodeRow>,
    /// Links between nodes, with their kind.
    pub links: Vec<LinkRow>,
    /// Every action served, with rates and latencies of the last interval.
    pub actions: Vec<ActionRow>,
    /// Events received per second.
    pub events: Vec<EventRow>,
    /// Circuits that are not closed, per node.
    pub breakers: Vec<BreakerMetrics>,
}

impl Cluster {
    /// Asks every available node for its metrics (each within `timeout`) and recomputes the
    /// view: rates and quantiles over the time since the previous refresh.
    pub async fn refresh(&mut self, broker: &Broker, timeout: Duration) {
        let me = broker.node_id().to_owned();
        let nodes: Vec<NodeInfo> = broker.nodes().into_iter().filter(|n| n.id != me).collect();
        let asks = nodes.iter().filter(|n| n.available).map(|n| {
            let options = CallOptions::new().node(n.id.clone()).timeout(timeout);
            let id = n.id.clone();
            async move {
                let snapshot = broker
                    .call_with::<MetricsSnapshot>("$node.metrics", (), options)
                    .await;
                (id, snapshot.ok())
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let now = Instant::now();
        let mut current: BTreeMap<String, (Instant, MetricsSnapshot)> = BTreeMap::new();
        for (id, snapshot) in answers {
            if let Some(snapshot) = snapshot {
                current.insert(id, (now, snapshot));
            }
        }
        self.nodes = nodes
            .iter()
            .map(|n| {
                let snapshot = current.get(&n.id).map(|(_, s)| s);
                NodeRow {
                    id: n.id.clone(),
                    host: n.host_id.chars().take(12).collect(),
                    link: n.link.to_string(),
                    cpu: n.cpu,
                    uptime_ms: snapshot.map(|s| s.uptime_ms),
                    in_flight: snapshot.map(|s| s.in_flight),
                    available: n.available,
                }
            })
            .collect();
        self.compute_rates(&current);
        // A node that did not answer keeps its last snapshot for the next difference.
        for (id, previous) in std::mem::take(&mut self.previous) {
            current.entry(id).or_insert(previous);
        }
        self.previous = current;
    }

    fn compute_rates(&mut self, current: &BTreeMap<String, (Instant, MetricsSnapshot)>) {
        #[derive(Default)]
        struct Sum {
            calls: f64,
            errors: f64,
            latency: LatencyHistogram,
            nodes: usize,
            open: usize,
        }
        let mut actions: BTreeMap<String, Sum> = BTreeMap::new();
        self.links.clear();
        self.breakers.clear();
        // Rates need an earlier snapshot of some node: the first look only sets the baseline.
        let measured = current.keys().any(|id| self.previous.contains_key(id));
        let mut events: BTreeMap<String, f64> = BTreeMap::new();
        for (id, (at, snapshot)) in current {
            let before = self.previous.get(id);
            let seconds = before
                .map(|(then, _)| at.duration_since(*then).as_secs_f64())
                .filter(|s| *s > 0.0);
            for (name, metrics) in snapshot.handled.iter().filter(|(n, _)| !n.starts_with('$')) {
                let sum = actions.entry(name.clone()).or_default();
                sum.nodes += 1;
                let earlier = before.and_then(|(_, s)| s.handled.get(name));
                if let (Some(seconds), Some(earlier)) = (seconds, earlier) {
                    sum.calls += metrics.total.saturating_sub(earlier.total) as f64 / seconds;
                    sum.errors += metrics.errors.saturating_sub(earlier.errors) as f64 / seconds;
                    sum.latency.merge(&metrics.latency.since(&earlier.latency));
                }
            }
            for breaker in &snapshot.breakers {
                actions.entry(breaker.action.clone()).or_default().open += 1;
                self.breakers.push(breaker.clone());
            }
            for link in snapshot.links.iter().filter(|l| l.peer != "*") {
                let earlier = before.and_then(|(_, s)| {
                    s.links
                        .iter()
                        .find(|e| e.peer == link.peer && e.link == link.link)
                });
                let moved = |l: &LinkMetrics| l.bytes_sent + l.bytes_received;
                let bytes_per_s = match (seconds, earlier) {
                    (Some(seconds), Some(earlier)) => {
                        moved(link).saturating_sub(moved(earlier)) as f64 / seconds
                    }
                    _ => 0.0,
                };
                self.links.push(LinkRow {
                    from: id.clone(),
                    to: link.peer.clone(),
                    kind: link.link.clone(),
                    bytes_per_s,
                });
            }
            for (name, count) in snapshot.events_received.iter() {
                let earlier = before.and_then(|(_, s)| s.events_received.get(name));
                if let (Some(seconds), Some(earlier)) = (seconds, earlier) {
                    *events.entry(name.clone()).or_default() +=
                        count.saturating_sub(*earlier) as f64 / seconds;
                } else {
                    events.entry(name.clone()).or_default();
                }
            }
        }
        self.actions = actions
            .into_iter()
            .map(|(name, sum)| {
                let history = self.history.entry(name.clone()).or_default();
                if measured {
                    history.push_back(sum.calls);
                }
                while history.len() > HISTORY {
                    history.pop_front();
                }
                ActionRow {
                    p50_ms: sum.latency.quantile_ms(0.5),
                    p99_ms: sum.latency.quantile_ms(0.99),
                    calls_per_s: sum.calls,
                    errors_per_s: sum.errors,
                    nodes: sum.nodes,
                    open_circuits: sum.open,
                    history: history.iter().copied().collect(),
                    name,
                }
            })
            .collect();
        self.events = events
            .into_iter()
            .filter(|(name, _)| !name.starts_with('$'))
            .map(|(name, per_s)| EventRow { name, per_s })
            .collect();
    }
}
