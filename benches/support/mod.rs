//! Measurement helpers shared by the transport benches: sequential round trips and a closed
//! loop with a fixed number of calls in flight.
#![allow(dead_code)] // each bench uses part of it

use bytes::Bytes;
use phalanx::identity::ClusterCa;
use phalanx::transport::{LinkKind, MeshLinks, MeshTransport, ShmTransport};
use phalanx::{Broker, BrokerBuilder};
use serde_bytes::ByteBuf;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// Command-line options of the transport benches: `--seconds S --payload BYTES`.
pub(crate) struct Options {
    pub(crate) duration: Duration,
    pub(crate) payload: usize,
}

impl Options {
    /// Parses the process arguments (ignoring the `--bench` cargo passes).
    pub(crate) fn from_args() -> Self {
        let (mut seconds, mut payload) = (3.0, 64);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--seconds" => {
                    seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds)
                }
                "--payload" => {
                    payload = args.next().and_then(|s| s.parse().ok()).unwrap_or(payload)
                }
                _ => {}
            }
        }
        Self {
            duration: Duration::from_secs_f64(seconds),
            payload,
        }
    }
}

/// The rows named on the command line, in `all`'s order; all of them when none is named.
pub(crate) fn chosen_rows(all: &[&'static str]) -> Vec<&'static str> {
    let args: Vec<String> = std::env::args().collect();
    let wanted: Vec<&'static str> = all
        .iter()
        .copied()
        .filter(|row| args.iter().any(|a| a == row))
        .collect();
    if wanted.is_empty() {
        all.to_vec()
    } else {
        wanted
    }
}

/// A QUIC-only mesh transport on a free loopback port with the benches' secret, mDNS off,
/// dialing `seed`.
pub(crate) fn quic_loopback(seed: Option<String>) -> MeshTransport {
    mesh_loopback(MeshLinks::Quic, seed)
}

/// A mesh transport over `links` on a free loopback port with the benches' secret, mDNS off,
/// dialing `seed`.
pub(crate) fn mesh_loopback(links: MeshLinks, seed: Option<String>) -> MeshTransport {
    MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("loopback address"))
        .links(links)
        .cluster_ca(ClusterCa::secret("phalanx-bench-secret-0123456789abcdef"))
        .mdns(false)
        .seeds(seed)
        .build()
}

/// A node of a bench row over the mesh, dialing `seed`: TCP links for `phalanx-tcp`, else QUIC,
/// plus shared memory for `phalanx-shm`.
pub(crate) fn mesh_node(row: &str, id: &str, namespace: &str, seed: Option<&str>) -> BrokerBuilder {
    let links = if row == "phalanx-tcp" {
        MeshLinks::Tcp
    } else {
        MeshLinks::Quic
    };
    let mesh = mesh_loopback(links, seed.filter(|s| !s.is_empty()).map(str::to_owned));
    let builder = Broker::builder()
        .node_id(id)
        .namespace(namespace)
        .transport(mesh);
    if row == "phalanx-shm" {
        builder.transport(ShmTransport::builder().build())
    } else {
        builder
    }
}

/// The link a Phalanx row's calls take.
pub(crate) fn row_link(row: &str) -> LinkKind {
    match row {
        "phalanx-shm" => LinkKind::Shm,
        "phalanx-nats" => LinkKind::Nats,
        "phalanx-tcp" => LinkKind::Tcp,
        _ => LinkKind::Quic,
    }
}

/// Waits until `node` reaches the serving node's (`server`) `service` over `link`.
pub(crate) async fn wait_for_service(node: &Broker, service: &str, link: LinkKind) {
    wait_until(
        || {
            node.nodes().iter().any(|n| {
                n.id == "server" && n.link == link && n.services.iter().any(|s| s == service)
            })
        },
        &format!("the server's {service} service over {link}"),
    )
    .await;
}

/// Looks at `done` every 20 ms for up to 20 s; panics naming `what` if it never holds.
pub(crate) async fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never saw {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The runtime both sides of a bench share: two worker threads, like the machine's two cores.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// What one contender achieved.
pub(crate) struct Figures {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) calls_per_sec: f64,
}

/// Sequential p50/p99, then calls/s with `IN_FLIGHT` in flight for `duration`.
pub(crate) async fn measure<F, Fut>(duration: Duration, call: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let (p50_us, p99_us) = sequential(|| call(0)).await;
    let calls_per_sec = closed_loop(duration, call).await;
    Figures {
        p50_us,
        p99_us,
        calls_per_sec,
    }
}

/// Starts the `echo.bytes` service that [`measure_echo`] calls.
pub(crate) async fn serve_echo(callee: &Broker) {
    callee
        .service("echo")
        .action(
            "bytes",
            |_ctx: phalanx::Context, body: ByteBuf| async move { Ok(body) },
        )
        .start()
        .await
        .expect("echo service");
}

/// One call of `echo.bytes` with `body` by `caller`, as a closure the measurements can run.
pub(crate) fn echo_call(
    caller: &Broker,
    body: &Bytes,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send>> + Clone + Send + 'static
{
    let (caller, body) = (caller.clone(), body.clone());
    move |_: usize| {
        let caller = caller.clone();
        let body = ByteBuf::from(body.to_vec());
        Box::pin(async move {
            caller
                .call::<ByteBuf>("echo.bytes", body)
                .await
                .expect("echo")
                .len()
        })
    }
}

/// One async-nats request-reply of `body` on `bench.echo`, as a closure.
#[cfg(feature = "nats")]
pub(crate) fn nats_request_call(
    client: &async_nats::Client,
    body: &Bytes,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = usize> + Send>> + Clone + Send + 'static
{
    let (client, body) = (client.clone(), body.clone());
    move |_: usize| {
        let (client, body) = (client.clone(), body.clone());
        Box::pin(async move {
            client
                .request("bench.echo", body)
                .await
                .expect("reply")
                .payload
                .len()
        })
    }
}

/// Measures `caller` calling `echo.bytes` with `body` (served by a peer broker).
pub(crate) async fn measure_echo(caller: &Broker, body: &Bytes, duration: Duration) -> Figures {
    measure(duration, echo_call(caller, body)).await
}

/// Prints the baseline, each contender, and how each compares (difference and ratio).
#[allow(clippy::print_stdout)]
pub(crate) fn print_table(
    title: &str,
    baseline: (&str, &Figures),
    contenders: &[(&str, &Figures)],
) {
    let (raw_name, raw) = baseline;
    println!("\n{title}");
    println!("| what | p50 µs | p99 µs | calls/s ({IN_FLIGHT} in flight) |");
    println!("|---|---|---|---|");
    for (name, f) in std::iter::once((raw_name, raw)).chain(contenders.iter().copied()) {
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} |",
            f.p50_us, f.p99_us, f.calls_per_sec
        );
    }
    for (name, our) in contenders {
        println!(
            "| {name} vs baseline | {:+.1} µs ({:.2}×) | {:+.1} µs ({:.2}×) | {:.0} % |",
            our.p50_us - raw.p50_us,
            our.p50_us / raw.p50_us,
            our.p99_us - raw.p99_us,
            our.p99_us / raw.p99_us,
            100.0 * our.calls_per_sec / raw.calls_per_sec
        );
    }
}

/// Prints a bench's markdown `table` and writes it to `target/NAME.md`.
#[allow(clippy::print_stdout)]
pub(crate) fn publish_table(name: &str, table: &str) {
    println!("\n{table}");
    let _ = std::fs::create_dir_all(target_dir());
    let _ = std::fs::write(target_dir().join(format!("{name}.md")), table);
}

/// As [`publish_table`], and writes the `figures` behind it to `target/NAME.json`.
pub(crate) fn publish(name: &str, table: &str, figures: &impl serde::Serialize) {
    publish_table(name, table);
    if let Ok(json) = serde_json::to_string_pretty(figures) {
        let _ = std::fs::write(target_dir().join(format!("{name}.json")), json);
    }
}

fn target_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// Sequential calls measured for p50/p99.
const SEQUENTIAL_CALLS: usize = 20_000;
/// Calls in flight in the closed loop.
pub(crate) const IN_FLIGHT: usize = 64;

/// p50 and p99 in µs of sequential calls.
pub(crate) async fn sequential<F, Fut>(mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    for _ in 0..SEQUENTIAL_CALLS / 10 {
        call().await;
    }
    let mut micros = Vec::with_capacity(SEQUENTIAL_CALLS);
    for _ in 0..SEQUENTIAL_CALLS {
        let start = Instant::now();
        call().await;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
    }
    micros.sort_by(f64::total_cmp);
    (micros[micros.len() / 2], micros[micros.len() * 99 / 100])
}

/// Calls per second with `IN_FLIGHT` callers in a closed loop.
pub(crate) async fn closed_loop<F, Fut>(duration: Duration, call: F) -> f64
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = usize> + Send,
{
    let end = Instant::now() + duration;
    let start = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < end {
                    call(i).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker");
    }
    total as f64 / start.elapsed().as_secs_f64()
}
