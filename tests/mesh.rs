//! Brokers linked by the real mesh transport on loopback, over QUIC and over TCP: mutual TLS,
//! seeds, gossip, liveness, QUIC preferred and TCP when QUIC gets no answer.

mod common;

use common::cluster::{mesh_loopback, quic_loopback};
use phalanx::identity::ClusterCa;
use phalanx::transport::{LinkKind, MeshConfig, MeshLinks, MeshTransport};
use phalanx::{Broker, CallOptions, Context, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn node(id: &str, secret: &str, seeds: &[String]) -> (Broker, MeshTransport) {
    on(quic_loopback(secret, seeds.iter().cloned()), id).await
}

/// A broker with id `id` on `quic` (any mesh transport).
async fn on(quic: MeshTransport, id: &str) -> (Broker, MeshTransport) {
    // `RUST_LOG=phalanx=debug cargo test --test mesh` shows what the mesh does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    let (a, qa) = node("a", "s3cret", &[]).await;
    // A member of the cluster (same secret), certified as "mallory".
    let conn =
        common::cluster::member_connection("s3cret", "mallory", qa.local_addr().unwrap()).await;

    // It says hello as "b".
    let frame = hello_frame_as("b");
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

/// A hello (this namespace's INFO) framed in the name of `sender`: what an impostor sends.
fn hello_frame_as(sender: &str) -> bytes::Bytes {
    use phalanx::protocol::codec::Codec;
    use phalanx::protocol::packet::{Info, PROTOCOL_VERSION, Packet, PacketBody};
    let hello = Info {
        namespace: "quic-test".into(),
        protocol_version: PROTOCOL_VERSION,
        seq: 1,
        ..Default::default()
    };
    Codec::new(1 << 20)
        .encode(&Packet::new(sender, PacketBody::Info(hello)))
        .unwrap()
}

fn limit_hits(broker: &Broker, limit: &str) -> u64 {
    broker.metrics().limit_hits.get(limit).copied().unwrap_or(0)
}

/// A mesh on TCP alone forms like one on QUIC: seeds, then gossip for the peers nobody seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_mesh_forms_through_seeds_and_gossip() {
    let tcp = |seeds: Vec<String>| mesh_loopback("tcp", MeshLinks::Tcp, seeds);
    let (a, qa) = on(tcp(vec![]), "a").await;
    let (b, qb) = on(tcp(vec![addr(&qa)]), "b").await;
    let (c, qc) = on(tcp(vec![addr(&qb)]), "c").await;
    let formed = wait_until(|| [&qa, &qb, &qc].iter().all(|q| q.linked_nodes().len() == 2)).await;
    assert!(formed, "c learned of a by gossip and linked over TCP");
    assert_eq!(qc.link_kind("a"), Some(LinkKind::Tcp));
    let seen = wait_until(|| {
        a.nodes()
            .iter()
            .filter(|n| !n.local)
            .all(|n| n.available && n.link == LinkKind::Tcp)
            && a.nodes().len() == 3
    })
    .await;
    assert!(seen, "{:?}", a.nodes());
    c.service("math")
        .action("double", |_ctx: Context, n: u64| async move { Ok(n * 2) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["math"], WAIT).await.unwrap();
    assert_eq!(a.call::<u64>("math.double", 21u64).await.unwrap(), 42);
    for broker in [c, b, a] {
        broker.stop().await;
    }
}

/// A node on both prefers QUIC, and falls back to TCP, per peer, when QUIC gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_prefers_quic_and_falls_back_to_tcp_per_peer() {
    let both = |seeds: Vec<String>| {
        let mut config = MeshConfig::default();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.links = MeshLinks::Both;
        config.seeds = seeds;
        config.cluster_ca = Some(ClusterCa::secret(common::strong_secret("both")));
        config.mdns = false;
        config.connect_timeout = Duration::from_millis(500);
        MeshTransport::builder().config(config).build()
    };
    // b listens on TCP only: nothing answers QUIC at its address.
    let (b, qb) = on(mesh_loopback("both", MeshLinks::Tcp, vec![]), "b").await;
    let (a, qa) = on(both(vec![addr(&qb)]), "a").await;
    let (c, qc) = on(both(vec![addr(&qa)]), "c").await;
    let linked = wait_until(|| {
        qa.link_kind("b") == Some(LinkKind::Tcp) && qa.link_kind("c") == Some(LinkKind::Quic)
    })
    .await;
    assert!(
        linked,
        "a-b over TCP, a-c over QUIC: b {:?}, c {:?}",
        qa.link_kind("b"),
        qa.link_kind("c")
    );
    assert!(wait_until(|| qc.link_kind("b") == Some(LinkKind::Tcp)).await);
    b.service("echo")
        .action("say", |_ctx: Context, s: String| async move { Ok(s) })
        .start()
        .await
        .unwrap();
    c.wait_for_services(&["echo"], WAIT).await.unwrap();
    let said = c.call::<String>("echo.say", "over tcp").await.unwrap();
    assert_eq!(said, "over tcp");
    assert_eq!(
        qa.auth_failures() + qb.auth_failures() + qc.auth_failures(),
        0
    );
    for broker in [c, a, b] {
        broker.stop().await;
    }
}

/// Over TCP as over QUIC: a node of another cluster never links, a member cannot speak as
/// another node, and sockets that never finish a handshake are bounded and time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_refuses_strangers_impostors_and_silent_sockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (a, qa) = on(mesh_loopback("s3cret", MeshLinks::Tcp, vec![]), "a").await;
    let a_addr = qa.local_addr().unwrap();

    // A node with another secret.
    let (x, qx) = on(mesh_loopback("other", MeshLinks::Tcp, vec![addr(&qa)]), "x").await;
    assert!(wait_until(|| qx.auth_failures() > 0 && qa.auth_failures() > 0).await);
    assert!(qa.linked_nodes().is_empty() && qx.linked_nodes().is_empty());
    x.stop().await;

    // A member certified as "mallory" saying hello as "b".
    let creds = ClusterCa::secret(common::strong_secret("s3cret"))
        .credentials("mallory")
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(creds.client_config().unwrap()));
    let socket = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    let name =
        rustls::pki_types::ServerName::try_from(phalanx::identity::CLUSTER_SERVER_NAME).unwrap();
    let mut tls = connector
        .connect(name, socket)
        .await
        .expect("a member passes TLS");
    let frame = hello_frame_as("b");
    let before = qa.auth_failures();
    tls.write_all(&frame).await.unwrap();
    tls.flush().await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the node hung up on the impostor");
    assert_eq!(qa.auth_failures(), before + 1);
    assert!(a.nodes().iter().all(|n| n.id != "b"));

    // Sockets that connect and say nothing: beyond 64 at once they are refused and counted;
    // each is dropped after the 5 s hello timeout, and members link again.
    let refused = limit_hits(&a, "link_refused");
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(tokio::net::TcpStream::connect(a_addr).await.unwrap());
    }
    assert!(
        wait_until(|| limit_hits(&a, "link_refused") >= refused + 16).await,
        "the sockets beyond the handshake limit are refused and counted"
    );
    let (b, qb) = on(
        mesh_loopback("s3cret", MeshLinks::Tcp, vec![addr(&qa)]),
        "b",
    )
    .await;
    assert!(
        wait_until(|| qb.link_kind("a") == Some(LinkKind::Tcp)).await,
        "once the silent sockets time out, a member links"
    );
    drop(silent);
    b.stop().await;
    a.stop().await;
}

