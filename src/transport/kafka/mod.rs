//! Kafka transport (feature `kafka`, rdkafka with its bundled librdkafka): a bus for clusters
//! that already run Kafka. Like NATS it sits behind the [`Transporter`] trait; the broker's
//! registry balances calls, and Kafka's consumer groups balance events among each group's
//! members (see [`groups`]).
//!
//! # Topics
//! Under a prefix (default `phx`) and the namespace (`_` when empty), one topic per packet kind
//! for what every node hears, and one per node for what is addressed to it — in the spirit of
//! Moleculer's Kafka transporter:
//!
//! | topic | carries |
//! |---|---|
//! | `phx.<ns>.discover`, `.info`, `.heartbeat`, `.disconnect` | those packets, to every node |
//! | `phx.<ns>.node.<node>` | requests, responses, events, streams and replies to one node |
//! | `phx.<ns>.event.<group>.<pattern>` | a group's balanced events (several partitions, read by the group's consumer group) |
//!
//! A node creates its own and the broadcast topics when it starts (one partition each, keyed by sender so one
//! sender's records stay in order) and reads them from their end: it takes no consumer-group
//! membership, so it is reading the moment its `start` returns, with nothing replayed from
//! before. Records are envelopes, as on NATS (see the NATS transport's docs): broadcasts are
//! signed by a member (and encrypted with a shared secret), records to one node are sealed for
//! it, replays are refused; a record that fails a check is dropped and counted
//! (`kafka_rejected`).
//!
//! # Failure
//! The client reports the moment every broker is gone, and a probe every second tells whether
//! the cluster answers again: meanwhile sends fail at once ("Kafka transport unavailable") and
//! calls waiting on Kafka-reached nodes fail; once it answers, the node recreates its topics if
//! the cluster lost them, reads them from their end and re-announces itself. A record is handed
//! to the client, not waited for; one the cluster does not take within 5 s is dropped. Memory is
//! bounded: records prefetched per node ≤ 16 MiB, records queued to send ≤ 10 000.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, transport::KafkaTransport};
//!
//! let kafka = KafkaTransport::builder("127.0.0.1:9092").build();
//! let broker = Broker::builder().namespace("shop").transport(kafka).start().await?;
//! # Ok(()) }
//! ```

mod groups;

use super::bus::{envelopes, namespace_token, open_packet, token};
use super::envelope::{Envelopes, Replays};
use super::{Direction, EventInfo, LinkKind, TransportContext, Transporter};
use crate::error::{Error, Result};
use crate::identity::ClusterCa;
use crate::limits::Limit;
use crate::protocol::packet::{Packet, PacketBody};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a record may wait in the client for the Kafka cluster to take it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the cluster is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a cluster that answers again is left to settle before this node connects.
const RESTART_GRACE: Duration = Duration::from_secs(1);

/// Builds a [`KafkaTransport`].
#[derive(Debug, Clone)]
pub struct KafkaTransportBuilder {
    brokers: String,
    prefix: String,
    cluster_ca: Option<ClusterCa>,
    encrypt_broadcasts: bool,
    replication: i32,
    group_partitions: i32,
    group_session_timeout: Duration,
    client: Vec<(String, String)>,
}

impl KafkaTransportBuilder {
    /// Topic prefix (default `phx`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How this node proves it is a member ([`ClusterCa`]; default: [`ClusterCa::local`]).
    /// Every node on the topics must share it.
    pub fn cluster_ca(mut self, cluster_ca: ClusterCa) -> Self {
        self.cluster_ca = Some(cluster_ca);
        self
    }

    /// Whether broadcasts are encrypted as well as signed (default on, with a shared secret).
    pub fn encrypt_broadcasts(mut self, encrypt: bool) -> Self {
        self.encrypt_broadcasts = encrypt;
        self
    }

    /// Replication factor of the topics this node creates (default 1; 3 is usual in
    /// production).
    pub fn replication(mut self, factor: i32) -> Self {
        self.replication = factor;
        self
    }

    /// Partitions of the topics of balanced event groups this node creates (default 12): a
    /// group's events are shared by at most this many members.
    ///
    /// ```
    /// let kafka = phalanx::transport::KafkaTransport::builder("127.0.0.1:9092")
    ///     .group_partitions(24)
    ///     .build();
    /// # let _ = kafka;
    /// ```
    pub fn group_partitions(mut self, partitions: i32) -> Self {
        self.group_partitions = partitions.max(1);
        self
    }

