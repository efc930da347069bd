//! Local call overhead: a typed call through the broker next to a direct `.await` of the very
//! same async handler, in the same run, on a current-thread runtime (one core): the bare call
//! path (no middleware, no timeout), the default stack a user gets (tracing spans, metrics,
//! fallback, retry layers and the 30 s default timeout), and that stack with retries and a
//! circuit breaker turned on. Also emit to 1 and to 20 local listeners. A counting allocator
//! reports the allocations each kind of call makes (printed after the timings; it counts only
//! then, so the timings do not pay for the counter).
//!
//! Run: `cargo bench --bench local_call`
#![allow(clippy::print_stdout)]

#[path = "support/process.rs"]
mod process;

use criterion::{Criterion, criterion_group, criterion_main};
use phalanx::middleware::{CircuitBreakerConfig, RetryConfig};
use phalanx::{Broker, BrokerBuilder, Context};
use process::{ALLOCATIONS, Counting, count};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Calls counted for the allocations per call.
const COUNTED_CALLS: u64 = 100_000;

#[derive(Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

async fn add(_ctx: Option<Context>, p: Add) -> phalanx::Result<i64> {
    Ok(p.a + p.b)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn broker(builder: BrokerBuilder, listeners: usize) -> Broker {
    let broker = builder.start().await.expect("broker");
    broker
        .service("math")
        .action("add", |ctx: Context, p: Add| add(Some(ctx), p))
        .start()
        .await
        .expect("service");
    for i in 0..listeners {
        broker
            .service(format!("listener{i}"))
            .event("tick", |_ctx: Context, n: u64| async move {
                black_box(n);
                Ok(())
            })
            .start()
            .await
            .expect("listener");
    }
    broker
}

fn local_call(c: &mut Criterion) {
    count(Counting::Nothing);
    let rt = runtime();
    let bare = rt.block_on(broker(
        Broker::builder()
            .without_default_middleware()
            .request_timeout(None),
        0,
    ));
    let default = rt.block_on(broker(Broker::builder(), 0));
    let resilient = rt.block_on(broker(
        Broker::builder()
            .retry(RetryConfig::new(2))
            .circuit_breaker(CircuitBreakerConfig::default()),
        0,
    ));
    let brokers = [
        ("broker_call_bare", &bare),
        ("broker_call_default_middleware", &default),
        ("broker_call_retry_and_breaker", &resilient),
    ];
    let mut group = c.benchmark_group("local_call");
    group.bench_function("direct_await", |b| b.to_async(&rt).iter(direct_add));
    for (name, broker) in brokers {
        group.bench_function(name, |b| b.to_async(&rt).iter(|| call_add(broker)));
    }
    group.finish();
    let direct = allocations_per_call(&rt, direct_add);
    println!("local_call/direct_await: {direct:.2} allocations per call");
    for (name, broker) in brokers {
        let allocations = allocations_per_call(&rt, || call_add(broker));
        println!("local_call/{name}: {allocations:.2} allocations per call");
    }

    let mut group = c.benchmark_group("local_emit");
    for listeners in [1usize, 20] {
        let broker = rt.block_on(broker(Broker::builder(), listeners));
        group.bench_function(format!("{listeners}_listeners"), |b| {
            b.to_async(&rt).iter(|| async {
                broker.emit("tick", &black_box(7u64)).await.expect("ok");
                // Let the spawned handlers run, so the cost of delivering is measured too.
                tokio::task::yield_now().await;
            })
        });
    }
    group.finish();
}

/// The handler, awaited directly.
async fn direct_add() -> i64 {
    add(None, black_box(Add { a: 1, b: 2 })).await.expect("ok")
}

/// The handler, called through `broker`.
async fn call_add(broker: &Broker) -> i64 {
    broker
        .call::<i64>("math.add", black_box(Add { a: 1, b: 2 }))
        .await
        .expect("ok")
}

/// Allocations per call of `call` (after a warm-up), counted over the whole process: the
/// runtime runs on this thread alone, so they are the call's.
fn allocations_per_call<F: Future>(
    rt: &tokio::runtime::Runtime,
    mut call: impl FnMut() -> F,
) -> f64 {
    rt.block_on(async {
        for _ in 0..1_000 {
            call().await;
        }
        count(Counting::Allocations);
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..COUNTED_CALLS {
            call().await;
        }
        let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
        count(Counting::Nothing);
        counted as f64 / COUNTED_CALLS as f64
    })
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = local_call
}
criterion_main!(benches);
