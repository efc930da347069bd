//! Fallbacks: an answer for a call that failed, per action or per call.

use super::{Call, Hooks, Middleware, Next};
use crate::error::{Error, Result};
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

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

    fn answer(&self, err: &Error) -> Result<Payload<'static>> {
        (self.0)(err)
    }
}

/// The fallback layer: on a failed call, answers with the call's fallback
/// ([`CallOptions::fallback`](crate::CallOptions::fallback)) or the action's
/// ([`BrokerBuilder::fallback`](crate::BrokerBuilder::fallback)), in that order.
#[derive(Debug, Clone, Default)]
pub struct Fallback {
    per_action: HashMap<String, FallbackFn>,
}

impl Fallback {
    /// A fallback layer with one fallback per action name.
    ///
    /// ```
    /// use phalanx::middleware::{Fallback, FallbackFn};
    /// let layer = Fallback::new([("users.list".to_string(), FallbackFn::value(0))]);
    /// # let _ = layer;
    /// ```
    pub fn new(per_action: impl IntoIterator<Item = (String, FallbackFn)>) -> Self {
        Self {
            per_action: per_action.into_iter().collect(),
        }
    }
}

impl Middleware for Fallback {
    fn name(&self) -> &'static str {
        "fallback"
    }

    fn hooks(&self) -> Hooks {
        Hooks::CALL
    }

    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let fallback = call
            .options
            .fallback
            .as_ref()
            .or_else(|| self.per_action.get(call.action));
        let Some(fallback) = fallback else {
            return next.run(call);
        };
        let action = call.action;
        next.run(call)
            .map(move |result| {
                result.or_else(|err| {
                    tracing::debug!(action, %err, "answered by fallback");
                    fallback.answer(&err)
                })
            })
            .boxed()
    }
}
