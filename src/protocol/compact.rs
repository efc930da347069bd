//! The compact body of the hot packets, REQUEST, RESPONSE and STREAM_CHUNK: a fixed binary layout
//! instead of named-field MessagePack, so a call costs no field-name strings to write, read or
//! compare, and its params, result or chunk pass through as a slice of the received frame, never
//! copied.
//!
//! ```text
//! REQUEST:  sender:str16 id:u64 flags:u8 content:u8 level:u32 request_id:u64
//!           [timeout_ms:u64] [parent_id:u64] action:str16 [caller:str16]
//!           [meta:blob32] [headers:blob32] [stream:blob32] params:rest
//! RESPONSE: sender:str16 id:u64 flags:u8 content:u8 [error:blob32] [meta:blob32]
//!           [headers:blob32] [data:rest]
//! CHUNK:    sender:str16 id:u64 flags:u8 seq:u64 data:rest
//! ```
//!
//! Integers are big-endian; `str16` is a u16 length and UTF-8, `blob32` a u32 length and named-field
//! MessagePack (the rarely present parts); `[..]` is present when its flag is set. Every length
//! is checked against what the frame holds: a malformed body is an error, never a panic or an
//! allocation beyond the frame.

use crate::error::ErrorBody;
use crate::protocol::names;
#[cfg(test)]
use crate::protocol::packet::StreamInfo;
use crate::protocol::packet::{ContentType, Headers, Meta, Request, Response, StreamChunk};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;

const HAS_TIMEOUT: u8 = 1;
const HAS_PARENT: u8 = 1 << 1;
const HAS_CALLER: u8 = 1 << 2;
const HAS_META: u8 = 1 << 3;
const HAS_HEADERS: u8 = 1 << 4;
const STREAM: u8 = 1 << 5;
const HAS_DATA: u8 = 1 << 6;
const HAS_ERROR: u8 = 1 << 7;

/// Appends a REQUEST body.
pub(crate) fn write_request(buf: &mut BytesMut, sender: &str, r: &Request) -> Result<(), String> {
    put_str16(buf, sender)?;
    buf.put_u64(r.id);
    let flags = flag(r.timeout_ms.is_some(), HAS_TIMEOUT)
        | flag(r.parent_id.is_some(), HAS_PARENT)
        | flag(r.caller.is_some(), HAS_CALLER)
        | flag(r.meta.is_some(), HAS_META)
        | flag(r.headers.is_some(), HAS_HEADERS)
        | flag(r.stream.is_some(), STREAM);
    buf.put_u8(flags);
    buf.put_u8(r.content_type.into());
    buf.put_u32(r.level);
    buf.put_u64(r.request_id);
    if let Some(ms) = r.timeout_ms {
        buf.put_u64(ms);
    }
    if let Some(parent) = r.parent_id {
        buf.put_u64(parent);
    }
    put_str16(buf, &r.action)?;
    if let Some(caller) = &r.caller {
        put_str16(buf, caller)?;
    }
    put_blobs(buf, r.meta.as_ref(), r.headers.as_ref())?;
    if let Some(stream) = &r.stream {
        put_blob32(buf, stream)?;
    }
    buf.put_slice(&r.params);
    Ok(())
}

/// Reads a REQUEST body; `params` is a slice of `body`.
pub(crate) fn read_request(body: Bytes) -> Result<(Arc<str>, Request), String> {
    let mut r = Reader(body);
    let sender = r.node_name()?;
    let id = r.u64()?;
    let flags = r.u8()?;
    let content_type = ContentType::try_from(r.u8()?)?;
    let level = r.u32()?;
    let request_id = r.u64()?;
    let timeout_ms = (flags & HAS_TIMEOUT != 0).then(|| r.u64()).transpose()?;
    let parent_id = (flags & HAS_PARENT != 0).then(|| r.u64()).transpose()?;
    let action = r.action_name()?;
    let caller = (flags & HAS_CALLER != 0)
        .then(|| r.string16())
        .transpose()?;
    let meta = (flags & HAS_META != 0).then(|| r.blob32()).transpose()?;
    let headers = (flags & HAS_HEADERS != 0).then(|| r.blob32()).transpose()?;
    let stream = (flags & STREAM != 0).then(|| r.blob32()).transpose()?;
    let request = Request {
        id,
        action,
        params: r.0,
        content_type,
        meta,
        headers,
        timeout_ms,
        level,
        request_id,
        parent_id,
        caller,
        stream,
    };
    Ok((sender, request))
}

