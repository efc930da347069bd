//! A lock-free latency histogram with log-linear buckets (8 per power of two, so any quantile
//! is within 12.5 % of the truth), for the snapshots `$node.metrics` returns.

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

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
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
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((45.0..=56.0).contains(&p50), "{p50}");
        assert!((90.0..=112.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
    }
}
