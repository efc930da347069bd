//! In-process transport: several brokers in one process, linked through a shared bus.
//!
//! Every packet is encoded into a frame, passed through a bounded channel and decoded on the other
//! side — the same packets, codec and registry code the network transports use — so tests of
//! multi-node behaviour exercise the real protocol without sockets. [`InProcBus::sever`] cuts a
//! node off without a `DISCONNECT`, the way a crash looks to its peers.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, transport::InProcBus};
//!
//! let bus = InProcBus::new();
//! let a = Broker::builder().node_id("a").transport(bus.transport()).start().await?;
//! let b = Broker::builder().node_id("b").transport(bus.transport()).start().await?;
//! b.service("math")
//!     .action("add", |_ctx, (x, y): (i64, i64)| async move { Ok(x + y) })
//!     .start()
//!     .await?;
//! a.wait_for_services(&["math"], std::time::Duration::from_secs(1)).await?;
//! assert_eq!(a.call::<i64>("math.add", (2, 3)).await?, 5);
//! # a.stop().await; b.stop().await;
//! # Ok(()) }
//! ```

use super::{Direction, LinkKind, TransportContext, Transporter};
use crate::error::{Error, Result};
use crate::protocol::packet::Packet;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Frames buffered per member before senders wait.
const MEMBER_QUEUE: usize = 1024;

/// A shared bus that in-process transports join.
#[derive(Debug, Clone, Default)]
pub struct InProcBus {
    members: Arc<Mutex<HashMap<Arc<str>, Member>>>,
}

#[derive(Clone)]
struct Member {
    frames: mpsc::Sender<Bytes>,
    ctx: TransportContext,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("ctx", &self.ctx).finish()
    }
}

impl InProcBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport that joins this bus when its broker starts.
    pub fn transport(&self) -> InProcTransport {
        InProcTransport {
            bus: self.clone(),
            joined: Mutex::new(None),
        }
    }

    /// Cuts `node_id` off the bus without a `DISCONNECT`, as a crash would: its peers see the link
    /// drop, and it sees every link drop.
    pub fn sever(&self, node_id: &str) {
        let (gone, rest) = {
            let mut members = self.members.lock().expect("bus lock");
            let Some(gone) = members.remove(node_id) else {
                return;
            };
            (gone, members.values().cloned().collect::<Vec<_>>())
        };
        for peer in rest {
            peer.ctx.handler.on_link_down(node_id, LinkKind::InProc);
            gone.ctx
                .handler
                .on_link_down(&peer.ctx.node_id, LinkKind::InProc);
        }
    }

    fn member(&self, node_id: &str) -> Option<Member> {
        self.members.lock().expect("bus lock").get(node_id).cloned()
    }
}

/// One broker's membership of an [`InProcBus`].
#[derive(Debug)]
pub struct InProcTransport {
    bus: InProcBus,
    joined: Mutex<Option<Joined>>,
}

#[derive(Debug)]
struct Joined {
    ctx: TransportContext,
    reader: JoinHandle<()>,
}

impl InProcTransport {
    fn ctx(&self) -> Result<TransportContext> {
        self.joined
            .lock()
            .expect("transport lock")
            .as_ref()
            .map(|j| j.ctx.clone())
            .ok_or_else(|| Error::transport("in-process transport is not started"))
    }
}

impl Transporter for InProcTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::InProc
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            let (tx, mut rx) = mpsc::channel::<Bytes>(MEMBER_QUEUE);
            let reader_ctx = ctx.clone();
            let reader = tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    let len = frame.len();
                    match reader_ctx.codec.decode_whole(frame) {
                        Ok(packet) => {
                            reader_ctx.traffic.record(
                                &packet.sender,
                                LinkKind::InProc,
                                Direction::Received,
                                len,
                            );
                            reader_ctx.handler.on_packet(packet, LinkKind::InProc)
                        }
                        Err(err) => tracing::warn!(%err, "dropping malformed in-process frame"),
                    }
                }
            });
            let peers: Vec<Member> = {
                let mut members = self.bus.members.lock().expect("bus lock");
                if members.contains_key(&ctx.node_id) {
                    reader.abort();
                    return Err(Error::transport(format!(
                        "node id '{}' is already on this bus",
                        ctx.node_id
                    )));
                }
                let peers = members.values().cloned().collect();
                members.insert(
                    ctx.node_id.clone(),
                    Member {
                        frames: tx,
                        ctx: ctx.clone(),
                    },
                );
                peers
            };
            *self.joined.lock().expect("transport lock") = Some(Joined {
                ctx: ctx.clone(),
                reader,
            });
            let own_frames = self.bus.member(&ctx.node_id).map(|m| m.frames);
            for peer in peers {
                // Each side's INFO goes first into the other's queue, ahead of anything it sends
                // later, so a peer is always known before its requests arrive.
                if let (Ok(ours), Ok(theirs)) = (
                    ctx.codec.encode(&ctx.handler.hello()),
                    peer.ctx.codec.encode(&peer.ctx.handler.hello()),
                ) {
                    let _ = peer.frames.try_send(ours);
                    if let Some(own) = &own_frames {
                        let _ = own.try_send(theirs);
                    }
                }
                peer.ctx.handler.on_link_up(&ctx.node_id, LinkKind::InProc);
                ctx.handler.on_link_up(&peer.ctx.node_id, LinkKind::InProc);
            }
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let ctx = self.ctx()?;
            let frame = ctx.codec.encode(packet)?;
            let member = self
                .bus
                .member(node_id)
                .ok_or_else(|| Error::transport(format!("no link to node '{node_id}'")))?;
            ctx.traffic
                .record(node_id, LinkKind::InProc, Direction::Sent, frame.len());
            member
                .frames
                .send(frame)
                .await
                .map_err(|_| Error::transport(format!("link to node '{node_id}' closed")))
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let ctx = self.ctx()?;
            let frame = ctx.codec.encode(packet)?;
            let peers: Vec<(Arc<str>, Member)> = {
                let members = self.bus.members.lock().expect("bus lock");
                members
                    .iter()
                    .filter(|(id, _)| **id != ctx.node_id)
                    .map(|(id, m)| (id.clone(), m.clone()))
                    .collect()
            };
            for (id, peer) in peers {
                ctx.traffic
                    .record(&id, LinkKind::InProc, Direction::Sent, frame.len());
                // A peer leaving meanwhile is not an error for a broadcast.
                let _ = peer.frames.send(frame.clone()).await;
            }
            Ok(())
        }
        .boxed()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            let joined = self.joined.lock().expect("transport lock").take();
            if let Some(joined) = joined {
                self.bus.sever(&joined.ctx.node_id);
                joined.reader.abort();
            }
        }
        .boxed()
    }
}
