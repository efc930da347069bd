//! A same-host call over shared memory, next to the same call over QUIC on loopback and a raw
//! Unix-socket echo (the baseline: length-prefixed frames with request ids matched to waiting
//! callers, the same shape as our links), all in the same run. The two brokers of each pair
//! live in this process; the shared-memory link between them is the one two processes use
//! (memfd segment, rings, reader threads).
//!
//! Run: `cargo bench --bench shm_call` (options: `-- --seconds 3 --payload 64`)
#![allow(clippy::print_stdout)]

use bytes::{Buf, BufMut, Bytes, BytesMut};
use phalanx::identity::ClusterCa;
use phalanx::transport::{LinkKind, QuicTransport, ShmTransport};
use phalanx::{Broker, BrokerBuilder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

mod support;

use support::{Options, measure, measure_echo, print_table, runtime, serve_echo};

fn main() {
    let options = Options::from_args();
    runtime().block_on(run(options.duration, options.payload));
}

async fn run(duration: Duration, payload: usize) {
    let body = Bytes::from(vec![7u8; payload]);

    let raw = UnixClient::start().await;
    let raw_call = {
        let (raw, body) = (raw.clone(), body.clone());
        move |_: usize| {
            let (raw, body) = (raw.clone(), body.clone());
            async move { raw.call(body).await }
        }
    };
    let raw = measure(duration, raw_call).await;

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
        let mut quic = QuicTransport::builder()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cluster_ca(ClusterCa::secret("bench"))
            .mdns(false);
        if let Some(seed) = seed {
            quic = quic.seed(seed);
        }
        let quic = quic.build();
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

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// Raw Unix socket: the client writes `[len][id][body]` frames under a lock, a reader task
/// matches echoed frames to waiting callers; the server echoes each frame as it reads it.
#[derive(Clone)]
struct UnixClient {
    write: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>,
    waiters: Waiters,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl UnixClient {
    async fn start() -> Self {
        let (client, server) = UnixStream::pair().expect("socket pair");
        tokio::spawn(async move {
            let (mut read, mut write) = server.into_split();
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                if read.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut out = BytesMut::new();
                while let Some(frame) = take_frame(&mut buf) {
                    out.put_u32(frame.len() as u32);
                    out.extend_from_slice(&frame);
                }
                if write.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let (mut read, write) = client.into_split();
        let waiters: Waiters = Arc::default();
        let pending = waiters.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            loop {
                if read.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                while let Some(mut frame) = take_frame(&mut buf) {
                    let id = frame.get_u64();
                    if let Some(waiter) = pending.lock().expect("waiters").remove(&id) {
                        let _ = waiter.send(frame);
                    }
                }
            }
        });
        Self {
            write: Arc::new(tokio::sync::Mutex::new(write)),
            waiters,
            next: Arc::default(),
        }
    }

    async fn call(&self, body: Bytes) -> usize {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let mut frame = BytesMut::with_capacity(12 + body.len());
        frame.put_u32(8 + body.len() as u32);
        frame.put_u64(id);
        frame.extend_from_slice(&body);
        self.write
            .lock()
            .await
            .write_all(&frame)
            .await
            .expect("write");
        rx.await.expect("echo").len()
    }
}

/// One `[len][payload]` frame off the front of `buf`, if complete.
fn take_frame(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    buf.advance(4);
    Some(buf.split_to(len).freeze())
}
