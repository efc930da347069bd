//! One QUIC link: the handshake that names the peer, the stream readers, and the send path.

use super::{Mesh, QuicConfig};
use crate::error::{Error, Result};
use crate::identity::certified_node_id;
use crate::limits::Limit;
use crate::protocol::codec::FrameDecoder;
use crate::protocol::packet::Packet;
use crate::transport::{Direction, LinkKind};
use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;

/// Application close codes.
pub(super) const CLOSE_BYE: u32 = 0;
pub(super) const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_PROTOCOL: u32 = 2;
const CLOSE_STALLED: u32 = 3;
const CLOSE_SELF: u32 = 4;

/// First byte of every unidirectional stream.
const STREAM_MAIN: u8 = 0;
const STREAM_FRAME: u8 = 1;

/// How long a new connection may take to name its peer.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes asked of the QUIC stack per read.
const READ_CHUNK: usize = 64 * 1024;

/// An authenticated connection to one peer.
pub(crate) struct Link {
    pub(super) node_id: Arc<str>,
    pub(super) outbound: bool,
    conn: quinn::Connection,
    main: tokio::sync::Mutex<quinn::SendStream>,
    outbox: std::sync::Mutex<Outbox>,
    /// Large frames being read from this peer at once (at most `max_large_frames_in_flight`).
    large_frames: tokio::sync::Semaphore,
}

/// Small frames held back while the link's reader hands a batch of received frames to the
/// broker: the answers that batch produces at once leave in one write (one wake of the QUIC
/// driver, few datagrams) instead of one write each.
///
/// The outbox is only *uncorked* while the main stream is locked, taking every held frame with
/// it, so a frame sent after the uncork can never overtake one held before it.
#[derive(Default)]
struct Outbox {
    corked: bool,
    frames: BytesMut,
}

impl Link {
    pub(super) fn id(&self) -> usize {
        self.conn.stable_id()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }

    pub(super) fn close(&self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }

    /// Finishes the main stream and waits (bounded) until the peer has *handled* everything
    /// written so far, then closes. Data acknowledged by the peer's QUIC stack is not enough:
    /// a close makes the peer drop what its reader has not taken yet. So the peer closes the
    /// connection itself once its reader reaches the end of our stream (see `read_main`).
    pub(super) async fn close_gracefully(&self, within: Duration) {
        let handled = async {
            let finished = self.main.lock().await.finish().is_ok();
            if finished {
                self.conn.closed().await;
            }
        };
        let _ = tokio::time::timeout(within, handled).await;
        self.close(CLOSE_BYE, "node stopping");
    }

    /// Writes one frame from the calling task: small frames on the main stream, large ones on a
    /// stream of their own. A write that stalls past the timeout closes the link.
    pub(super) async fn send(&self, frame: Bytes, config: &QuicConfig) -> Result<()> {
        if frame.len() < config.large_frame {
            let mut outbox = self.outbox.lock().expect("outbox lock");
            if outbox.corked {
                outbox.frames.extend_from_slice(&frame);
                return Ok(());
            }
        }
        let write = async {
            if frame.len() >= config.large_frame {
                let mut stream = self.conn.open_uni().await.map_err(|e| e.to_string())?;
                stream
                    .write_all(&[STREAM_FRAME])
                    .await
                    .map_err(|e| e.to_string())?;
                stream.write_all(&frame).await.map_err(|e| e.to_string())?;
                stream.finish().map_err(|e| e.to_string())
            } else {
                let mut main = self.main.lock().await;
                main.write_all(&frame).await.map_err(|e| e.to_string())
            }
        };
        self.bounded(write, config).await
    }

    /// Holds back small frames until [`Link::flush`]: the reader corks before it delivers a batch.
    fn cork(&self) {
        self.outbox.lock().expect("outbox lock").corked = true;
    }

    /// Lets sends through again without writing what was held: the reader is gone, the link is
    /// closing, and whoever sends next must learn it rather than fill a buffer nobody writes.
    fn uncork_discarding(&self) {
        let mut outbox = self.outbox.lock().expect("outbox lock");
        outbox.corked = false;
        outbox.frames = BytesMut::new();
    }

