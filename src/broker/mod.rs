//! The broker: one per process (or per test node), owner of the registry, the transports and the
//! local services.
//!
//! A call flows `Broker::call → registry pick → local handler | transport send → peer broker →
//! handler` and back. A call to a service of this broker is a direct `await` of its handler: no
//! serialization, no task hop. Everything else goes through a [`Transporter`].

mod builder;
mod call;
mod dispatch;
mod events;
mod liveness;
mod membership;
mod node_service;
mod pending;
mod ping;
mod service;
mod streams;

pub use builder::BrokerBuilder;
#[cfg(feature = "gateway")]
pub(crate) use service::PUBLISH_HTTP_SETTING;
pub use service::ServiceBuilder;

use crate::context::{CallOptions, Context, Dispatch, EmitKind};
use crate::error::{Error, ErrorKind, Result};
use crate::handler::{ActionFn, EventFn};
use crate::metrics::{BrokerMetrics, MetricsSnapshot, NodeState, RegistryMetrics};
use crate::middleware::{NodeHandle, Stack};
use crate::payload::{ContentType, Payload};
use crate::protocol::codec::Codec;
use crate::protocol::packet::ServiceInfo;
use crate::protocol::packet::{Info, PROTOCOL_VERSION, Packet, PacketBody, PeerInfo};
use crate::registry;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::any::Any;

/// The registry as a broker fills it: each local service keeps its own middleware beside its
/// handlers.
pub(crate) type Registry = registry::Registry<Stack>;
use crate::transport::{LinkKind, Transporter};
use pending::PendingCalls;
use service::LifecycleFn;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A handle to a running broker. Cheap to clone; all clones are the same broker.
///
/// # Lifecycle
/// [`BrokerBuilder::start`] starts the transports and the `$node` service and announces the node.
/// [`Broker::stop`] is graceful: the node first announces that it serves nothing, keeps answering
/// what is already on its way for a short grace period, waits for in-flight handlers to finish
/// (bounded by the drain timeout), says `DISCONNECT`, runs the services' `stopped` hooks in reverse
/// start order and closes the transports.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<BrokerInner>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("node_id", &self.inner.node_id)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// A [`Broker`] handle that does not keep it alive (for middleware that needs to reach it).
#[derive(Debug, Clone)]
pub(crate) struct WeakBroker(std::sync::Weak<BrokerInner>);

impl WeakBroker {
    pub(crate) fn upgrade(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
}

const RUNNING: u8 = 0;
const STOPPING: u8 = 1;
const STOPPED: u8 = 2;

/// Timing knobs of a broker, set through [`BrokerBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Timings {
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) stop_grace: Duration,
}

pub(crate) struct BrokerInner {
    pub(crate) node_id: Arc<str>,
    pub(crate) namespace: Arc<str>,
    pub(crate) instance_id: String,
    pub(crate) host_id: String,
    pub(crate) timings: Timings,
    pub(crate) codec: Codec,
    /// Bounds on what peers may make this node hold or do.
    pub(crate) limits: crate::limits::Limits,
    registry: RwLock<Registry>,
    /// The broker's middleware, outermost first.
    pub(crate) middleware: Stack,
    pub(crate) metrics: Arc<BrokerMetrics>,
    /// Whether the middleware lets the balancer choose an endpoint now; `None` when no layer
    /// vetoes.
    pub(crate) admission: Option<Box<registry::Admission>>,
    transports: Vec<Arc<dyn Transporter>>,
    pending: PendingCalls,
    /// Pings waiting for their PONG.
    pings: ping::PendingPings,
    /// Byte streams being read from and produced to peers.
    streams: streams::OpenStreams,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    drained: Notify,
    /// Held while the transports are told what this node's services listen to, so they hear
    /// the changes in order.
    listening: tokio::sync::Mutex<()>,
    state: AtomicU8,
    registry_changed: Notify,
    /// Counts changes of the registry, so views computed from it know when to recompute.
    registry_generation: AtomicU64,
    /// Requests from not-yet-known senders waiting for their INFO (bounded).
    introductions: Semaphore,
    stopped_hooks: Mutex<Vec<(String, Vec<LifecycleFn>)>>,
    info_seq: AtomicU64,
    background: Mutex<Vec<JoinHandle<()>>>,
    started_at: Instant,
}

