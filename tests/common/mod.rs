//! Helpers shared by the integration tests (not every test binary uses every one).
#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod demo;
pub(crate) mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A shared counter for handlers to bump.
pub(crate) fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

/// An event listener that only counts its deliveries into `count`.
pub(crate) fn counting<P>(
    count: &Arc<AtomicUsize>,
) -> impl Fn(phalanx::Context, P) -> std::future::Ready<phalanx::Result<()>> + use<P> {
    let count = count.clone();
    move |_ctx, _| {
        count.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

/// Waits (up to 10 s) until `count` reaches `want` — events are asynchronous — then a little
/// longer, so stray extra deliveries show up and "exactly" is checked, not just "at least".
pub(crate) async fn settle(count: &AtomicUsize, want: usize) -> usize {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while count.load(Ordering::SeqCst) < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    count.load(Ordering::SeqCst)
}

/// A cluster secret strong enough to be accepted: `label` itself if it is, else one made from
/// it, distinct per label (tests name their clusters with short labels: "s1", "right", "wrong").
pub(crate) fn strong_secret(label: &str) -> String {
    if phalanx::identity::check_secret_strength(label).is_ok() {
        return label.to_owned();
    }
    format!("{label}-test-secret-0123456789abcdefghij")
}

/// Whether `flag` is set within `within` (checked every 10 ms).
pub(crate) async fn becomes_true(flag: &std::sync::atomic::AtomicBool, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}

/// Waits (up to `within`) until `broker` knows `n` nodes serving `service`; whether it did.
pub(crate) async fn serving_nodes(
    broker: &phalanx::Broker,
    service: &str,
    n: usize,
    within: Duration,
) -> bool {
    tokio::time::timeout(within, async {
        while broker
            .nodes()
            .iter()
            .filter(|node| node.services.iter().any(|s| s == service))
            .count()
            < n
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok()
}
