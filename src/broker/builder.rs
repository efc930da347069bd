//! Configuration of a broker before it starts.

use super::Registry;
use super::{Broker, BrokerInner, RUNNING, Timings};
use crate::error::Result;
use crate::limits::Limits;
use crate::metrics::BrokerMetrics;
use crate::middleware::{
    CircuitBreaker, CircuitBreakerConfig, Fallback, FallbackFn, Metrics, Middleware, Retry,
    RetryConfig, Stack, Tracing,
};
use crate::protocol::codec::{Codec, DEFAULT_MAX_FRAME_LEN};
use crate::registry::Strategy;
use crate::transport::{TransportContext, Transporter};
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// Builds and starts a [`Broker`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> phalanx::Result<()> {
/// use std::time::Duration;
/// use phalanx::{Broker, registry::Strategy};
///
/// let broker = Broker::builder()
///     .namespace("shop")
///     .request_timeout(Some(Duration::from_secs(5)))
///     .strategy(Strategy::Random)
///     .start()
///     .await?;
/// assert_eq!(broker.namespace(), "shop");
/// # broker.stop().await;
/// # Ok(()) }
/// ```
pub struct BrokerBuilder {
    node_id: Option<String>,
    namespace: String,
    instance_id: Option<String>,
    timings: Timings,
    max_frame_len: usize,
    limits: Limits,
    strategy: Strategy,
    action_strategies: HashMap<String, Strategy>,
    transports: Vec<Arc<dyn Transporter>>,
    default_middleware: bool,
    retry: RetryConfig,
    breaker: Option<CircuitBreakerConfig>,
    fallbacks: Vec<(String, FallbackFn)>,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("node_id", &self.node_id)
            .field("namespace", &self.namespace)
            .field("timings", &self.timings)
            .field("transports", &self.transports.len())
            .finish_non_exhaustive()
    }
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        Self {
            node_id: None,
            namespace: String::new(),
            instance_id: None,
            timings: Timings {
                request_timeout: Some(Duration::from_secs(30)),
                heartbeat_interval: Duration::from_secs(2),
                heartbeat_timeout: Duration::from_secs(6),
                drain_timeout: Duration::from_secs(10),
                stop_grace: Duration::from_millis(200),
            },
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            limits: Limits::default(),
            strategy: Strategy::default(),
            action_strategies: HashMap::default(),
            transports: Vec::new(),
            default_middleware: true,
            retry: RetryConfig::default(),
            breaker: None,
            fallbacks: Vec::new(),
            middleware: Vec::new(),
        }
    }
}

