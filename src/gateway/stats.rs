//! What a gateway counts, and `/metrics`: the node's metrics and the gateway's in the Prometheus
//! text format.

use crate::metrics::MetricsSnapshot;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters of one gateway.
#[derive(Debug, Default)]
pub(super) struct GatewayStats {
    /// Answers by status class: 1xx … 5xx.
    by_class: [AtomicU64; 5],
    pub(super) rate_limited: AtomicU64,
    pub(super) refused_auth: AtomicU64,
    pub(super) too_large: AtomicU64,
    pub(super) event_clients: AtomicI64,
    pub(super) events_dropped: AtomicU64,
}

impl GatewayStats {
    pub(super) fn answered(&self, status: u16) {
        if let Some(class) = self.by_class.get(usize::from(status / 100).wrapping_sub(1)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The node's and the gateway's figures in the Prometheus text format.
    pub(super) fn render(&self, node: &MetricsSnapshot) -> String {
        let mut out = String::with_capacity(4096);
        let label = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let node_label = format!("node=\"{}\"", label(&node.node_id));
        let per_action =
            |map: &std::collections::BTreeMap<String, crate::metrics::ActionMetrics>,
             pick: fn(&crate::metrics::ActionMetrics) -> f64| {
                map.iter()
                    .map(|(action, m)| {
                        (
                            format!("{{{node_label},action=\"{}\"}}", label(action)),
                            pick(m),
                        )
                    })
                    .collect::<Vec<_>>()
            };
        family(
            "phalanx_calls_total",
            "counter",
            "Calls this node made, per action.",
            per_action(&node.calls, |m| m.total as f64),
        );
        family(
            "phalanx_call_errors_total",
            "counter",
            "Calls this node made that failed, per action.",
            per_action(&node.calls, |m| m.errors as f64),
        );
        family(
            "phalanx_call_p50_seconds",
            "gauge",
            "Median latency of this node's calls, per action.",
            per_action(&node.calls, |m| m.p50_ms / 1000.0),
        );
        family(
            "phalanx_call_p99_seconds",
            "gauge",
            "99th percentile latency of this node's calls, per action.",
            per_action(&node.calls, |m| m.p99_ms / 1000.0),
        );
        family(
            "phalanx_handled_total",
            "counter",
            "Calls this node's handlers served, per action.",
            per_action(&node.handled, |m| m.total as f64),
        );
        family(
            "phalanx_in_flight",
            "gauge",
            "Handlers running now.",
            vec![(format!("{{{node_label}}}"), node.in_flight as f64)],
        );
        family(
            "phalanx_nodes",
            "gauge",
            "Nodes known to this node.",
            vec![(format!("{{{node_label}}}"), node.registry.nodes as f64)],
        );
        family(
            "phalanx_limit_hits_total",
            "counter",
            "How often each limit of the node bit.",
            node.limit_hits
                .iter()
                .map(|(limit, n)| {
                    (
                        format!("{{{node_label},limit=\"{}\"}}", label(limit)),
                        *n as f64,
                    )
                })
                .collect(),
        );
        family(
            "phalanx_gateway_responses_total",
            "counter",
            "HTTP answers of the gateway, per status class.",
            self.by_class
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        format!("{{{node_label},class=\"{}xx\"}}", i + 1),
                        n.load(Ordering::Relaxed) as f64,
                    )
                })
                .collect(),
        );
        let refusals = [
            ("rate_limited", &self.rate_limited),
            ("authentication", &self.refused_auth),
            ("body_too_large", &self.too_large),
            ("events_dropped", &self.events_dropped),
        ];
        family(
            "phalanx_gateway_refusals_total",
            "counter",
            "Requests and events the gateway refused or dropped, per reason.",
            refusals
                .iter()
                .map(|(reason, n)| {
                    (
                        format!("{{{node_label},reason=\"{reason}\"}}"),
                        n.load(Ordering::Relaxed) as f64,
                    )
                })
                .collect(),
        );
        family(
            "phalanx_gateway_event_clients",
            "gauge",
            "Browsers connected to event streams.",
            vec![(
                format!("{{{node_label}}}"),
                self.event_clients.load(Ordering::Relaxed) as f64,
            )],
        );
        out
    }
}
