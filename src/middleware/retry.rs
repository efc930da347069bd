//! Retries: exponential back-off with jitter, only for retryable errors, never past the call's
//! deadline, and on another endpoint when one exists. A failure after which the call may have
//! run (a timeout, a node lost mid-call) is retried only when the caller declared the call
//! [idempotent](crate::CallOptions::idempotent): nothing runs twice by surprise.

use super::{Call, Hooks, Middleware, Next};
use crate::context::CallOptions;
use crate::error::Result;
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio::time::Instant;

/// When and how often a failed call is tried again.
///
/// The wait before retry `n` (1 = the first retry) is `delay · factor^(n-1)`, capped at
/// `max_delay`, minus a random share of up to `jitter` of it (so callers that failed together do
/// not retry together, and the cap is never exceeded).
///
/// ```
/// use std::time::Duration;
/// use phalanx::middleware::RetryConfig;
///
/// let policy = RetryConfig::new(5)
///     .delay(Duration::from_millis(100))
///     .max_delay(Duration::from_millis(300))
///     .jitter(0.0);
/// let waits: Vec<u64> = (1..=4).map(|n| policy.backoff(n, 0.5).as_millis() as u64).collect();
/// assert_eq!(waits, [100, 200, 300, 300]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    retries: u32,
    delay: Duration,
    max_delay: Duration,
    factor: f64,
    jitter: f64,
}

impl Default for RetryConfig {
    /// No retries; when turned on: 100 ms doubling up to 2 s, half of it jittered.
    fn default() -> Self {
        Self {
            retries: 0,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl RetryConfig {
    /// Up to `retries` retries after the first attempt, with the default back-off.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            ..Self::default()
        }
    }

    /// The wait before the first retry.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The longest wait between attempts.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// How much each wait grows over the previous one (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// The share of each wait that is randomized, in `0.0..=1.0`.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// Retries after the first attempt.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before retry `attempt` (1-based) given a random sample `u` in `0.0..1.0`.
    pub fn backoff(&self, attempt: u32, u: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = (self.delay.as_secs_f64() * self.factor.powi(exponent))
            .min(self.max_delay.as_secs_f64());
        Duration::from_secs_f64(base * (1.0 - self.jitter * u.clamp(0.0, 1.0)))
    }
}

/// The retry layer: applies the broker's [`RetryConfig`], or the call's own
/// ([`CallOptions::retries`](crate::CallOptions::retries)).
#[derive(Debug, Clone, Default)]
pub struct Retry {
    policy: RetryConfig,
}

impl Retry {
    /// A retry layer with `policy`.
    ///
    /// ```
    /// let retry = phalanx::middleware::Retry::new(phalanx::middleware::RetryConfig::new(2));
    /// assert_eq!(retry.policy().retries(), 2);
    /// ```
    pub fn new(policy: RetryConfig) -> Self {
        Self { policy }
    }

    /// The policy of this layer.
    pub fn policy(&self) -> &RetryConfig {
        &self.policy
    }
}

impl Middleware for Retry {
    fn name(&self) -> &'static str {
        "retry"
    }

    fn hooks(&self) -> Hooks {
        Hooks::CALL
    }

    fn intercepts_call(&self, _action: &str, options: &CallOptions) -> bool {
        options.retries.unwrap_or(self.policy.retries) > 0
    }

    fn call<'a>(
        &'a self,
        mut call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let retries = call.options.retries.unwrap_or(self.policy.retries);
        if retries == 0 {
            return next.run(call);
        }
        async move {
            call.share_params()?;
            let mut attempt = 0;
            loop {
                let this = call.again().expect("params were shared");
                let err = match next.run(this).await {
                    Ok(result) => return Ok(result),
                    Err(err) if attempt >= retries || !err.worth_retrying(call.is_idempotent()) => {
                        return Err(err);
                    }
                    // A stream that started to flow cannot be sent again.
                    Err(err) if call.options.stream.is_spent() => return Err(err),
                    Err(err) => err,
                };
                attempt += 1;
                let wait = self.policy.backoff(attempt, rand::random());
                if call
                    .ctx
                    .deadline
                    .is_some_and(|d| Instant::now() + wait >= d)
                {
                    tracing::debug!(action = call.action, %err, "no time left to retry");
                    return Err(err);
                }
                if let Some(node) = err.node()
                    && !call.avoid.iter().any(|n| &**n == node)
                {
                    call.avoid.push(node.into());
                }
                tracing::debug!(action = call.action, attempt, ?wait, %err, "retrying");
                tokio::time::sleep(wait).await;
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_grows_by_the_factor_up_to_the_cap_and_jitter_only_shortens() {
        let config = RetryConfig::new(5)
            .delay(Duration::from_millis(100))
            .factor(2.0)
            .max_delay(Duration::from_millis(350))
            .jitter(0.5);
        let waits: Vec<u128> = (1..=4)
            .map(|n| config.backoff(n, 0.0).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(
            config.backoff(2, 1.0),
            Duration::from_millis(100),
            "half off at most"
        );
        assert_eq!(
            config.backoff(2, 7.0),
            config.backoff(2, 1.0),
            "samples are clamped"
        );
        assert_eq!(config.backoff(u32::MAX, 0.0), Duration::from_millis(350));
    }
}
