//! What arrives from the transports: each packet handed to the part of the broker that serves
//! it (requests and responses to calls, events to listeners, INFO and DISCOVER to membership,
//! heartbeats and DISCONNECT to liveness), and links coming up and going down.

use super::{Broker, BrokerInner};
use crate::limits::Limit;
use crate::protocol::packet::{Discover, Packet, PacketBody, Pong};
use crate::transport::{LinkKind, TransportHandler};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

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
            PacketBody::Request(mut request) => {
                let serving = self.inner.registry().serving(&sender);
                if let Some(serving) = &serving
                    && serving.load(Ordering::Relaxed) >= self.inner.limits.max_peer_in_flight
                {
                    // A flooding peer is answered at once instead of growing our task count.
                    self.inner.metrics.limit_hit(
                        Limit::PeerInFlight,
                        format_args!("requests from '{sender}' refused: too many in flight"),
                    );
                    let busy = crate::Error::new(
                        crate::ErrorKind::QueueFull,
                        format!(
                            "node '{}' has too many requests in flight from '{sender}'",
                            self.inner.node_id
                        ),
                    )
                    .with_node(&self.inner.node_id);
                    let response = crate::protocol::packet::Response {
                        id: request.id,
                        error: Some(Box::new(busy.body().clone())),
                        ..Default::default()
                    };
                    let packet =
                        Packet::new(self.inner.node_id.clone(), PacketBody::Response(response));
                    self.send_control(sender, link, packet);
                    return;
                }
                let permit = serving.map(PeerPermit::take);
                self.serve_request(sender, &mut request, link, permit);
            }
            PacketBody::Response(response) => self.complete(&sender, response),
            PacketBody::Event(event) => {
                let handling = self.inner.registry().handling_events(&sender);
                if let Some(handling) = handling {
                    if handling.load(Ordering::Relaxed)
                        >= self.inner.limits.max_peer_events_in_flight
                    {
                        self.inner.metrics.limit_hit(
                            Limit::PeerEventsInFlight,
                            format_args!("events from '{sender}' dropped: too many being handled"),
                        );
                        return;
                    }
                    self.serve_event(sender, event, Some(handling));
                } else {
                    // Like a request, an event can overtake its sender's INFO.
                    let broker = self.clone();
                    tokio::spawn(async move {
                        match broker.await_member(&sender).await {
                            Ok(()) => {
                                let handling = broker.inner.registry().handling_events(&sender);
                                broker.serve_event(sender, event, handling)
                            }
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
            PacketBody::Pong(pong) => self.on_pong(&sender, &pong),
            PacketBody::Disconnect(_) => self.node_lost(&sender, "disconnected"),
            body @ (PacketBody::StreamChunk(_)
            | PacketBody::StreamEnd(_)
            | PacketBody::StreamError(_)
            | PacketBody::StreamCredit(_)) => self.on_stream_packet(&sender, body),
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
        self.run_inline_then_spawn(async move {
            if let Err(err) = transport.send(&node_id, &packet).await {
                tracing::debug!(peer = %node_id, %err, "control packet not sent");
            }
        });
    }
}

/// One request (or event handler) of a peer running here; counted against that peer's limit.
pub(super) struct PeerPermit(Arc<std::sync::atomic::AtomicUsize>);

impl PeerPermit {
    pub(super) fn take(count: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Broker {
    /// Polls `work` once right here, on the transport's reader; only if it is not done at once
    /// is it spawned as a task. A handler that answers immediately then writes its response
    /// from the reader, where it batches with its neighbours, instead of paying a task hop per
    /// request.
    pub(super) fn run_inline_then_spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.finish_inline_or_spawn(Box::pin(work), |_, ()| {});
    }

    /// Polls `work` once right here and hands its output to `then`; work not done at once goes
    /// on in a task, which calls `then` when it is. Work that is `Unpin` needs no box for its
    /// first poll: an answer ready at once costs no allocation and no clone of the broker.
    ///
    /// The first poll uses a no-op waker; the spawned task polls again with its real one, which
    /// is what every future must honour (wakers may change between polls).
    pub(super) fn finish_inline_or_spawn<F>(
        &self,
        mut work: F,
        then: impl FnOnce(&Broker, F::Output) + Send + 'static,
    ) where
        F: Future + Unpin + Send + 'static,
    {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut work).poll(&mut cx) {
            Poll::Ready(output) => then(self, output),
            Poll::Pending => {
                let broker = self.clone();
                tokio::spawn(async move {
                    let output = work.await;
                    then(&broker, output);
                });
            }
        }
    }
}

pub(super) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
