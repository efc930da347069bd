//! Byte streams through services, on every transport: in process, the in-process bus, QUIC,
//! shared memory and NATS. Back-pressure, errors, cancellation and node loss on QUIC.

mod common;
#[cfg(feature = "nats")]
#[path = "common/nats_server.rs"]
mod nats_server;

use bytes::Bytes;
use common::cluster::{Cluster, quic_loopback};
use futures_util::StreamExt;
use phalanx::identity::ClusterCa;
use phalanx::stream::{CHUNK_LEN, WINDOW};
use phalanx::transport::{LinkKind, ShmTransport};
use phalanx::{Broker, ByteStream, CallOptions, Context, Error, ErrorKind};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// `files.digest` (a stream in: its length and SHA-256 out), `files.bytes` (`n` in: a stream of
/// n pseudo-random bytes out) and `files.copy` (a stream in, the same stream out).
async fn serve_files(broker: &Broker) {
    broker
        .service("files")
        .action("digest", |ctx: Context, _: Value| async move {
            let mut body = ctx
                .take_stream()
                .ok_or_else(|| Error::validation("a stream is expected"))?;
            let (len, sha) = digest(&mut body).await?;
            Ok(json!({ "len": len, "sha256": sha }))
        })
        .action("bytes", |_ctx, n: u64| async move { Ok(pseudo_random(n)) })
        .action("copy", |ctx: Context, _: Value| async move {
            ctx.take_stream()
                .ok_or_else(|| Error::validation("a stream is expected"))
        })
        .start()
        .await
        .expect("files service");
}

/// Length and SHA-256 (hex) of what `stream` yields.
async fn digest(stream: &mut ByteStream) -> phalanx::Result<(u64, String)> {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        context.update(&chunk);
    }
    let hex = context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((len, hex))
}

/// `n` bytes of a fixed pseudo-random sequence, in uneven chunks.
fn pseudo_random(n: u64) -> ByteStream {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut left = n;
    let chunks = std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let len = left.min(50_000 + state % 30_000);
        left -= len;
        let chunk: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Some(Ok(Bytes::from(chunk)))
    });
    ByteStream::new(futures_util::stream::iter(chunks)).with_len(n)
}

/// Downloads n bytes from `files.bytes`, uploads them to `files.digest`, sends them through
/// `files.copy`, and checks that all three agree.
async fn round_trip(caller: &Broker, n: u64) {
    let download: ByteStream = caller.call("files.bytes", n).await.expect("download");
    assert_eq!(download.len(), Some(n));
    let mut expected = pseudo_random(n);
    let (len, sha) = digest(&mut expected).await.unwrap();
    let mut download = download;
    assert_eq!(digest(&mut download).await.unwrap(), (len, sha.clone()));

    let uploaded: Value = caller
        .call_with(
            "files.digest",
            (),
            CallOptions::new().stream(pseudo_random(n)),
        )
        .await
        .expect("upload");
    assert_eq!(uploaded, json!({ "len": n, "sha256": sha }));

    let mut copied: ByteStream = caller
        .call_with(
            "files.copy",
            (),
            CallOptions::new().stream(pseudo_random(n)),
        )
        .await
        .expect("copy");
    assert_eq!(digest(&mut copied).await.unwrap(), (n, sha));
}

