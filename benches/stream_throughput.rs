//! A byte stream sent to another process, through Phalanx and through the raw transport under it,
//! in the same run: a quinn stream copy and a Unix-socket copy as baselines; a `sink.size`
//! action reading a `ByteStream` over QUIC and over shared memory. Each row's server runs in a
//! process of its own (this bench, re-run with `--serve ROW`).
//!
//! Run: `cargo bench --bench stream_throughput` (options: `-- --mib 256 [ROW…]`). Prints the
//! median MiB/s of three transfers per row, the ratio to its raw baseline, and the CPU both sides
//! spent per MiB; writes `target/stream_throughput.md`.
#![allow(clippy::print_stdout)]

#[path = "support/process.rs"]
mod process;
mod support;

use bytes::Bytes;
use futures_util::StreamExt;
use phalanx::identity::{CLUSTER_SERVER_NAME, ClusterCa};
use phalanx::transport::{LinkKind, ShmTransport};
use phalanx::{Broker, ByteStream, CallOptions, Context, Error};
use process::{Server, process_cpu_us, serve_until_stdin_closes};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{quic_loopback, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROWS: [&str; 4] = ["raw-quinn", "raw-unix", "phalanx-quic", "phalanx-shm"];
const BLOCK: usize = 64 * 1024;
const SECRET: &str = "stream-bench-secret-0123456789abcdef";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let row = args.get(i + 1).expect("--serve ROW").clone();
        runtime().block_on(serve(&row));
        return;
    }
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|m| m.parse().ok())
        .unwrap_or(256);
    let rows = support::chosen_rows(&ROWS);
    let mut lines = Vec::new();
    let mut rates: Vec<(&str, f64)> = Vec::new();
    for row in rows {
        let (rate, client_cpu, server_cpu) = runtime().block_on(measure(row, mib));
        let baseline = match row {
            "phalanx-quic" => rates.iter().find(|(r, _)| *r == "raw-quinn"),
            "phalanx-shm" => rates.iter().find(|(r, _)| *r == "raw-unix"),
            _ => None,
        };
        let ratio = baseline.map_or("—".to_owned(), |(_, raw)| {
            format!("{:.0} %", 100.0 * rate / raw)
        });
        rates.push((row, rate));
        let line = format!("| {row} | {rate:.0} | {ratio} | {client_cpu:.0} | {server_cpu:.0} |");
        println!("{line}");
        lines.push(line);
    }
    let table = format!(
        "{mib} MiB sent to another process, median of 3, same run:\n\n\
         | what | MiB/s | vs raw | sender CPU µs/MiB | receiver CPU µs/MiB |\n\
         |---|---|---|---|---|\n{}\n",
        lines.join("\n")
    );
    support::publish_table("stream_throughput", &table);
}

/// `mib` MiB of one shared block, without a copy per chunk.
fn payload(mib: usize) -> impl Iterator<Item = Bytes> {
    let block = Bytes::from(vec![0x5a_u8; BLOCK]);
    std::iter::repeat_n(block, mib * 1024 * 1024 / BLOCK)
}

/// Median MiB/s of three transfers, and the CPU per MiB of each side.
async fn measure(row: &str, mib: usize) -> (f64, f64, f64) {
    let server = Server::start(&["--serve", row]);
    let send = Sender::connect(row, &server.address).await;
    send.transfer(1).await; // warm up
    let mut rates = Vec::new();
    let (client_before, server_before) = (process_cpu_us("/proc/self/stat"), server.cpu_us());
    for _ in 0..3 {
        let started = Instant::now();
        let received = send.transfer(mib).await;
        assert_eq!(received, (mib * 1024 * 1024) as u64, "{row} lost bytes");
        rates.push(mib as f64 / started.elapsed().as_secs_f64());
    }
    let moved = 3.0 * mib as f64;
    let client_cpu = (process_cpu_us("/proc/self/stat") - client_before) / moved;
    let server_cpu = (server.cpu_us() - server_before) / moved;
    rates.sort_by(f64::total_cmp);
    send.close().await;
    (rates[1], client_cpu, server_cpu)
}

/// The sending side of one row.
enum Sender {
    Quinn(quinn::Connection),
    Unix(String),
    Phalanx(Broker),
}

