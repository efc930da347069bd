//! The HTTP API gateway: the cluster's actions and events behind HTTP, on axum.
//!
//! A gateway is a node like any other — it joins the mesh through its broker and calls the
//! actions wherever they run — that also answers HTTP:
//!
//! - **routes** ([`Route`]): `/api/<service>/<action>` generated for services that
//!   [publish](crate::ServiceBuilder::publish_http) themselves, explicit aliases with path
//!   parameters (`GET /users/{id}` → `users.get`), REST shorthand, white- and blacklists;
//! - **params**: query, JSON or form body and path parameters merged into the action's params
//!   (see [`params`](self#params)); chosen headers into the call's meta; the request id travels in
//!   `x-request-id` both ways;
//! - **errors** as the status of their code with a JSON body `{name, message, code, type, data}`:
//!   no route or unknown action 404, validation 422, timeout 504, unavailable 503;
//! - an [`Authenticator`] (a Rust function or an action) that turns a request into a user in
//!   meta or refuses it (401/403), and per-route authorization;
//! - body-size limit, timeouts, [CORS](Cors), [rate limiting](RateLimit) per client, gzip,
//!   graceful shutdown;
//! - **Server-Sent Events** ([`EventRoute`]): cluster events matching a pattern, streamed to
//!   browsers, filtered per user;
//! - `GET /health` (200 when every action the routes name is served, 503 otherwise),
//!   `GET /metrics` (Prometheus text) and `GET /openapi.json` (generated from the routes and the
//!   params schemas services declare). These three paths are the gateway's own.
//!
//! # Params
//! Path parameters win over the body, the body over the query. Query and path values are text:
//! converted by the action's declared [params schema](crate::ServiceBuilder::params_schema)
//! when there is one, otherwise text that reads as a JSON number or `true`/`false` is converted.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::gateway::{Gateway, Route};
//! # #[derive(serde::Deserialize)] struct Add { a: i64, b: i64 }
//!
//! let broker = phalanx::Broker::builder().start().await?;
//! broker
//!     .service("math")
//!     .action("add", |_ctx, p: Add| async move { Ok(p.a + p.b) })
//!     .publish_http()
//!     .start()
//!     .await?;
//! let gateway = Gateway::builder(&broker)
//!     .route(Route::new("/api").auto_aliases())
//!     .serve("127.0.0.1:0".parse().unwrap())
//!     .await?;
//! // GET http://{gateway.local_addr()}/api/math/add?a=1&b=2 → 3
//! # let _ = gateway.local_addr();
//! gateway.shutdown().await;
//! # broker.stop().await;
//! # Ok(()) }
//! ```

mod auth;
mod body;
mod cors;
mod dashboard;
mod events;
mod openapi;
mod params;
mod rate_limit;
mod reply;
mod route;
mod stats;
mod table;

pub use auth::{AuthRequest, Authenticator, Authorization, forbidden, unauthorized};
pub use cors::Cors;
pub use events::EventRoute;
pub use rate_limit::RateLimit;
pub use route::Route;

use crate::broker::Broker;
use crate::error::{Error, ErrorKind, Result};
use crate::{ByteStream, CallOptions, Payload};
use axum::Router;
use axum::body::Body as HttpBody;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use events::{Hub, stream_events, subscribe};
use rate_limit::Limiter;
use reply::{REQUEST_ID, error_response, json_response};
use serde_json::{Value, json};
use stats::GatewayStats;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use table::TableCache;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Describes a gateway; finish with [`GatewayBuilder::build`] or [`GatewayBuilder::serve`].
#[must_use = "a gateway does nothing until it is built and served"]
pub struct GatewayBuilder {
    broker: Broker,
    routes: Vec<Route>,
    events: Vec<EventRoute>,
    authenticator: Option<Authenticator>,
    cors: Option<Cors>,
    rate_limit: Option<RateLimit>,
    body_limit: usize,
    stream_limit: u64,
    timeout: Duration,
    compression: bool,
    max_event_clients: usize,
    shutdown_grace: Duration,
    dashboard: Option<String>,
}

