//! A `tracing` span around every call, handler and event, with request id, action, caller and
//! node: every log line written inside carries them.

use super::{Call, Hooks, LocalCall, LocalEvent, Middleware, Next, RemoteCall};
use crate::context::CallOptions;
use crate::error::Result;
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tracing::Instrument;

/// The span layer. Spans are at `DEBUG` level: with the usual `info` filter they cost a
/// disabled-callsite check and nothing else. Failures are logged at `DEBUG` inside the span.
///
/// ```
/// let layer = phalanx::middleware::Tracing;
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl Middleware for Tracing {
    fn name(&self) -> &'static str {
        "tracing"
    }

    fn hooks(&self) -> Hooks {
        Hooks::CALL | Hooks::REMOTE_CALL | Hooks::LOCAL_ACTION | Hooks::EVENT
    }

    fn intercepts_call(&self, _action: &str, _options: &CallOptions) -> bool {
        spans_may_be_enabled()
    }

    fn intercepts_remote_call(&self, _action: &str, _node_id: &str) -> bool {
        spans_may_be_enabled()
    }

    fn intercepts_local_action(&self, _action: &str) -> bool {
        spans_may_be_enabled()
    }

    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let span = tracing::debug_span!(
            "call",
            action = call.action,
            request_id = call.ctx.request_id(),
            caller = call.ctx.caller(),
            level = call.ctx.level(),
            node = call.ctx.this_node(),
        );
        if span.is_disabled() {
            return next.run(call);
        }
        next.run(call).map(log_failure).instrument(span).boxed()
    }

    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let span = tracing::debug_span!("remote", peer = &*call.node_id);
        if span.is_disabled() {
            return next.run(call);
        }
        next.run(call).map(log_failure).instrument(span).boxed()
    }

    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let span = tracing::debug_span!(
            "handle",
            action = call.action,
            request_id = call.ctx.request_id(),
            caller = call.ctx.caller(),
            from = call.ctx.node_id(),
            node = call.ctx.this_node(),
        );
        if span.is_disabled() {
            return next.run(call);
        }
        next.run(call).map(log_failure).instrument(span).boxed()
    }

    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        let span = tracing::debug_span!(
            "event",
            event = event.event,
            service = &**event.service,
            request_id = event.ctx.request_id(),
            from = event.ctx.node_id(),
            node = event.ctx.this_node(),
        );
        if span.is_disabled() {
            return next.run(event);
        }
        next.run(event).map(log_failure).instrument(span).boxed()
    }
}

/// Whether any subscriber may want a `DEBUG` span: with none (or nothing below `INFO`
/// enabled anywhere) this layer has nothing to do, and calls go past it.
fn spans_may_be_enabled() -> bool {
    tracing::level_enabled!(tracing::Level::DEBUG)
}

fn log_failure<T>(result: Result<T>) -> Result<T> {
    if let Err(err) = &result {
        tracing::debug!(code = err.code(), kind = %err.kind(), %err, "failed");
    }
    result
}
