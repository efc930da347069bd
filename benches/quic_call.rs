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
use phalanx::identity::{CLUSTER_SERVER_NAME, ClusterCa};
use phalanx::transport::QuicTransport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[path = "support/mux.rs"]
mod mux;
mod support;

use mux::{MuxClient, echo};
use support::{Options, measure, measure_echo, print_table, runtime, serve_echo};

fn main() {
    let options = Options::from_args();
    runtime().block_on(run(options.duration, options.payload));
}

async fn run(duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    let raw = raw_client().await;
    let raw_call = {
        let (raw, body) = (raw.clone(), body.clone());
        move |_: usize| {
            let (raw, body) = (raw.clone(), body.clone());
            async move { raw.call(body).await }
        }
    };
    let raw = measure(duration, raw_call).await;

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
    let quic = |seed: Option<SocketAddr>| {
        let mut b = QuicTransport::builder()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cluster_ca(ClusterCa::secret("bench"))
            .mdns(false);
        if let Some(seed) = seed {
            b = b.seed(seed.to_string());
        }
        b.build()
    };
    let callee_quic = quic(None);
    let callee = Broker::builder()
        .node_id("callee")
        .transport(callee_quic.clone())
        .start()
        .await
        .expect("callee");
    serve_echo(&callee).await;
    let caller = Broker::builder()
        .node_id("caller")
        .transport(quic(callee_quic.local_addr()))
        .start()
        .await
        .expect("caller");
    caller
        .wait_for_services(&["echo"], Duration::from_secs(10))
        .await
        .expect("mesh");
    (caller, callee)
}

/// Raw quinn: one unidirectional stream each way carrying the baseline's frames
/// ([`MuxClient`]); the server echoes from its reader.
async fn raw_client() -> MuxClient<quinn::SendStream> {
    let creds = ClusterCa::secret("raw").credentials("raw").expect("creds");
    let server_crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(creds.server_config().expect("tls"))
            .expect("quic tls");
    let client_crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(creds.client_config().expect("tls"))
            .expect("quic tls");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("conn");
        let out = conn.open_uni().await.expect("uni");
        let input = conn.accept_uni().await.expect("uni");
        echo(input, out).await;
    });
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
    let conn = endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .expect("connect")
        .await
        .expect("conn");
    let client = MuxClient::new(conn.open_uni().await.expect("uni"));
    // The server only learns of our stream once data arrives: prime it with one call.
    let first = client.clone();
    let prime = tokio::spawn(async move { first.call(Bytes::from_static(b"x")).await });
    client.read_from(conn.accept_uni().await.expect("uni"));
    prime.await.expect("prime");
    // The endpoint lives as long as its connection.
    tokio::spawn(async move { endpoint.wait_idle().await });
    client
}
