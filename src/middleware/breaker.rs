//! The circuit breaker (see [`CircuitBreaker`]).

use super::{Hooks, Middleware, Next, NodeHandle, RemoteCall};
use crate::error::Result;
use crate::payload::Payload;
use crate::registry::BreakerState;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// When a circuit opens and how long it stays open.
///
/// ```
/// use std::time::Duration;
/// use phalanx::middleware::CircuitBreakerConfig;
///
/// let config = CircuitBreakerConfig::default()
///     .threshold(0.5)
///     .min_requests(10)
///     .window(Duration::from_secs(30))
///     .half_open_after(Duration::from_secs(5));
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    threshold: f64,
    min_requests: u32,
    window: Duration,
    half_open_after: Duration,
}

impl Default for CircuitBreakerConfig {
    /// Opens at 50 % failures over 60 s with at least 20 requests; probes after 10 s.
    fn default() -> Self {
        Self {
            threshold: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            half_open_after: Duration::from_secs(10),
        }
    }
}

impl CircuitBreakerConfig {
    /// The failure ratio (`0.0..=1.0`) that opens the circuit.
    pub fn threshold(mut self, threshold: f64) -> Self {
        self.threshold = threshold.clamp(0.0, 1.0);
        self
    }

    /// Fewest requests in a window before the ratio counts.
    pub fn min_requests(mut self, min_requests: u32) -> Self {
        self.min_requests = min_requests.max(1);
        self
    }

    /// Length of the counting window.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long an open circuit waits before letting one probe through.
    pub fn half_open_after(mut self, after: Duration) -> Self {
        self.half_open_after = after;
        self
    }
}

struct Endpoint {
    state: BreakerState,
    window_start: Instant,
    requests: u32,
    failures: u32,
    opened_at: Instant,
    probing: bool,
}

/// A change to announce once the lock is released.
#[derive(Debug, Clone, Serialize)]
struct Transition {
    #[serde(skip)]
    state: BreakerState,
    action: String,
    node_id: String,
    requests: u32,
    failures: u32,
}

/// The circuit breaker: stops sending calls to an endpoint (an action on one node) that keeps
/// failing, probes it after a while, and lets traffic back once a probe succeeds.
///
/// Closed → (failure ratio ≥ threshold over the window, with at least `min_requests`) → open →
/// (after `half_open_after`) → half-open: one probe → closed on success, open again on failure.
/// An error counts as a failure when its code is 500 or above (a timeout, an unreachable or
/// stopping node, a failing handler); a validation error or a full queue does not. Every change
/// is broadcast on this node as `$circuit-breaker.opened`, `.half-opened` or `.closed` with
/// `{ "action", "node_id", "requests", "failures" }`.
#[derive(Default)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    /// action → node → endpoint state.
    endpoints: Mutex<HashMap<String, HashMap<Arc<str>, Endpoint>>>,
    node: OnceLock<NodeHandle>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// A breaker with `config`.
    ///
    /// ```
    /// use phalanx::middleware::{CircuitBreakerConfig, BreakerState, CircuitBreaker};
    /// let breaker = CircuitBreaker::new(CircuitBreakerConfig::default());
    /// assert_eq!(breaker.state("users.get", "node-1"), BreakerState::Closed);
    /// ```
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// The state of `action` on `node_id` (closed when never seen).
    pub fn state(&self, action: &str, node_id: &str) -> BreakerState {
        let mut endpoints = self.endpoints.lock().expect("breaker lock");
        let ep = endpoints.get_mut(action).and_then(|a| a.get_mut(node_id));
        let (state, transition) = match ep {
            Some(ep) => {
                let transition = self.maybe_half_open(action, node_id, ep);
                (ep.state, transition)
            }
            None => (BreakerState::Closed, None),
        };
        drop(endpoints);
        self.announce(transition);
        state
    }

    /// Every endpoint not closed, for metrics.
    pub fn not_closed(&self) -> Vec<(String, String, BreakerState)> {
        self.endpoints
            .lock()
            .expect("breaker lock")
            .iter()
            .flat_map(|(action, nodes)| {
                nodes
                    .iter()
                    .filter(|(_, ep)| ep.state != BreakerState::Closed)
                    .map(move |(node, ep)| (action.clone(), node.to_string(), ep.state))
            })
            .collect()
    }

    /// Open → half-open once the wait is over.
    fn maybe_half_open(
        &self,
        action: &str,
        node_id: &str,
        ep: &mut Endpoint,
    ) -> Option<Transition> {
        if ep.state == BreakerState::Open
            && Instant::now() >= ep.opened_at + self.config.half_open_after
        {
            ep.state = BreakerState::HalfOpen;
            ep.probing = false;
            return Some(transition(action, node_id, ep));
        }
        None
    }

    /// Records the outcome of one attempt.
    fn record(&self, action: &str, node_id: &Arc<str>, failed: bool) {
        let now = Instant::now();
        let mut endpoints = self.endpoints.lock().expect("breaker lock");
        let nodes = match endpoints.get_mut(action) {
            Some(nodes) => nodes,
            None => endpoints.entry(action.to_owned()).or_default(),
        };
        let ep = nodes.entry(node_id.clone()).or_insert_with(|| Endpoint {
            state: BreakerState::Closed,
            window_start: now,
            requests: 0,
            failures: 0,
            opened_at: now,
            probing: false,
        });
        let change = match ep.state {
            BreakerState::Closed => {
                if now >= ep.window_start + self.config.window {
                    ep.window_start = now;
                    ep.requests = 0;
                    ep.failures = 0;
                }
                ep.requests += 1;
                ep.failures += u32::from(failed);
                let ratio = f64::from(ep.failures) / f64::from(ep.requests);
                (ep.requests >= self.config.min_requests && ratio >= self.config.threshold)
                    .then_some(BreakerState::Open)
            }
            BreakerState::HalfOpen if failed => Some(BreakerState::Open),
            BreakerState::HalfOpen => Some(BreakerState::Closed),
            // An attempt that started before the circuit opened.
            BreakerState::Open => None,
        };
        let announced = change.map(|state| {
            ep.state = state;
            ep.probing = false;
            if state == BreakerState::Open {
                ep.opened_at = now;
            }
            let t = transition(action, node_id, ep);
            if state == BreakerState::Closed {
                ep.window_start = now;
                ep.requests = 0;
                ep.failures = 0;
            }
            t
        });
        drop(endpoints);
        self.announce(announced);
    }

    fn announce(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        tracing::info!(
            action = %t.action,
            peer = %t.node_id,
            requests = t.requests,
            failures = t.failures,
            "{}",
            t.state.event()
        );
        let Some(node) = self.node.get() else {
            return;
        };
        node.metrics.breaker_changed(&t.action, &t.node_id, t.state);
        // This may run under the registry's lock: the handle raises the event without waiting.
        node.broadcast_local(t.state.event(), &t);
    }
}

