//! Parameters and results as they move between caller and handler.
//!
//! A [`Payload`] is either a live Rust value (a call inside one process: no serialization at all,
//! the handler receives the very value the caller passed when the types agree) or encoded bytes
//! with a [`ContentType`] (a call that crossed a link). [`Payload::decode`] turns either into the
//! type the receiver asks for: a downcast when the types match, a MessagePack round trip when they
//! do not (for example a `serde_json::Value` sent to a handler that takes a struct).
//!
//! ```
//! use phalanx::Payload;
//!
//! let local = Payload::local(41_i64);
//! assert_eq!(local.decode::<i64>().unwrap(), 41);
//!
//! let json = Payload::local(serde_json::json!({"a": 1}));
//! #[derive(serde::Deserialize)]
//! struct A { a: i32 }
//! assert_eq!(json.decode::<A>().unwrap().a, 1);
//! ```

mod wrapped;

use crate::error::{Error, Result};
pub use crate::protocol::packet::ContentType;
use bytes::{BufMut, Bytes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;
pub use wrapped::Json;
#[cfg(feature = "protobuf")]
pub use wrapped::Proto;

/// A caller's value lent to a handler: the handler takes it out when the types match.
trait LocalSlot: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn to_msgpack(&self) -> Result<Bytes>;
    fn encode_as(&self, format: ContentType) -> Result<(Bytes, ContentType)>;
}

impl<T: Serialize + Send + 'static> LocalSlot for Option<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn to_msgpack(&self) -> Result<Bytes> {
        match self {
            Some(value) => encode_msgpack(value),
            None => Err(Error::validation("payload was already taken")),
        }
    }

    fn encode_as(&self, format: ContentType) -> Result<(Bytes, ContentType)> {
        match self {
            Some(value) => encode_value(value, format),
            None => Err(Error::validation("payload was already taken")),
        }
    }
}

/// A serializable value that can also be handed over as-is.
trait LocalValue: Send {
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn to_msgpack(&self) -> Result<Bytes>;
    fn encode_as(&self, format: ContentType) -> Result<(Bytes, ContentType)>;
}

impl<T: Serialize + Send + 'static> LocalValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }

    fn to_msgpack(&self) -> Result<Bytes> {
        encode_msgpack(self)
    }

    fn encode_as(&self, format: ContentType) -> Result<(Bytes, ContentType)> {
        encode_value(self, format)
    }
}

/// Encodes `value` in its own format if it has one ([`Json`], [`Proto`]), else as `format`
/// asks: JSON for [`ContentType::Json`], MessagePack otherwise.
pub(crate) fn encode_value<T: Serialize + ?Sized>(
    value: &T,
    format: ContentType,
) -> Result<(Bytes, ContentType)> {
    if let Some(own) = wrapped::own_encoding(value) {
        return own;
    }
    match format {
        ContentType::Json => serde_json::to_vec(value)
            .map(|json| (Bytes::from(json), ContentType::Json))
            .map_err(|e| Error::validation(format!("cannot encode payload: {e}")).with_source(e)),
        _ => encode_msgpack(value).map(|bytes| (bytes, ContentType::MsgPack)),
    }
}

/// Encodes `value` as MessagePack with named fields.
pub(crate) fn encode_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes> {
    // Carved from the thread's arena: most values are small, and a call's are gone once sent.
    crate::arena::build(128, |buf| {
        rmp_serde::encode::write_named(&mut buf.writer(), value)
    })
    .map_err(|e| Error::validation(format!("cannot encode payload: {e}")).with_source(e))
}

/// Parameters or a result: a live value (owned, or lent by the caller for the time it takes
/// the handler to decode it) or encoded bytes.
pub struct Payload<'a>(Inner<'a>);

enum Inner<'a> {
    Lent(&'a mut (dyn LocalSlot + 'static)),
    Local(Box<dyn LocalValue>),
    Encoded(Bytes, ContentType),
}

