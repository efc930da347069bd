//! The Kafka transport against a real Kafka-API broker (`tansu`): a cluster cut off fails calls
//! fast and, once back, is rejoined by itself; records that are not a member's own — garbage, or a
//! member's record replayed by any client of the broker — are dropped and counted.
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
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

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
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
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
    let rejected = |broker: &Broker| {
        broker
            .metrics()
            .limit_hits
            .get("kafka_rejected")
            .copied()
            .unwrap_or(0)
    };
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
