//! A call over the Kafka transport next to a raw produce→consume round trip, between two
//! processes, in the same run, against a `tansu` broker this bench starts on loopback.
//!
//! The raw baseline is what a team would write by hand with the same client (rdkafka): the
//! caller produces each request to a topic keyed by a request id and matches the answers it
//! consumes from another topic by that key; the server consumes requests and produces each
//! payload back. Phalanx adds its envelopes (signed or sealed records), its packets and the
//! broker.
//!
//! Run: `cargo bench --bench kafka_call --features kafka` (options: `-- --seconds 3 --payload 64`)
#![allow(clippy::print_stdout)]

#[path = "../tests/common/kafka_server.rs"]
mod kafka_server;
#[path = "support/process.rs"]
mod process;
mod support;

use bytes::Bytes;
use phalanx::Broker;
use phalanx::transport::KafkaTransport;
use process::{Server, serve_until_stdin_closes};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Figures, Options, closed_loop, echo_call, print_table, runtime, serve_echo};
use tokio::sync::oneshot;

const REQUESTS: &str = "bench.requests";
const ANSWERS: &str = "bench.answers";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let row = args.get(i + 1).expect("--serve ROW").clone();
        let brokers = args.get(i + 2).expect("--serve ROW BROKERS").clone();
        runtime().block_on(serve(&row, &brokers));
        return;
    }
    let options = Options::from_args();
    let kafka = kafka_server::KafkaServer::start();
    let brokers = kafka.brokers();
    let body = Bytes::from(vec![7u8; options.payload]);
    let raw = runtime().block_on(async {
        let _server = Server::start(&["--serve", "raw-kafka", &brokers]);
        let calls = RawClient::connect(&brokers).await.calls(body.clone());
        measure(options.duration, calls).await
    });
    let ours = runtime().block_on(async {
        let _server = Server::start(&["--serve", "phalanx-kafka", &brokers]);
        let caller = node(&brokers, "caller").await;
        caller
            .wait_for_services(&["echo"], Duration::from_secs(20))
            .await
            .expect("the server's echo");
        let figures = measure(options.duration, echo_call(&caller, &body)).await;
        caller.stop().await;
        figures
    });
    print_table(
        &format!(
            "Kafka call between two processes, {}-byte payload, tansu on loopback",
            options.payload
        ),
        ("raw rdkafka produce→consume round trip", &raw),
        &[("phalanx `call` over Kafka", &ours)],
    );
}

/// Sequential calls for p50/p99: a Kafka round trip takes milliseconds, so fewer than the
/// other benches make.
const SEQUENTIAL_CALLS: usize = 300;

/// p50/p99 of sequential calls, then calls/s with 64 in flight for `duration`.
async fn measure<F, Fut>(duration: Duration, call: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let mut micros = Vec::with_capacity(SEQUENTIAL_CALLS);
    for _ in 0..SEQUENTIAL_CALLS {
        let start = std::time::Instant::now();
        call(0).await;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    Figures {
        p50_us: micros[micros.len() / 2],
        p99_us: micros[micros.len() * 99 / 100],
        calls_per_sec: closed_loop(duration, call).await,
    }
}

async fn node(brokers: &str, id: &str) -> Broker {
    Broker::builder()
        .node_id(id)
        .namespace("bench")
        .transport(KafkaTransport::builder(brokers).build())
        .start()
        .await
        .expect("broker on Kafka")
}

/// The serving process of a row.
async fn serve(row: &str, brokers: &str) {
    let mut broker = None;
    match row {
        "raw-kafka" => {
            let requests = reader(brokers, REQUESTS).await;
            let producer = producer(brokers);
            tokio::spawn(async move {
                while let Ok(request) = requests.recv().await {
                    let record = FutureRecord::to(ANSWERS)
                        .payload(request.payload().unwrap_or_default())
                        .key(request.key().unwrap_or_default());
                    if producer.send_result(record).is_err() {
                        break;
                    }
                }
            });
        }
        _ => {
            let server = node(brokers, "server").await;
            serve_echo(&server).await;
            broker = Some(server);
        }
    }
    serve_until_stdin_closes("").await;
    if let Some(broker) = broker {
        broker.stop().await;
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("api.version.request", "false")
        .set("broker.version.fallback", "3.0.0")
        .create()
        .expect("producer")
}

/// A consumer reading `topic` (created if missing) from its current end.
async fn reader(brokers: &str, topic: &str) -> StreamConsumer {
    // One partition, as Phalanx's own topics: a topic the broker creates on first use may get
    // several.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .expect("admin");
    let topics = [rdkafka::admin::NewTopic::new(
        topic,
        1,
        rdkafka::admin::TopicReplication::Fixed(1),
    )];
    let _ = admin
        .create_topics(&topics, &rdkafka::admin::AdminOptions::new())
        .await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench")
        .set("fetch.wait.max.ms", "10")
        .set("api.version.request", "false")
        .set("broker.version.fallback", "3.0.0")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::End)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// The hand-written caller: requests keyed by id, answers matched by key.
#[derive(Clone)]
struct RawClient {
    producer: FutureProducer,
    waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<usize>>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RawClient {
    async fn connect(brokers: &str) -> Self {
        let answers = reader(brokers, ANSWERS).await;
        let client = Self {
            producer: producer(brokers),
            waiting: Arc::default(),
            next: Arc::default(),
        };
        let waiting = client.waiting.clone();
        tokio::spawn(async move {
            while let Ok(answer) = answers.recv().await {
                let id = answer
                    .key()
                    .and_then(|k| <[u8; 8]>::try_from(k).ok())
                    .map(u64::from_be_bytes);
                let len = answer.payload().map_or(0, <[u8]>::len);
                if let Some(waiter) = id.and_then(|id| waiting.lock().unwrap().remove(&id)) {
                    let _ = waiter.send(len);
                }
            }
        });
        // The server's reader may start after our first request: wait for an answer.
        let probe = client.clone();
        while tokio::time::timeout(Duration::from_secs(1), probe.call(Bytes::new()))
            .await
            .is_err()
        {}
        client
    }

    async fn call(&self, body: Bytes) -> usize {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, answer);
        let key = id.to_be_bytes();
        let record = FutureRecord::to(REQUESTS).payload(&body[..]).key(&key[..]);
        self.producer.send_result(record).expect("queued");
        answered.await.unwrap_or(0)
    }

    fn calls(
        self,
        body: Bytes,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send>> + Clone + Send + 'static
    {
        move |_| {
            let (client, body) = (self.clone(), body.clone());
            Box::pin(async move { client.call(body).await })
        }
    }
}
