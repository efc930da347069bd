//! Balancing strategies: which of several equivalent endpoints gets the next call.
//!
//! The registry first narrows the endpoints by preference — this node's own, then nodes on the
//! same host, then the rest — and skips endpoints a middleware vetoes (an open circuit) or the
//! call avoids (a node that just failed it). The strategy chooses among what is left.
//!
//! ```
//! use phalanx::registry::{Candidate, Strategy};
//!
//! let nodes = [Candidate::new("a"), Candidate::new("b"), Candidate::new("c")];
//! let picks: Vec<usize> = (0..4).map(|turn| Strategy::RoundRobin.choose(&nodes, turn, None)).collect();
//! assert_eq!(picks, [0, 1, 2, 0]);
//!
//! // The same key always lands on the same node.
//! let shard = Strategy::shard("#tenant");
//! assert_eq!(shard.choose(&nodes, 0, Some("acme")), shard.choose(&nodes, 7, Some("acme")));
//! ```

use std::time::Duration;

/// How to choose among equivalent endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// Power of two choices: of two random endpoints, the one with the lower expected wait
    /// (latency EWMA × (requests in flight + 1)). Endpoints never measured are tried first.
    LeastLatency,
    /// Power of two choices on the CPU usage the nodes report in their heartbeats.
    Cpu,
    /// Consistent (rendezvous) hashing on a key: the same key goes to the same node, and when a
    /// node joins or leaves only the keys that belong to it move. The key is a meta entry when
    /// it starts with `#` (`#tenant`), else a top-level field of the params (`user_id`). Calls
    /// without the key are balanced round-robin.
    Shard(String),
}

impl Strategy {
    /// Whether it reads the endpoints' latency: only then are remote calls timed for it.
    pub(crate) fn measures_latency(&self) -> bool {
        matches!(self, Self::LeastLatency)
    }
}

/// What a strategy knows about one endpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a> {
    /// The node serving it.
    pub node_id: &'a str,
    /// Smoothed latency of recent calls; `None` before the first.
    pub latency: Option<Duration>,
    /// Calls to it from this node not answered yet.
    pub in_flight: u32,
    /// The node's CPU usage (0–100) from its last heartbeat.
    pub cpu: Option<f32>,
}

impl<'a> Candidate<'a> {
    /// A candidate with nothing measured yet.
    pub fn new(node_id: &'a str) -> Self {
        Self {
            node_id,
            latency: None,
            in_flight: 0,
            cpu: None,
        }
    }
}

impl Strategy {
    /// Shards on `key` (see [`Strategy::Shard`]).
    pub fn shard(key: impl Into<String>) -> Self {
        Self::Shard(key.into())
    }