    /// How long a member of a balanced event group may be silent before the cluster gives its
    /// partitions to the others (default 10 s; Kafka brokers accept 6 s to 30 min unless
    /// configured otherwise). Also how long a service's start waits for its groups' assignment.
    ///
    /// ```
    /// let kafka = phalanx::transport::KafkaTransport::builder("127.0.0.1:9092")
    ///     .group_session_timeout(std::time::Duration::from_secs(6))
    ///     .build();
    /// # let _ = kafka;
    /// ```
    pub fn group_session_timeout(mut self, timeout: Duration) -> Self {
        self.group_session_timeout = timeout;
        self
    }

    /// Sets a librdkafka property on every client this transport makes, e.g.
    /// `("security.protocol", "sasl_ssl")` with the SASL settings your cluster needs.
    ///
    /// ```
    /// let kafka = phalanx::transport::KafkaTransport::builder("k1:9092,k2:9092")
    ///     .client_property("client.rack", "eu-west-1a")
    ///     .build();
    /// # let _ = kafka;
    /// ```
    pub fn client_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.client.push((key.into(), value.into()));
        self
    }

    /// The transport.
    pub fn build(self) -> KafkaTransport {
        KafkaTransport {
            config: Arc::new(self),
            bus: Arc::default(),
        }
    }
}

/// The Kafka bus transport (see the module docs). Clones share one set of clients.
#[derive(Debug, Clone)]
pub struct KafkaTransport {
    config: Arc<KafkaTransportBuilder>,
    bus: Arc<OnceLock<Bus>>,
}

struct Bus {
    shared: Arc<Shared>,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("topics", &self.shared.topics.base)
            .finish_non_exhaustive()
    }
}

/// What the transport, its clients and its keeper share.
struct Shared {
    config: Arc<KafkaTransportBuilder>,
    ctx: TransportContext,
    topics: Topics,
    /// The topics this node reads.
    reads: Vec<String>,
    envelopes: Arc<Envelopes>,
    /// Held from sealing to enqueuing, so records reach their partition in sequence order.
    in_order: tokio::sync::Mutex<()>,
    /// What this node's services listen to, by group.
    subscriptions: Mutex<groups::Subscriptions>,
    /// This node's memberships in those groups, while connected (held while joining).
    members: tokio::sync::Mutex<groups::Members>,
    /// Partition counts of the group topics this node has emitted to.
    partitions: Mutex<HashMap<String, u32>>,
    /// Turns over group topics' partitions.
    next_partition: AtomicU64,
    /// Cleared the moment the client sees every broker gone; set once reconnected.
    up: AtomicBool,
    /// Wakes the keeper when the cluster is lost.
    lost: tokio::sync::Notify,
    /// The clients, while connected. Dropped when the cluster is lost and made anew when it
    /// answers again: librdkafka has been seen to crash refreshing metadata from a broker that
    /// restarted empty.
    clients: Mutex<Option<Clients>>,
    stopped: AtomicBool,
}

/// A producer, and the task reading this node's topics with its own consumer.
struct Clients {
    producer: FutureProducer<Watch>,
    consumer: Arc<StreamConsumer>,
    reader: JoinHandle<()>,
}

/// The topic names of one namespace.
#[derive(Debug, Clone)]
struct Topics {
    base: String,
}

/// Broadcast topics, by the packet kinds they carry.
const BROADCAST_KINDS: [&str; 4] = ["discover", "info", "heartbeat", "disconnect"];

impl Topics {
    fn node(&self, node_id: &str) -> String {
        format!("{}.node.{}", self.base, token(node_id))
    }

    fn broadcast(&self, packet: &Packet) -> String {
        let kind = match packet.body {
            PacketBody::Discover(_) => "discover",
            PacketBody::Heartbeat(_) => "heartbeat",
            PacketBody::Disconnect(_) => "disconnect",
            // INFO, and anything else said to everyone.
            _ => "info",
        };
        format!("{}.{kind}", self.base)
    }

    /// What a node reads: the broadcast topics and its own.
    fn read_by(&self, node_id: &str) -> Vec<String> {
        BROADCAST_KINDS
            .iter()
            .map(|kind| format!("{}.{kind}", self.base))
            .chain([self.node(node_id)])
            .collect()
    }
}

