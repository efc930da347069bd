//! The QUIC dial loop: dials what the [`DialPlan`](crate::discovery::DialPlan) says is due,
//! every candidate address in parallel.

use super::Mesh;
use crate::identity::CLUSTER_SERVER_NAME;
use crate::limits::Limit;
use futures_util::FutureExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

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
