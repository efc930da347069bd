//! Who to dial and when: the seeds a node was given and the peers it learned of through gossip,
//! each redialed with exponential back-off and jitter until linked. Used by the point-to-point
//! transports; they do the dialing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The node with the larger id waits this long for the smaller one to dial a gossiped peer.
const DEFER_TO_SMALLER: Duration = Duration::from_secs(2);

/// One thing to keep dialing.
#[derive(Debug)]
struct Target {
    addresses: Vec<String>,
    /// The node behind it, once known.
    node_id: Option<Arc<str>>,
    learned: Instant,
    backoff: Duration,
    next_try: Instant,
    dialing: bool,
}

impl Target {
    fn new(addresses: Vec<String>, node_id: Option<Arc<str>>) -> Self {
        let now = Instant::now();
        Self {
            addresses,
            node_id,
            learned: now,
            backoff: FIRST_BACKOFF,
            next_try: now,
            dialing: false,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Seeds by their configured address.
    seeds: Vec<Target>,
    /// Gossiped peers by node id.
    peers: HashMap<Arc<str>, Target>,
    /// Addresses that turned out to be this node.
    own: HashSet<SocketAddr>,
}

/// Who to dial and when.
#[derive(Debug)]
pub(crate) struct DialPlan {
    state: Mutex<State>,
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
                    .map(|s| Target::new(vec![s.clone()], None))
                    .collect(),
                ..Default::default()
            }),
        }
    }

    /// Remembers where a gossiped peer can be reached.
    pub(crate) fn learn(&self, node_id: &str, addresses: &[String]) {
        if addresses.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("dial plan lock");
        match state.peers.get_mut(node_id) {
            Some(target) => target.addresses = addresses.to_vec(),
            None => {
                state.peers.insert(
                    node_id.into(),
                    Target::new(addresses.to_vec(), Some(node_id.into())),
                );
            }
        }
    }

    /// Never dial `addr` again: it is this node.
    pub(crate) fn mark_self(&self, addr: SocketAddr) {
        self.state.lock().expect("dial plan lock").own.insert(addr);
    }

    /// Targets due for a dial, marked as being dialed. `own_id` is this node; `is_linked` says
    /// whether a node already has a link.
    pub(crate) fn due(
        &self,
        own_id: &str,
        is_linked: impl Fn(&str) -> bool,
    ) -> Vec<(DialJob, Vec<String>)> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("dial plan lock");
        let mut jobs = Vec::new();
        for (i, seed) in state.seeds.iter_mut().enumerate() {
            let satisfied = seed
                .node_id
                .as_ref()
                .is_some_and(|n| &**n == own_id || is_linked(n));
            if let Some(addresses) = take_if_due(seed, satisfied, now) {
                jobs.push((DialJob::Seed(i), addresses));
            }
        }
        for (node_id, peer) in state.peers.iter_mut() {
            let deferring = own_id > &**node_id && peer.learned.elapsed() < DEFER_TO_SMALLER;
            let satisfied = &**node_id == own_id || is_linked(node_id) || deferring;
            if let Some(addresses) = take_if_due(peer, satisfied, now) {
                jobs.push((DialJob::Peer(node_id.clone()), addresses));
            }
        }
        jobs
    }

    /// Records a dial's outcome: the peer behind it, or a failure (longer back-off).
    pub(crate) fn finish(&self, job: &DialJob, peer: Option<Arc<str>>) {
        let mut state = self.state.lock().expect("dial plan lock");
        let target = match job {
            DialJob::Seed(i) => state.seeds.get_mut(*i),
            DialJob::Peer(id) => state.peers.get_mut(id),
        };
        let Some(target) = target else { return };
        target.dialing = false;
        match peer {
            Some(peer) => {
                target.node_id = Some(peer);
                target.backoff = FIRST_BACKOFF;
                target.next_try = Instant::now() + FIRST_BACKOFF;
            }
            None => {
                let jitter = rand::random_range(0.75..1.25);
                target.next_try = Instant::now() + target.backoff.mul_f64(jitter);
                target.backoff = (target.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Addresses found to be this node.
    pub(crate) fn own_addresses(&self) -> HashSet<SocketAddr> {
        self.state.lock().expect("dial plan lock").own.clone()
    }
}

fn take_if_due(target: &mut Target, satisfied: bool, now: Instant) -> Option<Vec<String>> {
    if target.dialing || satisfied || target.next_try > now {
        return None;
    }
    target.dialing = true;
    Some(target.addresses.clone())
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
        plan.learn("b", &["10.0.0.2:7000".to_owned()]);
        assert_eq!(plan.due("a", never_linked).len(), 1, "a < b dials at once");
        let plan = DialPlan::new(&[]);
        plan.learn("a", &["10.0.0.1:7000".to_owned()]);
        assert!(plan.due("b", never_linked).is_empty(), "b > a waits");
        tokio::time::advance(DEFER_TO_SMALLER).await;
        assert_eq!(plan.due("b", never_linked).len(), 1, "then dials");
    }
}
