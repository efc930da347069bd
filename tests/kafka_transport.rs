//! The Kafka transport against a real Kafka-API broker (`tansu`): a cluster cut off fails calls
//! fast and, once back, is rejoined by itself (event groups too); records that are not a
//! member's own — garbage, or a member's record replayed by any client of the broker — are
//! dropped and counted; a group's events are balanced by its consumer group, and a crashed
//! member's share reaches the others.
#![cfg(feature = "kafka")]

mod common;
#[path = "common/kafka_server.rs"]
mod kafka_server;

use kafka_server::KafkaServer;
use phalanx::identity::ClusterCa;
use phalanx::transport::KafkaTransport;
use phalanx::{Broker, ErrorKind};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);
/// The topic of group `audit`'s `order.created` events in namespace `kafka-test`.
const TOPIC: &str = "phx.kafka-test.event.audit.x6f726465722e63726561746564";

async fn node(server: &KafkaServer, id: &str) -> Broker {
    Broker::builder()
        .node_id(id)
        .namespace("kafka-test")
        .heartbeat(Duration::from_millis(200), Duration::from_millis(2000))
        .stop_grace(Duration::from_millis(50))
        .transport(
            KafkaTransport::builder(server.brokers())
                .cluster_ca(ClusterCa::secret(common::strong_secret("kafka")))
                .build(),
        )
        .start()
        .await
        .expect("broker on Kafka")
}

/// Kafka records `broker` dropped (`kafka_rejected`).
fn rejected(broker: &Broker) -> u64 {
    broker
        .metrics()
        .limit_hits
        .get("kafka_rejected")
        .copied()
        .unwrap_or(0)
}

