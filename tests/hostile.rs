//! A member with valid credentials that does what it should not: each test runs a real attacker —
//! a QUIC node holding the cluster secret whose introduction (its INFO) and packets the test
//! writes — against a real victim broker, and checks that the victim keeps serving an honest
//! caller, refuses the attack and counts it.

mod common;

use common::cluster::{Cluster, fast_stop, quic_loopback};
use phalanx::protocol::packet::{
    ActionInfo, Event, EventInfo, Info, PROTOCOL_VERSION, Packet, PacketBody, ServiceInfo,
};
use phalanx::transport::{
    LinkKind, MeshTransport, TransportContext, TransportHandler, Transporter,
};
use phalanx::{Broker, CallOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const SECRET: &str = "hostile-test-secret-0123456789abcdef";
const NAMESPACE: &str = "quic-test";

/// The attacker's side of its links: it introduces itself with whatever INFO the test wrote and
/// ignores what it hears.
struct Rogue {
    id: String,
    info: Info,
}

impl TransportHandler for Rogue {
    fn on_packet(&self, _: Packet, _: LinkKind) {}
    fn on_link_up(&self, _: &str, _: LinkKind) {}
    fn on_link_down(&self, _: &str, _: LinkKind) {}
    fn on_bus(&self, _: LinkKind, _: bool) {}
    fn hello(&self) -> Packet {
        Packet::new(self.id.as_str(), PacketBody::Info(self.info.clone()))
    }
}

/// An INFO as a member would send it, with `services`.
fn info(services: Vec<ServiceInfo>) -> Info {
    Info {
        instance_id: "rogue-instance".into(),
        namespace: NAMESPACE.into(),
        protocol_version: PROTOCOL_VERSION,
        seq: 1,
        services,
        ..Info::default()
    }
}

/// A service named `name` subscribing to `patterns` and offering `actions`.
fn service(name: &str, actions: usize, patterns: &[String]) -> ServiceInfo {
    ServiceInfo {
        full_name: name.into(),
        name: name.into(),
        actions: (0..actions)
            .map(|i| ActionInfo {
                name: format!("{name}.a{i}"),
                ..ActionInfo::default()
            })
            .collect(),
        events: patterns
            .iter()
            .map(|p| EventInfo {
                name: p.clone(),
                group: name.into(),
            })
            .collect(),
        ..ServiceInfo::default()
    }
}

/// Starts the attacker as `id` with `info`, linked to the node listening at `seed`.
async fn rogue(id: &str, info: Info, seed: String) -> MeshTransport {
    let quic = quic_loopback(SECRET, [seed]);
    let handler = Arc::new(Rogue {
        id: id.into(),
        info,
    });
    quic.start(TransportContext::new(id, NAMESPACE, handler))
        .await
        .expect("the attacker's transport starts");
    quic
}

/// A victim and an honest caller on QUIC; the victim serves `echo.ping`.
async fn victim_and_caller() -> (Cluster, String) {
    let cluster = Cluster::quic(&["victim", "caller"], SECRET).await;
    cluster
        .node("victim")
        .service("echo")
        .action("ping", |_ctx, n: u64| async move { Ok(n) })
        .start()
        .await
        .expect("echo starts");
    let seed = victim_address(cluster.node("victim"));
    (cluster, seed)
}

fn victim_address(victim: &Broker) -> String {
    victim
        .nodes()
        .into_iter()
        .find(|n| n.local)
        .and_then(|n| n.addresses.into_iter().next())
        .expect("the victim listens")
}

/// The honest caller still gets answers from the victim, quickly.
async fn still_serves(caller: &Broker) {
    let answer = caller
        .call_with::<u64>(
            "echo.ping",
            7,
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await;
    assert_eq!(answer.expect("the victim still serves"), 7);
}

fn limit_hits(broker: &Broker, limit: &str) -> u64 {
    broker.metrics().limit_hits.get(limit).copied().unwrap_or(0)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < until,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_star_patterns_cannot_stall_event_matching() {
    let (cluster, seed) = victim_and_caller().await;
    // 63 `**` then a segment no event has: the old backtracking matcher took exponential time
    // (and stack) on the first event name with a few dozen segments.
    let stars = vec!["**"; 63].join(".") + ".never";
    let attacker = rogue(
        "rogue-stars",
        info(vec![service("evil", 0, &[stars])]),
        seed,
    )
    .await;
    let victim = cluster.node("victim");
    eventually("the victim knows the attacker", || {
        victim.nodes().iter().any(|n| n.id == "rogue-stars")
    })
    .await;
    let long_name = vec!["seg"; 200].join(".");
    let emitted = tokio::time::timeout(Duration::from_secs(5), victim.emit(&long_name, &1u8)).await;
    assert!(emitted.is_ok(), "matching the event took more than 5 s");
    still_serves(cluster.node("caller")).await;
    attacker.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_or_overlong_info_is_refused_and_counted() {
    let (cluster, seed) = victim_and_caller().await;
    let victim = cluster.node("victim");
    // A million-action INFO does not fit a frame; 5000 is over the 4096 limit and fits.
    let many = rogue(
        "rogue-many",
        info(vec![service("many", 5000, &[])]),
        seed.clone(),
    )
    .await;
    let deep = vec!["x"; 65].join(".");
    let deep = rogue("rogue-deep", info(vec![service("deep", 0, &[deep])]), seed).await;
    eventually("both INFOs refused", || {
        limit_hits(victim, "info_refused") >= 2
    })
    .await;
    let names: Vec<String> = victim.nodes().into_iter().map(|n| n.id).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("rogue")),
        "refused nodes never enter the registry: {names:?}"
    );
    assert!(
        victim
            .actions()
            .iter()
            .all(|a| !a.name.starts_with("many."))
    );
    still_serves(cluster.node("caller")).await;
    many.stop().await;
    deep.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_is_bounded_per_peer() {
    let quic = quic_loopback(SECRET, []);
    let mut limits = phalanx::limits::Limits::default();
    limits.max_peer_events_in_flight = 8;
    let victim = fast_stop(Broker::builder().node_id("victim").namespace(NAMESPACE))
        .limits(limits)
        .transport(quic.clone())
        .start()
        .await
        .expect("victim starts");
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    victim
        .service("sink")
        .event("flood.*", move |_ctx, _: u8| {
            let (r, m) = (r.clone(), m.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .start()
        .await
        .expect("sink starts");
    victim
        .service("echo")
        .action("ping", |_ctx, n: u64| async move { Ok(n) })
        .start()
        .await
        .expect("echo starts");
    let seed = quic.local_addr().expect("listening").to_string();
    let caller = fast_stop(Broker::builder().node_id("caller").namespace(NAMESPACE))
        .transport(quic_loopback(SECRET, [seed.clone()]))
        .start()
        .await
        .expect("caller starts");
    let attacker = rogue("rogue-flood", info(vec![]), seed).await;
    eventually("the victim knows the attacker", || {
        victim
            .nodes()
            .iter()
            .any(|n| n.id == "rogue-flood" && n.available)
    })
    .await;
    let event = Packet::new(
        "rogue-flood",
        PacketBody::Event(Event {
            event: "flood.now".into(),
            data: bytes::Bytes::from_static(&[1]),
            ..Event::default()
        }),
    );
    for _ in 0..2000 {
        attacker
            .send("victim", &event)
            .await
            .expect("the flood is sent");
    }
    eventually("the flood hits the limit", || {
        limit_hits(&victim, "peer_events_in_flight") > 0
    })
    .await;
    assert!(
        most.load(Ordering::SeqCst) <= 8,
        "at most 8 of the attacker's events run at once, saw {}",
        most.load(Ordering::SeqCst)
    );
    eventually("the caller sees the victim's echo", || {
        caller.actions().iter().any(|a| a.name == "echo.ping")
    })
    .await;
    still_serves(&caller).await;
    attacker.stop().await;
    caller.stop().await;
    victim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_make_a_node_buffer_large_frames_without_bound() {
    use phalanx::protocol::codec::Codec;
    use std::sync::atomic::AtomicU64;

    let (cluster, seed) = victim_and_caller().await;
    // A member with valid credentials that introduces itself properly...
    let conn = common::cluster::member_connection(SECRET, "mallory", seed.parse().unwrap()).await;
    let hello = Codec::default()
        .encode(&Packet::new("mallory", PacketBody::Info(info(vec![]))))
        .unwrap();
    let mut main = conn.open_uni().await.unwrap();
    main.write_all(&[0]).await.unwrap();
    main.write_all(&hello).await.unwrap();
    // ...then announces sixteen 16 MiB frames at once and never finishes any of them.
    let accepted = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..16 {
        let (conn, accepted) = (conn.clone(), accepted.clone());
        writers.push(tokio::spawn(async move {
            let Ok(mut stream) = conn.open_uni().await else {
                return;
            };
            let len = (16u32 << 20) - 8;
            let mut head = vec![1u8];
            head.extend_from_slice(&len.to_be_bytes());
            if stream.write_all(&head).await.is_err() {
                return;
            }
            let chunk = vec![0u8; 64 << 10];
            while stream.write_all(&chunk).await.is_ok() {
                accepted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let taken = accepted.load(Ordering::Relaxed);
    // Two frames being read (16 MiB each at most) plus the 8 MiB connection window, and slack
    // for what sits in flight; without the bounds it was every stream's 16 MiB.
    assert!(
        taken <= 44 << 20,
        "the victim took {} MiB from one member",
        taken >> 20
    );
    still_serves(cluster.node("caller")).await;
    for writer in writers {
        writer.abort();
    }
    conn.close(0u32.into(), b"done");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_cannot_point_a_node_at_a_third_party() {
    use phalanx::protocol::packet::PeerInfo;

    let (cluster, seed) = victim_and_caller().await;
    let victim = cluster.node("victim");
    // The third party: a UDP port that counts what reaches it.
    let third = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let third_addr = third.local_addr().unwrap().to_string();
    let heard = Arc::new(AtomicUsize::new(0));
    let counter = heard.clone();
    let listener = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while third.recv_from(&mut buf).await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    // A member gossips ghosts, a real node's id and a garbage record, all at the third party.
    let poisoned = |id: &str, record: Option<&'static [u8]>| PeerInfo {
        node_id: id.into(),
        addresses: vec![third_addr.clone()],
        address_record: record.map(bytes::Bytes::from_static),
    };
    let mut gossip = info(vec![]);
    gossip.peers = (0..20)
        .map(|i| poisoned(&format!("ghost-{i}"), None))
        .chain([
            poisoned("caller", None),
            poisoned("ghost-x", Some(b"\x00\x05ghost")),
        ])
        .collect();
    let before = limit_hits(victim, "dial_hearsay");
    let attacker = rogue("rogue-gossip", gossip, seed).await;
    eventually("the gossip is refused", || {
        limit_hits(victim, "dial_hearsay") >= before + 22
    })
    .await;
    // Longer than a node waits before dialing a peer it heard of (it defers to smaller ids).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        heard.load(Ordering::SeqCst),
        0,
        "packets reached the third party"
    );
    still_serves(cluster.node("caller")).await;
    attacker.stop().await;
    listener.abort();
    cluster.stop().await;
}