impl Broker {
    /// A builder for a new broker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().node_id("api-1").namespace("shop").start().await?;
    /// assert_eq!(broker.node_id(), "api-1");
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// This node's namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Changes on every start of the node.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// Starts describing a service of this broker; finish with [`ServiceBuilder::start`].
    pub fn service(&self, name: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder::new(self.clone(), name.into())
    }

    /// Waits until every named service (full name, e.g. `v2.math`) runs somewhere in the cluster.
    ///
    /// Fails with [`ErrorKind::DependencyTimeout`] after
    /// `timeout`.
    pub async fn wait_for_services(&self, names: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.inner.registry_changed.notified();
            let missing: Vec<&str> = {
                let registry = self.inner.registry();
                names
                    .iter()
                    .copied()
                    .filter(|n| !registry.has_service(n))
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::new(
                    crate::ErrorKind::DependencyTimeout,
                    format!(
                        "services not available after {timeout:?}: {}",
                        missing.join(", ")
                    ),
                )
                .with_type("DEPENDENCY_TIMEOUT"));
            }
        }
    }

    /// This node's metrics since it started (what `$node.metrics` returns).
    pub fn metrics(&self) -> MetricsSnapshot {
        let (nodes, actions, subscriptions) = self.inner.registry().sizes();
        self.inner.metrics.snapshot(NodeState {
            uptime: self.uptime(),
            in_flight: self.in_flight(),
            registry: RegistryMetrics {
                nodes,
                actions,
                subscriptions,
            },
        })
    }

    /// Reports the registry's new sizes after a change.
    pub(crate) fn report_registry_sizes(&self) {
        let (nodes, actions, _) = self.inner.registry().sizes();
        self.inner.metrics.registry_sizes(nodes, actions);
    }

    /// A handle that does not keep the broker alive.
    pub(crate) fn downgrade(&self) -> WeakBroker {
        WeakBroker(Arc::downgrade(&self.inner))
    }

    /// Handlers of this node running right now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Time since the broker started.
    pub fn uptime(&self) -> Duration {
        self.inner.started_at.elapsed()
    }

    /// Whether [`Broker::stop`] has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) != RUNNING
    }

    /// Stops gracefully (see the module docs). Calling it again does nothing.
    pub async fn stop(&self) {
        let inner = &self.inner;
        if inner
            .state
            .compare_exchange(RUNNING, STOPPING, Ordering::SeqCst, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        tracing::info!(node = %inner.node_id, "broker stopping");
        // 1. Stop being chosen: leave the groups a bus balances (their events go to the other
        //    members from now on), and peers drop our endpoints but keep the links.
        self.listen().await;
        self.announce_info().await;
        // 2. Answer what is already on its way, then wait for handlers to finish.
        let grace_end = Instant::now() + inner.timings.stop_grace;
        let drain_end = Instant::now() + inner.timings.drain_timeout;
        tokio::time::sleep_until(grace_end.min(drain_end)).await;
        while inner.in_flight.load(Ordering::SeqCst) > 0 {
            let drained = inner.drained.notified();
            if inner.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(drain_end, drained).await.is_err() {
                tracing::warn!(
                    in_flight = inner.in_flight.load(Ordering::Relaxed),
                    "drain timeout: stopping with handlers still running"
                );
                break;
            }
        }
        // 3. Leave.
        let bye = Packet::new(
            inner.node_id.clone(),
            PacketBody::Disconnect(Default::default()),
        );
        for transport in &inner.transports {
            if let Err(err) = transport.broadcast(&bye).await {
                tracing::debug!(%err, "could not send DISCONNECT");
            }
        }
        inner.state.store(STOPPED, Ordering::Release);
        // 4. Services in reverse start order.
        let services = std::mem::take(&mut *inner.stopped_hooks.lock().expect("hooks lock"));
        for (name, hooks) in services.into_iter().rev() {
            for hook in hooks {
                if let Err(err) = hook(self.clone()).await {
                    tracing::warn!(service = %name, %err, "stopped hook failed");
                }
            }
        }
        // 5. Links and background work.
        for transport in &inner.transports {
            transport.stop().await;
        }
        for task in std::mem::take(&mut *inner.background.lock().expect("tasks lock")) {
            task.abort();
        }
        inner.pending.fail_all(&Error::new(
            ErrorKind::NodeStopping,
            "the calling broker stopped",
        ));
        // Handlers may hold broker clones: dropping the registry breaks those cycles.
        *inner.registry_mut() = Registry::new(
            inner.node_id.clone(),
            String::new(),
            Default::default(),
            Default::default(),
        );
        tracing::info!(node = %inner.node_id, "broker stopped");
    }

    /// Adds a started service to the registry and announces it.
    pub(crate) async fn register_service(
        &self,
        info: ServiceInfo,
        actions: Vec<(String, ActionFn)>,
        events: Vec<(String, String, EventFn)>,
        middleware: Stack,
        stopped: Vec<LifecycleFn>,
    ) {
        let name = info.full_name.clone();
        let node = self.node_handle();
        for layer in middleware.layers() {
            layer.on_start(&node);
        }
        self.inner
            .registry_mut()
            .add_local_service(info, actions, events, middleware);
        self.report_registry_sizes();
        self.inner
            .stopped_hooks
            .lock()
            .expect("hooks lock")
            .push((name, stopped));
        self.inner.mark_registry_changed();
        self.listen().await;
        self.announce_info().await;
    }

    /// Tells every transport what this node's services listen to now — nothing once the broker
    /// is stopping (see [`Transporter::listen`]).
    async fn listen(&self) {
        let _in_order = self.inner.listening.lock().await;
        let subscriptions = if self.is_stopping() {
            Vec::new()
        } else {
            self.inner.registry().local_subscriptions()
        };
        for transport in &self.inner.transports {
            if let Err(err) = transport.listen(&subscriptions).await {
                tracing::warn!(transport = %transport.kind(), %err, "could not join this node's event groups");
            }
        }
    }

    /// This node's INFO as peers see it.
    pub(crate) fn info(&self) -> Info {
        let inner = &self.inner;
        let registry = inner.registry();
        let services = if inner.state.load(Ordering::Acquire) == RUNNING {
            registry.local_services().to_vec()
        } else {
            Vec::new()
        };
        let peers = registry
            .nodes()
            .filter(|(_, n)| n.available && !n.info.addresses.is_empty())
            .map(|(id, n)| PeerInfo {
                node_id: id.to_string(),
                addresses: n.info.addresses.clone(),
                address_record: n.info.address_record.clone(),
            })
            .collect();
        Info {
            instance_id: inner.instance_id.clone(),
            namespace: inner.namespace.to_string(),
            host_id: inner.host_id.clone(),
            addresses: inner
                .transports
                .iter()
                .flat_map(|t| t.addresses())
                .collect(),
            protocol_version: PROTOCOL_VERSION,
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            seq: inner.info_seq.load(Ordering::Acquire),
            services,
            peers,
            metadata: Default::default(),
            address_record: inner.transports.iter().find_map(|t| t.address_record()),
        }
    }

    /// Tells every peer about a change in this node's services.
    pub(crate) async fn announce_info(&self) {
        self.inner.info_seq.fetch_add(1, Ordering::AcqRel);
        let packet = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
        for transport in &self.inner.transports {
            if let Err(err) = transport.broadcast(&packet).await {
                tracing::debug!(%err, "could not announce INFO");
            }
        }
    }

    /// What the middleware may use of this node: its id, metrics and local events (held
    /// weakly: layers belong to the broker).
    pub(crate) fn node_handle(&self) -> NodeHandle {
        let broker = self.downgrade();
        let events = move |event: &str, data: Bytes| {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            let event = event.to_owned();
            // Never inline: the caller may hold the registry's lock, which dispatch takes.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { broker.raise_local(&event, data) });
            }
        };
        NodeHandle::new(
            self.inner.node_id.clone(),
            self.inner.metrics.clone(),
            Arc::new(events),
        )
    }

    /// This broker as contexts reach it.
    pub(crate) fn dispatch(&self) -> Arc<dyn Dispatch> {
        self.inner.clone()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The transport that reaches `node_id` by its best link.
    pub(crate) fn transport_for(&self, node_id: &str) -> Result<(Arc<dyn Transporter>, LinkKind)> {
        let link = self
            .inner
            .registry()
            .node(node_id)
            .map(|n| n.link)
            .ok_or_else(|| Error::rejected(format!("node '{node_id}' is not known")))?;
        self.transport_of(link)
            .map(|t| (t, link))
            .ok_or_else(|| Error::transport(format!("no transport for link kind {link}")))
    }

    pub(crate) fn transport_of(&self, link: LinkKind) -> Option<Arc<dyn Transporter>> {
        self.inner
            .transports
            .iter()
            .find(|t| t.carries(link))
            .cloned()
    }
}

