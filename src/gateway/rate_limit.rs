//! Requests per client: a token bucket per client address, in a table of bounded size.

use axum::http::{HeaderMap, HeaderName};
use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many requests a client may make: `per_second` on average, up to `burst` at once.
///
/// Clients are told apart by their address, or — behind a proxy that sets it — by a header
/// ([`RateLimit::by_header`]). The table of clients is bounded
/// ([`RateLimit::max_clients`], 100 000 by default); when it is full of clients that are still
/// active, new clients share one bucket rather than grow it.
///
/// ```
/// use phalanx::gateway::RateLimit;
///
/// let limit = RateLimit::per_second(50).burst(100);
/// ```
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    key_header: Option<HeaderName>,
    max_clients: usize,
}

impl RateLimit {
    /// `per_second` requests per second per client, bursts of as many.
    pub fn per_second(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            per_second: rate,
            burst: rate,
            key_header: None,
            max_clients: 100_000,
        }
    }

    /// Lets a client make up to `burst` requests at once after a quiet spell.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = f64::from(burst.max(1));
        self
    }

    /// Tells clients apart by the last value of `header` (for example `x-forwarded-for`, as the
    /// proxy in front appends it) instead of the connection's address. Only behind a proxy that
    /// sets the header: otherwise every client picks its own key.
    pub fn by_header(mut self, header: HeaderName) -> Self {
        self.key_header = Some(header);
        self
    }

    /// How many clients are remembered at once.
    pub fn max_clients(mut self, max_clients: usize) -> Self {
        self.max_clients = max_clients.max(1);
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The buckets of one gateway.
#[derive(Debug)]
pub(super) struct Limiter {
    config: RateLimit,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    clients: HashMap<String, Bucket>,
    /// Shared by clients that arrive while the table is full.
    crowd: Bucket,
}

impl Limiter {
    pub(super) fn new(config: RateLimit) -> Self {
        let full = Bucket {
            tokens: config.burst,
            updated: Instant::now(),
        };
        Self {
            config,
            buckets: Mutex::new(Buckets {
                clients: HashMap::default(),
                crowd: full,
            }),
        }
    }

    /// The client's key: the configured header's last value, or the connection's address.
    pub(super) fn key(&self, headers: &HeaderMap, client: Option<SocketAddr>) -> String {
        let from_header = self.config.key_header.as_ref().and_then(|name| {
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            let last = value.rsplit(',').next()?.trim();
            Some(last.chars().take(64).collect::<String>())
        });
        from_header
            .or_else(|| client.map(|c| c.ip().to_string()))
            .unwrap_or_default()
    }

    /// Takes a token for `key`; when there is none, how long until there is.
    pub(super) fn take(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        let Buckets { clients, crowd } = &mut *buckets;
        if !clients.contains_key(key) && clients.len() >= self.config.max_clients {
            // Forget clients whose bucket has refilled: they are as good as new.
            let refill = Duration::from_secs_f64(self.config.burst / self.config.per_second);
            clients.retain(|_, b| now.duration_since(b.updated) < refill);
        }
        let bucket = if clients.len() < self.config.max_clients {
            clients.entry(key.to_owned()).or_insert(Bucket {
                tokens: self.config.burst,
                updated: now,
            })
        } else {
            clients.get_mut(key).unwrap_or(crowd)
        };
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.config.per_second).min(self.config.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.config.per_second;
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.buckets.lock().expect("rate limit lock").clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_while_others_are_served() {
        let limiter = Limiter::new(RateLimit::per_second(2).burst(3));
        for _ in 0..3 {
            assert!(limiter.take("a").is_ok());
        }
        let wait = limiter.take("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(500));
        assert!(limiter.take("b").is_ok());
    }

    #[test]
    fn the_table_stays_bounded_and_newcomers_share_a_bucket() {
        let limiter = Limiter::new(RateLimit::per_second(1).burst(2).max_clients(10));
        for i in 0..10 {
            assert!(limiter.take(&format!("client-{i}")).is_ok());
        }
        for i in 10..1000 {
            let _ = limiter.take(&format!("client-{i}"));
        }
        assert_eq!(limiter.clients(), 10);
        // The crowd's bucket had two tokens; the 988 others were refused.
        assert!(limiter.take("client-5000").is_err());
    }

    #[test]
    fn a_proxy_header_names_the_client() {
        let limiter = Limiter::new(
            RateLimit::per_second(1).by_header(HeaderName::from_static("x-forwarded-for")),
        );
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 10.0.0.7".parse().unwrap());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(limiter.key(&headers, Some(addr)), "10.0.0.7");
        assert_eq!(limiter.key(&HeaderMap::new(), Some(addr)), "127.0.0.1");
    }
}