/// The first request of a burst writes the burst after one yield; a caller that gives up during
/// that yield (its call dropped) must still leave the burst to be written — else the frames
/// queued behind it would wait for the link's next incoming frame (here: the answer of a slow
/// call, long after the others' deadlines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_whose_first_caller_gives_up_still_leaves() {
    for links in [MeshLinks::Quic, MeshLinks::Tcp] {
        // Quiet links: no heartbeat to carry the held frames out by the way.
        let quiet = |mesh: MeshTransport, id: &str| {
            Broker::builder()
                .node_id(id)
                .namespace("quic-test")
                .transport(mesh)
                .heartbeat(Duration::from_secs(10), Duration::from_secs(30))
                .stop_grace(Duration::from_millis(50))
                .start()
        };
        let mesh = mesh_loopback("giveup", links, vec![]);
        let server = quiet(mesh.clone(), "server").await.unwrap();
        let caller = quiet(mesh_loopback("giveup", links, vec![addr(&mesh)]), "caller")
            .await
            .unwrap();
        server
            .service("echo")
            .action("n", |_ctx: Context, n: u32| async move { Ok(n) })
            .action("slow", |_ctx: Context, n: u32| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(n)
            })
            .start()
            .await
            .unwrap();
        caller.wait_for_services(&["echo"], WAIT).await.unwrap();
        // Let the links' introductions and service announcements settle: a frame arriving
        // would carry the held ones out by the way.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fast = CallOptions::new().timeout(Duration::from_millis(1500));
        // Polled in order in one task: the slow call is alone and leaves at once; call 1
        // starts a burst (another call waits) and is dropped in its yield; calls 2.. join it.
        let slow = caller.call::<u32>("echo.slow", 0);
        let calls = (1..32u32).map(|i| {
            let call = caller.call_with::<u32>("echo.n", i, fast.clone());
            async move {
                if i == 1 {
                    // Polled once, to its yield, and dropped.
                    let given_up = futures_util::FutureExt::now_or_never(call);
                    assert!(given_up.is_none(), "the first of the burst was dropped");
                    None
                } else {
                    Some(call.await)
                }
            }
        });
        let (slow, answers) = tokio::join!(slow, futures_util::future::join_all(calls));
        assert_eq!(slow.unwrap(), 0);
        for (i, answer) in (1..).zip(answers) {
            if let Some(answer) = answer {
                assert_eq!(answer.expect("answered before the slow call"), i);
            }
        }
        caller.stop().await;
        server.stop().await;
    }
}