impl Sender {
    async fn connect(row: &str, address: &str) -> Self {
        match row {
            "raw-quinn" => {
                let creds = ClusterCa::secret(SECRET).credentials("raw").expect("creds");
                let tls = creds.client_config().expect("tls");
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
                let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr"))
                    .expect("endpoint");
                endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
                let address = address.parse().expect("address");
                let conn = endpoint
                    .connect(address, CLUSTER_SERVER_NAME)
                    .expect("connect")
                    .await
                    .expect("connection");
                Self::Quinn(conn)
            }
            "raw-unix" => Self::Unix(address.to_owned()),
            _ => {
                let mut builder = Broker::builder()
                    .node_id("sender")
                    .namespace("stream-bench")
                    .transport(quic_loopback(Some(address.to_owned())));
                if row == "phalanx-shm" {
                    builder = builder.transport(ShmTransport::builder().build());
                }
                let broker = builder.start().await.expect("broker");
                let link = if row == "phalanx-shm" {
                    LinkKind::Shm
                } else {
                    LinkKind::Quic
                };
                let found = tokio::time::timeout(Duration::from_secs(10), async {
                    while !broker
                        .nodes()
                        .iter()
                        .any(|n| n.id == "receiver" && n.link == link && !n.services.is_empty())
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                assert!(found.is_ok(), "the receiver never appeared over {link}");
                Self::Phalanx(broker)
            }
        }
    }

    /// Sends `mib` MiB; returns what the receiver counted.
    async fn transfer(&self, mib: usize) -> u64 {
        match self {
            Self::Quinn(conn) => {
                let (mut send, mut receive) = conn.open_bi().await.expect("stream");
                for block in payload(mib) {
                    send.write_chunk(block).await.expect("write");
                }
                send.finish().expect("finish");
                receive.read_u64().await.expect("count")
            }
            Self::Unix(path) => {
                let mut socket = tokio::net::UnixStream::connect(path).await.expect("socket");
                socket
                    .write_u64((mib * 1024 * 1024) as u64)
                    .await
                    .expect("length");
                for block in payload(mib) {
                    socket.write_all(&block).await.expect("write");
                }
                socket.read_u64().await.expect("count")
            }
            Self::Phalanx(broker) => {
                let body = ByteStream::new(futures_util::stream::iter(payload(mib).map(Ok)));
                broker
                    .call_with("sink.size", (), CallOptions::new().stream(body))
                    .await
                    .expect("sink.size")
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Quinn(conn) => conn.close(0u32.into(), b"done"),
            Self::Unix(_) => {}
            Self::Phalanx(broker) => broker.stop().await,
        }
    }
}

/// Serves `row` until stdin closes.
async fn serve(row: &str) {
    match row {
        "raw-quinn" => {
            let creds = ClusterCa::secret(SECRET).credentials("raw").expect("creds");
            let tls = creds.server_config().expect("tls");
            let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic");
            let endpoint = quinn::Endpoint::server(
                quinn::ServerConfig::with_crypto(Arc::new(crypto)),
                "127.0.0.1:0".parse().expect("addr"),
            )
            .expect("endpoint");
            let address = endpoint.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                while let Some(incoming) = endpoint.accept().await {
                    let Ok(conn) = incoming.await else { continue };
                    tokio::spawn(async move {
                        while let Ok((mut send, mut receive)) = conn.accept_bi().await {
                            let mut count = 0u64;
                            while let Ok(Some(chunk)) = receive.read_chunk(BLOCK, true).await {
                                count += chunk.bytes.len() as u64;
                            }
                            let _ = send.write_u64(count).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
            serve_until_stdin_closes(&address).await;
        }
        "raw-unix" => {
            let path =
                std::env::temp_dir().join(format!("phalanx-stream-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).expect("socket");
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let Ok(len) = socket.read_u64().await else {
                            return;
                        };
                        let mut buf = vec![0u8; BLOCK];
                        let mut count = 0u64;
                        while count < len {
                            match socket.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => count += n as u64,
                            }
                        }
                        let _ = socket.write_u64(count).await;
                    });
                }
            });
            serve_until_stdin_closes(&path.display().to_string()).await;
        }
        _ => {
            let quic = quic_loopback(None);
            let mut builder = Broker::builder()
                .node_id("receiver")
                .namespace("stream-bench")
                .transport(quic.clone());
            if row == "phalanx-shm" {
                builder = builder.transport(ShmTransport::builder().build());
            }
            let broker = builder.start().await.expect("broker");
            broker
                .service("sink")
                .action("size", |ctx: Context, _: ()| async move {
                    let mut body = ctx
                        .take_stream()
                        .ok_or_else(|| Error::validation("no body"))?;
                    let mut count = 0u64;
                    while let Some(chunk) = body.next().await {
                        count += chunk?.len() as u64;
                    }
                    Ok(count)
                })
                .start()
                .await
                .expect("sink");
            let address = quic.local_addr().expect("listening").to_string();
            serve_until_stdin_closes(&address).await;
            broker.stop().await;
        }
    }
}
