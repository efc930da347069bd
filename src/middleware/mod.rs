//! Middleware: layers around calls, handlers and events.
//!
//! A [`Middleware`] wraps any of five hooks; every hook has a pass-through default, so a layer
//! implements only what it needs:
//!
//! | hook | runs on | around |
//! |---|---|---|
//! | [`call`](Middleware::call) | the caller | a whole call, before an endpoint is chosen (retries, fallback) |
//! | [`remote_call`](Middleware::remote_call) | the caller | one attempt sent to another node (circuit breaker) |
//! | [`local_action`](Middleware::local_action) | the serving node | a handler of this node, whoever called it (bulkhead) |
//! | [`event`](Middleware::event) | the serving node | an event handler of this node |
//! | [`emit`](Middleware::emit) | the emitter | an emit, broadcast or local broadcast |
//!
//! A layer that only observes may instead be told when a call or a handler finished —
//! [`call_done`](Middleware::call_done), [`local_action_done`](Middleware::local_action_done),
//! outside every layer of that kind — which costs no boxed future per call ([`Metrics`] does).
//!
//! A layer says which calls it has work in — [`intercepts_call`](Middleware::intercepts_call),
//! [`intercepts_remote_call`](Middleware::intercepts_remote_call),
//! [`intercepts_local_action`](Middleware::intercepts_local_action) — and the others go past it
//! untouched; a call no layer has work in takes the broker's direct path, as if there were no
//! stack. The built-in layers step aside when idle: [`Tracing`] while no subscriber enables
//! `DEBUG`, [`Retry`] for a call with no retries, [`Fallback`] for a call with no fallback.
//!
//! A layer may also veto endpoints with [`admits`](Middleware::admits): the balancer skips a
//! vetoed endpoint when another one can serve (that is how an open circuit moves traffic).
//!
//! # Order
//! The first layer added is the outermost: it sees the call first and the result last. A broker
//! assembles its stack as
//!
//! 1. the built-in layers, unless [`without_default_middleware`](crate::BrokerBuilder::without_default_middleware):
//!    [`Tracing`] (a span per call and event), [`Metrics`],
//!    [`Fallback`], [`Retry`];
//! 2. [`CircuitBreaker`] when configured with
//!    [`BrokerBuilder::circuit_breaker`](crate::BrokerBuilder::circuit_breaker);
//! 3. layers added with [`BrokerBuilder::middleware`](crate::BrokerBuilder::middleware), in order
//!    (a [`Bulkhead`] is one of these, or a service's own);
//! 4. for a handler, then the layers of its own service
//!    ([`ServiceBuilder::middleware`](crate::ServiceBuilder::middleware)), in order.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use futures_util::FutureExt;
//! use futures_util::future::BoxFuture;
//! use phalanx::middleware::{Call, Middleware, Next};
//! use phalanx::{Broker, Payload, Result};
//!
//! /// Counts calls made by this broker.
//! #[derive(Default)]
//! struct CountCalls(std::sync::atomic::AtomicUsize);
//!
//! impl Middleware for CountCalls {
//!     fn name(&self) -> &'static str { "count-calls" }
//!     fn call<'a>(&'a self, call: Call<'a>, next: Next<'a, Call<'a>>) -> BoxFuture<'a, Result<Payload<'static>>> {
//!         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         next.run(call)
//!     }
//! }
//!
//! let counter = std::sync::Arc::new(CountCalls::default());
//! let broker = Broker::builder().middleware(counter.clone()).start().await?;
//! broker.service("math").action("neg", |_ctx, x: i32| async move { Ok(-x) }).start().await?;
//! assert_eq!(broker.call::<i32>("math.neg", 3).await?, -3);
//! assert_eq!(counter.0.load(std::sync::atomic::Ordering::Relaxed), 1);
//! # broker.stop().await;
//! # Ok(()) }
//! ```

mod breaker;
mod bulkhead;
mod fallback;
mod metrics_layer;
mod node_handle;
mod retry;
mod tracing_layer;

