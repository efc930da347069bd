//! What a caller measures of one remote endpoint: calls in flight and a latency EWMA, for the
//! least-latency strategy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Weight of the newest sample in the moving average, in 1/8ths.
const NEW_SAMPLE_EIGHTHS: u64 = 2;

/// Calls in flight and smoothed latency of one endpoint, as seen from this node.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    in_flight: AtomicU32,
    /// Microseconds; 0 before the first sample.
    ewma_micros: AtomicU64,
}

/// One call in flight; records its latency when dropped, if it was timed. It holds the
/// endpoint's figures, so an attempt's future can own it without borrowing from whoever picked
/// the endpoint.
pub(crate) struct InFlightCall {
    stats: Arc<EndpointStats>,
    started: Option<Instant>,
}

impl EndpointStats {
    /// Counts a call until the returned guard is dropped; `timed`, its latency joins the
    /// average (only a strategy that reads it pays the two clock reads).
    pub(crate) fn begin(self: Arc<Self>, timed: bool) -> InFlightCall {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightCall {
            stats: self,
            started: timed.then(Instant::now),
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.ewma_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    fn record(&self, sample: Duration) {
        let sample = (sample.as_micros() as u64).max(1);
        // A lost race between two updates only drops one sample.
        let old = self.ewma_micros.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * (8 - NEW_SAMPLE_EIGHTHS) + sample * NEW_SAMPLE_EIGHTHS) / 8
        };
        self.ewma_micros.store(new.max(1), Ordering::Relaxed);
    }
}

impl Drop for InFlightCall {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(started) = self.started {
            self.stats.record(started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn average_follows_latency() {
        let stats = Arc::new(EndpointStats::default());
        assert_eq!(stats.latency(), None);
        for _ in 0..20 {
            let call = stats.clone().begin(true);
            assert_eq!(stats.in_flight(), 1);
            tokio::time::advance(Duration::from_millis(10)).await;
            drop(call);
        }
        assert_eq!(stats.in_flight(), 0);
        assert_eq!(stats.latency(), Some(Duration::from_millis(10)));
        let call = stats.clone().begin(true);
        tokio::time::advance(Duration::from_millis(90)).await;
        drop(call);
        // 3/4 · 10 ms + 1/4 · 90 ms
        assert_eq!(stats.latency(), Some(Duration::from_millis(30)));

        // Untimed calls are counted in flight and leave the average alone.
        let call = stats.clone().begin(false);
        assert_eq!(stats.in_flight(), 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(call);
        assert_eq!(stats.in_flight(), 0);
        assert_eq!(stats.latency(), Some(Duration::from_millis(30)));
    }
}