fn transition(action: &str, node_id: &str, ep: &Endpoint) -> Transition {
    Transition {
        state: ep.state,
        action: action.to_owned(),
        node_id: node_id.to_owned(),
        requests: ep.requests,
        failures: ep.failures,
    }
}

impl Middleware for CircuitBreaker {
    fn name(&self) -> &'static str {
        "circuit-breaker"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REMOTE_CALL
    }

    fn on_start(&self, node: &NodeHandle) {
        let _ = self.node.set(node.clone());
    }

    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let action = call.action;
        let node_id = call.node_id.clone();
        {
            let mut endpoints = self.endpoints.lock().expect("breaker lock");
            if let Some(ep) = endpoints
                .get_mut(action)
                .and_then(|nodes| nodes.get_mut(&*node_id))
                && ep.state == BreakerState::HalfOpen
            {
                ep.probing = true;
            }
        }
        next.run(call)
            .map(move |result| {
                let failed = result.as_ref().is_err_and(|e| e.code() >= 500);
                self.record(action, &node_id, failed);
                result
            })
            .boxed()
    }

    fn admits(&self, action: &str, node_id: &str) -> bool {
        let mut endpoints = self.endpoints.lock().expect("breaker lock");
        let Some(ep) = endpoints.get_mut(action).and_then(|n| n.get_mut(node_id)) else {
            return true;
        };
        let transition = self.maybe_half_open(action, node_id, ep);
        let admitted = match ep.state {
            BreakerState::Closed => true,
            BreakerState::HalfOpen => !ep.probing,
            BreakerState::Open => false,
        };
        drop(endpoints);
        self.announce(transition);
        admitted
    }

    fn vetoes_endpoints(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(
            CircuitBreakerConfig::default()
                .threshold(0.5)
                .min_requests(4)
                .window(Duration::from_secs(10))
                .half_open_after(Duration::from_secs(5)),
        )
    }

    fn outcomes(breaker: &CircuitBreaker, node: &str, failed: &[bool]) {
        let node: Arc<str> = node.into();
        for failed in failed {
            breaker.record("a.b", &node, *failed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_threshold_once_enough_requests_counted() {
        let breaker = breaker();
        outcomes(&breaker, "n1", &[true, true, true]);
        assert_eq!(
            breaker.state("a.b", "n1"),
            BreakerState::Closed,
            "too few requests"
        );
        outcomes(&breaker, "n1", &[false]);
        assert_eq!(
            breaker.state("a.b", "n1"),
            BreakerState::Open,
            "3 of 4 failed"
        );
        assert!(!breaker.admits("a.b", "n1"));
        assert!(breaker.admits("a.b", "n2"), "per endpoint");
        assert_eq!(breaker.not_closed().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_window_forgets_old_failures() {
        let breaker = breaker();
        outcomes(&breaker, "n1", &[true, true, true]);
        tokio::time::advance(Duration::from_secs(11)).await;
        outcomes(&breaker, "n1", &[false, false, false, true]);
        assert_eq!(breaker.state("a.b", "n1"), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_for_one_probe_then_closes_or_opens_again() {
        let breaker = breaker();
        outcomes(&breaker, "n1", &[true; 4]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(breaker.admits("a.b", "n1"), "one probe may go");
        assert_eq!(breaker.state("a.b", "n1"), BreakerState::HalfOpen);
        // The probe is marked when it is sent; a second caller waits for its outcome.
        breaker
            .endpoints
            .lock()
            .unwrap()
            .get_mut("a.b")
            .and_then(|n| n.get_mut("n1"))
            .unwrap()
            .probing = true;
        assert!(!breaker.admits("a.b", "n1"), "only one probe at a time");
        outcomes(&breaker, "n1", &[true]);
        assert_eq!(
            breaker.state("a.b", "n1"),
            BreakerState::Open,
            "the probe failed"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(breaker.state("a.b", "n1"), BreakerState::HalfOpen);
        outcomes(&breaker, "n1", &[false]);
        assert_eq!(
            breaker.state("a.b", "n1"),
            BreakerState::Closed,
            "the probe succeeded"
        );
        assert!(breaker.not_closed().is_empty());
    }
}
