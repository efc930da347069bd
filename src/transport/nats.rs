//! NATS transport (feature `nats`): the path for clusters that outgrow one LAN. A NATS cluster is
//! the distributed engine; this is a bus behind the [`Transporter`] trait.
//!
//! # Subjects
//! Under a prefix (default `PHX`) and the namespace (`_` when empty), so namespaces never see each
//! other's traffic:
//!
//! | subject | carries |
//! |---|---|
//! | `PHX.<ns>.bcast` | `DISCOVER`, `INFO`, `HEARTBEAT`, `DISCONNECT`, broadcasts |
//! | `PHX.<ns>.node.<node>` | requests, responses, events and replies addressed to one node |
//!
//! # Who may speak
//! A NATS server relays for anyone with rights on the subjects, so the frames travel in
//! envelopes (see `envelope.rs`) that bind each one to a member of the cluster: the same
//! [`ClusterCa`] as the mesh issues each node a certificate naming it, broadcasts are signed with
//! it, and messages to one node are encrypted and authenticated under a key only the two nodes
//! share (X25519 of per-start session keys), with replays refused. A client without the
//! cluster's credentials can read only the signed broadcasts (INFO, heartbeats, broadcast
//! events) and can neither forge, replay nor make a node keep state for it; a member cannot
//! speak for another node. A message that fails a check or does not decode is dropped and
//! counted (`nats_rejected` in the node's limit hits); the node keeps serving. The server URL is
//! logged and reported without its password.
//!
//! # Batching
//! A message alone leaves at once; requests made while others wait for their answers (a
//! burst: the callers woken by one batch of answers) and messages sent while another is being
//! handed over queue in an outbox, which one task hands to the client together, so they reach
//! the server in one write (at most 1 MiB held; beyond, senders wait). Envelopes are sealed in
//! the order they are published.
//!
//! # Failure
//! While the connection to NATS is down every send fails at once with a transport error
//! ("NATS transport unavailable"), and calls waiting on NATS-reached nodes fail immediately; the
//! broker does not expire those nodes' leases meanwhile. When the connection returns, the node
//! re-announces itself at once (peers need not wait for a heartbeat) and calls resume.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, transport::NatsTransport};
//!
//! let nats = NatsTransport::builder("nats://127.0.0.1:4222").build();
//! let broker = Broker::builder().namespace("shop").transport(nats).start().await?;
//! # Ok(()) }
//! ```

use super::bus::{envelopes, namespace_token, open_packet, token};
use super::envelope::Envelopes;
use super::envelope::Replays;
use super::{Direction, LinkKind, PendingReply, TransportContext, Transporter};
use crate::error::{Error, Result};
use crate::identity::ClusterCa;
use crate::limits::Limit;
use crate::protocol::packet::Packet;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Builds a [`NatsTransport`].
#[derive(Debug, Clone)]
pub struct NatsTransportBuilder {
    url: String,
    prefix: String,
    credentials: Option<PathBuf>,
    cluster_ca: Option<ClusterCa>,
    encrypt_broadcasts: bool,
}

impl NatsTransportBuilder {
    /// Subject prefix (default `PHX`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// A NATS credentials (`.creds`) file.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials = Some(path.into());
        self
    }

    /// How this node proves it is a member ([`ClusterCa`]; default: [`ClusterCa::local`], as
    /// for the mesh). Every node on the subjects must share it.
    pub fn cluster_ca(mut self, cluster_ca: ClusterCa) -> Self {
        self.cluster_ca = Some(cluster_ca);
        self
    }

    /// Whether broadcasts (INFO, heartbeats, broadcast events) are encrypted as well as signed,
    /// so a client on the server without the cluster's secret reads nothing. Default: on (with a
    /// shared secret; with CA files members share no key, and broadcasts are signed only).
    /// Messages to one node are always encrypted.
    pub fn encrypt_broadcasts(mut self, encrypt: bool) -> Self {
        self.encrypt_broadcasts = encrypt;
        self
    }

    /// The transport.
    pub fn build(self) -> NatsTransport {
        NatsTransport {
            config: Arc::new(self),
            bus: Arc::default(),
        }
    }
}

/// The NATS bus transport (see the module docs). Clones share one connection.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    config: Arc<NatsTransportBuilder>,
    bus: Arc<OnceLock<Bus>>,
}

