//! Who to dial and when: the seeds a node was given and the peers it heard of — from the peer
//! itself, from another member's gossip, or from the LAN — each redialed with exponential
//! back-off and jitter until linked. Used by the point-to-point transports; they do the dialing.
//!
//! What is heard is not trusted to steer the node's traffic. Addresses a node states itself
//! (its INFO over an authenticated link, or an mDNS record signed with the cluster's key) are
//! *vouched*; what others say about it is *hearsay*. Hearsay never replaces vouched addresses,
//! is held for at most [`MAX_HEARSAY_TARGETS`] nodes, is dialed at a slower pace (back-off up to
//! [`MAX_HEARSAY_BACKOFF`], two addresses per attempt) and forgotten after
//! [`HEARSAY_GIVE_UP`] without a link; a dial that reaches a different node than the one
//! announced counts as a failure. Every handshake attempt spends from one budget per node
//! ([`DIALS_PER_SECOND`]): no announcement can make a node send handshakes faster than that.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between dials of a node only heard of.
pub(crate) const MAX_HEARSAY_BACKOFF: Duration = Duration::from_secs(30);
/// A node only heard of and never reached is forgotten after this long.
pub(crate) const HEARSAY_GIVE_UP: Duration = Duration::from_secs(300);
/// The most nodes only heard of that a node keeps dialing.
pub(crate) const MAX_HEARSAY_TARGETS: usize = 64;
/// The most addresses kept for one node.
const MAX_ADDRESSES: usize = 16;
/// Addresses of a node only heard of tried per attempt.
const HEARSAY_ADDRESSES_PER_DIAL: usize = 2;
/// Handshakes a node may start per second (each address dialed is one), sustained.
pub(crate) const DIALS_PER_SECOND: f64 = 20.0;
/// Handshakes a node may start at once after a quiet spell.
const DIAL_BURST: f64 = 40.0;
/// The node with the larger id waits this long for the smaller one to dial a gossiped peer.
const DEFER_TO_SMALLER: Duration = Duration::from_secs(2);

/// Who said where a node can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerSource {
    /// The node itself, over a link that authenticated it (its INFO).
    Itself,
    /// The node's own signed record, passed on by gossip or heard on the LAN (mDNS): its
    /// addresses are trusted, but it is forgotten after five minutes if never reached.
    Signed,
    /// Another member's word, or an unsigned record on the LAN.
    Hearsay,
}

/// One thing to keep dialing.
#[derive(Debug)]
struct Target {
    addresses: Vec<String>,
    /// The node behind it, once known.
    node_id: Option<Arc<str>>,
    /// Its addresses come from the node itself (or a seed, or a link reached through it).
    vouched: bool,
    /// The node was linked once (kept until the broker forgets it; others are given up).
    proven: bool,
    learned: Instant,
    backoff: Duration,
    next_try: Instant,
    dialing: bool,
    /// Which addresses a hearsay attempt starts from (they are tried a few at a time).
    rotation: usize,
}

impl Target {
    fn new(addresses: Vec<String>, node_id: Option<Arc<str>>, source: PeerSource) -> Self {
        let now = Instant::now();
        Self {
            addresses,
            node_id,
            vouched: source != PeerSource::Hearsay,
            proven: source == PeerSource::Itself,
            learned: now,
            backoff: FIRST_BACKOFF,
            next_try: now,
            dialing: false,
            rotation: 0,
        }
    }

    fn max_backoff(&self) -> Duration {
        if self.vouched {
            MAX_BACKOFF
        } else {
            MAX_HEARSAY_BACKOFF
        }
    }
}

/// A token bucket of handshakes.
#[derive(Debug)]
struct DialBudget {
    tokens: f64,
    refilled: Instant,
}

