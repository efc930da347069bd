//! The metrics layer: counts and times calls, handlers and events into the node's metrics.

use super::{Call, Hooks, LocalCall, LocalEvent, Middleware, Next, NodeHandle, OutgoingEvent};
use crate::error::Result;
use crate::metrics::{BrokerMetrics, Side};
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

/// The metrics layer: counts and times every call this broker makes, every handler it runs and
/// every event it emits or handles. Part of the default stack.
///
/// ```
/// let layer = phalanx::middleware::Metrics::default();
/// # let _ = layer;
/// ```
///
/// It records into the metrics of the broker that starts it ([`Middleware::on_start`]); until
/// then, and in a stack no broker started, it records nothing.
#[derive(Debug, Default)]
pub struct Metrics {
    node: OnceLock<Arc<BrokerMetrics>>,
}

fn outcome<T>(result: &Result<T>) -> Result<(), u16> {
    result.as_ref().map(|_| ()).map_err(|e| e.code())
}

/// `work`, recorded for `side` of `action` when it finishes (latency from `started`).
fn recorded<'a>(
    side: Side,
    action: &'a str,
    started: Instant,
    metrics: &'a BrokerMetrics,
    work: BoxFuture<'a, Result<Payload<'static>>>,
) -> BoxFuture<'a, Result<Payload<'static>>> {
    work.map(move |result| {
        metrics.record(side, action, started, outcome(&result));
        result
    })
    .boxed()
}

impl Middleware for Metrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn hooks(&self) -> Hooks {
        Hooks::CALL | Hooks::LOCAL_ACTION | Hooks::EVENT | Hooks::EMIT
    }

    fn on_start(&self, node: &NodeHandle) {
        let _ = self.node.set(node.metrics.clone());
    }

    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let Some(metrics) = self.node.get() else {
            return next.run(call);
        };
        let (action, started) = (call.action, call.ctx.started);
        recorded(Side::Caller, action, started, metrics, next.run(call))
    }

    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let Some(metrics) = self.node.get() else {
            return next.run(call);
        };
        let (action, started) = (call.action, call.ctx.started);
        recorded(Side::Handler, action, started, metrics, next.run(call))
    }

    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        if let Some(metrics) = self.node.get() {
            metrics.count_event(false, event.event);
        }
        next.run(event)
    }

    fn emit<'a>(
        &'a self,
        emit: OutgoingEvent<'a>,
        next: Next<'a, OutgoingEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        if let Some(metrics) = self.node.get() {
            metrics.count_event(true, emit.event);
        }
        next.run(emit)
    }
}
