//! The tarpc baseline: an echo service over one TCP connection (bincode, `TCP_NODELAY` on both
//! sides), served the way tarpc's own examples serve — one task per request.

use futures_util::{StreamExt, future};
use std::net::SocketAddr;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;

/// The service: what it receives, it answers.
#[tarpc::service]
pub(crate) trait Echo {
    /// Returns `body` unchanged.
    async fn echo(body: Vec<u8>) -> Vec<u8>;
}

#[derive(Clone)]
struct EchoServer;

impl Echo for EchoServer {
    async fn echo(self, _: tarpc::context::Context, body: Vec<u8>) -> Vec<u8> {
        body
    }
}

/// Serves echo on a loopback port (in a task) and returns the address.
pub(crate) async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tcp");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
            let requests = BaseChannel::with_defaults(transport).execute(EchoServer.serve());
            tokio::spawn(requests.for_each(|response| {
                tokio::spawn(response);
                future::ready(())
            }));
        }
    });
    address
}

/// A client connected to `address`, as a closure the measurements can run.
pub(crate) async fn calls(
    address: SocketAddr,
    body: Vec<u8>,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>
+ Clone
+ Send
+ 'static {
    let stream = tokio::net::TcpStream::connect(address).await.expect("tcp");
    stream.set_nodelay(true).expect("nodelay");
    let transport = tarpc::serde_transport::Transport::from((stream, Bincode::default()));
    let client = EchoClient::new(tarpc::client::Config::default(), transport).spawn();
    move |_: usize| {
        let (client, body) = (client.clone(), body.clone());
        Box::pin(async move {
            client
                .echo(tarpc::context::current(), body)
                .await
                .expect("tarpc echo")
                .len()
        })
    }
}