/// A chunk of a call's params stream (else of its result's).
const PARAMS_STREAM: u8 = 1;

/// Appends a STREAM_CHUNK body.
pub(crate) fn write_chunk(buf: &mut BytesMut, sender: &str, c: &StreamChunk) -> Result<(), String> {
    put_str16(buf, sender)?;
    buf.put_u64(c.id);
    buf.put_u8(flag(c.params, PARAMS_STREAM));
    buf.put_u64(c.seq);
    buf.put_slice(&c.data);
    Ok(())
}

/// Reads a STREAM_CHUNK body; `data` is a slice of `body`.
pub(crate) fn read_chunk(body: Bytes) -> Result<(Arc<str>, StreamChunk), String> {
    let mut r = Reader(body);
    let sender = r.node_name()?;
    let id = r.u64()?;
    let flags = r.u8()?;
    let seq = r.u64()?;
    let chunk = StreamChunk {
        id,
        params: flags & PARAMS_STREAM != 0,
        seq,
        data: r.0,
    };
    Ok((sender, chunk))
}

/// Appends a RESPONSE body.
pub(crate) fn write_response(buf: &mut BytesMut, sender: &str, r: &Response) -> Result<(), String> {
    put_str16(buf, sender)?;
    buf.put_u64(r.id);
    let flags = flag(r.data.is_some(), HAS_DATA)
        | flag(r.error.is_some(), HAS_ERROR)
        | flag(r.meta.is_some(), HAS_META)
        | flag(r.headers.is_some(), HAS_HEADERS)
        | flag(r.stream, STREAM);
    buf.put_u8(flags);
    buf.put_u8(r.content_type.into());
    if let Some(error) = &r.error {
        put_blob32(buf, error)?;
    }
    put_blobs(buf, r.meta.as_ref(), r.headers.as_ref())?;
    if let Some(data) = &r.data {
        buf.put_slice(data);
    }
    Ok(())
}