impl fmt::Debug for Payload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Inner::Lent(_) => f.write_str("Payload::Lent(..)"),
            Inner::Local(_) => f.write_str("Payload::Local(..)"),
            Inner::Encoded(bytes, ct) => {
                write!(f, "Payload::Encoded({ct:?}, {} bytes)", bytes.len())
            }
        }
    }
}

impl Payload<'static> {
    /// Wraps a live value; it is encoded only if it has to cross a link.
    pub fn local<T: Serialize + Send + 'static>(value: T) -> Self {
        Self(Inner::Local(Box::new(value)))
    }

    /// Wraps bytes that arrived from a link.
    pub fn encoded(bytes: Bytes, content_type: ContentType) -> Self {
        Self(Inner::Encoded(bytes, content_type))
    }
}

impl<'a> Payload<'a> {
    /// Lends the value in `slot` (no allocation); a handler of the same type takes it out.
    ///
    /// ```
    /// let mut slot = Some(5_u8);
    /// assert_eq!(phalanx::Payload::lend(&mut slot).decode::<u8>().unwrap(), 5);
    /// assert_eq!(slot, None);
    /// ```
    pub fn lend<T: Serialize + Send + 'static>(slot: &'a mut Option<T>) -> Self {
        Self(Inner::Lent(slot))
    }

    /// Turns the payload into `T`: a downcast for a live value of the same type, decoding
    /// otherwise. Failure is a validation error (422).
    pub fn decode<T: DeserializeOwned + 'static>(self) -> Result<T> {
        match self.0 {
            Inner::Lent(slot) => match slot.as_any_mut().downcast_mut::<Option<T>>() {
                Some(value) => value
                    .take()
                    .ok_or_else(|| Error::validation("payload was already taken")),
                None => decode_bytes(&slot.to_msgpack()?, ContentType::MsgPack),
            },
            Inner::Local(value) if value.as_any().is::<T>() => Ok(*value
                .into_any()
                .downcast::<T>()
                .expect("type checked by the match guard")),
            Inner::Local(value) => decode_bytes(&value.to_msgpack()?, ContentType::MsgPack),
            Inner::Encoded(bytes, ContentType::Raw) => {
                let any: Box<dyn Any> = Box::new(bytes);
                any.downcast::<T>().map(|b| *b).map_err(|_| {
                    Error::validation("raw payloads can only be received as `bytes::Bytes`")
                })
            }
            Inner::Encoded(bytes, ContentType::Protobuf) => {
                let any: Box<dyn Any> = Box::new(bytes);
                match any.downcast::<T>() {
                    Ok(bytes) => Ok(*bytes),
                    Err(any) => {
                        let bytes = any.downcast::<Bytes>().expect("boxed as Bytes");
                        decode_protobuf(&bytes)
                    }
                }
            }
            Inner::Encoded(bytes, content_type) => decode_bytes(&bytes, content_type),
        }
    }

    /// A copy of an encoded payload; `None` for a live value (encode it first).
    ///
    /// ```
    /// let bytes = phalanx::Payload::local(7_u8).encode().unwrap();
    /// let encoded = phalanx::Payload::encoded(bytes.0, bytes.1);
    /// assert_eq!(encoded.try_clone().unwrap().decode::<u8>().unwrap(), 7);
    /// assert!(phalanx::Payload::local(7_u8).try_clone().is_none());
    /// ```
    pub fn try_clone(&self) -> Option<Payload<'static>> {
        match &self.0 {
            Inner::Encoded(bytes, ct) => Some(Payload::encoded(bytes.clone(), *ct)),
            _ => None,
        }
    }

    /// The byte stream this payload holds, if it is one (an action that answers a stream).
    pub(crate) fn into_stream(self) -> std::result::Result<crate::stream::ByteStream, Self> {
        match self.0 {
            Inner::Local(value) if value.as_any().is::<crate::stream::ByteStream>() => Ok(*value
                .into_any()
                .downcast()
                .expect("type checked by the match guard")),
            other => Err(Self(other)),
        }
    }

    /// The payload as bytes for a link, with their content type: MessagePack, unless the value
    /// has a format of its own ([`Json`], [`Proto`]).
    pub fn encode(&self) -> Result<(Bytes, ContentType)> {
        self.encode_as(ContentType::MsgPack)
    }

    /// The payload as bytes for a link in `format` (JSON or MessagePack), unless the value has
    /// a format of its own ([`Json`], [`Proto`]); bytes that arrived encoded stay as they are.
    ///
    /// ```
    /// use phalanx::{ContentType, Payload};
    /// let (bytes, format) = Payload::local(vec![1, 2]).encode_as(ContentType::Json).unwrap();
    /// assert_eq!((format, &bytes[..]), (ContentType::Json, &b"[1,2]"[..]));
    /// ```
    pub fn encode_as(&self, format: ContentType) -> Result<(Bytes, ContentType)> {
        match &self.0 {
            Inner::Lent(slot) => slot.encode_as(format),
            Inner::Local(value) => value.encode_as(format),
            Inner::Encoded(bytes, ct) => Ok((bytes.clone(), *ct)),
        }
    }

    /// How the payload is encoded; `None` for a live value.
    ///
    /// ```
    /// use phalanx::{ContentType, Payload};
    /// assert_eq!(Payload::local(1).content_type(), None);
    /// let json = Payload::encoded(bytes::Bytes::from_static(b"1"), ContentType::Json);
    /// assert_eq!(json.content_type(), Some(ContentType::Json));
    /// ```
    pub fn content_type(&self) -> Option<ContentType> {
        match &self.0 {
            Inner::Encoded(_, ct) => Some(*ct),
            _ => None,
        }
    }
}

