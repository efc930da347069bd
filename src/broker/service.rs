//! Declaring a service: actions, events, hooks, settings and dependencies.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::{Broker, Context};
//!
//! let broker = Broker::builder().start().await?;
//! broker.service("math")
//!     .version(2)                                   // full name: v2.math
//!     .setting("precision", 2)
//!     .action("add", |_ctx: Context, (a, b): (f64, f64)| async move { Ok(a + b) })
//!     .event("numbers.*", |_ctx: Context, n: f64| async move {
//!         tracing::info!(n, "got a number");
//!         Ok(())
//!     })
//!     .started(|_broker| async { Ok(()) })
//!     .start()
//!     .await?;
//! assert_eq!(broker.call::<f64>("v2.math.add", (1.5, 2.0)).await?, 3.5);
//! # broker.stop().await;
//! # Ok(()) }
//! ```

use super::Broker;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::handler::{ActionFn, EventFn, action_fn, event_fn};
use crate::middleware::{Middleware, Stack};
use crate::protocol::packet::{ActionInfo, EventInfo, Meta, ServiceInfo};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The service setting that [`ServiceBuilder::publish_http`] sets.
pub(crate) const PUBLISH_HTTP_SETTING: &str = "$http";

/// A lifecycle hook (`started` / `stopped`).
pub(crate) type LifecycleFn = Arc<dyn Fn(Broker) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Describes a service; [`ServiceBuilder::start`] registers it with the broker.
#[must_use = "a service does nothing until `.start().await`"]
pub struct ServiceBuilder {
    broker: Broker,
    name: String,
    version: Option<String>,
    actions: Vec<(String, ActionFn)>,
    idempotent: Vec<String>,
    schemas: Vec<(String, serde_json::Value)>,
    #[cfg(feature = "protobuf")]
    protos: Vec<crate::protobuf::ProtoAction>,
    #[cfg(feature = "protobuf")]
    descriptors: Option<prost_reflect::DescriptorPool>,
    events: Vec<(String, Option<String>, EventFn)>,
    started: Vec<LifecycleFn>,
    stopped: Vec<LifecycleFn>,
    settings: Meta,
    metadata: Meta,
    dependencies: Vec<String>,
    dependency_timeout: Duration,
    middleware: Vec<Arc<dyn Middleware>>,
}

