//! The web dashboard: one page (embedded in the binary, no CDN) showing the nodes as a live
//! topology with their link kinds, per-action rate, latency and error charts, open circuits and a
//! tail of cluster events — fed by two Server-Sent Events streams: `<path>/view` (the
//! [`monitor`](crate::monitor) view, once a second while anyone watches) and `<path>/events`
//! (every cluster event).

use super::events::EventRoute;
use super::reply::{REQUEST_ID, error_response};
use super::{Refusal, Shared, client_of, finish};
use crate::broker::Broker;
use crate::monitor::Cluster;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// How often the view is recomputed while someone watches.
const REFRESH: Duration = Duration::from_secs(1);

/// The events route the page tails: every event, for authenticated users when the gateway
/// authenticates.
pub(super) fn events_route(path: &str, authenticated: bool) -> EventRoute {
    let route = EventRoute::new(&format!("{path}/events"), "**");
    if authenticated {
        route.authenticated()
    } else {
        route
    }
}

/// Recomputes the cluster view once a second while anyone watches, until the gateway stops.
pub(super) fn publish_views(
    broker: Broker,
    views: watch::Sender<Arc<str>>,
    mut stop: watch::Receiver<bool>,
) {
    // The gateway keeps one receiver to hand out copies: more than that is a watcher.
    tokio::spawn(async move {
        let mut cluster = Cluster::default();
        loop {
            if *stop.borrow() {
                return;
            }
            if views.receiver_count() > 1 {
                cluster.refresh(&broker, REFRESH).await;
                match serde_json::to_string(&cluster) {
                    Ok(json) => {
                        let _ = views.send(Arc::from(json));
                    }
                    Err(err) => tracing::warn!(%err, "dashboard view not encoded"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = stop.changed() => {}
            }
        }
    });
}

/// `GET <path>`: the page.
pub(super) async fn page(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let request_id = super::reply::request_id(parts.headers.get(REQUEST_ID));
    let response = match shared.may_watch(&parts).await {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            PAGE,
        )
            .into_response(),
        Err(refusal) => error_response(&refusal.error, refusal.retry_after),
    };
    finish(&shared, response, &request_id)
}

/// `GET <path>/view`: the cluster view as it changes.
pub(super) async fn view(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let request_id = super::reply::request_id(parts.headers.get(REQUEST_ID));
    let response = match (shared.may_watch(&parts).await, &shared.dashboard) {
        (Ok(()), Some(views)) => {
            let watching = views.clone();
            let stop = shared.shutdown.subscribe();
            let updates = futures_util::stream::unfold(
                (watching, stop, true),
                |(mut watching, mut stop, mut first)| async move {
                    loop {
                        if !first {
                            tokio::select! {
                                changed = watching.changed() => changed.ok()?,
                                _ = stop.wait_for(|stopping| *stopping) => return None,
                            }
                        }
                        first = false;
                        let json = watching.borrow_and_update().clone();
                        // Nothing computed yet: wait for the first view.
                        if !json.is_empty() {
                            let event = SseEvent::default().data(&*json);
                            return Some((Ok::<_, Infallible>(event), (watching, stop, false)));
                        }
                    }
                },
            );
            Sse::new(updates)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        (Err(refusal), _) => error_response(&refusal.error, refusal.retry_after),
        (Ok(()), None) => error_response(&crate::Error::service_not_found("dashboard"), None),
    };
    finish(&shared, response, &request_id)
}

impl Shared {
    /// The dashboard shows the whole cluster: when the gateway authenticates, only to users.
    async fn may_watch(&self, parts: &axum::http::request::Parts) -> Result<(), Refusal> {
        let client = client_of(parts);
        self.admit(parts, client)?;
        let required = self.authenticator.is_some();
        self.authenticate(parts, client, required).await.map(drop)
    }
}
