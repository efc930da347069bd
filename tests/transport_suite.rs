//! The cluster suite — calls, errors, large payloads, events (balanced per group and
//! broadcast), deadlines and node loss — run over every transport: the in-process bus, the mesh
//! over QUIC and over TCP, shared memory, NATS and Kafka (a real `tansu` broker; feature
//! `kafka`).
// Both server helpers carry the small helpers they share (`common/pip_install.rs`,
// `common/local_server.rs`), so each stands alone where it is included; here both are, and
// those are compiled twice.
#![allow(clippy::duplicate_mod)]

mod common;
#[cfg(feature = "kafka")]
#[path = "common/kafka_server.rs"]
mod kafka_server;
#[cfg(feature = "nats")]
#[path = "common/nats_server.rs"]
mod nats_server;

use common::cluster::{Cluster, Over};
use common::{counter, counting, settle};
use phalanx::{Broker, CallOptions, Context, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

/// A cluster over one transport, with what that transport needs kept alive beside it.
struct Setup {
    cluster: Cluster,
    #[cfg(feature = "nats")]
    _nats: Option<nats_server::NatsServer>,
    #[cfg(feature = "kafka")]
    _kafka: Option<kafka_server::KafkaServer>,
}

impl Setup {
    async fn stop(self) {
        self.cluster.stop().await;
    }
}

async fn setup(over: &str, ids: &[&str]) -> Setup {
    #[cfg(feature = "nats")]
    let mut nats = None;
    #[cfg(feature = "kafka")]
    let mut kafka = None;
    let over = match over {
        "inproc" => Over::InProc,
        "quic" => Over::Quic,
        "tcp" => Over::Tcp,
        "shm" => Over::Shm,
        #[cfg(feature = "nats")]
        "nats" => {
            let server = nats_server::NatsServer::start();
            let url = server.url();
            nats = Some(server);
            Over::Nats(url)
        }
        #[cfg(feature = "kafka")]
        "kafka" => {
            let server = kafka_server::KafkaServer::start();
            let brokers = server.brokers();
            kafka = Some(server);
            Over::Kafka(brokers)
        }
        other => panic!("no transport '{other}'"),
    };
    Setup {
        cluster: Cluster::over(&over, ids).await,
        #[cfg(feature = "nats")]
        _nats: nats,
        #[cfg(feature = "kafka")]
        _kafka: kafka,
    }
}

/// Answers, typed errors and payloads larger than a frame's inline limit cross the link.
async fn calls_and_errors(over: &str) {
    let setup = setup(over, &["a", "b"]).await;
    let cluster = &setup.cluster;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("math")
        .action("add", |_ctx, p: Add| async move { Ok(p.a + p.b) })
        .action("echo", |_ctx, text: String| async move { Ok(text) })
        .action("fail", |_ctx, _: ()| async move {
            Err::<(), _>(Error::handler(402, "CARD_DECLINED", "card declined"))
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["math"], WAIT).await.unwrap();

    assert_eq!(
        a.call::<i64>("math.add", Add { a: 2, b: 3 }).await.unwrap(),
        5
    );
    let large = "x".repeat(300 * 1024);
    assert_eq!(
        a.call::<String>("math.echo", large.clone()).await.unwrap(),
        large
    );
    let err = a.call::<()>("math.fail", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Handler);
    assert_eq!((err.code(), err.error_type()), (402, "CARD_DECLINED"));
    assert_eq!(err.node(), Some("b"));
    let err = a.call::<i64>("math.add", "not an Add").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    setup.stop().await;
}

/// An event reaches one member of each group, spread over the group; a broadcast reaches all.
async fn events(over: &str) {
    let setup = setup(over, &["a", "b", "c"]).await;
    let cluster = &setup.cluster;
    let a = cluster.node("a");
    let (orders_b, orders_c, clears) = (counter(), counter(), counter());
    for (node, orders) in [("b", &orders_b), ("c", &orders_c)] {
        cluster
            .node(node)
            .service("audit")
            .event("order.created", counting::<u32>(orders))
            .event("cache.clear", counting::<()>(&clears))
            .start()
            .await
            .unwrap();
    }
    a.wait_for_services(&["audit"], WAIT).await.unwrap();
    assert!(
        common::serving_nodes(a, "audit", 2, WAIT).await,
        "a never saw both listeners"
    );

    for n in 0..20u32 {
        a.emit("order.created", &n).await.unwrap();
    }
    let total = || {
        orders_b.load(std::sync::atomic::Ordering::SeqCst)
            + orders_c.load(std::sync::atomic::Ordering::SeqCst)
    };
    let delivered = tokio::time::timeout(WAIT, async {
        while total() < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(delivered.is_ok(), "only {} of 20 events arrived", total());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(total(), 20, "each event exactly once per group");
    assert!(
        orders_b.load(std::sync::atomic::Ordering::SeqCst) > 0
            && orders_c.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "balanced over the group"
    );

    a.broadcast("cache.clear", &()).await.unwrap();
    assert_eq!(
        settle(&clears, 2).await,
        2,
        "a broadcast reaches every listener"
    );
    setup.stop().await;
}

/// A call's deadline travels with it: the caller gets a timeout when it passes, not later.
async fn deadlines(over: &str) {
    let setup = setup(over, &["a", "b"]).await;
    let cluster = &setup.cluster;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("slow")
        .action("wait", |ctx: Context, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ctx.remaining().map(|r| r.as_millis() as u64))
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();
    let left = a
        .call_with::<Option<u64>>(
            "slow.wait",
            0u64,
            CallOptions::new().timeout(Duration::from_secs(3)),
        )
        .await
        .unwrap();
    assert!(
        left.is_some_and(|ms| ms > 1_000 && ms <= 3_000),
        "the handler sees the caller's deadline: {left:?}"
    );
    let started = Instant::now();
    let err = a
        .call_with::<Option<u64>>(
            "slow.wait",
            5_000u64,
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    setup.stop().await;
}

/// A node that vanishes without a goodbye fails the calls in flight to it, long before their
/// timeout (at once on a link; within the heartbeat lease on a bus).
async fn node_loss(over: &str) {
    let setup = setup(over, &["a", "b"]).await;
    let cluster = &setup.cluster;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let started = Arc::new(tokio::sync::Notify::new());
    let handling = started.clone();
    b.service("slow")
        .action("hang", move |_ctx: Context, _: ()| {
            let handling = handling.clone();
            async move {
                handling.notify_one();
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();
    let caller: Broker = a.clone();
    let call = tokio::spawn(async move {
        caller
            .call_with::<()>(
                "slow.hang",
                (),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
    });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the call reached b");
    cluster.sever("b").await;
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("failed fast, not at the 60 s timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(err.may_have_run() && !err.is_retryable());
    setup.stop().await;
}

/// The suite, once per transport.
macro_rules! suite {
    ($($(#[$attr:meta])* $transport:ident),* $(,)?) => {$(
        $(#[$attr])*
        mod $transport {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn calls_and_errors() {
                super::calls_and_errors(stringify!($transport)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events() {
                super::events(stringify!($transport)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deadlines() {
                super::deadlines(stringify!($transport)).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn node_loss() {
                super::node_loss(stringify!($transport)).await;
            }
        }
    )*};
}

suite!(
    inproc,
    quic,
    tcp,
    shm,
    #[cfg(feature = "nats")]
    nats,
    #[cfg(feature = "kafka")]
    kafka
);
