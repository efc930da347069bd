//! Kafka transport (feature `kafka`, rdkafka with its bundled librdkafka): a bus for clusters
//! that already run Kafka. Like NATS it sits behind the [`Transporter`] trait; the broker's
//! registry balances calls and events as on every transport.
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
//!
//! A node creates its topics when it starts (one partition each, keyed by sender so one
//! sender's records stay in order) and reads them from their end: it takes no consumer-group
//! membership, so it is reading the moment its `start` returns, with nothing replayed from
//! before. Records are envelopes, as on NATS (see the NATS transport's docs): broadcasts are
//! signed by a member (and encrypted with a shared secret), records to one node are sealed for
//! it, replays are refused; a record that fails a check is dropped and counted
//! (`kafka_rejected`).
//!
//! # Failure
//! A metadata probe every second tells whether the Kafka cluster answers: while it does not,
//! sends fail at once ("Kafka transport unavailable") and calls waiting on Kafka-reached nodes
//! fail; when it answers again the node re-announces itself. Records the client could not
//! deliver within 5 s fail their send. Memory is bounded: records prefetched per node ≤ 16 MiB,
//! records queued to send ≤ 10 000.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, transport::KafkaTransport};
//!
//! let kafka = KafkaTransport::builder("127.0.0.1:9092").build();
//! let broker = Broker::builder().namespace("shop").transport(kafka).start().await?;
//! # Ok(()) }
//! ```