async fn serve_echo(broker: &Broker) {
    broker
        .service("echo")
        .action("say", |_ctx, s: String| async move { Ok(s) })
        .start()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cut_off_fails_calls_fast_and_is_rejoined_once_back() {
    let server = KafkaServer::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    serve_echo(&b).await;
    let orders = common::counter();
    b.service("audit")
        .event("order.created", common::counting::<u32>(&orders))
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo", "audit"], WAIT).await.unwrap();
    assert_eq!(a.call::<String>("echo.say", "up").await.unwrap(), "up");

    server.cut();
    // Within the probe's second, calls fail at once with a transport error, not a timeout.
    let deadline = Instant::now() + WAIT;
    let failed = loop {
        let started = Instant::now();
        match a.call::<String>("echo.say", "down").await {
            Err(err) if started.elapsed() < Duration::from_secs(1) => break err,
            _ => {}
        }
        assert!(Instant::now() < deadline, "calls never failed fast");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(
            failed.kind(),
            ErrorKind::Transport | ErrorKind::ServiceNotFound
        ),
        "{failed}"
    );

    // The cluster is back: nodes reconnect, re-announce, and calls resume.
    server.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(said) = a.call::<String>("echo.say", "back").await {
            assert_eq!(said, "back");
            break;
        }
        assert!(Instant::now() < deadline, "the cluster never recovered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // b's group membership was made anew with its clients: the group's events reach it again.
    a.emit("order.created", &1u32).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while orders.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the group's events never reached b again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        records_in(&server, TOPIC).await,
        1,
        "through the group's topic"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_are_not_a_members_own_are_dropped_and_counted() {
    let server = KafkaServer::start();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    serve_echo(&b).await;
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
    assert_eq!(a.call::<String>("echo.say", "hi").await.unwrap(), "hi");

    // Any client of the broker can read b's topic and write to it.
    let topic = "phx.kafka-test.node.b";
    let spy: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", server.brokers())
        .set("group.id", "spy")
        .create()
        .unwrap();
    let mut from_start = rdkafka::TopicPartitionList::new();
    from_start
        .add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    spy.assign(&from_start).unwrap();
    let captured = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(record)) = spy.poll(Duration::from_millis(200)) {
                break record.payload().map(<[u8]>::to_vec).unwrap();
            }
            assert!(Instant::now() < deadline, "nothing to capture on {topic}");
        }
    })
    .await
    .unwrap();

    let rogue: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.brokers())
        .create()
        .unwrap();
    let before = rejected(&b);
    for record in [
        captured,
        b"garbage that is no envelope".to_vec(),
        Vec::new(),
    ] {
        rogue
            .send(
                FutureRecord::to(topic).payload(&record).key("a"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while rejected(&b) < before + 2 {
        assert!(
            Instant::now() < deadline,
            "the rogue records were not counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // b keeps serving its members.
    assert_eq!(
        a.call::<String>("echo.say", "still").await.unwrap(),
        "still"
    );
    a.stop().await;
    b.stop().await;
}

/// `phalanx demo --kafka` and `phalanx call --kafka`: the CLI on a Kafka cluster, no mesh.
#[test]
fn the_cli_serves_and_calls_over_kafka() {
    let server = KafkaServer::start();
    let bin = env!("CARGO_BIN_EXE_phalanx");
    let secret = common::strong_secret("kafka-cli");
    let mut demo = std::process::Command::new(bin)
        .args([
            "demo",
            "--node-id",
            "k1",
            "--kafka",
            &server.brokers(),
            "--no-shm",
        ])
        .args(["--heartbeat-ms", "300", "--lease-ms", "2500"])
        .env("PHALANX_SECRET", &secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("phalanx demo");
    let out = std::process::Command::new(bin)
        .args([
            "call",
            "demo.add",
            r#"{"a":40,"b":2}"#,
            "--kafka",
            &server.brokers(),
        ])
        .args(["--no-shm", "--wait", "15000"])
        .env("PHALANX_SECRET", &secret)
        .output()
        .expect("phalanx call");
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

/// A client of the cluster at `brokers` in consumer group `group` that never subscribes (it
/// joins nothing), and the number of partitions of `topic`. Blocking: run off the runtime.
fn reader_of(brokers: &str, group: &str, topic: &str) -> (BaseConsumer, i32) {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let partitions = reader
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap()
        .topics()[0]
        .partitions()
        .len() as i32;
    assert!(partitions > 1, "a group topic has partitions to share");
    (reader, partitions)
}

/// A reader (as [`reader_of`]) assigned every partition of `topic` from its start.
fn reading_from_start(brokers: &str, topic: &str) -> BaseConsumer {
    let (reader, partitions) = reader_of(brokers, "phalanx-test-reader", topic);
    let mut all = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        all.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    reader.assign(&all).unwrap();
    reader
}

/// The offsets consumer group `group` has committed on `topic`, over all its partitions.
async fn committed(server: &KafkaServer, group: &str, topic: &str) -> i64 {
    let (brokers, group, topic) = (server.brokers(), group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let (reader, partitions) = reader_of(&brokers, &group, &topic);
        let mut all = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            all.add_partition(&topic, p);
        }
        reader
            .committed_offsets(all, Duration::from_secs(5))
            .unwrap()
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(n) => n,
                _ => 0,
            })
            .sum()
    })
    .await
    .unwrap()
}

/// The records in `topic` (until none come for a second).
async fn records_in(server: &KafkaServer, topic: &str) -> usize {
    let (brokers, topic) = (server.brokers(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader = reading_from_start(&brokers, &topic);
        let mut read = 0;
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(1) {
            if let Some(Ok(_)) = reader.poll(Duration::from_millis(100)) {
                read += 1;
                last = Instant::now();
            }
        }
        read
    })
    .await
    .unwrap()
}

/// The partition and payload of the first record read from `topic`.
async fn first_record(server: &KafkaServer, topic: &str) -> (i32, Vec<u8>) {
    let (brokers, topic) = (server.brokers(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader = reading_from_start(&brokers, &topic);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(record)) = reader.poll(Duration::from_millis(200)) {
                break (record.partition(), record.payload().unwrap().to_vec());
            }
            assert!(Instant::now() < deadline, "nothing in {topic}");
        }
    })
    .await
    .unwrap()
}

