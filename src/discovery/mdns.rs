//! mDNS discovery (`mdns-sd`): announce this node as `_phalanx._udp.local.` and report the nodes
//! of the same namespace found on the LAN.
//!
//! The record carries the node id (`id`), namespace (`ns`), protocol version (`pv`), port,
//! certificate fingerprint (`fp`), the node's socket addresses (`addrs`) and, in a cluster with a
//! shared secret, a member's signature over all of them (`sig`). A signed record is the node's
//! own word on where it is ([`PeerSource::Signed`]); an unsigned or badly signed one is ignored
//! when this node can check signatures, and is only hearsay (dialed slowly, within the
//! handshake budget) when it cannot (CA files): a LAN neighbour cannot steer this node's dials.
//! The TLS handshake — not the record — decides membership. Liveness stays on the links; record
//! expiry means nothing.
//!
//! Only interfaces that carry the node's announced addresses are used: a node listening on
//! loopback speaks mDNS on loopback only, a node listening on every interface on every
//! non-loopback one.

use super::PeerSource;
use crate::error::{Error, Result};
use crate::identity::Credentials;
use crate::protocol::packet::PROTOCOL_VERSION;
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The DNS-SD service type of Phalanx nodes.
pub(crate) const SERVICE_TYPE: &str = "_phalanx._udp.local.";

/// Called with a found node's id, `ip:port` addresses and whose word they are.
pub(crate) type OnFound = Arc<dyn Fn(&str, Vec<String>, PeerSource) + Send + Sync>;

/// Signed addresses listed in a record, at most (a TXT value holds 255 bytes).
const MAX_SIGNED_ADDRESSES: usize = 4;

/// What this node announces, and the credentials that sign and check records.
#[derive(Debug, Clone)]
pub(crate) struct Announcement {
    pub(crate) node_id: String,
    pub(crate) namespace: String,
    pub(crate) credentials: Credentials,
    pub(crate) addresses: Vec<SocketAddr>,
}

/// What a record's signature covers.
fn signed_part(id: &str, ns: &str, pv: &str, addrs: &str) -> Vec<u8> {
    format!("phalanx-mdns\n{id}\n{ns}\n{pv}\n{addrs}").into_bytes()
}

/// A running announcer and browser; [`Mdns::stop`] withdraws the record.
pub(crate) struct Mdns {
    daemon: ServiceDaemon,
    fullname: String,
    browser: JoinHandle<()>,
}

impl std::fmt::Debug for Mdns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mdns")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Mdns {
    pub(crate) fn start(me: Announcement, on_found: OnFound) -> Result<Self> {
        let err = |e: mdns_sd::Error| Error::transport(format!("mDNS: {e}"));
        let port = me.addresses.first().map(|a| a.port()).unwrap_or_default();
        let ips: Vec<IpAddr> = me.addresses.iter().map(SocketAddr::ip).collect();
        let daemon = ServiceDaemon::new().map_err(err)?;
        daemon.disable_interface(IfKind::All).map_err(err)?;
        for ip in &ips {
            daemon.enable_interface(IfKind::Addr(*ip)).map_err(err)?;
        }
        let instance = sanitize(&me.node_id);
        let pv = PROTOCOL_VERSION.to_string();
        let addrs = me
            .addresses
            .iter()
            .take(MAX_SIGNED_ADDRESSES)
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let fingerprint = me.credentials.fingerprint();
        let signature = me
            .credentials
            .sign_announcement(&signed_part(&me.node_id, &me.namespace, &pv, &addrs))
            .unwrap_or_default();
        let properties = [
            ("id", me.node_id.as_str()),
            ("ns", me.namespace.as_str()),
            ("pv", pv.as_str()),
            ("fp", fingerprint.as_str()),
            ("addrs", addrs.as_str()),
            ("sig", signature.as_str()),
        ];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{instance}.local."),
            &ips[..],
            port,
            &properties[..],
        )
        .map_err(err)?;
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(err)?;
        let events = daemon.browse(SERVICE_TYPE).map_err(err)?;
        let browser = tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                let ServiceEvent::ServiceResolved(found) = event else {
                    continue;
                };
                let property = |key: &str| {
                    found
                        .txt_properties
                        .get_property_val_str(key)
                        .map(str::to_owned)
                };
                let (Some(id), Some(ns), Some(pv)) =
                    (property("id"), property("ns"), property("pv"))
                else {
                    continue;
                };
                if id == me.node_id || ns != me.namespace || pv != PROTOCOL_VERSION.to_string() {
                    continue;
                }
                let addrs = property("addrs").unwrap_or_default();
                let signature = property("sig").unwrap_or_default();
                let signed = signed_part(&id, &ns, &pv, &addrs);
                let (addresses, source) = match me
                    .credentials
                    .verify_announcement(&signed, &signature)
                {
                    Some(true) => (
                        addrs
                            .split(',')
                            .filter(|a| a.parse::<SocketAddr>().is_ok())
                            .map(str::to_owned)
                            .collect(),
                        PeerSource::Signed,
                    ),
                    Some(false) => {
                        tracing::trace!(peer = %id, "mDNS record without a member's signature ignored");
                        continue;
                    }
                    None => (
                        found
                            .addresses
                            .iter()
                            .map(|ip| SocketAddr::new(ip.to_ip_addr(), found.port).to_string())
                            .collect(),
                        PeerSource::Hearsay,
                    ),
                };
                tracing::debug!(peer = %id, ?addresses, ?source, "found by mDNS");
                on_found(&id, addresses, source);
            }
        });
        tracing::debug!(%fullname, "announced by mDNS");
        Ok(Self {
            daemon,
            fullname,
            browser,
        })
    }

    /// Withdraws the record (peers' caches drop it at once) and stops the daemon.
    pub(crate) async fn stop(&self) {
        self.browser.abort();
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), done.recv_async())
                .await;
        }
        let _ = self.daemon.shutdown();
    }
}

/// DNS labels: at most 63 bytes of letters, digits and hyphens.
fn sanitize(node_id: &str) -> String {
    let label: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if label.is_empty() {
        "node".into()
    } else {
        label
    }
}
