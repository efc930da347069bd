//! A lock-free latency histogram with log-linear buckets (8 per power of two, so any quantile
//! is within 12.5 % of the truth), and its snapshot as `$node.metrics` returns it: the
//! [`LatencyHistogram`], which merges across nodes and subtracts across time, so cluster-wide and
//! windowed quantiles come from counts, never from averaging percentiles.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values below 2·SUB µs have a bucket each; above, 8 buckets per power of two up to 2^40 µs.
const BUCKETS: usize = (2 * SUB + (40 - SUB_BITS as u64 - 1) * SUB) as usize;

/// Counts of durations in microsecond buckets.
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < 2 * SUB {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros() as u64; // ≥ SUB_BITS + 1
    let sub = (micros >> (power - SUB_BITS as u64)) & (SUB - 1);
    ((2 * SUB + (power - SUB_BITS as u64 - 1) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// The smallest value that lands in `bucket`.
fn lower_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB {
        return bucket;
    }
    let power = (bucket - 2 * SUB) / SUB + SUB_BITS as u64 + 1;
    let sub = bucket % SUB;
    (SUB + sub) << (power - SUB_BITS as u64)
}

impl Histogram {
    pub(crate) fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The non-empty buckets, as a snapshot carries them.
    pub(crate) fn snapshot(&self) -> LatencyHistogram {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let n = b.load(Ordering::Relaxed);
                (n > 0).then_some((i as u16, n))
            })
            .collect();
        LatencyHistogram { buckets }
    }
}

/// How many calls took how long: the non-empty buckets of a node's latency histogram
/// (log-linear, 8 per power of two of microseconds).
///
/// ```
/// use phalanx::metrics::LatencyHistogram;
///
/// // Cluster-wide: merge the nodes' histograms, then ask for the quantile.
/// let mut cluster = LatencyHistogram::default();
/// # let (node_a, node_b) = (LatencyHistogram::default(), LatencyHistogram::default());
/// cluster.merge(&node_a);
/// cluster.merge(&node_b);
/// let p99 = cluster.quantile_ms(0.99);
/// # assert_eq!(p99, 0.0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LatencyHistogram {
    /// (bucket, count), by bucket.
    buckets: Vec<(u16, u64)>,
}

impl LatencyHistogram {
    /// Calls counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }

    /// Adds `other`'s counts (another node's, for a cluster-wide view).
    pub fn merge(&mut self, other: &Self) {
        for &(bucket, n) in &other.buckets {
            match self.buckets.binary_search_by_key(&bucket, |(b, _)| *b) {
                Ok(i) => self.buckets[i].1 += n,
                Err(i) => self.buckets.insert(i, (bucket, n)),
            }
        }
    }

    /// What was counted after `earlier` (a snapshot of the same node taken before): the
    /// latencies of a time window.
    pub fn since(&self, earlier: &Self) -> Self {
        let buckets = self
            .buckets
            .iter()
            .filter_map(|&(bucket, n)| {
                let before = earlier
                    .buckets
                    .binary_search_by_key(&bucket, |(b, _)| *b)
                    .map_or(0, |i| earlier.buckets[i].1);
                let after = n.saturating_sub(before);
                (after > 0).then_some((bucket, after))
            })
            .collect();
        Self { buckets }
    }

    /// The `q` quantile (0..=1) in milliseconds, within 12.5 %; 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(bucket, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                let bucket = usize::from(bucket);
                let low = lower_bound(bucket);
                let high = lower_bound(bucket + 1).max(low + 1);
                return (low + high) as f64 / 2.0 / 1000.0;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_merge_across_nodes_and_subtract_across_time() {
        let (a, b) = (Histogram::default(), Histogram::default());
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        let earlier = a.snapshot();
        for ms in 51..=100 {
            a.record(Duration::from_millis(ms));
            b.record(Duration::from_millis(ms + 100));
        }
        // The window after `earlier` holds only 51..=100 ms.
        let window = a.snapshot().since(&earlier);
        assert_eq!(window.count(), 50);
        let p50 = window.quantile_ms(0.5);
        assert!((70.0..=85.0).contains(&p50), "{p50}");
        // Two nodes (1..=100 ms and 151..=200 ms): the 75th of 150 values is 75 ms — not the
        // average of the nodes' medians (~113 ms).
        let mut cluster = a.snapshot();
        cluster.merge(&b.snapshot());
        assert_eq!(cluster.count(), 150);
        let p50 = cluster.quantile_ms(0.5);
        assert!((66.0..=85.0).contains(&p50), "{p50}");
    }

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for micros in [0, 1, 15, 16, 17, 100, 1_000, 123_456, 10_000_000] {
            let b = bucket_of(micros);
            assert!(b >= last, "{micros}");
            last = b;
            assert!(lower_bound(b) <= micros, "{micros}: {}", lower_bound(b));
            assert!(micros < lower_bound(b + 1), "{micros}");
            assert!((micros - lower_bound(b)) as f64 <= micros as f64 * 0.125);
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.snapshot().quantile_ms(0.5);
        let p99 = h.snapshot().quantile_ms(0.99);
        assert!((45.0..=56.0).contains(&p50), "{p50}");
        assert!((90.0..=112.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().snapshot().quantile_ms(0.5), 0.0);
    }
}