impl fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayBuilder")
            .field("routes", &self.routes)
            .field("events", &self.events)
            .field("body_limit", &self.body_limit)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// Adds a route; requests try routes in the order they were added.
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds a Server-Sent Events path.
    pub fn events(mut self, route: EventRoute) -> Self {
        self.events.push(route);
        self
    }

    /// Finds the user of each request (see [`Authenticator`]).
    pub fn authenticate(mut self, authenticator: Authenticator) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// Answers cross-origin requests (and their preflights) as `cors` allows.
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Limits requests per client (429 with `Retry-After` beyond).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// The largest request body accepted (413 beyond); default 1 MiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The largest body streamed to an action (a body that is neither JSON nor a form, or a
    /// multipart form's file): 413 beyond; default 8 GiB.
    pub fn stream_limit(mut self, bytes: u64) -> Self {
        self.stream_limit = bytes;
        self
    }

    /// How long a request may take — reading its body, then its call — before it fails
    /// (408 / 504); default 30 s. Routes may set their own call timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Compresses answers with gzip when the client accepts it (default on).
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// How many event streams may be open at once (503 beyond); default 1024.
    pub fn max_event_clients(mut self, clients: usize) -> Self {
        self.max_event_clients = clients;
        self
    }

    /// Serves the web dashboard at `path` (`/dashboard`, or `/`): the nodes as a live topology,
    /// per-action rate, latency and error charts, open circuits and a tail of cluster events,
    /// updated by Server-Sent Events. When the gateway has an authenticator, only its users see
    /// it. Subscribing to every event, it brings a copy of each to this node.
    pub fn dashboard(mut self, path: &str) -> Self {
        self.dashboard = Some(format!("/{}", path.trim_matches('/')));
        self
    }

    /// How long [`RunningGateway::shutdown`] waits for requests in progress; default 10 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Checks the description and subscribes the events routes to the cluster.
    pub async fn build(self) -> Result<Gateway> {
        route::check(&self.routes)?;
        if let Some(cors) = &self.cors {
            cors.check()?;
        }
        for route in &self.events {
            if !events::valid_client_pattern(&route.pattern) {
                return Err(Error::validation(format!(
                    "events route {} has an invalid pattern",
                    route.path
                )));
            }
        }
        let mut events = self.events;
        if let Some(path) = &self.dashboard {
            let base = path.trim_end_matches('/');
            events.push(dashboard::events_route(base, self.authenticator.is_some()));
        }
        let hubs: Vec<Arc<Hub>> = events.into_iter().map(|r| Arc::new(Hub::new(r))).collect();
        if !hubs.is_empty() {
            subscribe(&self.broker, &hubs).await?;
        }
        let (shutdown, _) = watch::channel(false);
        let views = self.dashboard.as_ref().map(|_| {
            let (views, watching) = watch::channel(Arc::<str>::from(""));
            dashboard::publish_views(self.broker.clone(), views, shutdown.subscribe());
            watching
        });
        let shared = Arc::new(Shared {
            broker: self.broker,
            routes: self.routes,
            hubs,
            authenticator: self.authenticator,
            limiter: self.rate_limit.map(Limiter::new),
            body_limit: self.body_limit,
            stream_limit: self.stream_limit,
            timeout: self.timeout,
            max_event_clients: self.max_event_clients,
            stats: GatewayStats::default(),
            table: TableCache::default(),
            shutdown,
            dashboard: views,
        });
        let mut router = Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .route("/openapi.json", get(openapi_document));
        for index in 0..shared.hubs.len() {
            let path = shared.hubs[index].route.path.clone();
            router = router.route(
                &path,
                get(move |state: State<Arc<Shared>>, request: Request| {
                    stream_events(state, index, request)
                }),
            );
        }
        if let Some(path) = &self.dashboard {
            let base = path.trim_end_matches('/');
            router = router
                .route(path, get(dashboard::page))
                .route(&format!("{base}/view"), get(dashboard::view));
        }
        let mut router = router.fallback(call_action).with_state(shared.clone());
        if self.compression {
            // Not for binary streams: compressing them costs much and saves little.
            use tower_http::compression::predicate::{
                DefaultPredicate, NotForContentType, Predicate,
            };
            let worth = DefaultPredicate::new()
                .and(NotForContentType::const_new("application/octet-stream"));
            router =
                router.layer(tower_http::compression::CompressionLayer::new().compress_when(worth));
        }
        if let Some(cors) = &self.cors {
            router = router.layer(cors.layer());
        }
        Ok(Gateway {
            shared,
            router,
            shutdown_grace: self.shutdown_grace,
        })
    }

    /// Builds the gateway and serves it on `addr`.
    pub async fn serve(self, addr: SocketAddr) -> Result<RunningGateway> {
        self.build().await?.serve(addr).await
    }
}

