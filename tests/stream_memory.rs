//! A file of 1 GiB through the cluster, each node its own process: uploaded through the
//! gateway, hashed by a service on a second node while it streams on to a service on a third that
//! stores it, downloaded again and compared — with each process's peak memory under 64 MiB. Once
//! over QUIC, once over shared memory.
//!
//! The nodes are this test binary run again with `PHALANX_TEST_ROLE` set (the `role` test below
//! is the entry point; without the variable it does nothing). They say `ready ADDRESS` on stdout
//! and stop when stdin closes.
#![allow(clippy::print_stdout)]

mod common;

use bytes::Bytes;
use futures_util::StreamExt;
use phalanx::gateway::{Gateway, Route};
use phalanx::transport::{LinkKind, ShmTransport};
use phalanx::{Broker, ByteStream, CallOptions, Context, Error};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const GIB: u64 = 1 << 30;
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// A node process, stopped when dropped (by closing its stdin).
struct Node {
    child: Child,
    address: String,
}

impl Node {
    fn start(role: &str, transport: &str, seed: Option<&str>) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this test"))
            .args(["--exact", "role", "--nocapture", "--test-threads", "1"])
            .env("PHALANX_TEST_ROLE", role)
            .env("PHALANX_TEST_TRANSPORT", transport)
            .env("PHALANX_TEST_SEED", seed.unwrap_or(""))
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node process");
        let mut output = BufReader::new(child.stdout.take().expect("stdout"));
        let address = loop {
            let mut line = String::new();
            assert!(
                output.read_line(&mut line).expect("read") > 0,
                "{role} died"
            );
            // libtest may have written `test role ... ` on the same line.
            if let Some((_, address)) = line.trim().rsplit_once("ready ") {
                break address.to_owned();
            }
        };
        // What the harness says after the node stops goes nowhere, but must not hit a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut output, &mut std::io::sink()));
        Self { child, address }
    }

    /// The most resident memory the process has used, KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Entry point of the node processes.
#[test]
fn role() {
    let Ok(role) = std::env::var("PHALANX_TEST_ROLE") else {
        return;
    };
    let transport = std::env::var("PHALANX_TEST_TRANSPORT").unwrap_or_default();
    let seed = std::env::var("PHALANX_TEST_SEED")
        .ok()
        .filter(|s| !s.is_empty());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run_role(&role, &transport, seed));
}

async fn run_role(role: &str, transport: &str, seed: Option<String>) {
    let quic = common::cluster::quic_loopback("stream-memory", seed);
    let mut builder = Broker::builder()
        .node_id(role)
        .namespace(format!("stream-memory-{transport}"))
        .transport(quic.clone());
    if transport == "shm" {
        builder = builder.transport(ShmTransport::builder().build());
    }
    let broker = builder.start().await.expect("broker");
    let mesh = quic.local_addr().expect("listening").to_string();
    let mut gateway = None;
    match role {
        "store" => serve_store(&broker).await,
        "hasher" => serve_hasher(&broker).await,
        _ => {
            broker
                .wait_for_services(&["vault", "store"], Duration::from_secs(10))
                .await
                .expect("the other nodes");
            let served = Gateway::builder(&broker)
                .route(Route::new("/api").auto_aliases())
                .timeout(Duration::from_secs(300))
                .serve("127.0.0.1:0".parse().expect("address"))
                .await
                .expect("gateway");
            gateway = Some(served);
        }
    }
    // Ready once the node reaches the others over the transport under test.
    if role != "store" {
        let link = if transport == "shm" {
            LinkKind::Shm
        } else {
            LinkKind::Quic
        };
        let linked = tokio::time::timeout(Duration::from_secs(10), async {
            while broker
                .nodes()
                .iter()
                .filter(|n| !n.local && n.available && n.link == link)
                .count()
                < if role == "gateway" { 2 } else { 1 }
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(linked.is_ok(), "{role} never linked over {link}");
    }
    let announced = match &gateway {
        Some(served) => served.local_addr().to_string(),
        None => mesh,
    };
    println!("ready {announced}");
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .expect("stdin");
    if let Some(gateway) = gateway {
        gateway.shutdown().await;
    }
    broker.stop().await;
    let _ = std::fs::remove_file(store_path());
}

/// Where the store keeps the file (removed when the node stops: it is a gigabyte).
fn store_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("phalanx-store-{}.bin", std::process::id()))
}