const SIZE: u64 = 3 * 1024 * 1024 + 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_handed_over_in_process() {
    let broker = Broker::builder().start().await.unwrap();
    serve_files(&broker).await;
    round_trip(&broker, SIZE).await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_the_in_process_bus() {
    let cluster = Cluster::inproc(&["a", "b"]).await;
    serve_files(cluster.node("b")).await;
    wait_for(cluster.node("a"), "files").await;
    round_trip(cluster.node("a"), SIZE).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_quic() {
    let cluster = Cluster::quic(&["a", "b"], "streams").await;
    serve_files(cluster.node("b")).await;
    wait_for(cluster.node("a"), "files").await;
    round_trip(cluster.node("a"), SIZE).await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_shared_memory() {
    let node = |id: &'static str, seed: Option<String>| async move {
        Broker::builder()
            .node_id(id)
            .namespace("streams-shm")
            .transport(quic_loopback("streams", seed))
            .transport(ShmTransport::builder().build())
            .start()
            .await
            .unwrap()
    };
    let b = node("b", None).await;
    let seed = b.nodes()[0]
        .addresses
        .iter()
        .find(|a| !a.starts_with("shm:"))
        .cloned();
    let a = node("a", seed).await;
    serve_files(&b).await;
    let linked = tokio::time::timeout(Duration::from_secs(10), async {
        while !a
            .nodes()
            .iter()
            .any(|n| n.id == "b" && n.link == LinkKind::Shm && !n.services.is_empty())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(linked.is_ok(), "a never reached b over shared memory");
    wait_for(&a, "files").await;
    round_trip(&a, SIZE).await;
    a.stop().await;
    b.stop().await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_nats() {
    let server = nats_server::NatsServer::start();
    let node = |id: &'static str| {
        let url = server.url();
        async move {
            Broker::builder()
                .node_id(id)
                .namespace("streams-nats")
                .transport(
                    phalanx::transport::NatsTransport::builder(url)
                        .cluster_ca(ClusterCa::secret(common::strong_secret("streams")))
                        .build(),
                )
                .start()
                .await
                .unwrap()
        }
    };
    let b = node("b").await;
    let a = node("a").await;
    serve_files(&b).await;
    wait_for(&a, "files").await;
    round_trip(&a, SIZE).await;
    a.stop().await;
    b.stop().await;
}

async fn wait_for(broker: &Broker, service: &str) {
    broker
        .wait_for_services(&[service], Duration::from_secs(10))
        .await
        .expect("service appears");
}

/// A producer that counts the chunks pulled from it and notices being dropped.
fn counted_producer(
    pulled: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    chunks: usize,
) -> ByteStream {
    struct OnDrop(Arc<AtomicBool>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let guard = OnDrop(dropped);
    let stream = futures_util::stream::iter(0..chunks).map(move |_| {
        let _keep = &guard;
        pulled.fetch_add(1, Ordering::SeqCst);
        Ok(Bytes::from(vec![1u8; CHUNK_LEN]))
    });
    ByteStream::new(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_back_the_producer_and_a_dropped_stream_stops_it() {
    let cluster = Cluster::quic(&["a", "b"], "streams").await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let (p, d) = (pulled.clone(), dropped.clone());
    cluster
        .node("b")
        .service("source")
        .action("endless", move |_ctx, _: Value| {
            let stream = counted_producer(p.clone(), d.clone(), usize::MAX);
            async move { Ok(stream) }
        })
        .start()
        .await
        .unwrap();
    let a = cluster.node("a");
    wait_for(a, "source").await;
    let mut stream: ByteStream = a.call("source.endless", ()).await.unwrap();
    for _ in 0..3 {
        stream.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Read 3; the producer may be a window (and the chunk it holds) ahead — not megabytes.
    let ahead = pulled.load(Ordering::SeqCst);
    assert!(
        ahead <= 3 + WINDOW as usize + 2,
        "{ahead} chunks pulled for 3 read"
    );
    assert!(!dropped.load(Ordering::SeqCst));
    drop(stream);
    let stopped = common::becomes_true(&dropped, Duration::from_secs(5)).await;
    assert!(
        stopped,
        "the producer was not dropped when the reader went away"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_producer_or_handler_reaches_the_other_side_at_once() {
    let cluster = Cluster::quic(&["a", "b"], "streams").await;
    let uploads_dropped = Arc::new(AtomicBool::new(false));
    cluster
        .node("b")
        .service("faulty")
        .action("half", |_ctx, _: Value| async move {
            let chunks = futures_util::stream::iter([
                Ok(Bytes::from_static(b"first")),
                Err(Error::handler(507, "DISK_FULL", "no space left")),
            ]);
            Ok(ByteStream::new(chunks))
        })
        .action("refuse", |ctx: Context, _: Value| async move {
            let mut body = ctx.take_stream().expect("a stream");
            body.next().await;
            Err::<(), _>(Error::handler(415, "BAD_FILE", "not an image"))
        })
        .start()
        .await
        .unwrap();
    let a = cluster.node("a");
    wait_for(a, "faulty").await;
    let mut half: ByteStream = a.call("faulty.half", ()).await.unwrap();
    assert_eq!(
        half.next().await.unwrap().unwrap(),
        Bytes::from_static(b"first")
    );
    let err = half.next().await.unwrap().unwrap_err();
    assert_eq!((err.code(), err.error_type()), (507, "DISK_FULL"));
    assert!(half.next().await.is_none());

    // The handler refuses after one chunk: the caller gets its error, the upload stops.
    let started = tokio::time::Instant::now();
    let upload = counted_producer(
        Arc::new(AtomicUsize::new(0)),
        uploads_dropped.clone(),
        usize::MAX,
    );
    let err = a
        .call_with::<Value>("faulty.refuse", (), CallOptions::new().stream(upload))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 415);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let stopped = common::becomes_true(&uploads_dropped, Duration::from_secs(5)).await;
    assert!(stopped, "the upload went on after the handler failed");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fails_at_once_when_its_node_is_lost_or_its_deadline_passes() {
    let cluster = Cluster::quic(&["a", "b"], "streams").await;
    cluster
        .node("b")
        .service("source")
        .action("trickle", |_ctx, _: Value| async move {
            let slow = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok(Bytes::from_static(b".")), ()))
            });
            Ok(ByteStream::new(slow))
        })
        .start()
        .await
        .unwrap();
    let a = cluster.node("a");
    wait_for(a, "source").await;
    // The call's deadline bounds the stream too.
    let mut timed: ByteStream = a
        .call_with(
            "source.trickle",
            (),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    let failed = loop {
        match timed.next().await {
            Some(Ok(_)) => continue,
            Some(Err(err)) => break err,
            None => panic!("a trickle never ends by itself"),
        }
    };
    assert_eq!(failed.kind(), ErrorKind::Timeout);

    let mut open: ByteStream = a.call("source.trickle", ()).await.unwrap();
    open.next().await.unwrap().unwrap();
    let b = cluster.node("b").clone();
    let started = tokio::time::Instant::now();
    b.stop().await;
    let lost = loop {
        match tokio::time::timeout(Duration::from_secs(5), open.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(err))) => break err,
            Ok(None) => panic!("the stream ended as if complete"),
            Err(_) => panic!("the stream hung after its producer's node left"),
        }
    };
    assert!(started.elapsed() < Duration::from_secs(3), "{lost}");
    cluster.stop().await;
}