/// Requests made while others wait for their answers leave together: a burst of 64 calls is a
/// handful of writes to the wire, not 64, on QUIC and on TCP — and so are their answers, and
/// every answer still finds its caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_calls_leaves_in_few_writes() {
    for links in [MeshLinks::Quic, MeshLinks::Tcp] {
        let kind = match links {
            MeshLinks::Tcp => LinkKind::Tcp,
            _ => LinkKind::Quic,
        };
        let (server, mesh) = on(mesh_loopback("burst", links, vec![]), "server").await;
        let (caller, _) = on(mesh_loopback("burst", links, vec![addr(&mesh)]), "caller").await;
        server
            .service("echo")
            .action("n", |_ctx: Context, n: u32| async move { Ok(n) })
            .start()
            .await
            .unwrap();
        caller.wait_for_services(&["echo"], WAIT).await.unwrap();
        let sent_to = |broker: &Broker, peer: &str| {
            let metrics = broker.metrics();
            let link = metrics
                .links
                .iter()
                .find(|l| l.peer == peer && l.link == kind.as_str())
                .cloned();
            link.map_or((0, 0), |l| (l.packets_sent, l.writes))
        };
        let (frames_before, writes_before) = sent_to(&caller, "server");
        let (answers_before, answer_writes_before) = sent_to(&server, "caller");
        const ROUNDS: u32 = 20;
        for round in 0..ROUNDS {
            let calls = (0..64u32).map(|i| caller.call::<u32>("echo.n", round * 64 + i));
            let answers = futures_util::future::try_join_all(calls).await.unwrap();
            assert!(answers.iter().copied().eq(round * 64..(round + 1) * 64));
        }
        let (frames, writes) = sent_to(&caller, "server");
        let (frames, writes) = (frames - frames_before, writes - writes_before);
        assert!(frames >= u64::from(ROUNDS) * 64, "{kind}: {frames} frames");
        // Unbatched, every frame is a write of its own.
        assert!(
            writes * 3 <= frames,
            "{kind}: {frames} frames took {writes} writes (fewer than 3 frames a write)"
        );
        // The answers, written from the server's reader as it serves each batch, leave
        // together too.
        let (answers, answer_writes) = sent_to(&server, "caller");
        let (answers, answer_writes) = (
            answers - answers_before,
            answer_writes - answer_writes_before,
        );
        assert!(
            answers >= u64::from(ROUNDS) * 64,
            "{kind}: {answers} answers"
        );
        assert!(
            answer_writes * 3 <= answers,
            "{kind}: {answers} answers took {answer_writes} writes"
        );
        caller.stop().await;
        server.stop().await;
    }
}
