//! What arrives from the transports: packets, links coming up and going down, and the heartbeat
//! lease that declares silent nodes down.

use super::{Broker, BrokerInner};
use crate::packet::{Discover, Heartbeat, Info, PROTOCOL_VERSION, Packet, PacketBody, Pong};
use crate::payload::encode_msgpack;
use crate::registry::NodeChange;
use crate::transport::{LinkKind, TransportHandler};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The broker as the transports see it. Holds the broker weakly: transports must not keep a
/// stopped broker alive.
struct Inbound(Weak<BrokerInner>);

pub(crate) fn handler(broker: &Broker) -> Arc<dyn TransportHandler> {
    Arc::new(Inbound(Arc::downgrade(&broker.inner)))
}

impl Inbound {
    fn broker(&self) -> Option<Broker> {
        self.0.upgrade().map(|inner| Broker { inner })
    }
}

impl TransportHandler for Inbound {
    fn on_packet(&self, packet: Packet, link: LinkKind) {
        if let Some(broker) = self.broker() {
            broker.handle_packet(packet, link);
        }
    }

    fn on_link_up(&self, node_id: &str, link: LinkKind) {
        let Some(broker) = self.broker() else { return };
        tracing::debug!(peer = %node_id, %link, "link up");
        let info = Packet::new(
            broker.inner.node_id.clone(),
            PacketBody::Info(broker.info()),
        );
        broker.send_control(node_id.into(), link, info);
    }

    fn on_link_down(&self, node_id: &str, link: LinkKind) {
        let Some(broker) = self.broker() else { return };
        tracing::debug!(peer = %node_id, %link, "link down");
        broker.node_lost(node_id, "lost its link");
    }

    fn hello(&self) -> Packet {
        match self.broker() {
            Some(broker) => Packet::new(
                broker.inner.node_id.clone(),
                PacketBody::Info(broker.info()),
            ),
            None => Packet::new("stopped", PacketBody::Disconnect(Default::default())),
        }
    }

    fn on_bus(&self, link: LinkKind, up: bool) {
        let Some(broker) = self.broker() else { return };
        broker.bus_state(link, up);
    }
}

impl Broker {
    fn handle_packet(&self, packet: Packet, link: LinkKind) {
        let sender = packet.sender;
        if sender == self.inner.node_id {
            return;
        }
        match packet.body {
            PacketBody::Discover(_) => {
                let info = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
                self.send_control(sender, link, info);
            }
            PacketBody::Info(info) => self.apply_info(sender, info, link),
            PacketBody::Heartbeat(beat) => {
                let known =
                    self.inner
                        .registry_mut()
                        .record_load(&sender, beat.in_flight, beat.cpu);
                if known.is_none_or(|seq| seq < beat.seq) {
                    let discover = Packet::new(
                        self.inner.node_id.clone(),
                        PacketBody::Discover(Discover {}),
                    );
                    self.send_control(sender, link, discover);
                }
            }
            PacketBody::Request(request) => {
                let serving = self.inner.registry().serving(&sender);
                if let Some(serving) = &serving
                    && serving.load(Ordering::Relaxed) >= self.inner.max_peer_in_flight
                {
                    // A flooding peer is answered at once instead of growing our task count.
                    let busy = crate::Error::new(
                        crate::ErrorKind::QueueFull,
                        format!(
                            "node '{}' has too many requests in flight from '{sender}'",
                            self.inner.node_id
                        ),
                    )
                    .with_node(&self.inner.node_id);
                    let response = crate::packet::Response {
                        id: request.id,
                        error: Some(busy.body().clone()),
                        ..Default::default()
                    };
                    let packet =
                        Packet::new(self.inner.node_id.clone(), PacketBody::Response(response));
                    self.send_control(sender, link, packet);
                    return;
                }
                let permit = serving.map(PeerPermit::take);
                let broker = self.clone();
                run_inline_then_spawn(async move {
                    broker.serve_request(sender, request, link).await;
                    drop(permit);
                });
            }
            PacketBody::Response(response) => self.complete(&sender, response),
            PacketBody::Event(event) => {
                if self.inner.registry().touch(&sender).is_some() {
                    self.serve_event(sender, event);
                } else {
                    // Like a request, an event can overtake its sender's INFO.
                    let broker = self.clone();
                    tokio::spawn(async move {
                        match broker.await_member(&sender).await {
                            Ok(()) => broker.serve_event(sender, event),
                            Err(err) => {
                                tracing::debug!(peer = %sender, event = %event.event, %err, "event dropped")
                            }
                        }
                    });
                }
            }
            PacketBody::Ping(ping) => {
                let pong = Packet::new(
                    self.inner.node_id.clone(),
                    PacketBody::Pong(Pong {
                        id: ping.id,
                        time_us: ping.time_us,
                        arrived_us: unix_micros(),
                    }),
                );
                self.send_control(sender, link, pong);
            }
            PacketBody::Pong(_) => {}
            PacketBody::Disconnect(_) => self.node_lost(&sender, "disconnected"),
            PacketBody::StreamChunk(_) | PacketBody::StreamEnd(_) | PacketBody::StreamError(_) => {
                tracing::debug!(peer = %sender, "stream packets are not supported yet; dropped");
            }
        }
    }

