//! Brokers over the NATS transport, against a real `nats-server` started by the test.
#![cfg(feature = "nats")]

mod common;
#[path = "common/nats_server.rs"]
mod nats_server;

use common::cluster::Cluster;
use common::{counter, counting, settle};
use nats_server::NatsServer;
use phalanx::identity::ClusterCa;
use phalanx::transport::{LinkKind, NatsTransport};
use phalanx::{Broker, BrokerBuilder, CallOptions, Context, ErrorKind};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// A broker of `namespace` on `server`, with a short lease and stop grace.
fn on_nats(builder: BrokerBuilder, server: &NatsServer, namespace: &str) -> BrokerBuilder {
    builder
        .namespace(namespace)
        .heartbeat(Duration::from_millis(200), Duration::from_millis(1000))
        .stop_grace(Duration::from_millis(50))
        .transport(nats_transport(server))
}

/// A NATS transport proving membership of the tests' cluster.
fn nats_transport(server: &NatsServer) -> NatsTransport {
    NatsTransport::builder(server.url())
        .cluster_ca(ClusterCa::secret(common::strong_secret("nats")))
        .build()
}

/// Returns once the server has read everything `client` sent before, its subscriptions
/// included. `flush` only empties the client's buffer: a message another client publishes right
/// after could still miss a subscription the server has not read yet (it reads each client on
/// its own). A message to a subject of `client`'s own makes the round trip: the server reads a
/// client's commands in order.
async fn server_has_seen(client: &async_nats::Client) {
    use futures_util::StreamExt;
    let probe = client.new_inbox();
    let mut echo = client.subscribe(probe.clone()).await.unwrap();
    client.publish(probe, bytes::Bytes::new()).await.unwrap();
    let seen = tokio::time::timeout(WAIT, echo.next()).await;
    assert!(
        matches!(seen, Ok(Some(_))),
        "the NATS server did not answer"
    );
}

async fn node(server: &NatsServer, id: &str, namespace: &str) -> Broker {
    on_nats(Broker::builder().node_id(id), server, namespace)
        .start()
        .await
        .expect("broker on NATS")
}