/// A built gateway: serve it, or mount its [router](Gateway::router) in an axum application.
pub struct Gateway {
    shared: Arc<Shared>,
    router: Router,
    shutdown_grace: Duration,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.shared.broker.node_id())
            .field("routes", &self.shared.routes)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// A gateway in front of `broker`'s cluster, with no routes yet.
    pub fn builder(broker: &Broker) -> GatewayBuilder {
        GatewayBuilder {
            broker: broker.clone(),
            routes: Vec::new(),
            events: Vec::new(),
            authenticator: None,
            cors: None,
            rate_limit: None,
            body_limit: 1024 * 1024,
            stream_limit: 8 << 30,
            timeout: Duration::from_secs(30),
            compression: true,
            max_event_clients: 1024,
            shutdown_grace: Duration::from_secs(10),
            dashboard: None,
        }
    }

    /// The gateway as an axum router, to serve yourself or nest in a larger application (serve
    /// it with `into_make_service_with_connect_info::<SocketAddr>()` so rate limits see client
    /// addresses).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serves on `addr` until [`RunningGateway::shutdown`].
    pub async fn serve(self, addr: SocketAddr) -> Result<RunningGateway> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::transport(format!("cannot listen on {addr}: {e}")).with_source(e)
        })?;
        self.serve_on(listener)
    }

    /// Serves on a listener already bound.
    pub fn serve_on(self, listener: TcpListener) -> Result<RunningGateway> {
        let addr = listener
            .local_addr()
            .map_err(|e| Error::transport(format!("listener has no address: {e}")))?;
        let mut stop = self.shared.shutdown.subscribe();
        let app = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        });
        let task = tokio::spawn(async move {
            if let Err(err) = server.await {
                tracing::warn!(%err, "gateway server failed");
            }
        });
        tracing::info!(%addr, node = %self.shared.broker.node_id(), "gateway listening");
        Ok(RunningGateway {
            addr,
            shared: self.shared,
            task,
            grace: self.shutdown_grace,
        })
    }
}

/// A gateway being served.
#[derive(Debug)]
pub struct RunningGateway {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
    grace: Duration,
}

impl RunningGateway {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking connections, ends the event streams, lets requests in progress finish
    /// (within the shutdown grace) and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shared.shutdown.send(true);
        if tokio::time::timeout(self.grace, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "gateway requests still running after the grace: cut");
            self.task.abort();
        }
    }
}

/// What every request handler of one gateway shares.
struct Shared {
    broker: Broker,
    routes: Vec<Route>,
    hubs: Vec<Arc<Hub>>,
    authenticator: Option<Authenticator>,
    limiter: Option<Limiter>,
    body_limit: usize,
    stream_limit: u64,
    timeout: Duration,
    max_event_clients: usize,
    stats: GatewayStats,
    table: TableCache,
    shutdown: watch::Sender<bool>,
    /// The dashboard's latest cluster view (JSON), when the dashboard is on.
    dashboard: Option<watch::Receiver<Arc<str>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("node", &self.broker.node_id())
            .finish_non_exhaustive()
    }
}

