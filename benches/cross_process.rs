//! Calls between two processes, the way users run them: for each row this bench starts a
//! serving process (itself, re-run with `--serve ROW`) and calls it from this one, in the same
//! run as the raw baselines between two processes — quinn with one long-lived stream and a
//! request-id mux, the same mux over a Unix socket and over TCP, async-nats request-reply — and
//! tarpc over TCP, the RPC framework a Rust team would otherwise pick. Phalanx rows: the mesh
//! over QUIC and over TCP (TLS 1.3), shared memory, NATS.
//!
//! Run: `cargo bench --bench cross_process` (options: `-- --seconds 3 --payload 64 [ROW…]`).
//!
//! For each row: p50/p99 of sequential calls, calls/s with 64 in flight, the CPU each process
//! spent per call in that closed loop (from `/proc`), and the allocations per call on each side
//! (a counting allocator in both processes). The table is printed and written to
//! `target/cross_process.md` and `target/cross_process.json`.
#![allow(clippy::print_stdout)]

#[path = "support/mux.rs"]
mod mux;
#[path = "../tests/common/nats_server.rs"]
mod nats_server;
#[path = "support/process.rs"]
mod process;
#[path = "support/raw_quinn.rs"]
mod raw_quinn;
mod support;
#[path = "support/tarpc_echo.rs"]
mod tarpc_echo;

use bytes::Bytes;
use mux::{MuxClient, echo};
use phalanx::transport::NatsTransport;
use phalanx::{Broker, BrokerBuilder};
use process::{ALLOCATIONS, Server, process_cpu_us, serve_until_stdin_closes};
use std::future::Future;
use std::sync::atomic::Ordering;
use support::{
    IN_FLIGHT, Options, closed_loop, echo_call, mesh_node, nats_request_call, row_link, runtime,
    sequential, serve_echo, wait_for_service,
};

/// The rows, in the order they run: raw baselines first.
const ROWS: [&str; 9] = [
    "raw-quinn",
    "raw-unix",
    "raw-tcp",
    "raw-nats",
    "tarpc",
    "phalanx-quic",
    "phalanx-tcp",
    "phalanx-shm",
    "phalanx-nats",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let row = args.get(i + 1).expect("--serve ROW").clone();
        let nats = args.get(i + 2).cloned().unwrap_or_default();
        runtime().block_on(serve(&row, &nats));
        return;
    }
    let options = Options::from_args();
    let rows = support::chosen_rows(&ROWS);
    let nats = nats_server::NatsServer::start();
    let mut results = Vec::new();
    for row in rows {
        println!("== {row}");
        let figures = runtime().block_on(measure_row(row, &nats.url(), &options));
        println!("   {}", figures.markdown_row());
        results.push(figures);
    }
    report(&results, &options);
}

/// What one row achieved.
#[derive(Debug, serde::Serialize)]
struct RowFigures {
    row: &'static str,
    p50_us: f64,
    p99_us: f64,
    calls_per_sec: f64,
    client_cpu_us_per_call: f64,
    server_cpu_us_per_call: f64,
    client_allocs_per_call: f64,
    server_allocs_per_call: f64,
}

impl RowFigures {
    fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            self.row,
            self.p50_us,
            self.p99_us,
            self.calls_per_sec,
            self.client_cpu_us_per_call,
            self.server_cpu_us_per_call,
            self.client_allocs_per_call,
            self.server_allocs_per_call
        )
    }
}

/// Measures one row: starts its server, connects, measures both phases.
async fn measure_row(row: &'static str, nats: &str, options: &Options) -> RowFigures {
    let mut server = Server::start(&["--serve", row, nats]);
    let body = Bytes::from(vec![7u8; options.payload]);
    match row {
        "raw-quinn" => {
            let client = raw_quinn::client(server.address.parse().expect("address")).await;
            run(row, &mut server, options, client.calls(body)).await
        }
        "raw-unix" => {
            let stream = tokio::net::UnixStream::connect(&server.address)
                .await
                .expect("unix socket");
            let (read, write) = stream.into_split();
            let client = MuxClient::over(read, write);
            run(row, &mut server, options, client.calls(body)).await
        }
        "raw-tcp" => {
            let stream = tokio::net::TcpStream::connect(&server.address)
                .await
                .expect("tcp");
            stream.set_nodelay(true).expect("nodelay");
            let (read, write) = stream.into_split();
            let client = MuxClient::over(read, write);
            run(row, &mut server, options, client.calls(body)).await
        }
        "tarpc" => {
            let address = server.address.parse().expect("address");
            let calls = tarpc_echo::calls(address, body.to_vec()).await;
            run(row, &mut server, options, calls).await
        }
        "raw-nats" => {
            let client = async_nats::connect(nats).await.expect("nats");
            run(row, &mut server, options, nats_request_call(&client, &body)).await
        }
        _ => {
            let caller = phalanx_node(row, "caller", Some(&server.address), nats)
                .start()
                .await
                .expect("caller");
            wait_for_service(&caller, "echo", row_link(row)).await;
            let figures = run(row, &mut server, options, echo_call(&caller, &body)).await;
            caller.stop().await;
            figures
        }
    }
}

