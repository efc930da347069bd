//! Fault tolerance and middleware over in-process clusters: middleware order, retries (back-off
//! schedule, deadline cut-off, another endpoint), circuit breaker transitions, bulkhead limits,
//! fallbacks, shard routing and metrics. Policies run on paused Tokio time, so their schedules
//! are checked exactly.

mod common;

use common::{counter, settle};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use phalanx::middleware::{
    Bulkhead, Call, CircuitBreakerConfig, FallbackFn, Finished, Hooks, LocalCall, LocalEvent,
    Middleware, Next, OutgoingEvent, RemoteCall, RetryConfig,
};
use phalanx::registry::Strategy;
use phalanx::transport::InProcBus;
use phalanx::{Broker, BrokerBuilder, CallOptions, Context, Error, ErrorKind, Payload, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

fn builder(bus: &InProcBus, id: &str) -> BrokerBuilder {
    Broker::builder()
        .node_id(id)
        .namespace("resilience")
        .transport(bus.transport())
        .stop_grace(Duration::from_millis(10))
        .drain_timeout(Duration::from_secs(1))
}

/// A failure the caller may retry, as a flaky replica would return it.
fn flaky(node: &str) -> Error {
    Error::handler(500, "FLAKY", format!("{node} failed")).with_retryable(true)
}

/// Starts `id` with an `echo.hi` action that fails while `failing` is set; counts its calls.
async fn replica(
    bus: &InProcBus,
    id: &str,
    failing: Arc<AtomicBool>,
) -> (Broker, Arc<AtomicUsize>) {
    let broker = builder(bus, id).start().await.unwrap();
    let calls = counter();
    let seen = calls.clone();
    let name = id.to_owned();
    broker
        .service("echo")
        .action("hi", move |_ctx: Context, n: u32| {
            seen.fetch_add(1, Ordering::SeqCst);
            let failing = failing.load(Ordering::SeqCst);
            let name = name.clone();
            async move {
                if failing {
                    Err(flaky(&name))
                } else {
                    Ok((name, n))
                }
            }
        })
        // Failures the handler reports as retryable are only retried for idempotent actions.
        .idempotent(&["hi"])
        .start()
        .await
        .unwrap();
    (broker, calls)
}

/// Records the order layers see each hook in; with `only`, it has work in that action alone.
struct Recorder {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    only: Option<&'static str>,
}

impl Recorder {
    /// Logs, runs the rest of the stack (started only now: a layer's "before" really is
    /// before everything inside it), logs again.
    fn around<'a, R: Send + 'a, O: Send + 'a>(
        &'a self,
        hook: &'static str,
        next: Next<'a, R, O>,
        request: R,
    ) -> BoxFuture<'a, O> {
        async move {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}>{hook}", self.name));
            let out = next.run(request).await;
            self.log
                .lock()
                .unwrap()
                .push(format!("{}<{hook}", self.name));
            out
        }
        .boxed()
    }
}

impl Middleware for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }
    fn intercepts_call(&self, action: &str, _options: &CallOptions) -> bool {
        self.only.is_none_or(|only| only == action)
    }
    fn intercepts_remote_call(&self, action: &str, _node_id: &str) -> bool {
        self.only.is_none_or(|only| only == action)
    }
    fn intercepts_local_action(&self, action: &str) -> bool {
        self.only.is_none_or(|only| only == action)
    }
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        next: Next<'a, Call<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        self.around("call", next, call)
    }
    fn remote_call<'a>(
        &'a self,
        call: RemoteCall<'a>,
        next: Next<'a, RemoteCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        self.around("remote", next, call)
    }
    fn local_action<'a>(
        &'a self,
        call: LocalCall<'a>,
        next: Next<'a, LocalCall<'a>>,
    ) -> BoxFuture<'a, Result<Payload<'static>>> {
        self.around("local", next, call)
    }
    fn event<'a>(
        &'a self,
        event: LocalEvent<'a>,
        next: Next<'a, LocalEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        self.around("event", next, event)
    }
    fn emit<'a>(
        &'a self,
        emit: OutgoingEvent<'a>,
        next: Next<'a, OutgoingEvent<'a>, Result<()>>,
    ) -> BoxFuture<'a, Result<()>> {
        self.around("emit", next, emit)
    }
}

