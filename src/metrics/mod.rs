//! Metrics: calls, errors and latency per action, in-flight handlers, events, traffic per link
//! and peer, circuit states and registry sizes.
//!
//! Everything is reported twice, on purpose:
//! - through the [`metrics`](https://docs.rs/metrics) facade, so any exporter sees it (install the
//!   recorder before starting the broker; [`serve_prometheus`] does that for a `/metrics`
//!   endpoint, behind the `prometheus` feature). Every series carries a `node` label.
//! - into the broker's own counters, which the facade cannot read back: [`Broker::metrics`](crate::Broker::metrics) and
//!   the `$node.metrics` action return a [`MetricsSnapshot`] to anyone, the CLI included.
//!
//! | series | kind | labels |
//! |---|---|---|
//! | `phalanx_calls_total`, `phalanx_call_errors_total` | counter | action (errors: code) |
//! | `phalanx_call_duration_seconds` | histogram | action |
//! | `phalanx_handled_total`, `phalanx_handler_errors_total` | counter | action (errors: code) |
//! | `phalanx_handler_duration_seconds` | histogram | action |
//! | `phalanx_in_flight` | gauge (sampled with each heartbeat) | |
//! | `phalanx_events_emitted_total`, `phalanx_events_received_total` | counter | event |
//! | `phalanx_packets_sent_total`, `phalanx_packets_received_total` | counter | link, peer |
//! | `phalanx_bytes_sent_total`, `phalanx_bytes_received_total` | counter | link, peer |
//! | `phalanx_circuit_breaker_state` | gauge (0 closed, 1 half-open, 2 open) | action, peer |
//! | `phalanx_registry_nodes`, `phalanx_registry_actions` | gauge | |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! let broker = phalanx::Broker::builder().start().await?;
//! broker.service("math").action("inc", |_ctx, x: i32| async move { Ok(x + 1) }).start().await?;
//! broker.call::<i32>("math.inc", 1).await?;
//! let snapshot = broker.metrics();
//! assert_eq!(snapshot.calls["math.inc"].total, 1);
//! assert_eq!(snapshot.handled["math.inc"].errors, 0);
//! # broker.stop().await;
//! # Ok(()) }
//! ```

mod histogram;
pub use histogram::LatencyHistogram;

use crate::error::Result;
use crate::limits::{Limit, LimitHits};
use crate::registry::BreakerState;
use crate::transport::{Direction, LinkKind, TrafficMeter};
use histogram::Histogram;
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Counters of one action on one side (calls made, or calls handled).
struct ActionStats {
    total: AtomicU64,
    errors: AtomicU64,
    latency: Histogram,
    total_series: metrics::Counter,
    latency_series: metrics::Histogram,
}

/// Deliveries of one event in one direction.
struct EventStats {
    count: AtomicU64,
    series: metrics::Counter,
}

/// Traffic with one peer over one link kind.
struct LinkStats {
    packets_sent: AtomicU64,
    packets_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    writes: AtomicU64,
    /// Packets sent, packets received, bytes sent, bytes received, writes.
    series: [metrics::Counter; 5],
}

/// Entries created on first use and then only read: a lookup by borrowed key, no allocation
/// once the entry exists.
struct Cache<K, V>(RwLock<HashMap<K, Arc<V>>>);

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<K: std::hash::Hash + Eq, V> Cache<K, V> {
    fn get<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V)) -> Arc<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(value) = self.0.read().expect("metrics lock").get(key) {
            return value.clone();
        }
        let (key, value) = make();
        self.0
            .write()
            .expect("metrics lock")
            .entry(key)
            .or_insert_with(|| Arc::new(value))
            .clone()
    }

    /// Runs `f` on the entry of `key` (made by `make` if missing), under the read lock when it
    /// exists: no reference count to take and drop.
    fn with<Q, R>(&self, key: &Q, make: impl FnOnce() -> (K, V), f: impl FnOnce(&V) -> R) -> R
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(value) = self.0.read().expect("metrics lock").get(key) {
            return f(value);
        }
        f(&self.get(key, make))
    }

    fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.write().expect("metrics lock").remove(key);
    }

    fn collect<T>(&self, f: impl FnMut((&K, &Arc<V>)) -> T) -> Vec<T> {
        self.0.read().expect("metrics lock").iter().map(f).collect()
    }
}