fn kafka_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::transport(format!("Kafka: {what}: {err}"))
}

impl KafkaTransport {
    /// A builder for a bootstrap list (`host:port[,host:port…]`).
    pub fn builder(brokers: impl Into<String>) -> KafkaTransportBuilder {
        KafkaTransportBuilder {
            brokers: brokers.into(),
            prefix: "phx".into(),
            cluster_ca: None,
            encrypt_broadcasts: true,
            replication: 1,
            group_partitions: 12,
            group_session_timeout: Duration::from_secs(10),
            client: Vec::new(),
        }
    }

    /// The producer to send with, if the transport runs and the cluster answers.
    fn producer(&self) -> Result<(&Shared, FutureProducer<Watch>)> {
        let shared = &self
            .bus
            .get()
            .ok_or_else(|| Error::transport("Kafka transport is not started"))?
            .shared;
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(Error::transport("Kafka transport stopped"));
        }
        let producer = shared
            .clients
            .lock()
            .expect("clients lock")
            .as_ref()
            .filter(|_| shared.up.load(Ordering::Relaxed))
            .map(|clients| clients.producer.clone())
            .ok_or_else(|| {
                Error::transport("Kafka transport unavailable: the Kafka cluster does not answer")
            })?;
        Ok((shared, producer))
    }
}

/// A client configuration with the builder's properties on top of `base`.
fn client_config(config: &KafkaTransportBuilder, base: &[(&str, String)]) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.brokers);
    // The Kafka 3.0 protocol, without asking the broker: newer Metadata versions name topics by
    // id, and librdkafka crashes on a response whose names are left out (seen with tansu).
    // `client_property` overrides it for clusters known to answer in full.
    client.set("api.version.request", "false");
    client.set("broker.version.fallback", "3.0.0");
    for (key, value) in base {
        client.set(*key, value);
    }
    for (key, value) in &config.client {
        client.set(key, value);
    }
    client
}

/// Creates `topics` (with `partitions` each) unless they exist.
async fn create_topics(
    config: &KafkaTransportBuilder,
    topics: &[String],
    partitions: i32,
) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(config, &[])
        .create()
        .map_err(|e| kafka_error("cannot create an admin client", e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(config.replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| kafka_error("cannot create topics", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(kafka_error(&format!("cannot create topic {topic}"), code));
            }
        }
    }
    Ok(())
}

/// A consumer for `node_id` that joins no group (it is assigned its topics by [`attach`]).
fn consumer(config: &KafkaTransportBuilder, node_id: &str) -> Result<Arc<StreamConsumer>> {
    let consumer: StreamConsumer = client_config(
        config,
        &[
            // Never used to commit or join: only required of a consumer.
            (
                "group.id",
                format!("{}.reader.{}", config.prefix, token(node_id)),
            ),
            ("enable.auto.commit", "false".into()),
            ("client.id", format!("phalanx-reader-{}", token(node_id))),
            ("fetch.wait.max.ms", "10".into()),
            ("fetch.error.backoff.ms", "50".into()),
            ("queued.max.messages.kbytes", "16384".into()),
        ],
    )
    .create()
    .map_err(|e| kafka_error("cannot create a consumer", e))?;
    Ok(Arc::new(consumer))
}