fn take(log: &Mutex<Vec<String>>) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test]
async fn middleware_runs_outermost_first_on_every_hook() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = |name| Recorder {
        name,
        log: log.clone(),
        only: None,
    };
    let bus = InProcBus::new();
    let a = builder(&bus, "a")
        .middleware(layer("a1"))
        .middleware(layer("a2"))
        .start()
        .await
        .unwrap();
    let b = builder(&bus, "b").start().await.unwrap();
    let handled = counter();
    let pings = handled.clone();
    let handler_log = log.clone();
    a.service("svc")
        .middleware(layer("s1"))
        .action("local", move |_ctx: Context, _: ()| {
            handler_log.lock().unwrap().push("handler".into());
            async { Ok(()) }
        })
        .event("ping", move |_ctx: Context, _: ()| {
            pings.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .start()
        .await
        .unwrap();
    b.service("far")
        .action("remote", |_ctx: Context, _: ()| async { Ok(()) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["far"], WAIT).await.unwrap();
    take(&log);

    a.call::<()>("svc.local", ()).await.unwrap();
    assert_eq!(
        take(&log),
        [
            "a1>call", "a2>call", "a1>local", "a2>local", "s1>local", "handler", "s1<local",
            "a2<local", "a1<local", "a2<call", "a1<call"
        ]
    );

    a.call::<()>("far.remote", ()).await.unwrap();
    assert_eq!(
        take(&log),
        [
            "a1>call",
            "a2>call",
            "a1>remote",
            "a2>remote",
            "a2<remote",
            "a1<remote",
            "a2<call",
            "a1<call"
        ]
    );

    a.broadcast_local("ping", &()).await.unwrap();
    assert_eq!(settle(&handled, 1).await, 1);
    // The handler runs in its own task: the emit and the event nest separately.
    let (emit, event): (Vec<String>, Vec<String>) =
        take(&log).into_iter().partition(|e| e.ends_with("emit"));
    assert_eq!(emit, ["a1>emit", "a2>emit", "a2<emit", "a1<emit"]);
    assert_eq!(
        event,
        [
            "a1>event", "a2>event", "s1>event", "s1<event", "a2<event", "a1<event"
        ]
    );
    a.stop().await;
    b.stop().await;
}

/// A layer with no work in a call is gone past on every hook (the layers around it still run,
/// in order), and a call no layer has work in is still answered, by the direct path.
#[tokio::test]
async fn layers_with_no_work_in_a_call_are_gone_past() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = |name, only| Recorder {
        name,
        log: log.clone(),
        only,
    };
    let bus = InProcBus::new();
    let a = builder(&bus, "a")
        .middleware(layer("all", None))
        .middleware(layer("watch", Some("svc.watched")))
        .start()
        .await
        .unwrap();
    let quiet = builder(&bus, "quiet")
        .middleware(layer("quiet", Some("svc.watched")))
        .start()
        .await
        .unwrap();
    let b = builder(&bus, "b").start().await.unwrap();
    for broker in [&a, &quiet] {
        broker
            .service("svc")
            .action("local", |_ctx: Context, x: i64| async move { Ok(x + 1) })
            .action("watched", |_ctx: Context, x: i64| async move { Ok(x * 2) })
            .start()
            .await
            .unwrap();
    }
    b.service("far")
        .action("remote", |_ctx: Context, x: i64| async move { Ok(-x) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["far"], WAIT).await.unwrap();
    take(&log);

    assert_eq!(a.call::<i64>("svc.local", 1).await.unwrap(), 2);
    assert_eq!(
        take(&log),
        ["all>call", "all>local", "all<local", "all<call"]
    );
    assert_eq!(a.call::<i64>("svc.watched", 3).await.unwrap(), 6);
    assert_eq!(
        take(&log),
        [
            "all>call",
            "watch>call",
            "all>local",
            "watch>local",
            "watch<local",
            "all<local",
            "watch<call",
            "all<call"
        ]
    );
    assert_eq!(a.call::<i64>("far.remote", 5).await.unwrap(), -5);
    assert_eq!(
        take(&log),
        ["all>call", "all>remote", "all<remote", "all<call"]
    );

    assert_eq!(quiet.call::<i64>("svc.local", 7).await.unwrap(), 8);
    assert!(take(&log).is_empty(), "no layer had work in the call");
    assert_eq!(quiet.call::<i64>("svc.watched", 7).await.unwrap(), 14);
    assert_eq!(
        take(&log),
        ["quiet>call", "quiet>local", "quiet<local", "quiet<call"]
    );
    for broker in [a, quiet, b] {
        broker.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_until_success() {
    let broker = Broker::builder()
        .retry(
            RetryConfig::new(5)
                .delay(Duration::from_millis(100))
                .max_delay(Duration::from_millis(500))
                .jitter(0.0),
        )
        .start()
        .await
        .unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let start = Instant::now();
    broker
        .service("flaky")
        .action("get", move |_ctx: Context, n: u32| {
            let mut seen = seen.lock().unwrap();
            seen.push(start.elapsed().as_millis() as u64);
            let result = if seen.len() <= 4 {
                Err(flaky("local"))
            } else {
                Ok(n)
            };
            async move { result }
        })
        .idempotent(&["get"])
        .start()
        .await
        .unwrap();
    assert_eq!(broker.call::<u32>("flaky.get", 7).await.unwrap(), 7);
    // 100, 200, 400, then capped at 500.
    assert_eq!(*attempts.lock().unwrap(), [0, 100, 300, 700, 1200]);

    // A call's own count wins: 1 retry, then the error with its code.
    attempts.lock().unwrap().clear();
    let err = broker
        .call_with::<u32>("flaky.get", 7, CallOptions::new().retries(1))
        .await
        .unwrap_err();
    assert_eq!((err.code(), err.error_type()), (500, "FLAKY"));
    assert_eq!(attempts.lock().unwrap().len(), 2);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_deadline_and_skip_non_retryable_errors() {
    let broker = Broker::builder()
        .retry(
            RetryConfig::new(10)
                .delay(Duration::from_millis(100))
                .jitter(0.0),
        )
        .start()
        .await
        .unwrap();
    let attempts = counter();
    let seen = attempts.clone();
    broker
        .service("down")
        .action("get", move |_ctx: Context, fatal: bool| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if fatal {
                    Err::<(), _>(Error::validation("bad input"))
                } else {
                    Err(flaky("local"))
                }
            }
        })
        .idempotent(&["get"])
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    let options = CallOptions::new().timeout(Duration::from_millis(500));
    let err = broker
        .call_with::<()>("down.get", false, options)
        .await
        .unwrap_err();
    // Attempts at 0, 100 and 300 ms; the next would start at 700 ms, past the 500 ms deadline,
    // so the caller gets the last real error at once instead of a timeout later.
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(err.error_type(), "FLAKY");

    attempts.store(0, Ordering::SeqCst);
    let err = broker.call::<()>("down.get", true).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    broker.stop().await;
}

#[tokio::test(start_paused = true)]
async fn circuit_opens_moves_traffic_and_closes_after_a_probe() {
    let bus = InProcBus::new();
    let caller = builder(&bus, "caller")
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .min_requests(4)
                .threshold(0.5)
                .window(Duration::from_secs(60))
                .half_open_after(Duration::from_secs(5)),
        )
        .start()
        .await
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let sink = events.clone();
    caller
        .service("watch")
        .event(
            "$circuit-breaker.*",
            move |ctx: Context, data: serde_json::Value| {
                let _ = ctx;
                sink.lock().unwrap().push((
                    data["node_id"].as_str().unwrap_or_default().to_owned(),
                    data["action"].as_str().unwrap_or_default().to_owned(),
                ));
                async { Ok(()) }
            },
        )
        .start()
        .await
        .unwrap();
    let bad_failing = Arc::new(AtomicBool::new(true));
    let (bad, bad_calls) = replica(&bus, "bad", bad_failing.clone()).await;
    let (good, good_calls) = replica(&bus, "good", Arc::new(AtomicBool::new(false))).await;
    caller.wait_for_services(&["echo"], WAIT).await.unwrap();
    wait_for_endpoints(&caller, "echo.hi", 2).await;

    let mut failures = 0;
    for n in 0..40 {
        if caller.call::<(String, u32)>("echo.hi", n).await.is_err() {
            failures += 1;
        }
    }
    // Round-robin sends every other call to "bad" until its circuit opens after 4 of them.
    assert_eq!(bad_calls.load(Ordering::SeqCst), 4);
    assert_eq!(failures, 4);
    assert_eq!(good_calls.load(Ordering::SeqCst), 36);
    let snapshot = caller.metrics();
    assert_eq!(snapshot.breakers.len(), 1);
    assert_eq!(snapshot.breakers[0].node_id, "bad");

    // After the wait one probe goes through; "bad" has recovered, so the circuit closes.
    bad_failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in 0..10 {
        caller.call::<(String, u32)>("echo.hi", n).await.unwrap();
    }
    assert_eq!(bad_calls.load(Ordering::SeqCst), 4 + 5);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let states: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|(n, a)| format!("{n}/{a}"))
        .collect();
    assert_eq!(states, ["bad/echo.hi", "bad/echo.hi", "bad/echo.hi"]);
    assert!(caller.metrics().breakers.is_empty());
    for b in [caller, bad, good] {
        b.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn bulkhead_limits_concurrency_and_queue() {
    let broker = Broker::builder().start().await.unwrap();
    let running = counter();
    let peak = counter();
    let (now, top) = (running.clone(), peak.clone());
    broker
        .service("report")
        .middleware(Bulkhead::new(2, 1))
        .action("build", move |_ctx: Context, _: ()| {
            let (now, top) = (now.clone(), top.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let result = broker.call::<()>("report.build", ()).await;
                (result, start.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let rejected: Vec<_> = outcomes.iter().filter(|(r, _)| r.is_err()).collect();
    assert_eq!(rejected.len(), 1, "{outcomes:?}");
    let err = rejected[0].0.as_ref().unwrap_err();
    assert_eq!((err.kind(), err.code()), (ErrorKind::BulkheadFull, 429));
    assert_eq!(rejected[0].1, Duration::ZERO, "rejected at once");
    let mut done: Vec<Duration> = outcomes
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, t)| *t)
        .collect();
    done.sort();
    assert_eq!(
        done,
        [
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(2)
        ]
    );
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    broker.stop().await;
}

#[tokio::test]
async fn fallbacks_answer_failed_calls_per_call_and_per_action() {
    let broker = Broker::builder()
        .fallback("prices.get", FallbackFn::value(-1.0))
        .start()
        .await
        .unwrap();
    broker
        .service("prices")
        .action("get", |_ctx: Context, item: String| async move {
            if item == "apple" {
                Ok(1.5)
            } else {
                Err(Error::handler(500, "NO_PRICE", item))
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(
        broker
            .call::<f64>("prices.get", "apple".to_string())
            .await
            .unwrap(),
        1.5
    );
    assert_eq!(
        broker
            .call::<f64>("prices.get", "pear".to_string())
            .await
            .unwrap(),
        -1.0
    );
    let by_error =
        CallOptions::new().fallback(FallbackFn::new(|err: &Error| Ok(err.code() as f64)));
    assert_eq!(
        broker
            .call_with::<f64>("prices.get", "pear".to_string(), by_error)
            .await
            .unwrap(),
        500.0
    );
    // A fallback may decide to pass the error on.
    let strict =
        CallOptions::new().fallback(FallbackFn::new(|err: &Error| Err::<f64, _>(err.clone())));
    let err = broker
        .call_with::<f64>("prices.get", "pear".to_string(), strict)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "NO_PRICE");
    broker.stop().await;
}

async fn three_replicas(bus: &InProcBus) -> (Vec<Broker>, Vec<Arc<AtomicUsize>>) {
    let mut brokers = Vec::new();
    let mut counts = Vec::new();
    for (id, failing) in [("r1", false), ("r2", false), ("r3", true)] {
        let (broker, calls) = replica(bus, id, Arc::new(AtomicBool::new(failing))).await;
        brokers.push(broker);
        counts.push(calls);
    }
    (brokers, counts)
}

async fn wait_for_endpoints(broker: &Broker, action: &str, want: usize) {
    tokio::time::timeout(WAIT, async {
        loop {
            let nodes = broker
                .actions()
                .into_iter()
                .find(|a| a.name == action)
                .map_or(0, |a| a.nodes.len());
            if nodes == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("endpoints appear");
}

#[tokio::test]
async fn one_bad_replica_of_three_is_invisible_with_retries_and_breaker() {
    let bus = InProcBus::new();
    let (replicas, counts) = three_replicas(&bus).await;
    let caller = builder(&bus, "caller")
        .retry(RetryConfig::new(2).delay(Duration::from_millis(1)))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .min_requests(5)
                .half_open_after(Duration::from_secs(60)),
        )
        .start()
        .await
        .unwrap();
    wait_for_endpoints(&caller, "echo.hi", 3).await;

    for n in 0..300 {
        let (node, echoed) = caller.call::<(String, u32)>("echo.hi", n).await.unwrap();
        assert_ne!(node, "r3");
        assert_eq!(echoed, n);
    }
    // The circuit to r3 opened after 5 failures; it gets nothing more.
    assert_eq!(counts[2].load(Ordering::SeqCst), 5);
    let breakers = caller.metrics().breakers;
    assert_eq!((breakers.len(), breakers[0].node_id.as_str()), (1, "r3"));
    let calls = caller.metrics().calls["echo.hi"].clone();
    assert_eq!((calls.total, calls.errors), (300, 0));

    // Without retries or breaker, the failures reach the caller with their code and node.
    let plain = builder(&bus, "plain").start().await.unwrap();
    wait_for_endpoints(&plain, "echo.hi", 3).await;
    let mut failed = Vec::new();
    for n in 0..30 {
        if let Err(err) = plain.call::<(String, u32)>("echo.hi", n).await {
            failed.push((
                err.code(),
                err.error_type().to_owned(),
                err.node().map(str::to_owned),
            ));
        }
    }
    assert_eq!(failed.len(), 10);
    assert!(
        failed
            .iter()
            .all(|f| *f == (500, "FLAKY".to_owned(), Some("r3".to_owned()))),
        "{failed:?}"
    );
    for b in replicas.into_iter().chain([caller, plain]) {
        b.stop().await;
    }
}

#[tokio::test]
async fn shard_strategy_keeps_a_key_on_one_node() {
    let bus = InProcBus::new();
    let (replicas, _) = three_replicas(&bus).await;
    let caller = builder(&bus, "caller")
        .action_strategy("echo.hi", Strategy::shard("#tenant"))
        .start()
        .await
        .unwrap();
    wait_for_endpoints(&caller, "echo.hi", 3).await;
    let mut homes = std::collections::BTreeMap::new();
    for tenant in ["acme", "globex", "initech", "umbrella", "hooli", "stark"] {
        for n in 0..5 {
            let options = CallOptions::new().meta("tenant", tenant);
            let node = match caller
                .call_with::<(String, u32)>("echo.hi", n, options)
                .await
            {
                Ok((node, _)) => node,
                Err(err) => err.node().unwrap().to_owned(),
            };
            let home = homes.entry(tenant).or_insert_with(|| node.clone());
            assert_eq!(*home, node, "tenant {tenant} moved");
        }
    }
    let distinct: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(distinct.len() >= 2, "{homes:?}");
    for b in replicas.into_iter().chain([caller]) {
        b.stop().await;
    }
}

/// With the least-latency strategy, remote calls are timed and most go to the faster of two
/// replicas (untimed, both would stay unmeasured and share the calls).
#[tokio::test]
async fn least_latency_sends_most_calls_to_the_faster_replica() {
    let bus = InProcBus::new();
    let mut replicas = Vec::new();
    for (id, delay_ms) in [("slow", 20), ("fast", 1)] {
        let broker = builder(&bus, id).start().await.unwrap();
        broker
            .service("echo")
            .action("who", move |_ctx: Context, _: ()| async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                Ok(id.to_owned())
            })
            .start()
            .await
            .unwrap();
        replicas.push(broker);
    }
    let caller = builder(&bus, "caller")
        .strategy(Strategy::LeastLatency)
        .start()
        .await
        .unwrap();
    wait_for_endpoints(&caller, "echo.who", 2).await;
    let mut fast = 0;
    for _ in 0..40 {
        if caller.call::<String>("echo.who", ()).await.unwrap() == "fast" {
            fast += 1;
        }
    }
    assert!(fast >= 30, "{fast} of 40 calls went to the faster replica");
    for b in replicas.into_iter().chain([caller]) {
        b.stop().await;
    }
}

#[tokio::test]
async fn metrics_count_calls_events_and_traffic_and_reach_other_nodes() {
    let bus = InProcBus::new();
    let (server, _) = replica(&bus, "server", Arc::new(AtomicBool::new(false))).await;
    let client = builder(&bus, "client").start().await.unwrap();
    wait_for_endpoints(&client, "echo.hi", 1).await;
    for n in 0..25 {
        client.call::<(String, u32)>("echo.hi", n).await.unwrap();
    }
    client.emit("nobody.listens", &1).await.unwrap();
    let mine = client.metrics();
    assert_eq!(mine.calls["echo.hi"].total, 25);
    assert!(mine.calls["echo.hi"].p50_ms > 0.0);
    assert_eq!(mine.events_emitted["nobody.listens"], 1);
    let link = mine
        .links
        .iter()
        .find(|l| l.peer == "server")
        .expect("traffic to server");
    assert_eq!(link.link, "inproc");
    assert!(
        link.packets_sent >= 25 && link.packets_received >= 25,
        "{link:?}"
    );
    assert!(link.bytes_sent > link.packets_sent * 10);

    let theirs: phalanx::metrics::MetricsSnapshot = client
        .call_with("$node.metrics", (), CallOptions::new().node("server"))
        .await
        .unwrap();
    assert_eq!(theirs.node_id, "server");
    assert_eq!(theirs.handled["echo.hi"].total, 25);
    assert_eq!(theirs.handled["echo.hi"].errors, 0);
    assert!(theirs.registry.nodes >= 1);
    server.stop().await;
    client.stop().await;
}

/// What an observer layer saw finish: `call:` or `handler:`, the action, and whether it failed.
#[derive(Default)]
struct Finishes(Mutex<Vec<(String, bool)>>, Mutex<Vec<Duration>>);

impl Middleware for Finishes {
    fn name(&self) -> &'static str {
        "finishes"
    }
    fn hooks(&self) -> Hooks {
        Hooks::CALL_DONE | Hooks::LOCAL_ACTION_DONE
    }
    fn call_done(&self, call: &Finished<'_>) {
        let seen = (format!("call:{}", call.action), call.result.is_err());
        self.0.lock().unwrap().push(seen);
        self.1.lock().unwrap().push(call.ended - call.started);
    }
    fn local_action_done(&self, call: &Finished<'_>) {
        let seen = (format!("handler:{}", call.action), call.result.is_err());
        self.0.lock().unwrap().push(seen);
        self.1.lock().unwrap().push(call.ended - call.started);
    }
}

/// A local call is counted on both sides, failures too (the metrics layer observes finished
/// calls rather than wrapping them), and an observer layer hears every call and handler end —
/// a call that found no endpoint as well.
#[tokio::test]
async fn local_calls_are_counted_and_observed_when_done() {
    let finishes = Arc::new(Finishes::default());
    let broker = Broker::builder()
        .middleware(finishes.clone())
        .start()
        .await
        .unwrap();
    broker
        .service("math")
        .action("half", |_ctx, x: i64| async move {
            if x % 2 == 0 {
                Ok(x / 2)
            } else {
                Err(Error::validation("odd"))
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(broker.call::<i64>("math.half", 4).await.unwrap(), 2);
    assert!(broker.call::<i64>("math.half", 3).await.is_err());
    assert!(broker.call::<i64>("math.none", 1).await.is_err());

    let metrics = broker.metrics();
    let (calls, handled) = (&metrics.calls["math.half"], &metrics.handled["math.half"]);
    assert_eq!((calls.total, calls.errors), (2, 1));
    assert_eq!((handled.total, handled.errors), (2, 1));
    assert_eq!(
        (
            metrics.calls["math.none"].total,
            metrics.calls["math.none"].errors
        ),
        (1, 1)
    );
    let seen = |what: &str, failed: bool| (what.to_owned(), failed);
    assert_eq!(
        *finishes.0.lock().unwrap(),
        [
            seen("handler:math.half", false),
            seen("call:math.half", false),
            seen("handler:math.half", true),
            seen("call:math.half", true),
            seen("call:math.none", true),
        ]
    );

    // How long a call took is told to both sides' observers, measured to when it ended.
    broker
        .service("slow")
        .action("nap", |_ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .start()
        .await
        .unwrap();
    finishes.1.lock().unwrap().clear();
    assert_eq!(broker.call::<u64>("slow.nap", 30).await.unwrap(), 30);
    let took = finishes.1.lock().unwrap().clone();
    assert_eq!(took.len(), 2, "the handler's end and the call's: {took:?}");
    assert!(
        took.iter()
            .all(|t| *t >= Duration::from_millis(30) && *t < WAIT),
        "{took:?}"
    );
    broker.stop().await;
}