impl DialBudget {
    fn take(&mut self, n: usize) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * DIALS_PER_SECOND;
        self.tokens = (self.tokens + earned).min(DIAL_BURST);
        self.refilled = now;
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct State {
    /// Seeds by their configured address.
    seeds: Vec<Target>,
    /// Peers by node id.
    peers: HashMap<Arc<str>, Target>,
    /// Addresses that turned out to be this node.
    own: HashSet<SocketAddr>,
    budget: DialBudget,
}

/// What the plan refused, for the transport's counters.
#[derive(Debug, Default)]
pub(crate) struct DialRefusals {
    /// Hearsay not taken: too many nodes only heard of.
    pub(crate) hearsay: AtomicU64,
    /// Dials put off because the handshake budget was spent.
    pub(crate) budget: AtomicU64,
    /// Dials that reached another node than the one announced.
    pub(crate) mismatched: AtomicU64,
}

/// Who to dial and when.
#[derive(Debug)]
pub(crate) struct DialPlan {
    state: Mutex<State>,
    pub(crate) refusals: DialRefusals,
}

/// Which target a dial serves; hand it back to [`DialPlan::finish`].
#[derive(Debug, Clone)]
pub(crate) enum DialJob {
    Seed(usize),
    Peer(Arc<str>),
}

impl DialPlan {
    /// A plan that dials `seeds` (addresses) until each is linked.
    pub(crate) fn new(seeds: &[String]) -> Self {
        Self {
            state: Mutex::new(State {
                seeds: seeds
                    .iter()
                    .map(|s| Target::new(vec![s.clone()], None, PeerSource::Itself))
                    .collect(),
                peers: HashMap::new(),
                own: HashSet::new(),
                budget: DialBudget {
                    tokens: DIAL_BURST,
                    refilled: Instant::now(),
                },
            }),
            refusals: DialRefusals::default(),
        }
    }

