//! Liveness: when a node counts as gone. Links report their loss, buses their outages; every
//! node sends heartbeats (with its load) and declares peers silent for longer than the lease
//! down. A node that goes down leaves the registry and its waiting calls fail at once.

use super::Broker;
use crate::error::{Error, ErrorKind};
use crate::protocol::packet::{Heartbeat, Packet, PacketBody};
use crate::transport::LinkKind;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::time::Instant;

impl Broker {
    /// A bus went down or came back. Down: calls waiting on its nodes fail now with a transport
    /// error, and its nodes' leases are frozen (the bus, not the nodes, failed). Up: its nodes
    /// are forgotten until they answer our immediate re-announcement — a bus loses messages to
    /// peers that have not resubscribed yet, so a call must not be sent to them blindly.
    pub(super) fn bus_state(&self, link: LinkKind, up: bool) {
        let nodes: Vec<Arc<str>> = {
            let mut registry = self.inner.registry_mut();
            registry.set_bus_down(link, !up);
            registry
                .nodes()
                .filter(|(_, n)| n.available && n.link == link)
                .map(|(id, _)| id.clone())
                .collect()
        };
        if up {
            tracing::info!(%link, "bus reconnected: announcing");
            for node in &nodes {
                self.node_lost(node, "was unreachable while the bus was down");
            }
            let broker = self.clone();
            tokio::spawn(async move { broker.discover_all().await });
        } else {
            tracing::warn!(%link, "bus connection lost");
            for node in &nodes {
                self.fail_pending_with(
                    node,
                    crate::Error::transport(format!(
                        "{link} transport unavailable: connection lost"
                    )),
                );
            }
        }
    }

    /// Declares `node_id` down: endpoints leave the registry, waiting calls fail at once.
    pub(crate) fn node_lost(&self, node_id: &str, reason: &str) {
        let was_available = self.inner.registry_mut().node_down(node_id);
        self.fail_pending(node_id, reason);
        let lost = Error::new(
            ErrorKind::OutcomeUnknown,
            format!("node '{node_id}' {reason} while a stream with it was open"),
        );
        self.inner.streams.peer_lost(node_id, &lost);
        for transport in &self.inner.transports {
            transport.drop_peer(node_id);
        }
        if was_available {
            tracing::info!(peer = %node_id, reason, "node disconnected");
            self.internal_event("$node.disconnected", node_id);
        }
    }
}

impl Broker {
    /// Forgets the nodes down for longer than the limit allows: registry entry, dial target,
    /// per-peer metrics.
    fn forget_long_gone(&self) {
        let forget_after = self.inner.limits.forget_down_nodes_after;
        let Some(cutoff) = Instant::now().checked_sub(forget_after) else {
            return;
        };
        let gone = self.inner.registry_mut().prune_down(cutoff);
        for node_id in gone {
            tracing::debug!(peer = %node_id, "forgetting a node down for {forget_after:?}");
            for transport in &self.inner.transports {
                transport.forget_peer(&node_id);
            }
            self.inner.metrics.forget_peer(&node_id);
        }
    }
}

/// Sends heartbeats every interval and declares nodes silent for longer than the lease down.
pub(crate) fn spawn_heartbeat(broker: &Broker) {
    let weak = Arc::downgrade(&broker.inner);
    let timings = broker.inner.timings.clone();
    let check_every = timings
        .heartbeat_interval
        .min(timings.heartbeat_timeout / 4)
        .max(std::time::Duration::from_millis(10));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        let mut cpu = CpuSampler::default();
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let broker = Broker { inner };
            if last_beat.elapsed() >= timings.heartbeat_interval {
                last_beat = Instant::now();
                broker.inner.metrics.in_flight(broker.in_flight());
                let beat = Packet::new(
                    broker.inner.node_id.clone(),
                    PacketBody::Heartbeat(Heartbeat {
                        seq: broker.inner.info_seq.load(Ordering::Acquire),
                        cpu: cpu.sample(),
                        in_flight: broker.in_flight() as u32,
                    }),
                );
                // Not awaited here: a peer that stopped reading must not delay the lease checks
                // (or the heartbeats to everyone else).
                let sender = broker.clone();
                tokio::spawn(async move {
                    for transport in &sender.inner.transports {
                        if let Err(err) = transport.broadcast(&beat).await {
                            tracing::debug!(%err, "heartbeat not sent");
                        }
                    }
                });
            }
            let Some(cutoff) = Instant::now().checked_sub(timings.heartbeat_timeout) else {
                continue;
            };
            let expired = broker.inner.registry().expired(cutoff);
            for node_id in expired {
                broker.node_lost(&node_id, "missed its heartbeats");
            }
            broker.forget_long_gone();
        }
    });
    broker
        .inner
        .background
        .lock()
        .expect("tasks lock")
        .push(task);
}

/// This host's CPU usage between two samples, from `/proc/stat` (`None` elsewhere or on the
/// first sample).
#[derive(Default)]
struct CpuSampler {
    last: Option<(u64, u64)>,
}

impl CpuSampler {
    /// Percent busy (0–100) since the previous call.
    fn sample(&mut self) -> Option<f32> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // idle + iowait
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        let last = self.last.replace((total, idle))?;
        busy_percent(last, (total, idle))
    }
}

/// Percent busy between two (total, idle) readings of the CPU counters. Counters only grow, but
/// a reset or a garbled read must give "unknown", never an underflow.
fn busy_percent((last_total, last_idle): (u64, u64), (total, idle): (u64, u64)) -> Option<f32> {
    let elapsed = total.checked_sub(last_total).filter(|e| *e > 0)?;
    let idled = idle.checked_sub(last_idle)?.min(elapsed);
    Some(100.0 * (elapsed - idled) as f32 / elapsed as f32)
}

#[cfg(test)]
mod tests {
    use super::busy_percent;

    #[test]
    fn busy_share_of_the_elapsed_ticks() {
        assert_eq!(busy_percent((100, 50), (200, 125)), Some(25.0));
        assert_eq!(busy_percent((100, 50), (200, 50)), Some(100.0));
    }

    #[test]
    fn counters_that_went_backwards_or_stood_still_are_unknown() {
        assert_eq!(busy_percent((200, 50), (100, 60)), None);
        assert_eq!(busy_percent((200, 50), (200, 50)), None);
        assert_eq!(busy_percent((100, 90), (200, 10)), None);
    }
}