    /// Writes every frame held since [`Link::cork`] in one write and lets sends through again.
    async fn flush(&self, config: &QuicConfig) -> Result<()> {
        let write = async {
            let mut main = self.main.lock().await;
            let frames = {
                let mut outbox = self.outbox.lock().expect("outbox lock");
                outbox.corked = false;
                outbox.frames.split()
            };
            if frames.is_empty() {
                return Ok(());
            }
            main.write_all(&frames).await.map_err(|e| e.to_string())
        };
        self.bounded(write, config).await
    }

    /// Runs a write under the link's write timeout; a write that stalls past it closes the link.
    async fn bounded(
        &self,
        write: impl std::future::Future<Output = std::result::Result<(), String>>,
        config: &QuicConfig,
    ) -> Result<()> {
        // The timer is only registered if the write has to wait; nothing is allocated.
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Error::transport(format!(
                "QUIC link to '{}' failed: {err}",
                self.node_id
            ))),
            Err(_) => {
                tracing::warn!(peer = %self.node_id, "closing link: peer stopped reading");
                self.close(CLOSE_STALLED, "peer stopped reading");
                Err(Error::transport(format!(
                    "QUIC link to '{}' stalled",
                    self.node_id
                )))
            }
        }
    }
}

impl Mesh {
    /// Drives one connection from handshake to close. `named` learns the peer's node id as soon
    /// as its hello arrives (`None` if there is no usable peer).
    pub(super) async fn run_connection(
        self: &Arc<Self>,
        conn: quinn::Connection,
        outbound: bool,
        named: Option<oneshot::Sender<Option<Arc<str>>>>,
    ) {
        let peer = self.handshake(&conn, outbound).await;
        let name = peer.as_ref().map(|(p, _, _)| p.clone());
        if let Some(named) = named {
            let _ = named.send(name);
        }
        if let Some((peer, link, parts)) = peer {
            self.serve(conn, peer, link, parts).await;
        }
    }

