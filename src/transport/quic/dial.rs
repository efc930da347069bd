//! Who to dial and when: seeds and gossip-learned peers, with back-off and jitter.

use super::Mesh;
use crate::membership::CLUSTER_SERVER_NAME;
use futures_util::FutureExt;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The node with the larger id waits this long for the smaller one to dial a gossiped peer.
const DEFER_TO_SMALLER: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(100);

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

/// The dialing schedule.
#[derive(Debug)]
pub(super) struct Dialer {
    state: Mutex<State>,
}

/// Which target a dial job serves.
#[derive(Debug, Clone)]
enum Job {
    Seed(usize),
    Peer(Arc<str>),
}

impl Dialer {
    pub(super) fn new(seeds: &[String]) -> Self {
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
    pub(super) fn learn(&self, node_id: &str, addresses: &[String]) {
        if addresses.is_empty() {
            return;
        }
        let mut state = self.state.lock().expect("dialer lock");
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
    pub(super) fn mark_self(&self, addr: SocketAddr) {
        self.state.lock().expect("dialer lock").own.insert(addr);
    }

    /// Targets due for a dial, marked as being dialed.
    fn due(&self, mesh: &Mesh) -> Vec<(Job, Vec<String>)> {
        let now = Instant::now();
        let own_id = &mesh.ctx.node_id;
        let mut state = self.state.lock().expect("dialer lock");
        let mut jobs = Vec::new();
        for (i, seed) in state.seeds.iter_mut().enumerate() {
            let satisfied = seed
                .node_id
                .as_ref()
                .is_some_and(|n| n == own_id || mesh.is_linked(n));
            if let Some(addresses) = take_if_due(seed, satisfied, now) {
                jobs.push((Job::Seed(i), addresses));
            }
        }
        for (node_id, peer) in state.peers.iter_mut() {
            let deferring = **own_id > **node_id && peer.learned.elapsed() < DEFER_TO_SMALLER;
            let satisfied = node_id == own_id || mesh.is_linked(node_id) || deferring;
            if let Some(addresses) = take_if_due(peer, satisfied, now) {
                jobs.push((Job::Peer(node_id.clone()), addresses));
            }
        }
        jobs
    }

    /// Records a dial's outcome: the peer behind it, or a failure (longer back-off).
    fn finish(&self, job: &Job, peer: Option<Arc<str>>) {
        let mut state = self.state.lock().expect("dialer lock");
        let target = match job {
            Job::Seed(i) => state.seeds.get_mut(*i),
            Job::Peer(id) => state.peers.get_mut(id),
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

    fn own_addresses(&self) -> HashSet<SocketAddr> {
        self.state.lock().expect("dialer lock").own.clone()
    }
}

fn take_if_due(target: &mut Target, satisfied: bool, now: Instant) -> Option<Vec<String>> {
    if target.dialing || satisfied || target.next_try > now {
        return None;
    }
    target.dialing = true;
    Some(target.addresses.clone())
}

/// The dial loop: every tick, dial whatever is due, each job in its own task.
pub(super) async fn run(mesh: Arc<Mesh>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (job, addresses) in mesh.dialer.due(&mesh) {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let peer = dial(&mesh, &addresses).await;
                mesh.dialer.finish(&job, peer);
            });
        }
    }
}

/// Dials every candidate address in parallel; the first handshake wins. Returns the peer's id.
async fn dial(mesh: &Arc<Mesh>, addresses: &[String]) -> Option<Arc<str>> {
    let own = mesh.dialer.own_addresses();
    let mut candidates = Vec::new();
    for address in addresses {
        match tokio::net::lookup_host(address.as_str()).await {
            Ok(found) => candidates.extend(found.filter(|a| !own.contains(a))),
            Err(err) => tracing::debug!(%address, %err, "cannot resolve"),
        }
    }
    candidates.sort();
    candidates.dedup();
    if candidates.is_empty() {
        return None;
    }
    let attempts = candidates
        .into_iter()
        .map(|addr| connect(mesh, addr).boxed());
    let conn = futures_util::future::select_ok(attempts).await.ok()?.0;
    let (named, name) = oneshot::channel();
    let driver = mesh.clone();
    tokio::spawn(async move { driver.run_connection(conn, true, Some(named)).await });
    name.await.ok().flatten()
}

async fn connect(mesh: &Arc<Mesh>, addr: SocketAddr) -> Result<quinn::Connection, ()> {
    let connecting = mesh
        .endpoint
        .connect_with(mesh.client_config.clone(), addr, CLUSTER_SERVER_NAME)
        .map_err(|err| tracing::debug!(%addr, %err, "cannot dial"))?;
    match tokio::time::timeout(mesh.config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => {
            mesh.handshake_failed(&addr.to_string(), &err);
            Err(())
        }
        Err(_) => {
            tracing::debug!(%addr, "dial timed out");
            Err(())
        }
    }
}
