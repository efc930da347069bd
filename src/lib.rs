#![doc = include_str!("docs/tour.md")]

pub mod broker;
pub mod cluster;
pub mod context;
mod deadline;
mod discovery;
pub mod error;
mod handler;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod middleware;
pub mod payload;
#[doc(hidden)]
pub mod protocol;
pub mod registry;
pub mod transport;

pub use broker::{Broker, BrokerBuilder, ServiceBuilder};
pub use context::{CallOptions, Context};
pub use error::{Error, ErrorKind, Result};
pub use payload::Payload;

/// The README's examples, compiled as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