    fn apply_info(&self, sender: Arc<str>, info: Info, link: LinkKind) {
        if info.namespace != *self.inner.namespace {
            tracing::debug!(peer = %sender, namespace = %info.namespace, "ignoring a node of another namespace");
            return;
        }
        if info.protocol_version != PROTOCOL_VERSION {
            tracing::warn!(peer = %sender, version = info.protocol_version, "ignoring a node speaking another protocol version");
            return;
        }
        for transport in &self.inner.transports {
            transport.learn_peer(&sender, &info.addresses);
            for peer in &info.peers {
                if *peer.node_id != *self.inner.node_id {
                    transport.learn_peer(&peer.node_id, &peer.addresses);
                }
            }
        }
        let services = info.services.len();
        let change = self.inner.registry_mut().apply_info(&sender, info, link);
        match change {
            NodeChange::Joined => {
                tracing::info!(peer = %sender, %link, services, "node connected");
                self.internal_event("$node.connected", &sender);
                self.gossip();
            }
            NodeChange::Updated => self.internal_event("$services.changed", &sender),
            NodeChange::Unchanged => {}
        }
    }

    /// A bus went down or came back. Down: calls waiting on its nodes fail now with a transport
    /// error, and its nodes' leases are frozen (the bus, not the nodes, failed). Up: its nodes
    /// are forgotten until they answer our immediate re-announcement — a bus loses messages to
    /// peers that have not resubscribed yet, so a call must not be sent to them blindly.
    fn bus_state(&self, link: LinkKind, up: bool) {
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

    /// Passes on the peers we know (our INFO, same seq) so a newcomer and the rest of the mesh
    /// find each other even when they joined through different seeds.
    fn gossip(&self) {
        let info = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
        let broker = self.clone();
        tokio::spawn(async move {
            for transport in &broker.inner.transports {
                if let Err(err) = transport.broadcast(&info).await {
                    tracing::debug!(%err, "gossip not sent");
                }
            }
        });
    }

    /// Declares `node_id` down: endpoints leave the registry, waiting calls fail at once.
    pub(crate) fn node_lost(&self, node_id: &str, reason: &str) {
        let was_available = self.inner.registry_mut().node_down(node_id);
        self.fail_pending(node_id, reason);
        for transport in &self.inner.transports {
            transport.drop_peer(node_id);
        }
        if was_available {
            tracing::info!(peer = %node_id, reason, "node disconnected");
            self.internal_event("$node.disconnected", node_id);
        }
    }

    fn internal_event(&self, event: &str, node_id: &str) {
        self.inner.registry_changed.notify_waiters();
        self.report_registry_sizes();
        let data = match encode_msgpack(&serde_json::json!({ "node": node_id })) {
            Ok(data) => data,
            Err(err) => return tracing::warn!(%event, %err, "internal event failed"),
        };
        self.raise_local(event, data.clone());
        if event != "$services.changed" {
            self.raise_local("$services.changed", data);
        }
    }

    /// Sends a control packet without holding up the transport's reader.
    ///
    /// Written inline when the transport takes it at once (the usual case), so an `INFO` reply
    /// leaves before any call this node makes next — a peer must know us before our requests
    /// reach it; spawned only if the write has to wait.
    fn send_control(&self, node_id: Arc<str>, link: LinkKind, packet: Packet) {
        let Some(transport) = self.transport_of(link) else {
            return;
        };
        run_inline_then_spawn(async move {
            if let Err(err) = transport.send(&node_id, &packet).await {
                tracing::debug!(peer = %node_id, %err, "control packet not sent");
            }
        });
    }

    /// Asks one node for its INFO.
    pub(crate) fn discover(&self, node_id: &Arc<str>) {
        let link = self.inner.registry().node(node_id).map(|n| n.link);
        let discover = Packet::new(
            self.inner.node_id.clone(),
            PacketBody::Discover(Discover {}),
        );
        for transport in &self.inner.transports {
            if link.is_none_or(|l| l == transport.kind()) {
                let (transport, node_id, discover) =
                    (transport.clone(), node_id.clone(), discover.clone());
                tokio::spawn(async move {
                    if let Err(err) = transport.send(&node_id, &discover).await {
                        tracing::debug!(peer = %node_id, %err, "DISCOVER not sent");
                    }
                });
            }
        }
    }

    /// Announces our INFO and asks every reachable node for theirs — in that order, so a peer
    /// has met us before its reply lets us call it.
    pub(crate) async fn discover_all(&self) {
        let discover = Packet::new(
            self.inner.node_id.clone(),
            PacketBody::Discover(Discover {}),
        );
        let info = Packet::new(self.inner.node_id.clone(), PacketBody::Info(self.info()));
        for transport in &self.inner.transports {
            for packet in [&info, &discover] {
                if let Err(err) = transport.broadcast(packet).await {
                    tracing::debug!(%err, "discovery broadcast failed");
                }
            }
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
        }
    });
    broker
        .inner
        .background
        .lock()
        .expect("tasks lock")
        .push(task);
}

/// One request from a peer being served; counted against that peer's limit.
struct PeerPermit(Arc<std::sync::atomic::AtomicUsize>);

impl PeerPermit {
    fn take(count: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Polls `work` once right here, on the transport's reader; only if it is not done at once is it
/// spawned as a task. A handler that answers immediately then writes its response from the
/// reader, where it batches with its neighbours, instead of paying a task hop per request.
///
/// The first poll uses a no-op waker; the spawned task polls again with its real one, which is
/// what every future must honour (wakers may change between polls).
fn run_inline_then_spawn(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(work);
    }
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
        let (last_total, last_idle) = self.last.replace((total, idle))?;
        let busy = (total - last_total).saturating_sub(idle - last_idle);
        (total > last_total).then(|| 100.0 * busy as f32 / (total - last_total) as f32)
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
