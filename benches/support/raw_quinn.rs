//! Raw quinn as a baseline: one unidirectional stream each way carrying the [`mux`](super::mux)
//! frames, with the same TLS a Phalanx link uses and nothing of Phalanx on top.

use super::mux::{MuxClient, echo};
use bytes::Bytes;
use phalanx::identity::{CLUSTER_SERVER_NAME, ClusterCa};
use std::net::SocketAddr;
use std::sync::Arc;

/// An echo server on a free loopback port; returns its address. Serves until the runtime ends.
pub(crate) fn serve() -> SocketAddr {
    let creds = ClusterCa::secret("raw-quinn-baseline-secret-0123456789")
        .credentials("raw")
        .expect("creds");
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(creds.server_config().expect("tls"))
            .expect("quic tls");
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let address = server.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let Ok(conn) = incoming.await else { continue };
            tokio::spawn(async move {
                let out = conn.open_uni().await.expect("uni");
                let input = conn.accept_uni().await.expect("uni");
                echo(input, out).await;
            });
        }
    });
    address
}

/// A client of the echo server at `address`.
pub(crate) async fn client(address: SocketAddr) -> MuxClient<quinn::SendStream> {
    let creds = ClusterCa::secret("raw-quinn-baseline-secret-0123456789")
        .credentials("raw")
        .expect("creds");
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(creds.client_config().expect("tls"))
            .expect("quic tls");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(address, CLUSTER_SERVER_NAME)
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