/// Creates `topics` if they are missing and has `consumer` read them from their end, now: what
/// is sent from here on is read, nothing from before. Run at start and after the cluster came
/// back (it may have come back empty).
async fn attach(
    config: &KafkaTransportBuilder,
    consumer: &Arc<StreamConsumer>,
    topics: &[String],
) -> Result<()> {
    create_topics(config, topics, 1).await?;
    // Looked up with a client of its own, dropped at once: the reading consumer only ever
    // fetches its assigned topics.
    let lookup: rdkafka::consumer::BaseConsumer = client_config(
        config,
        &[
            ("group.id", format!("{}.lookup", config.prefix)),
            ("client.id", "phalanx-lookup".into()),
        ],
    )
    .create()
    .map_err(|e| kafka_error("cannot create a consumer", e))?;
    let list = topics.to_vec();
    let ends = tokio::task::spawn_blocking(move || {
        let ends = list
            .iter()
            .map(|topic| {
                lookup
                    .fetch_watermarks(topic, 0, Duration::from_secs(5))
                    .map(|(_, high)| (topic.clone(), high))
            })
            .collect::<std::result::Result<Vec<_>, _>>();
        drop(lookup);
        ends
    })
    .await
    .map_err(|e| kafka_error("offset lookup failed", e))?
    .map_err(|e| kafka_error("cannot read the topics' ends", e))?;
    let mut assignment = TopicPartitionList::new();
    for (topic, end) in ends {
        assignment
            .add_partition_offset(&topic, 0, Offset::Offset(end))
            .map_err(|e| kafka_error("bad assignment", e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_error("cannot assign the topics", e))
}

impl Transporter for KafkaTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Kafka
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            let topics = Topics {
                base: format!("{}.{}", self.config.prefix, namespace_token(&ctx.namespace)),
            };
            let envelopes = envelopes(
                &ctx,
                self.config.cluster_ca.as_ref(),
                self.config.encrypt_broadcasts,
            )?;
            let shared = Arc::new(Shared {
                config: self.config.clone(),
                reads: topics.read_by(&ctx.node_id),
                topics: topics.clone(),
                ctx,
                envelopes,
                in_order: tokio::sync::Mutex::new(()),
                subscriptions: Mutex::default(),
                members: tokio::sync::Mutex::default(),
                partitions: Mutex::default(),
                next_partition: AtomicU64::new(0),
                up: AtomicBool::new(false),
                lost: tokio::sync::Notify::new(),
                clients: Mutex::new(None),
                stopped: AtomicBool::new(false),
            });
            let clients = connect(&shared).await?;
            *shared.clients.lock().expect("clients lock") = Some(clients);
            shared.up.store(true, Ordering::Relaxed);
            let keeper = tokio::spawn(keep(shared.clone()));
            let bus = Bus {
                shared,
                keeper: Mutex::new(Some(keeper)),
            };
            self.bus
                .set(bus)
                .map_err(|_| Error::transport("Kafka transport started twice"))?;
            tracing::info!(brokers = %self.config.brokers, topics = %topics.base, "Kafka transport connected");
            Ok(())
        }
        .boxed()
    }

    fn send<'a>(&'a self, node_id: &'a str, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let (shared, producer) = self.producer()?;
            let frame = shared.ctx.codec.encode(packet)?;
            let topic = shared.topics.node(node_id);
            let _in_order = shared.in_order.lock().await;
            let sealed = shared.envelopes.seal(node_id, &topic, &frame)?;
            shared
                .ctx
                .traffic
                .record(node_id, LinkKind::Kafka, Direction::Sent, sealed.len());
            shared.enqueue(&producer, &topic, None, &sealed)
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let (shared, producer) = self.producer()?;
            let frame = shared.ctx.codec.encode(packet)?;
            let topic = shared.topics.broadcast(packet);
            let _in_order = shared.in_order.lock().await;
            let signed = shared.envelopes.sign(&topic, &frame)?;
            shared
                .ctx
                .traffic
                .record("*", LinkKind::Kafka, Direction::Sent, signed.len());
            shared.enqueue(&producer, &topic, None, &signed)
        }
        .boxed()
    }

    fn balances_events(&self) -> bool {
        true
    }

    fn emit_balanced<'a>(
        &'a self,
        listening: &'a EventInfo,
        packet: &'a Packet,
    ) -> BoxFuture<'a, Result<()>> {
        async move {
            let (shared, producer) = self.producer()?;
            groups::emit(shared, &producer, listening, packet).await
        }
        .boxed()
    }

    fn listen<'a>(&'a self, subscriptions: &'a [EventInfo]) -> BoxFuture<'a, Result<()>> {
        async move {
            let Some(bus) = self.bus.get() else {
                return Ok(());
            };
            let shared = &bus.shared;
            let wanted = groups::by_group(subscriptions);
            *shared.subscriptions.lock().expect("subscriptions lock") = wanted.clone();
            let mut members = shared.members.lock().await;
            // While the cluster is lost there are no memberships: they are made on reconnect.
            if shared.clients.lock().expect("clients lock").is_none() {
                return Ok(());
            }
            members.reconcile(shared, &wanted).await
        }
        .boxed()
    }

    fn forget_peer(&self, node_id: &str) {
        if let Some(bus) = self.bus.get() {
            bus.shared.envelopes.forget(node_id);
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(bus) = self.bus.get() else { return };
            bus.shared.stopped.store(true, Ordering::Relaxed);
            if let Some(keeper) = bus.keeper.lock().expect("keeper lock").take() {
                keeper.abort();
            }
            bus.shared.members.lock().await.leave_all().await;
            // Deliver what is queued (our DISCONNECT), then speak no more in this node's name.
            let clients = bus.shared.clients.lock().expect("clients lock").take();
            if let Some(clients) = clients {
                clients.close(Duration::from_secs(1)).await;
            }
        }
        .boxed()
    }
}

