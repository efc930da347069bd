//! Values that choose their own format on the wire, whatever the call's: [`Json`] and, with the
//! `protobuf` feature, [`Proto`].
//!
//! Both serialize as a serde newtype struct with a reserved name. Nested inside another value
//! they are transparent (a `Json<T>` is a `T`; a `Proto<M>` is the message's bytes). As the
//! whole payload of a call, an answer or an event, the encoder recognises the name and writes
//! the value in its own format, announced in the packet's content type so any node decodes it.

use crate::error::{Error, Result};
use crate::protocol::packet::ContentType;
use bytes::Bytes;
use serde::ser::{Impossible, Serialize, Serializer};
use serde::{Deserialize, Deserializer};
use std::fmt;

/// The newtype name a [`Json`] serializes under.
const JSON_MARKER: &str = "$phalanx::Json";
/// The newtype name a [`Proto`] serializes under.
#[cfg(feature = "protobuf")]
const PROTO_MARKER: &str = "$phalanx::Proto";

/// A value that travels as JSON, whatever format the call uses: a handler returning `Json<T>`
/// answers JSON, a caller passing `Json<T>` sends JSON. Receiving, it is just a `T`.
///
/// ```
/// use phalanx::{ContentType, Json, Payload};
///
/// let (bytes, format) = Payload::local(Json(serde_json::json!({"a": 1}))).encode().unwrap();
/// assert_eq!((format, &bytes[..]), (ContentType::Json, &br#"{"a":1}"#[..]));
/// let back: Json<serde_json::Value> = Payload::encoded(bytes, format).decode().unwrap();
/// assert_eq!(back.0["a"], 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Json<T>(pub T);

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(JSON_MARKER, &self.0)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        T::deserialize(deserializer).map(Json)
    }
}

/// A Protocol Buffers message (prost) that travels as Protobuf: a handler taking or returning
/// `Proto<M>` (or registered with
/// [`ServiceBuilder::proto_action`](crate::ServiceBuilder::proto_action)) speaks Protobuf, and
/// so does a caller passing `Proto<M>` or asking for one.
///
/// ```
/// use phalanx::{ContentType, Payload, Proto};
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Ping {
///     #[prost(uint64, tag = "1")]
///     seq: u64,
/// }
///
/// let (bytes, format) = Payload::local(Proto(Ping { seq: 7 })).encode().unwrap();
/// assert_eq!((format, &bytes[..]), (ContentType::Protobuf, &[0x08, 0x07][..]));
/// let back: Proto<Ping> = Payload::encoded(bytes, format).decode().unwrap();
/// assert_eq!(back.0.seq, 7);
/// ```
#[cfg(feature = "protobuf")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Proto<M>(pub M);

#[cfg(feature = "protobuf")]
impl<M: prost::Message> Serialize for Proto<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(
            PROTO_MARKER,
            serde_bytes::Bytes::new(&self.0.encode_to_vec()),
        )
    }
}

#[cfg(feature = "protobuf")]
impl<'de, M: prost::Message + Default> Deserialize<'de> for Proto<M> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer
            .deserialize_newtype_struct(PROTO_MARKER, ProtoVisitor(std::marker::PhantomData))
    }
}

#[cfg(feature = "protobuf")]
struct ProtoVisitor<M>(std::marker::PhantomData<M>);

#[cfg(feature = "protobuf")]
impl<'de, M: prost::Message + Default> serde::de::Visitor<'de> for ProtoVisitor<M> {
    type Value = Proto<M>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an encoded Protobuf message")
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> std::result::Result<Self::Value, E> {
        M::decode(bytes)
            .map(Proto)
            .map_err(|e| E::custom(format!("invalid Protobuf message: {e}")))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_bytes(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        self.visit_bytes(&bytes)
    }
}

/// The payload's own encoding if it is a [`Json`] or [`Proto`], `None` for any other value.
/// Costs one call for other values: the first thing they ask of the probe is refused.
pub(crate) fn own_encoding<T: Serialize + ?Sized>(
    value: &T,
) -> Option<Result<(Bytes, ContentType)>> {
    match value.serialize(Probe { inner_bytes: false }) {
        Ok(encoded) => Some(Ok(encoded)),
        Err(ProbeError::NotWrapped) => None,
        Err(ProbeError::Failed(why)) => Some(Err(Error::validation(format!(
            "cannot encode payload: {why}"
        )))),
    }
}

/// A serializer that only accepts a [`Json`] or [`Proto`] newtype (or, inside a `Proto`, its
/// bytes).
struct Probe {
    inner_bytes: bool,
}

#[derive(Debug)]
enum ProbeError {
    NotWrapped,
    Failed(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotWrapped => f.write_str("not a self-encoding payload"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProbeError {}

impl serde::ser::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Failed(msg.to_string())
    }
}

/// Serializer methods the probe refuses.
macro_rules! not_wrapped {
    ($($method:ident($($arg:ty),*) -> $ok:ty;)*) => {$(
        fn $method(self, $(_: $arg),*) -> std::result::Result<$ok, ProbeError> {
            Err(ProbeError::NotWrapped)
        }
    )*};
}

type Encoded = (Bytes, ContentType);

impl Serializer for Probe {
    type Ok = Encoded;
    type Error = ProbeError;
    type SerializeSeq = Impossible<Encoded, ProbeError>;
    type SerializeTuple = Impossible<Encoded, ProbeError>;
    type SerializeTupleStruct = Impossible<Encoded, ProbeError>;
    type SerializeTupleVariant = Impossible<Encoded, ProbeError>;
    type SerializeMap = Impossible<Encoded, ProbeError>;
    type SerializeStruct = Impossible<Encoded, ProbeError>;
    type SerializeStructVariant = Impossible<Encoded, ProbeError>;

    not_wrapped! {
        serialize_bool(bool) -> Encoded;
        serialize_i8(i8) -> Encoded;
        serialize_i16(i16) -> Encoded;
        serialize_i32(i32) -> Encoded;
        serialize_i64(i64) -> Encoded;
        serialize_u8(u8) -> Encoded;
        serialize_u16(u16) -> Encoded;
        serialize_u32(u32) -> Encoded;
        serialize_u64(u64) -> Encoded;
        serialize_f32(f32) -> Encoded;
        serialize_f64(f64) -> Encoded;
        serialize_char(char) -> Encoded;
        serialize_str(&str) -> Encoded;
        serialize_none() -> Encoded;
        serialize_unit() -> Encoded;
        serialize_unit_struct(&'static str) -> Encoded;
        serialize_unit_variant(&'static str, u32, &'static str) -> Encoded;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_bytes(self, bytes: &[u8]) -> std::result::Result<Encoded, ProbeError> {
        if self.inner_bytes {
            Ok((Bytes::copy_from_slice(bytes), ContentType::Protobuf))
        } else {
            Err(ProbeError::NotWrapped)
        }
    }

    fn serialize_some<T: Serialize + ?Sized>(
        self,
        _: &T,
    ) -> std::result::Result<Encoded, ProbeError> {
        Err(ProbeError::NotWrapped)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> std::result::Result<Encoded, ProbeError> {
        match name {
            JSON_MARKER => serde_json::to_vec(value)
                .map(|json| (Bytes::from(json), ContentType::Json))
                .map_err(|e| ProbeError::Failed(e.to_string())),
            #[cfg(feature = "protobuf")]
            PROTO_MARKER => value.serialize(Probe { inner_bytes: true }),
            _ => Err(ProbeError::NotWrapped),
        }
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> std::result::Result<Encoded, ProbeError> {
        Err(ProbeError::NotWrapped)
    }
}
