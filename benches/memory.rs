//! Memory a node holds for each peer it is linked to and for each call in flight, between two
//! processes, the way users run them. For each row this bench starts a serving node (itself,
//! re-run with `--serve ROW`) and, in this process, peer nodes that link to it:
//!
//! - **per peer**: the server's heap and resident memory before any peer and after `--peers N`
//!   peers have linked to it and each has made one call, divided by N;
//! - **per call in flight**: one peer starts `--calls K` calls of an action that waits until it
//!   is told to answer; once the server runs all K, the heap each side holds (and the server's
//!   resident memory) against before, divided by K. The caller's figure includes the task each
//!   call runs in (the future a user's code holds while it waits).
//!
//! Heap bytes come from a counting allocator in both processes (bytes allocated minus bytes
//! freed, exact); resident memory from `/proc` (pages, so coarse, and it includes the rings a
//! shared-memory link maps). The table is printed and written to `target/memory.md` and
//! `target/memory.json`.
//!
//! Run: `cargo bench --bench memory` (options: `-- --peers 16 --calls 1000 [ROW…]`).
#![allow(clippy::print_stdout)]

#[path = "support/process.rs"]
mod process;
mod support;

use phalanx::transport::LinkKind;
use phalanx::{Broker, Context};
use process::{Counting, HEAP_BYTES, Server, count, serve_questions_until_stdin_closes};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{mesh_node, row_link, runtime, wait_for_service, wait_until};
use tokio::sync::Semaphore;

/// The rows, in the order they run.
const ROWS: [&str; 3] = ["phalanx-quic", "phalanx-tcp", "phalanx-shm"];

/// The namespace of this bench's nodes.
const NAMESPACE: &str = "bench-memory";
/// Calls the serving node runs at once from one peer: under the 1024 a peer may keep running
/// on a node (`Limits::max_peer_in_flight`), so none is refused.
const DEFAULT_CALLS: usize = 1000;
/// Peers linked to the serving node.
const DEFAULT_PEERS: usize = 16;
/// How long memory is left to settle (links that lost a tie closed, buffers returned, timers
/// fired) before it is read: the caller's heap moves by megabytes in the first 200 ms after
/// its peers link, then by a few kilobytes a second.
const SETTLE: Duration = Duration::from_secs(1);

fn main() {
    count(Counting::AllocationsAndHeap);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let row = args.get(i + 1).expect("--serve ROW").clone();
        runtime().block_on(serve(&row));
        return;
    }
    let number_after = |flag: &str, default: usize| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(default)
    };
    let (peers, calls) = (
        number_after("--peers", DEFAULT_PEERS),
        number_after("--calls", DEFAULT_CALLS),
    );
    let mut results = Vec::new();
    for row in support::chosen_rows(&ROWS) {
        println!("== {row}");
        let figures = runtime().block_on(measure_row(row, peers, calls));
        println!("   {}", figures.markdown_row());
        results.push(figures);
    }
    report(&results, peers, calls);
}

/// What one row holds, in bytes.
#[derive(Debug, serde::Serialize)]
struct RowMemory {
    row: &'static str,
    server_heap_alone: f64,
    server_heap_per_peer: f64,
    server_resident_per_peer: f64,
    caller_heap_per_call: f64,
    server_heap_per_call: f64,
    server_resident_per_call: f64,
}

impl RowMemory {
    fn markdown_row(&self) -> String {
        format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            self.row,
            self.server_heap_alone,
            self.server_heap_per_peer,
            self.server_resident_per_peer,
            self.caller_heap_per_call,
            self.server_heap_per_call,
            self.server_resident_per_call,
        )
    }
}

