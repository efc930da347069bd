//! Server-Sent Events: cluster events streamed to browsers.
//!
//! The gateway's node subscribes to each events route's pattern in a group of its own, so every
//! matching event — emitted or broadcast anywhere — reaches it once. Each event is rendered once
//! and fanned out through a bounded channel; a browser that cannot keep up skips what it missed
//! (counted) instead of holding memory.

use super::reply::{self, REQUEST_ID, error_response};
use super::{Refusal, Shared, client_of, finish};
use crate::Context;
use crate::broker::Broker;
use crate::error::{Error, ErrorKind, Result};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{broadcast, watch};

type EventFilterFn = Arc<dyn Fn(Option<&Value>, &str, &Value) -> bool + Send + Sync>;

/// A `GET` path that streams the cluster events matching a pattern (`*` one segment, `**` any)
/// to browsers as Server-Sent Events. Each message's data is
/// `{"event": name, "data": …, "sender": node}`; a client narrows the stream with
/// `?pattern=orders.paid`.
///
/// ```
/// use phalanx::gateway::EventRoute;
///
/// // Signed-in users see the events of their own orders only.
/// let orders = EventRoute::new("/events/orders", "orders.**")
///     .authenticated()
///     .filter(|user, _event, data| {
///         user.is_some_and(|u| u["id"] == data["customer"])
///     });
/// ```
#[derive(Clone)]
pub struct EventRoute {
    pub(super) path: String,
    pub(super) pattern: String,
    pub(super) authenticated: bool,
    pub(super) filter: Option<EventFilterFn>,
    pub(super) buffer: usize,
}

impl fmt::Debug for EventRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRoute")
            .field("path", &self.path)
            .field("pattern", &self.pattern)
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

impl EventRoute {
    /// Streams events matching `pattern` at `GET path`.
    pub fn new(path: &str, pattern: &str) -> Self {
        Self {
            path: format!("/{}", path.trim_matches('/')),
            pattern: pattern.to_owned(),
            authenticated: false,
            filter: None,
            buffer: 256,
        }
    }

    /// Only authenticated users may listen (401 otherwise).
    pub fn authenticated(mut self) -> Self {
        self.authenticated = true;
        self
    }

    /// Decides per listener and event whether the listener sees it, from the user the
    /// authenticator found (if any), the event's name and its data.
    pub fn filter<F>(mut self, filter: F) -> Self
    where
        F: Fn(Option<&Value>, &str, &Value) -> bool + Send + Sync + 'static,
    {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// How many events a slow listener may fall behind before it skips (default 256).
    pub fn buffer(mut self, events: usize) -> Self {
        self.buffer = events.max(1);
        self
    }
}

/// One event, rendered once for every listener.
#[derive(Debug)]
pub(super) struct Published {
    pub(super) name: String,
    pub(super) data: Value,
    pub(super) message: SseEvent,
}

/// The fan-out of one events route.
#[derive(Debug)]
pub(super) struct Hub {
    pub(super) route: EventRoute,
    pub(super) sender: broadcast::Sender<Arc<Published>>,
}

impl Hub {
    pub(super) fn new(route: EventRoute) -> Self {
        let (sender, _) = broadcast::channel(route.buffer);
        Self { route, sender }
    }

    /// Hands an event to the listeners connected now.
    pub(super) fn publish(&self, name: &str, sender: Option<&str>, data: Value) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let envelope = serde_json::json!({ "event": name, "data": data, "sender": sender });
        let message = SseEvent::default().data(envelope.to_string());
        let _ = self.sender.send(Arc::new(Published {
            name: name.to_owned(),
            data,
            message,
        }));
    }
}

/// Whether the client-chosen `pattern` is one the gateway will match (bounded like patterns
/// from peers).
pub(super) fn valid_client_pattern(pattern: &str) -> bool {
    pattern.len() <= 256
        && !pattern.is_empty()
        && pattern.split('.').count() <= crate::limits::MAX_PATTERN_SEGMENTS
}

