//! The bulkhead: at most `concurrency` handlers of one action run at once, at most `queue` more
//! wait; beyond that the caller gets a queue-full error (429, retryable) at once.

use super::{Hooks, LocalCall, Middleware, Next};
use crate::error::{Error, ErrorKind, Result};
use crate::payload::Payload;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::Semaphore;

/// Limits each action of this node (or of one service, when added to a service) on its own.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> phalanx::Result<()> {
/// use phalanx::middleware::Bulkhead;
///
/// let broker = phalanx::Broker::builder().start().await?;
/// broker.service("report")
///     .middleware(Bulkhead::new(2, 10))       // 2 at a time, 10 waiting, then 429
///     .action("build", |_ctx, _: ()| async move { Ok("done") })
///     .start().await?;
/// assert_eq!(broker.call::<String>("report.build", ()).await?, "done");
/// # broker.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Bulkhead {
    concurrency: usize,
    queue: usize,
    gates: RwLock<HashMap<String, Arc<Gate>>>,
}

#[derive(Debug)]
struct Gate {
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Counts a waiting call for as long as it waits (also when its caller gives up).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// At most `concurrency` (at least 1) running and `queue` waiting per action.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            queue,
            gates: RwLock::default(),
        }
    }

    /// Calls of `action` waiting for a slot right now.
    pub fn waiting(&self, action: &str) -> usize {
        self.gates
            .read()
            .expect("bulkhead lock")
            .get(action)
            .map_or(0, |g| g.waiting.load(Ordering::Acquire))
    }

    fn gate(&self, action: &str) -> Arc<Gate> {
        if let Some(gate) = self.gates.read().expect("bulkhead lock").get(action) {
            return gate.clone();
        }
        self.gates
            .write()
            .expect("bulkhead lock")
            .entry(action.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    running: Arc::new(Semaphore::new(self.concurrency)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }
}

impl Middleware for Bulkhead {
    fn name(&self) -> &'static str {
        "bulkhead"
    }

    fn hooks(&self) -> Hooks {
        Hooks::LOCAL_ACTION
    }

    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        let gate = self.gate(call.action);
        if let Ok(permit) = gate.running.clone().try_acquire_owned() {
            return next
                .run(call)
                .map(move |result| {
                    drop(permit);
                    result
                })
                .boxed();
        }
        async move {
            let waiting = gate.waiting.fetch_add(1, Ordering::AcqRel);
            let _waiting = Waiting(&gate.waiting);
            if waiting >= self.queue {
                return Err(Error::new(
                    ErrorKind::BulkheadFull,
                    format!(
                        "'{}' is busy: {} running, {} waiting",
                        call.action, self.concurrency, self.queue
                    ),
                ));
            }
            let _permit = gate.running.acquire().await.expect("never closed");
            drop(_waiting);
            next.run(call).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::testing::context;
    use crate::middleware::{HookKind, Stack, hooks};
    use std::time::Duration;

    /// Runs `action` through `bulkhead`; the handler holds its slot until `release` fires.
    fn run(
        stack: &Stack,
        release: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<Result<Payload<'static>>> {
        let stack = stack.clone();
        tokio::spawn(async move {
            let service: Arc<str> = "reports".into();
            let handler = move |_: LocalCall<'_>| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok(Payload::local(()))
                }
                .boxed()
            };
            // The chain's end here is `handler`; the call still names the endpoint it targets.
            let local = crate::registry::LocalHandler {
                handler: Arc::new(|_, _| async { Ok(Payload::local(())) }.boxed()),
                service: service.clone(),
                layers: Stack::new(Vec::new()),
            };
            let call = LocalCall {
                action: "reports.build",
                service: &service,
                ctx: context(),
                params: Payload::local(()),
                local: &local,
            };
            stack
                .next(HookKind::LocalAction, hooks::local_action(), &handler)
                .run(call)
                .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn runs_up_to_the_limit_queues_the_next_and_refuses_the_rest_at_once() {
        let bulkhead = Arc::new(Bulkhead::new(1, 1));
        let stack = Stack::new(vec![bulkhead.clone()]);
        let release = Arc::new(tokio::sync::Notify::new());
        let running = run(&stack, release.clone());
        tokio::time::sleep(Duration::from_millis(1)).await;
        let queued = run(&stack, release.clone());
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(bulkhead.waiting("reports.build"), 1);
        let refused = run(&stack, release.clone()).await.unwrap().unwrap_err();
        assert_eq!(
            (refused.kind(), refused.code()),
            (ErrorKind::BulkheadFull, 429)
        );
        assert!(refused.is_retryable());
        release.notify_one();
        running.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            bulkhead.waiting("reports.build"),
            0,
            "the queued call runs now"
        );
        release.notify_one();
        queued.await.unwrap().unwrap();
    }
}
