//! The state of an endpoint's circuit: set by the circuit breaker layer, read by the metrics and
//! shown in `$node.metrics`.

use serde::{Deserialize, Serialize};

/// The state of one endpoint's circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are kept away.
    Open,
    /// One probe may go through.
    HalfOpen,
}

impl BreakerState {
    /// The event announcing a change to this state.
    pub(crate) fn event(self) -> &'static str {
        match self {
            Self::Closed => "$circuit-breaker.closed",
            Self::Open => "$circuit-breaker.opened",
            Self::HalfOpen => "$circuit-breaker.half-opened",
        }
    }

    /// As a gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}