    /// Remembers where `node_id` can be reached, as `source` says. Returns `false` when the
    /// hearsay was not taken (too many nodes only heard of).
    pub(crate) fn learn(&self, node_id: &str, addresses: &[String], source: PeerSource) -> bool {
        if addresses.is_empty() {
            return true;
        }
        let mut addresses = addresses.to_vec();
        addresses.truncate(MAX_ADDRESSES);
        let mut state = self.state.lock().expect("dial plan lock");
        let hearsay_targets = state.peers.values().filter(|t| !t.vouched).count();
        match (state.peers.get_mut(node_id), source) {
            (Some(target), PeerSource::Itself | PeerSource::Signed) => {
                target.addresses = addresses;
                target.vouched = true;
                target.proven |= source == PeerSource::Itself;
            }
            // What others say never overrides what the node said itself.
            (Some(target), PeerSource::Hearsay) if target.vouched => {}
            (Some(target), PeerSource::Hearsay) => {
                for address in addresses {
                    if target.addresses.len() < MAX_ADDRESSES
                        && !target.addresses.contains(&address)
                    {
                        target.addresses.push(address);
                    }
                }
            }
            (None, PeerSource::Hearsay) if hearsay_targets >= MAX_HEARSAY_TARGETS => {
                self.refusals.hearsay.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            (None, source) => {
                state.peers.insert(
                    node_id.into(),
                    Target::new(addresses, Some(node_id.into()), source),
                );
            }
        }
        true
    }

    /// Stops dialing `node_id` (it is gone for good).
    pub(crate) fn forget(&self, node_id: &str) {
        self.state
            .lock()
            .expect("dial plan lock")
            .peers
            .remove(node_id);
    }

    /// Never dial `addr` again: it is this node.
    pub(crate) fn mark_self(&self, addr: SocketAddr) {
        self.state.lock().expect("dial plan lock").own.insert(addr);
    }

    /// Targets due for a dial, marked as being dialed, within the handshake budget. `own_id` is
    /// this node; `is_linked` says whether a node already has a link.
    pub(crate) fn due(
        &self,
        own_id: &str,
        is_linked: impl Fn(&str) -> bool,
    ) -> Vec<(DialJob, Vec<String>)> {
        let now = Instant::now();
        let mut guard = self.state.lock().expect("dial plan lock");
        let state = &mut *guard;
        state.peers.retain(|_, peer| {
            peer.proven || peer.dialing || peer.learned.elapsed() < HEARSAY_GIVE_UP
        });
        let mut jobs = Vec::new();
        let mut over_budget = 0;
        for (i, seed) in state.seeds.iter_mut().enumerate() {
            let satisfied = seed
                .node_id
                .as_ref()
                .is_some_and(|n| &**n == own_id || is_linked(n));
            if let Some(addresses) = take_if_due(seed, satisfied, now, &mut state.budget) {
                jobs.push((DialJob::Seed(i), addresses));
            } else if is_due(seed, satisfied, now) {
                over_budget += 1;
            }
        }
        for (node_id, peer) in state.peers.iter_mut() {
            let deferring = own_id > &**node_id && peer.learned.elapsed() < DEFER_TO_SMALLER;
            let satisfied = &**node_id == own_id || is_linked(node_id) || deferring;
            if let Some(addresses) = take_if_due(peer, satisfied, now, &mut state.budget) {
                jobs.push((DialJob::Peer(node_id.clone()), addresses));
            } else if is_due(peer, satisfied, now) {
                over_budget += 1;
            }
        }
        if over_budget > 0 {
            self.refusals
                .budget
                .fetch_add(over_budget, Ordering::Relaxed);
        }
        jobs
    }

    /// Records a dial's outcome: the peer behind it, or a failure (longer back-off). A dial that
    /// reached another node than the one it was for is a failure too — and the end of a target
    /// only heard of.
    pub(crate) fn finish(&self, job: &DialJob, peer: Option<Arc<str>>) {
        let mut state = self.state.lock().expect("dial plan lock");
        let peer = match (job, peer) {
            (DialJob::Peer(id), Some(peer)) if *id != peer => {
                self.refusals.mismatched.fetch_add(1, Ordering::Relaxed);
                let heard = state.peers.get(id).is_some_and(|t| !t.vouched);
                if heard {
                    state.peers.remove(id);
                    return;
                }
                None
            }
            (_, peer) => peer,
        };
        let target = match job {
            DialJob::Seed(i) => state.seeds.get_mut(*i),
            DialJob::Peer(id) => state.peers.get_mut(id),
        };
        let Some(target) = target else { return };
        target.dialing = false;
        match peer {
            Some(peer) => {
                target.node_id = Some(peer);
                target.vouched = true;
                target.proven = true;
                target.backoff = FIRST_BACKOFF;
                target.next_try = Instant::now() + FIRST_BACKOFF;
            }
            None => {
                let jitter = rand::random_range(0.75..1.25);
                target.next_try = Instant::now() + target.backoff.mul_f64(jitter);
                target.backoff = (target.backoff * 2).min(target.max_backoff());
            }
        }
    }

    /// Addresses found to be this node.
    pub(crate) fn own_addresses(&self) -> HashSet<SocketAddr> {
        self.state.lock().expect("dial plan lock").own.clone()
    }
}

fn is_due(target: &Target, satisfied: bool, now: Instant) -> bool {
    !target.dialing && !satisfied && target.next_try <= now
}

/// The addresses to dial for `target` if it is due and the budget allows; marks it as dialing.
fn take_if_due(
    target: &mut Target,
    satisfied: bool,
    now: Instant,
    budget: &mut DialBudget,
) -> Option<Vec<String>> {
    if !is_due(target, satisfied, now) {
        return None;
    }
    let addresses: Vec<String> = if target.vouched {
        target.addresses.clone()
    } else {
        let n = target.addresses.len();
        let start = target.rotation % n.max(1);
        target.rotation += HEARSAY_ADDRESSES_PER_DIAL;
        (0..n.min(HEARSAY_ADDRESSES_PER_DIAL))
            .map(|i| target.addresses[(start + i) % n].clone())
            .collect()
    };
    if !budget.take(addresses.len().max(1)) {
        return None;
    }
    target.dialing = true;
    Some(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never_linked(_: &str) -> bool {
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_seed_backs_off_and_a_linked_one_is_left_alone() {
        let plan = DialPlan::new(&["10.0.0.1:7000".to_owned()]);
        let jobs = plan.due("me", never_linked);
        assert_eq!(jobs.len(), 1);
        assert!(
            plan.due("me", never_linked).is_empty(),
            "already being dialed"
        );
        plan.finish(&jobs[0].0, None);
        assert!(plan.due("me", never_linked).is_empty(), "backing off");
        tokio::time::advance(FIRST_BACKOFF.mul_f64(1.3)).await;
        let again = plan.due("me", never_linked);
        assert_eq!(again.len(), 1, "due again after the back-off");
        plan.finish(&again[0].0, Some("seed-node".into()));
        tokio::time::advance(MAX_BACKOFF * 2).await;
        assert!(plan.due("me", |n| n == "seed-node").is_empty(), "linked");
        assert_eq!(
            plan.due("me", never_linked).len(),
            1,
            "link lost: dial again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_doubles_up_to_its_cap() {
        let plan = DialPlan::new(&["10.0.0.1:7000".to_owned()]);
        for _ in 0..10 {
            let jobs = plan.due("me", never_linked);
            plan.finish(&jobs[0].0, None);
            tokio::time::advance(MAX_BACKOFF.mul_f64(1.3)).await;
        }
        let jobs = plan.due("me", never_linked);
        plan.finish(&jobs[0].0, None);
        tokio::time::advance(MAX_BACKOFF.mul_f64(0.7)).await;
        assert!(
            plan.due("me", never_linked).is_empty(),
            "still within the capped wait"
        );
        tokio::time::advance(MAX_BACKOFF.mul_f64(0.6)).await;
        assert_eq!(
            plan.due("me", never_linked).len(),
            1,
            "never longer than the cap + jitter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_larger_id_lets_the_smaller_dial_a_gossiped_peer_first() {
        let plan = DialPlan::new(&[]);
        plan.learn("b", &["10.0.0.2:7000".to_owned()], PeerSource::Itself);
        assert_eq!(plan.due("a", never_linked).len(), 1, "a < b dials at once");
        let plan = DialPlan::new(&[]);
        plan.learn("a", &["10.0.0.1:7000".to_owned()], PeerSource::Itself);
        assert!(plan.due("b", never_linked).is_empty(), "b > a waits");
        tokio::time::advance(DEFER_TO_SMALLER).await;
        assert_eq!(plan.due("b", never_linked).len(), 1, "then dials");
    }

    #[tokio::test(start_paused = true)]
    async fn hearsay_never_overrides_what_a_node_said_itself() {
        let plan = DialPlan::new(&[]);
        plan.learn("b", &["10.0.0.2:7000".to_owned()], PeerSource::Itself);
        plan.learn("b", &["192.0.2.66:7000".to_owned()], PeerSource::Hearsay);
        let jobs = plan.due("a", never_linked);
        assert_eq!(jobs[0].1, ["10.0.0.2:7000"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hearsay_is_bounded_slow_and_forgotten() {
        let plan = DialPlan::new(&[]);
        for i in 0..MAX_HEARSAY_TARGETS + 10 {
            let id = format!("ghost-{i:03}");
            let taken = plan.learn(&id, &["192.0.2.1:7000".to_owned()], PeerSource::Hearsay);
            assert_eq!(taken, i < MAX_HEARSAY_TARGETS);
        }
        assert_eq!(plan.refusals.hearsay.load(Ordering::Relaxed), 10);
        // However many there are, the first burst stays within the budget.
        let jobs = plan.due("a", never_linked);
        assert!(jobs.len() <= DIAL_BURST as usize, "{}", jobs.len());
        assert!(plan.refusals.budget.load(Ordering::Relaxed) > 0);
        // Failing ghosts back off up to the hearsay cap, then are forgotten.
        for (job, _) in &jobs {
            plan.finish(job, None);
        }
        tokio::time::advance(HEARSAY_GIVE_UP).await;
        assert!(plan.due("a", never_linked).is_empty(), "forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ghost_id_that_leads_to_another_node_is_dropped() {
        let plan = DialPlan::new(&[]);
        plan.learn("ghost", &["10.0.0.2:7000".to_owned()], PeerSource::Hearsay);
        let jobs = plan.due("a", never_linked);
        plan.finish(&jobs[0].0, Some("real-node".into()));
        assert_eq!(plan.refusals.mismatched.load(Ordering::Relaxed), 1);
        tokio::time::advance(MAX_HEARSAY_BACKOFF * 2).await;
        assert!(plan.due("a", never_linked).is_empty(), "never dialed again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_handshakes_per_second() {
        let plan = DialPlan::new(&[]);
        let addresses: Vec<String> = (0..16).map(|i| format!("10.0.1.{i}:7000")).collect();
        for i in 0..20 {
            plan.learn(&format!("n{i:02}"), &addresses, PeerSource::Itself);
        }
        let mut dialed = 0;
        for _ in 0..10 {
            for (job, addresses) in plan.due("a", never_linked) {
                dialed += addresses.len();
                plan.finish(&job, None);
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // One second: the burst plus a second's worth.
        assert!(
            dialed as f64 <= DIAL_BURST + DIALS_PER_SECOND + 16.0,
            "{dialed}"
        );
    }
}