impl fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "actions",
                &self.actions.iter().map(|a| &a.0).collect::<Vec<_>>(),
            )
            .field("dependencies", &self.dependencies)
            .finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    pub(crate) fn new(broker: Broker, name: String) -> Self {
        Self {
            broker,
            name,
            version: None,
            actions: Vec::new(),
            idempotent: Vec::new(),
            schemas: Vec::new(),
            #[cfg(feature = "protobuf")]
            protos: Vec::new(),
            #[cfg(feature = "protobuf")]
            descriptors: None,
            events: Vec::new(),
            started: Vec::new(),
            stopped: Vec::new(),
            settings: Meta::new(),
            metadata: Meta::new(),
            dependencies: Vec::new(),
            dependency_timeout: Duration::from_secs(30),
            middleware: Vec::new(),
        }
    }

    /// Sets the version: `version(2)` makes the full name `v2.<name>`.
    pub fn version(mut self, version: impl fmt::Display) -> Self {
        self.version = Some(version.to_string());
        self
    }

    /// Adds an action, callable as `<full name>.<action>`.
    pub fn action<P, R, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
    {
        self.actions.push((name.to_owned(), action_fn(handler)));
        self
    }

    /// Adds an action over Protocol Buffers messages (prost types with `prost::Name`, as
    /// `prost-build` generates with `enable_type_names`). Protobuf callers (a
    /// [`Proto`](crate::Proto) value) get Protobuf back; with the service's descriptors
    /// published ([`ServiceBuilder::proto_descriptors`]), JSON callers — the CLI, the gateway,
    /// a `serde_json::Value` — can call it too, in the proto3 JSON mapping. See
    /// [`protobuf`](crate::ContentType::Protobuf) payloads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use phalanx::Proto;
    ///
    /// #[derive(Clone, PartialEq, prost::Message)]
    /// struct Order {
    ///     #[prost(uint32, tag = "1")]
    ///     items: u32,
    /// }
    /// impl prost::Name for Order {
    ///     const NAME: &'static str = "Order";
    ///     const PACKAGE: &'static str = "shop";
    /// }
    ///
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker
    ///     .service("shop")
    ///     .proto_action("double", |_ctx, order: Order| async move {
    ///         Ok(Order { items: order.items * 2 })
    ///     })
    ///     .start()
    ///     .await?;
    /// let twice: Proto<Order> = broker.call("shop.double", Proto(Order { items: 4 })).await?;
    /// assert_eq!(twice.0.items, 8);
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "protobuf")]
    pub fn proto_action<P, R, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        P: prost::Message + prost::Name + Default + 'static,
        R: prost::Message + prost::Name + 'static,
    {
        let (handler, declared) = crate::protobuf::proto_action_fn(name, handler);
        self.actions.push((name.to_owned(), handler));
        self.protos.push(declared);
        self
    }

    /// Publishes the descriptors of this service's Protobuf messages (a `FileDescriptorSet`,
    /// e.g. from `prost-build`'s `file_descriptor_set_path`, decoded with
    /// `DescriptorPool::decode`), so JSON callers can call its
    /// [`proto_action`](ServiceBuilder::proto_action)s: the node converts their JSON to the
    /// message and the answer back. Starting fails if an action's message is not in the pool.
    #[cfg(feature = "protobuf")]
    pub fn proto_descriptors(mut self, pool: prost_reflect::DescriptorPool) -> Self {
        self.descriptors = Some(pool);
        self
    }

    /// Declares actions (by their short names) safe to run twice — reads, upserts, anything
    /// keyed by an idempotency key — so callers' retries also cover failures after which the
    /// action may have run (a timeout, a node lost mid-call, the handler's own retryable error).
    /// Without it, such failures reach the caller instead of running the action again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker
    ///     .service("prices")
    ///     .action("get", |_ctx, item: String| async move { Ok(item.len() as f64 * 1.5) })
    ///     .idempotent(&["get"])
    ///     .start()
    ///     .await?;
    /// assert!(broker.actions().iter().any(|a| a.name == "prices.get" && a.idempotent));
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn idempotent(mut self, actions: &[&str]) -> Self {
        self.idempotent
            .extend(actions.iter().map(|a| (*a).to_owned()));
        self
    }

    /// Subscribes to an event (wildcards allowed) in the service's own group.
    pub fn event<P, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
        P: DeserializeOwned + Send + 'static,
    {
        self.events.push((name.to_owned(), None, event_fn(handler)));
        self
    }

    /// Subscribes to an event in an explicit balancing group.
    pub fn event_in_group<P, F, Fut>(mut self, name: &str, group: &str, handler: F) -> Self
    where
        F: Fn(Context, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
        P: DeserializeOwned + Send + 'static,
    {
        self.events
            .push((name.to_owned(), Some(group.to_owned()), event_fn(handler)));
        self
    }

    /// Runs after dependencies are available and before the service is announced.
    pub fn started<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Broker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.started.push(Arc::new(move |b| hook(b).boxed()));
        self
    }

    /// Runs when the broker stops (services stop in reverse start order).
    pub fn stopped<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Broker) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.stopped.push(Arc::new(move |b| hook(b).boxed()));
        self
    }

    /// Adds a middleware layer around this service's handlers and event handlers only (inside
    /// the broker's layers; the first added is the outermost).
    pub fn middleware(mut self, layer: impl Middleware) -> Self {
        self.middleware.push(Arc::new(layer));
        self
    }

    /// Declares the parameters of an action (by its short name) as a JSON Schema object. It is
    /// announced with the action: API gateways convert query and path strings by it and put it
    /// in their OpenAPI document.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// use serde_json::json;
    /// # #[derive(serde::Deserialize)] struct Get { id: u64 }
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker
    ///     .service("users")
    ///     .action("get", |_ctx, p: Get| async move { Ok(p.id) })
    ///     .params_schema("get", json!({
    ///         "type": "object",
    ///         "properties": { "id": { "type": "integer" } },
    ///         "required": ["id"]
    ///     }))
    ///     .start()
    ///     .await?;
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn params_schema(mut self, action: &str, schema: serde_json::Value) -> Self {
        self.schemas.push((action.to_owned(), schema));
        self
    }

    /// Publishes this service's actions on API gateways that generate routes
    /// (`/api/<service>/<action>`, see [`gateway::Route::auto_aliases`](crate::gateway::Route::auto_aliases)).
    /// Services are not published unless they ask: a gateway exposes nothing by accident.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let broker = phalanx::Broker::builder().start().await?;
    /// broker
    ///     .service("greeter")
    ///     .action("hello", |_ctx, name: String| async move { Ok(format!("hello {name}")) })
    ///     .publish_http()
    ///     .start()
    ///     .await?;
    /// # broker.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn publish_http(self) -> Self {
        self.setting(PUBLISH_HTTP_SETTING, true)
    }

    /// A public setting, announced to other nodes.
    pub fn setting(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.settings.insert(key.to_owned(), value.into());
        self
    }

    /// Free-form metadata, announced to other nodes.
    pub fn metadata(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.to_owned(), value.into());
        self
    }

    /// Services (full names) that must be reachable before this one starts.
    pub fn dependencies<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.dependencies.extend(names.into_iter().map(Into::into));
        self
    }

    /// How long [`start`](Self::start) waits for dependencies. Default: 30 s.
    pub fn dependency_timeout(mut self, timeout: Duration) -> Self {
        self.dependency_timeout = timeout;
        self
    }

    /// Waits for dependencies, runs `started` hooks, registers the service and announces it.
    pub async fn start(self) -> Result<()> {
        let broker = self.broker;
        let full_name = match &self.version {
            Some(v) => format!("v{v}.{}", self.name),
            None => self.name.clone(),
        };
        let idempotent: Vec<String> = self
            .idempotent
            .iter()
            .map(|name| format!("{full_name}.{name}"))
            .collect();
        let actions: Vec<(String, ActionFn)> = self
            .actions
            .into_iter()
            .map(|(name, handler)| (format!("{full_name}.{name}"), handler))
            .collect();
        let events: Vec<(String, String, EventFn)> = self
            .events
            .into_iter()
            .map(|(name, group, handler)| {
                (name, group.unwrap_or_else(|| full_name.clone()), handler)
            })
            .collect();
        #[cfg(feature = "protobuf")]
        let protos = self
            .protos
            .iter()
            .map(|proto| {
                let action = format!("{full_name}.{}", proto.name);
                let types = proto.resolve(&action, self.descriptors.as_ref())?;
                Ok((action, types))
            })
            .collect::<Result<Vec<_>>>()?;
        let info = ServiceInfo {
            full_name: full_name.clone(),
            name: self.name,
            version: self.version,
            actions: actions
                .iter()
                .map(|(name, _)| ActionInfo {
                    name: name.clone(),
                    idempotent: idempotent.contains(name),
                    params_schema: self
                        .schemas
                        .iter()
                        .find(|(short, _)| format!("{full_name}.{short}") == *name)
                        .map(|(_, schema)| schema.clone()),
                    #[cfg(feature = "protobuf")]
                    proto: protos
                        .iter()
                        .find(|(action, _)| action == name)
                        .map(|(_, types)| types.clone()),
                    #[cfg(not(feature = "protobuf"))]
                    proto: None,
                })
                .collect(),
            events: events
                .iter()
                .map(|(name, group, _)| EventInfo {
                    name: name.clone(),
                    group: group.clone(),
                })
                .collect(),
            settings: self.settings,
            metadata: self.metadata,
        };
        // What peers would refuse to hear is refused here first.
        let mut announcement = crate::protocol::packet::Info::default();
        announcement.services.push(info);
        broker
            .inner
            .limits
            .check_info(&announcement)
            .map_err(|why| Error::validation(format!("service '{full_name}' has {why}")))?;
        let info = announcement.services.pop().expect("pushed above");
        if !self.dependencies.is_empty() {
            let names: Vec<&str> = self.dependencies.iter().map(String::as_str).collect();
            broker
                .wait_for_services(&names, self.dependency_timeout)
                .await?;
        }
        for hook in &self.started {
            hook(broker.clone()).await?;
        }
        broker
            .register_service(
                info,
                actions,
                events,
                Stack::new(self.middleware),
                self.stopped,
            )
            .await;
        tracing::debug!(service = %full_name, "service started");
        Ok(())
    }
}
