//! Routes: which HTTP requests reach which actions, and what a request must show to get there.

use super::auth::{Authorization, AuthorizeFn};
use crate::error::{Error, Result};
use crate::registry::pattern_matches;
use axum::http::{HeaderName, Method};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A group of HTTP paths under one prefix, with the rules they share (moleculer-web's "route").
///
/// A request is matched against the routes in the order they were added; inside a route,
/// explicit [aliases](Route::alias) and [REST resources](Route::rest) come first (in declaration
/// order), then [generated aliases](Route::auto_aliases).
///
/// ```
/// use phalanx::gateway::Route;
///
/// let api = Route::new("/api")
///     .auto_aliases()                       // /api/<service>/<action> for published services
///     .alias("GET /users/{id}", "users.get") // explicit, with a path parameter
///     .rest("products", "products")          // list/get/create/update/remove
///     .blacklist(["*.internal"])
///     .meta_from_headers(["x-tenant"]);
/// ```
#[derive(Clone)]
pub struct Route {
    pub(super) prefix: Vec<String>,
    pub(super) aliases: Vec<Alias>,
    pub(super) auto_aliases: bool,
    pub(super) whitelist: Vec<String>,
    pub(super) blacklist: Vec<String>,
    pub(super) authenticated: bool,
    pub(super) authorize: Option<AuthorizeFn>,
    pub(super) meta_headers: Vec<HeaderName>,
    pub(super) timeout: Option<Duration>,
    /// Mistakes in the description, reported when the gateway is built.
    pub(super) problems: Vec<String>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("prefix", &self.prefix_path())
            .field("aliases", &self.aliases)
            .field("auto_aliases", &self.auto_aliases)
            .field("authenticated", &self.authenticated)
            .finish_non_exhaustive()
    }
}

/// One explicit path → action mapping.
#[derive(Debug, Clone)]
pub(super) struct Alias {
    /// `None`: any method.
    pub(super) method: Option<Method>,
    pub(super) template: Vec<Segment>,
    pub(super) action: String,
}

/// A segment of an alias path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Param(String),
}

