//! A call between two brokers over QUIC on loopback, next to a raw quinn echo of the same stream
//! shape (one long-lived unidirectional stream each way, length-prefixed frames, request ids
//! matched to waiting callers), measured in the same run.
//!
//! Run: `cargo bench --bench quic_call` (options: `-- --seconds 3 --payload 64`)
//!
//! Prints p50/p99 of sequential round trips (concurrency 1) and calls/s with 64 in flight.
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use phalanx::Broker;
use std::time::Duration;

#[path = "support/mux.rs"]
mod mux;
#[path = "support/raw_quinn.rs"]
mod raw_quinn;
mod support;

use support::{Options, measure, measure_echo, print_table, quic_loopback, runtime, serve_echo};

fn main() {
    let options = Options::from_args();
    runtime().block_on(run(options.duration, options.payload));
}

async fn run(duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    let raw = raw_quinn::client(raw_quinn::serve()).await;
    let raw = measure(duration, raw.calls(body.clone())).await;

    let (caller, callee) = phalanx_pair().await;
    let ours = measure_echo(&caller, &body, duration).await;
    caller.stop().await;
    callee.stop().await;

    print_table(
        &format!("QUIC call, {payload}-byte payload, loopback, one process, 2 worker threads"),
        ("raw quinn, long-lived streams + request-id mux", &raw),
        &[("phalanx `call` over QUIC", &ours)],
    );
}

async fn phalanx_pair() -> (Broker, Broker) {
    let callee_quic = quic_loopback(None);
    let callee = Broker::builder()
        .node_id("callee")
        .transport(callee_quic.clone())
        .start()
        .await
        .expect("callee");
    serve_echo(&callee).await;
    let caller = Broker::builder()
        .node_id("caller")
        .transport(quic_loopback(
            callee_quic.local_addr().map(|a| a.to_string()),
        ))
        .start()
        .await
        .expect("caller");
    caller
        .wait_for_services(&["echo"], Duration::from_secs(10))
        .await
        .expect("mesh");
    (caller, callee)
}
