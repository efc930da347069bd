//! Pub/sub: emit (one handler per listening group), broadcast (every listener everywhere) and
//! local broadcast, with `*` / `**` wildcards in subscriptions.

use super::{Broker, InFlight};
use crate::context::{Context, Lineage};
use crate::error::Result;
use crate::middleware::Stack;
use crate::middleware::{EmitKind, HookKind, LocalEvent, OutgoingEvent, hooks};
use crate::payload::{Payload, encode_value};
use crate::protocol::packet::{ContentType, Event, EventInfo, Packet, PacketBody};
use crate::registry::LocalListeners;
use bytes::Bytes;
use futures_util::FutureExt;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

impl Broker {
    /// Emits `event`: in every group that listens, exactly one handler runs (balanced across the
    /// group's nodes, this node preferred; over Kafka, the group's consumer group picks the
    /// member).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    /// broker.service("mailer")
    ///     .event("user.created", move |_ctx, name: String| {
    ///         let tx = tx.clone();
    ///         async move { tx.send(name).await.ok(); Ok(()) }
    ///     })
    ///     .start().await?;
    /// broker.emit("user.created", "ada").await?;
    /// assert_eq!(rx.recv().await.as_deref(), Some("ada"));
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        self.emit_in(event, data, EmitKind::Emit).await
    }

    /// Broadcasts `event` to every listening service on every node.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        self.emit_in(event, data, EmitKind::Broadcast).await
    }

    /// Broadcasts `event` to the listening services of this node only.
    pub async fn broadcast_local<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<()> {
        self.emit_in(event, data, EmitKind::BroadcastLocal).await
    }

    /// Raises an event of the framework's own (`$node.*`, `$services.changed`,
    /// `$circuit-breaker.*`) on this node's listeners right away, outside the emit middleware.
    pub(crate) fn raise_local(&self, event: &str, data: Bytes) {
        let listeners = self.inner.registry().local_listeners(event, None);
        let lineage = Lineage::root(self.next_id());
        self.dispatch_local(listeners, event, data, ContentType::MsgPack, &lineage, None);
    }

    async fn emit_in<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        kind: EmitKind,
    ) -> Result<()> {
        let (data, content_type) = encode_value(data, ContentType::MsgPack)?;
        self.emit_encoded(event, data, content_type, kind, None)
            .await
    }

    /// Emits MessagePack `data` through the emit middleware.
    pub(crate) async fn emit_encoded(
        &self,
        event: &str,
        data: Bytes,
        content_type: ContentType,
        kind: EmitKind,
        parent: Option<&Context>,
    ) -> Result<()> {
        let emit = OutgoingEvent {
            event,
            kind,
            data,
            content_type,
            parent,
        };
        let stack = &self.inner.middleware;
        if stack.is_empty(HookKind::Emit) {
            return self.deliver(emit).await;
        }
        let end = |emit| self.deliver(emit).boxed();
        stack
            .next(HookKind::Emit, hooks::emit(), &end)
            .run(emit)
            .await
    }

    /// Hands an event to this node's listeners and to the nodes that should get it.
    async fn deliver(&self, emit: OutgoingEvent<'_>) -> Result<()> {
        let OutgoingEvent {
            event,
            kind,
            data,
            content_type,
            parent,
        } = emit;
        let (local, remote) = {
            let registry = self.inner.registry();
            match kind {
                EmitKind::BroadcastLocal => (registry.local_listeners(event, None), Vec::new()),
                EmitKind::Broadcast => {
                    let nodes = registry.broadcast_targets(event);
                    let remote = nodes.into_iter().map(|n| (n, None)).collect::<Vec<_>>();
                    (registry.local_listeners(event, None), remote)
                }
                EmitKind::Emit => {
                    let (local, remote) = registry.emit_targets(event);
                    let remote = remote.into_iter().map(|(n, g)| (n, Some(g))).collect();
                    (local, remote)
                }
            }
        };
        let lineage = Lineage::new(parent, self.next_id());
        let local_data = data.clone();
        self.dispatch_local(local, event, local_data, content_type, &lineage, None);
        let packet_for = |groups: Option<Vec<String>>| {
            let mut sent = Event {
                id: self.next_id(),
                event: event.to_owned(),
                data: data.clone(),
                content_type,
                groups,
                broadcast: kind == EmitKind::Broadcast,
                ..Event::default()
            };
            lineage.stamp_event(&mut sent);
            Packet::new(self.inner.node_id.clone(), PacketBody::Event(sent))
        };
        for (node_id, groups) in remote {
            let transport = match self.transport_for(&node_id) {
                Ok((transport, _)) => transport,
                Err(err) => {
                    tracing::warn!(%event, peer = %node_id, %err, "event not delivered");
                    continue;
                }
            };
            let groups = match groups {
                // A bus that balances groups itself takes each group's event; if it cannot, the
                // node picked for the group gets it.
                Some(groups) if transport.balances_events() => {
                    let mut unsent = Vec::new();
                    for group in groups {
                        let pattern = self
                            .inner
                            .registry()
                            .listening_pattern(&node_id, &group, event);
                        let listening = EventInfo {
                            name: pattern.unwrap_or_default(),
                            group,
                        };
                        let packet = packet_for(Some(vec![listening.group.clone()]));
                        if let Err(err) = transport.emit_balanced(&listening, &packet).await {
                            tracing::debug!(%event, group = %listening.group, %err, "balanced emit failed: sending to the picked node");
                            unsent.push(listening.group);
                        }
                    }
                    if unsent.is_empty() {
                        continue;
                    }
                    Some(unsent)
                }
                groups => groups,
            };
            if let Err(err) = transport.send(&node_id, &packet_for(groups)).await {
                tracing::warn!(%event, peer = %node_id, %err, "event not delivered");
            }
        }
        Ok(())
    }

    /// Runs this node's handlers for an EVENT from a peer.
    pub(crate) fn serve_event(
        &self,
        sender: Arc<str>,
        mut event: Event,
        handling: Option<Arc<std::sync::atomic::AtomicUsize>>,
    ) {
        if self.inner.is_stopped() {
            return;
        }
        let listeners = self
            .inner
            .registry()
            .local_listeners(&event.event, event.groups.as_deref());
        let lineage = Lineage::of_event(&mut event);
        self.dispatch_local(
            listeners,
            &event.event,
            event.data,
            event.content_type,
            &lineage,
            Some(Origin { sender, handling }),
        );
    }

    /// Starts each handler as its own task: events are fire-and-forget, and one slow listener
    /// must not hold up the others.
    fn dispatch_local(
        &self,
        listeners: LocalListeners<Stack>,
        event: &str,
        data: Bytes,
        content_type: ContentType,
        lineage: &Lineage,
        origin: Option<Origin>,
    ) {
        let (sender, handling) = match origin {
            Some(Origin { sender, handling }) => (Some(sender), handling),
            None => (None, None),
        };
        let started = Instant::now();
        let mut event_name: Option<Arc<str>> = None;
        for listener in listeners {
            let permit = handling.clone().map(super::dispatch::PeerPermit::take);
            let mut ctx = Context::new(
                self.dispatch(),
                self.next_id(),
                lineage.clone(),
                None,
                started,
            );
            ctx.node_id = sender.clone();
            ctx.service = Some(listener.service.clone());
            ctx.event = Some(event_name.get_or_insert_with(|| Arc::from(event)).clone());
            let payload = Payload::encoded(data.clone(), content_type);
            let event = event.to_owned();
            let broker = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _running = InFlight::enter(&broker);
                let call = LocalEvent {
                    event: &event,
                    service: &listener.service,
                    ctx,
                    data: payload,
                };
                let handler = |e: LocalEvent<'_>| (listener.handler)(e.ctx, e.data);
                let service_layers = |e| {
                    listener
                        .layers
                        .next(HookKind::Event, hooks::event(), &handler)
                        .run(e)
                };
                let result = broker
                    .inner
                    .middleware
                    .next(HookKind::Event, hooks::event(), &service_layers)
                    .run(call);
                if let Err(err) = AssertUnwindSafe(result)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::Error::new(
                            crate::ErrorKind::HandlerPanic,
                            "event handler panicked",
                        ))
                    })
                {
                    tracing::warn!(%event, service = %listener.service, %err, "event handler failed");
                }
            });
        }
    }
}

/// Where a received event came from: its sender, and the count of that sender's events being
/// handled here (each listener's task holds a permit on it).
struct Origin {
    sender: Arc<str>,
    handling: Option<Arc<std::sync::atomic::AtomicUsize>>,
}
