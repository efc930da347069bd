//! Pub/sub: emit (one handler per listening group), broadcast (every listener everywhere) and
//! local broadcast, with `*` / `**` wildcards in subscriptions.

use super::{Broker, InFlight};
use crate::context::Context;
use crate::error::Result;
use crate::middleware::{Emit, EmitKind, HookKind, LocalEvent, hooks};
use crate::packet::{ContentType, Event, Packet, PacketBody};
use crate::payload::{Payload, encode_msgpack};
use crate::registry::LocalListeners;
use bytes::Bytes;
use futures_util::FutureExt;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::time::Instant;

/// Who raised an event, for the handlers' contexts.
struct Origin {
    request_id: u64,
    parent_id: Option<u64>,
    caller: Option<Arc<str>>,
    node_id: Option<Arc<str>>,
    level: u32,
    meta: Option<Arc<crate::packet::Meta>>,
    headers: Option<Arc<crate::packet::Headers>>,
}

impl Broker {
    /// Emits `event`: in every group that listens, exactly one handler runs (balanced across the
    /// group's nodes, this node preferred).
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
        self.emit_in(event, data, EmitKind::Emit, None).await
    }

    /// Broadcasts `event` to every listening service on every node.
    pub async fn broadcast<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<()> {
        self.emit_in(event, data, EmitKind::Broadcast, None).await
    }

    /// Broadcasts `event` to the listening services of this node only.
    pub async fn broadcast_local<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<()> {
        self.emit_in(event, data, EmitKind::BroadcastLocal, None)
            .await
    }

    /// Broadcasts a broker event (`$node.*`, `$services.changed`) on this node right away,
    /// outside the emit middleware.
    pub(crate) fn broadcast_local_now<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<()> {
        let data = encode_msgpack(data)?;
        let listeners = self.inner.registry().local_listeners(event, None);
        let origin = self.origin(None);
        self.dispatch_local(listeners, event, data, ContentType::MsgPack, &origin);
        Ok(())
    }

    pub(crate) async fn emit_in<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        kind: EmitKind,
        parent: Option<&Context>,
    ) -> Result<()> {
        let emit = Emit {
            event,
            kind,
            data: encode_msgpack(data)?,
            parent,
            broker: self,
        };
        let stack = &self.inner.middleware;
        if stack.is_empty(HookKind::Emit) {
            return self.deliver(emit).await;
        }
        let end = |emit| self.deliver(emit).boxed();
        stack
            .next(HookKind::Emit, hooks::emit, &end)
            .run(emit)
            .await
    }

    /// Hands an event to this node's listeners and to the nodes that should get it.
    async fn deliver(&self, emit: Emit<'_>) -> Result<()> {
        let Emit {
            event,
            kind,
            data,
            parent,
            ..
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
        let origin = self.origin(parent);
        self.dispatch_local(local, event, data.clone(), ContentType::MsgPack, &origin);
        for (node_id, groups) in remote {
            let packet = Packet::new(
                self.inner.node_id.clone(),
                PacketBody::Event(Event {
                    id: self.next_id(),
                    event: event.to_owned(),
                    data: data.clone(),
                    content_type: ContentType::MsgPack,
                    groups,
                    broadcast: kind == EmitKind::Broadcast,
                    meta: origin.meta.as_deref().cloned(),
                    headers: origin.headers.as_deref().cloned(),
                    level: origin.level,
                    request_id: origin.request_id,
                    caller: origin.caller.as_deref().map(str::to_owned),
                }),
            );
            let sent = match self.transport_for(&node_id) {
                Ok((transport, _)) => transport.send(&node_id, &packet).await,
                Err(err) => Err(err),
            };
            if let Err(err) = sent {
                tracing::warn!(%event, peer = %node_id, %err, "event not delivered");
            }
        }
        Ok(())
    }

    /// Runs this node's handlers for an EVENT from a peer.
    pub(crate) fn serve_event(&self, sender: Arc<str>, event: Event) {
        let listeners = self
            .inner
            .registry()
            .local_listeners(&event.event, event.groups.as_deref());
        let origin = Origin {
            request_id: event.request_id,
            parent_id: None,
            caller: event.caller.map(Into::into),
            node_id: Some(sender),
            level: event.level,
            meta: event.meta.map(Arc::new),
            headers: event.headers.map(Arc::new),
        };
        self.dispatch_local(
            listeners,
            &event.event,
            event.data,
            event.content_type,
            &origin,
        );
    }

    fn origin(&self, parent: Option<&Context>) -> Origin {
        match parent {
            Some(p) => Origin {
                request_id: p.request_id,
                parent_id: Some(p.id),
                caller: p.service.clone(),
                node_id: None,
                level: p.level + 1,
                meta: p.meta.clone(),
                headers: p.headers.clone(),
            },
            None => Origin {
                request_id: self.next_id(),
                parent_id: None,
                caller: None,
                node_id: None,
                level: 1,
                meta: None,
                headers: None,
            },
        }
    }

    /// Starts each handler as its own task: events are fire-and-forget, and one slow listener
    /// must not hold up the others.
    fn dispatch_local(
        &self,
        listeners: LocalListeners,
        event: &str,
        data: Bytes,
        content_type: ContentType,
        origin: &Origin,
    ) {
        let started = Instant::now();
        for listener in listeners {
            let ctx = Context {
                broker: self.clone(),
                id: self.next_id(),
                request_id: origin.request_id,
                parent_id: origin.parent_id,
                caller: origin.caller.clone(),
                service: Some(listener.service.clone()),
                node_id: origin.node_id.clone(),
                level: origin.level,
                meta: origin.meta.clone(),
                headers: origin.headers.clone(),
                deadline: None,
                started,
            };
            let payload = Payload::encoded(data.clone(), content_type);
            let event = event.to_owned();
            tokio::spawn(async move {
                let broker = ctx.broker.clone();
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
                        .middleware
                        .next(HookKind::Event, hooks::event, &handler)
                        .run(e)
                };
                let result = broker
                    .inner
                    .middleware
                    .next(HookKind::Event, hooks::event, &service_layers)
                    .run(call);
                if let Err(err) = AssertUnwindSafe(result)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        Err(crate::Error::new(
                            crate::ErrorKind::Internal,
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