    /// The index of the chosen candidate (`candidates` must not be empty). `turn` counts this
    /// action's picks (round-robin state); `key` is the call's shard key, if any.
    pub fn choose(&self, candidates: &[Candidate<'_>], turn: usize, key: Option<&str>) -> usize {
        let len = candidates.len();
        debug_assert!(len > 0);
        if len == 1 {
            return 0;
        }
        match self {
            Self::RoundRobin => turn % len,
            Self::Random => rand::random_range(0..len),
            Self::LeastLatency => two_choices(len, |i| {
                let c = &candidates[i];
                c.latency.map_or(0.0, |l| l.as_secs_f64()) * f64::from(c.in_flight + 1)
            }),
            Self::Cpu => two_choices(len, |i| {
                let c = &candidates[i];
                f64::from(c.cpu.unwrap_or(50.0)) * 1000.0 + f64::from(c.in_flight)
            }),
            Self::Shard(_) => match key {
                Some(key) => (0..len)
                    .max_by_key(|&i| rendezvous(key, candidates[i].node_id))
                    .unwrap_or(0),
                None => turn % len,
            },
        }
    }

    /// The shard key's name when this is [`Strategy::Shard`].
    pub(crate) fn shard_key(&self) -> Option<&str> {
        match self {
            Self::Shard(key) => Some(key),
            _ => None,
        }
    }

    /// An index for the `turn`-th pick among `len` equal endpoints (events): random for
    /// [`Strategy::Random`], round-robin otherwise.
    pub(crate) fn pick_nth(&self, len: usize, turn: usize) -> usize {
        match self {
            Self::Random => rand::random_range(0..len),
            _ => turn % len,
        }
    }
}

/// Of two distinct random indices, the one with the lower score.
fn two_choices(len: usize, score: impl Fn(usize) -> f64) -> usize {
    let a = rand::random_range(0..len);
    let b = (a + rand::random_range(1..len)) % len;
    if score(b) < score(a) { b } else { a }
}

/// A stable 64-bit score of (key, node): FNV-1a, then a finalizer so close inputs spread.
fn rendezvous(key: &str, node_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0xff]).chain(node_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&'static str]) -> Vec<Candidate<'static>> {
        names.iter().map(|n| Candidate::new(n)).collect()
    }

    fn spread(strategy: &Strategy, candidates: &[Candidate<'_>], picks: usize) -> Vec<usize> {
        let mut seen = vec![0; candidates.len()];
        for turn in 0..picks {
            seen[strategy.choose(candidates, turn, None)] += 1;
        }
        seen
    }

    #[test]
    fn round_robin_is_exactly_even() {
        assert_eq!(
            spread(&Strategy::RoundRobin, &nodes(&["a", "b", "c"]), 300),
            [100, 100, 100]
        );
    }

    #[test]
    fn random_covers_every_endpoint() {
        let seen = spread(&Strategy::Random, &nodes(&["a", "b", "c", "d"]), 4000);
        assert!(seen.iter().all(|&n| n > 800), "{seen:?}");
    }

    #[test]
    fn least_latency_prefers_the_fast_and_idle() {
        let mut c = nodes(&["slow", "fast", "busy"]);
        c[0].latency = Some(Duration::from_millis(50));
        c[1].latency = Some(Duration::from_millis(1));
        c[2].latency = Some(Duration::from_millis(1));
        c[2].in_flight = 20;
        let seen = spread(&Strategy::LeastLatency, &c, 3000);
        // "fast" wins every pair it is in (2/3 of pairs); "slow" never beats "fast" or "busy".
        assert!(seen[1] > 1800, "{seen:?}");
        assert_eq!(seen[0], 0, "{seen:?}");
    }

    #[test]
    fn least_latency_tries_unmeasured_endpoints() {
        let mut c = nodes(&["known", "new"]);
        c[0].latency = Some(Duration::from_millis(1));
        assert_eq!(spread(&Strategy::LeastLatency, &c, 100), [0, 100]);
    }

    #[test]
    fn cpu_prefers_idle_nodes() {
        let mut c = nodes(&["hot", "cool", "warm"]);
        c[0].cpu = Some(95.0);
        c[1].cpu = Some(5.0);
        c[2].cpu = Some(50.0);
        let seen = spread(&Strategy::Cpu, &c, 3000);
        assert_eq!(seen[0], 0, "{seen:?}");
        assert!(seen[1] > 1800, "{seen:?}");
    }

    #[test]
    fn shard_keys_stay_put_when_a_node_joins() {
        let shard = Strategy::shard("user");
        let before = nodes(&["n1", "n2", "n3", "n4"]);
        let after = nodes(&["n1", "n2", "n3", "n4", "n5"]);
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let mut per_node = [0usize; 4];
        let mut moved = 0;
        for key in &keys {
            let old = before[shard.choose(&before, 0, Some(key))].node_id;
            let new = after[shard.choose(&after, 5, Some(key))].node_id;
            per_node[shard.choose(&before, 0, Some(key))] += 1;
            if old != new {
                // A key only ever moves to the node that joined.
                assert_eq!(new, "n5");
                moved += 1;
            }
        }
        // About a fifth of the keys move; every node had a fair share.
        assert!((250..=550).contains(&moved), "{moved}");
        assert!(
            per_node.iter().all(|&n| (350..=650).contains(&n)),
            "{per_node:?}"
        );
    }

    #[test]
    fn shard_without_key_rotates() {
        let c = nodes(&["a", "b"]);
        assert_eq!(spread(&Strategy::shard("#k"), &c, 10), [5, 5]);
    }
}
