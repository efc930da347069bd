//! Cross-origin requests: which web pages may call the gateway from a browser.

use crate::error::{Error, Result};
use axum::http::{HeaderName, HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Which origins may call the gateway from a browser, answered on preflight (`OPTIONS`) and on
/// every request. Allowed: the usual methods, any request header; exposed: `x-request-id`.
///
/// ```
/// use phalanx::gateway::Cors;
///
/// let open = Cors::any();
/// let shop = Cors::origins(["https://shop.example"]).allow_credentials();
/// ```
#[derive(Debug, Clone)]
pub struct Cors {
    /// `None`: any origin.
    origins: Option<Vec<String>>,
    credentials: bool,
    max_age: Duration,
}

impl Cors {
    /// Any origin, without credentials (cookies, HTTP authentication).
    pub fn any() -> Self {
        Self {
            origins: None,
            credentials: false,
            max_age: Duration::from_secs(3600),
        }
    }

    /// Only these origins (`https://shop.example`).
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            origins: Some(origins.into_iter().map(Into::into).collect()),
            ..Self::any()
        }
    }

    /// Lets browsers send cookies and HTTP authentication (only with a list of origins).
    pub fn allow_credentials(mut self) -> Self {
        self.credentials = true;
        self
    }

    /// How long browsers may cache a preflight answer (default one hour).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    pub(super) fn check(&self) -> Result<()> {
        match &self.origins {
            None if self.credentials => Err(Error::validation(
                "CORS: credentials may only be allowed for a list of origins",
            )),
            Some(origins) => origins.iter().try_for_each(|o| {
                HeaderValue::from_str(o)
                    .map(drop)
                    .map_err(|_| Error::validation(format!("CORS: '{o}' is not an origin")))
            }),
            None => Ok(()),
        }
    }

    /// The tower-http layer (after [`Cors::check`]).
    pub(super) fn layer(&self) -> CorsLayer {
        let origin = match &self.origins {
            None => AllowOrigin::any(),
            Some(origins) => {
                AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
            }
        };
        let headers = if self.credentials {
            AllowHeaders::mirror_request()
        } else {
            AllowHeaders::any()
        };
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(headers)
            .expose_headers([HeaderName::from_static(super::reply::REQUEST_ID)])
            .allow_credentials(self.credentials)
            .max_age(self.max_age)
    }
}