impl Dispatch for BrokerInner {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn call<'a>(
        self: Arc<Self>,
        action: &'a str,
        params: Payload<'a>,
        options: &'a CallOptions,
        parent: &'a Context,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        async move {
            Broker { inner: self }
                .call_payload(action, params, options, Some(parent))
                .await
        }
        .boxed()
    }

    fn emit<'a>(
        self: Arc<Self>,
        event: &'a str,
        data: Bytes,
        content_type: ContentType,
        kind: EmitKind,
        parent: &'a Context,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            Broker { inner: self }
                .emit_encoded(event, data, content_type, kind, Some(parent))
                .await
        }
        .boxed()
    }
}

impl Context {
    /// The broker serving this call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().node_id("n1").start().await?;
    /// broker.service("who").action("am-i", |ctx: phalanx::Context, _: ()| async move {
    ///     Ok(ctx.broker().node_id().to_owned())
    /// }).start().await?;
    /// assert_eq!(broker.call::<String>("who.am-i", ()).await?, "n1");
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn broker(&self) -> Broker {
        let node: Arc<dyn Any + Send + Sync> = self.dispatch.clone();
        let inner = node
            .downcast::<BrokerInner>()
            .unwrap_or_else(|_| unreachable!("only brokers make contexts"));
        Broker { inner }
    }
}

