//! Links over TCP with mutual TLS 1.3 (tokio-rustls), for networks that drop UDP: the same
//! certificates, hello and frames as QUIC, all frames in order on one session.

use super::Mesh;
use super::link::{Link, MainReader, TlsTcp};
use super::session::{Admission, HELLO_TIMEOUT, read_hello};
use super::{DialFailure, first_connected};
use crate::error::{Error, Result};
use crate::identity::{CLUSTER_SERVER_NAME, Credentials, certified_node_id};
use crate::limits::Limit;
use crate::protocol::packet::Packet;
use bytes::BytesMut;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Most inbound TCP connections between accept and hello at once: a stranger opening sockets
/// and saying nothing holds at most this many, each for at most the hello timeout.
const MAX_TCP_HANDSHAKES: usize = 64;

/// The TCP side of a mesh.
pub(super) struct TcpSide {
    /// Taken by the accept loop when the mesh starts.
    listener: Mutex<Option<TcpListener>>,
    local: SocketAddr,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    handshakes: Arc<Semaphore>,
}

impl TcpSide {
    /// Listens on `listen` for members only.
    pub(super) fn bind(credentials: &Credentials, listen: SocketAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(TcpListener::from_std)
            .map_err(|e| {
                Error::transport(format!("cannot listen on {listen} (TCP): {e}")).with_source(e)
            })?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::transport(format!("TCP listener has no address: {e}")))?;
        Ok(Self {
            listener: Mutex::new(Some(listener)),
            local,
            acceptor: TlsAcceptor::from(Arc::new(credentials.server_config()?)),
            connector: TlsConnector::from(Arc::new(credentials.client_config()?)),
            handshakes: Arc::new(Semaphore::new(MAX_TCP_HANDSHAKES)),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Mesh {
    fn tcp(&self) -> &TcpSide {
        self.tcp.as_ref().expect("TCP side of a mesh with TCP")
    }

    /// Accepts TCP connections until the mesh stops.
    pub(super) async fn accept_tcp(self: Arc<Self>) {
        let Some(listener) = self.tcp().listener.lock().expect("listener lock").take() else {
            return;
        };
        loop {
            let (socket, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(%err, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.tcp().handshakes.clone().try_acquire_owned() else {
                self.ctx.traffic.limit_hit(
                    Limit::LinkRefused,
                    1,
                    &format!(
                        "TCP connection from {remote} refused: {MAX_TCP_HANDSHAKES} handshakes in progress"
                    ),
                );
                continue;
            };
            let mesh = self.clone();
            tokio::spawn(async move {
                let _ = socket.set_nodelay(true);
                let accepting = mesh.tcp().acceptor.accept(socket);
                match tokio::time::timeout(HELLO_TIMEOUT, accepting).await {
                    Ok(Ok(tls)) => {
                        mesh.run_tcp(tls.into(), remote, false, None, Some(permit))
                            .await
                    }
                    Ok(Err(err)) => {
                        mesh.handshake_failed(&remote.to_string(), is_auth_failure(&err), &err);
                    }
                    Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                }
            });
        }
    }

    /// Dials every candidate in parallel; the first handshake wins. Returns the peer's id, or
    /// why no link came of it.
    pub(super) async fn dial_tcp(
        self: &Arc<Self>,
        candidates: &[SocketAddr],
    ) -> std::result::Result<Option<Arc<str>>, DialFailure> {
        let (tls, remote) =
            first_connected(candidates.iter().map(|&addr| self.connect_tcp(addr))).await?;
        let (named, name) = oneshot::channel();
        let driver = self.clone();
        // Our own dials take no slot of the inbound handshake limit: strangers filling it must
        // not keep this node from dialing its peers.
        tokio::spawn(async move { driver.run_tcp(tls, remote, true, Some(named), None).await });
        Ok(name.await.ok().flatten())
    }

    async fn connect_tcp(
        &self,
        addr: SocketAddr,
    ) -> std::result::Result<(TlsTcp, SocketAddr), DialFailure> {
        let connect = async {
            let socket = TcpStream::connect(addr).await.map_err(|err| {
                tracing::debug!(%addr, %err, "TCP dial failed");
                DialFailure::Silent
            })?;
            let _ = socket.set_nodelay(true);
            let name =
                ServerName::try_from(CLUSTER_SERVER_NAME).map_err(|_| DialFailure::Silent)?;
            match self.tcp().connector.connect(name, socket).await {
                Ok(tls) => Ok((tls.into(), addr)),
                Err(err) => {
                    Err(self.handshake_failed(&addr.to_string(), is_auth_failure(&err), &err))
                }
            }
        };
        tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(%addr, "TCP dial timed out");
                Err(DialFailure::Silent)
            })
    }

    /// Drives one TLS session from hello to close. `named` learns the peer's node id as soon as
    /// its hello arrives; `handshake` (an inbound connection's slot) is held until then.
    async fn run_tcp(
        self: &Arc<Self>,
        tls: TlsTcp,
        remote: SocketAddr,
        outbound: bool,
        named: Option<oneshot::Sender<Option<Arc<str>>>>,
        handshake: Option<OwnedSemaphorePermit>,
    ) {
        let certified = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(certified_node_id);
        let (read, mut write) = tokio::io::split(tls);
        let (mut reader, closed) = MainReader::tcp(read);
        let mut buf = BytesMut::new();
        let exchange = self.exchange_tcp_hello(&mut write, &mut reader, &mut buf);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
            Ok(Ok(hello)) => Some(hello),
            Ok(Err(reason)) => {
                tracing::debug!(%remote, %reason, "link handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%remote, "peer never said hello");
                None
            }
        };
        drop(handshake);
        let Some(hello) = hello else {
            if let Some(named) = named {
                let _ = named.send(None);
            }
            return;
        };
        let link = Link::tcp(
            hello.sender.clone(),
            outbound,
            write,
            closed,
            self.ctx.traffic.clone(),
        );
        let Admission { peer, link } = self.admit(link, remote, hello, certified);
        if let Some(named) = named {
            let _ = named.send(peer);
        }
        if let Some(link) = link {
            self.clone().read_main(link.clone(), reader, buf).await;
            self.link_ended(&link, "TCP session ended");
        }
    }

    /// Writes our hello and reads the peer's, at once.
    async fn exchange_tcp_hello(
        &self,
        write: &mut tokio::io::WriteHalf<TlsTcp>,
        reader: &mut MainReader,
        buf: &mut BytesMut,
    ) -> std::result::Result<Packet, String> {
        let hello = self.ctx.handler.hello();
        let frame = self.ctx.codec.encode(&hello).map_err(|e| e.to_string())?;
        let send = async {
            write.write_all(&frame).await.map_err(|e| e.to_string())?;
            write.flush().await.map_err(|e| e.to_string())
        };
        let (_, hello) =
            futures_util::future::try_join(send, read_hello(self, reader, buf)).await?;
        Ok(hello)
    }
}

/// Whether a failed TLS handshake means one side could not prove membership.
fn is_auth_failure(err: &std::io::Error) -> bool {
    matches!(
        err.get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(
            rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::AlertReceived(_)
        )
    )
}