/// A group's events go through its Kafka consumer group: every event is published once to
/// the group's topic, handled once by one member or the other, and committed by the group;
/// records replayed, moved to another partition or forged there are dropped and counted; a
/// member that stops leaves the group, and the other takes its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_events_are_balanced_by_its_consumer_group() {
    const GROUP: &str = "phx.kafka-test.group.audit";
    let server = KafkaServer::start();
    let a = node(&server, "a").await;
    let (on_b, on_c) = (common::counter(), common::counter());
    let mut members = Vec::new();
    for (id, count) in [("b", &on_b), ("c", &on_c)] {
        let member = node(&server, id).await;
        member
            .service("audit")
            .event("order.created", common::counting::<u32>(count))
            .start()
            .await
            .unwrap();
        members.push(member);
    }
    assert!(
        common::serving_nodes(&a, "audit", 2, WAIT).await,
        "a never saw both members"
    );

    for n in 0..40u32 {
        a.emit("order.created", &n).await.unwrap();
    }
    let total = || on_b.load(Ordering::SeqCst) + on_c.load(Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    while total() < 40 {
        assert!(
            Instant::now() < deadline,
            "only {} of 40 events arrived",
            total()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total(), 40, "each event handled once");
    assert!(
        on_b.load(Ordering::SeqCst) > 0 && on_c.load(Ordering::SeqCst) > 0,
        "both members share the group's events"
    );
    assert_eq!(
        records_in(&server, TOPIC).await,
        40,
        "every event went through the group's topic, once"
    );
    let deadline = Instant::now() + WAIT;
    while committed(&server, GROUP, TOPIC).await < 40 {
        assert!(
            Instant::now() < deadline,
            "the group never committed its events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Any client of the cluster can write to a group's topic: a member's record replayed on its
    // partition, moved to another, or garbage is dropped and counted by the member reading it.
    let rejected_before: u64 = members.iter().map(rejected).sum();
    let (partition, captured) = first_record(&server, TOPIC).await;
    let rogue: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.brokers())
        .create()
        .unwrap();
    for (to, record) in [
        (partition, captured.clone()),
        ((partition + 1) % 12, captured),
        (partition, b"garbage".to_vec()),
    ] {
        rogue
            .send(
                FutureRecord::to(TOPIC)
                    .payload(&record)
                    .key("a")
                    .partition(to),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while members.iter().map(rejected).sum::<u64>() < rejected_before + 3 {
        assert!(
            Instant::now() < deadline,
            "the rogue group records were not all counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total(), 40, "nothing rogue was handled");

    // c stops and leaves the group: b takes every event.
    let c = members.pop().unwrap();
    c.stop().await;
    let on_b_before = on_b.load(Ordering::SeqCst);
    for n in 0..10u32 {
        a.emit("order.created", &n).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_b.load(Ordering::SeqCst) < on_b_before + 10 {
        assert!(Instant::now() < deadline, "c's partitions never reached b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.stop().await;
    for member in members {
        member.stop().await;
    }
}

/// A member that crashes (`kill -9`, no goodbye) keeps its partitions until its session times
/// out; then they go to the other member, which handles what was published to them meanwhile —
/// including the events the emitter's registry picked the dead node for. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_members_share_of_a_group_reaches_the_others() {
    let server = KafkaServer::start();
    let secret = common::strong_secret("kafka-crash");
    // The CLI's demo node listens to `demo.**` in its service's group, `demo`.
    let mut crashing = std::process::Command::new(env!("CARGO_BIN_EXE_phalanx"))
        .args(["demo", "--node-id", "doomed", "--kafka", &server.brokers()])
        .args(["--no-shm", "--heartbeat-ms", "300", "--lease-ms", "2500"])
        .env("PHALANX_SECRET", &secret)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("phalanx demo");
    let node = |id: &'static str| {
        Broker::builder()
            .node_id(id)
            .heartbeat(Duration::from_millis(300), Duration::from_millis(2500))
            .stop_grace(Duration::from_millis(50))
            .transport(
                KafkaTransport::builder(server.brokers())
                    .cluster_ca(ClusterCa::secret(secret.clone()))
                    .group_session_timeout(Duration::from_secs(6))
                    .build(),
            )
            .start()
    };
    let emitter = node("emitter").await.unwrap();
    let survivor = node("survivor").await.unwrap();
    let handled = common::counter();
    survivor
        .service("demo")
        .event("demo.**", common::counting::<serde_json::Value>(&handled))
        .start()
        .await
        .unwrap();
    assert!(
        common::serving_nodes(&emitter, "demo", 2, Duration::from_secs(30)).await,
        "the emitter never saw both members"
    );
    // Both members handle a share while both run.
    for n in 0..20u32 {
        emitter.emit("demo.tick", &n).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    let on_doomed = loop {
        let on_doomed: usize = emitter.call("demo.events", ()).await.unwrap_or_default();
        if on_doomed + handled.load(Ordering::SeqCst) >= 20 {
            break on_doomed;
        }
        assert!(Instant::now() < deadline, "the first events never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        on_doomed > 0 && handled.load(Ordering::SeqCst) > 0,
        "both members share the group's events"
    );
    // Past the members' offset commits (every second), then the crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = handled.load(Ordering::SeqCst);
    crashing.kill().unwrap();
    crashing.wait().unwrap();
    for n in 0..30u32 {
        emitter.emit("demo.tick", &n).await.unwrap();
    }
    // The session timeout (6 s) passes, the cluster moves the dead member's partitions.
    let deadline = Instant::now() + Duration::from_secs(40);
    while handled.load(Ordering::SeqCst) < before + 30 {
        assert!(
            Instant::now() < deadline,
            "only {} of 30 events reached the surviving member",
            handled.load(Ordering::SeqCst) - before
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    emitter.stop().await;
    survivor.stop().await;
}
