//! Links over QUIC (quinn): the endpoint, accepting and dialing connections, the hello on each
//! side's main stream, and the streams that carry one large frame each.

use super::Mesh;
use super::link::{CLOSE_PROTOCOL, Link, MainReader, STREAM_FRAME, STREAM_MAIN};
use super::session::{Admission, HELLO_TIMEOUT, read_hello};
use super::{DialFailure, MeshConfig, first_connected};
use crate::error::{Error, Result};
use crate::identity::{CLUSTER_SERVER_NAME, Credentials, certified_node_id};
use crate::protocol::packet::Packet;
use crate::transport::Direction;
use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Bytes a peer may send ahead of what we have read, over all streams of its connection.
const CONNECTION_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// The QUIC side of a mesh.
pub(super) struct QuicSide {
    pub(super) endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
}

impl QuicSide {
    /// Binds a QUIC endpoint on `listen` that accepts and dials members only.
    pub(super) fn bind(
        config: &MeshConfig,
        credentials: &Credentials,
        listen: SocketAddr,
    ) -> Result<Self> {
        let quic_error =
            |e: &dyn std::fmt::Display| Error::transport(format!("QUIC setup failed: {e}"));
        let server_crypto =
            quinn::crypto::rustls::QuicServerConfig::try_from(credentials.server_config()?)
                .map_err(|e| quic_error(&e))?;
        let client_crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(credentials.client_config()?)
                .map_err(|e| quic_error(&e))?;
        let transport = Arc::new(transport_config(config)?);
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport.clone());
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let endpoint = quinn::Endpoint::server(server_config, listen).map_err(|e| {
            Error::transport(format!("cannot listen on {listen} (UDP): {e}")).with_source(e)
        })?;
        Ok(Self {
            endpoint,
            client_config,
        })
    }

    pub(super) fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .map_err(|e| Error::transport(format!("QUIC endpoint has no address: {e}")))
    }
}

fn transport_config(config: &MeshConfig) -> Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| Error::transport(format!("invalid idle timeout: {e}")).with_source(e))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.idle_timeout / 4))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(config.max_peer_streams.into())
        // Unread bytes one peer may have buffered here across all its streams.
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    Ok(transport)
}

impl Mesh {
    fn quic(&self) -> &QuicSide {
        self.quic.as_ref().expect("QUIC side of a mesh with QUIC")
    }

