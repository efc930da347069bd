//! HTTP requests through the API gateway, between processes, against a raw axum handler doing
//! the same work in the same run: this process is the HTTP client (64 keep-alive connections);
//! each row's server runs in a process of its own (this bench, re-run with `--serve ROW`).
//!
//! Rows:
//! - `raw-axum`: an axum route that reads `a` and `b` from the query and answers their sum as
//!   JSON — what a hand-written HTTP service does;
//! - `gateway-local`: the gateway in front of a `math.add` action on its own node;
//! - `gateway-quic`: the gateway in front of `math.add` on another node (a third process) over
//!   QUIC.
//!
//! Run: `cargo bench --bench gateway` (options: `-- --seconds 3 [ROW…]`). Prints p50/p99 of
//! sequential requests, requests/s with 64 in flight, CPU per request on each side, and writes
//! `target/gateway_bench.md`.
#![allow(clippy::print_stdout)]

#[path = "support/process.rs"]
mod process;
mod support;

use phalanx::Broker;
use phalanx::gateway::{Gateway, Route};
use process::{Server, process_cpu_us, serve_until_stdin_closes};
use serde::Deserialize;
use std::time::Duration;
use support::{IN_FLIGHT, Options, closed_loop, quic_loopback, runtime, sequential};

const ROWS: [&str; 3] = ["raw-axum", "gateway-local", "gateway-quic"];

#[derive(Debug, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let row = args.get(i + 1).expect("--serve ROW").clone();
        let seed = args.get(i + 2).cloned();
        runtime().block_on(serve(&row, seed));
        return;
    }
    let options = Options::from_args();
    let rows = support::chosen_rows(&ROWS);
    let mut lines = Vec::new();
    let mut raw_rate = None;
    for row in rows {
        let figures = runtime().block_on(measure(row, &options));
        let ratio = match raw_rate {
            Some(raw) => format!("{:.0} %", 100.0 * figures.rate / raw),
            None => "—".to_owned(),
        };
        if row == "raw-axum" {
            raw_rate = Some(figures.rate);
        }
        let line = format!(
            "| {row} | {:.1} | {:.1} | {:.0} | {ratio} | {:.1} | {:.1} |",
            figures.p50_us, figures.p99_us, figures.rate, figures.client_cpu, figures.server_cpu
        );
        println!("{line}");
        lines.push(line);
    }
    let table = format!(
        "HTTP GET /…add?a=1&b=2 between processes, {} s closed loops, same run:\n\n\
         | what | p50 µs | p99 µs | requests/s ({IN_FLIGHT} in flight) | vs raw axum | client CPU µs/req | server CPU µs/req |\n\
         |---|---|---|---|---|---|---|\n{}\n",
        options.duration.as_secs_f64(),
        lines.join("\n")
    );
    support::publish_table("gateway_bench", &table);
}

struct RowFigures {
    p50_us: f64,
    p99_us: f64,
    rate: f64,
    client_cpu: f64,
    server_cpu: f64,
}

/// Starts the row's processes and measures requests against them.
async fn measure(row: &str, options: &Options) -> RowFigures {
    // The action's node (another process) for the QUIC row, seeded into the gateway's.
    let service = (row == "gateway-quic").then(|| Server::start(&["--serve", "math-node"]));
    let mut args = vec!["--serve", row];
    if let Some(service) = &service {
        args.push(&service.address);
    }
    let server = Server::start(&args);
    let path = if row == "raw-axum" {
        "/add"
    } else {
        "/api/math/add"
    };
    let url = format!("http://{}{path}?a=1&b=2", server.address);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .expect("HTTP client");
    // Ready when the answer is right (the gateway may still be meeting the action's node).
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.text().await.is_ok_and(|t| t == "3")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "{row} never answered 3");
    let request = move |_: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http.get(&url).send().await.expect("request");
            assert!(response.status().is_success());
            response.bytes().await.expect("body").len()
        }
    };
    let (p50_us, p99_us) = sequential(|| request(0)).await;
    let servers_cpu = || server.cpu_us() + service.as_ref().map_or(0.0, Server::cpu_us);
    let (client_before, server_before) = (process_cpu_us("/proc/self/stat"), servers_cpu());
    let rate = closed_loop(options.duration, request).await;
    let requests = rate * options.duration.as_secs_f64();
    RowFigures {
        p50_us,
        p99_us,
        rate,
        client_cpu: (process_cpu_us("/proc/self/stat") - client_before) / requests,
        server_cpu: (servers_cpu() - server_before) / requests,
    }
}

/// Serves `row` until stdin closes.
async fn serve(row: &str, seed: Option<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let http_addr = listener.local_addr().expect("address").to_string();
    match row {
        "raw-axum" => {
            use axum::extract::Query;
            let app = axum::Router::new().route(
                "/add",
                axum::routing::get(|Query(p): Query<Add>| async move { axum::Json(p.a + p.b) }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
            serve_until_stdin_closes(&http_addr).await;
        }
        "math-node" => {
            let quic = quic_loopback(None);
            let broker = math_node("math", quic.clone()).await;
            let address = quic.local_addr().expect("listening").to_string();
            serve_until_stdin_closes(&address).await;
            broker.stop().await;
        }
        _ => {
            let quic = quic_loopback(seed);
            let broker = if row == "gateway-local" {
                math_node("gateway", quic).await
            } else {
                let broker = Broker::builder()
                    .node_id("gateway")
                    .namespace("bench")
                    .transport(quic)
                    .start()
                    .await
                    .expect("gateway broker");
                broker
                    .wait_for_services(&["math"], Duration::from_secs(10))
                    .await
                    .expect("the math node");
                broker
            };
            let gateway = Gateway::builder(&broker)
                .route(Route::new("/api").auto_aliases())
                .build()
                .await
                .expect("gateway")
                .serve_on(listener)
                .expect("serving");
            serve_until_stdin_closes(&http_addr).await;
            gateway.shutdown().await;
            broker.stop().await;
        }
    }
}

/// A node serving `math.add`, published on gateways.
async fn math_node(id: &str, quic: phalanx::transport::MeshTransport) -> Broker {
    let broker = Broker::builder()
        .node_id(id)
        .namespace("bench")
        .transport(quic)
        .start()
        .await
        .expect("broker");
    broker
        .service("math")
        .action("add", |_ctx, p: Add| async move { Ok(p.a + p.b) })
        .publish_http()
        .start()
        .await
        .expect("math service");
    broker
}
