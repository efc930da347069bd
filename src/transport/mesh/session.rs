//! What every link does once its TLS handshake is done, whatever carries it: admit the peer its
//! hello names (checked against its certificate), keep one link per peer, and read its frames
//! into the broker.

use super::Mesh;
use super::link::{CLOSE_BYE, CLOSE_DUPLICATE, CLOSE_PROTOCOL, CLOSE_SELF, Link, MainReader};
use crate::limits::Limit;
use crate::protocol::codec::FrameDecoder;
use crate::protocol::packet::Packet;
use crate::transport::Direction;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How long a new connection may take to name its peer (TLS handshake included on TCP).
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of a connection whose peer said hello.
pub(super) struct Admission {
    /// The peer's node id, once proven by its certificate.
    pub(super) peer: Option<Arc<str>>,
    /// The link, if this connection is the one kept for the peer.
    pub(super) link: Option<Arc<Link>>,
}

impl Mesh {
    /// Admits `link` if its hello comes from the node its certificate names (`certified`), it
    /// is not ourselves, and no better link to the peer exists; reports the link up and hands
    /// the hello (the peer's INFO) to the broker before anything else the peer sends.
    pub(super) fn admit(
        &self,
        link: Link,
        remote: SocketAddr,
        hello: Packet,
        certified: Option<String>,
    ) -> Admission {
        let peer = link.node_id.clone();
        if certified.as_deref() != Some(&*peer) {
            self.ctx.traffic.limit_hit(
                Limit::LinkRefused,
                1,
                &format!("{remote} claims to be '{peer}' but its certificate names {certified:?}"),
            );
            self.auth_failures.fetch_add(1, Ordering::Relaxed);
            link.close(CLOSE_PROTOCOL, "node id does not match the certificate");
            return Admission {
                peer: None,
                link: None,
            };
        }
        if peer == self.ctx.node_id {
            link.close(CLOSE_SELF, "self");
            self.dialer.mark_self(remote);
            return Admission {
                peer: Some(peer),
                link: None,
            };
        }
        let link = Arc::new(link);
        let (kept, first) = self.register(&link);
        if !kept {
            link.close(CLOSE_DUPLICATE, "duplicate");
            return Admission {
                peer: Some(peer),
                link: None,
            };
        }
        tracing::debug!(peer = %peer, %remote, outbound = link.outbound, kind = %link.kind, "link up");
        if first {
            self.ctx.handler.on_link_up(&peer, link.kind);
        }
        self.ctx.handler.on_packet(hello, link.kind);
        Admission {
            peer: Some(peer),
            link: Some(link),
        }
    }

    /// Adds a link unless a better one to the same peer exists. Better means QUIC over TCP,
    /// then — for two links of one kind, when both nodes dialed each other at once — the one
    /// dialed by the node with the smaller id. Both sides apply the same rule, so exactly one
    /// link remains. Returns whether the link was kept and whether it is the first to that peer.
    fn register(&self, link: &Arc<Link>) -> (bool, bool) {
        let preferred_outbound = *self.ctx.node_id < *link.node_id;
        let (kept, replaced) = self.links.insert_if(
            link.node_id.clone(),
            link.clone(),
            |existing| match existing {
                None => true,
                Some(existing) if existing.is_closed() => true,
                Some(existing) if existing.kind != link.kind => link.kind < existing.kind,
                Some(existing) => {
                    link.outbound == preferred_outbound && existing.outbound != preferred_outbound
                }
            },
        );
        match replaced {
            Some(existing) if !existing.is_closed() => {
                if existing.kind == link.kind {
                    existing.close(CLOSE_DUPLICATE, "duplicate");
                } else {
                    // A better kind of link came (UDP works again): the old one may still
                    // carry frames sent before the switch, so it is let go, not cut.
                    tracing::debug!(peer = %link.node_id, from = %existing.kind, to = %link.kind, "link upgraded");
                    tokio::spawn(async move {
                        existing.close_gracefully(RETIRE_WITHIN).await;
                    });
                }
                (kept, false)
            }
            _ => (kept, kept),
        }
    }

    /// Removes `link` if it is still the registered one; returns whether it was.
    pub(super) fn unregister(&self, link: &Link) -> bool {
        self.links
            .remove_if(&link.node_id, |current| current.id() == link.id())
            .is_some()
    }

    /// Reads the peer's main stream until it ends or breaks the protocol.
    pub(super) async fn read_main(
        self: Arc<Self>,
        link: Arc<Link>,
        mut reader: MainReader,
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
                            link.kind,
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
            match reader.read_into(&mut buf).await {
                Ok(true) => {}
                // The peer ended its stream: it is leaving, and waits for us to have handled
                // every frame before it closes — tell it we have.
                Ok(false) => return link.close(CLOSE_BYE, "read to the end"),
                Err(err) => {
                    tracing::trace!(peer = %link.node_id, %err, "link reader stops");
                    return link.close(CLOSE_BYE, "connection lost");
                }
            }
        }
    }

    /// Hands a packet to the broker if it really comes from the link's peer.
    pub(super) fn deliver(&self, link: &Arc<Link>, packet: Packet) -> bool {
        if packet.sender != link.node_id {
            self.violation(
                link,
                &format!("packet claims to come from '{}'", packet.sender),
            );
            return false;
        }
        self.ctx.handler.on_packet(packet, link.kind);
        true
    }

    /// Closes a link that broke the protocol; everyone else keeps being served.
    pub(super) fn violation(&self, link: &Arc<Link>, reason: &str) {
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

    /// Reports `link` down to the broker if it was still the peer's link.
    pub(super) fn link_ended(&self, link: &Link, reason: &str) {
        if self.unregister(link) {
            tracing::debug!(peer = %link.node_id, kind = %link.kind, %reason, "link down");
            self.ctx.handler.on_link_down(&link.node_id, link.kind);
        }
    }
}

/// How long a link replaced by a better one may go on delivering what was already sent on it.
const RETIRE_WITHIN: Duration = Duration::from_secs(2);

/// Reads frames from `reader` into `buf` until one whole packet (the peer's hello) is there.
pub(super) async fn read_hello(
    mesh: &Mesh,
    reader: &mut MainReader,
    buf: &mut BytesMut,
) -> std::result::Result<Packet, String> {
    let mut decoder = FrameDecoder::new(mesh.ctx.codec);
    loop {
        if let Some(packet) = decoder.decode(buf).map_err(|e| e.to_string())? {
            return Ok(packet);
        }
        if !reader.read_into(buf).await? {
            return Err("the peer hung up before its hello".into());
        }
    }
}
