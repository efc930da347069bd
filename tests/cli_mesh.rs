//! Real `phalanx demo` processes on loopback, driven by the CLI and by a broker in this test.

mod common;
#[path = "common/local_server.rs"]
mod local_server;

use common::cluster::quic_loopback;
use phalanx::cluster::NodeInfo;
use phalanx::identity::{CLUSTER_SERVER_NAME, ClusterCa};
use phalanx::transport::{LinkKind, ShmTransport};
use phalanx::{Broker, CallOptions, ErrorKind};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_phalanx");

use common::demo::{Demo, demo, demo_with, rand_u64, secret};

/// Runs a CLI command; returns (exit success, stdout).
fn cli(args: &[&str], secret: &str, seed: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("PHALANX_SECRET", secret)
        .args(["--seed", seed, "--listen", "127.0.0.1:0", "--no-mdns"])
        .env("RUST_LOG", "error")
        .output()
        .expect("phalanx runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn observer(secret: &str, seed: &str) -> Broker {
    observer_from(Broker::builder(), secret, seed).await
}

/// An observer that also takes the shared-memory path to demo nodes on this host.
async fn shm_observer(secret: &str, seed: &str) -> Broker {
    let builder = Broker::builder().transport(ShmTransport::builder().build());
    observer_from(builder, secret, seed).await
}

async fn observer_from(builder: phalanx::BrokerBuilder, secret: &str, seed: &str) -> Broker {
    builder
        .node_id(format!("observer-{:x}", rand_u64() % 0xffff))
        .heartbeat(Duration::from_millis(300), Duration::from_millis(2500))
        .transport(quic_loopback(secret, [seed.to_owned()]))
        .start()
        .await
        .expect("observer")
}

async fn wait_for_nodes(broker: &Broker, ids: &[&str]) {
    let ok = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let up: Vec<String> = broker
                .nodes()
                .into_iter()
                .filter(|n| n.available && n.services.iter().any(|s| s == "demo"))
                .map(|n| n.id)
                .collect();
            if ids.iter().all(|id| up.iter().any(|u| u == id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "nodes {ids:?} never all appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_with_one_seed_each_form_a_mesh_that_the_cli_drives() {
    let s = secret();
    let n1 = demo("n1", &s, &[]);
    let n2 = demo("n2", &s, &[&n1.addr]);
    let n3 = demo("n3", &s, &[&n2.addr]);

    let (ok, out) = cli(&["nodes", "--json"], &s, &n3.addr);
    assert!(ok, "{out}");
    let nodes: Vec<NodeInfo> = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    assert!(
        nodes
            .iter()
            // Same host: shared memory once negotiated, QUIC until then.
            .all(|n| matches!(n.link, LinkKind::Quic | LinkKind::Shm) && n.available)
    );

    // Each node knows the two others although it was given at most one seed.
    let probe = observer(&s, &n1.addr).await;
    wait_for_nodes(&probe, &["n1", "n2", "n3"]).await;
    for id in ["n1", "n2", "n3"] {
        let list = probe
            .call_with::<Vec<NodeInfo>>("$node.list", (), CallOptions::new().node(id))
            .await
            .unwrap();
        let known = list.iter().filter(|n| n.available).count();
        assert!(known >= 3, "{id} knows {known} nodes: {list:?}");
    }

    let (ok, out) = cli(&["call", "demo.add", r#"{"a":2,"b":3}"#], &s, &n1.addr);
    assert!(ok);
    assert_eq!(out.trim(), "5");
    let (ok, out) = cli(&["call", "demo.fail", r#"{"code":418}"#], &s, &n2.addr);
    assert!(!ok, "a failed call exits non-zero");
    let err: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 418);
    assert_eq!(err["type"], "DEMO_FAILURE");

    // Events cross: a broadcast reaches every node, an emit exactly one.
    let counts = |probe: Broker| async move {
        let mut total = 0;
        for id in ["n1", "n2", "n3"] {
            total += probe
                .call_with::<u64>("demo.events", (), CallOptions::new().node(id))
                .await
                .unwrap();
        }
        total
    };
    assert!(cli(&["broadcast", "demo.ping"], &s, &n3.addr).0);
    assert!(cli(&["emit", "demo.ping"], &s, &n3.addr).0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while counts(probe.clone()).await < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        counts(probe.clone()).await,
        4,
        "3 from the broadcast + 1 from the emit"
    );

    let (ok, out) = cli(
        &[
            "bench",
            "demo.echo",
            "{}",
            "--concurrency",
            "8",
            "--duration",
            "1",
            "--json",
        ],
        &s,
        &n1.addr,
    );
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(report["calls_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(report["errors"], 0);
    probe.stop().await;
    drop((n1, n2, n3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_stays_out() {
    let s = secret();
    let n1 = demo("n1", &s, &[]);
    let intruder = demo(
        "intruder",
        "not-the-secret-0123456789abcdefghij",
        &[&n1.addr],
    );
    let (ok, out) = cli(
        &["call", "demo.add", r#"{"a":1,"b":1}"#, "--wait", "1500"],
        "not-the-secret-0123456789abcdefghij",
        &n1.addr,
    );
    assert!(!ok);
    let err: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["name"], "AuthenticationError", "{out}");
    let (ok, out) = cli(&["nodes", "--json", "--wait", "1500"], &s, &n1.addr);
    assert!(ok);
    assert!(!out.contains("intruder"), "{out}");
    drop((n1, intruder));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fails_calls_only_until_the_lease_and_graceful_stop_loses_nothing() {
    let s = secret();
    let n1 = demo("n1", &s, &[]);
    let mut n2 = demo("n2", &s, &[&n1.addr]);
    let probe = observer(&s, &n1.addr).await;
    wait_for_nodes(&probe, &["n1", "n2"]).await;

    let errors_after_down = Arc::new(AtomicU64::new(0));
    let down_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    // The moment the probe's registry declares n2 down, from its own `$node.disconnected`.
    let declared = down_at.clone();
    probe
        .service("watch")
        .event("$node.disconnected", move |_ctx, v: serde_json::Value| {
            let declared = declared.clone();
            async move {
                if v["node"] == "n2" {
                    declared.lock().unwrap().get_or_insert_with(Instant::now);
                }
                Ok(())
            }
        })
        .start()
        .await
        .unwrap();
    let (oks, errs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = |stop: Instant| {
        let (probe, oks, errs, after, down_at) = (
            probe.clone(),
            oks.clone(),
            errs.clone(),
            errors_after_down.clone(),
            down_at.clone(),
        );
        tokio::spawn(async move {
            while Instant::now() < stop {
                let opts = CallOptions::new().timeout(Duration::from_millis(500));
                let started = Instant::now();
                match probe
                    .call_with::<f64>("demo.add", serde_json::json!({"a": 1, "b": 1}), opts)
                    .await
                {
                    Ok(_) => oks.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        // A call started after the node was declared down must not fail.
                        if down_at.lock().unwrap().is_some_and(|d| started > d) {
                            after.fetch_add(1, Ordering::Relaxed);
                        }
                        errs.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let stop = Instant::now() + Duration::from_secs(7);
    let workers: Vec<_> = (0..4).map(|_| load(stop)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // kill -9: no goodbye, no connection close.
    let pid = n2.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-9", &pid])
            .status()
            .unwrap()
            .success()
    );
    let _ = n2.child.wait();
    // Wait until the registry declares n2 down, then no call may fail any more.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let n2_up = probe.nodes().iter().any(|n| n.id == "n2" && n.available);
        if !n2_up && down_at.lock().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "n2 was never declared down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        errors_after_down.load(Ordering::Relaxed),
        0,
        "calls failed after n2 was declared down"
    );
    assert!(oks.load(Ordering::Relaxed) > 100);

    // Graceful stop (SIGTERM) of a replica under load: not a single failed call.
    let n3 = demo("n3", &s, &[&n1.addr]);
    wait_for_nodes(&probe, &["n1", "n3"]).await;
    errs.store(0, Ordering::Relaxed);
    *down_at.lock().unwrap() = None;
    let stop = Instant::now() + Duration::from_secs(3);
    let workers: Vec<_> = (0..4).map(|_| load(stop)).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = n3.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        errs.load(Ordering::Relaxed),
        0,
        "a graceful stop lost calls"
    );
    probe.stop().await;
    drop((n1, n3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_malformed_frames_leave_the_node_serving() {
    let s = secret();
    let n1 = demo("n1", &s, &[]);
    let target: std::net::SocketAddr = n1.addr.parse().unwrap();

    // Raw UDP garbage at the QUIC port.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..(i % 1200 + 1)).map(|b| (b * 31 + i) as u8).collect();
        udp.send_to(&junk, target).unwrap();
    }

    // A member that breaks the protocol in several ways, one connection each.
    let creds = ClusterCa::secret(s.clone()).credentials("rogue").unwrap();
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(creds.client_config().unwrap()).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let codec = phalanx::protocol::codec::Codec::default();
    let hello = codec
        .encode(&phalanx::protocol::packet::Packet::new(
            "rogue",
            phalanx::protocol::packet::PacketBody::Discover(Default::default()),
        ))
        .unwrap();
    let spoofed = codec
        .encode(&phalanx::protocol::packet::Packet::new(
            "n1",
            phalanx::protocol::packet::PacketBody::Disconnect(Default::default()),
        ))
        .unwrap();
    let attacks: Vec<Vec<u8>> = vec![
        vec![0, 0xff, 0xff, 0xff, 0xff], // main stream, 4 GiB frame
        [&[0u8][..], &hello[..], &[0, 0, 0, 3, 1, 99, 0]].concat(), // unknown packet kind
        [&[0u8][..], &hello[..], &[0, 0, 0, 3, 7, 4, 0]].concat(), // wrong protocol version
        [&[0u8][..], &hello[..], &spoofed[..]].concat(), // claims to be the node itself
        (0..5000).map(|i| (i * 7) as u8).collect(), // noise
    ];
    for attack in attacks {
        let conn = endpoint
            .connect(target, CLUSTER_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let mut send = conn.open_uni().await.unwrap();
        let _ = send.write_all(&attack).await;
        let _ = send.finish();
        let closed = tokio::time::timeout(Duration::from_secs(6), conn.closed()).await;
        assert!(
            closed.is_ok(),
            "the node kept a link that broke the protocol"
        );
    }

    let (ok, out) = cli(&["call", "demo.add", r#"{"a":20,"b":22}"#], &s, &n1.addr);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    let probe = observer(&s, &n1.addr).await;
    wait_for_nodes(&probe, &["n1"]).await;
    let err = probe
        .call_with::<f64>("demo.add", "not an object", CallOptions::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    probe.stop().await;
    drop(n1);
}

/// The value of a Prometheus counter (`name{...}` lines whose labels contain `labels`) scraped
/// from `http://addr/metrics`; 0 when absent.
fn scrape(addr: &str, name: &str, labels: &str) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn bench_report(args: &[&str], secret: &str, seed: &str) -> serde_json::Value {
    let (ok, out) = cli(args, secret, seed);
    assert!(ok, "bench failed: {out}");
    serde_json::from_str(&out).expect("bench prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_replica_is_invisible_to_bench_with_retries_and_metrics_agree_with_bench() {
    let secret = secret();
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", local_server::free_port()))
        .collect();
    let m1 = demo_with("m1", &secret, &[], &["--metrics-addr", &metrics[0]]);
    let m2 = demo_with("m2", &secret, &[&m1.addr], &["--metrics-addr", &metrics[1]]);
    let m3 = demo_with(
        "m3",
        &secret,
        &[&m1.addr],
        &["--metrics-addr", &metrics[2], "--fail-rate", "1"],
    );
    let watcher = observer(&secret, &m1.addr).await;
    wait_for_nodes(&watcher, &["m1", "m2", "m3"]).await;
    watcher.stop().await;
    let bench = [
        "bench",
        "demo.echo",
        "1",
        "--calls",
        "3000",
        "--concurrency",
        "6",
        "--replicas",
        "3",
        "--json",
    ];

    // Without retries the calls m3 gets fail, with its code: about a third (the bench starts
    // once all three replicas serve; 3000 calls take a few milliseconds, so waiting for just
    // one would often finish before m3 links); every call is counted once, by the node that
    // served it.
    let plain = bench_report(&bench, &secret, &m1.addr);
    assert_eq!(plain["calls"], 3000);
    let errors = plain["errors"].as_u64().unwrap();
    assert!((500..=1500).contains(&errors), "{plain}");
    assert!(
        plain["first_error"].as_str().unwrap().contains("(503)"),
        "{plain}"
    );
    let handled: Vec<u64> = metrics
        .iter()
        .map(|m| scrape(m, "phalanx_handled_total", r#"action="demo.echo""#))
        .collect();
    assert_eq!(handled.iter().sum::<u64>(), 3000, "{handled:?}");
    assert_eq!(
        scrape(&metrics[2], "phalanx_handler_errors_total", r#"code="503""#),
        errors
    );

    // With retries the caller sees no error at all (fewer calls: each retry backs off 100 ms).
    let mut retried = bench.to_vec();
    retried[4] = "300";
    retried.extend(["--retries", "2"]);
    let retried = bench_report(&retried, &secret, &m1.addr);
    assert_eq!(
        (retried["calls"].as_u64(), retried["errors"].as_u64()),
        (Some(300), Some(0)),
        "{retried}"
    );
    drop((m1, m2, m3));
}

/// The link kind `broker` uses for each node it knows.
async fn links(broker: &Broker) -> std::collections::BTreeMap<String, String> {
    broker
        .nodes()
        .into_iter()
        .filter(|n| n.available)
        .map(|n| (n.id, n.link.to_string()))
        .collect()
}

async fn wait_for_link(broker: &Broker, node: &str, kind: &str) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while links(broker).await.get(node).map(String::as_str) != Some(kind) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{node} never reached over {kind}: {:?}",
        links(broker).await
    );
}

fn dev_shm() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_nodes_talk_over_shared_memory_survive_kill_9_and_renegotiate() {
    let shm_before = dev_shm();
    let s = secret();
    let n1 = demo("s1", &s, &[]);
    let mut n2 = demo("s2", &s, &[&n1.addr]);
    let probe = shm_observer(&s, &n1.addr).await;
    wait_for_nodes(&probe, &["s1", "s2"]).await;
    wait_for_link(&probe, "s1", "shm").await;
    wait_for_link(&probe, "s2", "shm").await;
    // The demo nodes chose shared memory between themselves too, as `phalanx nodes` shows.
    let (ok, out) = cli(&["nodes", "--json", "--no-shm"], &s, &n1.addr);
    assert!(ok, "{out}");
    let s1_view: Vec<NodeInfo> = probe
        .call_with("$node.list", (), CallOptions::new().node("s1"))
        .await
        .unwrap();
    let s2 = s1_view.iter().find(|n| n.id == "s2").expect("s1 knows s2");
    assert_eq!(s2.link, LinkKind::Shm);

    // 1 MiB each way, larger than a ring slot would be: streamed through the ring.
    let big = "x".repeat(1 << 20);
    let echoed: String = probe
        .call_with("demo.echo", big.clone(), CallOptions::new().node("s1"))
        .await
        .unwrap();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big);

    // Events cross the same link.
    probe.broadcast("demo.ping", &1).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n: u64 = probe
                .call_with("demo.events", (), CallOptions::new().node("s1"))
                .await
                .unwrap();
            if n >= 1 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(got.ok(), Some(1));
    let metrics = probe.metrics();
    let shm = metrics
        .links
        .iter()
        .find(|l| l.link == "shm" && l.peer == "s1")
        .expect("shm traffic");
    assert!(
        shm.bytes_sent > 1 << 20 && shm.bytes_received > 1 << 20,
        "{shm:?}"
    );

    // kill -9 of s2 with calls in flight: they fail at once (outcome unknown: they had left),
    // well before their timeout, and s1 keeps serving.
    let in_flight: Vec<_> = (0..8)
        .map(|_| {
            let probe = probe.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let opts = CallOptions::new()
                    .node("s2")
                    .timeout(Duration::from_secs(20));
                let result = probe
                    .call_with::<u64>("demo.sleep", serde_json::json!({"ms": 5000}), opts)
                    .await;
                (result, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    for call in in_flight {
        let (result, took) = call.await.unwrap();
        let err = result.expect_err("the node died");
        assert_eq!(err.kind(), phalanx::ErrorKind::OutcomeUnknown, "{err}");
        assert!(took < Duration::from_secs(3), "took {took:?}: {err}");
    }
    let sum: f64 = probe
        .call("demo.add", serde_json::json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(sum, 5.0);
    assert_eq!(
        links(&probe).await.get("s1").map(String::as_str),
        Some("shm")
    );

    // A restarted s2 negotiates a new link.
    let _n2 = demo("s2", &s, &[&n1.addr]);
    wait_for_link(&probe, "s2", "shm").await;
    let sum: f64 = probe
        .call_with(
            "demo.add",
            serde_json::json!({"a": 1, "b": 1}),
            CallOptions::new().node("s2"),
        )
        .await
        .unwrap();
    assert_eq!(sum, 2.0);

    // kill -9 of the other side, s1: s2 learns it from the socket, long before the lease
    // (2.5 s) would tell, and keeps serving.
    let mut n1 = n1;
    let s2_sees_s1 = |probe: Broker| async move {
        let list: Vec<NodeInfo> = probe
            .call_with("$node.list", (), CallOptions::new().node("s2"))
            .await
            .unwrap();
        list.iter().any(|n| n.id == "s1" && n.available)
    };
    assert!(s2_sees_s1(probe.clone()).await);
    n1.child.kill().unwrap();
    n1.child.wait().unwrap();
    let killed = Instant::now();
    while s2_sees_s1(probe.clone()).await {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "s2 still sees s1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum: f64 = probe
        .call_with(
            "demo.add",
            serde_json::json!({"a": 2, "b": 2}),
            CallOptions::new().node("s2"),
        )
        .await
        .unwrap();
    assert_eq!(sum, 4.0);
    probe.stop().await;
    drop(n1);
    // memfd segments: nothing was ever created in /dev/shm.
    assert_eq!(dev_shm(), shm_before);
}

/// A secret that could be guessed, or a secret file other users can read, stops the CLI with
/// the way out in the message.
#[test]
fn weak_secrets_and_open_secret_files_are_refused_with_the_fix() {
    let run = |configure: &dyn Fn(&mut Command)| {
        let mut command = Command::new(BIN);
        command
            .args(["nodes", "--listen", "127.0.0.1:0", "--no-mdns"])
            .env("RUST_LOG", "off")
            .env_remove("PHALANX_SECRET");
        configure(&mut command);
        let out = command.output().expect("phalanx runs");
        assert!(!out.status.success());
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let said = run(&|c| {
        c.env("PHALANX_SECRET", "demo");
    });
    assert!(said.contains("openssl rand -hex 32"), "{said}");

    let dir = std::env::temp_dir().join(format!("phalanx-cli-secret-{}", rand_u64()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, secret()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = run(&|c| {
        c.arg("--secret-file").arg(&file);
    });
    assert!(
        said.contains(&format!("chmod 600 {}", file.display())),
        "{said}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A `phalanx gateway` process seeded with `seed`; returns it and its HTTP address.
fn gateway(secret: &str, seed: &str, extra: &[&str]) -> (Demo, String) {
    let mut child = Command::new(BIN)
        .args([
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--mesh-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--seed",
            seed,
            "--no-mdns",
            "--heartbeat-ms",
            "300",
            "--lease-ms",
            "2500",
        ])
        .args(extra)
        .env("PHALANX_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("phalanx gateway starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the gateway prints its address");
    let http = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("unexpected banner {line:?}"))
        .to_owned();
    let mesh = line
        .trim()
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap_or("");
    (
        Demo {
            child,
            addr: mesh.to_owned(),
        },
        http,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_command_serves_demo_nodes_over_http() {
    let s = secret();
    let n1 = demo("g1", &s, &[]);
    let _n2 = demo("g2", &s, &[&n1.addr]);
    let (_gw, http_addr) = gateway(
        &s,
        &n1.addr,
        &[
            "--alias",
            "GET /sum/{a}/{b}=demo.add",
            "--blacklist",
            "demo.fail",
        ],
    );
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{http_addr}{path}")).send();
    // The demo service publishes itself: /api/demo/add is there once the gateway sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let sum = loop {
        let response = get("/api/demo/add?a=1&b=2")
            .await
            .expect("the gateway answers");
        if response.status() == 200 {
            break response.text().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "never served: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(sum, "3");
    assert_eq!(
        get("/api/sum/20/22").await.unwrap().text().await.unwrap(),
        "42"
    );
    assert_eq!(get("/api/demo/fail").await.unwrap().status(), 404);
    let echo = http
        .post(format!("http://{http_addr}/api/demo/echo"))
        .json(&serde_json::json!({"hello": [1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        echo.json::<serde_json::Value>().await.unwrap()["hello"][1],
        2
    );
    // demo.area takes Protobuf: the gateway's JSON reaches it through its descriptors.
    let area: serde_json::Value = get("/api/demo/area?width=3&height=3")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(area, serde_json::json!({"area": "9", "square": true}));
    // Streams: a body in (`curl -T file`), a body out (`curl …/bytes?n=N | wc -c`).
    let digest: serde_json::Value = http
        .put(format!("http://{http_addr}/api/demo/digest"))
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 3_000_000])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(digest["len"], 3_000_000);
    assert_eq!(
        digest["sha256"].as_str().map(str::len),
        Some(64),
        "{digest}"
    );
    let download = get("/api/demo/bytes?n=1000001").await.unwrap();
    assert_eq!(download.headers()["content-length"], "1000001");
    assert_eq!(download.bytes().await.unwrap().len(), 1_000_001);
    // Both demo nodes and the gateway itself, once gossip has introduced them all.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = get("/health").await.unwrap();
        assert_eq!(health.status(), 200);
        let health: serde_json::Value = health.json().await.unwrap();
        if health["nodes_available"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn inspection_commands_show_services_actions_events_nodes_round_trips_and_counters() {
    let s = secret();
    let n1 = demo("i1", &s, &[]);
    let _n2 = demo("i2", &s, &[&n1.addr]);
    let json = |args: &[&str]| -> serde_json::Value {
        let (ok, out) = cli(args, &s, &n1.addr);
        assert!(ok, "{args:?}: {out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let (ok, _) = cli(
        &["call", "demo.add", r#"{"a":1,"b":2}"#, "--node", "i2"],
        &s,
        &n1.addr,
    );
    assert!(ok);

    let services = json(&["services", "--json"]);
    let demo_service = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "demo")
        .unwrap_or_else(|| panic!("{services}"));
    let mut nodes: Vec<&str> = demo_service["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["i1", "i2"]);
    let actions = json(&["actions", "--json"]);
    assert!(
        actions
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "demo.digest")
    );
    assert!(
        actions
            .as_array()
            .unwrap()
            .iter()
            .all(|a| !a["name"].as_str().unwrap().starts_with('$'))
    );
    let events = json(&["events", "--json"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "demo.**")
    );

    let info = json(&["info", "i2", "--json"]);
    assert_eq!(info["node"]["id"], "i2");
    assert_eq!(info["health"]["node_id"], "i2");
    assert!(info["health"]["pid"].as_u64().unwrap() > 0);

    let pings = json(&["ping", "--count", "3", "--json"]);
    let pinged: Vec<&str> = pings
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["node"].as_str())
        .collect();
    assert!(pinged.contains(&"i1") && pinged.contains(&"i2"), "{pings}");
    assert!(pings[0]["median_us"].as_f64().unwrap() > 0.0);

    let metrics = json(&["metrics", "i2", "--json"]);
    assert_eq!(metrics[0]["node_id"], "i2");
    assert!(
        metrics[0]["handled"]["demo.add"]["total"].as_u64().unwrap() >= 1,
        "{metrics}"
    );

    // The same as tables.
    let (ok, table) = cli(&["metrics", "i2"], &s, &n1.addr);
    assert!(ok);
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("i2") && l.contains("demo.add")),
        "{table}"
    );
    let (ok, table) = cli(&["ping", "i1", "--count", "1"], &s, &n1.addr);
    assert!(ok);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("i1")),
        "{table}"
    );
}

#[test]
fn top_prints_plain_frames_when_stdout_is_not_a_terminal() {
    let s = secret();
    let n1 = demo("plain1", &s, &[]);
    let (ok, out) = cli(
        &[
            "top",
            "--frames",
            "1",
            "--interval",
            "300",
            "--heartbeat-ms",
            "300",
        ],
        &s,
        &n1.addr,
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("phalanx top"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("plain1") && l.ends_with("up")),
        "{out}"
    );
    assert!(out.contains("ACTION") && out.contains("EVENT"), "{out}");
}

/// `--transport tcp` builds the mesh over TCP, and `phalanx nodes` shows each node's link kind.
#[test]
fn demo_nodes_on_tcp_form_a_mesh_that_nodes_shows_as_tcp() {
    let s = secret();
    let tcp = ["--transport", "tcp", "--no-shm"];
    let t1 = demo_with("t1", &s, &[], &tcp);
    let t2 = demo_with("t2", &s, &[&t1.addr], &tcp);
    let (ok, out) = cli(
        &["nodes", "--json", "--transport", "tcp", "--no-shm"],
        &s,
        &t2.addr,
    );
    assert!(ok, "{out}");
    let nodes: Vec<NodeInfo> = serde_json::from_str(&out).unwrap();
    let mut remote: Vec<(&str, LinkKind)> = nodes
        .iter()
        .filter(|n| n.id.starts_with('t'))
        .map(|n| (n.id.as_str(), n.link))
        .collect();
    remote.sort();
    assert_eq!(remote, [("t1", LinkKind::Tcp), ("t2", LinkKind::Tcp)]);
    let (ok, table) = cli(&["nodes", "--transport", "tcp", "--no-shm"], &s, &t1.addr);
    assert!(ok && table.contains("tcp"), "{table}");
    let (ok, out) = cli(
        &[
            "call",
            "demo.add",
            r#"{"a":20,"b":22}"#,
            "--transport",
            "tcp",
            "--no-shm",
        ],
        &s,
        &t1.addr,
    );
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "42");
    // A Protobuf action, called with JSON from the CLI.
    let (ok, out) = cli(
        &[
            "call",
            "demo.area",
            r#"{"width":3,"height":4}"#,
            "--transport",
            "tcp",
            "--no-shm",
        ],
        &s,
        &t2.addr,
    );
    assert!(ok, "{out}");
    let area: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(area, serde_json::json!({"area": "12", "square": false}));
    drop((t1, t2));
}
