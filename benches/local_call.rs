//! Local call overhead: a typed call through the broker next to a direct `.await` of the very
//! same async handler, in the same run, on a current-thread runtime (one core): the bare call
//! path (no middleware, no timeout), the default stack a user gets (tracing spans, metrics,
//! fallback, retry layers and the 30 s default timeout), and that stack with retries and a
//! circuit breaker turned on. Also emit to 1 and to 20 local listeners.
//!
//! Run: `cargo bench --bench local_call`

use criterion::{Criterion, criterion_group, criterion_main};
use phalanx::middleware::{CircuitBreakerConfig, RetryConfig};
use phalanx::{Broker, BrokerBuilder, Context};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Duration;

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
    let mut group = c.benchmark_group("local_call");
    group.bench_function("direct_await", |b| {
        b.to_async(&rt)
            .iter(|| async { add(None, black_box(Add { a: 1, b: 2 })).await.expect("ok") })
    });
    for (name, broker) in [
        ("broker_call_bare", &bare),
        ("broker_call_default_middleware", &default),
        ("broker_call_retry_and_breaker", &resilient),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                broker
                    .call::<i64>("math.add", black_box(Add { a: 1, b: 2 }))
                    .await
                    .expect("ok")
            })
        });
    }
    group.finish();

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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = local_call
}
criterion_main!(benches);
