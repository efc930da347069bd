//! HTTP answers: results as JSON, errors as a status from their code and a JSON body.

use crate::error::Error;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::time::Duration;

/// The header that carries a request's id both ways.
pub(super) const REQUEST_ID: &str = "x-request-id";

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        bytes,
    )
        .into_response()
}

/// A streamed answer: the stream's content type (default `application/octet-stream`), its
/// length when known, chunked otherwise. A client that goes away drops the body, and with it the
/// stream, which stops its producer.
pub(super) fn stream_response(stream: crate::ByteStream) -> Response {
    let content_type = stream
        .content_type()
        .and_then(|ct| HeaderValue::from_str(ct).ok())
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let len = stream.len();
    let mut response = Response::new(axum::body::Body::from_stream(stream));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    if let Some(len) = len
        && let Ok(value) = HeaderValue::from_str(&len.to_string())
    {
        response.headers_mut().insert(header::CONTENT_LENGTH, value);
    }
    response
}

/// The status an error's code maps to (500 when the code is not an HTTP error status).
pub(super) fn status_of(err: &Error) -> StatusCode {
    match err.code() {
        code @ 400..=599 => StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error answer: `{ name, message, code, type, data }` with the status of its code, and
/// `Retry-After` when the caller is told to come back later.
pub(super) fn error_response(err: &Error, retry_after: Option<Duration>) -> Response {
    let body = json!({
        "name": err.kind().name(),
        "message": err.message(),
        "code": err.code(),
        "type": err.error_type(),
        "data": err.data(),
    });
    let mut response = json_response(status_of(err), &body);
    if let Some(wait) = retry_after {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// The caller's request id when it is a sensible one, else a new one.
pub(super) fn request_id(given: Option<&HeaderValue>) -> String {
    given
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn codes_become_statuses() {
        let cases = [
            (Error::service_not_found("a.b"), 404),
            (Error::validation("bad"), 422),
            (Error::timeout("a.b"), 504),
            (Error::new(ErrorKind::CircuitOpen, "open"), 503),
            (Error::handler(402, "PAY", "pay"), 402),
            (Error::handler(200, "ODD", "not an error status"), 500),
            (Error::handler(7, "ODD", "nonsense"), 500),
        ];
        for (err, status) in cases {
            assert_eq!(status_of(&err).as_u16(), status, "{err}");
        }
        let response = error_response(
            &Error::handler(429, "SLOW", "down"),
            Some(Duration::from_millis(1)),
        );
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn request_ids_are_kept_when_sensible() {
        assert_eq!(
            request_id(Some(&HeaderValue::from_static("abc-1"))),
            "abc-1"
        );
        let fresh = request_id(Some(&HeaderValue::from_static("has space")));
        assert_eq!(fresh.len(), 16);
        assert_ne!(request_id(None), request_id(None));
    }
}
