//! Every bound on what a peer can make this node hold or do, in one place, and the counters of
//! how often each one bit.
//!
//! A member of the cluster is trusted to call actions and emit events, not with this node's
//! memory: what it announces (its INFO), how much it asks at once (requests and events in flight)
//! and how much it sends (frames) is bounded here. When a bound is reached the peer gets a clear
//! refusal, the hit is counted ([`MetricsSnapshot::limit_hits`](crate::metrics::MetricsSnapshot)
//! and `phalanx_limit_hits_total{limit}`) and logged — at most one line per limit per
//! [`LOG_EVERY`], saying how many hits it stands for.
//!
//! ```
//! use phalanx::limits::Limits;
//!
//! let mut limits = Limits::default();
//! limits.max_actions_per_node = 10_000;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let broker = phalanx::Broker::builder().limits(limits).start().await?;
//! # broker.stop().await;
//! # Ok::<_, phalanx::Error>(()) }).unwrap();
//! ```

use crate::protocol::packet::Info;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The most segments an event pattern may have; longer patterns match nothing, and are refused
/// when a service subscribes or a peer announces one (matching costs at most this many segment
/// comparisons per segment of the event name).
pub const MAX_PATTERN_SEGMENTS: usize = 64;

/// The longest a limit stays quiet in the log after it bit: one line per limit per interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Bounds on what peers may make this node hold or do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most requests from one peer served at once; beyond, the peer gets queue-full (429) errors
    /// at once. Default: 1024.
    pub max_peer_in_flight: usize,
    /// Most events from one peer being handled at once; beyond, its events are dropped (and
    /// counted). Default: 1024.
    pub max_peer_events_in_flight: usize,
    /// Most services one node may announce. Default: 256.
    pub max_services_per_node: usize,
    /// Most actions and event subscriptions one node may announce, together. Default: 4096.
    pub max_actions_per_node: usize,
    /// Longest service, action or event name (bytes). Default: 256.
    pub max_name_len: usize,
    /// Most addresses one node may announce. Default: 16.
    pub max_addresses: usize,
    /// Most peers one INFO may pass on by gossip. Default: 256.
    pub max_gossip_peers: usize,
    /// Most other nodes this node keeps in its registry; INFO from more is refused. Default: 1024.
    pub max_nodes: usize,
    /// How long a node that went down is remembered (registry, dial targets, per-peer metrics)
    /// before it is forgotten. Default: 10 minutes.
    pub forget_down_nodes_after: Duration,
    /// Most byte streams this node reads from one peer at once (the params of calls it serves,
    /// the results of calls it made); beyond, calls bringing a stream are refused (429). Each
    /// holds at most [`WINDOW`](crate::stream::WINDOW) chunks. Default: 64.
    pub max_peer_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_peer_in_flight: 1024,
            max_peer_events_in_flight: 1024,
            max_services_per_node: 256,
            max_actions_per_node: 4096,
            max_name_len: 256,
            max_addresses: 16,
            max_gossip_peers: 256,
            max_nodes: 1024,
            forget_down_nodes_after: Duration::from_secs(600),
            max_peer_streams: 64,
        }
    }
}

