//! The context every handler receives, and the options of one call.
//!
//! A [`Context`] says who is calling (request id of the whole chain, parent id, caller service,
//! nesting level, the node it came from), carries the call's meta and headers, and knows the
//! deadline. Calls and emits made through the context ([`Context::call`], [`Context::emit`])
//! propagate all of that: the chain keeps its request id, the level grows by one, and the
//! remaining time travels with every nested call, so a callee never starts work its caller has
//! given up on.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, Context};
//!
//! let broker = Broker::builder().start().await?;
//! broker.service("greeter")
//!     .action("hello", |ctx: Context, name: String| async move {
//!         Ok(format!("hello {name} at level {} from {:?}", ctx.level(), ctx.caller()))
//!     })
//!     .action("relay", |ctx: Context, name: String| async move {
//!         ctx.call::<String>("greeter.hello", name).await
//!     })
//!     .start()
//!     .await?;
//! let text: String = broker.call("greeter.relay", "ada".to_string()).await?;
//! assert_eq!(text, r#"hello ada at level 2 from Some("greeter")"#);
//! # broker.stop().await;
//! # Ok(()) }
//! ```

use crate::broker::Broker;
use crate::error::Result;
use crate::middleware::FallbackFn;
use crate::packet::{Headers, Meta};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What a handler knows about the call it serves.
#[derive(Clone)]
pub struct Context {
    pub(crate) broker: Broker,
    pub(crate) id: u64,
    pub(crate) request_id: u64,
    pub(crate) parent_id: Option<u64>,
    pub(crate) caller: Option<Arc<str>>,
    pub(crate) service: Option<Arc<str>>,
    pub(crate) node_id: Option<Arc<str>>,
    pub(crate) level: u32,
    pub(crate) meta: Option<Arc<Meta>>,
    pub(crate) headers: Option<Arc<Headers>>,
    pub(crate) deadline: Option<Instant>,
    /// When the call was made (or, serving a peer, when its request arrived).
    pub(crate) started: Instant,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("request_id", &self.request_id)
            .field("parent_id", &self.parent_id)
            .field("caller", &self.caller)
            .field("node_id", &self.node_id)
            .field("level", &self.level)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The broker serving this call.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Id of this context.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Id shared by every call of one chain.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Id of the context that made this call, if any.
    pub fn parent_id(&self) -> Option<u64> {
        self.parent_id
    }

    /// Full name of the service that made this call, if it came from a handler.
    pub fn caller(&self) -> Option<&str> {
        self.caller.as_deref()
    }

    /// Node the call came from; `None` when it was made on this node.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// Depth in the call chain: 1 for a call made outside any handler.
    pub fn level(&self) -> u32 {
        self.level
    }

    /// Call metadata (empty when none was given).
    pub fn meta(&self) -> &Meta {
        static EMPTY: std::sync::OnceLock<Meta> = std::sync::OnceLock::new();
        self.meta
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Meta::new))
    }

    /// Headers (empty when none were given).
    pub fn headers(&self) -> &Headers {
        static EMPTY: Headers = Headers::new();
        self.headers.as_deref().unwrap_or(&EMPTY)
    }

    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When this call was made — or, for a call from another node, when it arrived here.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker.service("clock").action("age", |ctx: phalanx::Context, _: ()| async move {
    ///     Ok(ctx.started().elapsed().as_secs())
    /// }).start().await?;
    /// assert_eq!(broker.call::<u64>("clock.age", ()).await?, 0);
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time left before the deadline (`None` without a deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Calls `action` as part of this chain (same request id, level + 1, same deadline).
    pub async fn call<R: DeserializeOwned + 'static>(
        &self,
        action: &str,
        params: impl Serialize + Send + 'static,
    ) -> Result<R> {
        self.call_with(action, params, CallOptions::default()).await
    }

    /// Like [`Context::call`] with options; a shorter timeout wins over the inherited deadline.
    pub async fn call_with<R: DeserializeOwned + 'static>(
        &self,
        action: &str,
        params: impl Serialize + Send + 'static,
        options: CallOptions,
    ) -> Result<R> {
        self.broker
            .call_in(action, params, &options, Some(self))
            .await
    }

    /// Emits an event as part of this chain (balanced across groups).
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        self.broker
            .emit_in(event, data, crate::middleware::EmitKind::Emit, Some(self))
            .await
    }

    /// Broadcasts an event as part of this chain.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        self.broker
            .emit_in(
                event,
                data,
                crate::middleware::EmitKind::Broadcast,
                Some(self),
            )
            .await
    }
}

/// Options of one call.
///
/// ```
/// use std::time::Duration;
/// use phalanx::CallOptions;
///
/// let options = CallOptions::new()
///     .timeout(Duration::from_millis(200))
///     .meta("tenant", "acme")
///     .header("x-trace", "abc");
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) meta: Option<Meta>,
    pub(crate) headers: Option<Headers>,
    pub(crate) node_id: Option<String>,
    pub(crate) retries: Option<u32>,
    pub(crate) fallback: Option<FallbackFn>,
}

impl CallOptions {
    /// No options: the broker's default timeout, no meta.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fail with a timeout error after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Adds a meta entry (merged over the parent context's meta).
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.meta
            .get_or_insert_with(Meta::new)
            .insert(key.into(), value.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .get_or_insert_with(Headers::new)
            .insert(key.into(), value.into());
        self
    }

    /// Retries for this call, with the broker's back-off (overrides
    /// [`BrokerBuilder::retry`](crate::BrokerBuilder::retry)'s count; 0 turns retries off).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// let broker = phalanx::Broker::builder().start().await?;
    /// let tries = std::sync::Arc::new(AtomicU32::new(0));
    /// let seen = tries.clone();
    /// broker.service("flaky").action("get", move |_ctx, _: ()| {
    ///     let n = seen.fetch_add(1, Ordering::SeqCst);
    ///     async move {
    ///         if n == 0 { Err(phalanx::Error::rejected("busy")) } else { Ok(n) }   // 503, retryable
    ///     }
    /// }).start().await?;
    /// let options = phalanx::CallOptions::new().retries(2);
    /// assert_eq!(broker.call_with::<u32>("flaky.get", (), options).await?, 1);
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// The answer if this call fails.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::{CallOptions, middleware::FallbackFn};
    /// let broker = phalanx::Broker::builder().start().await?;
    /// let options = CallOptions::new().fallback(FallbackFn::value("offline"));
    /// assert_eq!(broker.call_with::<String>("status.get", (), options).await?, "offline");
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn fallback(mut self, fallback: FallbackFn) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// Sends the call to this node only.
    pub fn node(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }
}
