//! Request-reply: making calls and serving the ones that arrive from peers.

use super::dispatch::PeerPermit;
use super::pending::PendingCall;
use super::{Broker, InFlight, Registry};
use crate::context::{CallOptions, Context, Lineage};
use crate::deadline::{self, Elapsed, LazyDeadline};
use crate::error::{Error, ErrorBody, ErrorKind, Result};
use crate::handler::ActionFn;
use crate::middleware::{
    Call, DeclaredIdempotent, Finished, HookKind, LocalCall, RemoteCall, Stack, hooks,
};
use crate::payload::{Payload, encode_msgpack};
use crate::protocol::packet::{ContentType, Packet, PacketBody, Request, Response, StreamInfo};
use crate::registry::{InFlightCall, LocalHandler, Pick, Target};
use crate::stream::{ByteStream, StreamSlot};
use crate::transport::{LinkKind, PendingReply, TrySend};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, CatchUnwind, Either};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a request or event from a sender we have not met yet waits for its INFO.
const UNKNOWN_SENDER_WAIT: Duration = Duration::from_secs(1);
/// Most requests and events from unknown senders waiting at once.
pub(super) const MAX_UNKNOWN_SENDER_WAITS: usize = 256;

impl Broker {
    /// Calls `action` and decodes its result as `R`.
    ///
    /// A call to a service of this broker moves `params` straight into the handler; a remote call
    /// encodes it as MessagePack. Errors keep their kind and code wherever they were raised.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker.service("math")
    ///     .action("square", |_ctx, x: i64| async move { Ok(x * x) })
    ///     .start().await?;
    /// assert_eq!(broker.call::<i64>("math.square", 7).await?, 49);
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn call<R: DeserializeOwned + 'static>(
        &self,
        action: &str,
        params: impl Serialize + Send + 'static,
    ) -> Result<R> {
        self.call_in(action, params, &CallOptions::default(), None)
            .await
    }

    /// Calls `action` with options (timeout, meta, headers, target node).
    pub async fn call_with<R: DeserializeOwned + 'static>(
        &self,
        action: &str,
        params: impl Serialize + Send + 'static,
        options: CallOptions,
    ) -> Result<R> {
        self.call_in(action, params, &options, None).await
    }

    /// An untyped call over JSON values, for tools such as the CLI and the gateway.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// # #[derive(serde::Deserialize)] struct Add { a: i64, b: i64 }
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker.service("math")
    ///     .action("add", |_ctx, p: Add| async move { Ok(p.a + p.b) })
    ///     .start().await?;
    /// let sum = broker.call_json("math.add", serde_json::json!({"a": 1, "b": 2})).await?;
    /// assert_eq!(sum, serde_json::json!(3));
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn call_json(
        &self,
        action: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.call(action, params).await
    }

    /// A call whose params are a [`Payload`] (already encoded, or a value) and whose result is
    /// handed back undecoded: for tools that forward payloads or call many times with the same
    /// params, such as the CLI's `bench` and gateways.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::{CallOptions, ContentType, Payload};
    ///
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker.service("math")
    ///     .action("neg", |_ctx, x: i64| async move { Ok(-x) })
    ///     .start().await?;
    /// let (bytes, _) = Payload::local(5i64).encode()?;       // encode once…
    /// for _ in 0..3 {                                         // …call many times
    ///     let params = Payload::encoded(bytes.clone(), ContentType::MsgPack);
    ///     let result = broker.call_raw("math.neg", params, CallOptions::new()).await?;
    ///     assert_eq!(result.decode::<i64>()?, -5);
    /// }
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn call_raw(
        &self,
        action: &str,
        params: Payload<'_>,
        options: CallOptions,
    ) -> Result<Payload<'static>> {
        self.call_payload(action, params, &options, None).await
    }

    pub(crate) async fn call_in<R: DeserializeOwned + 'static>(
        &self,
        action: &str,
        params: impl Serialize + Send + 'static,
        options: &CallOptions,
        parent: Option<&Context>,
    ) -> Result<R> {
        let mut params = Some(params);
        self.call_payload(action, Payload::lend(&mut params), options, parent)
            .await?
            .decode()
    }

    pub(super) async fn call_payload(
        &self,
        action: &str,
        params: Payload<'_>,
        options: &CallOptions,
        parent: Option<&Context>,
    ) -> Result<Payload<'static>> {
        if self.inner.is_stopped() {
            return Err(Error::new(
                ErrorKind::NodeStopping,
                "the calling broker is stopped",
            ));
        }
        let ctx = self.child_context(options, parent);
        if parent.is_some() && ctx.deadline.is_some_and(|d| d <= ctx.started) {
            // Only an inherited deadline can already have passed.
            return Err(Error::timeout(action));
        }
        let _running = InFlight::enter(self);
        let started = ctx.started;
        let stack = &self.inner.middleware;
        // When a handler of this node answered, the time it was seen to end: the call ended
        // then too, and the clock is read once for both.
        let mut handler_ended = None;
        let result = if !stack.intercepts_call(action, options) {
            // One attempt, in this future, with no `Call` to build or move: for a local call
            // those moves of the context were a fifth of its cost (local_call bench).
            match self.pick_endpoint(action, &ctx, &params, options, &[]) {
                Ok(Picked::Local(local)) => {
                    let (result, ended) = self.run_local(action, &local, ctx, params).await;
                    handler_ended = ended;
                    result
                }
                // Boxed: a remote attempt's state (request, pending reply, transport futures)
                // is several times a local one's, and inline it would make every call's
                // future — and what each poll moves — that large. A remote call allocates
                // anyway.
                Ok(Picked::Remote(node_id, measured)) => {
                    Box::pin(self.attempt_remote(action, node_id, measured, ctx, params)).await
                }
                Err(err) => Err(err),
            }
        } else {
            let declared = |action: &str| self.inner.registry().is_idempotent(action);
            let call = Call {
                action,
                ctx,
                params,
                options,
                avoid: Vec::new(),
                declared_idempotent: DeclaredIdempotent(&declared),
            };
            let end = |call| self.attempt(call);
            stack
                .next(HookKind::Call, hooks::call(), &end)
                .run(call)
                .await
        };
        if !stack.is_empty(HookKind::CallDone) {
            stack.call_finished(&Finished {
                action,
                started,
                ended: handler_ended.unwrap_or_else(Instant::now),
                result: &result,
            });
        }
        result
    }

    /// Picks the endpoint of one attempt, synchronously, under the registry's read lock.
    fn pick_endpoint(
        &self,
        action: &str,
        ctx: &Context,
        params: &Payload<'_>,
        options: &CallOptions,
        avoid: &[Arc<str>],
    ) -> Result<Picked> {
        let registry = self.inner.registry();
        let strategy = registry.strategy_for(action);
        let shard_key = strategy
            .shard_key()
            .and_then(|key| shard_key(key, ctx, params));
        let pick = Pick {
            action,
            node_id: options.node_id.as_deref(),
            avoid,
            admits: self.inner.admission.as_deref(),
            shard_key: shard_key.as_deref(),
        };
        match registry.pick(&pick) {
            Some(Target::Local(local)) => Ok(Picked::Local(local.clone())),
            Some(Target::Remote(node, stats)) => {
                let timed = strategy.measures_latency();
                Ok(Picked::Remote(node.clone(), stats.clone().begin(timed)))
            }
            None if options.node_id.is_none() && registry.has_action(action) => Err(Error::new(
                ErrorKind::CircuitOpen,
                format!("every endpoint of '{action}' has an open circuit"),
            )),
            None => Err(Error::service_not_found(action)),
        }
    }

    /// One attempt, boxed for the `call` layers (which may run it more than once): only the
    /// chosen path's state is allocated. (Boxing one future for both paths instead would copy
    /// both paths' state: the default stack measured 549 → 649 ns.)
    fn attempt<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Payload<'static>>> {
        let picked = self.pick_endpoint(
            call.action,
            &call.ctx,
            &call.params,
            call.options,
            &call.avoid,
        );
        let Call {
            action,
            ctx,
            params,
            ..
        } = call;
        match picked {
            Ok(Picked::Local(local)) => {
                async move { self.run_local(action, &local, ctx, params).await.0 }.boxed()
            }
            // Boxed as it is: wrapped in another future it would be held (and moved) twice.
            Ok(Picked::Remote(node_id, measured)) => self
                .attempt_remote(action, node_id, measured, ctx, params)
                .boxed(),
            Err(err) => futures_util::future::ready(Err(err)).boxed(),
        }
    }

    /// The context of a new call: a child of `parent` when made from a handler. The deadline is
    /// the sooner of the call's own timeout and the one it inherits.
    fn child_context(&self, options: &CallOptions, parent: Option<&Context>) -> Context {
        let started = Instant::now();
        let timeout = options.timeout.or(self.inner.timings.request_timeout);
        let deadline = deadline::of_call(started, timeout, parent.and_then(|p| p.deadline));
        let id = self.next_id();
        let lineage =
            Lineage::new(parent, id).with(options.meta.as_ref(), options.headers.as_ref());
        let mut ctx = Context::new(self.dispatch(), id, lineage, deadline, started);
        ctx.stream = options.stream.clone();
        ctx.format = options.format;
        ctx
    }

    /// Runs a handler of this node inside the broker's and its service's middleware, within the
    /// call's deadline. The handler starts here; the future only awaits it (and does not keep
    /// the context and parameters, which the handler's own future holds). With its answer comes
    /// the time it ended, if a layer observing handlers was told of it.
    fn run_local<'a>(
        &'a self,
        action: &'a str,
        local: &'a LocalHandler<Stack>,
        ctx: Context,
        params: Payload<'a>,
    ) -> impl Future<Output = (Result<Payload<'static>>, Option<Instant>)> + Send + 'a {
        let (deadline, started) = (ctx.deadline, ctx.started);
        let work = if self.intercepts_local_action(action, local) {
            let call = LocalCall {
                action,
                service: &local.service,
                ctx,
                params,
                local,
            };
            self.inner
                .middleware
                .next(
                    HookKind::LocalAction,
                    hooks::local_action(),
                    &service_layers,
                )
                .run(call)
        } else {
            // No `LocalCall` to build and take apart again: the context goes to the handler.
            start_handler(action, &local.handler, &local.service, ctx, params)
        };
        // One flat future (no `async` block, which would hold its arguments and its awaitee
        // both): small enough that handing it on is a few register copies, not a memmove.
        within_deadline(work, deadline)
            .map(move |outcome| self.local_outcome(action, local, started, outcome))
    }

    /// Whether a `local_action` layer (the broker's or the service's) takes part in `action`.
    fn intercepts_local_action(&self, action: &str, local: &LocalHandler<Stack>) -> bool {
        self.inner.middleware.intercepts_local_action(action)
            || local.layers.intercepts_local_action(action)
    }

    /// What a local handler's run came to (a panic and a passed deadline are errors naming
    /// this node), told to the layers observing handlers; with the time it ended if any did.
    fn local_outcome(
        &self,
        action: &str,
        local: &LocalHandler<Stack>,
        started: Instant,
        outcome: HandlerOutcome,
    ) -> (Result<Payload<'static>>, Option<Instant>) {
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(panic_error(action, &*panic)),
            Err(Elapsed) => Err(Error::timeout(action)),
        }
        .map_err(|e| e.with_node(&self.inner.node_id));
        let outer = &self.inner.middleware;
        let observed = !outer.is_empty(HookKind::LocalActionDone)
            || !local.layers.is_empty(HookKind::LocalActionDone);
        if !observed {
            return (result, None);
        }
        let ended = Instant::now();
        let finished = Finished {
            action,
            started,
            ended,
            result: &result,
        };
        outer.local_action_finished(&finished);
        local.layers.local_action_finished(&finished);
        (result, Some(ended))
    }

    /// One attempt at another node, inside the `remote_call` middleware. Without such a
    /// layer the attempt's future is the request's own, with no box.
    fn attempt_remote<'b>(
        &'b self,
        action: &'b str,
        node_id: Arc<str>,
        measured: InFlightCall,
        ctx: Context,
        params: Payload<'b>,
    ) -> impl Future<Output = Result<Payload<'static>>> + Send + 'b {
        let call = RemoteCall {
            action,
            node_id,
            ctx,
            params,
        };
        let stack = &self.inner.middleware;
        if !stack.intercepts_remote_call(action, &call.node_id) {
            // Not awaited inside another async block, which would hold the attempt twice.
            return Either::Left(self.call_remote(call).map(move |outcome| {
                drop(measured);
                outcome
            }));
        }
        Either::Right(async move {
            let _measured = measured;
            let end = |call| self.call_remote(call).boxed();
            stack
                .next(HookKind::RemoteCall, hooks::remote_call(), &end)
                .run(call)
                .await
        })
    }

    /// One attempt on a remote node: the request is built and registered at once, so the
    /// future keeps neither the call's context nor its arguments (an `async fn` holds its
    /// arguments for its whole life, and every box and poll of it moves them).
    fn call_remote<'b>(
        &'b self,
        call: RemoteCall<'b>,
    ) -> impl Future<Output = Result<Payload<'static>>> + Send + 'b {
        let (action, node_id, deadline) = (call.action, call.node_id.clone(), call.ctx.deadline);
        let out = match self.outgoing_request(call) {
            Ok(out) => out,
            Err(err) => return Either::Left(std::future::ready(Err(err))),
        };
        Either::Right(async move {
            // The block captures the fields it uses, not `out`: the guard must come along.
            let guard = out.guard;
            // Fields used in place: moved into locals, they would take their room twice.
            // A request the transport takes at once needs no boxed future of its own.
            let sent = match out.transport.try_request(&node_id, &out.packet, out.reply) {
                Ok(TrySend::Sent(reply)) => Ok(reply),
                Ok(TrySend::WouldWait(reply)) => {
                    out.transport.request(&node_id, &out.packet, reply).await
                }
                Err(err) => Err(err),
            };
            let answered = match sent {
                Ok(reply) => match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, reply)
                        .await
                        .unwrap_or_else(|_| Err(Error::timeout(action))),
                    None => reply.await,
                },
                Err(err) => Err(err),
            };
            let outcome = match answered {
                Ok(mut response) => match response.error.take() {
                    None => Ok(response),
                    Some(error) => Err(Error::from_peer(*error)),
                },
                Err(err) => Err(err),
            };
            let (id, link) = (guard.id, out.link);
            let response = match outcome {
                Ok(response) => response,
                Err(error) => {
                    if out.streaming {
                        self.cancel_stream(&node_id, id, true, true);
                    }
                    return Err(error.with_node(&node_id));
                }
            };
            if response.stream {
                let info = response
                    .data
                    .as_deref()
                    .and_then(|data| rmp_serde::from_slice::<StreamInfo>(data).ok())
                    .unwrap_or_default();
                let stream = self.read_stream(&node_id, link, id, true, info, deadline)?;
                return Ok(Payload::local(stream));
            }
            Ok(Payload::encoded(
                response.data.unwrap_or_default(),
                response.content_type,
            ))
        })
    }

    /// The REQUEST of `call`, registered as pending, with the transport that carries it (its
    /// parameter stream, if any, already set up to follow it).
    fn outgoing_request<'b>(&'b self, call: RemoteCall<'_>) -> Result<OutgoingRequest<'b>> {
        let RemoteCall {
            action,
            node_id,
            ctx,
            params,
        } = call;
        let (params, content_type) = params.encode_as(ctx.format)?;
        let id = ctx.id;
        let outgoing = ctx.stream.take();
        let (reply, pending) = PendingReply::channel();
        self.inner.pending.insert(
            id,
            PendingCall {
                node_id: node_id.clone(),
                reply,
            },
        );
        let guard = PendingGuard { broker: self, id };
        let mut request = Request {
            id,
            action: crate::protocol::names::action(action),
            params,
            content_type,
            timeout_ms: deadline::remaining_ms(ctx.deadline),
            stream: outgoing.as_ref().map(ByteStream::info),
            ..Request::default()
        };
        ctx.lineage.stamp_request(&mut request);
        let packet = Packet::new(self.inner.node_id.clone(), PacketBody::Request(request));
        let (transport, link) = self.transport_for(&node_id)?;
        let streaming = outgoing.is_some();
        if let Some(stream) = outgoing {
            // Chunks wait for the callee's credit, which follows the request.
            self.write_stream(&node_id, link, id, true, stream)?;
        }
        Ok(OutgoingRequest {
            packet,
            reply: pending,
            guard,
            transport,
            link,
            streaming,
        })
    }

    /// Serves a REQUEST from `sender` and sends the RESPONSE back over `link`; `permit` counts
    /// it against the sender's limit until then.
    ///
    /// The request is taken apart and its handler started here, synchronously, and a handler
    /// that answers at once is answered from here too: no future is boxed and no task spawned.
    /// Only a handler still working after its first poll (or one inside `local_action` layers)
    /// goes on in a task, which holds just what the answer needs.
    pub(super) fn serve_request(
        &self,
        sender: Arc<str>,
        request: &mut Request,
        link: LinkKind,
        permit: Option<PeerPermit>,
    ) {
        // The answer comes in the format the question came in (JSON for JSON, else
        // MessagePack), unless the handler's value has a format of its own.
        let to = Requester {
            id: request.id,
            answer_format: request.content_type,
            sender,
            link,
        };
        let admission = self.admit(&to.sender, request, link);
        // Counted until the response is handed to the transport, so a graceful stop waits
        // for it; a handler starts only while the node runs.
        let serving = Serving {
            _running: InFlight::enter_owned(self),
            _permit: permit,
        };
        let ReadyRequest {
            action,
            local,
            ctx,
            params,
        } = match admission {
            _ if self.inner.is_stopped() => {
                let stopping = Error::new(
                    ErrorKind::NodeStopping,
                    format!("node '{}' is stopping", self.inner.node_id),
                );
                return self.respond(to, Err(stopping), serving);
            }
            Admission::Ready(ready) => ready,
            Admission::Newcomer(request) => {
                let broker = self.clone();
                return self.run_inline_then_spawn(async move {
                    let result = broker.serve_newcomer(&to.sender, *request, link).await;
                    broker.respond(to, result, serving);
                });
            }
            Admission::Refused(err) => return self.respond(to, Err(err), serving),
        };
        if self.intercepts_local_action(&action, &local) {
            let broker = self.clone();
            return self.run_inline_then_spawn(async move {
                let (result, _) = broker.run_local(&action, &local, ctx, params).await;
                broker.respond(to, result, serving);
            });
        }
        let started = ctx.started;
        let deadline = ctx.deadline;
        let work = start_handler(&action, &local.handler, &local.service, ctx, params);
        self.finish_inline_or_spawn(within_deadline(work, deadline), move |broker, outcome| {
            let (result, _) = broker.local_outcome(&action, &local, started, outcome);
            broker.respond(to, result, serving);
        });
    }

    /// Sends the RESPONSE carrying `result` to the request `to` describes: from here if the
    /// transport takes it without waiting, else from a future run here first (and in a task
    /// if it must wait). `serving` is released once the response is handed over.
    fn respond(&self, to: Requester, result: Result<Payload<'static>>, serving: Serving) {
        let packet = self.response(&to.sender, to.link, to.id, to.answer_format, result);
        let Some(transport) = self.transport_of(to.link) else {
            return;
        };
        match transport.try_send(&to.sender, &packet) {
            Ok(TrySend::Sent(())) => drop(serving),
            Ok(TrySend::WouldWait(())) => {
                let broker = self.clone();
                self.run_inline_then_spawn(async move {
                    if let Err(err) = transport.send(&to.sender, &packet).await {
                        broker.response_lost(&to, &err);
                    }
                    drop(serving);
                });
            }
            Err(err) => self.response_lost(&to, &err),
        }
    }

    /// A RESPONSE could not be sent: the answer's stream, if any, stops.
    fn response_lost(&self, to: &Requester, err: &Error) {
        tracing::warn!(peer = %to.sender, %err, "could not send response");
        self.cancel_stream(&to.sender, to.id, false, false);
    }

    /// The RESPONSE packet to request `id` of `sender`; a streamed result starts flowing.
    fn response(
        &self,
        sender: &Arc<str>,
        link: LinkKind,
        id: u64,
        answer_format: ContentType,
        result: Result<Payload<'static>>,
    ) -> Packet {
        let mut response = Response {
            id,
            ..Default::default()
        };
        let mut answer_stream = None;
        let encoded = result.and_then(|payload| match payload.into_stream() {
            Ok(stream) => {
                response.stream = true;
                let header = encode_msgpack(&stream.info())?;
                answer_stream = Some(stream);
                Ok((header, ContentType::MsgPack))
            }
            Err(payload) => payload.encode_as(answer_format),
        });
        match encoded {
            Ok((data, content_type)) => {
                response.data = Some(data);
                response.content_type = content_type;
            }
            Err(err) => response.error = Some(self.wire_error(err)),
        }
        if let Some(stream) = answer_stream
            && let Err(err) = self.write_stream(sender, link, id, false, stream)
        {
            response.stream = false;
            response.error = Some(self.wire_error(err));
        }
        Packet::new(self.inner.node_id.clone(), PacketBody::Response(response))
    }

    /// `err` as a RESPONSE carries it, naming this node.
    fn wire_error(&self, err: Error) -> Box<ErrorBody> {
        Box::new(err.with_node(&self.inner.node_id).body().clone())
    }

    /// Whether `sender` is a member of this namespace that we know and that is available.
    fn is_member(registry: &Registry, sender: &str) -> bool {
        registry.node(sender).is_some_and(|n| n.available)
    }

    /// This node's handler of `action` (of a peer's REQUEST).
    fn local_handler(&self, registry: &Registry, action: &str) -> Result<Arc<LocalHandler<Stack>>> {
        let pick = Pick {
            action,
            node_id: Some(&self.inner.node_id),
            avoid: &[],
            admits: self.inner.admission.as_deref(),
            shard_key: None,
        };
        match registry.pick(&pick) {
            Some(Target::Local(local)) => Ok(local.clone()),
            _ => Err(Error::service_not_found(action)),
        }
    }

    /// Checks that `sender` is a member we know; if not, asks it for its INFO and waits briefly.
    ///
    /// A newcomer's first request or event can overtake its INFO (a bus delivers the broadcast
    /// subject and the node's own subject independently), so an unknown sender gets
    /// [`UNKNOWN_SENDER_WAIT`] to be introduced before it is refused. At most
    /// [`MAX_UNKNOWN_SENDER_WAITS`] packets wait at once; beyond, they are refused at once.
    pub(super) async fn await_member(&self, sender: &Arc<str>) -> Result<()> {
        let is_known = || Self::is_member(&self.inner.registry(), sender);
        if is_known() {
            return Ok(());
        }
        self.discover(sender);
        let refused = || {
            Err(Error::rejected(format!(
                "node '{sender}' is not a known member of this namespace"
            )))
        };
        let Ok(_waiting) = self.inner.introductions.try_acquire() else {
            self.inner.metrics.limit_hit(
                crate::limits::Limit::UnknownSenders,
                format_args!("a packet from unknown '{sender}' refused: too many waiting"),
            );
            return refused();
        };
        let until = tokio::time::Instant::now() + UNKNOWN_SENDER_WAIT;
        loop {
            let changed = self.inner.registry_changed.notified();
            if is_known() {
                return Ok(());
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return refused();
            }
        }
    }

    /// Takes a REQUEST from `sender` apart, ready to run here, unless it is refused or its
    /// sender has not introduced itself yet.
    fn admit(&self, sender: &Arc<str>, request: &mut Request, link: LinkKind) -> Admission {
        let local = {
            // One look at the registry for both questions.
            let registry = self.inner.registry();
            if !Self::is_member(&registry, sender) {
                return Admission::Newcomer(Box::new(std::mem::take(request)));
            }
            self.local_handler(&registry, &request.action)
        };
        match local.and_then(|local| self.prepare_request(sender, request, link, local)) {
            Ok(ready) => Admission::Ready(ready),
            Err(err) => Admission::Refused(err),
        }
    }

    /// Serves the REQUEST of a sender we have not met yet, once it has introduced itself.
    async fn serve_newcomer(
        &self,
        sender: &Arc<str>,
        mut request: Request,
        link: LinkKind,
    ) -> Result<Payload<'static>> {
        self.await_member(sender).await?;
        let local = self.local_handler(&self.inner.registry(), &request.action)?;
        let ready = self.prepare_request(sender, &mut request, link, local)?;
        self.run_local(&ready.action, &ready.local, ready.ctx, ready.params)
            .await
            .0
    }

    /// The context and parameters of a member's REQUEST for `local`, its handler, taken out
    /// of it (a request is large, and moving it whole at each step cost more than the rest of
    /// serving it); its deadline counts from now.
    fn prepare_request(
        &self,
        sender: &Arc<str>,
        request: &mut Request,
        link: LinkKind,
        local: Arc<LocalHandler<Stack>>,
    ) -> Result<ReadyRequest> {
        let started = Instant::now();
        let deadline = deadline::of_arrival(started, request.timeout_ms)
            .map_err(|_| Error::timeout(&request.action))?;
        let lineage = Lineage::of_request(request);
        let mut ctx = Context::new(self.dispatch(), self.next_id(), lineage, deadline, started)
            .arrived_from(sender.clone(), request.content_type);
        let params = Payload::encoded(std::mem::take(&mut request.params), request.content_type);
        if let Some(info) = request.stream.take() {
            let stream = self.read_stream(sender, link, request.id, false, info, deadline)?;
            ctx.stream = StreamSlot::new(stream);
        }
        Ok(ReadyRequest {
            action: request.action.clone(),
            local,
            ctx,
            params,
        })
    }

    /// Completes a pending call with the RESPONSE from `sender`.
    pub(crate) fn complete(&self, sender: &str, response: Response) {
        self.inner.pending.complete(sender, response);
    }

    /// Fails every call waiting on `node_id` at once: their requests left, so whether they ran
    /// is unknown.
    pub(crate) fn fail_pending(&self, node_id: &str, reason: &str) {
        self.fail_pending_with(
            node_id,
            Error::new(
                ErrorKind::OutcomeUnknown,
                format!("node '{node_id}' {reason} before answering; the call may have run"),
            ),
        );
    }

    /// Fails every call waiting on `node_id` at once with `error`.
    pub(crate) fn fail_pending_with(&self, node_id: &str, error: Error) {
        self.inner.pending.fail_node(node_id, &error);
    }
}

