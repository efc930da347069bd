//! Balancing strategies: which of several equivalent endpoints gets the next call.
//!
//! ```
//! use phalanx::registry::Strategy;
//!
//! let strategy = Strategy::RoundRobin;
//! let counter = std::sync::atomic::AtomicUsize::new(0);
//! let picks: Vec<usize> = (0..4).map(|_| strategy.pick(3, &counter)).collect();
//! assert_eq!(picks, [0, 1, 2, 0]);
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};

/// How to choose among equivalent endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
}

impl Strategy {
    /// An index in `0..len` (`len` must be positive); `counter` holds round-robin state.
    pub fn pick(self, len: usize, counter: &AtomicUsize) -> usize {
        self.pick_nth(len, counter.fetch_add(1, Ordering::Relaxed))
    }

    /// An index in `0..len` for the `turn`-th pick (`len` must be positive).
    pub fn pick_nth(self, len: usize, turn: usize) -> usize {
        debug_assert!(len > 0);
        match self {
            Self::RoundRobin => turn % len,
            Self::Random => rand::random_range(0..len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_covers_every_endpoint() {
        let counter = AtomicUsize::new(0);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[Strategy::Random.pick(4, &counter)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }
}