/// A child process that is killed however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_call_emit_and_broadcast_over_nats() {
    let server = NatsServer::start();
    let cluster = Cluster::start(&["a", "b", "c"], |b| on_nats(b, &server, "shop")).await;
    let (a, b, c) = (cluster.node("a"), cluster.node("b"), cluster.node("c"));
    let (in_b, in_c) = (counter(), counter());
    for (broker, count) in [(b, in_b.clone()), (c, in_c.clone())] {
        broker
            .service("math")
            .action("add", |ctx: Context, (x, y): (i64, i64)| async move {
                Ok((x + y, ctx.broker().node_id().to_owned()))
            })
            .event("order.*", counting::<serde_json::Value>(&count))
            .start()
            .await
            .unwrap();
    }
    a.wait_for_services(&["math"], WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (sum, node): (i64, String) = a.call("math.add", (2, 3)).await.unwrap();
        assert_eq!(sum, 5);
        served_by.insert(node);
    }
    assert_eq!(
        served_by.len(),
        2,
        "calls are balanced across both replicas"
    );
    assert!(
        a.nodes()
            .iter()
            .any(|n| n.id == "b" && n.link == LinkKind::Nats)
    );

    for _ in 0..4 {
        a.emit("order.created", &serde_json::json!({}))
            .await
            .unwrap();
    }
    assert_eq!(
        settle(&in_b, 0).await + settle(&in_c, 0).await,
        4,
        "one handler per emit"
    );
    a.broadcast("order.created", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(
        settle(&in_b, 0).await + settle(&in_c, 0).await,
        6,
        "both on broadcast"
    );

    let err = a
        .call::<(i64, String)>("math.missing", ())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_down_within_the_lease() {
    let server = NatsServer::start();
    let a = node(&server, "a", "").await;
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_phalanx"))
            .args(["demo", "--node-id", "victim", "--nats", &server.url()])
            .args(["--heartbeat-ms", "200", "--lease-ms", "1000"])
            .env("PHALANX_SECRET", common::strong_secret("nats"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    a.wait_for_services(&["demo"], WAIT).await.unwrap();
    assert_eq!(
        a.call::<f64>("demo.add", serde_json::json!({"a": 1, "b": 2}))
            .await
            .unwrap(),
        3.0
    );
    let killed = Instant::now();
    demo.0.kill().unwrap();
    let _ = demo.0.wait();
    loop {
        let up = a.nodes().iter().any(|n| n.id == "victim" && n.available);
        if !up {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "victim never declared down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = a
        .call::<f64>("demo.add", serde_json::json!({"a": 1, "b": 2}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServiceNotFound);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load_fails_fast_then_recovers() {
    let mut server = NatsServer::start();
    let cluster = Cluster::start(&["a", "b"], |b| on_nats(b, &server, "")).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("echo")
        .action("say", |_ctx, s: String| async move { Ok(s) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
    let (oks, errs) = (counter(), counter());
    let slowest_error = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let stop = Instant::now() + Duration::from_secs(6);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (a, oks, errs, slowest) =
                (a.clone(), oks.clone(), errs.clone(), slowest_error.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    let started = Instant::now();
                    let opts = CallOptions::new().timeout(Duration::from_secs(5));
                    match a
                        .call_with::<String>("echo.say", "hi".to_string(), opts)
                        .await
                    {
                        Ok(_) => oks.fetch_add(1, Ordering::SeqCst),
                        Err(err) => {
                            assert_ne!(err.kind(), ErrorKind::Timeout, "a call hung: {err}");
                            let took = started.elapsed();
                            {
                                let mut slowest = slowest.lock().unwrap();
                                *slowest = (*slowest).max(took);
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            errs.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = errs.load(Ordering::SeqCst);
    assert!(during > 0, "calls failed while NATS was down");
    server.spawn();
    // Recovery without a restart: calls succeed again.
    let recovered = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            if a.call::<String>("echo.say", "back".to_string())
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "calls never resumed after NATS came back"
    );
    for w in workers {
        w.await.unwrap();
    }
    assert!(
        *slowest_error.lock().unwrap() < Duration::from_secs(2),
        "errors were not fast"
    );
    let err = {
        server.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        a.call::<String>("echo.say", "x".to_string())
            .await
            .unwrap_err()
    };
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert!(err.message().contains("unavailable"), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_stay_apart_and_malformed_messages_are_dropped() {
    let server = NatsServer::start();
    let a = node(&server, "a", "blue").await;
    let b = node(&server, "b", "green").await;
    b.service("secret")
        .action("get", |_ctx, _: ()| async move { Ok(42) })
        .start()
        .await
        .unwrap();
    let err = a
        .wait_for_services(&["secret"], Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DependencyTimeout);

    let raw = async_nats::connect(server.url()).await.unwrap();
    let junk: [&[u8]; 4] = [b"", b"garbage", &[0, 0, 0, 2, 1, 200], &[0xff; 300]];
    for subject in ["PHX.green.bcast", "PHX.green.node.b"] {
        for payload in junk {
            raw.publish(subject, payload.to_vec().into()).await.unwrap();
        }
    }
    raw.flush().await.unwrap();
    let c = node(&server, "c", "green").await;
    c.wait_for_services(&["secret"], WAIT).await.unwrap();
    assert_eq!(
        c.call::<i32>("secret.get", ()).await.unwrap(),
        42,
        "b still serves"
    );
    for n in [a, b, c] {
        n.stop().await;
    }
}

/// A bus delivers the broadcast subject and a node's own subject independently, so a newcomer's
/// first request or event can reach a node before the newcomer's INFO does. They wait for the
/// introduction instead of being refused or dropped; a sender that never introduces itself is
/// refused. The newcomer here is a member speaking through a bare transport, so the test
/// chooses when its INFO goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_calls_keep_their_order_on_the_bus() {
    // Requests made while others wait leave through the bus's outbox together; their
    // envelopes' sequence numbers must still reach the peer in order (its replay window
    // refuses numbers that fall behind it), and every answer must reach its caller.
    let server = NatsServer::start();
    let cluster = Cluster::start(&["a", "b"], |b| on_nats(b, &server, "burst")).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    b.service("echo")
        .action("say", |_ctx, n: u64| async move { Ok(n) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
    let rejected = |broker: &Broker| broker.metrics().limit_hits["nats_rejected"];
    let before = (rejected(a), rejected(b));
    for burst in 0..10u64 {
        let calls = (0..300u64).map(|i| {
            let a = a.clone();
            let n = burst * 1000 + i;
            tokio::spawn(async move { (n, a.call::<u64>("echo.say", n).await) })
        });
        for call in futures_util::future::join_all(calls).await {
            let (n, answer) = call.unwrap();
            assert_eq!(answer.expect("every call of a burst is answered"), n);
        }
    }
    assert_eq!(
        (rejected(a), rejected(b)),
        before,
        "no envelope was refused (out of order or otherwise)"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_overtakes_its_senders_info_is_served() {
    use phalanx::protocol::packet::{Event, Info, PROTOCOL_VERSION, Packet, PacketBody, Request};
    use phalanx::transport::Transporter;

    let server = NatsServer::start();
    let b = node(&server, "b", "green").await;
    let heard = counter();
    b.service("secret")
        .action("get", |_ctx, _: ()| async move { Ok(42) })
        .event("ghost.said", counting::<String>(&heard))
        .start()
        .await
        .unwrap();
    let (ghost, mut received) = bare_member(&server, "ghost", "green").await;
    let request = |id| {
        Packet::new(
            "ghost",
            PacketBody::Request(Request {
                id,
                action: "secret.get".into(),
                params: rmp_serde::to_vec(&()).unwrap().into(),
                timeout_ms: Some(5_000),
                ..Default::default()
            }),
        )
    };
    // b introduces itself with every heartbeat; until then there is no key to seal with.
    let until = Instant::now() + WAIT;
    let mut sent = Instant::now();
    while ghost.send("b", &request(1)).await.is_err() {
        assert!(Instant::now() < until, "b never introduced itself on NATS");
        tokio::time::sleep(Duration::from_millis(20)).await;
        sent = Instant::now();
    }
    let mut next_response = async || loop {
        let packet = tokio::time::timeout(WAIT, received.recv())
            .await
            .expect("a packet for ghost")
            .unwrap();
        if let PacketBody::Response(response) = packet.body {
            return (Instant::now(), response);
        }
    };
    let (answered, refused) = next_response().await;
    let error = refused.error.expect("an unknown sender is refused");
    assert_eq!(error.code, 503, "{error:?}");
    assert!(error.retryable);
    assert!(
        answered - sent >= Duration::from_millis(900),
        "refused after waiting for an introduction, not at once"
    );

    ghost.send("b", &request(2)).await.unwrap();
    let event = Event {
        event: "ghost.said".into(),
        data: rmp_serde::to_vec("boo").unwrap().into(),
        ..Default::default()
    };
    ghost
        .send("b", &Packet::new("ghost", PacketBody::Event(event)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        heard.load(Ordering::SeqCst),
        0,
        "not before the introduction"
    );
    let info = Info {
        instance_id: "ghost-1".into(),
        namespace: "green".into(),
        protocol_version: PROTOCOL_VERSION,
        seq: 1,
        ..Default::default()
    };
    ghost
        .broadcast(&Packet::new("ghost", PacketBody::Info(info)))
        .await
        .unwrap();
    let (_, served) = next_response().await;
    assert_eq!(served.id, 2);
    assert!(served.error.is_none(), "{:?}", served.error);
    let value: i32 = rmp_serde::from_slice(&served.data.unwrap()).unwrap();
    assert_eq!(value, 42);
    assert_eq!(settle(&heard, 1).await, 1, "the event is delivered once");
    ghost.stop().await;
    b.stop().await;
}

/// Anyone with rights on the subjects — but without the cluster's credentials — publishes what a
/// node would: old-style bare frames, garbage, a member's sealed request replayed, a forged
/// DISCONNECT of a real node. None of it is taken; all of it is counted; the cluster serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_client_without_credentials_cannot_forge_or_replay() {
    use futures_util::StreamExt;
    use phalanx::protocol::codec::Codec;
    use phalanx::protocol::packet::{Disconnect, Packet, PacketBody};

    let server = NatsServer::start();
    let cluster = Cluster::start(&["a", "b"], |b| on_nats(b, &server, "red")).await;
    let (a, b) = (cluster.node("a"), cluster.node("b"));
    let eavesdropper = async_nats::connect(server.url()).await.unwrap();
    let mut broadcasts = eavesdropper.subscribe("PHX.red.bcast").await.unwrap();
    server_has_seen(&eavesdropper).await;
    b.service("echo")
        .action("twice", |_ctx, n: i32| async move { Ok(n * 2) })
        .start()
        .await
        .unwrap();
    a.wait_for_services(&["echo"], WAIT).await.unwrap();
    let raw = async_nats::connect(server.url()).await.unwrap();
    // Record what a sends to b (a sealed request), to replay it.
    let mut tap = raw.subscribe("PHX.red.node.b").await.unwrap();
    server_has_seen(&raw).await;
    assert_eq!(a.call::<i32>("echo.twice", 21).await.unwrap(), 42);
    let captured = tokio::time::timeout(WAIT, tap.next())
        .await
        .unwrap()
        .unwrap();

    // b announced its new service to everyone: not one readable byte of it on the bus.
    let until = Instant::now() + WAIT;
    let mut seen = 0;
    while Instant::now() < until && seen < 3 {
        let message = tokio::time::timeout(WAIT, broadcasts.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            !message.payload.windows(4).any(|w| w == b"echo"),
            "a broadcast readable without the secret"
        );
        seen += 1;
    }

    let codec = Codec::default();
    let forged_bye = codec
        .encode(&Packet::new("a", PacketBody::Disconnect(Disconnect {})))
        .unwrap();
    let before = b.metrics().limit_hits["nats_rejected"];
    for _ in 0..50 {
        raw.publish("PHX.red.bcast", forged_bye.clone())
            .await
            .unwrap();
        raw.publish("PHX.red.node.b", captured.payload.clone())
            .await
            .unwrap();
        raw.publish(
            "PHX.red.node.b",
            bytes::Bytes::from_static(b"PX\x01garbage"),
        )
        .await
        .unwrap();
    }
    raw.flush().await.unwrap();
    let until = Instant::now() + WAIT;
    while b.metrics().limit_hits["nats_rejected"] < before + 150 {
        assert!(Instant::now() < until, "not every forgery was counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b.nodes().iter().any(|n| n.id == "a" && n.available),
        "the forged DISCONNECT did not take a down"
    );
    assert_eq!(a.call::<i32>("echo.twice", 5).await.unwrap(), 10);
    cluster.stop().await;
}

/// A member that speaks through a bare NATS transport: what it receives comes out of the
/// channel.
async fn bare_member(
    server: &NatsServer,
    id: &str,
    namespace: &str,
) -> (
    NatsTransport,
    tokio::sync::mpsc::UnboundedReceiver<phalanx::transport::Packet>,
) {
    use phalanx::protocol::packet::{Disconnect, PacketBody};
    use phalanx::transport::{Packet, TransportContext, TransportHandler, Transporter};

    struct Inbox(tokio::sync::mpsc::UnboundedSender<Packet>);
    impl TransportHandler for Inbox {
        fn on_packet(&self, packet: Packet, _: LinkKind) {
            let _ = self.0.send(packet);
        }
        fn on_link_up(&self, _: &str, _: LinkKind) {}
        fn on_link_down(&self, _: &str, _: LinkKind) {}
        fn on_bus(&self, _: LinkKind, _: bool) {}
        fn hello(&self) -> Packet {
            Packet::new("unused", PacketBody::Disconnect(Disconnect {}))
        }
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let transport = nats_transport(server);
    transport
        .start(TransportContext::new(id, namespace, Arc::new(Inbox(tx))))
        .await
        .expect("the bare member connects");
    (transport, rx)
}
