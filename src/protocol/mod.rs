//! Protocol v2: the packets nodes exchange ([`packet`]) and their length-prefixed
//! frames ([`codec`]): versioned, bounded, and decoded incrementally.
//!
//! Public for the crate's own tests, benches and fuzz targets; not a stable API. A transport
//! needs only what [`transport`](crate::transport) re-exports.

pub mod codec;
mod compact;
pub(crate) mod names;
pub mod packet;