    /// Exchanges hellos and registers the link. Returns the peer, and the link with its
    /// reader's state when this connection is the one kept.
    async fn handshake(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        outbound: bool,
    ) -> Option<(Arc<str>, Option<Arc<Link>>, (quinn::RecvStream, BytesMut))> {
        let remote = conn.remote_address();
        let (main, recv, buf, hello) =
            match tokio::time::timeout(HELLO_TIMEOUT, self.exchange_hello(conn)).await {
                Ok(Ok(parts)) => parts,
                Ok(Err(reason)) => {
                    tracing::debug!(%remote, %reason, "link handshake failed");
                    conn.close(CLOSE_PROTOCOL.into(), b"bad hello");
                    return None;
                }
                Err(_) => {
                    tracing::debug!(%remote, "peer never said hello");
                    conn.close(CLOSE_PROTOCOL.into(), b"hello timeout");
                    return None;
                }
            };
        let peer = hello.sender.clone();
        let certified = conn
            .peer_identity()
            .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().and_then(certified_node_id));
        if certified.as_deref() != Some(&*peer) {
            self.ctx.traffic.limit_hit(
                Limit::LinkRefused,
                1,
                &format!("{remote} claims to be '{peer}' but its certificate names {certified:?}"),
            );
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            conn.close(
                CLOSE_PROTOCOL.into(),
                b"node id does not match the certificate",
            );
            return None;
        }
        if peer == self.ctx.node_id {
            conn.close(CLOSE_SELF.into(), b"self");
            self.dialer.mark_self(remote);
            return Some((peer, None, (recv, buf)));
        }
        let link = Arc::new(Link {
            node_id: peer.clone(),
            outbound,
            conn: conn.clone(),
            main: tokio::sync::Mutex::new(main),
            outbox: Default::default(),
            large_frames: tokio::sync::Semaphore::new(
                self.config.max_large_frames_in_flight.max(1),
            ),
        });
        let (kept, first) = self.register(&link);
        if !kept {
            link.close(CLOSE_DUPLICATE, "duplicate");
            return Some((peer, None, (recv, buf)));
        }
        tracing::debug!(peer = %peer, %remote, outbound, "QUIC link up");
        if first {
            self.ctx.handler.on_link_up(&peer, LinkKind::Quic);
        }
        // The hello is the peer's INFO: apply it before anything else it sent on this link.
        self.ctx.handler.on_packet(hello, LinkKind::Quic);
        Some((peer, Some(link), (recv, buf)))
    }

    /// Reads the connection's streams until it closes, then reports the link down.
    async fn serve(
        self: &Arc<Self>,
        conn: quinn::Connection,
        peer: Arc<str>,
        link: Option<Arc<Link>>,
        (recv, buf): (quinn::RecvStream, BytesMut),
    ) {
        let Some(link) = link else { return };
        let reader = tokio::spawn(self.clone().read_main(link.clone(), recv, buf));
        while let Ok(mut stream) = conn.accept_uni().await {
            let mesh = self.clone();
            let link = link.clone();
            tokio::spawn(async move {
                if let Err(reason) = mesh.read_frame_stream(&link, &mut stream).await {
                    mesh.violation(&link, &reason);
                }
            });
        }
        reader.abort();
        if self.unregister(&link) {
            let reason = conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default();
            tracing::debug!(peer = %peer, %reason, "QUIC link down");
            self.ctx.handler.on_link_down(&peer, LinkKind::Quic);
        }
    }

    /// Opens our main stream with a hello and reads the peer's: each side learns who the other is.
    async fn exchange_hello(
        &self,
        conn: &quinn::Connection,
    ) -> std::result::Result<(quinn::SendStream, quinn::RecvStream, BytesMut, Packet), String> {
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
            let mut decoder = FrameDecoder::new(self.ctx.codec);
            let mut buf = BytesMut::new();
            loop {
                if let Some(packet) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                    return Ok((recv, buf, packet));
                }
                match recv
                    .read_chunk(READ_CHUNK, true)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(chunk) => buf.extend_from_slice(&chunk.bytes),
                    None => return Err("stream ended before the hello".into()),
                }
            }
        };
        let (send, (recv, buf, hello)) = futures_util::future::try_join(open, accept).await?;
        Ok((send, recv, buf, hello))
    }

    /// Reads the peer's main stream until it ends or breaks the protocol.
    async fn read_main(
        self: Arc<Self>,
        link: Arc<Link>,
        mut recv: quinn::RecvStream,
        mut buf: BytesMut,
    ) {
        /// Uncorks the link however the reader ends.
        struct Uncork<'a>(&'a Link);
        impl Drop for Uncork<'_> {
            fn drop(&mut self) {
                self.0.uncork_discarding();
            }
        }
        let _uncork = Uncork(&link);
        let mut decoder = FrameDecoder::new(self.ctx.codec);
        loop {
            let mut corked = false;
            loop {
                let buffered = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(packet)) => {
                        if !corked {
                            link.cork();
                            corked = true;
                        }
                        self.ctx.traffic.record(
                            &link.node_id,
                            LinkKind::Quic,
                            Direction::Received,
                            buffered - buf.len(),
                        );
                        if !self.deliver(&link, packet) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => return self.violation(&link, &err.to_string()),
                }
            }
            // The answers this batch produced at once leave together. Waiting for the write
            // before reading more is the back-pressure: a peer that stops reading our answers
            // stops being read.
            if corked && link.flush(&self.config).await.is_err() {
                return;
            }
            match recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                // The peer finished its main stream: it is leaving, and waits for us to have
                // handled every frame before it closes — tell it we have.
                Ok(None) => return link.close(CLOSE_BYE, "read to the end"),
                Err(_) => return,
            }
        }
    }

    /// Reads a stream that carries exactly one (large) frame.
    async fn read_frame_stream(
        &self,
        link: &Arc<Link>,
        stream: &mut quinn::RecvStream,
    ) -> std::result::Result<(), String> {
        let mut kind = [0u8; 1];
        stream
            .read_exact(&mut kind)
            .await
            .map_err(|e| e.to_string())?;
        if kind[0] != STREAM_FRAME {
            return Err(format!("unexpected stream type {}", kind[0]));
        }
        let _reading = link
            .large_frames
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
            LinkKind::Quic,
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

    /// Hands a packet to the broker if it really comes from the link's peer.
    fn deliver(&self, link: &Arc<Link>, packet: Packet) -> bool {
        if packet.sender != link.node_id {
            self.violation(
                link,
                &format!("packet claims to come from '{}'", packet.sender),
            );
            return false;
        }
        self.ctx.handler.on_packet(packet, LinkKind::Quic);
        true
    }

    /// Closes a link that broke the protocol; everyone else keeps being served.
    fn violation(&self, link: &Arc<Link>, reason: &str) {
        self.ctx.traffic.limit_hit(
            Limit::LinkRefused,
            1,
            &format!(
                "closing the link to '{}': protocol violation: {reason}",
                link.node_id
            ),
        );
        link.close(CLOSE_PROTOCOL, reason);
    }
}
