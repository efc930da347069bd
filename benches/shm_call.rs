//! A same-host call over shared memory, next to the same call over QUIC on loopback and a raw
//! Unix-socket echo (the baseline: length-prefixed frames with request ids matched to waiting
//! callers, the same shape as our links), all in the same run. The two brokers of each pair
//! live in this process; the shared-memory link between them is the one two processes use
//! (memfd segment, rings, reader threads).
//!
//! Run: `cargo bench --bench shm_call` (options: `-- --seconds 3 --payload 64`)
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use phalanx::transport::{LinkKind, ShmTransport};
use phalanx::{Broker, BrokerBuilder};
use std::time::Duration;
use tokio::net::UnixStream;

#[path = "support/mux.rs"]
mod mux;
mod support;

use mux::{MuxClient, echo};
use support::{Options, measure, measure_echo, print_table, quic_loopback, runtime, serve_echo};

fn main() {
    let options = Options::from_args();
    runtime().block_on(run(options.duration, options.payload));
}

async fn run(duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    let raw = unix_client().await;
    let raw = measure(duration, raw.calls(body.clone())).await;

    let (caller, callee) = pair(true).await;
    let shm = measure_echo(&caller, &body, duration).await;
    caller.stop().await;
    callee.stop().await;

    let (caller, callee) = pair(false).await;
    let quic = measure_echo(&caller, &body, duration).await;
    caller.stop().await;
    callee.stop().await;

    print_table(
        &format!("Same-host call, {payload}-byte payload, one process, 2 worker threads"),
        ("raw Unix socket, framed echo + request-id mux", &raw),
        &[
            ("phalanx `call` over shared memory", &shm),
            ("phalanx `call` over QUIC (loopback)", &quic),
        ],
    );
}

/// Two brokers on QUIC, and on shared memory too when `shm`; returns once calls take the
/// expected link.
async fn pair(shm: bool) -> (Broker, Broker) {
    let node = |id: &str, seed: Option<String>| {
        let quic = quic_loopback(seed);
        let mut builder: BrokerBuilder = Broker::builder().node_id(id).transport(quic.clone());
        if shm {
            builder = builder.transport(ShmTransport::builder().build());
        }
        (builder, quic)
    };
    let (builder, callee_quic) = node("callee", None);
    let callee = builder.start().await.expect("callee");
    serve_echo(&callee).await;
    let seed = callee_quic.local_addr().expect("listening").to_string();
    let (builder, _) = node("caller", Some(seed));
    let caller = builder.start().await.expect("caller");
    let want = if shm { LinkKind::Shm } else { LinkKind::Quic };
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ready = caller.nodes().into_iter().any(|n| {
                n.id == "callee" && n.link == want && n.services.iter().any(|s| s == "echo")
            });
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("link");
    (caller, callee)
}

/// Raw Unix socket carrying the baseline's frames ([`MuxClient`]); the server echoes what it
/// reads.
async fn unix_client() -> MuxClient<tokio::net::unix::OwnedWriteHalf> {
    let (client, server) = UnixStream::pair().expect("socket pair");
    tokio::spawn(async move {
        let (read, write) = server.into_split();
        echo(read, write).await;
    });
    let (read, write) = client.into_split();
    MuxClient::over(read, write)
}
