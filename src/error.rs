//! The one error type of Phalanx.
//!
//! Every failure a caller can see — a missing service, a timeout, a handler's own error, a node that
//! went away — is an [`Error`]: a matchable [`ErrorKind`] plus the fields that travel on the wire
//! (`code`, `type`, `message`, `data`, `retryable`, `node`). A handler's error crosses the network with
//! all of them intact, so the caller matches on the same kind and code the callee produced.
//!
//! ```
//! use phalanx::{Error, ErrorKind};
//!
//! let err = Error::handler(402, "PAYMENT_REQUIRED", "card declined");
//! assert_eq!(err.kind(), ErrorKind::Handler);
//! assert_eq!(err.code(), 402);
//! assert!(!err.is_retryable());
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Result alias used across Phalanx.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a small `Copy` enum callers can match on.
///
/// The kind decides the default HTTP-like [`code`](Error::code) and whether the error is
/// retryable; a handler error carries whatever code its author chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No available endpoint serves the action (404).
    ServiceNotFound,
    /// The call's deadline passed before a response arrived (504). The handler may have run:
    /// retried only when the call is idempotent.
    Timeout,
    /// Parameters could not be decoded into the handler's type, or failed validation (422).
    Validation,
    /// A link's queue is full: the serving node has too many requests from this one (429,
    /// retryable).
    QueueFull,
    /// The action's bulkhead is full: too many calls running and waiting (429, retryable).
    BulkheadFull,
    /// The target node went away or refused the call (503, retryable).
    Rejected,
    /// The node is stopping and takes no new work (503, retryable: another node may serve).
    NodeStopping,
    /// Every endpoint of the action has an open circuit (503, retryable once one half-opens).
    CircuitOpen,
    /// A required service did not become available in time (503).
    DependencyTimeout,
    /// The handler itself returned an error; code and type are the handler's own.
    Handler,
    /// The handler panicked (500); the panic message is the error's message.
    HandlerPanic,
    /// A frame or packet broke the protocol (400).
    Protocol,
    /// The transport could not deliver (502, retryable).
    Transport,
    /// The peer could not prove cluster membership (401).
    Authentication,
    /// An internal failure that fits no other kind (500).
    Internal,
    /// The request reached the target but its node or link went away before the answer: the
    /// handler may or may not have run (502). Retried only when the call is
    /// [idempotent](crate::CallOptions::idempotent).
    OutcomeUnknown,
}

