//! The options of one call.

use crate::error::{Error, Result};
use crate::payload::{ContentType, Payload};
use crate::protocol::packet::{Headers, Meta};
use crate::stream::{ByteStream, StreamSlot};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

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
    pub(crate) idempotent: bool,
    pub(crate) fallback: Option<FallbackFn>,
    pub(crate) stream: StreamSlot,
    pub(crate) format: ContentType,
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

    /// Sends `stream` beside the params: the handler reads it with
    /// [`Context::take_stream`](crate::Context::take_stream). A call with a stream is not retried
    /// once the stream has started to flow (it cannot be sent twice).
    pub fn stream(mut self, stream: ByteStream) -> Self {
        self.stream = StreamSlot::new(stream);
        self
    }

    /// Sends the params as `format` (MessagePack, the default, or JSON) when the call crosses a
    /// link, and asks for the answer in the same format. A [`Json`](crate::Json) or
    /// [`Proto`](crate::Proto) value keeps its own format whatever this says.
    ///
    /// ```
    /// use phalanx::{CallOptions, ContentType};
    /// let options = CallOptions::new().format(ContentType::Json);
    /// # let _ = options;
    /// ```
    pub fn format(mut self, format: ContentType) -> Self {
        self.format = format;
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .get_or_insert_with(Headers::new)
            .insert(key.into(), value.into());
        self
    }

    /// Declares the call safe to run twice, so retries also cover failures after which it may
    /// have run ([`Error::may_have_run`](crate::Error::may_have_run): a timeout, or a node lost
    /// while the request was out). Without it only failures that prove the call did not run
    /// are retried.
    ///
    /// ```
    /// let options = phalanx::CallOptions::new().retries(3).idempotent();
    /// # let _ = options;
    /// ```
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
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

/// Turns a call's final error into an answer (or another error).
///
/// ```
/// use phalanx::middleware::FallbackFn;
///
/// let cached = FallbackFn::value(vec!["cached", "list"]);
/// let by_error = FallbackFn::new(|err: &phalanx::Error| {
///     if err.is_retryable() { Ok(Vec::<String>::new()) } else { Err(err.clone()) }
/// });
/// # let _ = (cached, by_error);
/// ```
#[derive(Clone)]
pub struct FallbackFn(Arc<AnswerFn>);

type AnswerFn = dyn Fn(&Error) -> Result<Payload<'static>> + Send + Sync;

impl fmt::Debug for FallbackFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackFn(..)")
    }
}

impl FallbackFn {
    /// A function of the error.
    pub fn new<T, F>(f: F) -> Self
    where
        T: Serialize + Send + 'static,
        F: Fn(&Error) -> Result<T> + Send + Sync + 'static,
    {
        Self(Arc::new(move |err| f(err).map(Payload::local)))
    }

    /// Always the same value.
    pub fn value<T: Serialize + Clone + Send + Sync + 'static>(value: T) -> Self {
        Self::new(move |_| Ok(value.clone()))
    }

    pub(crate) fn answer(&self, err: &Error) -> Result<Payload<'static>> {
        (self.0)(err)
    }
}
