//! Measurement helpers shared by the transport benches: sequential round trips and a closed
//! loop with a fixed number of calls in flight.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Sequential calls measured for p50/p99.
pub(crate) const SEQUENTIAL_CALLS: usize = 20_000;
/// Calls in flight in the closed loop.
pub(crate) const IN_FLIGHT: usize = 64;

/// p50 and p99 in µs of sequential calls.
pub(crate) async fn sequential<F, Fut>(mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    for _ in 0..SEQUENTIAL_CALLS / 10 {
        call().await;
    }
    let mut micros = Vec::with_capacity(SEQUENTIAL_CALLS);
    for _ in 0..SEQUENTIAL_CALLS {
        let start = Instant::now();
        call().await;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    (micros[micros.len() / 2], micros[micros.len() * 99 / 100])
}

/// Calls per second with `IN_FLIGHT` callers in a closed loop.
pub(crate) async fn closed_loop<F, Fut>(duration: Duration, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let end = Instant::now() + duration;
    let start = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < end {
                    call(i).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    total as f64 / start.elapsed().as_secs_f64()
}
