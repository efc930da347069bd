//! The mesh's dial loop: dials what the [`DialPlan`](crate::discovery::DialPlan) says is due,
//! every candidate address in parallel, QUIC first and TCP when QUIC gets no answer.

use super::{DialFailure, Mesh};
use crate::limits::Limit;
use std::sync::Arc;
use std::time::Duration;

/// How often the dial loop looks for due targets.
const TICK: Duration = Duration::from_millis(100);

/// The dial loop: every tick, dial whatever is due, each job in its own task.
pub(super) async fn run(mesh: Arc<Mesh>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        report_refusals(&mesh);
        for (job, addresses) in mesh.dialer.due(&mesh.ctx.node_id, |n| mesh.is_linked(n)) {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let peer = dial(&mesh, &addresses).await;
                mesh.dialer.finish(&job, peer);
            });
        }
    }
}

/// Hands what the dial plan refused since the last tick to the broker's limit counters.
fn report_refusals(mesh: &Mesh) {
    let refusals = &mesh.dialer.refusals;
    for (counter, limit, detail) in [
        (
            &refusals.hearsay,
            Limit::DialHearsay,
            "nodes heard of not dialed: too many only heard of",
        ),
        (
            &refusals.budget,
            Limit::DialBudget,
            "dials put off: handshake budget spent",
        ),
        (
            &refusals.mismatched,
            Limit::DialMismatch,
            "a dial reached another node than announced",
        ),
    ] {
        let n = counter.swap(0, std::sync::atomic::Ordering::Relaxed);
        if n > 0 {
            mesh.ctx.traffic.limit_hit(limit, n, detail);
        }
    }
}

/// Resolves the candidates and dials them: QUIC first, TCP if no candidate answered QUIC.
/// Returns the peer's id.
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
    if mesh.quic.is_some() {
        match mesh.dial_quic(&candidates).await {
            Ok(peer) => return peer,
            Err(DialFailure::Refused) => return None,
            Err(DialFailure::Silent) => {}
        }
    }
    if mesh.tcp.is_some() {
        if mesh.quic.is_some() {
            tracing::debug!(?candidates, "no QUIC answer: dialing TCP");
        }
        return mesh.dial_tcp(&candidates).await.ok().flatten();
    }
    None
}