struct Bus {
    client: async_nats::Client,
    broadcast_subject: String,
    node_prefix: String,
    codec: crate::protocol::codec::Codec,
    traffic: std::sync::Arc<dyn super::TrafficMeter>,
    envelopes: Arc<Envelopes>,
    /// Sealed messages waiting for their turn to be published (see [`Outbox`]).
    outbox: Mutex<Outbox>,
    /// Signalled when the flush task takes the outbox's messages: senders held back by a full
    /// outbox look again.
    room: tokio::sync::Notify,
    /// Requests sent over NATS that wait for their answer.
    waiting: Arc<AtomicUsize>,
    /// Each peer's subject, made once (at most [`MAX_KNOWN_SUBJECTS`], then made anew).
    subjects: Mutex<HashMap<Box<str>, async_nats::Subject>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

/// A sealed message ready for the wire.
type Sealed = (async_nats::Subject, Bytes);

/// What a sender does with its sealed message.
enum Turn {
    /// Nobody else is publishing: publish it now.
    Publish(Sealed),
    /// It waits in the outbox; past [`OUTBOX_LIMIT`], the sender waits for room.
    Queued { outbox_full: bool },
}

impl Bus {
    /// Seals a message with `seal` (under the outbox's lock: sequence numbers follow the
    /// order of publishing) and publishes it after every message sealed before it: at once if
    /// nobody is publishing and this is no `burst`, else through the outbox.
    ///
    /// `handle` is the transport's handle on this bus, for the flush task to keep.
    async fn deliver(
        &self,
        handle: &Arc<OnceLock<Bus>>,
        burst: bool,
        seal: impl FnOnce(&Bus) -> Result<Sealed>,
    ) -> Result<()> {
        match self.enqueue(handle, burst, seal)? {
            Turn::Publish((subject, message)) => {
                let _turn = PublishingTurn(handle);
                self.client.publish(subject, message).await.map_err(|e| {
                    Error::transport(format!("NATS publish failed: {e}")).with_source(e)
                })
            }
            Turn::Queued { outbox_full } => {
                if outbox_full {
                    self.wait_for_room().await;
                }
                Ok(())
            }
        }
    }

    /// Seals a message and either queues it or, when it may leave at once, hands it back with
    /// the turn to publish.
    fn enqueue(
        &self,
        handle: &Arc<OnceLock<Bus>>,
        burst: bool,
        seal: impl FnOnce(&Bus) -> Result<Sealed>,
    ) -> Result<Turn> {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        let sealed = seal(self)?;
        if !outbox.publishing && !burst {
            outbox.publishing = true;
            return Ok(Turn::Publish(sealed));
        }
        outbox.bytes += sealed.1.len();
        outbox.messages.push(sealed);
        if !outbox.publishing {
            outbox.publishing = true;
            tokio::spawn(Self::flush(handle.clone()));
        }
        Ok(Turn::Queued {
            outbox_full: outbox.bytes > OUTBOX_LIMIT,
        })
    }

    /// The flush task: after one yield (so every sender woken with it joins first), hands the
    /// outbox's messages to the client in order until it is empty.
    async fn flush(bus: Arc<OnceLock<Bus>>) {
        tokio::task::yield_now().await;
        let Some(this) = bus.get() else { return };
        loop {
            let batch = {
                let mut outbox = this.outbox.lock().expect("outbox lock");
                if outbox.messages.is_empty() {
                    outbox.publishing = false;
                    return;
                }
                outbox.bytes = 0;
                std::mem::take(&mut outbox.messages)
            };
            this.room.notify_waiters();
            for (subject, message) in batch {
                // Fails only once the client is closed (the transport stops): the broker fails
                // what still waits.
                if let Err(err) = this.client.publish(subject, message).await {
                    tracing::debug!(%err, "NATS publish failed");
                }
            }
        }
    }

    /// Returns once the outbox holds at most [`OUTBOX_LIMIT`] bytes.
    async fn wait_for_room(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.outbox.lock().expect("outbox lock").bytes <= OUTBOX_LIMIT {
                return;
            }
            room.await;
        }
    }
}

/// A sender's turn at publishing; when it ends (or the sender is dropped mid-way), messages
/// queued behind it go to a flush task.
struct PublishingTurn<'a>(&'a Arc<OnceLock<Bus>>);

impl Drop for PublishingTurn<'_> {
    fn drop(&mut self) {
        if let Some(bus) = self.0.get() {
            let mut outbox = bus.outbox.lock().expect("outbox lock");
            if outbox.messages.is_empty() {
                outbox.publishing = false;
            } else {
                tokio::spawn(Bus::flush(self.0.clone()));
            }
        }
    }
}

/// Peer subjects a node keeps made; beyond, the table starts over.
const MAX_KNOWN_SUBJECTS: usize = 4096;

/// Bytes of sealed messages an outbox holds before senders wait for the flush task.
const OUTBOX_LIMIT: usize = 1 << 20;

/// Messages sealed in sequence order and not yet handed to the NATS client.
///
/// Envelopes are sealed under this lock and published by one publisher at a time, so messages
/// reach the server in sequence order (the receiver's replay window tolerates little
/// reordering). A sender finding nobody publishing publishes its own message at once; senders
/// meanwhile, and requests sent while others wait for answers (a burst: the callers woken by
/// one batch of answers), join the outbox, which a flush task hands to the client after one
/// yield — all of them before the client's connection task runs, so they leave in one write.
#[derive(Default)]
struct Outbox {
    messages: Vec<(async_nats::Subject, Bytes)>,
    bytes: usize,
    /// A sender or the flush task is publishing: others queue behind it.
    publishing: bool,
}