    /// Accepts QUIC connections until the endpoint closes.
    pub(super) async fn accept_quic(self: Arc<Self>) {
        while let Some(incoming) = self.quic().endpoint.accept().await {
            let mesh = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => mesh.run_quic(conn, false, None).await,
                    Err(err) => {
                        mesh.handshake_failed(&remote.to_string(), is_auth_failure(&err), &err);
                    }
                }
            });
        }
    }

    /// Dials every candidate in parallel; the first handshake wins. Returns the peer's id, or
    /// why no link came of it.
    pub(super) async fn dial_quic(
        self: &Arc<Self>,
        candidates: &[SocketAddr],
    ) -> std::result::Result<Option<Arc<str>>, DialFailure> {
        let conn = first_connected(candidates.iter().map(|&addr| self.connect_quic(addr))).await?;
        let (named, name) = oneshot::channel();
        let driver = self.clone();
        tokio::spawn(async move { driver.run_quic(conn, true, Some(named)).await });
        Ok(name.await.ok().flatten())
    }

    async fn connect_quic(
        &self,
        addr: SocketAddr,
    ) -> std::result::Result<quinn::Connection, DialFailure> {
        let quic = self.quic();
        let connecting = quic
            .endpoint
            .connect_with(quic.client_config.clone(), addr, CLUSTER_SERVER_NAME)
            .map_err(|err| {
                tracing::debug!(%addr, %err, "cannot dial");
                DialFailure::Silent
            })?;
        match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => {
                Err(self.handshake_failed(&addr.to_string(), is_auth_failure(&err), &err))
            }
            Err(_) => {
                tracing::debug!(%addr, "QUIC dial timed out");
                Err(DialFailure::Silent)
            }
        }
    }

    /// Drives one connection from handshake to close. `named` learns the peer's node id as soon
    /// as its hello arrives (`None` if there is no usable peer).
    async fn run_quic(
        self: &Arc<Self>,
        conn: quinn::Connection,
        outbound: bool,
        named: Option<oneshot::Sender<Option<Arc<str>>>>,
    ) {
        let remote = conn.remote_address();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, self.exchange_quic_hello(&conn)).await
        {
            Ok(Ok(parts)) => Some(parts),
            Ok(Err(reason)) => {
                tracing::debug!(%remote, %reason, "link handshake failed");
                conn.close(CLOSE_PROTOCOL.into(), b"bad hello");
                None
            }
            Err(_) => {
                tracing::debug!(%remote, "peer never said hello");
                conn.close(CLOSE_PROTOCOL.into(), b"hello timeout");
                None
            }
        };
        let Some((main, reader, buf, hello)) = hello else {
            if let Some(named) = named {
                let _ = named.send(None);
            }
            return;
        };
        let certified = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(certified_node_id));
        let link = Link::quic(
            hello.sender.clone(),
            outbound,
            conn.clone(),
            main,
            &self.config,
            self.ctx.traffic.clone(),
        );
        let Admission { peer, link } = self.admit(link, remote, hello, certified);
        if let Some(named) = named {
            let _ = named.send(peer);
        }
        if let Some(link) = link {
            self.serve_quic(conn, link, reader, buf).await;
        }
    }

    /// Reads the connection's streams until it closes, then reports the link down.
    async fn serve_quic(
        self: &Arc<Self>,
        conn: quinn::Connection,
        link: Arc<Link>,
        reader: MainReader,
        buf: BytesMut,
    ) {
        let main = tokio::spawn(self.clone().read_main(link.clone(), reader, buf));
        while let Ok(mut stream) = conn.accept_uni().await {
            let mesh = self.clone();
            let link = link.clone();
            tokio::spawn(async move {
                if let Err(reason) = mesh.read_frame_stream(&link, &mut stream).await {
                    mesh.violation(&link, &reason);
                }
            });
        }
        main.abort();
        let reason = conn
            .close_reason()
            .map(|r| r.to_string())
            .unwrap_or_default();
        self.link_ended(&link, &reason);
    }

    /// Opens our main stream with a hello and reads the peer's: each side learns who the other is.
    async fn exchange_quic_hello(
        &self,
        conn: &quinn::Connection,
    ) -> std::result::Result<(quinn::SendStream, MainReader, BytesMut, Packet), String> {
        let hello = self.ctx.handler.hello();
        let frame = self.ctx.codec.encode(&hello).map_err(|e| e.to_string())?;
        let open = async {
            let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
            send.write_all(&[STREAM_MAIN])
                .await
                .map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(send)
        };
        let accept = async {
            let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
            let mut kind = [0u8; 1];
            recv.read_exact(&mut kind)
                .await
                .map_err(|e| e.to_string())?;
            if kind[0] != STREAM_MAIN {
                return Err(format!("first stream has type {}", kind[0]));
            }
            let mut reader = MainReader::Quic(recv);
            let mut buf = BytesMut::new();
            let hello = read_hello(self, &mut reader, &mut buf).await?;
            Ok((reader, buf, hello))
        };
        let (send, (reader, buf, hello)) = futures_util::future::try_join(open, accept).await?;
        Ok((send, reader, buf, hello))
    }

    /// Reads a stream that carries exactly one (large) frame.
    async fn read_frame_stream(
        &self,
        link: &Arc<Link>,
        stream: &mut quinn::RecvStream,
    ) -> std::result::Result<(), String> {
        let super::link::Wire::Quic { large_frames, .. } = &link.wire else {
            return Err("a frame stream on a link that is not QUIC".into());
        };
        let mut kind = [0u8; 1];
        stream
            .read_exact(&mut kind)
            .await
            .map_err(|e| e.to_string())?;
        if kind[0] != STREAM_FRAME {
            return Err(format!("unexpected stream type {}", kind[0]));
        }
        let _reading = large_frames
            .acquire()
            .await
            .map_err(|_| "link closed".to_owned())?;
        let limit = self.ctx.codec.max_frame_len() + 4;
        let frame =
            tokio::time::timeout(self.config.large_frame_timeout, stream.read_to_end(limit))
                .await
                .map_err(|_| "a large frame took too long to arrive".to_owned())?
                .map_err(|e| e.to_string())?;
        self.ctx.traffic.record(
            &link.node_id,
            link.kind,
            Direction::Received,
            frame.len() + 1,
        );
        let packet = self
            .ctx
            .codec
            .decode_whole(bytes::Bytes::from(frame))
            .map_err(|e| e.to_string())?;
        self.deliver(link, packet);
        Ok(())
    }
}

fn is_auth_failure(err: &quinn::ConnectionError) -> bool {
    match err {
        quinn::ConnectionError::TransportError(e) => {
            // TLS alerts are carried as CRYPTO_ERROR codes 0x100..=0x1ff.
            let code = u64::from(e.code);
            (0x100..=0x1ff).contains(&code)
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            (0x100..=0x1ff).contains(&code)
        }
        _ => false,
    }
}