impl<K: std::hash::Hash + Eq + std::borrow::Borrow<str> + for<'a> From<&'a str>, V> Cache<K, V> {
    /// Runs `f` on the entry of `name` as [`Cache::get_named`] finds or makes it; one read lock
    /// and no reference count when it exists.
    fn with_named<R>(
        &self,
        name: &str,
        cap: usize,
        make: impl Fn(&str) -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        if let Some(value) = self.0.read().expect("metrics lock").get(name) {
            return f(value);
        }
        f(&self.get_named(name, cap, make))
    }

    /// The entry of `name` — or, once the cache holds `cap` names, of [`OTHER`] for every new
    /// one: names a peer chooses cannot grow the series without bound.
    fn get_named(&self, name: &str, cap: usize, make: impl Fn(&str) -> V) -> Arc<V> {
        let full = || self.0.read().expect("metrics lock").len() >= cap;
        let exists = || self.0.read().expect("metrics lock").contains_key(name);
        let name = if !exists() && full() { OTHER } else { name };
        self.get(name, || (K::from(name), make(name)))
    }
}

/// An error code as a label: HTTP-like codes as themselves, anything else a peer sent as
/// [`OTHER`] (a peer chooses its errors' codes; it must not choose how many series we keep).
fn code_label(code: u16) -> String {
    if (100..600).contains(&code) {
        code.to_string()
    } else {
        OTHER.to_owned()
    }
}

/// The label of everything beyond a series cap.
pub const OTHER: &str = "(other)";

/// Distinct event names counted per direction; beyond, events count under [`OTHER`].
pub const MAX_EVENT_SERIES: usize = 256;

/// Distinct peers counted per link kind; beyond, traffic counts under [`OTHER`].
pub const MAX_PEER_SERIES: usize = 1024;

/// Which side of a call a counter belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    /// Calls this node made.
    Caller,
    /// Calls this node's handlers served.
    Handler,
}

impl Side {
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Caller => (
                "phalanx_calls_total",
                "phalanx_call_errors_total",
                "phalanx_call_duration_seconds",
            ),
            Self::Handler => (
                "phalanx_handled_total",
                "phalanx_handler_errors_total",
                "phalanx_handler_duration_seconds",
            ),
        }
    }
}

/// What the node itself knows at snapshot time, beside the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeState {
    pub(crate) uptime: std::time::Duration,
    pub(crate) in_flight: usize,
    pub(crate) registry: RegistryMetrics,
}

/// The metrics of one broker.
pub(crate) struct BrokerMetrics {
    node_id: Arc<str>,
    calls: Cache<String, ActionStats>,
    handled: Cache<String, ActionStats>,
    emitted: Cache<String, EventStats>,
    received: Cache<String, EventStats>,
    links: Cache<LinkKind, Cache<Arc<str>, LinkStats>>,
    breakers: Mutex<BTreeMap<(String, String), BreakerState>>,
    limits: LimitHits,
}

