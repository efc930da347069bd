//! Drawing `phalanx top`: in a terminal with ratatui, or as plain text when stdout is not one.

use super::model::{SortBy, short_duration, sparkline};
use phalanx::monitor::{Cluster, NodeRow};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use std::time::Duration;

/// What the screen shows besides the cluster: the order and the filter of the actions.
#[derive(Debug, Default)]
pub(super) struct Controls {
    pub(super) sort: SortBy,
    pub(super) filter: String,
    /// The filter is being typed.
    pub(super) editing: bool,
}

fn node_cells(n: &NodeRow) -> [String; 7] {
    [
        n.id.clone(),
        n.host.clone(),
        n.link.clone(),
        n.cpu.map_or_else(|| "-".into(), |c| format!("{c:.0}%")),
        n.uptime_ms.map_or_else(
            || "-".into(),
            |ms| short_duration(Duration::from_millis(ms)),
        ),
        n.in_flight.map_or_else(|| "-".into(), |i| i.to_string()),
        if n.available { "up" } else { "DOWN" }.to_owned(),
    ]
}

const NODE_HEADERS: [&str; 7] = [
    "NODE",
    "HOST",
    "LINK",
    "CPU",
    "UPTIME",
    "IN FLIGHT",
    "STATE",
];
const ACTION_HEADERS: [&str; 8] = [
    "ACTION",
    "CALLS/S",
    "ERRORS/S",
    "P50 ms",
    "P99 ms",
    "NODES",
    "OPEN",
    "LAST MINUTE",
];

fn action_cells(cluster: &Cluster, controls: &Controls, spark: usize) -> Vec<[String; 8]> {
    controls
        .sort
        .apply(&cluster.actions, &controls.filter)
        .iter()
        .map(|a| {
            [
                a.name.clone(),
                format!("{:.0}", a.calls_per_s),
                format!("{:.1}", a.errors_per_s),
                format!("{:.2}", a.p50_ms),
                format!("{:.2}", a.p99_ms),
                a.nodes.to_string(),
                a.open_circuits.to_string(),
                sparkline(&a.history, spark),
            ]
        })
        .collect()
}

/// One frame in a terminal.
pub(super) fn draw(frame: &mut Frame<'_>, cluster: &Cluster, controls: &Controls) {
    let up = cluster.nodes.iter().filter(|n| n.available).count();
    let events_shown = cluster.events.len().min(6) as u16;
    let [title, nodes, actions, events, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(cluster.nodes.len() as u16 + 3),
        Constraint::Min(5),
        Constraint::Length(events_shown + 3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(
        Paragraph::new(format!(
            "phalanx top — {up} of {} nodes up, {} actions, {} events",
            cluster.nodes.len(),
            cluster.actions.len(),
            cluster.events.len()
        ))
        .style(Style::new().add_modifier(Modifier::BOLD)),
        title,
    );
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let node_rows = cluster.nodes.iter().map(|n| {
        let style = if n.available {
            Style::new()
        } else {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        };
        Row::new(node_cells(n).map(Cell::from)).style(style)
    });
    frame.render_widget(
        Table::new(
            node_rows,
            [
                Constraint::Fill(2),
                Constraint::Length(13),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(5),
            ],
        )
        .header(Row::new(NODE_HEADERS).style(bold))
        .block(Block::bordered().title("Nodes")),
        nodes,
    );
    let spark = 30;
    let action_rows = action_cells(cluster, controls, spark)
        .into_iter()
        .map(|cells| {
            let alarming = cells[6] != "0" || cells[2] != "0.0";
            let row = Row::new(cells.map(Cell::from));
            if alarming {
                row.style(Style::new().fg(Color::Yellow))
            } else {
                row
            }
        });
    frame.render_widget(
        Table::new(
            action_rows,
            [
                Constraint::Fill(2),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(spark as u16),
            ],
        )
        .header(Row::new(ACTION_HEADERS).style(bold))
        .block(Block::bordered().title(format!(
            "Actions (sorted by {}{})",
            controls.sort.label(),
            if controls.filter.is_empty() {
                String::new()
            } else {
                format!(", matching '{}'", controls.filter)
            }
        ))),
        actions,
    );
    let event_rows = cluster
        .events
        .iter()
        .take(events_shown as usize)
        .map(|e| Row::new([e.name.clone(), format!("{:.1}", e.per_s)]));
    frame.render_widget(
        Table::new(event_rows, [Constraint::Fill(1), Constraint::Length(10)])
            .header(Row::new(["EVENT", "PER S"]).style(bold))
            .block(Block::bordered().title("Events received")),
        events,
    );
    let help = if controls.editing {
        format!("filter: {}▏ (enter to keep, esc to clear)", controls.filter)
    } else {
        "q quit · s sort · / filter actions · esc clear filter".to_owned()
    };
    frame.render_widget(Paragraph::new(Line::from(help)), footer);
}

/// One frame as plain text (stdout is not a terminal).
pub(super) fn plain(cluster: &Cluster, controls: &Controls) {
    let up = cluster.nodes.iter().filter(|n| n.available).count();
    println!(
        "phalanx top — {up} of {} nodes up, {} actions, {} events",
        cluster.nodes.len(),
        cluster.actions.len(),
        cluster.events.len()
    );
    super::super::inspect::table(
        &NODE_HEADERS,
        cluster.nodes.iter().map(|n| node_cells(n).to_vec()),
    );
    println!();
    super::super::inspect::table(
        &ACTION_HEADERS,
        action_cells(cluster, controls, 20)
            .into_iter()
            .map(|cells| cells.to_vec()),
    );
    println!();
    super::super::inspect::table(
        &["EVENT", "PER S"],
        cluster
            .events
            .iter()
            .map(|e| vec![e.name.clone(), format!("{:.1}", e.per_s)]),
    );
    println!();
}
