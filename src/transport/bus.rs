//! What the bus transports (NATS, Kafka) share: names for ids on the bus, and turning a received
//! envelope into a packet in its sender's own name.

use super::TransportContext;
use super::envelope::{Envelopes, Refused, Replays};
use crate::identity::ClusterCa;
use crate::protocol::packet::Packet;
use bytes::Bytes;
use std::sync::Arc;

/// A subject or topic token for an id: the id itself when it is a plain token, hex otherwise
/// (so no id can reach into another's subjects with `.`, `*` or `>`).
pub(crate) fn token(id: &str) -> String {
    let plain = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        id.to_owned()
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}")
    }
}

/// A namespace's part of subject and topic names: its token, `_` when empty.
pub(crate) fn namespace_token(namespace: &str) -> String {
    if namespace.is_empty() {
        "_".to_owned()
    } else {
        token(namespace)
    }
}

/// This node's envelopes on a bus, proving membership with `cluster_ca` (default: the local
/// one, as for the mesh).
pub(crate) fn envelopes(
    ctx: &TransportContext,
    cluster_ca: Option<&ClusterCa>,
    encrypt_broadcasts: bool,
) -> crate::Result<Arc<Envelopes>> {
    let cluster_ca = match cluster_ca {
        Some(ca) => ca.clone(),
        None => ClusterCa::local()?,
    };
    Ok(Arc::new(Envelopes::new(
        ctx.node_id.clone(),
        cluster_ca.credentials(&ctx.node_id)?,
        encrypt_broadcasts,
    )))
}

/// Opens a message received on `subject` (replays judged as `replays` says) and decodes its
/// packet, which must be in its sender's own name. The error is why it was dropped (empty for
/// our own broadcasts coming back).
pub(crate) fn open_packet(
    ctx: &TransportContext,
    envelopes: &Envelopes,
    subject: &str,
    message: Bytes,
    replays: Replays,
) -> std::result::Result<Packet, String> {
    let opened = envelopes
        .open(subject, message, replays)
        .map_err(|e| match e {
            // Our own broadcasts come back from the bus: not worth a word.
            Refused::Own => String::new(),
            other => other.to_string(),
        })?;
    let packet = ctx
        .codec
        .decode_whole(opened.frame)
        .map_err(|e| e.to_string())?;
    if packet.sender != opened.sender {
        return Err(format!(
            "'{}' sent a packet in the name of '{}'",
            opened.sender, packet.sender
        ));
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::token;

    #[test]
    fn node_ids_become_safe_subject_tokens() {
        assert_eq!(token("node-1_a"), "node-1_a");
        assert_eq!(token("a.b"), "x612e62");
        assert_eq!(token("*"), "x2a");
    }
}