/// Reads a RESPONSE body; `data` is a slice of `body`.
pub(crate) fn read_response(body: Bytes) -> Result<(Arc<str>, Response), String> {
    let mut r = Reader(body);
    let sender = r.node_name()?;
    let id = r.u64()?;
    let flags = r.u8()?;
    let content_type = ContentType::try_from(r.u8()?)?;
    let error: Option<Box<ErrorBody>> = (flags & HAS_ERROR != 0).then(|| r.blob32()).transpose()?;
    let meta = (flags & HAS_META != 0).then(|| r.blob32()).transpose()?;
    let headers = (flags & HAS_HEADERS != 0).then(|| r.blob32()).transpose()?;
    let data = (flags & HAS_DATA != 0).then_some(r.0);
    let response = Response {
        id,
        data,
        content_type,
        error,
        meta,
        headers,
        stream: flags & STREAM != 0,
    };
    Ok((sender, response))
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

fn put_str16(buf: &mut BytesMut, s: &str) -> Result<(), String> {
    let len = u16::try_from(s.len()).map_err(|_| format!("name of {} bytes", s.len()))?;
    buf.put_u16(len);
    buf.put_slice(s.as_bytes());
    Ok(())
}

fn put_blob32<T: Serialize>(buf: &mut BytesMut, value: &T) -> Result<(), String> {
    let at = buf.len();
    buf.put_u32(0);
    rmp_serde::encode::write_named(&mut buf.writer(), value).map_err(|e| e.to_string())?;
    let len = u32::try_from(buf.len() - at - 4).map_err(|_| "part over 4 GiB".to_owned())?;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn put_blobs(
    buf: &mut BytesMut,
    meta: Option<&Meta>,
    headers: Option<&Headers>,
) -> Result<(), String> {
    if let Some(meta) = meta {
        put_blob32(buf, meta)?;
    }
    if let Some(headers) = headers {
        put_blob32(buf, headers)?;
    }
    Ok(())
}

/// Bounds-checked reads from the front of a body. Integers are read in place; only names and
/// blobs are split off (a reference count, not a copy).
struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), String> {
        if self.0.len() < n {
            return Err(format!("needs {n} more bytes, has {}", self.0.len()));
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn u8(&mut self) -> Result<u8, String> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    /// The raw bytes of a `str16` (not yet checked to be UTF-8).
    fn str16_raw(&mut self) -> Result<Bytes, String> {
        self.need(2)?;
        let len = usize::from(self.0.get_u16());
        self.take(len)
    }

    /// A node's name, shared with the frames before it (see [`names`]).
    fn node_name(&mut self) -> Result<Arc<str>, String> {
        let raw = self.str16_raw()?;
        std::str::from_utf8(&raw)
            .map(names::node)
            .map_err(|e| format!("name is not UTF-8: {e}"))
    }

    /// An action's name, shared with the frames before it (see [`names`]).
    fn action_name(&mut self) -> Result<Arc<str>, String> {
        let raw = self.str16_raw()?;
        std::str::from_utf8(&raw)
            .map(names::action)
            .map_err(|e| format!("action name is not UTF-8: {e}"))
    }

    fn string16(&mut self) -> Result<String, String> {
        String::from_utf8(self.str16_raw()?.to_vec()).map_err(|e| format!("name is not UTF-8: {e}"))
    }

    fn blob32<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        rmp_serde::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        let mut meta = Meta::new();
        meta.insert("user".into(), "ada".into());
        let mut headers = Headers::new();
        headers.insert("x-trace".into(), "abc".into());
        Request {
            id: 7,
            action: "v2.math.add".into(),
            params: Bytes::from_static(b"\x92\x01\x02"),
            content_type: ContentType::Json,
            meta: Some(meta),
            headers: Some(headers),
            timeout_ms: Some(250),
            level: 3,
            request_id: 99,
            parent_id: Some(98),
            caller: Some("api".into()),
            stream: Some(StreamInfo {
                len: Some(5),
                content_type: Some("image/png".into()),
            }),
        }
    }

    #[test]
    fn every_field_round_trips_and_params_are_not_copied() {
        let mut buf = BytesMut::new();
        write_request(&mut buf, "node-a", &request()).unwrap();
        let body = buf.freeze();
        let (sender, got) = read_request(body.clone()).unwrap();
        assert_eq!((&*sender, &got), ("node-a", &request()));
        let params_at = got.params.as_ptr() as usize - body.as_ptr() as usize;
        assert_eq!(params_at, body.len() - 3, "a slice of the frame");

        let response = Response {
            id: 7,
            data: Some(Bytes::from_static(b"\x03")),
            error: Some(Box::new(crate::Error::validation("bad").body().clone())),
            ..Response::default()
        };
        let mut buf = BytesMut::new();
        write_response(&mut buf, "node-b", &response).unwrap();
        assert_eq!(read_response(buf.freeze()).unwrap().1, response);
    }

    #[test]
    fn a_chunk_round_trips_and_its_data_is_not_copied() {
        let chunk = StreamChunk {
            id: 9,
            params: true,
            seq: 3,
            data: Bytes::from_static(b"bytes of a file"),
        };
        let mut buf = BytesMut::new();
        write_chunk(&mut buf, "node-a", &chunk).unwrap();
        let body = buf.freeze();
        let (sender, got) = read_chunk(body.clone()).unwrap();
        assert_eq!((&*sender, &got), ("node-a", &chunk));
        assert_eq!(
            got.data.as_ptr() as usize - body.as_ptr() as usize,
            body.len() - 15
        );
        for len in 0..body.len() - 15 {
            assert!(read_chunk(body.slice(..len)).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn a_truncated_or_lying_body_is_an_error_not_a_panic() {
        let mut buf = BytesMut::new();
        write_request(&mut buf, "node-a", &request()).unwrap();
        let body = buf.freeze();
        // Cut anywhere before the params: always an error.
        let params_at = body.len() - 3;
        for len in 0..params_at {
            assert!(read_request(body.slice(..len)).is_err(), "cut at {len}");
        }
        // A name that claims more bytes than the body holds.
        let mut lying = body.to_vec();
        lying[0] = 0xff;
        assert!(read_request(Bytes::from(lying)).is_err());
        // Not UTF-8.
        let mut bad = body.to_vec();
        bad[2] = 0xff;
        assert!(read_request(Bytes::from(bad)).is_err());
    }
}