/// `store.put` (a stream in: stored in a file) and `store.get` (the file as a stream).
async fn serve_store(broker: &Broker) {
    let (put_path, get_path) = (store_path(), store_path());
    broker
        .service("store")
        .action("put", move |ctx: Context, _: Value| {
            let path = put_path.clone();
            async move {
                let mut body = ctx
                    .take_stream()
                    .ok_or_else(|| Error::validation("no body"))?;
                let mut file = std::fs::File::create(&path).map_err(io)?;
                let mut len = 0u64;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    len += chunk.len() as u64;
                    file.write_all(&chunk).map_err(io)?;
                }
                Ok(len)
            }
        })
        .action("get", move |_ctx, _: Value| {
            let path = get_path.clone();
            async move {
                let file = tokio::fs::File::open(&path).await.map_err(io)?;
                let len = file.metadata().await.map_err(io)?.len();
                Ok(ByteStream::from_reader(file).with_len(len))
            }
        })
        .start()
        .await
        .expect("store");
}

/// `vault.put` hashes a stream while it flows on to `store.put`; `vault.get` passes
/// `store.get` on.
async fn serve_hasher(broker: &Broker) {
    broker
        .service("vault")
        .action("put", |ctx: Context, _: Value| async move {
            let body = ctx
                .take_stream()
                .ok_or_else(|| Error::validation("no body"))?;
            let sha = Arc::new(Mutex::new(ring::digest::Context::new(
                &ring::digest::SHA256,
            )));
            let hashing = sha.clone();
            let tee = body.map(move |chunk| {
                if let Ok(bytes) = &chunk {
                    hashing.lock().expect("hash").update(bytes);
                }
                chunk
            });
            let stored: u64 = ctx
                .call_with(
                    "store.put",
                    (),
                    // A stream takes as long as it takes: the caller's deadline (the gateway's
                    // five minutes) bounds it, not the broker's 30 s default.
                    CallOptions::new()
                        .stream(ByteStream::new(tee))
                        .timeout(Duration::from_secs(300)),
                )
                .await?;
            let sha = Arc::try_unwrap(sha)
                .map_err(|_| Error::validation("the stream is still being read"))?
                .into_inner()
                .expect("hash");
            Ok(json!({ "len": stored, "sha256": hex(sha.finish().as_ref()) }))
        })
        .action("get", |ctx: Context, _: Value| async move {
            let options = CallOptions::new().timeout(Duration::from_secs(300));
            ctx.call_with::<ByteStream>("store.get", (), options).await
        })
        .publish_http()
        .start()
        .await
        .expect("vault");
}

fn io(err: std::io::Error) -> Error {
    Error::handler(500, "IO", err.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 1 GiB of a fixed pseudo-random sequence, 1 MiB at a time, hashed as it is produced.
fn file(
    sha: Arc<Mutex<ring::digest::Context>>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    futures_util::stream::iter(0..GIB / (1 << 20)).map(move |_| {
        let mut block = Vec::with_capacity(1 << 20);
        for _ in 0..(1 << 17) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            block.extend_from_slice(&state.to_le_bytes());
        }
        sha.lock().expect("hash").update(&block);
        Ok(Bytes::from(block))
    })
}

async fn one_gib_through_three_processes(transport: &str) {
    let store = Node::start("store", transport, None);
    let hasher = Node::start("hasher", transport, Some(&store.address));
    let gateway = Node::start("gateway", transport, Some(&store.address));
    let http = reqwest::Client::new();
    let sent_sha = Arc::new(Mutex::new(ring::digest::Context::new(
        &ring::digest::SHA256,
    )));
    let upload = http
        .put(format!("http://{}/api/vault/put", gateway.address))
        .header("content-type", "application/octet-stream")
        .header("content-length", GIB.to_string())
        .body(reqwest::Body::wrap_stream(file(sent_sha.clone())))
        .send()
        .await
        .expect("upload");
    let status = upload.status();
    let stored: Value = upload.json().await.expect("JSON");
    assert_eq!(status, 200, "{stored}");
    let sent = hex(sent_sha.lock().unwrap().clone().finish().as_ref());
    assert_eq!(stored, json!({ "len": GIB, "sha256": sent }));

    let download = http
        .get(format!("http://{}/api/vault/get", gateway.address))
        .send()
        .await
        .expect("download");
    assert_eq!(
        download.headers()["content-length"],
        GIB.to_string().as_str()
    );
    let mut body = download.bytes_stream();
    let mut got = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        len += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!((len, hex(got.finish().as_ref())), (GIB, sent));

    for (name, node) in [
        ("gateway", &gateway),
        ("hasher", &hasher),
        ("store", &store),
    ] {
        let peak = node.peak_kib();
        assert!(
            peak < PEAK_LIMIT_KIB,
            "{name} peaked at {} MiB over {transport}",
            peak / 1024
        );
        eprintln!("{transport}: {name} peaked at {} MiB", peak / 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_over_quic_in_flat_memory() {
    one_gib_through_three_processes("quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_over_shared_memory_in_flat_memory() {
    one_gib_through_three_processes("shm").await;
}