/// Measures one row: its server alone, with `peers` peers, then with `calls` calls in flight
/// from the first of them.
async fn measure_row(row: &'static str, peers: usize, calls: usize) -> RowMemory {
    let mut server = Server::start(&["--serve", row]);
    tokio::time::sleep(SETTLE).await;
    let (heap_alone, resident_alone) = (server.heap_bytes(), server.resident_bytes());

    let mut nodes = Vec::with_capacity(peers);
    for i in 0..peers {
        let node = mesh_node(row, &format!("peer{i}"), NAMESPACE, Some(&server.address))
            .start()
            .await
            .expect("peer node");
        nodes.push(node);
    }
    for node in &nodes {
        wait_for_service(node, "hold", row_link(row)).await;
        node.call::<()>("hold.now", ()).await.expect("a first call");
    }
    // The peers find each other too (the mesh is full): links forming later would be counted
    // as the calls' memory.
    for node in &nodes {
        wait_until(
            || linked_to(node, row_link(row)) == peers,
            "every peer linked to every other",
        )
        .await;
    }
    wait_until(
        || server.ask("peers") == peers.to_string(),
        "every peer linked",
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    let (heap_linked, resident_linked) = (server.heap_bytes(), server.resident_bytes());
    let per_peer = |alone: f64, linked: f64| (linked - alone) / peers as f64;

    let caller = nodes[0].clone();
    let mut running = Vec::with_capacity(calls);
    let caller_before = HEAP_BYTES.load(Ordering::Relaxed);
    for _ in 0..calls {
        let caller = caller.clone();
        running.push(tokio::spawn(async move {
            caller.call::<()>("hold.wait", ()).await
        }));
    }
    wait_until(
        || server.ask("held") == calls.to_string(),
        "every call running",
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    let caller_after = HEAP_BYTES.load(Ordering::Relaxed);
    let (heap_held, resident_held) = (server.heap_bytes(), server.resident_bytes());
    assert_eq!(server.ask("release"), "released");
    for call in running {
        call.await.expect("call task").expect("a held call answers");
    }
    let per_call = |before: f64, during: f64| (during - before) / calls as f64;
    for node in nodes {
        node.stop().await;
    }
    RowMemory {
        row,
        server_heap_alone: heap_alone as f64,
        server_heap_per_peer: per_peer(heap_alone as f64, heap_linked as f64),
        server_resident_per_peer: per_peer(resident_alone, resident_linked),
        caller_heap_per_call: per_call(caller_before as f64, caller_after as f64),
        server_heap_per_call: per_call(heap_linked as f64, heap_held as f64),
        server_resident_per_call: per_call(resident_linked, resident_held),
    }
}

/// How many other nodes `node` reaches over `link`.
fn linked_to(node: &Broker, link: LinkKind) -> usize {
    node.nodes()
        .iter()
        .filter(|n| !n.local && n.available && n.link == link)
        .count()
}

/// Calls of `hold.wait` running on the serving node.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// Closed when the held calls may answer.
static RELEASE: Semaphore = Semaphore::const_new(0);

/// The serving process: a node with the `hold` service (`now` answers at once, `wait` when
/// released), answering `peers`, `held` and `release` on stdin besides the heap.
async fn serve(row: &str) {
    let server = mesh_node(row, "server", NAMESPACE, None)
        .start()
        .await
        .expect("server node");
    server
        .service("hold")
        .action("now", |_ctx: Context, _: ()| async { Ok(()) })
        .action("wait", |_ctx: Context, _: ()| async {
            HELD.fetch_add(1, Ordering::SeqCst);
            // Closed, not given permits: every waiting call goes on at once.
            let _ = RELEASE.acquire().await;
            Ok(())
        })
        .start()
        .await
        .expect("hold service");
    let address = server
        .nodes()
        .first()
        .and_then(|n| n.addresses.iter().find(|a| !a.starts_with("shm:")).cloned())
        .unwrap_or_default();
    let (view, link) = (server.clone(), row_link(row));
    serve_questions_until_stdin_closes(&address, move |question| match question {
        "peers" => Some(linked_to(&view, link).to_string()),
        "held" => Some(HELD.load(Ordering::SeqCst).to_string()),
        "release" => {
            RELEASE.close();
            Some("released".to_owned())
        }
        _ => None,
    })
    .await;
    server.stop().await;
}

/// Prints the table and writes it under `target/`.
fn report(results: &[RowMemory], peers: usize, calls: usize) {
    let mut table = format!(
        "Bytes held between two processes: per peer ({peers} peers linked, one call each), \
         per call in flight ({calls} calls from one peer waiting in the server's handler):\n\n\
         | what | server heap alone | server heap / peer | server resident / peer | caller heap / call | server heap / call | server resident / call |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for row in results {
        table.push_str(&row.markdown_row());
        table.push('\n');
    }
    support::publish("memory", &table, &results);
}