impl std::fmt::Debug for BrokerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerMetrics")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl BrokerMetrics {
    pub(crate) fn new(node_id: Arc<str>) -> Self {
        Self {
            limits: LimitHits::new(&node_id),
            node_id,
            calls: Cache::default(),
            handled: Cache::default(),
            emitted: Cache::default(),
            received: Cache::default(),
            links: Cache::default(),
            breakers: Mutex::default(),
        }
    }

    /// Runs `f` on the stats of `side` of `action`, made on first use.
    fn with_stats<R>(&self, side: Side, action: &str, f: impl FnOnce(&ActionStats) -> R) -> R {
        let cache = match side {
            Side::Caller => &self.calls,
            Side::Handler => &self.handled,
        };
        let make = || {
            let (total, _, latency) = side.names();
            let labels = [
                ("node", self.node_id.to_string()),
                ("action", action.to_owned()),
            ];
            let stats = ActionStats {
                total: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                latency: Histogram::default(),
                total_series: metrics::counter!(total, &labels),
                latency_series: metrics::histogram!(latency, &labels),
            };
            (action.to_owned(), stats)
        };
        cache.with(action, make, f)
    }

    /// Drops what was counted for `peer` (a node forgotten for good).
    pub(crate) fn forget_peer(&self, peer: &str) {
        for (_, peers) in self.links.collect(|(k, v)| (*k, v.clone())) {
            peers.remove(peer);
        }
    }

    /// Counts one hit of `limit` (and logs `detail`, rate-limited).
    pub(crate) fn limit_hit(&self, limit: Limit, detail: std::fmt::Arguments<'_>) {
        self.limits.hit(limit, detail);
    }

    /// Records one finished call that took `elapsed` (`Err(code)` when it failed).
    pub(crate) fn record(
        &self,
        side: Side,
        action: &str,
        elapsed: Duration,
        result: Result<(), u16>,
    ) {
        self.with_stats(side, action, |stats| {
            stats.total.fetch_add(1, Ordering::Relaxed);
            stats.latency.record(elapsed);
            stats.total_series.increment(1);
            stats.latency_series.record(elapsed.as_secs_f64());
            if result.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        if let Err(code) = result {
            let (_, errors, _) = side.names();
            metrics::counter!(errors, "node" => self.node_id.to_string(), "action" => action.to_owned(), "code" => code_label(code))
                .increment(1);
        }
    }

    /// Counts an event this node emitted (`emitted`) or received.
    pub(crate) fn count_event(&self, emitted: bool, event: &str) {
        let (cache, name) = if emitted {
            (&self.emitted, "phalanx_events_emitted_total")
        } else {
            (&self.received, "phalanx_events_received_total")
        };
        let stats = cache.get_named(event, MAX_EVENT_SERIES, |event| EventStats {
            count: AtomicU64::new(0),
            series: metrics::counter!(name, "node" => self.node_id.to_string(), "event" => event.to_owned()),
        });
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats.series.increment(1);
    }
}

impl TrafficMeter for BrokerMetrics {
    fn limit_hit(&self, limit: Limit, n: u64, detail: &str) {
        self.limits.hits(limit, n, format_args!("{detail}"));
    }

    fn record(&self, peer: &str, link: LinkKind, direction: Direction, bytes: usize) {
        self.with_link(peer, link, |stats| {
            let bytes = bytes as u64;
            let (packets, octets, series) = match direction {
                Direction::Sent => (&stats.packets_sent, &stats.bytes_sent, 0),
                Direction::Received => (&stats.packets_received, &stats.bytes_received, 1),
            };
            packets.fetch_add(1, Ordering::Relaxed);
            octets.fetch_add(bytes, Ordering::Relaxed);
            stats.series[series].increment(1);
            stats.series[series + 2].increment(bytes);
        });
    }

    fn wrote(&self, peer: &str, link: LinkKind) {
        self.with_link(peer, link, |stats| {
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.series[4].increment(1);
        });
    }
}

impl BrokerMetrics {
    /// Runs `f` on the traffic figures of `peer` over `link`. Every frame passes here: read
    /// locks only, no reference counts, once the peer is known.
    fn with_link(&self, peer: &str, link: LinkKind, f: impl FnOnce(&LinkStats)) {
        let make = |peer: &str| {
            let labels = [
                ("node", self.node_id.to_string()),
                ("link", link.as_str().to_owned()),
                ("peer", peer.to_owned()),
            ];
            LinkStats {
                packets_sent: AtomicU64::new(0),
                packets_received: AtomicU64::new(0),
                bytes_sent: AtomicU64::new(0),
                bytes_received: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                series: [
                    metrics::counter!("phalanx_packets_sent_total", &labels),
                    metrics::counter!("phalanx_packets_received_total", &labels),
                    metrics::counter!("phalanx_bytes_sent_total", &labels),
                    metrics::counter!("phalanx_bytes_received_total", &labels),
                    metrics::counter!("phalanx_link_writes_total", &labels),
                ],
            }
        };
        self.links.with(
            &link,
            || (link, Cache::default()),
            |peers| peers.with_named(peer, MAX_PEER_SERIES, make, f),
        );
    }
    /// Records a circuit's new state.
    pub(crate) fn breaker_changed(&self, action: &str, peer: &str, state: BreakerState) {
        metrics::gauge!("phalanx_circuit_breaker_state", "node" => self.node_id.to_string(), "action" => action.to_owned(), "peer" => peer.to_owned())
            .set(state.as_gauge());
        let mut breakers = self.breakers.lock().expect("metrics lock");
        let key = (action.to_owned(), peer.to_owned());
        if state == BreakerState::Closed {
            breakers.remove(&key);
        } else {
            breakers.insert(key, state);
        }
    }

    /// Records the registry's sizes.
    pub(crate) fn registry_sizes(&self, nodes: usize, actions: usize) {
        metrics::gauge!("phalanx_registry_nodes", "node" => self.node_id.to_string())
            .set(nodes as f64);
        metrics::gauge!("phalanx_registry_actions", "node" => self.node_id.to_string())
            .set(actions as f64);
    }

    /// Records the handlers running now (sampled with each heartbeat, not counted per call).
    pub(crate) fn in_flight(&self, running: usize) {
        metrics::gauge!("phalanx_in_flight", "node" => self.node_id.to_string())
            .set(running as f64);
    }

    /// Everything counted so far, with the node's current `state`.
    pub(crate) fn snapshot(&self, state: NodeState) -> MetricsSnapshot {
        let actions = |cache: &Cache<String, ActionStats>| {
            cache
                .collect(|(name, s)| {
                    let latency = s.latency.snapshot();
                    let metrics = ActionMetrics {
                        total: s.total.load(Ordering::Relaxed),
                        errors: s.errors.load(Ordering::Relaxed),
                        p50_ms: latency.quantile_ms(0.5),
                        p99_ms: latency.quantile_ms(0.99),
                        latency,
                    };
                    (name.clone(), metrics)
                })
                .into_iter()
                .collect()
        };
        let events = |cache: &Cache<String, EventStats>| {
            cache
                .collect(|(name, s)| (name.clone(), s.count.load(Ordering::Relaxed)))
                .into_iter()
                .collect()
        };
        let mut links: Vec<LinkMetrics> = self
            .links
            .collect(|(link, peers)| {
                peers.collect(|(peer, s)| LinkMetrics {
                    link: link.as_str().to_owned(),
                    peer: peer.to_string(),
                    packets_sent: s.packets_sent.load(Ordering::Relaxed),
                    packets_received: s.packets_received.load(Ordering::Relaxed),
                    bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
                    bytes_received: s.bytes_received.load(Ordering::Relaxed),
                    writes: s.writes.load(Ordering::Relaxed),
                })
            })
            .into_iter()
            .flatten()
            .collect();
        links.sort_by(|a, b| (&a.link, &a.peer).cmp(&(&b.link, &b.peer)));
        MetricsSnapshot {
            node_id: self.node_id.to_string(),
            uptime_ms: state.uptime.as_millis() as u64,
            in_flight: state.in_flight,
            calls: actions(&self.calls),
            handled: actions(&self.handled),
            events_emitted: events(&self.emitted),
            events_received: events(&self.received),
            links,
            breakers: self
                .breakers
                .lock()
                .expect("metrics lock")
                .iter()
                .map(|((action, node_id), state)| BreakerMetrics {
                    action: action.clone(),
                    node_id: node_id.clone(),
                    state: *state,
                })
                .collect(),
            registry: state.registry,
            limit_hits: self.limits.snapshot(),
        }
    }
}

/// What `$node.metrics` returns: this node's counters since it started.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// The node.
    pub node_id: String,
    /// Milliseconds since the broker started.
    pub uptime_ms: u64,
    /// Handlers running now.
    pub in_flight: usize,
    /// Calls this node made, per action.
    pub calls: BTreeMap<String, ActionMetrics>,
    /// Calls this node's handlers served (from anywhere), per action.
    pub handled: BTreeMap<String, ActionMetrics>,
    /// Events this node emitted or broadcast, per event.
    pub events_emitted: BTreeMap<String, u64>,
    /// Events this node's handlers received, per event.
    pub events_received: BTreeMap<String, u64>,
    /// Traffic per link kind and peer.
    pub links: Vec<LinkMetrics>,
    /// Circuits that are not closed.
    pub breakers: Vec<BreakerMetrics>,
    /// Registry sizes.
    pub registry: RegistryMetrics,
    /// How often each of the node's [limits](crate::limits) bit, by limit name.
    #[serde(default)]
    pub limit_hits: BTreeMap<String, u64>,
}

