//! Fallbacks: an answer for a call that failed, per action or per call.

use super::{Call, Hooks, Middleware, Next};
use crate::context::{CallOptions, FallbackFn};
use crate::error::Result;
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rustc_hash::FxHashMap as HashMap;

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

    fn intercepts_call(&self, action: &str, options: &CallOptions) -> bool {
        options.fallback.is_some() || self.per_action.contains_key(action)
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
