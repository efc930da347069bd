//! Same-host shared memory: two nodes that find each other over QUIC on loopback notice they
//! share a host and switch to a shared-memory link (two ring buffers in a sealed `memfd`); calls
//! then never touch the network stack. Nodes on other hosts keep using QUIC.
//!
//! Run: `cargo run --release --example shared_memory`
#![allow(clippy::print_stdout)]

use phalanx::identity::ClusterCa;
use phalanx::transport::{LinkKind, MeshTransport, ShmTransport};
use phalanx::{Broker, Context};
use std::time::{Duration, Instant};

async fn node(id: &str, seed: Option<String>) -> phalanx::Result<(Broker, MeshTransport)> {
    let quic = MeshTransport::builder()
        .listen("127.0.0.1:0".parse().expect("address"))
        .seeds(seed)
        .cluster_ca(ClusterCa::local()?)
        .mdns(false)
        .build();
    let broker = Broker::builder()
        .node_id(id)
        .transport(quic.clone())
        .transport(ShmTransport::builder().build())
        .start()
        .await?;
    Ok((broker, quic))
}

#[tokio::main]
async fn main() -> phalanx::Result<()> {
    let (server, server_quic) = node("server", None).await?;
    server
        .service("echo")
        .action("say", |_ctx: Context, text: String| async move { Ok(text) })
        .start()
        .await?;
    let seed = server_quic.local_addr().map(|a| a.to_string());
    let (client, _) = node("client", seed).await?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while !client
        .nodes()
        .iter()
        .any(|n| n.id == "server" && n.link == LinkKind::Shm && !n.services.is_empty())
    {
        assert!(Instant::now() < deadline, "no shared-memory link");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("client reaches server over {}", LinkKind::Shm);

    let started = Instant::now();
    const CALLS: u32 = 10_000;
    for i in 0..CALLS {
        let text: String = client.call("echo.say", format!("hello {i}")).await?;
        assert_eq!(text, format!("hello {i}"));
    }
    let per_call = started.elapsed() / CALLS;
    println!("{CALLS} calls over shared memory, {per_call:?} per call (one at a time)");

    client.stop().await;
    server.stop().await;
    Ok(())
}