impl Limits {
    /// Why `info` asks more of this node than the limits allow, if it does.
    pub(crate) fn check_info(&self, info: &Info) -> Result<(), String> {
        let too_many = |what: &str, n: usize, max: usize| {
            (n > max).then(|| format!("{n} {what} (at most {max})"))
        };
        if let Some(refusal) = too_many("services", info.services.len(), self.max_services_per_node)
            .or_else(|| too_many("addresses", info.addresses.len(), self.max_addresses))
            .or_else(|| too_many("gossiped peers", info.peers.len(), self.max_gossip_peers))
            .or_else(|| {
                let entries = info
                    .services
                    .iter()
                    .map(|s| s.actions.len() + s.events.len())
                    .sum();
                too_many("actions and events", entries, self.max_actions_per_node)
            })
        {
            return Err(refusal);
        }
        let names = info.services.iter().flat_map(|s| {
            [&s.full_name, &s.name]
                .into_iter()
                .chain(s.actions.iter().map(|a| &a.name))
                .chain(s.events.iter().map(|e| &e.name))
        });
        let addresses = info
            .addresses
            .iter()
            .chain(info.peers.iter().flat_map(|p| &p.addresses))
            .chain(info.peers.iter().map(|p| &p.node_id));
        if let Some(long) = names.chain(addresses).find(|n| n.len() > self.max_name_len) {
            let shown: String = long.chars().take(32).collect();
            return Err(format!(
                "a name of {} bytes (at most {}): '{shown}…'",
                long.len(),
                self.max_name_len
            ));
        }
        if let Some(peer) = info
            .peers
            .iter()
            .find(|p| p.addresses.len() > self.max_addresses)
        {
            return Err(format!(
                "{} addresses for gossiped peer '{}' (at most {})",
                peer.addresses.len(),
                peer.node_id,
                self.max_addresses
            ));
        }
        let patterns = info.services.iter().flat_map(|s| &s.events);
        if let Some(event) = patterns
            .into_iter()
            .find(|e| e.name.split('.').count() > MAX_PATTERN_SEGMENTS)
        {
            return Err(format!(
                "an event pattern of more than {MAX_PATTERN_SEGMENTS} segments ('{}…')",
                event.name.chars().take(32).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// A bound that bit, as counted in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Limit {
    /// A request refused because its peer had [`Limits::max_peer_in_flight`] running.
    PeerInFlight,
    /// An event dropped because its peer had [`Limits::max_peer_events_in_flight`] running.
    PeerEventsInFlight,
    /// An INFO refused for exceeding one of the announcement limits.
    InfoRefused,
    /// A packet from a sender not yet introduced, refused because too many were waiting.
    UnknownSenders,
    /// A node heard of (gossip, LAN) not taken as a dial target: too many only heard of.
    DialHearsay,
    /// A dial put off because this node's handshake budget was spent.
    DialBudget,
    /// A dial that reached another node than the one announced (a ghost id).
    DialMismatch,
    /// A NATS message dropped: malformed, not from a member, forged, replayed or unintroduced.
    NatsRejected,
    /// A Kafka record dropped: malformed, not from a member, forged, replayed or unintroduced.
    KafkaRejected,
    /// A link refused: failed mutual authentication, claimed another id than its certificate
    /// names, or broke the protocol.
    LinkRefused,
    /// A stream refused (too many open with its peer) or failed for breaking the stream rules
    /// (out of sequence, oversized chunk, beyond its credit).
    PeerStreams,
}

impl Limit {
    /// Every limit, in counter order.
    pub const ALL: [Limit; 11] = [
        Limit::PeerInFlight,
        Limit::PeerEventsInFlight,
        Limit::InfoRefused,
        Limit::UnknownSenders,
        Limit::DialHearsay,
        Limit::DialBudget,
        Limit::DialMismatch,
        Limit::NatsRejected,
        Limit::KafkaRejected,
        Limit::LinkRefused,
        Limit::PeerStreams,
    ];

    /// The `limit` label and snapshot key.
    pub fn name(self) -> &'static str {
        match self {
            Limit::PeerInFlight => "peer_in_flight",
            Limit::PeerEventsInFlight => "peer_events_in_flight",
            Limit::InfoRefused => "info_refused",
            Limit::UnknownSenders => "unknown_senders",
            Limit::DialHearsay => "dial_hearsay",
            Limit::DialBudget => "dial_budget",
            Limit::DialMismatch => "dial_mismatch",
            Limit::NatsRejected => "nats_rejected",
            Limit::KafkaRejected => "kafka_rejected",
            Limit::LinkRefused => "link_refused",
            Limit::PeerStreams => "peer_streams",
        }
    }

    fn index(self) -> usize {
        Limit::ALL
            .iter()
            .position(|l| *l == self)
            .expect("every limit is in ALL")
    }
}

/// How often each limit bit, and when each last wrote a log line.
#[derive(Debug)]
pub(crate) struct LimitHits {
    started: Instant,
    hits: [AtomicU64; Limit::ALL.len()],
    /// Per limit: hits at the last log line, and when it was written (ms since `started`, +1).
    logged_hits: [AtomicU64; Limit::ALL.len()],
    logged_at: [AtomicU64; Limit::ALL.len()],
    series: [metrics::Counter; Limit::ALL.len()],
}

impl LimitHits {
    pub(crate) fn new(node_id: &str) -> Self {
        Self {
            started: Instant::now(),
            hits: Default::default(),
            logged_hits: Default::default(),
            logged_at: Default::default(),
            series: Limit::ALL.map(|limit| {
                metrics::counter!("phalanx_limit_hits_total", "node" => node_id.to_owned(), "limit" => limit.name())
            }),
        }
    }

    /// Counts one hit of `limit`; logs `detail` unless this limit logged within [`LOG_EVERY`].
    pub(crate) fn hit(&self, limit: Limit, detail: std::fmt::Arguments<'_>) {
        self.hits(limit, 1, detail);
    }

    /// Counts `n` hits of `limit` at once; logs like [`LimitHits::hit`].
    pub(crate) fn hits(&self, limit: Limit, n: u64, detail: std::fmt::Arguments<'_>) {
        let i = limit.index();
        let total = self.hits[i].fetch_add(n, Ordering::Relaxed) + n;
        self.series[i].increment(n);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let since = total - self.logged_hits[i].swap(total, Ordering::Relaxed);
            tracing::warn!(
                limit = limit.name(),
                hits = since,
                total,
                "limit reached: {detail}"
            );
        }
    }

    /// Hits so far, per limit name (limits that never bit included, as 0).
    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        Limit::ALL
            .iter()
            .map(|l| {
                (
                    l.name().to_owned(),
                    self.hits[l.index()].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}
