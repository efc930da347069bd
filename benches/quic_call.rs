//! A call between two brokers over QUIC on loopback, next to a raw quinn echo of the same stream
//! shape (one long-lived unidirectional stream each way, length-prefixed frames, request ids
//! matched to waiting callers), measured in the same run.
//!
//! Run: `cargo bench --bench quic_call` (options: `-- --seconds 3 --payload 64`)
//!
//! Prints p50/p99 of sequential round trips (concurrency 1) and calls/s with 64 in flight.
#![allow(clippy::print_stdout)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use phalanx::Broker;
use phalanx::identity::{CLUSTER_SERVER_NAME, ClusterCa};
use phalanx::transport::QuicTransport;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

mod support;

use support::{Options, measure, measure_echo, print_table, runtime, serve_echo};

fn main() {
    let options = Options::from_args();
    runtime().block_on(run(options.duration, options.payload));
}

async fn run(duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    let raw = RawClient::start().await;
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

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// Raw quinn: the client writes `[len][id][body]` frames on its stream under a lock, a reader
/// task matches echoed frames to waiting callers; the server echoes from its reader.
#[derive(Clone)]
struct RawClient {
    send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
    waiters: Waiters,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RawClient {
    async fn start() -> Self {
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
            let mut out = conn.open_uni().await.expect("uni");
            let mut input = conn.accept_uni().await.expect("uni");
            let mut buf = BytesMut::new();
            while let Ok(Some(chunk)) = input.read_chunk(64 * 1024, true).await {
                buf.extend_from_slice(&chunk.bytes);
                while let Some(frame) = take_frame(&mut buf) {
                    if out.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut client =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
        client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));
        let conn = client
            .connect(addr, CLUSTER_SERVER_NAME)
            .expect("connect")
            .await
            .expect("conn");
        let mut send = conn.open_uni().await.expect("uni");
        send.write_all(&[]).await.expect("open");
        let waiters: Waiters = Arc::default();
        let reader_waiters = waiters.clone();
        let this = Self {
            send: Arc::new(tokio::sync::Mutex::new(send)),
            waiters,
            next: Arc::default(),
        };
        // The server only learns of our stream once data arrives: prime it with one call.
        let first = this.clone();
        let prime = tokio::spawn(async move { first.call(Bytes::from_static(b"x")).await });
        let mut input = conn.accept_uni().await.expect("uni");
        tokio::spawn(async move {
            let _keep = client;
            let mut buf = BytesMut::new();
            while let Ok(Some(chunk)) = input.read_chunk(64 * 1024, true).await {
                buf.extend_from_slice(&chunk.bytes);
                while let Some(mut frame) = take_frame(&mut buf) {
                    frame.advance(4);
                    let id = frame.get_u64();
                    if let Some(tx) = reader_waiters.lock().expect("lock").remove(&id) {
                        let _ = tx.send(frame.freeze());
                    }
                }
            }
        });
        prime.await.expect("prime");
        this
    }

    async fn call(&self, body: Bytes) -> usize {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("lock").insert(id, tx);
        let mut frame = BytesMut::with_capacity(12 + body.len());
        frame.put_u32(8 + body.len() as u32);
        frame.put_u64(id);
        frame.put_slice(&body);
        self.send
            .lock()
            .await
            .write_all(&frame)
            .await
            .expect("write");
        rx.await.expect("answer").len()
    }
}

fn take_frame(buf: &mut BytesMut) -> Option<BytesMut> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    (buf.len() >= 4 + len).then(|| buf.split_to(4 + len))
}
