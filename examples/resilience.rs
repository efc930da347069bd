//! Replicas fail; callers should not notice. Three replicas of `prices`, one of which fails every
//! call: retries move the call to another replica, the circuit breaker stops sending to the bad
//! one, a bulkhead caps concurrent work, and a fallback answers when nothing can.
//!
//! Run: `cargo run --example resilience`
#![allow(clippy::print_stdout)]

use phalanx::middleware::{Bulkhead, CircuitBreakerConfig, FallbackFn, RetryConfig};
use phalanx::transport::InProcBus;
use phalanx::{Broker, CallOptions, Context, Error};
use std::time::Duration;

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let bus = InProcBus::new();
    let caller = Broker::builder()
        .node_id("caller")
        .transport(bus.transport())
        .retry(RetryConfig::new(2).delay(Duration::from_millis(5)))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .min_requests(5)
                .half_open_after(Duration::from_secs(30)),
        )
        .start()
        .await?;
    let mut replicas = Vec::new();
    for (id, healthy) in [("good-1", true), ("good-2", true), ("bad", false)] {
        let replica = Broker::builder()
            .node_id(id)
            .transport(bus.transport())
            .start()
            .await?;
        replica
            .service("prices")
            .middleware(Bulkhead::new(8, 64)) // 8 at a time, 64 waiting, then 429
            .action("get", move |ctx: Context, item: String| async move {
                if !healthy {
                    // Retryable: another replica may well reach its database.
                    return Err(
                        Error::handler(503, "DB_DOWN", "database unreachable").with_retryable(true)
                    );
                }
                let node = ctx.broker().node_id().to_owned();
                Ok((item.len() as f64 * 1.5, node))
            })
            // A read: safe to run twice, so a replica's own failure may be retried elsewhere.
            .idempotent(&["get"])
            .start()
            .await?;
        replicas.push(replica);
    }
    caller
        .wait_for_services(&["prices"], Duration::from_secs(5))
        .await?;
    while caller.actions().iter().all(|a| a.nodes.len() < 3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..60 {
        let (_, node): (f64, String) = caller.call("prices.get", "teapot").await?;
        *served.entry(node).or_default() += 1;
    }
    println!("60 calls, 0 failed, served by {served:?}");
    let open = caller.metrics().breakers;
    println!("open circuits: {open:?}");
    assert!(!served.contains_key("bad"));
    assert!(open.iter().any(|b| b.node_id == "bad"));

    // Nobody serves "stock.get": the call's fallback answers instead of an error.
    let options = CallOptions::new().fallback(FallbackFn::value(0u32));
    let stock: u32 = caller.call_with("stock.get", "teapot", options).await?;
    println!("stock.get answered by its fallback: {stock}");

    for node in replicas.into_iter().chain([caller]) {
        node.stop().await;
    }
    Ok(())
}