impl Bus {
    /// The subject of `node_id`'s messages.
    fn subject_of(&self, node_id: &str) -> async_nats::Subject {
        let mut subjects = self.subjects.lock().expect("subjects lock");
        if let Some(subject) = subjects.get(node_id) {
            return subject.clone();
        }
        if subjects.len() >= MAX_KNOWN_SUBJECTS {
            subjects.clear();
        }
        let subject = async_nats::Subject::from(format!("{}{}", self.node_prefix, token(node_id)));
        subjects.insert(node_id.into(), subject.clone());
        subject
    }
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("broadcast_subject", &self.broadcast_subject)
            .field("node_prefix", &self.node_prefix)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// A builder for a server URL (`nats://`, `tls://`, credentials in the URL allowed).
    pub fn builder(url: impl Into<String>) -> NatsTransportBuilder {
        NatsTransportBuilder {
            url: url.into(),
            prefix: "PHX".into(),
            credentials: None,
            cluster_ca: None,
            encrypt_broadcasts: true,
        }
    }

    /// The bus, if it is connected to the server.
    fn connected(bus: &OnceLock<Bus>) -> Result<&Bus> {
        let bus = bus
            .get()
            .ok_or_else(|| Error::transport("NATS transport is not started"))?;
        if bus.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::transport(
                "NATS transport unavailable: not connected to the server",
            ));
        }
        Ok(bus)
    }
}

impl NatsTransport {
    /// Sends `packet` to `node_id`'s subject on `bus`, sealed for it.
    async fn send_to(&self, bus: &Bus, node_id: &str, packet: &Packet, burst: bool) -> Result<()> {
        let frame = bus.codec.encode(packet)?;
        let subject = bus.subject_of(node_id);
        bus.deliver(&self.bus, burst, |bus| {
            let sealed = bus.envelopes.seal(node_id, &subject, &frame)?;
            bus.traffic
                .record(node_id, LinkKind::Nats, Direction::Sent, sealed.len());
            Ok((subject, sealed))
        })
        .await
    }
}

/// What the client's connection events mean for the broker. Only a connection that comes back
/// after it was lost is a reconnection: the client reports its first connection too, and may
/// report it late — after peers were met and calls sent — where taking it for a reconnection
/// would fail those calls as if the bus had been down.
#[derive(Debug, Default)]
struct ConnectionWatch {
    /// The connection was lost and has not come back yet.
    lost: AtomicBool,
}

impl ConnectionWatch {
    /// `Some(up)` if `event` changes the bus's state for the broker.
    fn bus_state(&self, event: &async_nats::Event) -> Option<bool> {
        match event {
            async_nats::Event::Disconnected => {
                self.lost.store(true, Ordering::SeqCst);
                Some(false)
            }
            async_nats::Event::Connected => self.lost.swap(false, Ordering::SeqCst).then_some(true),
            _ => None,
        }
    }
}

/// `url` without the password (or token) it may carry: fit for logs and errors.
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_owned(),
        },
        None => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

