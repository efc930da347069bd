//! Request bodies: JSON and forms read into memory (bounded in size and time), anything else —
//! and a multipart form's file — handed to the action as its stream (bounded by the stream
//! limit).

use super::params::Body;
use super::stats::GatewayStats;
use super::{Refusal, Shared};
use crate::ByteStream;
use crate::error::{Error, Result};
use axum::body::Body as HttpBody;
use axum::http::{header, request::Parts};
use futures_util::StreamExt;
use std::fmt;

/// A 400 refusal for a body that is not what its content type says.
fn bad_body(what: &str, err: &dyn fmt::Display) -> Refusal {
    Refusal::from(Error::handler(
        400,
        "INVALID_BODY",
        format!("the body is not {what}: {err}"),
    ))
}

impl Shared {
    /// Reads the body as its content type says: JSON and forms into memory (bounded in size and
    /// time); a multipart form's fields up to its first file, which — like a body of any other
    /// type — becomes the call's stream (bounded by the stream limit).
    pub(super) async fn read_body(
        &self,
        parts: &Parts,
        body: HttpBody,
    ) -> Result<(Body, Option<ByteStream>), Refusal> {
        use axum::body::HttpBody as _;
        let declared_len = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if body.is_end_stream() || declared_len == Some(0) {
            return Ok((Body::Empty, None));
        }
        // A body without a type is bytes (RFC 9110 §8.3): `curl -T file` sends none.
        let essence = content_type
            .unwrap_or("application/octet-stream")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "multipart/form-data" {
            let boundary = content_type
                .and_then(|ct| multer::parse_boundary(ct).ok())
                .ok_or_else(|| bad_body("a multipart form", &"no boundary"))?;
            return self.read_multipart(body, boundary).await;
        }
        let in_memory = essence == "application/json"
            || essence.ends_with("+json")
            || essence == "application/x-www-form-urlencoded";
        if !in_memory {
            if declared_len.is_some_and(|len| len > self.stream_limit) {
                return Err(self.too_large(self.stream_limit));
            }
            let mut stream =
                ByteStream::new(self.limited(body.into_data_stream())).with_content_type(essence);
            if let Some(len) = declared_len {
                stream = stream.with_len(len);
            }
            return Ok((Body::Empty, Some(stream)));
        }
        if declared_len.is_some_and(|len| len > self.body_limit as u64) {
            return Err(self.too_large(self.body_limit as u64));
        }
        let bytes = match tokio::time::timeout(self.timeout, read_limited(body, self.body_limit))
            .await
        {
            Err(_) => {
                return Err(Error::handler(408, "REQUEST_TIMEOUT", "the body was too slow").into());
            }
            Ok(Err(BodyError::TooLarge)) => return Err(self.too_large(self.body_limit as u64)),
            Ok(Err(BodyError::Broken(err))) => {
                return Err(Error::handler(
                    400,
                    "BAD_REQUEST",
                    format!("cannot read the body: {err}"),
                )
                .into());
            }
            Ok(Ok(bytes)) => bytes,
        };
        let parsed = if essence == "application/x-www-form-urlencoded" {
            serde_urlencoded::from_bytes(&bytes)
                .map(Body::Form)
                .map_err(|e| bad_body("a form", &e))?
        } else {
            serde_json::from_slice(&bytes)
                .map(Body::Json)
                .map_err(|e| bad_body("JSON", &e))?
        };
        Ok((parsed, None))
    }

    /// A multipart form: its text fields (up to the body limit) and its first file as a stream.
    async fn read_multipart(
        &self,
        body: HttpBody,
        boundary: String,
    ) -> Result<(Body, Option<ByteStream>), Refusal> {
        let mut form = multer::Multipart::new(self.limited(body.into_data_stream()), boundary);
        let mut fields = Vec::new();
        let mut read = 0usize;
        loop {
            let next = tokio::time::timeout(self.timeout, form.next_field())
                .await
                .map_err(|_| Error::handler(408, "REQUEST_TIMEOUT", "the form was too slow"))?
                .map_err(|e| bad_body("a multipart form", &e))?;
            let Some(field) = next else {
                return Ok((Body::Form(fields), None));
            };
            let name = field.name().unwrap_or("").to_owned();
            if field.file_name().is_some() {
                let content_type = field.content_type().map_or_else(
                    || "application/octet-stream".to_owned(),
                    ToString::to_string,
                );
                let chunks = field.map(|chunk| {
                    chunk.map_err(|e| Error::validation(format!("the upload broke: {e}")))
                });
                // The form itself lives as long as its field's stream needs it.
                let stream = ByteStream::new(chunks).with_content_type(content_type);
                return Ok((Body::Form(fields), Some(stream)));
            }
            let text = field
                .text()
                .await
                .map_err(|e| bad_body("a multipart form", &e))?;
            read += name.len() + text.len();
            if read > self.body_limit {
                return Err(self.too_large(self.body_limit as u64));
            }
            fields.push((name, text));
        }
    }

    /// A 413 refusal, counted.
    fn too_large(&self, limit: u64) -> Refusal {
        GatewayStats::count(&self.stats.too_large);
        Refusal::from(Error::handler(
            413,
            "PAYLOAD_TOO_LARGE",
            format!("the body exceeds {limit} bytes"),
        ))
    }

    /// A request body as a stream that fails once it passes the stream limit.
    fn limited(
        &self,
        body: axum::body::BodyDataStream,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes>> + Send + 'static {
        let limit = self.stream_limit;
        let mut seen = 0u64;
        body.map(move |chunk| {
            let chunk = chunk.map_err(|e| Error::transport(format!("the upload broke: {e}")))?;
            seen += chunk.len() as u64;
            if seen > limit {
                return Err(Error::handler(
                    413,
                    "PAYLOAD_TOO_LARGE",
                    format!("the upload exceeds {limit} bytes"),
                ));
            }
            Ok(chunk)
        })
    }
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Broken(axum::Error),
}

/// Reads a body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(body: HttpBody, limit: usize) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut read = bytes::BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Broken)?;
        if read.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read.freeze())
}
