//! Inspection commands: what the cluster runs and how it is doing, as text tables (or JSON for
//! scripts) — `services`, `actions`, `events`, `info NODE`, `ping [NODE]`, `metrics [NODE]`.

use super::{MeshArgs, print_json, settle};
use clap::{Args, Subcommand};
use phalanx::cluster::NodeHealth;
use phalanx::metrics::MetricsSnapshot;
use phalanx::{Broker, CallOptions, Error, Result};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// What to show.
#[derive(Debug, Subcommand)]
pub(crate) enum Inspect {
    /// The services running in the cluster, with their nodes.
    Services(Output),
    /// The actions served in the cluster, with their nodes.
    Actions(Output),
    /// The event subscriptions in the cluster: pattern, group, nodes.
    Events(Output),
    /// One node: its addresses, link, version, services and health.
    Info {
        /// The node's id.
        node: String,
        #[command(flatten)]
        output: Output,
    },
    /// Round trips over each node's link (PING/PONG, no handler involved).
    Ping {
        /// Only this node (default: every available node).
        node: Option<String>,
        /// Probes per node.
        #[arg(long, default_value_t = 5)]
        count: u32,
        #[command(flatten)]
        output: Output,
    },
    /// The counters of one node (default: every node): calls served per action, with errors,
    /// p50 and p99; calls made; events; limits that bit.
    Metrics {
        /// Only this node.
        node: Option<String>,
        #[command(flatten)]
        output: Output,
    },
}

/// How to print, and how to join the mesh.
#[derive(Debug, Args)]
pub(crate) struct Output {
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    mesh: MeshArgs,
}

impl Inspect {
    fn output(&self) -> &Output {
        match self {
            Self::Services(o) | Self::Actions(o) | Self::Events(o) => o,
            Self::Info { output, .. }
            | Self::Ping { output, .. }
            | Self::Metrics { output, .. } => output,
        }
    }

    fn query(&self) -> Query {
        match self {
            Self::Services(_) => Query::Services,
            Self::Actions(_) => Query::Actions,
            Self::Events(_) => Query::Events,
            Self::Info { node, .. } => Query::Info(node.clone()),
            Self::Ping { node, count, .. } => Query::Ping(node.clone(), *count),
            Self::Metrics { node, .. } => Query::Metrics(node.clone()),
        }
    }
}

/// What to look up, however it was asked for (a command, the REPL).
#[derive(Debug, Clone)]
pub(super) enum Query {
    Nodes,
    Services,
    Actions,
    Events,
    Info(String),
    /// A node (or every one), and how many probes each.
    Ping(Option<String>, u32),
    Metrics(Option<String>),
}

pub(crate) async fn run(command: Inspect) -> Result<ExitCode> {
    let output = command.output();
    let joined = output.mesh.join(Broker::builder()).await?;
    settle(&joined, output.mesh.wait()).await;
    let report = gather(&joined.broker, &command.query()).await;
    joined.broker.stop().await;
    report?.print(output.json);
    Ok(ExitCode::SUCCESS)
}