pub use crate::context::{EmitKind, FallbackFn};
pub use crate::registry::BreakerState;
pub use breaker::{CircuitBreaker, CircuitBreakerConfig};
pub use bulkhead::Bulkhead;
pub use fallback::Fallback;
pub use metrics_layer::Metrics;
pub use node_handle::NodeHandle;
pub use retry::{Retry, RetryConfig};
pub use tracing_layer::Tracing;

use crate::context::{CallOptions, Context};
use crate::error::Result;
use crate::payload::{ContentType, Payload};
use crate::registry::LocalHandler;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use std::fmt;
use std::sync::Arc;

/// A layer around calls, handlers and events; see the [module docs](self) for hooks and order.
pub trait Middleware: Send + Sync + 'static {
    /// A short name for logs and debugging.
    fn name(&self) -> &'static str;

    /// Called once when the broker owning this layer starts (services may not be up yet), with
    /// what the layer may use of that node. A service's layers get it when the service starts.
    fn on_start(&self, node: &NodeHandle) {
        let _ = node;
    }

    /// Around a whole call made by this broker, before an endpoint is chosen. `next` may be run
    /// more than once (a retry) once the params are [shared](Call::share_params).
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        next.run(call)
    }

    /// Around one attempt at an endpoint on another node.
    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        next.run(call)
    }

    /// Around a handler of this node, called from this node or by a peer.
    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        next.run(call)
    }

    /// Around an event handler of this node.
    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(event)
    }

    /// Around an emit, broadcast or local broadcast by this broker.
    fn emit<'a>(
        &'a self,
        emit: OutgoingEvent<'a>,
        next: Next<'a, OutgoingEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(emit)
    }

    /// Told of every call this broker made, once it has its answer (outside every `call`
    /// layer): for a layer that only observes calls, which costs less than wrapping each one in
    /// a [`call`](Middleware::call) hook (one boxed future per call). Declared with
    /// [`Hooks::CALL_DONE`].
    ///
    /// ```
    /// use phalanx::middleware::{Finished, Hooks, Middleware};
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// #[derive(Default)]
    /// struct CountFailures(AtomicU64);
    ///
    /// impl Middleware for CountFailures {
    ///     fn name(&self) -> &'static str { "count-failures" }
    ///     fn hooks(&self) -> Hooks { Hooks::CALL_DONE }
    ///     fn call_done(&self, call: &Finished<'_>) {
    ///         if call.result.is_err() {
    ///             self.0.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     }
    /// }
    /// ```
    fn call_done(&self, call: &Finished<'_>) {
        let _ = call;
    }

    /// Told of every handler of this node that finished, called from this node or by a peer
    /// (outside every `local_action` layer); see [`call_done`](Middleware::call_done).
    /// Declared with [`Hooks::LOCAL_ACTION_DONE`].
    fn local_action_done(&self, call: &Finished<'_>) {
        let _ = call;
    }

    /// Whether the balancer may choose `action` on `node_id` now. A vetoed endpoint is skipped
    /// unless no other can serve.
    fn admits(&self, action: &str, node_id: &str) -> bool {
        let _ = (action, node_id);
        true
    }

    /// Whether this layer implements [`admits`](Middleware::admits); lets the balancer skip the
    /// check entirely when no layer vetoes.
    fn vetoes_endpoints(&self) -> bool {
        false
    }

    /// The hooks this layer implements; it is left out of the others' chains. Default: all.
    fn hooks(&self) -> Hooks {
        Hooks::ALL
    }

    /// Whether this layer has work in the [`call`](Middleware::call) of `action` made with
    /// `options`. When it has not, the call goes past it untouched — not handed to it, not moved,
    /// nothing boxed — and a call no layer has work in takes the broker's direct path. Asked on
    /// every call, so it must be cheap; when unsure, say `true`. Default: `true`.
    ///
    /// ```
    /// use futures_util::future::BoxFuture;
    /// use phalanx::middleware::{Call, Middleware, Next};
    /// use phalanx::{CallOptions, Payload, Result};
    ///
    /// /// Logs the calls to one action.
    /// struct Watch(&'static str);
    ///
    /// impl Middleware for Watch {
    ///     fn name(&self) -> &'static str { "watch" }
    ///     fn intercepts_call(&self, action: &str, _options: &CallOptions) -> bool {
    ///         action == self.0
    ///     }
    ///     fn call<'a>(&'a self, call: Call<'a>, next: Next<'a, Call<'a>>) -> BoxFuture<'a, Result<Payload<'static>>> {
    ///         tracing::info!(action = call.action, "watched call");
    ///         next.run(call)
    ///     }
    /// }
    /// assert!(!Watch("users.delete").intercepts_call("math.add", &CallOptions::new()));
    /// ```
    fn intercepts_call(&self, action: &str, options: &CallOptions) -> bool {
        let _ = (action, options);
        true
    }

    /// Whether this layer has work in the [`remote_call`](Middleware::remote_call) of `action`
    /// sent to `node_id`; see [`intercepts_call`](Middleware::intercepts_call). Default: `true`.
    ///
    /// ```
    /// use phalanx::middleware::Middleware;
    ///
    /// struct Audit;
    /// impl Middleware for Audit {
    ///     fn name(&self) -> &'static str { "audit" }
    /// }
    /// assert!(Audit.intercepts_remote_call("math.add", "node-2"));
    /// ```
    fn intercepts_remote_call(&self, action: &str, node_id: &str) -> bool {
        let _ = (action, node_id);
        true
    }

    /// Whether this layer has work in the [`local_action`](Middleware::local_action) of
    /// `action`'s handler; see [`intercepts_call`](Middleware::intercepts_call). Default: `true`.
    ///
    /// ```
    /// use phalanx::middleware::{Bulkhead, Middleware};
    /// let bulkhead = Bulkhead::new(8, 64);
    /// assert!(bulkhead.intercepts_local_action("math.add"));
    /// ```
    fn intercepts_local_action(&self, action: &str) -> bool {
        let _ = action;
        true
    }
}