/// Why a request is not served: the error for its body, and when to come back.
struct Refusal {
    error: Error,
    retry_after: Option<Duration>,
}

impl From<Error> for Refusal {
    fn from(error: Error) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

/// What an action answered: a value, or a stream to send as the body.
enum Answer {
    Json(Value),
    Stream(ByteStream),
}

/// A request matched to an action.
struct Target<'a> {
    route: &'a Route,
    action: String,
    path_params: Vec<(String, String)>,
    /// Named by the gateway's description (not generated): a missing action is unavailable
    /// (503), not unknown (404).
    declared: bool,
}

impl Shared {
    /// Takes a token of the client's bucket.
    fn admit(&self, parts: &Parts, client: Option<SocketAddr>) -> Result<(), Refusal> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = limiter.key(&parts.headers, client);
        limiter.take(&key).map_err(|wait| {
            GatewayStats::count(&self.stats.rate_limited);
            Refusal {
                error: Error::handler(429, "RATE_LIMITED", "too many requests from this client")
                    .with_retryable(true),
                retry_after: Some(wait),
            }
        })
    }

    /// The user of the request; refuses it when the route wants one and there is none.
    async fn authenticate(
        &self,
        parts: &Parts,
        client: Option<SocketAddr>,
        required: bool,
    ) -> Result<Option<Value>, Refusal> {
        let user = match &self.authenticator {
            Some(authenticator) => authenticator
                .authenticate(
                    &self.broker,
                    &auth::AuthRequest::of(parts, client),
                    self.timeout,
                )
                .await
                .inspect_err(|_| GatewayStats::count(&self.stats.refused_auth))?,
            None => None,
        };
        if required && user.is_none() {
            GatewayStats::count(&self.stats.refused_auth);
            return Err(unauthorized("authentication required").into());
        }
        Ok(user)
    }

    /// Finds the route and action for a request.
    fn resolve(&self, method: &Method, path: &str) -> Result<Target<'_>, Refusal> {
        let segments: Vec<&str> = route::split_path(path).collect();
        let mut wrong_method = false;
        for route in &self.routes {
            let Some(rest) = route.strip(&segments) else {
                continue;
            };
            // The most specific match wins (most literal segments; a generated alias is all
            // literal), explicit aliases first among equals — as in routers that rank static
            // segments above parameters.
            let mut best: Option<(usize, Target<'_>)> = None;
            for alias in &route.aliases {
                let Some(path_params) = alias.bind(rest) else {
                    continue;
                };
                if alias.method.as_ref().is_some_and(|m| m != method) {
                    wrong_method = true;
                    continue;
                }
                let literal = rest.len() - path_params.len();
                if best.as_ref().is_none_or(|(score, _)| literal > *score) {
                    let target = Target {
                        route,
                        action: alias.action.clone(),
                        path_params,
                        declared: true,
                    };
                    best = Some((literal, target));
                }
            }
            let exact = best.as_ref().is_some_and(|(score, _)| *score == rest.len());
            if !exact && route.auto_aliases && !rest.is_empty() {
                let action = rest
                    .iter()
                    .map(|s| route::decode_segment(s))
                    .collect::<Vec<_>>()
                    .join(".");
                if self.table.current(&self.broker).is_published(&action) {
                    let target = Target {
                        route,
                        action,
                        path_params: Vec::new(),
                        declared: false,
                    };
                    best = Some((rest.len(), target));
                }
            }
            if let Some((_, target)) = best {
                if !route.allows(&target.action) {
                    break;
                }
                return Ok(target);
            }
        }
        Err(if wrong_method {
            Error::handler(
                405,
                "METHOD_NOT_ALLOWED",
                format!("{method} is not allowed on {path}"),
            )
        } else {
            Error::new(
                ErrorKind::ServiceNotFound,
                format!("no route for {method} {path}"),
            )
            .with_type("NOT_FOUND")
        }
        .into())
    }

    /// Serves one request for an action.
    async fn answer(
        &self,
        parts: &Parts,
        body: HttpBody,
        client: Option<SocketAddr>,
        request_id: &str,
    ) -> Result<Answer, Refusal> {
        self.admit(parts, client)?;
        let target = self.resolve(&parts.method, parts.uri.path())?;
        let route = target.route;
        let user = self
            .authenticate(parts, client, route.authenticated)
            .await?;
        if let Some(check) = &route.authorize {
            check(&Authorization {
                user: user.as_ref(),
                action: &target.action,
                method: &parts.method,
                path: parts.uri.path(),
            })
            .inspect_err(|_| GatewayStats::count(&self.stats.refused_auth))?;
        }
        let (body, stream) = self.read_body(parts, body).await?;
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).map_err(|e| {
                Error::handler(400, "BAD_REQUEST", format!("cannot read the query: {e}"))
            })?;
        let table = self.table.current(&self.broker);
        let params = params::merge(
            query,
            body,
            target.path_params,
            table.schema(&target.action),
        )?;
        let mut options = CallOptions::new()
            .timeout(route.timeout.unwrap_or(self.timeout))
            .header(REQUEST_ID, request_id);
        if let Some(stream) = stream {
            options = options.stream(stream);
        }
        if let Some(user) = user {
            options = options.meta("user", user);
        }
        for name in &route.meta_headers {
            if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                options = options.meta(name.as_str(), value);
            }
        }
        let result = self
            .broker
            .call_raw(&target.action, Payload::local(params), options)
            .await
            .map_err(|err| match err.kind() {
                ErrorKind::ServiceNotFound if target.declared => Error::new(
                    ErrorKind::Rejected,
                    format!("'{}' is not available now", target.action),
                )
                .with_type("SERVICE_UNAVAILABLE"),
                _ => err,
            })?;
        match result.into_stream() {
            Ok(stream) => Ok(Answer::Stream(stream)),
            Err(result) => Ok(Answer::Json(result.decode::<Value>()?)),
        }
    }
}

