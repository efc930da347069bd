//! Server-Sent Events: cluster events streamed to browsers.
//!
//! The gateway's node subscribes to each events route's pattern in a group of its own, so every
//! matching event — emitted or broadcast anywhere — reaches it once. Each event is rendered once
//! and fanned out through a bounded channel; a browser that cannot keep up skips what it missed
//! (counted) instead of holding memory.

use axum::response::sse::Event as SseEvent;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use tokio::sync::broadcast;

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