/// Counters of one action.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ActionMetrics {
    /// Calls finished.
    pub total: u64,
    /// Of which failed.
    pub errors: u64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Every latency counted, to merge with other nodes' or to subtract an earlier snapshot.
    #[serde(default)]
    pub latency: LatencyHistogram,
}

/// Traffic with one peer over one link kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LinkMetrics {
    /// `quic`, `nats`, `inproc`…
    pub link: String,
    /// The peer's node id (`*` for bus broadcasts).
    pub peer: String,
    /// Frames sent.
    pub packets_sent: u64,
    /// Frames received.
    pub packets_received: u64,
    /// Bytes sent (frames, with their length prefix).
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Writes to the wire, for transports that write a burst's frames together (the mesh):
    /// `packets_sent / writes` frames per write.
    #[serde(default)]
    pub writes: u64,
}

/// One circuit that is not closed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BreakerMetrics {
    /// The action.
    pub action: String,
    /// The node serving it.
    pub node_id: String,
    /// Open or half-open.
    pub state: BreakerState,
}

/// Registry sizes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RegistryMetrics {
    /// Available remote nodes.
    pub nodes: usize,
    /// Distinct actions.
    pub actions: usize,
    /// Event subscriptions.
    pub subscriptions: usize,
}

/// Installs a Prometheus recorder for the `metrics` facade and serves it on `addr` at
/// `/metrics`. Call it inside a Tokio runtime, before starting brokers. Feature `prometheus`.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> phalanx::Result<()> {
/// phalanx::metrics::serve_prometheus("127.0.0.1:9464".parse().unwrap())?;
/// let broker = phalanx::Broker::builder().start().await?;
/// # broker.stop().await;
/// # Ok(()) }
/// ```
#[cfg(feature = "prometheus")]
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| crate::Error::transport(format!("cannot serve metrics on {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_peers_a_peer_chooses_cannot_grow_the_series_without_bound() {
        let metrics = BrokerMetrics::new("n".into());
        for i in 0..MAX_EVENT_SERIES + 100 {
            metrics.count_event(false, &format!("spam.{i}"));
        }
        for i in 0..MAX_PEER_SERIES + 100 {
            TrafficMeter::record(
                &metrics,
                &format!("ghost-{i}"),
                LinkKind::Nats,
                Direction::Received,
                10,
            );
        }
        assert_eq!(
            metrics.received.0.read().unwrap().len(),
            MAX_EVENT_SERIES + 1
        );
        let other = metrics.received.get(OTHER, || unreachable!());
        assert_eq!(other.count.load(Ordering::Relaxed), 100);
        let peers = metrics.links.get(&LinkKind::Nats, || unreachable!());
        assert_eq!(peers.0.read().unwrap().len(), MAX_PEER_SERIES + 1);
        metrics.forget_peer("ghost-1");
        assert_eq!(peers.0.read().unwrap().len(), MAX_PEER_SERIES);
        assert_eq!(code_label(404), "404");
        assert_eq!(code_label(9999), OTHER);
    }
}