fn client_of(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// Finishes an answer: counts it and returns the request id.
fn finish(shared: &Shared, mut response: Response, request_id: &str) -> Response {
    shared.stats.answered(response.status().as_u16());
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Every request that is not one of the gateway's own paths: an action call.
async fn call_action(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = client_of(&parts);
    let request_id = reply::request_id(parts.headers.get(REQUEST_ID));
    let response = match shared.answer(&parts, body, client, &request_id).await {
        Ok(Answer::Json(result)) => json_response(StatusCode::OK, &result),
        Ok(Answer::Stream(stream)) => reply::stream_response(stream),
        Err(refusal) => error_response(&refusal.error, refusal.retry_after),
    };
    finish(&shared, response, &request_id)
}

/// `GET /health`: ready when every action the routes name is served by an available node.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.current(&shared.broker);
    let mut missing: Vec<&str> = shared
        .routes
        .iter()
        .flat_map(|r| r.aliases.iter().filter(|a| r.allows(&a.action)))
        .map(|a| a.action.as_str())
        .filter(|action| !table.serves(action))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    let stopping = shared.broker.is_stopping() || *shared.shutdown.borrow();
    let ready = missing.is_empty() && !stopping;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let nodes = shared.broker.nodes().iter().filter(|n| n.available).count();
    json_response(
        status,
        &json!({
            "status": if stopping { "stopping" } else if ready { "ready" } else { "waiting" },
            "node": shared.broker.node_id(),
            "nodes_available": nodes,
            "missing": missing,
        }),
    )
}

/// `GET /metrics`: the node's and the gateway's figures for Prometheus.
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.stats.render(&shared.broker.metrics());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// `GET /openapi.json`.
async fn openapi_document(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.current(&shared.broker);
    let events: Vec<EventRoute> = shared.hubs.iter().map(|h| h.route.clone()).collect();
    json_response(
        StatusCode::OK,
        &openapi::document(&shared.routes, &events, &table),
    )
}