impl Route {
    /// A route for paths under `prefix` (`"/api"`, or `"/"` for the root).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: split_path(prefix).map(str::to_owned).collect(),
            aliases: Vec::new(),
            auto_aliases: false,
            whitelist: Vec::new(),
            blacklist: Vec::new(),
            authenticated: false,
            authorize: None,
            meta_headers: Vec::new(),
            timeout: None,
            problems: Vec::new(),
        }
    }

    /// Maps `"METHOD /path"` (or `"/path"` for any method) to `action`. Path parameters are
    /// written `{name}` or `:name`; their values join the action's params.
    ///
    /// ```
    /// let route = phalanx::gateway::Route::new("/").alias("GET /users/:id", "users.get");
    /// ```
    pub fn alias(mut self, path: &str, action: &str) -> Self {
        match parse_alias(path, action) {
            Ok(alias) => self.aliases.push(alias),
            Err(problem) => self.problems.push(problem),
        }
        self
    }

    /// REST shorthand: `resource` (a path under the prefix) maps to the service's `list`, `get`,
    /// `create`, `update` and `remove` actions:
    ///
    /// | request | action |
    /// |---|---|
    /// | `GET /resource` | `service.list` |
    /// | `GET /resource/{id}` | `service.get` |
    /// | `POST /resource` | `service.create` |
    /// | `PUT` or `PATCH /resource/{id}` | `service.update` |
    /// | `DELETE /resource/{id}` | `service.remove` |
    pub fn rest(mut self, resource: &str, service: &str) -> Self {
        let base = resource.trim_matches('/');
        for (method, path, action) in [
            ("GET", base.to_owned(), "list"),
            ("GET", format!("{base}/{{id}}"), "get"),
            ("POST", base.to_owned(), "create"),
            ("PUT", format!("{base}/{{id}}"), "update"),
            ("PATCH", format!("{base}/{{id}}"), "update"),
            ("DELETE", format!("{base}/{{id}}"), "remove"),
        ] {
            self = self.alias(&format!("{method} /{path}"), &format!("{service}.{action}"));
        }
        self
    }

    /// Generates `/<prefix>/<service>/<action>` (dots of versioned names become slashes:
    /// `/api/v2/math/add`) for every action of the services that
    /// [publish](crate::ServiceBuilder::publish_http) themselves, as they come and go. Any method
    /// is accepted.
    pub fn auto_aliases(mut self) -> Self {
        self.auto_aliases = true;
        self
    }

    /// Only actions matching one of `patterns` (`*` one segment, `**` any) are reachable through
    /// this route; others answer 404.
    pub fn whitelist<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.whitelist.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Actions matching one of `patterns` are never reachable through this route (404).
    pub fn blacklist<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.blacklist.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// Requests must be authenticated: without a user from the gateway's
    /// [authenticator](super::GatewayBuilder::authenticate) they get 401.
    pub fn authenticated(mut self) -> Self {
        self.authenticated = true;
        self
    }

    /// Checks every request of this route after authentication; an error refuses the request
    /// with the error's code (use [`forbidden`](super::forbidden) for a plain 403).
    ///
    /// ```
    /// use phalanx::gateway::{Route, forbidden};
    ///
    /// let admin = Route::new("/admin").authenticated().authorize(|request| {
    ///     match request.user.and_then(|u| u["role"].as_str()) {
    ///         Some("admin") => Ok(()),
    ///         _ => Err(forbidden("admins only")),
    ///     }
    /// });
    /// ```
    pub fn authorize<F>(mut self, check: F) -> Self
    where
        F: Fn(&Authorization<'_>) -> Result<()> + Send + Sync + 'static,
    {
        self.authorize = Some(Arc::new(check));
        self
    }

    /// Copies these request headers into the call's meta (under their lower-case names).
    pub fn meta_from_headers<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for name in headers {
            match HeaderName::from_bytes(name.as_ref().to_ascii_lowercase().as_bytes()) {
                Ok(header) => self.meta_headers.push(header),
                Err(_) => self
                    .problems
                    .push(format!("'{}' is not a header name", name.as_ref())),
            }
        }
        self
    }

    /// The calls of this route give up after `timeout` (504); default: the gateway's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The prefix as a path, for messages.
    pub(super) fn prefix_path(&self) -> String {
        format!("/{}", self.prefix.join("/"))
    }

    /// Whether the whitelist and blacklist let `action` through.
    pub(super) fn allows(&self, action: &str) -> bool {
        let listed = |patterns: &[String]| patterns.iter().any(|p| pattern_matches(p, action));
        (self.whitelist.is_empty() || listed(&self.whitelist)) && !listed(&self.blacklist)
    }

    /// The segments after this route's prefix, if `path` is under it.
    pub(super) fn strip<'p>(&self, path: &'p [&'p str]) -> Option<&'p [&'p str]> {
        let rest = path.get(self.prefix.len()..)?;
        self.prefix
            .iter()
            .zip(path)
            .all(|(a, b)| a == b)
            .then_some(rest)
    }
}

