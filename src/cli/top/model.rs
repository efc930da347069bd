//! How `phalanx top` orders and draws what [`phalanx::monitor`] computes.

use phalanx::monitor::ActionRow;
use std::time::Duration;

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