/// Decodes a Protobuf payload into `T`: a [`Proto`] (or anything that takes bytes).
fn decode_protobuf<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let deserializer = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(bytes);
    T::deserialize(deserializer).map_err(|e| {
        Error::validation(format!(
            "the payload is Protobuf: receive it as `phalanx::Proto<M>` or `bytes::Bytes` ({e})"
        ))
        .with_type("UNSUPPORTED_FORMAT")
    })
}

fn decode_bytes<T: DeserializeOwned>(bytes: &[u8], content_type: ContentType) -> Result<T> {
    match content_type {
        ContentType::Json => serde_json::from_slice(bytes)
            .map_err(|e| Error::validation(format!("invalid JSON payload: {e}")).with_source(e)),
        _ => rmp_serde::from_slice(bytes)
            .map_err(|e| Error::validation(format!("invalid payload: {e}")).with_source(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Add {
        a: i64,
        b: i64,
    }

    #[test]
    fn same_type_is_moved_not_encoded() {
        let add = Add { a: 1, b: 2 };
        assert_eq!(
            Payload::local(add).decode::<Add>().unwrap(),
            Add { a: 1, b: 2 }
        );
    }

    #[test]
    fn encoded_and_converted_values_decode() {
        let (bytes, ct) = Payload::local(Add { a: 3, b: 4 }).encode().unwrap();
        let back = Payload::encoded(bytes, ct)
            .decode::<serde_json::Value>()
            .unwrap();
        assert_eq!(back, serde_json::json!({"a": 3, "b": 4}));
        let json = Payload::encoded(Bytes::from_static(br#"{"a":5,"b":6}"#), ContentType::Json);
        assert_eq!(json.decode::<Add>().unwrap(), Add { a: 5, b: 6 });
    }

    #[test]
    fn wrong_shape_is_a_validation_error() {
        let err = Payload::local("text").decode::<Add>().unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Validation);
        assert_eq!(err.code(), 422);
    }

    #[test]
    fn raw_bytes_stay_raw() {
        let raw = Payload::encoded(Bytes::from_static(b"\x00\x01"), ContentType::Raw);
        assert_eq!(
            raw.decode::<Bytes>().unwrap(),
            Bytes::from_static(b"\x00\x01")
        );
    }
}