/// The path's non-empty segments.
pub(super) fn split_path(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn parse_alias(path: &str, action: &str) -> std::result::Result<Alias, String> {
    let (method, path) = match path.split_once(' ') {
        Some((method, path)) => {
            let method = match method.trim() {
                "*" | "ALL" => None,
                m => Some(
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("'{m}' is not an HTTP method"))?,
                ),
            };
            (method, path.trim())
        }
        None => (None, path.trim()),
    };
    if !path.starts_with('/') {
        return Err(format!("alias path '{path}' must start with '/'"));
    }
    if action.is_empty() {
        return Err(format!("alias '{path}' names no action"));
    }
    let mut template = Vec::new();
    for segment in split_path(path) {
        let param = segment
            .strip_prefix(':')
            .or_else(|| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')));
        template.push(match param {
            Some("") => return Err(format!("alias '{path}' has an unnamed parameter")),
            Some(name) => Segment::Param(name.to_owned()),
            None => Segment::Literal(segment.to_owned()),
        });
    }
    Ok(Alias {
        method,
        template,
        action: action.to_owned(),
    })
}

impl Alias {
    /// The path parameters when `path` fits this alias's template.
    pub(super) fn bind(&self, path: &[&str]) -> Option<Vec<(String, String)>> {
        if path.len() != self.template.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.template.iter().zip(path) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name.clone(), decode_segment(part))),
            }
        }
        Some(params)
    }

    /// The template as OpenAPI writes it (`/users/{id}`), under `prefix`.
    pub(super) fn openapi_path(&self, prefix: &[String]) -> String {
        let mut path = String::new();
        for segment in prefix {
            path.push('/');
            path.push_str(segment);
        }
        for segment in &self.template {
            path.push('/');
            match segment {
                Segment::Literal(s) => path.push_str(s),
                Segment::Param(p) => {
                    path.push('{');
                    path.push_str(p);
                    path.push('}');
                }
            }
        }
        if path.is_empty() {
            path.push('/');
        }
        path
    }
}

/// A path segment with its percent-escapes decoded (invalid UTF-8 is replaced).
pub(super) fn decode_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// Refuses a gateway described with mistakes, listing all of them.
pub(super) fn check(routes: &[Route]) -> Result<()> {
    let problems: Vec<&str> = routes
        .iter()
        .flat_map(|r| r.problems.iter().map(String::as_str))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::validation(format!(
            "gateway routes: {}",
            problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(path: &str) -> Vec<&str> {
        split_path(path).collect()
    }

    #[test]
    fn aliases_bind_path_parameters_in_both_spellings() {
        let route = Route::new("/api")
            .alias("GET /users/{id}", "users.get")
            .alias("/orders/:order/items/:item", "orders.item");
        let path = segments("/api/users/a%20b");
        let rest = route.strip(&path).unwrap();
        assert_eq!(
            route.aliases[0].bind(rest).unwrap(),
            vec![("id".to_owned(), "a b".to_owned())]
        );
        assert_eq!(route.aliases[0].method, Some(Method::GET));
        assert_eq!(route.aliases[1].method, None);
        let path = segments("/api/orders/7/items/9");
        let bound = route.aliases[1].bind(route.strip(&path).unwrap()).unwrap();
        assert_eq!(bound[1], ("item".to_owned(), "9".to_owned()));
        assert!(route.aliases[0].bind(&["users"]).is_none());
        assert!(route.strip(&segments("/other/users/1")).is_none());
    }

    #[test]
    fn rest_shorthand_maps_the_five_verbs() {
        let route = Route::new("/").rest("products", "shop.products");
        let actions: Vec<(Option<Method>, String, &str)> = route
            .aliases
            .iter()
            .map(|a| (a.method.clone(), a.openapi_path(&[]), a.action.as_str()))
            .collect();
        assert!(actions.contains(&(
            Some(Method::DELETE),
            "/products/{id}".into(),
            "shop.products.remove"
        )));
        assert!(actions.contains(&(Some(Method::GET), "/products".into(), "shop.products.list")));
        assert_eq!(actions.len(), 6);
    }

    #[test]
    fn lists_filter_actions_and_mistakes_are_reported() {
        let route = Route::new("/")
            .whitelist(["demo.*", "users.**"])
            .blacklist(["demo.fail"]);
        assert!(route.allows("demo.add"));
        assert!(!route.allows("demo.fail"));
        assert!(route.allows("users.admin.list"));
        assert!(!route.allows("secrets.read"));
        let bad = Route::new("/")
            .alias("G(ET /x", "a.b")
            .alias("GET nope", "a.b")
            .alias("GET /x/{}", "a.b")
            .meta_from_headers(["bad header"]);
        let err = check(&[bad]).unwrap_err();
        assert_eq!(err.message().matches(';').count(), 3, "{}", err.message());
    }
}