impl<M: Middleware> Middleware for Arc<M> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn on_start(&self, node: &NodeHandle) {
        (**self).on_start(node)
    }
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        (**self).call(call, next)
    }
    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        (**self).remote_call(call, next)
    }
    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        (**self).local_action(call, next)
    }
    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        (**self).event(event, next)
    }
    fn emit<'a>(
        &'a self,
        emit: OutgoingEvent<'a>,
        next: Next<'a, OutgoingEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        (**self).emit(emit, next)
    }
    fn call_done(&self, call: &Finished<'_>) {
        (**self).call_done(call)
    }
    fn local_action_done(&self, call: &Finished<'_>) {
        (**self).local_action_done(call)
    }
    fn admits(&self, action: &str, node_id: &str) -> bool {
        (**self).admits(action, node_id)
    }
    fn vetoes_endpoints(&self) -> bool {
        (**self).vetoes_endpoints()
    }
    fn hooks(&self) -> Hooks {
        (**self).hooks()
    }
    fn intercepts_call(&self, action: &str, options: &CallOptions) -> bool {
        (**self).intercepts_call(action, options)
    }
    fn intercepts_remote_call(&self, action: &str, node_id: &str) -> bool {
        (**self).intercepts_remote_call(action, node_id)
    }
    fn intercepts_local_action(&self, action: &str) -> bool {
        (**self).intercepts_local_action(action)
    }
}

/// The rest of the stack after a layer: [`Next::run`] hands the request on. Cheap to copy.
pub struct Next<'a, R, O = Result<Payload<'static>>> {
    layers: &'a [Arc<dyn Middleware>],
    hook: Hook<'a, R, O>,
    end: &'a (dyn Fn(R) -> BoxFuture<'a, O> + Send + Sync + 'a),
}

/// How a stack hands a request of one hook to a layer, and asks the layer whether it has work
/// in it (see [`Middleware::intercepts_call`]).
pub(crate) struct Hook<'a, R, O> {
    run: fn(&'a dyn Middleware, R, Next<'a, R, O>) -> BoxFuture<'a, O>,
    intercepts: fn(&dyn Middleware, &R) -> bool,
}

impl<R, O> Clone for Hook<'_, R, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, O> Copy for Hook<'_, R, O> {}

impl<R, O> Clone for Next<'_, R, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R, O> Copy for Next<'_, R, O> {}