impl ErrorKind {
    /// The wire name of this kind, stable across versions.
    pub fn name(self) -> &'static str {
        match self {
            Self::ServiceNotFound => "ServiceNotFoundError",
            Self::Timeout => "RequestTimeoutError",
            Self::Validation => "ValidationError",
            Self::QueueFull => "QueueIsFullError",
            Self::BulkheadFull => "BulkheadFullError",
            Self::Rejected => "RequestRejectedError",
            Self::NodeStopping => "NodeStoppingError",
            Self::CircuitOpen => "CircuitBreakerOpenError",
            Self::DependencyTimeout => "DependencyTimeoutError",
            Self::Handler => "HandlerError",
            Self::HandlerPanic => "HandlerPanicError",
            Self::Protocol => "ProtocolError",
            Self::Transport => "TransportError",
            Self::Authentication => "AuthenticationError",
            Self::Internal => "InternalError",
            Self::OutcomeUnknown => "OutcomeUnknownError",
        }
    }

    /// Parses a wire name; unknown names become [`ErrorKind::Handler`], so errors from newer
    /// peers still reach the caller with their code.
    pub fn from_name(name: &str) -> Self {
        match name {
            "ServiceNotFoundError" => Self::ServiceNotFound,
            "RequestTimeoutError" => Self::Timeout,
            "ValidationError" => Self::Validation,
            "QueueIsFullError" => Self::QueueFull,
            "BulkheadFullError" => Self::BulkheadFull,
            "RequestRejectedError" => Self::Rejected,
            "NodeStoppingError" => Self::NodeStopping,
            "CircuitBreakerOpenError" => Self::CircuitOpen,
            "HandlerPanicError" => Self::HandlerPanic,
            "DependencyTimeoutError" => Self::DependencyTimeout,
            "ProtocolError" => Self::Protocol,
            "TransportError" => Self::Transport,
            "AuthenticationError" => Self::Authentication,
            "InternalError" => Self::Internal,
            "OutcomeUnknownError" => Self::OutcomeUnknown,
            _ => Self::Handler,
        }
    }

    /// Default code for errors of this kind.
    pub fn default_code(self) -> u16 {
        match self {
            Self::ServiceNotFound => 404,
            Self::Timeout => 504,
            Self::Validation => 422,
            Self::QueueFull | Self::BulkheadFull => 429,
            Self::Rejected | Self::NodeStopping | Self::CircuitOpen | Self::DependencyTimeout => {
                503
            }
            Self::Handler | Self::HandlerPanic | Self::Internal => 500,
            Self::Protocol => 400,
            Self::Transport | Self::OutcomeUnknown => 502,
            Self::Authentication => 401,
        }
    }

    /// Whether an error of this kind may succeed when tried again (possibly on another node).
    pub fn default_retryable(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::BulkheadFull
                | Self::Rejected
                | Self::NodeStopping
                | Self::CircuitOpen
                | Self::Transport
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Phalanx error: kind, code and the details that travel back to the caller, and — on the
/// node where it happened — the lower-level error that caused it
/// ([`source`](std::error::Error::source)).
///
/// Boxed inside, so `Result<T, Error>` stays one pointer wide on the hot path.
#[derive(Clone)]
pub struct Error(Box<Inner>);

#[derive(Clone)]
struct Inner {
    body: ErrorBody,
    /// Does not travel: the receiving node sees the body only.
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    /// Errors are equal when their wire forms are.
    fn eq(&self, other: &Self) -> bool {
        self.0.body == other.0.body
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.body, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The fields of an [`Error`], in the form they take on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ErrorBody {
    /// Wire name of the kind (see [`ErrorKind::name`]).
    pub name: String,
    /// Human-readable message.
    pub message: String,
    /// HTTP-like status code.
    pub code: u16,
    /// Machine-readable type chosen by the producer, e.g. `"CARD_DECLINED"`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Optional structured details.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// Id of the node where the error was produced.
    #[serde(default)]
    pub node: Option<String>,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.code, self.message)?;
        if let Some(node) = &self.node {
            write!(f, " [node {node}]")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Error");
        debug.field("body", &self.0.body);
        if let Some(source) = &self.0.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

impl Error {
    /// A new error of `kind` with its default code and retryability.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::from_body(ErrorBody {
            name: kind.name().to_owned(),
            message: message.into(),
            code: kind.default_code(),
            error_type: String::new(),
            data: None,
            retryable: kind.default_retryable(),
            node: None,
        })
    }

    /// An error returned by user code, with the code and type its author chose.
    ///
    /// ```
    /// let err = phalanx::Error::handler(409, "CONFLICT", "user exists");
    /// assert_eq!(err.error_type(), "CONFLICT");
    /// ```
    pub fn handler(code: u16, error_type: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Handler, message)
            .with_code(code)
            .with_type(error_type)
    }

    /// No endpoint serves `action`.
    pub fn service_not_found(action: &str) -> Self {
        Self::new(
            ErrorKind::ServiceNotFound,
            format!("service for '{action}' is not available"),
        )
        .with_type("SERVICE_NOT_FOUND")
    }

    /// The deadline for `action` passed.
    pub fn timeout(action: &str) -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("request to '{action}' timed out"),
        )
        .with_type("REQUEST_TIMEOUT")
    }

    /// Parameters failed to decode or validate.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message).with_type("VALIDATION_ERROR")
    }

    /// The call was rejected by, or lost with, the target node.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Rejected, message).with_type("REQUEST_REJECTED")
    }

    /// The protocol was violated.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message).with_type("PROTOCOL_ERROR")
    }

    /// The transport failed to deliver.
    pub fn transport(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transport, message).with_type("TRANSPORT_ERROR")
    }

    /// Replaces the code.
    pub fn with_code(mut self, code: u16) -> Self {
        self.0.body.code = code;
        self
    }

    /// Replaces the machine-readable type.
    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.0.body.error_type = error_type.into();
        self
    }

    /// Attaches structured data.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.0.body.data = Some(data);
        self
    }

    /// Overrides retryability.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.0.body.retryable = retryable;
        self
    }

    /// Records the node that produced the error, unless one is already recorded.
    pub fn with_node(mut self, node: &str) -> Self {
        if self.0.body.node.is_none() {
            self.0.body.node = Some(node.to_owned());
        }
        self
    }

    /// Keeps the lower-level error that caused this one, for
    /// [`source`](std::error::Error::source) on this node (it does not travel).
    ///
    /// ```
    /// use std::error::Error as _;
    /// let io = std::io::Error::other("disk full");
    /// let err = phalanx::Error::transport("cannot write").with_source(io);
    /// assert_eq!(err.source().unwrap().to_string(), "disk full");
    /// ```
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// The matchable kind.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::from_name(&self.0.body.name)
    }

    /// The HTTP-like status code.
    pub fn code(&self) -> u16 {
        self.0.body.code
    }

    /// The machine-readable type.
    pub fn error_type(&self) -> &str {
        &self.0.body.error_type
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.body.message
    }

    /// Structured details, if any.
    pub fn data(&self) -> Option<&serde_json::Value> {
        self.0.body.data.as_ref()
    }

    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.0.body.retryable
    }

    /// The node that produced the error, if known.
    pub fn node(&self) -> Option<&str> {
        self.0.body.node.as_deref()
    }

    /// The wire form of this error.
    pub fn body(&self) -> &ErrorBody {
        &self.0.body
    }

    /// Rebuilds an error from its wire form.
    pub fn from_body(body: ErrorBody) -> Self {
        Self(Box::new(Inner { body, source: None }))
    }

    /// An error a peer sent back: everything it said is kept, but whether to retry is decided
    /// here from the kind. Only a handler's own error keeps the handler's word on it — and since
    /// that handler ran, the retry layer acts on it only for idempotent calls.
    pub(crate) fn from_peer(body: ErrorBody) -> Self {
        let kind = ErrorKind::from_name(&body.name);
        let retryable = match kind {
            ErrorKind::Handler => body.retryable,
            other => other.default_retryable(),
        };
        Self::from_body(body).with_retryable(retryable)
    }

    /// Whether the call may have run (or did run) on its target before this error — a timeout,
    /// an [`ErrorKind::OutcomeUnknown`], or the handler's own error: trying again could run it
    /// twice, so retries need the call to be [idempotent](crate::CallOptions::idempotent).
    pub fn may_have_run(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Timeout
                | ErrorKind::OutcomeUnknown
                | ErrorKind::Handler
                | ErrorKind::HandlerPanic
        )
    }

    /// Whether the retry layer tries a call again after this error: errors that prove the call
    /// did not run when they are retryable; errors after which it may have run only when the
    /// call is idempotent (and, for a handler's own error, when the handler said retryable).
    pub fn worth_retrying(&self, idempotent: bool) -> bool {
        match self.kind() {
            ErrorKind::Timeout | ErrorKind::OutcomeUnknown => idempotent,
            _ if self.may_have_run() => idempotent && self.is_retryable(),
            _ => self.is_retryable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            ErrorKind::ServiceNotFound,
            ErrorKind::Timeout,
            ErrorKind::Validation,
            ErrorKind::QueueFull,
            ErrorKind::BulkheadFull,
            ErrorKind::Rejected,
            ErrorKind::NodeStopping,
            ErrorKind::CircuitOpen,
            ErrorKind::DependencyTimeout,
            ErrorKind::Handler,
            ErrorKind::HandlerPanic,
            ErrorKind::Protocol,
            ErrorKind::Transport,
            ErrorKind::Authentication,
            ErrorKind::Internal,
            ErrorKind::OutcomeUnknown,
        ] {
            assert_eq!(ErrorKind::from_name(kind.name()), kind);
        }
    }

    #[test]
    fn defaults_follow_kind() {
        let e = Error::timeout("math.add");
        assert_eq!(e.code(), 504);
        assert!(!e.is_retryable());
        assert!(e.may_have_run());
        let e = Error::service_not_found("x.y");
        assert_eq!(e.code(), 404);
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("x.y"));
    }

    #[test]
    fn first_node_wins() {
        let e = Error::validation("bad").with_node("a").with_node("b");
        assert_eq!(e.node(), Some("a"));
    }
}