impl Shared {
    /// Hands a record to the client, keyed by this node so its records stay in order (to
    /// `partition` when given). Not waited for: the client delivers it within the delivery
    /// timeout or drops it, and a cluster that stops answering is reported at once (see
    /// [`Watch`]), failing the calls that wait on it.
    fn enqueue(
        &self,
        producer: &FutureProducer<Watch>,
        topic: &str,
        partition: Option<i32>,
        record: &[u8],
    ) -> Result<()> {
        let key: &[u8] = self.envelopes.me().as_bytes();
        let mut to = FutureRecord::to(topic).payload(record).key(key);
        if let Some(partition) = partition {
            to = to.partition(partition);
        }
        producer
            .send_result(to)
            .map(drop)
            .map_err(|(e, _)| kafka_error("cannot queue a record", e))
    }
}

/// What a reader reads.
enum Records {
    /// This node's own and the broadcast topics.
    Node,
    /// A balanced group's topics, as one of its members: only that group's events.
    Group(Arc<str>),
}

/// Reads records until the transport stops, handing each verified packet to the broker.
async fn read_records<C: ConsumerContext + 'static>(
    consumer: Arc<StreamConsumer<C>>,
    ctx: TransportContext,
    envelopes: Arc<Envelopes>,
    records: Records,
) {
    loop {
        let record = match consumer.recv().await {
            Ok(record) => record,
            Err(err) => {
                tracing::debug!(%err, "Kafka read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(payload) = record.payload() else {
            continue;
        };
        let len = payload.len();
        let topic = record.topic();
        let payload = bytes::Bytes::copy_from_slice(payload);
        let opened = match &records {
            Records::Node => open_packet(&ctx, &envelopes, topic, payload, Replays::PerSender),
            Records::Group(group) => {
                let subject = groups::partition_subject(topic, record.partition());
                open_packet(&ctx, &envelopes, &subject, payload, Replays::PerSubject)
                    .and_then(|packet| as_group_event(packet, group))
            }
        };
        match opened {
            Ok(packet) => {
                ctx.traffic
                    .record(&packet.sender, LinkKind::Kafka, Direction::Received, len);
                ctx.handler.on_packet(packet, LinkKind::Kafka);
            }
            Err(why) if why.is_empty() => {}
            Err(why) => ctx.traffic.limit_hit(
                Limit::KafkaRejected,
                1,
                &format!("a Kafka record on {topic} dropped: {why}"),
            ),
        }
    }
}

/// A packet read from `group`'s topics, which carry only that group's events: handled in that
/// group whatever groups it names.
fn as_group_event(mut packet: Packet, group: &str) -> std::result::Result<Packet, String> {
    match &mut packet.body {
        PacketBody::Event(event) if !event.broadcast => {
            event.groups = Some(vec![group.to_owned()]);
            Ok(packet)
        }
        _ => Err(format!(
            "'{}' sent something other than an event on a group topic",
            packet.sender
        )),
    }
}

impl Clients {
    /// Flushes what is queued (at most `flush`), stops reading and drops the clients — off the
    /// runtime's threads, as librdkafka's teardown blocks.
    async fn close(self, flush: Duration) {
        self.reader.abort();
        let _ = self.reader.await;
        let Self {
            producer, consumer, ..
        } = self;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = rdkafka::producer::Producer::flush(&producer, flush);
            drop((producer, consumer));
        })
        .await;
    }
}