use super::bus::{open_packet, token};
use super::envelope::Envelopes;
use super::{Direction, LinkKind, TransportContext, Transporter};
use crate::error::{Error, Result};
use crate::identity::ClusterCa;
use crate::limits::Limit;
use crate::protocol::packet::{Packet, PacketBody};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long a record may wait in the client for the Kafka cluster to take it.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the cluster is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Builds a [`KafkaTransport`].
#[derive(Debug, Clone)]
pub struct KafkaTransportBuilder {
    brokers: String,
    prefix: String,
    cluster_ca: Option<ClusterCa>,
    encrypt_broadcasts: bool,
    replication: i32,
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
    producer: FutureProducer,
    topics: Topics,
    codec: crate::protocol::codec::Codec,
    traffic: Arc<dyn super::TrafficMeter>,
    envelopes: Arc<Envelopes>,
    /// Held from sealing to enqueuing, so records reach their partition in sequence order.
    in_order: tokio::sync::Mutex<()>,
    /// Whether the cluster answered the last probe.
    up: Arc<AtomicBool>,
    stopped: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("topics", &self.topics.base)
            .finish_non_exhaustive()
    }
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
            client: Vec::new(),
        }
    }

    fn bus(&self) -> Result<&Bus> {
        let bus = self
            .bus
            .get()
            .ok_or_else(|| Error::transport("Kafka transport is not started"))?;
        if bus.stopped.load(Ordering::Relaxed) {
            return Err(Error::transport("Kafka transport stopped"));
        }
        if !bus.up.load(Ordering::Relaxed) {
            return Err(Error::transport(
                "Kafka transport unavailable: the Kafka cluster does not answer",
            ));
        }
        Ok(bus)
    }

    /// A client configuration with the builder's properties on top of `base`.
    fn client_config(&self, base: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.config.brokers);
        for (key, value) in base {
            config.set(*key, value);
        }
        for (key, value) in &self.config.client {
            config.set(key, value);
        }
        config
    }

    /// Creates `topics` (one partition each) unless they exist.
    async fn create_topics(&self, topics: &[String]) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .client_config(&[])
            .create()
            .map_err(|e| kafka_error("cannot create an admin client", e))?;
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(self.config.replication)))
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

    /// A consumer reading `topics` from their current end, without joining a group.
    async fn reader(&self, node_id: &str, topics: &[String]) -> Result<StreamConsumer> {
        let consumer: StreamConsumer = self
            .client_config(&[
                // Never used to commit or join: only required of a consumer.
                (
                    "group.id",
                    format!("{}.reader.{}", self.config.prefix, token(node_id)),
                ),
                ("enable.auto.commit", "false".into()),
                ("fetch.wait.max.ms", "10".into()),
                ("fetch.error.backoff.ms", "50".into()),
                ("queued.max.messages.kbytes", "16384".into()),
            ])
            .create()
            .map_err(|e| kafka_error("cannot create a consumer", e))?;
        let consumer = Arc::new(consumer);
        let (watching, list) = (consumer.clone(), topics.to_vec());
        // The end of each topic, now: what is sent to us from here on is read.
        let ends = tokio::task::spawn_blocking(move || {
            list.iter()
                .map(|topic| {
                    watching
                        .fetch_watermarks(topic, 0, Duration::from_secs(5))
                        .map(|(_, high)| (topic.clone(), high))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
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
            .map_err(|e| kafka_error("cannot assign the topics", e))?;
        Arc::try_unwrap(consumer).map_err(|_| kafka_error("consumer", "still shared"))
    }
}

impl Transporter for KafkaTransport {
    fn kind(&self) -> LinkKind {
        LinkKind::Kafka
    }

    fn start(&self, ctx: TransportContext) -> BoxFuture<'_, Result<()>> {
        async move {
            let ns = if ctx.namespace.is_empty() {
                "_".to_owned()
            } else {
                token(&ctx.namespace)
            };
            let topics = Topics {
                base: format!("{}.{ns}", self.config.prefix),
            };
            let cluster_ca = match &self.config.cluster_ca {
                Some(ca) => ca.clone(),
                None => ClusterCa::local()?,
            };
            let envelopes = Arc::new(Envelopes::new(
                ctx.node_id.clone(),
                cluster_ca.credentials(&ctx.node_id)?,
                self.config.encrypt_broadcasts,
            ));
            let max_record = ctx.codec.max_frame_len() + 64 * 1024;
            let producer: FutureProducer = self
                .client_config(&[
                    ("linger.ms", "0".into()),
                    ("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string()),
                    ("queue.buffering.max.messages", "10000".into()),
                    ("message.max.bytes", max_record.to_string()),
                ])
                .create()
                .map_err(|e| kafka_error("cannot create a producer", e))?;
            let read = topics.read_by(&ctx.node_id);
            self.create_topics(&read).await?;
            let consumer = self.reader(&ctx.node_id, &read).await?;
            let up = Arc::new(AtomicBool::new(true));
            let reader = tokio::spawn(read_records(consumer, ctx.clone(), envelopes.clone()));
            let probe = tokio::spawn(probe(producer.clone(), up.clone(), ctx.clone()));
            let bus = Bus {
                producer,
                topics: topics.clone(),
                codec: ctx.codec,
                traffic: ctx.traffic.clone(),
                envelopes,
                in_order: tokio::sync::Mutex::new(()),
                up,
                stopped: AtomicBool::new(false),
                tasks: Mutex::new(vec![reader, probe]),
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
            let bus = self.bus()?;
            let frame = bus.codec.encode(packet)?;
            let topic = bus.topics.node(node_id);
            let delivered = {
                let _in_order = bus.in_order.lock().await;
                let sealed = bus.envelopes.seal(node_id, &topic, &frame)?;
                bus.traffic
                    .record(node_id, LinkKind::Kafka, Direction::Sent, sealed.len());
                bus.enqueue(&topic, &sealed)?
            };
            delivered.await
        }
        .boxed()
    }

    fn broadcast<'a>(&'a self, packet: &'a Packet) -> BoxFuture<'a, Result<()>> {
        async move {
            let bus = self.bus()?;
            let frame = bus.codec.encode(packet)?;
            let topic = bus.topics.broadcast(packet);
            let delivered = {
                let _in_order = bus.in_order.lock().await;
                let signed = bus.envelopes.sign(&topic, &frame)?;
                bus.traffic
                    .record("*", LinkKind::Kafka, Direction::Sent, signed.len());
                bus.enqueue(&topic, &signed)?
            };
            delivered.await
        }
        .boxed()
    }

    fn forget_peer(&self, node_id: &str) {
        if let Some(bus) = self.bus.get() {
            bus.envelopes.forget(node_id);
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some(bus) = self.bus.get() else { return };
            // Deliver what is queued (our DISCONNECT), then speak no more in this node's name.
            let producer = bus.producer.clone();
            let _ = tokio::task::spawn_blocking(move || {
                rdkafka::producer::Producer::flush(&producer, Duration::from_secs(1))
            })
            .await;
            bus.stopped.store(true, Ordering::Relaxed);
            for task in std::mem::take(&mut *bus.tasks.lock().expect("tasks lock")) {
                task.abort();
            }
        }
        .boxed()
    }
}

impl Bus {
    /// Hands a record to the client (keyed by this node, so its records stay in order) and
    /// returns what resolves once the Kafka cluster took it.
    fn enqueue(
        &self,
        topic: &str,
        record: &[u8],
    ) -> Result<impl std::future::Future<Output = Result<()>> + use<>> {
        let key: &[u8] = self.envelopes.me().as_bytes();
        let queued = self
            .producer
            .send_result(FutureRecord::to(topic).payload(record).key(key))
            .map_err(|(e, _)| kafka_error("cannot queue a record", e))?;
        Ok(async move {
            match queued.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(kafka_error("record not delivered", e)),
                Err(_) => Err(Error::transport("Kafka: the producer went away")),
            }
        })
    }
}

/// Reads records until the transport stops, handing each verified packet to the broker.
async fn read_records(consumer: StreamConsumer, ctx: TransportContext, envelopes: Arc<Envelopes>) {
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
        let topic = record.topic().to_owned();
        match open_packet(
            &ctx,
            &envelopes,
            &topic,
            bytes::Bytes::copy_from_slice(payload),
        ) {
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

/// Probes the cluster every second; reports the bus down when it stops answering and up (the
/// broker then re-announces) when it answers again.
async fn probe(producer: FutureProducer, up: Arc<AtomicBool>, ctx: TransportContext) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let client = producer.clone();
        let answered = tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::client(&client)
                .fetch_metadata(None, Duration::from_millis(800))
                .is_ok()
        })
        .await
        .unwrap_or(false);
        if answered != up.swap(answered, Ordering::Relaxed) {
            ctx.handler.on_bus(LinkKind::Kafka, answered);
        }
    }
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