impl BrokerInner {
    pub(crate) fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().expect("registry lock")
    }

    pub(crate) fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().expect("registry lock")
    }

    /// Wakes whoever waits on the registry and marks views of it stale.
    pub(crate) fn mark_registry_changed(&self) {
        self.registry_generation.fetch_add(1, Ordering::Release);
        self.registry_changed.notify_waiters();
    }

    /// Changes whenever the registry does.
    #[cfg(feature = "gateway")]
    pub(crate) fn registry_generation(&self) -> u64 {
        self.registry_generation.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.state.load(Ordering::Acquire) == STOPPED
    }
}

/// Counts a running handler; wakes the drain when the last one ends. Borrows its broker, or
/// (`InFlight<Arc<BrokerInner>>`) owns a handle to it, to travel with a task.
pub(crate) struct InFlight<B: Deref<Target = BrokerInner>>(B);

impl<'a> InFlight<&'a BrokerInner> {
    pub(crate) fn enter(broker: &'a Broker) -> Self {
        broker.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(&broker.inner)
    }
}

impl InFlight<Arc<BrokerInner>> {
    pub(crate) fn enter_owned(broker: &Broker) -> Self {
        broker.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(broker.inner.clone())
    }
}

impl<B: Deref<Target = BrokerInner>> Drop for InFlight<B> {
    fn drop(&mut self) {
        // SeqCst pairs with `stop`: either it sees the count reach zero or we see it stopping.
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.0.state.load(Ordering::SeqCst) != RUNNING
        {
            self.0.drained.notify_waiters();
        }
    }
}
