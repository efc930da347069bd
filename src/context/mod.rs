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

mod lineage;
mod options;

pub(crate) use lineage::Lineage;
pub use options::{CallOptions, FallbackFn};

use crate::error::Result;
use crate::payload::{ContentType, Payload, encode_value};
pub use crate::protocol::packet::{Headers, Meta};
use crate::stream::{ByteStream, StreamSlot};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The broker behind a context, as the context sees it: calls and emits made from a handler go
/// back through it. Implemented by the broker, which sits above this module; `Any` lets the
/// broker module recover its own type for [`Context::broker`].
pub(crate) trait Dispatch: Any + Send + Sync {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Calls `action` as a child of `parent`.
    fn call<'a>(
        self: Arc<Self>,
        action: &'a str,
        params: Payload<'a>,
        options: &'a CallOptions,
        parent: &'a Context,
    ) -> BoxFuture<'a, Result<Payload<'static>>>;

    /// Emits `event` (`data` encoded as `content_type`) as a child of `parent`.
    fn emit<'a>(
        self: Arc<Self>,
        event: &'a str,
        data: Bytes,
        content_type: ContentType,
        kind: EmitKind,
        parent: &'a Context,
    ) -> BoxFuture<'a, Result<()>>;
}

/// How an event is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EmitKind {
    /// One handler per listening group.
    Emit,
    /// Every listener on every node.
    Broadcast,
    /// Every listener on this node.
    BroadcastLocal,
}

/// What a handler knows about the call it serves.
#[derive(Clone)]
pub struct Context {
    /// The broker serving this context.
    pub(crate) dispatch: Arc<dyn Dispatch>,
    pub(crate) id: u64,
    pub(crate) lineage: Lineage,
    /// Full name of the service whose handler runs with this context.
    pub(crate) service: Option<Arc<str>>,
    /// The node the call or event came from; `None` when made on this node.
    pub(crate) node_id: Option<Arc<str>>,
    /// The event an event handler serves; `None` for an action.
    pub(crate) event: Option<Arc<str>>,
    /// The byte stream that came with the call, until the handler takes it.
    pub(crate) stream: StreamSlot,
    pub(crate) deadline: Option<Instant>,
    /// How the params travel if the call crosses a link (and how the answer is asked for).
    pub(crate) format: ContentType,
    /// Serving a peer's request, the format its answer travels in: the handler's value is
    /// encoded in it as soon as it is ready. `None` for a call made on this node.
    pub(crate) answer_format: Option<ContentType>,
    /// When the call was made (or, serving a peer, when its request arrived).
    pub(crate) started: Instant,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("id", &self.id)
            .field("lineage", &self.lineage)
            .field("node_id", &self.node_id)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for a call, event or handler run by `dispatch`'s node.
    pub(crate) fn new(
        dispatch: Arc<dyn Dispatch>,
        id: u64,
        lineage: Lineage,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Self {
        Self {
            dispatch,
            id,
            lineage,
            service: None,
            node_id: None,
            event: None,
            stream: StreamSlot::default(),
            deadline,
            format: ContentType::MsgPack,
            answer_format: None,
            started,
        }
    }

    /// The same context, as a request from `node_id` whose answer travels in `answer_format`.
    pub(crate) fn arrived_from(mut self, node_id: Arc<str>, answer_format: ContentType) -> Self {
        self.node_id = Some(node_id);
        self.answer_format = Some(answer_format);
        self
    }

    /// Id of the node serving this context (not the caller's: see [`Context::node_id`]).
    pub(crate) fn this_node(&self) -> &str {
        self.dispatch.node_id()
    }

    /// Id of this context.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Id shared by every call of one chain.
    pub fn request_id(&self) -> u64 {
        self.lineage.request_id
    }

    /// Id of the context that made this call, if any.
    pub fn parent_id(&self) -> Option<u64> {
        self.lineage.parent_id
    }

    /// Full name of the service that made this call, if it came from a handler.
    pub fn caller(&self) -> Option<&str> {
        self.lineage.caller.as_deref()
    }

    /// Node the call came from; `None` when it was made on this node.
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The name of the event an event handler is serving (useful when it listens to a pattern);
    /// `None` in an action.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    /// broker.service("audit")
    ///     .event("orders.*", move |ctx: phalanx::Context, _: serde_json::Value| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(ctx.event().map(str::to_owned)).await.ok(); Ok(()) }
    ///     })
    ///     .start().await?;
    /// broker.emit("orders.paid", &1).await?;
    /// assert_eq!(rx.recv().await.flatten().as_deref(), Some("orders.paid"));
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// Takes the byte stream that came with this call (see [`stream`](crate::stream)); `None`
    /// when there was none or it was already taken. A stream the handler never takes is
    /// cancelled when the call ends, which stops its producer.
    pub fn take_stream(&self) -> Option<ByteStream> {
        self.stream.take()
    }

    /// Depth in the call chain: 1 for a call made outside any handler.
    pub fn level(&self) -> u32 {
        self.lineage.level
    }

    /// Call metadata (empty when none was given).
    pub fn meta(&self) -> &Meta {
        static EMPTY: std::sync::OnceLock<Meta> = std::sync::OnceLock::new();
        self.lineage
            .meta
            .as_deref()
            .unwrap_or_else(|| EMPTY.get_or_init(Meta::new))
    }

    /// Headers (empty when none were given).
    pub fn headers(&self) -> &Headers {
        static EMPTY: Headers = Headers::new();
        self.lineage.headers.as_deref().unwrap_or(&EMPTY)
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
        let mut params = Some(params);
        self.dispatch
            .clone()
            .call(action, Payload::lend(&mut params), &options, self)
            .await?
            .decode()
    }

    /// Emits an event as part of this chain (balanced across groups).
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        let (data, content_type) = encode_value(data, ContentType::MsgPack)?;
        self.dispatch
            .clone()
            .emit(event, data, content_type, EmitKind::Emit, self)
            .await
    }

    /// Broadcasts an event as part of this chain.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        let (data, content_type) = encode_value(data, ContentType::MsgPack)?;
        self.dispatch
            .clone()
            .emit(event, data, content_type, EmitKind::Broadcast, self)
            .await
    }
}

/// Contexts for testing layers without a broker.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use futures_util::FutureExt;

    /// A node whose calls and emits fail at once.
    struct Detached;

    impl Dispatch for Detached {
        fn node_id(&self) -> &str {
            "test-node"
        }

        fn call<'a>(
            self: Arc<Self>,
            action: &'a str,
            _: Payload<'a>,
            _: &'a CallOptions,
            _: &'a Context,
        ) -> BoxFuture<'a, Result<Payload<'static>>> {
            futures_util::future::ready(Err(crate::Error::service_not_found(action))).boxed()
        }

        fn emit<'a>(
            self: Arc<Self>,
            _: &'a str,
            _: Bytes,
            _: ContentType,
            _: EmitKind,
            _: &'a Context,
        ) -> BoxFuture<'a, Result<()>> {
            futures_util::future::ready(Ok(())).boxed()
        }
    }

    /// A root context on a detached node, without a deadline.
    pub(crate) fn context() -> Context {
        Context::new(
            Arc::new(Detached),
            1,
            Lineage::root(1),
            None,
            Instant::now(),
        )
    }
}
