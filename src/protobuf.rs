//! Actions whose params and answers are Protocol Buffers messages (prost), and how JSON callers
//! reach them.
//!
//! A Protobuf action ([`ServiceBuilder::proto_action`](crate::ServiceBuilder::proto_action))
//! answers a caller in the caller's terms: a message sent as Protobuf (a
//! [`Proto`](crate::Proto) value) is answered with Protobuf; params sent as JSON or MessagePack —
//! the CLI, the HTTP gateway, any `serde_json::Value` — are turned into the message through the
//! service's descriptors (the proto3 JSON mapping), and the answer comes back the same way
//! (every field, defaults included; 64-bit integers as strings, as the mapping says). A
//! service that publishes no descriptors
//! ([`ServiceBuilder::proto_descriptors`](crate::ServiceBuilder::proto_descriptors)) serves
//! Protobuf callers only, and tells a JSON caller so with an `UNSUPPORTED_FORMAT` error.
//!
//! The conversion runs on the serving node, so callers need neither the descriptors nor the
//! generated types. What an action takes and answers is announced in its
//! [`ActionInfo::proto`](crate::protocol::packet::ActionInfo::proto).

use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::handler::ActionFn;
use crate::payload::{ContentType, Payload, Proto};
use crate::protocol::packet::ProtoTypes;
use bytes::Bytes;
use futures_util::FutureExt;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// The descriptors of one action's params and answer, once its service started.
#[derive(Debug)]
struct Schema {
    params: MessageDescriptor,
    answer: MessageDescriptor,
}

/// What a Protobuf action learns when its service starts.
#[derive(Debug)]
struct Resolved {
    /// The action's full name.
    action: String,
    /// `None` when the service publishes no descriptors.
    schema: Option<Schema>,
}

/// A Protobuf action waiting for its service to start, when its descriptors are looked up.
pub(crate) struct ProtoAction {
    /// The action's short name.
    pub(crate) name: String,
    types: ProtoTypes,
    resolved: Arc<OnceLock<Resolved>>,
}

impl ProtoAction {
    /// Looks the messages of the action, whose full name is `action`, up in `pool` (none: the
    /// action serves Protobuf callers only) and says what the action announces.
    pub(crate) fn resolve(
        &self,
        action: &str,
        pool: Option<&DescriptorPool>,
    ) -> Result<ProtoTypes> {
        let schema = match pool {
            None => None,
            Some(pool) => {
                let find = |name: &str| {
                    pool.get_message_by_name(name).ok_or_else(|| {
                        Error::validation(format!(
                            "action '{action}': the service's descriptors have no message '{name}'"
                        ))
                    })
                };
                Some(Schema {
                    params: find(&self.types.params)?,
                    answer: find(&self.types.answer)?,
                })
            }
        };
        let json = schema.is_some();
        // A service starts once: the builder is consumed by its start.
        let _ = self.resolved.set(Resolved {
            action: action.to_owned(),
            schema,
        });
        Ok(ProtoTypes {
            json,
            ..self.types.clone()
        })
    }
}

/// Erases a Protobuf action over `P -> R`; the returned [`ProtoAction`] is resolved when the
/// service starts.
pub(crate) fn proto_action_fn<P, R, F, Fut>(name: &str, handler: F) -> (ActionFn, ProtoAction)
where
    F: Fn(Context, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    P: prost::Message + prost::Name + Default + 'static,
    R: prost::Message + prost::Name + 'static,
{
    let types = ProtoTypes {
        params: P::full_name(),
        answer: R::full_name(),
        json: false,
    };
    let resolved: Arc<OnceLock<Resolved>> = Arc::default();
    let declared = ProtoAction {
        name: name.to_owned(),
        types: types.clone(),
        resolved: resolved.clone(),
    };
    let erased: ActionFn = Arc::new(move |ctx, payload: Payload<'_>| {
        let Some(resolved) = resolved.get() else {
            let err = Error::new(
                ErrorKind::Internal,
                "a Protobuf action ran before its service started",
            );
            return futures_util::future::ready(Err(err)).boxed();
        };
        let schema = resolved.schema.as_ref();
        let (bytes, format) = match payload.encode() {
            Ok(encoded) => encoded,
            Err(err) => return futures_util::future::ready(Err(err)).boxed(),
        };
        let params = match format {
            ContentType::Protobuf => P::decode(bytes.as_ref())
                .map_err(|e| Error::validation(format!("invalid {} message: {e}", types.params))),
            _ => match schema {
                Some(schema) => from_serde::<P>(&bytes, format, &schema.params),
                None => Err(no_descriptors(&resolved.action, &types)),
            },
        };
        let answer_as_message = format == ContentType::Protobuf;
        let answer = schema.map(|s| s.answer.clone());
        match params {
            Ok(params) => handler(ctx, params)
                .map(move |answer_message| {
                    let answer_message = answer_message?;
                    match answer {
                        Some(desc) if !answer_as_message => to_serde(&answer_message, desc),
                        _ => Ok(Payload::local(Proto(answer_message))),
                    }
                })
                .boxed(),
            Err(err) => futures_util::future::ready(Err(err)).boxed(),
        }
    });
    (erased, declared)
}

/// A message from params sent as JSON or MessagePack, through its descriptor.
fn from_serde<P: prost::Message + Default>(
    bytes: &Bytes,
    format: ContentType,
    desc: &MessageDescriptor,
) -> Result<P> {
    let value: serde_json::Value = Payload::encoded(bytes.clone(), format).decode()?;
    let dynamic = DynamicMessage::deserialize(desc.clone(), value).map_err(|e| {
        Error::validation(format!("params are not a valid {}: {e}", desc.full_name()))
    })?;
    dynamic
        .transcode_to::<P>()
        .map_err(|e| Error::validation(format!("params are not a valid {}: {e}", desc.full_name())))
}

/// An answer for a JSON or MessagePack caller: the message in the proto3 JSON mapping.
fn to_serde<R: prost::Message>(answer: &R, desc: MessageDescriptor) -> Result<Payload<'static>> {
    let mut dynamic = DynamicMessage::new(desc);
    dynamic.transcode_from(answer).map_err(|e| {
        Error::new(
            ErrorKind::Internal,
            format!("answer does not match its descriptor: {e}"),
        )
    })?;
    // Every field, defaults included: a JSON caller should not have to know proto3 omits them.
    let options = SerializeOptions::new().skip_default_fields(false);
    let value = dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| {
            Error::new(
                ErrorKind::Internal,
                format!("answer cannot be mapped to JSON: {e}"),
            )
        })?;
    Ok(Payload::local(value))
}

/// The error a JSON caller gets from an action whose service publishes no descriptors.
fn no_descriptors(action: &str, types: &ProtoTypes) -> Error {
    Error::validation(format!(
        "action '{action}' takes Protobuf ({}) and its service publishes no descriptors: \
         send a phalanx::Proto<{}>, or publish descriptors with ServiceBuilder::proto_descriptors",
        types.params, types.params
    ))
    .with_type("UNSUPPORTED_FORMAT")
}
