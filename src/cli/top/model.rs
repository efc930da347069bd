//! What `phalanx top` shows, computed from the nodes' metric snapshots: per-second rates and
//! windowed quantiles from the difference between two snapshots of each node, merged across
//! nodes by histogram — never by averaging percentiles.

use phalanx::cluster::NodeInfo;
use phalanx::metrics::{LatencyHistogram, MetricsSnapshot};
use phalanx::{Broker, CallOptions};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Refreshes kept for the sparklines (a minute at one per second).
pub(super) const HISTORY: usize = 60;

/// One node's row.
#[derive(Debug, Clone)]
pub(super) struct NodeRow {
    pub(super) id: String,
    pub(super) host: String,
    pub(super) link: String,
    pub(super) cpu: Option<f32>,
    pub(super) uptime: Option<Duration>,
    pub(super) in_flight: Option<usize>,
    pub(super) available: bool,
}

/// One action's row, over the last refresh interval, across every node that serves it.
#[derive(Debug, Clone)]
pub(super) struct ActionRow {
    pub(super) name: String,
    pub(super) calls_per_s: f64,
    pub(super) errors_per_s: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) nodes: usize,
    pub(super) open_circuits: usize,
    /// Calls per second, oldest first.
    pub(super) history: Vec<f64>,
}

/// One event's row.
#[derive(Debug, Clone)]
pub(super) struct EventRow {
    pub(super) name: String,
    pub(super) per_s: f64,
}

/// The cluster as last seen, and what is needed to compute the next view.
#[derive(Debug, Default)]
pub(super) struct Cluster {
    previous: BTreeMap<String, (Instant, MetricsSnapshot)>,
    history: BTreeMap<String, VecDeque<f64>>,
    pub(super) nodes: Vec<NodeRow>,
    pub(super) actions: Vec<ActionRow>,
    pub(super) events: Vec<EventRow>,
}

impl Cluster {
    /// Asks every available node for its metrics and recomputes the view.
    pub(super) async fn refresh(&mut self, broker: &Broker, timeout: Duration) {
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
                    uptime: snapshot.map(|s| Duration::from_millis(s.uptime_ms)),
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

/// How the actions are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum SortBy {
    #[default]
    Calls,
    Errors,
    P99,
    Name,
}

impl SortBy {
    /// The next order (the `s` key).
    pub(super) fn next(self) -> Self {
        match self {
            Self::Calls => Self::Errors,
            Self::Errors => Self::P99,
            Self::P99 => Self::Name,
            Self::Name => Self::Calls,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Calls => "calls/s",
            Self::Errors => "errors/s",
            Self::P99 => "p99",
            Self::Name => "name",
        }
    }

    /// `actions` in this order, keeping those whose name contains `filter`.
    pub(super) fn apply(self, actions: &[ActionRow], filter: &str) -> Vec<ActionRow> {
        let mut shown: Vec<ActionRow> = actions
            .iter()
            .filter(|a| a.name.contains(filter))
            .cloned()
            .collect();
        let desc = |a: f64, b: f64| b.total_cmp(&a);
        match self {
            Self::Calls => shown.sort_by(|a, b| desc(a.calls_per_s, b.calls_per_s)),
            Self::Errors => shown.sort_by(|a, b| desc(a.errors_per_s, b.errors_per_s)),
            Self::P99 => shown.sort_by(|a, b| desc(a.p99_ms, b.p99_ms)),
            Self::Name => shown.sort_by(|a, b| a.name.cmp(&b.name)),
        }
        shown
    }
}

/// A sparkline of `values` in block characters, scaled to their maximum.
pub(super) fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let shown = &values[values.len().saturating_sub(width)..];
    let max = shown.iter().copied().fold(0.0, f64::max);
    shown
        .iter()
        .map(|v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// `1h02m`, `3m04s`, `12s`.
pub(super) fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