/// What becomes of a peer's REQUEST as it arrives.
#[expect(
    clippy::large_enum_variant,
    reason = "`Ready` is nearly every request: boxing it would allocate per request"
)]
enum Admission {
    /// Its handler may run.
    Ready(ReadyRequest),
    /// Its sender has not introduced itself yet: it waits for that first (boxed: rare, and
    /// a request is several times the other variants).
    Newcomer(Box<Request>),
    /// Answered with this error.
    Refused(Error),
}

/// Where the RESPONSE to a peer's REQUEST goes, and in what format.
struct Requester {
    id: u64,
    answer_format: ContentType,
    sender: Arc<str>,
    link: LinkKind,
}

/// What serving a peer's REQUEST holds until its RESPONSE is handed over: its place in the
/// node's in-flight count and in its sender's.
struct Serving {
    _running: InFlight<Arc<super::BrokerInner>>,
    _permit: Option<PeerPermit>,
}

/// A member's REQUEST taken apart for its handler.
struct ReadyRequest {
    action: Arc<str>,
    local: Arc<LocalHandler<Stack>>,
    ctx: Context,
    params: Payload<'static>,
}

/// The endpoint an attempt goes to, taken out of the registry.
enum Picked {
    Local(Arc<LocalHandler<Stack>>),
    /// The node, and the attempt counted in flight to it from the pick on.
    Remote(Arc<str>, InFlightCall),
}