impl<R, O> fmt::Debug for Next<'_, R, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field(
                "layers",
                &self.layers.iter().map(|l| l.name()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<'a, R, O> Next<'a, R, O> {
    /// Runs the remaining layers, then the call itself. A layer with no work in `request` is
    /// gone past (see [`Middleware::intercepts_call`]).
    pub fn run(self, request: R) -> BoxFuture<'a, O> {
        let mut layers = self.layers;
        while let Some((layer, rest)) = layers.split_first() {
            if (self.hook.intercepts)(&**layer, &request) {
                return (self.hook.run)(
                    &**layer,
                    request,
                    Next {
                        layers: rest,
                        ..self
                    },
                );
            }
            layers = rest;
        }
        (self.end)(request)
    }
}

/// A whole call, as the [`call`](Middleware::call) hook sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Call<'a> {
    /// The action's full name.
    pub action: &'a str,
    /// The call's context (deadline, meta, request id).
    pub ctx: Context,
    /// The parameters.
    pub params: Payload<'a>,
    /// The caller's options.
    pub options: &'a CallOptions,
    /// Nodes this call must avoid when another endpoint exists (set by retries).
    pub avoid: Vec<Arc<str>>,
    /// Asks the registry whether every endpoint of an action declares it idempotent; only
    /// consulted when a layer asks ([`Call::is_idempotent`]), so a call that succeeds pays nothing.
    pub(crate) declared_idempotent: DeclaredIdempotent<'a>,
}

/// Whether every endpoint of an action declares it safe to run twice (the broker's registry).
#[derive(Clone, Copy)]
pub(crate) struct DeclaredIdempotent<'a>(pub(crate) &'a (dyn Fn(&str) -> bool + Send + Sync));

impl std::fmt::Debug for DeclaredIdempotent<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeclaredIdempotent")
    }
}

impl Call<'_> {
    /// Whether running the call twice is harmless: the caller said so
    /// ([`CallOptions::idempotent`](crate::CallOptions::idempotent)) or every endpoint of the
    /// action declares it ([`ServiceBuilder::idempotent`](crate::ServiceBuilder::idempotent)).
    pub fn is_idempotent(&self) -> bool {
        self.options.idempotent || (self.declared_idempotent.0)(self.action)
    }

    /// Encodes the params once so that `next` can be run again with [`Call::again`] (what
    /// [`Retry`] does).
    ///
    /// ```
    /// use futures_util::FutureExt;
    /// use futures_util::future::BoxFuture;
    /// use phalanx::middleware::{Call, Middleware, Next};
    /// use phalanx::{Payload, Result};
    ///
    /// /// Tries every call twice, keeping the second answer.
    /// struct Twice;
    ///
    /// impl Middleware for Twice {
    ///     fn name(&self) -> &'static str { "twice" }
    ///     fn call<'a>(&'a self, mut call: Call<'a>, next: Next<'a, Call<'a>>) -> BoxFuture<'a, Result<Payload<'static>>> {
    ///         async move {
    ///             call.share_params()?;
    ///             let _ = next.run(call.again().expect("shared")).await;
    ///             next.run(call).await
    ///         }
    ///         .boxed()
    ///     }
    /// }
    /// # let _ = Twice;
    /// ```
    pub fn share_params(&mut self) -> Result<()> {
        let (bytes, content_type) = self.params.encode()?;
        self.params = Payload::encoded(bytes, content_type);
        Ok(())
    }

    /// A copy of this call for another attempt; `None` until the params are
    /// [shared](Call::share_params).
    pub fn again(&self) -> Option<Self> {
        Some(Self {
            action: self.action,
            ctx: self.ctx.clone(),
            params: self.params.try_clone()?,
            options: self.options,
            avoid: self.avoid.clone(),
            declared_idempotent: self.declared_idempotent,
        })
    }
}

/// One attempt at an endpoint on another node, as [`remote_call`](Middleware::remote_call)
/// sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct RemoteCall<'a> {
    /// The action's full name.
    pub action: &'a str,
    /// The node the attempt goes to.
    pub node_id: Arc<str>,
    /// The call's context.
    pub ctx: Context,
    /// The parameters.
    pub params: Payload<'a>,
}