impl BrokerBuilder {
    /// Node id; default: host name plus a short random suffix.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    /// Namespace; nodes only see nodes of the same namespace. Default: empty.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Instance id; default: random, new on every start.
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Default timeout of a call (`None`: wait as long as the target lives). Default: 30 s.
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timings.request_timeout = timeout;
        self
    }

    /// How often the node says it is alive (default 2 s) and how long a peer may stay silent
    /// before it is declared down (default 6 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.timings.heartbeat_interval = interval;
        self.timings.heartbeat_timeout = timeout;
        self
    }

    /// Longest wait for running handlers on [`Broker::stop`]. Default: 10 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.timings.drain_timeout = timeout;
        self
    }

    /// How long a stopping node keeps answering calls already on their way. Default: 200 ms.
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.timings.stop_grace = grace;
        self
    }

    /// Largest frame accepted from or sent to a peer. Default: 16 MiB.
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Most requests from one peer served at once; beyond that the peer gets queue-full (429)
    /// errors at once. Default: 1024 (a shortcut for [`Limits::max_peer_in_flight`]).
    pub fn max_peer_in_flight(mut self, limit: usize) -> Self {
        self.limits.max_peer_in_flight = limit.max(1);
        self
    }

    /// Every bound on what peers may make this node hold or do ([`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How remote endpoints are balanced. Default: round-robin.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The strategy for one action, over the broker's.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::registry::Strategy;
    /// let broker = phalanx::Broker::builder()
    ///     .strategy(Strategy::LeastLatency)
    ///     .action_strategy("carts.get", Strategy::shard("#user"))
    ///     .start().await?;
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn action_strategy(mut self, action: impl Into<String>, strategy: Strategy) -> Self {
        self.action_strategies.insert(action.into(), strategy);
        self
    }

    /// Retries for every call of this broker (a call may override the count with
    /// [`CallOptions::retries`](crate::CallOptions::retries)). Default: none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::middleware::RetryConfig;
    /// let broker = phalanx::Broker::builder().retry(RetryConfig::new(3)).start().await?;
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn retry(mut self, policy: RetryConfig) -> Self {
        self.retry = policy;
        self
    }

    /// Turns on a circuit breaker per remote endpoint.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::middleware::CircuitBreakerConfig;
    /// let broker = phalanx::Broker::builder()
    ///     .circuit_breaker(CircuitBreakerConfig::default().min_requests(5))
    ///     .start().await?;
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn circuit_breaker(mut self, config: CircuitBreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// The answer for calls of `action` that fail (a call's own fallback wins).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::middleware::FallbackFn;
    /// let broker = phalanx::Broker::builder()
    ///     .fallback("prices.get", FallbackFn::value(0.0))
    ///     .start().await?;
    /// assert_eq!(broker.call::<f64>("prices.get", "apple").await?, 0.0); // nobody serves it
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn fallback(mut self, action: impl Into<String>, fallback: FallbackFn) -> Self {
        self.fallbacks.push((action.into(), fallback));
        self
    }

    /// Adds a middleware layer (see [`middleware`](crate::middleware) for hooks and order).
    pub fn middleware(mut self, layer: impl Middleware) -> Self {
        self.middleware.push(Arc::new(layer));
        self
    }

    /// Leaves out the built-in layers (tracing spans, metrics, fallback, retry): the bare call
    /// path, for the last nanoseconds. Retries, fallbacks and metrics then do nothing.
    pub fn without_default_middleware(mut self) -> Self {
        self.default_middleware = false;
        self
    }

    /// Adds a transport; several may be added (fastest link kind wins per peer).
    pub fn transport(mut self, transport: impl Transporter) -> Self {
        self.transports.push(Arc::new(transport));
        self
    }

    /// Starts the broker: `$node` service, transports, discovery, heartbeats.
    pub async fn start(self) -> Result<Broker> {
        let (interval, timeout) = (
            self.timings.heartbeat_interval,
            self.timings.heartbeat_timeout,
        );
        if interval.is_zero() || timeout <= interval {
            return Err(crate::Error::validation(format!(
                "the heartbeat timeout ({timeout:?}) must exceed its interval ({interval:?}), \
                 or every peer is declared down between two heartbeats"
            )));
        }
        let node_id: Arc<str> = self.node_id.unwrap_or_else(default_node_id).into();
        let mut transports = self.transports;
        transports.sort_by_key(|t| t.kind());
        let mut layers: Vec<Arc<dyn Middleware>> = Vec::new();
        if self.default_middleware {
            layers.push(Arc::new(Tracing));
            layers.push(Arc::new(Metrics::default()));
            layers.push(Arc::new(Fallback::new(self.fallbacks)));
            layers.push(Arc::new(Retry::new(self.retry)));
        }
        if let Some(config) = self.breaker {
            layers.push(Arc::new(CircuitBreaker::new(config)));
        }
        layers.extend(self.middleware);
        let host_id = host_id();
        let middleware = Stack::new(layers);
        let inner = Arc::new(BrokerInner {
            namespace: self.namespace.into(),
            instance_id: self.instance_id.unwrap_or_else(random_hex),
            host_id: host_id.clone(),
            timings: self.timings,
            codec: Codec::new(self.max_frame_len),
            limits: self.limits,
            registry: RwLock::new(Registry::new(
                node_id.clone(),
                host_id,
                self.strategy,
                self.action_strategies,
            )),
            admission: middleware.vetoes().then(|| {
                let stack = middleware.clone();
                Box::new(move |action: &str, node: &str| stack.admits(action, node)) as Box<_>
            }),
            middleware,
            metrics: Arc::new(BrokerMetrics::new(node_id.clone())),
            transports,
            pending: Default::default(),
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            in_flight: AtomicUsize::new(0),
            drained: Notify::new(),
            listening: tokio::sync::Mutex::new(()),
            state: AtomicU8::new(RUNNING),
            registry_changed: Notify::new(),
            registry_generation: AtomicU64::new(0),
            streams: Default::default(),
            pings: Default::default(),
            introductions: Semaphore::new(super::call::MAX_UNKNOWN_SENDER_WAITS),
            stopped_hooks: Mutex::default(),
            info_seq: AtomicU64::new(1),
            background: Mutex::default(),
            started_at: Instant::now(),
            node_id,
        });
        let broker = Broker { inner };
        let node = broker.node_handle();
        for layer in broker.inner.middleware.layers() {
            layer.on_start(&node);
        }
        super::node_service::start(&broker).await?;
        let handler = super::dispatch::handler(&broker);
        for transport in &broker.inner.transports {
            transport
                .start(TransportContext {
                    node_id: broker.inner.node_id.clone(),
                    namespace: broker.inner.namespace.clone(),
                    host_id: broker.inner.host_id.as_str().into(),
                    codec: broker.inner.codec,
                    handler: handler.clone(),
                    traffic: broker.inner.metrics.clone(),
                })
                .await?;
        }
        broker.discover_all().await;
        super::liveness::spawn_heartbeat(&broker);
        tracing::info!(node = %broker.inner.node_id, namespace = %broker.inner.namespace, "broker started");
        Ok(broker)
    }
}

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn default_node_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    // 48 random bits: two nodes of one host never meet by chance under the same id.
    format!("{host}-{:012x}", rand::random::<u64>() >> 16)
}

/// Identity of this machine, boot and network namespace: equal for every node that can share
/// memory and a runtime directory with this one (nodes in other network namespaces, such as
/// containers or simulated hosts, count as other hosts).
pub(crate) fn host_id() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let machine = read("/etc/machine-id");
    let boot = read("/proc/sys/kernel/random/boot_id");
    let netns = std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if machine.is_empty() && boot.is_empty() {
        gethostname::gethostname().to_string_lossy().into_owned()
    } else {
        format!("{machine}:{boot}:{netns}")
    }
}