/// A REQUEST ready to go (see `Broker::outgoing_request`).
struct OutgoingRequest<'a> {
    packet: Packet,
    reply: PendingReply,
    /// Forgets the pending call when the call ends, however it ends.
    guard: PendingGuard<'a>,
    transport: Arc<dyn crate::transport::Transporter>,
    link: LinkKind,
    streaming: bool,
}

/// Removes a pending call when the caller stops waiting (answer, timeout or cancellation).
struct PendingGuard<'a> {
    broker: &'a Broker,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.broker.inner.pending.remove(self.id);
    }
}

/// The end of the broker's `local_action` layers: the service's own layers, then its handler.
fn service_layers(call: LocalCall<'_>) -> BoxFuture<'_, Result<Payload<'static>>> {
    let local = call.local;
    local
        .layers
        .next(HookKind::LocalAction, hooks::local_action(), &handler_of)
        .run(call)
}

/// The end of a service's `local_action` layers: its handler.
fn handler_of(call: LocalCall<'_>) -> BoxFuture<'_, Result<Payload<'static>>> {
    start_handler(
        call.action,
        &call.local.handler,
        call.service,
        call.ctx,
        call.params,
    )
}

/// How a handler's run ended: its answer, a panic, or its deadline passing first.
type HandlerOutcome = std::result::Result<std::thread::Result<Result<Payload<'static>>>, Elapsed>;

