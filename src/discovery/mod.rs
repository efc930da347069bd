//! How nodes find each other. Seeds and peer gossip live with the QUIC dialer
//! ([`transport::QuicTransport`](crate::transport::QuicTransport)); this module holds the LAN
//! announcer.

pub mod mdns;