impl Transporter for NatsTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Nats
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            let base = format!("{}.{}", self.config.prefix, namespace_token(&ctx.namespace));
            let envelopes = envelopes(
                &ctx,
                self.config.cluster_ca.as_ref(),
                self.config.encrypt_broadcasts,
            )?;
            let events = ctx.handler.clone();
            let watch = Arc::new(ConnectionWatch::default());
            let mut options = async_nats::ConnectOptions::new()
                .name(format!("phalanx {}", ctx.node_id))
                .connection_timeout(Duration::from_secs(2))
                .reconnect_delay_callback(|attempts| {
                    Duration::from_millis((attempts as u64 * 100).clamp(50, 1000))
                })
                .event_callback(move |event| {
                    let (events, watch) = (events.clone(), watch.clone());
                    async move {
                        match watch.bus_state(&event) {
                            Some(up) => events.on_bus(LinkKind::Nats, up),
                            None => tracing::debug!(%event, "NATS event"),
                        }
                    }
                });
            if let Some(path) = &self.config.credentials {
                options = options.credentials_file(path).await.map_err(|e| {
                    Error::transport(format!("NATS credentials {}: {e}", path.display()))
                })?;
            }
            let client = options
                .connect(self.config.url.as_str())
                .await
                .map_err(|e| {
                    Error::transport(format!(
                        "cannot connect to NATS at {}: {e}",
                        redacted(&self.config.url)
                    ))
                })?;
            let broadcast_subject = format!("{base}.bcast");
            let node_prefix = format!("{base}.node.");
            let subjects = [
                broadcast_subject.clone(),
                format!("{node_prefix}{}", token(&ctx.node_id)),
            ];
            let mut readers = Vec::new();
            for subject in subjects {
                let mut subscription = client.subscribe(subject.clone()).await.map_err(|e| {
                    Error::transport(format!("cannot subscribe to {subject}: {e}")).with_source(e)
                })?;
                let ctx = ctx.clone();
                let envelopes = envelopes.clone();
                readers.push(tokio::spawn(async move {
                    while let Some(message) = subscription.next().await {
                        let len = message.payload.len();
                        match open_packet(
                            &ctx,
                            &envelopes,
                            &message.subject,
                            message.payload,
                            Replays::PerSender,
                        ) {
                            Ok(packet) => {
                                ctx.traffic.record(
                                    &packet.sender,
                                    LinkKind::Nats,
                                    Direction::Received,
                                    len,
                                );
                                ctx.handler.on_packet(packet, LinkKind::Nats)
                            }
                            Err(why) if why.is_empty() => {}
                            Err(why) => ctx.traffic.limit_hit(
                                Limit::NatsRejected,
                                1,
                                &format!("a NATS message on {subject} dropped: {why}"),
                            ),
                        }
                    }
                }));
            }
            client
                .flush()
                .await
                .map_err(|e| Error::transport(format!("NATS flush failed: {e}")).with_source(e))?;
            let bus = Bus {
                client,
                broadcast_subject,
                node_prefix,
                codec: ctx.codec,
                traffic: ctx.traffic.clone(),
                envelopes,
                outbox: Mutex::default(),
                room: tokio::sync::Notify::new(),
                waiting: Arc::default(),
                subjects: Mutex::default(),
                readers: Mutex::new(readers),
            };
            self.bus
                .set(bus)
                .map_err(|_| Error::transport("NATS transport started twice"))?;
            tracing::info!(url = %redacted(&self.config.url), subjects = %base, "NATS transport connected");
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let bus = Self::connected(&self.bus)?;
            self.send_to(bus, node_id, packet, false).await
        }
        .boxed()
    }

    fn request<'a>(
        &'a self,
        node_id: &'a str,
        packet: &'a Packet,
        mut reply: PendingReply,
    ) -> BoxFuture<'a, Result<PendingReply>> {
        async move {
            // Requests made while others wait are a burst (their answers come back together):
            // they leave together.
            let bus = Self::connected(&self.bus)?;
            let burst = reply.count_in(&bus.waiting) > 1;
            self.send_to(bus, node_id, packet, burst).await?;
            Ok(reply)
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let bus = Self::connected(&self.bus)?;
            let frame = bus.codec.encode(packet)?;
            bus.deliver(&self.bus, false, |bus| {
                let signed = bus.envelopes.sign(&bus.broadcast_subject, &frame)?;
                bus.traffic
                    .record("*", LinkKind::Nats, Direction::Sent, signed.len());
                Ok((bus.broadcast_subject.clone().into(), signed))
            })
            .await
        }
        .boxed()
    }

    fn forget_peer(&self, node_id: &str) {
        if let Some(bus) = self.bus.get() {
            bus.envelopes.forget(node_id);
            bus.subjects.lock().expect("subjects lock").remove(node_id);
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            if let Some(bus) = self.bus.get() {
                // Deliver what is queued (our DISCONNECT), but never wait on a server that is gone.
                let _ = tokio::time::timeout(Duration::from_secs(1), bus.client.flush()).await;
                for reader in std::mem::take(&mut *bus.readers.lock().expect("readers lock")) {
                    reader.abort();
                }
                // Close the connection: nothing more goes out in this node's name (its
                // heartbeats stop, so peers see it leave even if its broker lives on).
                if let Err(err) = bus.client.drain().await {
                    tracing::debug!(%err, "NATS connection not drained");
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectionWatch, redacted};
    use async_nats::Event;

    #[test]
    fn only_a_connection_after_a_loss_is_a_reconnection() {
        let watch = ConnectionWatch::default();
        assert_eq!(
            watch.bus_state(&Event::Connected),
            None,
            "the first connection"
        );
        assert_eq!(watch.bus_state(&Event::LameDuckMode), None);
        assert_eq!(watch.bus_state(&Event::Disconnected), Some(false));
        assert_eq!(watch.bus_state(&Event::Disconnected), Some(false));
        assert_eq!(watch.bus_state(&Event::Connected), Some(true));
        assert_eq!(watch.bus_state(&Event::Connected), None, "already up");
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redacted("nats://user:pw@host:4222"), "nats://***@host:4222");
        assert_eq!(redacted("tls://token@h:1"), "tls://***@h:1");
        assert_eq!(redacted("nats://h:4222"), "nats://h:4222");
    }
}
