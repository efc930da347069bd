//! Authentication (who is asking) and authorization (may they): the request becomes a user in
//! the call's meta, or is refused with 401/403.

use crate::broker::Broker;
use crate::error::{Error, ErrorKind, Result};
use crate::{CallOptions, Payload};
use axum::http::{HeaderMap, Method};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What an authenticator sees of a request.
#[derive(Debug)]
#[non_exhaustive]
pub struct AuthRequest<'a> {
    /// The HTTP method.
    pub method: &'a Method,
    /// The request path.
    pub path: &'a str,
    /// The request headers (`authorization`, `cookie`, …).
    pub headers: &'a HeaderMap,
    /// The client's address, when the server knows it.
    pub client: Option<SocketAddr>,
}

impl<'a> AuthRequest<'a> {
    pub(super) fn of(parts: &'a axum::http::request::Parts, client: Option<SocketAddr>) -> Self {
        Self {
            method: &parts.method,
            path: parts.uri.path(),
            headers: &parts.headers,
            client,
        }
    }
}

/// What a route's authorization check sees of a request.
#[derive(Debug)]
#[non_exhaustive]
pub struct Authorization<'a> {
    /// The user the authenticator found, if any.
    pub user: Option<&'a Value>,
    /// The action the request would call.
    pub action: &'a str,
    /// The HTTP method.
    pub method: &'a Method,
    /// The request path.
    pub path: &'a str,
}

pub(super) type AuthorizeFn = Arc<dyn Fn(&Authorization<'_>) -> Result<()> + Send + Sync>;
type AuthenticateFn =
    Arc<dyn Fn(&AuthRequest<'_>) -> BoxFuture<'static, Result<Option<Value>>> + Send + Sync>;

/// Turns a request into a user — a JSON value put in the call's meta as `user` — or refuses it.
///
/// Answering `None` lets the request through anonymously (routes that are
/// [`authenticated`](super::Route::authenticated) then refuse it with 401); an error refuses it
/// with the error's code (use [`unauthorized`] or [`forbidden`]).
#[derive(Clone)]
pub struct Authenticator(Inner);

#[derive(Clone)]
enum Inner {
    Function(AuthenticateFn),
    Action(String),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Function(_) => f.write_str("Authenticator::function(..)"),
            Inner::Action(action) => write!(f, "Authenticator::action({action:?})"),
        }
    }
}

impl Authenticator {
    /// A Rust function of the request. It reads what it needs from the request before its
    /// future starts.
    ///
    /// ```
    /// use phalanx::gateway::{Authenticator, unauthorized};
    /// use serde_json::json;
    ///
    /// let bearer = Authenticator::function(|request| {
    ///     let token = request.headers.get("authorization").cloned();
    ///     async move {
    ///         match token.as_ref().and_then(|t| t.to_str().ok()) {
    ///             None => Ok(None),
    ///             Some("Bearer let-me-in") => Ok(Some(json!({ "id": 1, "role": "admin" }))),
    ///             Some(_) => Err(unauthorized("unknown token")),
    ///         }
    ///     }
    /// });
    /// ```
    pub fn function<F, Fut>(authenticate: F) -> Self
    where
        F: Fn(&AuthRequest<'_>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Value>>> + Send + 'static,
    {
        Self(Inner::Function(Arc::new(move |request| {
            authenticate(request).boxed()
        })))
    }

    /// An action of the cluster, called with `{ "method", "path", "headers": { name: value } }`
    /// (cookies included); it answers the user, or `null` for an anonymous request.
    pub fn action(action: impl Into<String>) -> Self {
        Self(Inner::Action(action.into()))
    }

    pub(super) async fn authenticate(
        &self,
        broker: &Broker,
        request: &AuthRequest<'_>,
        timeout: Duration,
    ) -> Result<Option<Value>> {
        let found = match &self.0 {
            Inner::Function(f) => f(request).await,
            Inner::Action(action) => {
                let headers: Map<String, Value> = request
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.into())))
                    .collect();
                let params = serde_json::json!({
                    "method": request.method.as_str(),
                    "path": request.path,
                    "headers": headers,
                });
                let options = CallOptions::new().timeout(timeout);
                broker
                    .call_raw(action, Payload::local(params), options)
                    .await
                    .and_then(|user| user.decode::<Value>())
                    .map(|user| Some(user).filter(|u| !u.is_null()))
            }
        };
        // An authenticator that fails for its own reasons must not read as "you may not".
        found.map_err(|err| match err.code() {
            401 | 403 => err,
            _ if err.kind() == ErrorKind::Handler => err,
            _ => Error::new(
                ErrorKind::Rejected,
                format!("authentication is unavailable: {}", err.message()),
            )
            .with_type("AUTHENTICATION_UNAVAILABLE"),
        })
    }
}

/// A 401 refusal: the request did not prove who it comes from.
///
/// ```
/// assert_eq!(phalanx::gateway::unauthorized("no token").code(), 401);
/// ```
pub fn unauthorized(message: impl Into<String>) -> Error {
    Error::handler(401, "UNAUTHORIZED", message)
}

/// A 403 refusal: the user may not do this.
///
/// ```
/// assert_eq!(phalanx::gateway::forbidden("admins only").code(), 403);
/// ```
pub fn forbidden(message: impl Into<String>) -> Error {
    Error::handler(403, "FORBIDDEN", message)
}
