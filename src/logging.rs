//! Log output for binaries built on Phalanx: human-readable or JSON lines on stderr, filtered
//! `RUST_LOG`-style.
//!
//! The library itself only emits `tracing` events and spans (a `call`/`handle`/`event` span per
//! call with request id, action, caller and node — see [`Tracing`](crate::middleware::Tracing));
//! any subscriber works. [`init`] is the one most services want.
//!
//! ```
//! use phalanx::logging::{self, LogFormat};
//!
//! // PHALANX_LOG_FORMAT=json picks JSON; RUST_LOG overrides the default filter.
//! let format = LogFormat::from_env().unwrap_or(LogFormat::Human);
//! logging::init("info", format);
//! ```

use std::str::FromStr;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// Aligned text for people (colored on a terminal).
    Human,
    /// One JSON object per line, span fields included, for log pipelines.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "text" | "pretty" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format '{other}' (human or json)")),
        }
    }
}

impl LogFormat {
    /// The format named by `PHALANX_LOG_FORMAT` (`human` or `json`), if set and valid.
    pub fn from_env() -> Option<Self> {
        std::env::var("PHALANX_LOG_FORMAT").ok()?.parse().ok()
    }
}

/// Installs a global subscriber writing to stderr with `RUST_LOG` as the filter, or
/// `default_filter` when it is unset. Returns `false` if a subscriber was already installed.
pub fn init(default_filter: &str, format: LogFormat) -> bool {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().with_current_span(true).try_init().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("human".parse::<LogFormat>(), Ok(LogFormat::Human));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