/// A handler of this node about to run, as [`local_action`](Middleware::local_action) sees it.
#[non_exhaustive]
pub struct LocalCall<'a> {
    /// The action's full name.
    pub action: &'a str,
    /// Full name of the service the handler belongs to.
    pub service: &'a Arc<str>,
    /// The handler's context ([`Context::node_id`] says who called).
    pub ctx: Context,
    /// The parameters.
    pub params: Payload<'a>,
    /// The handler and its service's layers: where the chain ends.
    pub(crate) local: &'a LocalHandler<Stack>,
}

impl fmt::Debug for LocalCall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCall")
            .field("action", &self.action)
            .field("service", &self.service)
            .field("ctx", &self.ctx)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// An event handler of this node about to run.
#[derive(Debug)]
#[non_exhaustive]
pub struct LocalEvent<'a> {
    /// The event's name.
    pub event: &'a str,
    /// Full name of the service the handler belongs to.
    pub service: &'a Arc<str>,
    /// The handler's context.
    pub ctx: Context,
    /// The event's data.
    pub data: Payload<'a>,
}

/// An event this broker is about to send, as [`emit`](Middleware::emit) sees it.
#[derive(Debug)]
#[non_exhaustive]
pub struct OutgoingEvent<'a> {
    /// The event's name.
    pub event: &'a str,
    /// How it is delivered.
    pub kind: EmitKind,
    /// The event's data, encoded as `content_type`.
    pub data: Bytes,
    /// How `data` is encoded (MessagePack unless the value chose its own format).
    pub content_type: ContentType,
    /// The emitting handler's context, if emitted from one.
    pub parent: Option<&'a Context>,
}

/// A call or handler that finished, as [`Middleware::call_done`] and
/// [`Middleware::local_action_done`] see it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Finished<'a> {
    /// The action's full name.
    pub action: &'a str,
    /// When the call started (its context's [`started`](Context::started)).
    pub started: tokio::time::Instant,
    /// When it finished: read once and shared by every layer told of it (for a call answered
    /// by this node, by its caller's layers and its handler's alike).
    pub ended: tokio::time::Instant,
    /// Its answer.
    pub result: &'a Result<Payload<'static>>,
}

/// The hooks a layer implements, so the stack can leave it out of the others.
///
/// ```
/// use phalanx::middleware::Hooks;
/// let hooks = Hooks::CALL | Hooks::LOCAL_ACTION;
/// assert!(hooks.contains(Hooks::CALL) && !hooks.contains(Hooks::EMIT));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hooks(u8);

impl Hooks {
    /// [`Middleware::call`].
    pub const CALL: Self = Self(1);
    /// [`Middleware::remote_call`].
    pub const REMOTE_CALL: Self = Self(2);
    /// [`Middleware::local_action`].
    pub const LOCAL_ACTION: Self = Self(4);
    /// [`Middleware::event`].
    pub const EVENT: Self = Self(8);
    /// [`Middleware::emit`].
    pub const EMIT: Self = Self(16);
    /// [`Middleware::call_done`].
    pub const CALL_DONE: Self = Self(32);
    /// [`Middleware::local_action_done`].
    pub const LOCAL_ACTION_DONE: Self = Self(64);
    /// Every hook (the default: always correct, a few nanoseconds slower per unused hook).
    pub const ALL: Self = Self(127);

    /// Whether every hook of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Which hook a chain runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HookKind {
    Call = 0,
    RemoteCall = 1,
    LocalAction = 2,
    Event = 3,
    Emit = 4,
    CallDone = 5,
    LocalActionDone = 6,
}

impl HookKind {
    fn flag(self) -> Hooks {
        Hooks(1 << self as u8)
    }
}

/// The assembled layers of a broker or a service, one list per hook (outermost first).
#[derive(Clone, Default)]
pub(crate) struct Stack {
    all: Arc<[Arc<dyn Middleware>]>,
    per_hook: [Arc<[Arc<dyn Middleware>]>; 7],
    vetoes: bool,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.all.iter().map(|l| l.name()))
            .finish()
    }
}