/// An events route: authenticate, then stream what matches until the client or the gateway
/// goes away.
pub(super) async fn stream_events(
    State(shared): State<Arc<Shared>>,
    index: usize,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let client = client_of(&parts);
    let request_id = reply::request_id(parts.headers.get(REQUEST_ID));
    let response = match open_stream(&shared, index, &parts, client).await {
        Ok(response) => response,
        Err(refusal) => error_response(&refusal.error, refusal.retry_after),
    };
    finish(&shared, response, &request_id)
}

async fn open_stream(
    shared: &Arc<Shared>,
    index: usize,
    parts: &Parts,
    client: Option<SocketAddr>,
) -> Result<Response, Refusal> {
    shared.admit(parts, client)?;
    let hub = shared.hubs[index].clone();
    let user = shared
        .authenticate(parts, client, hub.route.authenticated)
        .await?;
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default();
    let pattern = query
        .into_iter()
        .find(|(k, _)| k == "pattern")
        .map(|(_, v)| v);
    if let Some(p) = &pattern
        && !valid_client_pattern(p)
    {
        return Err(Error::validation("the pattern is empty or too long").into());
    }
    let clients = EventClient::join(shared)?;
    let listener = Listener {
        receiver: hub.sender.subscribe(),
        hub,
        stop: shared.shutdown.subscribe(),
        user,
        pattern,
        _client: clients,
    };
    let stream = futures_util::stream::unfold(listener, Listener::next);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One open event stream, counted while it lives.
struct EventClient(Arc<Shared>);

impl EventClient {
    fn join(shared: &Arc<Shared>) -> Result<Self, Refusal> {
        let open = shared.stats.event_clients.fetch_add(1, Ordering::AcqRel);
        let client = Self(shared.clone());
        if open >= shared.max_event_clients as i64 {
            return Err(
                Error::new(ErrorKind::Rejected, "too many event streams are open")
                    .with_type("TOO_MANY_STREAMS")
                    .into(),
            );
        }
        Ok(client)
    }
}

impl Drop for EventClient {
    fn drop(&mut self) {
        self.0.stats.event_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What one browser's stream waits on.
struct Listener {
    receiver: broadcast::Receiver<Arc<Published>>,
    hub: Arc<Hub>,
    stop: watch::Receiver<bool>,
    user: Option<Value>,
    pattern: Option<String>,
    _client: EventClient,
}

impl Listener {
    /// The next message for this listener; `None` ends the stream.
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let received = tokio::select! {
                _ = self.stop.wait_for(|stopping| *stopping) => return None,
                received = self.receiver.recv() => received,
            };
            match received {
                Ok(event) => {
                    let wanted = self
                        .pattern
                        .as_deref()
                        .is_none_or(|p| crate::registry::pattern_matches(p, &event.name))
                        && self
                            .hub
                            .route
                            .filter
                            .as_ref()
                            .is_none_or(|f| f(self.user.as_ref(), &event.name, &event.data));
                    if wanted {
                        let message = event.message.clone();
                        return Some((Ok(message), self));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self._client
                        .0
                        .stats
                        .events_dropped
                        .fetch_add(missed, Ordering::Relaxed);
                    let note = SseEvent::default().comment(format!("skipped {missed} events"));
                    return Some((Ok(note), self));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Gives every events route a subscription of this gateway's own (a group per gateway), so
/// each matching event reaches it once.
pub(super) async fn subscribe(broker: &Broker, hubs: &[Arc<Hub>]) -> Result<()> {
    static GATEWAYS: AtomicUsize = AtomicUsize::new(0);
    let n = GATEWAYS.fetch_add(1, Ordering::Relaxed);
    let name = format!("$gateway-{n}");
    let group = format!("$gateway-{}-{n}", broker.node_id());
    let mut service = broker.service(name);
    for hub in hubs {
        let hub = hub.clone();
        service = service.event_in_group(
            &hub.route.pattern.clone(),
            &group,
            move |ctx: Context, data: Value| {
                let sender = ctx.node_id().unwrap_or_else(|| ctx.this_node());
                hub.publish(ctx.event().unwrap_or_default(), Some(sender), data);
                async { Ok(()) }
            },
        );
    }
    service.start().await
}