/// Sequential p50/p99, then the closed loop with CPU and allocations counted on both sides.
async fn run<F, Fut>(
    row: &'static str,
    server: &mut Server,
    options: &Options,
    call: F,
) -> RowFigures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let (p50_us, p99_us) = sequential(|| call(0)).await;
    let (client_cpu, server_cpu) = (process_cpu_us("/proc/self/stat"), server.cpu_us());
    let (client_allocs, server_allocs) =
        (ALLOCATIONS.load(Ordering::Relaxed), server.allocations());
    let calls_per_sec = closed_loop(options.duration, call).await;
    let calls = calls_per_sec * options.duration.as_secs_f64();
    let per_call = |before: f64, after: f64| (after - before) / calls;
    RowFigures {
        row,
        p50_us,
        p99_us,
        calls_per_sec,
        client_cpu_us_per_call: per_call(client_cpu, process_cpu_us("/proc/self/stat")),
        server_cpu_us_per_call: per_call(server_cpu, server.cpu_us()),
        client_allocs_per_call: per_call(
            client_allocs as f64,
            ALLOCATIONS.load(Ordering::Relaxed) as f64,
        ),
        // The question itself allocates a little on the server: negligible over a closed loop.
        server_allocs_per_call: per_call(server_allocs as f64, server.allocations() as f64),
    }
}

/// A Phalanx node of `row`: the mesh over QUIC (plus shared memory for `phalanx-shm`) or TCP,
/// or NATS.
fn phalanx_node(row: &str, id: &str, seed: Option<&str>, nats: &str) -> BrokerBuilder {
    if row == "phalanx-nats" {
        return Broker::builder()
            .node_id(id)
            .namespace("bench")
            .transport(NatsTransport::builder(nats).build());
    }
    mesh_node(row, id, "bench", seed)
}

/// The serving process: announces `ready ADDRESS`, serves, and answers `allocations` on stdin
/// until stdin closes.
async fn serve(row: &str, nats: &str) {
    let mut broker = None;
    // The raw Unix row's socket file, removed when serving ends.
    let mut socket = None;
    let address = match row {
        "raw-quinn" => raw_quinn::serve().to_string(),
        "tarpc" => tarpc_echo::serve().await.to_string(),
        "raw-unix" => {
            let path =
                std::env::temp_dir().join(format!("phalanx-bench-{}.sock", std::process::id()));
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path).expect("unix socket");
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (read, write) = stream.into_split();
                    tokio::spawn(echo(read, write));
                }
            });
            let address = path.display().to_string();
            socket = Some(path);
            address
        }
        "raw-tcp" => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("tcp");
            let address = listener.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    let (read, write) = stream.into_split();
                    tokio::spawn(echo(read, write));
                }
            });
            address
        }
        "raw-nats" => {
            let client = async_nats::connect(nats).await.expect("nats");
            let mut requests = client.subscribe("bench.echo").await.expect("subscribe");
            client.flush().await.expect("flush");
            tokio::spawn(async move {
                use futures_util::StreamExt;
                while let Some(message) = requests.next().await {
                    if let Some(reply) = message.reply {
                        let _ = client.publish(reply, message.payload).await;
                    }
                }
            });
            String::new()
        }
        _ => {
            let server = phalanx_node(row, "server", None, nats)
                .start()
                .await
                .expect("server broker");
            serve_echo(&server).await;
            let address = server
                .nodes()
                .first()
                .and_then(|n| n.addresses.iter().find(|a| !a.starts_with("shm:")).cloned())
                .unwrap_or_default();
            broker = Some(server);
            address
        }
    };
    serve_until_stdin_closes(&address).await;
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    if let Some(broker) = broker {
        broker.stop().await;
    }
}

/// Prints the table and writes it under `target/`.
fn report(results: &[RowFigures], options: &Options) {
    let mut table = format!(
        "Between two processes, {} B payload, {} s closed loops, same run:\n\n\
         | what | p50 µs | p99 µs | calls/s ({IN_FLIGHT} in flight) | caller CPU µs/call | server CPU µs/call | caller allocs/call | server allocs/call |\n\
         |---|---|---|---|---|---|---|---|\n",
        options.payload,
        options.duration.as_secs_f64()
    );
    for row in results {
        table.push_str(&row.markdown_row());
        table.push('\n');
    }
    let ratio = |ours: &str, raw: &str| {
        let find = |name: &str| results.iter().find(|r| r.row == name);
        if let (Some(o), Some(r)) = (find(ours), find(raw)) {
            format!(
                "- {ours} vs {raw}: p50 {:+.1} µs, calls/s {:.0} %\n",
                o.p50_us - r.p50_us,
                100.0 * o.calls_per_sec / r.calls_per_sec
            )
        } else {
            String::new()
        }
    };
    table.push('\n');
    table.push_str(&ratio("phalanx-quic", "raw-quinn"));
    table.push_str(&ratio("phalanx-quic", "tarpc"));
    table.push_str(&ratio("phalanx-tcp", "raw-tcp"));
    table.push_str(&ratio("phalanx-shm", "raw-unix"));
    table.push_str(&ratio("phalanx-nats", "raw-nats"));
    support::publish("cross_process", &table, &results);
}