/// What a query found: as JSON, and as a table.
pub(super) struct Report {
    json: serde_json::Value,
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Report {
    fn new(
        json: impl serde::Serialize,
        headers: &[&'static str],
        rows: impl Iterator<Item = Vec<String>>,
    ) -> Result<Self> {
        Ok(Self {
            json: serde_json::to_value(json)
                .map_err(|e| Error::validation(format!("cannot show as JSON: {e}")))?,
            headers: headers.to_vec(),
            rows: rows.collect(),
        })
    }

    /// Prints the JSON, or the table.
    pub(super) fn print(self, json: bool) {
        if json {
            print_json(&self.json);
        } else {
            table(&self.headers, self.rows.into_iter());
        }
    }
}

pub(super) async fn gather(broker: &Broker, query: &Query) -> Result<Report> {
    // This command's own node is an observer: not part of what it reports.
    let me = broker.node_id().to_owned();
    let others =
        |nodes: &[String]| -> Vec<String> { nodes.iter().filter(|n| **n != me).cloned().collect() };
    match query {
        Query::Nodes => {
            let nodes: Vec<_> = broker.nodes().into_iter().filter(|n| !n.local).collect();
            Report::new(
                &nodes,
                &["NODE", "AVAILABLE", "LINK", "SERVICES"],
                nodes.iter().map(|n| {
                    vec![
                        n.id.clone(),
                        n.available.to_string(),
                        n.link.to_string(),
                        n.services.join(", "),
                    ]
                }),
            )
        }
        Query::Services => {
            let services: Vec<_> = broker
                .services()
                .into_iter()
                .filter(|s| !s.name.starts_with('$'))
                .collect();
            Report::new(
                &services,
                &["SERVICE", "VERSION", "NODES"],
                services.iter().map(|s| {
                    vec![
                        s.name.clone(),
                        s.version.clone().unwrap_or_else(|| "-".into()),
                        others(&s.nodes).join(", "),
                    ]
                }),
            )
        }
        Query::Actions => {
            let actions: Vec<_> = broker
                .actions()
                .into_iter()
                .filter(|a| !a.name.starts_with('$'))
                .collect();
            Report::new(
                &actions,
                &["ACTION", "IDEMPOTENT", "NODES"],
                actions.iter().map(|a| {
                    vec![
                        a.name.clone(),
                        a.idempotent.to_string(),
                        others(&a.nodes).join(", "),
                    ]
                }),
            )
        }
        Query::Events => {
            let events: Vec<_> = broker
                .events()
                .into_iter()
                .filter(|e| !e.group.starts_with('$'))
                .collect();
            Report::new(
                &events,
                &["PATTERN", "GROUP", "NODES"],
                events
                    .iter()
                    .map(|e| vec![e.name.clone(), e.group.clone(), e.nodes.join(", ")]),
            )
        }
        Query::Info(node) => {
            let info = broker
                .nodes()
                .into_iter()
                .find(|n| n.id == *node)
                .ok_or_else(|| Error::rejected(format!("node '{node}' is not known")))?;
            let health: NodeHealth = broker.call_with("$node.health", (), on(node)).await?;
            let lines = [
                ("node", info.id.clone()),
                ("available", info.available.to_string()),
                ("link", info.link.to_string()),
                ("version", info.client_version.clone()),
                ("addresses", info.addresses.join(", ")),
                ("services", info.services.join(", ")),
                ("namespace", health.namespace.clone()),
                ("pid", health.pid.to_string()),
                ("uptime", format!("{} s", health.uptime_ms / 1000)),
                ("in flight", health.in_flight.to_string()),
                (
                    "sees",
                    format!(
                        "{} of {} nodes available",
                        health.nodes_available, health.nodes_known
                    ),
                ),
            ];
            Report::new(
                json!({ "node": info, "health": health }),
                &["", ""],
                lines.into_iter().map(|(k, v)| vec![k.to_owned(), v]),
            )
        }
        Query::Ping(node, count) => {
            let targets: Vec<_> = broker
                .nodes()
                .into_iter()
                .filter(|n| !n.local && n.available)
                .filter(|n| node.as_ref().is_none_or(|wanted| n.id == *wanted))
                .collect();
            if let Some(wanted) = node
                && targets.is_empty()
            {
                return Err(Error::rejected(format!("node '{wanted}' is not available")));
            }
            let mut rows = Vec::new();
            for target in targets {
                let mut micros = Vec::new();
                for _ in 0..(*count).max(1) {
                    let rtt = broker.ping(&target.id, Duration::from_secs(2)).await?;
                    micros.push(rtt.as_secs_f64() * 1e6);
                }
                micros.sort_by(f64::total_cmp);
                rows.push(json!({
                    "node": target.id,
                    "link": target.link.to_string(),
                    "min_us": micros[0],
                    "median_us": micros[micros.len() / 2],
                    "max_us": micros[micros.len() - 1],
                }));
            }
            Report::new(
                &rows,
                &["NODE", "LINK", "MIN µs", "MEDIAN µs", "MAX µs"],
                rows.iter().map(|r| {
                    let us = |k: &str| format!("{:.0}", r[k].as_f64().unwrap_or(0.0));
                    vec![
                        r["node"].as_str().unwrap_or("").to_owned(),
                        r["link"].as_str().unwrap_or("").to_owned(),
                        us("min_us"),
                        us("median_us"),
                        us("max_us"),
                    ]
                }),
            )
        }
        Query::Metrics(node) => {
            let targets: Vec<String> = match node {
                Some(node) => vec![node.clone()],
                None => super::available_peers(broker),
            };
            let mut snapshots = Vec::new();
            for target in &targets {
                let snapshot: MetricsSnapshot =
                    broker.call_with("$node.metrics", (), on(target)).await?;
                snapshots.push(snapshot);
            }
            let mut rows = Vec::new();
            for s in &snapshots {
                for (action, m) in s.handled.iter().filter(|(a, _)| !a.starts_with('$')) {
                    rows.push(vec![
                        s.node_id.clone(),
                        action.clone(),
                        m.total.to_string(),
                        m.errors.to_string(),
                        format!("{:.2}", m.p50_ms),
                        format!("{:.2}", m.p99_ms),
                    ]);
                }
            }
            Report::new(
                &snapshots,
                &["NODE", "ACTION", "SERVED", "ERRORS", "P50 ms", "P99 ms"],
                rows.into_iter(),
            )
        }
    }
}

/// Options that send a call to `node`.
fn on(node: &str) -> CallOptions {
    CallOptions::new()
        .node(node)
        .timeout(Duration::from_secs(5))
}

/// Prints rows under headers, each column as wide as its widest cell.
pub(crate) fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    if headers.iter().any(|h| !h.is_empty()) {
        line(&mut headers.iter().copied());
    }
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
}