/// A started handler's `work`, caught if it panics and cut off at `deadline`.
type Answer<'a> =
    LazyDeadline<CatchUnwind<AssertUnwindSafe<BoxFuture<'a, Result<Payload<'static>>>>>>;

/// `work`, a started handler's future, caught if it panics and cut off at `deadline`.
fn within_deadline<'a>(
    work: BoxFuture<'a, Result<Payload<'static>>>,
    deadline: Option<Instant>,
) -> Answer<'a> {
    LazyDeadline::new(AssertUnwindSafe(work).catch_unwind(), deadline)
}

/// Starts `handler` (synchronously: it decodes its params and returns its future). A panic while
/// decoding or starting is caught like one while running.
fn start_handler(
    action: &str,
    handler: &ActionFn,
    service: &Arc<str>,
    mut ctx: Context,
    params: Payload<'_>,
) -> BoxFuture<'static, Result<Payload<'static>>> {
    ctx.service = Some(service.clone());
    match std::panic::catch_unwind(AssertUnwindSafe(|| handler(ctx, params))) {
        Ok(work) => work,
        Err(panic) => futures_util::future::ready(Err(panic_error(action, &*panic))).boxed(),
    }
}

/// A panicking handler becomes an error for its caller, never a hang.
fn panic_error(action: &str, panic: &(dyn std::any::Any + Send)) -> Error {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    tracing::error!(%action, %message, "handler panicked");
    Error::new(
        ErrorKind::HandlerPanic,
        format!("handler of '{action}' panicked: {message}"),
    )
}

/// The value of a call's shard key (`#name` for a meta entry, else a top-level param field).
fn shard_key(key: &str, ctx: &Context, params: &Payload<'_>) -> Option<String> {
    let value = match key.strip_prefix('#') {
        Some(meta_key) => ctx.meta().get(meta_key).cloned()?,
        None => {
            let (bytes, content_type) = params.encode().ok()?;
            Payload::encoded(bytes, content_type)
                .decode::<serde_json::Value>()
                .ok()?
                .get(key)?
                .clone()
        }
    };
    Some(match value {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}
