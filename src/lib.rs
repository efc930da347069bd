#![doc = include_str!("docs/tour.md")]

mod arena;
mod broker;
pub mod cluster;
mod context;
mod deadline;
mod discovery;
mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
mod handler;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod monitor;
mod payload;
#[cfg(feature = "protobuf")]
mod protobuf;
#[doc(hidden)]
pub mod protocol;
pub mod registry;
pub mod stream;
pub mod transport;

pub use broker::{Broker, BrokerBuilder, ServiceBuilder};
pub use context::{CallOptions, Context, Headers, Meta};
pub use error::{Error, ErrorBody, ErrorKind, Result};
#[cfg(feature = "protobuf")]
pub use payload::Proto;
pub use payload::{ContentType, Json, Payload};
pub use stream::ByteStream;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
