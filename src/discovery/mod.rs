//! How nodes find each other: seeds and peers learned through gossip ([`DialPlan`], used by the
//! point-to-point transports to decide whom to dial and when), and mDNS on the LAN ([`mdns`]).
//! Discovery only proposes addresses: the TLS handshake decides who is a member, and liveness
//! comes from the links.

pub(crate) mod address_record;
mod dial_plan;
pub(crate) mod mdns;

pub(crate) use dial_plan::DialPlan;
pub use dial_plan::PeerSource;