impl Stack {
    pub(crate) fn new(layers: Vec<Arc<dyn Middleware>>) -> Self {
        let vetoes = layers.iter().any(|l| l.vetoes_endpoints());
        let kinds = [
            HookKind::Call,
            HookKind::RemoteCall,
            HookKind::LocalAction,
            HookKind::Event,
            HookKind::Emit,
            HookKind::CallDone,
            HookKind::LocalActionDone,
        ];
        let per_hook = kinds.map(|kind| {
            layers
                .iter()
                .filter(|l| l.hooks().contains(kind.flag()))
                .cloned()
                .collect()
        });
        Self {
            all: layers.into(),
            per_hook,
            vetoes,
        }
    }

    /// Whether no layer takes part in `kind`.
    pub(crate) fn is_empty(&self, kind: HookKind) -> bool {
        self.per_hook[kind as usize].is_empty()
    }

    /// Whether a layer has work in the call of `action` made with `options`.
    pub(crate) fn intercepts_call(&self, action: &str, options: &CallOptions) -> bool {
        self.per_hook[HookKind::Call as usize]
            .iter()
            .any(|layer| layer.intercepts_call(action, options))
    }

    /// Whether a layer has work in an attempt at `action` on `node_id`.
    pub(crate) fn intercepts_remote_call(&self, action: &str, node_id: &str) -> bool {
        self.per_hook[HookKind::RemoteCall as usize]
            .iter()
            .any(|layer| layer.intercepts_remote_call(action, node_id))
    }

    /// Whether a layer has work around `action`'s handler.
    pub(crate) fn intercepts_local_action(&self, action: &str) -> bool {
        self.per_hook[HookKind::LocalAction as usize]
            .iter()
            .any(|layer| layer.intercepts_local_action(action))
    }

    pub(crate) fn layers(&self) -> &[Arc<dyn Middleware>] {
        &self.all
    }

    /// Tells the layers observing calls that `call` finished.
    pub(crate) fn call_finished(&self, call: &Finished<'_>) {
        for layer in self.per_hook[HookKind::CallDone as usize].iter() {
            layer.call_done(call);
        }
    }

    /// Tells the layers observing handlers that `call` finished.
    pub(crate) fn local_action_finished(&self, call: &Finished<'_>) {
        for layer in self.per_hook[HookKind::LocalActionDone as usize].iter() {
            layer.local_action_done(call);
        }
    }

    /// Whether every vetoing layer admits `action` on `node_id`.
    pub(crate) fn admits(&self, action: &str, node_id: &str) -> bool {
        !self.vetoes || self.all.iter().all(|l| l.admits(action, node_id))
    }

    pub(crate) fn vetoes(&self) -> bool {
        self.vetoes
    }

    pub(crate) fn next<'a, R, O>(
        &'a self,
        kind: HookKind,
        hook: Hook<'a, R, O>,
        end: &'a (dyn Fn(R) -> BoxFuture<'a, O> + Send + Sync + 'a),
    ) -> Next<'a, R, O> {
        Next {
            layers: &self.per_hook[kind as usize],
            hook,
            end,
        }
    }
}

/// The hooks, as function pointers for [`Stack::next`].
pub(crate) mod hooks {
    use super::*;

    pub(crate) fn call<'a>() -> Hook<'a, Call<'a>, Result<Payload<'static>>> {
        Hook {
            run: |m, r, n| m.call(r, n),
            intercepts: |m, r| m.intercepts_call(r.action, r.options),
        }
    }

    pub(crate) fn remote_call<'a>() -> Hook<'a, RemoteCall<'a>, Result<Payload<'static>>> {
        Hook {
            run: |m, r, n| m.remote_call(r, n),
            intercepts: |m, r| m.intercepts_remote_call(r.action, &r.node_id),
        }
    }

    pub(crate) fn local_action<'a>() -> Hook<'a, LocalCall<'a>, Result<Payload<'static>>> {
        Hook {
            run: |m, r, n| m.local_action(r, n),
            intercepts: |m, r| m.intercepts_local_action(r.action),
        }
    }

    pub(crate) fn event<'a>() -> Hook<'a, LocalEvent<'a>, Result<()>> {
        Hook {
            run: |m, r, n| m.event(r, n),
            intercepts: |_, _| true,
        }
    }

    pub(crate) fn emit<'a>() -> Hook<'a, OutgoingEvent<'a>, Result<()>> {
        Hook {
            run: |m, r, n| m.emit(r, n),
            intercepts: |_, _| true,
        }
    }
}