/// Connects: a producer, a consumer reading this node's topics (created if missing) from their
/// end, and the task that hands what it reads to the broker.
async fn connect(shared: &Arc<Shared>) -> Result<Clients> {
    let max_record = shared.ctx.codec.max_frame_len() + 64 * 1024;
    let watch = Watch(Arc::downgrade(shared));
    let producer: FutureProducer<Watch> = client_config(
        &shared.config,
        &[
            ("linger.ms", "0".into()),
            (
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            ),
            ("queue.buffering.max.messages", "10000".into()),
            ("message.max.bytes", max_record.to_string()),
        ],
    )
    .create_with_context(watch)
    .map_err(|e| kafka_error("cannot create a producer", e))?;
    let consumer = consumer(&shared.config, &shared.ctx.node_id)?;
    attach(&shared.config, &consumer, &shared.reads).await?;
    let reader = tokio::spawn(read_records(
        consumer.clone(),
        shared.ctx.clone(),
        shared.envelopes.clone(),
        Records::Node,
    ));
    Ok(Clients {
        producer,
        consumer,
        reader,
    })
}

/// Hears from the producer's client the moment every broker of the cluster is gone.
struct Watch(std::sync::Weak<Shared>);

impl rdkafka::ClientContext for Watch {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let all_down = error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown);
        match self.0.upgrade() {
            Some(shared) if all_down && shared.up.swap(false, Ordering::Relaxed) => {
                tracing::warn!(reason, "Kafka cluster unreachable");
                shared.lost.notify_one();
            }
            _ => tracing::debug!(%error, reason, "Kafka client error"),
        }
    }
}

/// Keeps the connection: when the cluster is lost, drops the clients and reports the bus down;
/// then probes every second and, once a broker accepts connections, connects anew (the broker
/// then re-announces).
async fn keep(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = shared.lost.notified() => {}
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        if !shared.up.load(Ordering::Relaxed) {
            let lost = shared.clients.lock().expect("clients lock").take();
            if let Some(clients) = lost {
                shared.ctx.handler.on_bus(LinkKind::Kafka, false);
                clients.close(Duration::ZERO).await;
                // Left in the background: leaving a group the cluster cannot hear takes
                // librdkafka's timeouts, and reconnecting must not wait for them.
                let mut members = std::mem::take(&mut *shared.members.lock().await);
                tokio::spawn(async move { members.leave_all().await });
            }
        }
        let connected = shared.clients.lock().expect("clients lock").is_some();
        if connected || !reachable(&shared.config.brokers).await {
            continue;
        }
        // A broker that has just started may accept connections before it knows itself: its
        // first metadata answers can lack brokers and topic names, which librdkafka does not
        // survive. Give it a moment.
        tokio::time::sleep(RESTART_GRACE).await;
        match connect(&shared).await {
            Ok(clients) => {
                let mut members = shared.members.lock().await;
                *shared.clients.lock().expect("clients lock") = Some(clients);
                shared.up.store(true, Ordering::Relaxed);
                tracing::info!("Kafka cluster answers again");
                let wanted = shared
                    .subscriptions
                    .lock()
                    .expect("subscriptions lock")
                    .clone();
                if let Err(err) = members.reconcile(&shared, &wanted).await {
                    tracing::warn!(%err, "could not rejoin this node's event groups");
                }
                drop(members);
                shared.ctx.handler.on_bus(LinkKind::Kafka, true);
            }
            Err(err) => tracing::debug!(%err, "Kafka answers, but not yet to us"),
        }
    }
}

/// Whether any bootstrap broker accepts a TCP connection within half a second.
async fn reachable(brokers: &str) -> bool {
    let attempts = brokers.split(',').map(|broker| async move {
        let connect = tokio::net::TcpStream::connect(broker.trim());
        matches!(
            tokio::time::timeout(Duration::from_millis(500), connect).await,
            Ok(Ok(_))
        )
    });
    futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .any(|ok| ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_per_namespace_kind_and_node() {
        let topics = Topics {
            base: "phx.shop".into(),
        };
        assert_eq!(topics.node("n-1"), "phx.shop.node.n-1");
        assert_eq!(topics.node("a.b"), "phx.shop.node.x612e62");
        let heartbeat = Packet::new("n", PacketBody::Heartbeat(Default::default()));
        assert_eq!(topics.broadcast(&heartbeat), "phx.shop.heartbeat");
        assert_eq!(topics.read_by("n").len(), 5);
    }
}
