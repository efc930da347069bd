//! Brokers linked by the real QUIC transport on loopback: mutual TLS, seeds, gossip, liveness.

mod common;

use common::cluster::quic_loopback;
use phalanx::transport::{LinkKind, MeshTransport};
use phalanx::{Broker, CallOptions, Context, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn node(id: &str, secret: &str, seeds: &[String]) -> (Broker, MeshTransport) {
    // `RUST_LOG=phalanx=debug cargo test --test quic_mesh` shows what the mesh does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let quic = quic_loopback(secret, seeds.iter().cloned());
    let broker = Broker::builder()
        .node_id(id)
        .namespace("quic-test")
        .transport(quic.clone())
        .heartbeat(Duration::from_millis(200), Duration::from_millis(2000))
        .stop_grace(Duration::from_millis(50))
        .start()
        .await
        .expect("broker starts");
    (broker, quic)
}

fn addr(quic: &MeshTransport) -> String {
    quic.local_addr().unwrap().to_string()
}

async fn wait_until(mut check: impl FnMut() -> bool) -> bool {
    tokio::time::timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seed_each_forms_a_full_mesh_and_calls_cross_it() {
    let (a, qa) = node("a", "s1", &[]).await;
    let (b, qb) = node("b", "s1", &[addr(&qa)]).await;
    let (c, qc) = node("c", "s1", &[addr(&qb)]).await;
    c.service("math")
        .action("add", |_ctx: Context, (x, y): (i64, i64)| async move {
            Ok(x + y)
        })
        .start()
        .await
        .unwrap();
    assert!(
        wait_until(|| qa.linked_nodes() == ["b", "c"] && qc.linked_nodes() == ["a", "b"]).await,
        "a sees {:?}, c sees {:?}",
        qa.linked_nodes(),
        qc.linked_nodes()
    );
    assert_eq!(qb.linked_nodes(), ["a", "c"]);
    a.wait_for_services(&["math"], WAIT).await.unwrap();
    assert_eq!(a.call::<i64>("math.add", (40, 2)).await.unwrap(), 42);
    let nodes = a.nodes();
    assert_eq!((nodes[2].id.as_str(), nodes[2].link), ("c", LinkKind::Quic));
    // A large payload travels on its own stream and arrives intact.
    c.service("echo")
        .action(
            "bytes",
            |_ctx: Context, data: serde_bytes::ByteBuf| async move { Ok(data) },
        )
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
    let big = serde_bytes::ByteBuf::from((0..2_000_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let back: serde_bytes::ByteBuf = a.call("echo.bytes", big.clone()).await.unwrap();
    assert_eq!(back, big);
    for n in [a, b, c] {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_never_joins() {
    let (a, qa) = node("a", "right", &[]).await;
    a.service("vault")
        .action("open", |_ctx: Context, _: ()| async move { Ok("opened") })
        .start()
        .await
        .unwrap();
    let (x, qx) = node("x", "wrong", &[addr(&qa)]).await;
    assert!(wait_until(|| qx.auth_failures() > 0).await);
    assert!(qx.linked_nodes().is_empty() && qa.linked_nodes().is_empty());
    let err = x.call::<String>("vault.open", ()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    let err = qx.authentication_error().expect("an authentication error");
    assert_eq!(err.kind(), ErrorKind::Authentication);
    a.stop().await;
    x.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_peer_fails_calls_at_once_and_graceful_stop_loses_nothing() {
    let (a, qa) = node("a", "s", &[]).await;
    let (b, _qb) = node("b", "s", &[addr(&qa)]).await;
    let started = Arc::new(tokio::sync::Notify::new());
    // `slow.sleep` on `node`, telling `started` when it begins.
    let serve_slow = |node: &Broker| {
        let handling = started.clone();
        node.service("slow")
            .action("sleep", move |_ctx: Context, ms: u64| {
                let handling = handling.clone();
                async move {
                    handling.notify_one();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(ms)
                }
            })
            .start()
    };
    serve_slow(&b).await.unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();

    // Graceful stop: the in-flight call (being handled on b) is answered.
    let caller = a.clone();
    let call = tokio::spawn(async move { caller.call::<u64>("slow.sleep", 300u64).await });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    b.stop().await;
    assert_eq!(call.await.unwrap().unwrap(), 300);
    let err = a.call::<u64>("slow.sleep", 1u64).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);

    // Abrupt loss: a node whose transport dies without DISCONNECT.
    let (c, qc) = node("c", "s", &[addr(&qa)]).await;
    serve_slow(&c).await.unwrap();
    a.wait_for_services(&["slow"], WAIT).await.unwrap();
    let caller = a.clone();
    let call = tokio::spawn(async move {
        caller
            .call_with::<u64>(
                "slow.sleep",
                60_000u64,
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
    });
    tokio::time::timeout(WAIT, started.notified())
        .await
        .unwrap();
    use phalanx::transport::Transporter;
    qc.stop().await; // links close, no DISCONNECT from the broker
    let err = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("failed fast, not at the 60 s timeout")
        .unwrap()
        .unwrap_err();
    // The request had left: whether it ran is unknown, and only an idempotent call retries it.
    assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
    assert!(err.may_have_run());
    a.stop().await;
    drop(c);
}

/// A member's certificate names its node id: a peer holding valid membership but claiming
/// another node's id in its hello is cut off and never enters the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_pose_as_another_node() {
    use phalanx::protocol::codec::Codec;
    use phalanx::protocol::packet::{Info, PROTOCOL_VERSION, Packet, PacketBody};

    let (a, qa) = node("a", "s3cret", &[]).await;
    // A member of the cluster (same secret), certified as "mallory".
    let conn =
        common::cluster::member_connection("s3cret", "mallory", qa.local_addr().unwrap()).await;

    // It says hello as "b".
    let hello = Info {
        namespace: "quic-test".into(),
        protocol_version: PROTOCOL_VERSION,
        seq: 1,
        ..Default::default()
    };
    let frame = Codec::new(1 << 20)
        .encode(&Packet::new("b", PacketBody::Info(hello)))
        .unwrap();
    let mut main = conn.open_uni().await.unwrap();
    main.write_all(&[0]).await.unwrap(); // the main stream's type
    main.write_all(&frame).await.unwrap();
    let closed = tokio::time::timeout(WAIT, conn.closed()).await.unwrap();
    let quinn::ConnectionError::ApplicationClosed(close) = closed else {
        panic!("closed by the node, not {closed:?}");
    };
    assert!(
        String::from_utf8_lossy(&close.reason).contains("node id does not match"),
        "{close:?}"
    );
    assert_eq!(qa.auth_failures(), 1);
    let nodes = a.nodes();
    assert!(nodes.iter().all(|n| n.id != "b"), "{nodes:?}");
    a.stop().await;
}
