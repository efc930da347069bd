//! # Phalanx
//!
//! A microservices framework for Rust: services declare **actions** (request-reply) and
//! **events** (pub/sub) with a small builder API; a [`Broker`] per process keeps a registry of
//! every node in the cluster and routes each call to a healthy replica — a direct call when the
//! action lives in this process, a [`Transporter`](transport::Transporter) link otherwise.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, Context};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add { a: i64, b: i64 }
//!
//! let broker = Broker::builder().namespace("shop").start().await?;
//! broker.service("math")
//!     .action("add", |_ctx: Context, p: Add| async move { Ok(p.a + p.b) })
//!     .start()
//!     .await?;
//!
//! let sum: i64 = broker.call("math.add", Add { a: 1, b: 2 }).await?;
//! assert_eq!(sum, 3);
//! broker.emit("user.created", &"ada").await?;   // nobody listens: fine
//! broker.stop().await;
//! # Ok(()) }
//! ```
//!
//! ## Map of the crate
//! | module | concept |
//! |---|---|
//! | [`broker`] | the broker: calls, events, lifecycle |
//! | [`service`] | declaring services |
//! | [`context`] | what a handler knows; call options |
//! | [`registry`] | nodes, endpoints, balancing, event patterns |
//! | [`middleware`] | layers around calls and events: retries, circuit breaker, bulkhead, fallback, spans |
//! | [`metrics`] | counters, latency histograms, Prometheus |
//! | [`packet`], [`codec`] | protocol v1 and its framing |
//! | [`transport`] | the `Transporter` trait and the in-process bus |
//! | [`error`] | the one error type |

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
