//! Type-erased action and event handlers.
//!
//! Users write ordinary `async` closures or functions over serde types:
//! `|ctx: Context, params: P| async move { Ok::<R, Error>(..) }`. Here they become one erased
//! shape the registry can store: `Fn(Context, Payload) -> BoxFuture<Result<Payload>>`. Decoding
//! the parameters is part of the handler, so a local call whose types match moves the caller's
//! value straight into the handler. A peer's request gets its answer encoded as soon as the
//! handler's value is ready, in the format the request asked for.

use crate::context::Context;
use crate::error::Result;
use crate::payload::{ContentType, Payload, encode_value};
use crate::stream::ByteStream;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;

/// An erased action handler.
pub(crate) type ActionFn = Arc<
    dyn for<'a> Fn(Context, Payload<'a>) -> BoxFuture<'static, Result<Payload<'static>>>
        + Send
        + Sync,
>;

/// An erased event handler.
pub(crate) type EventFn =
    Arc<dyn for<'a> Fn(Context, Payload<'a>) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Erases an action handler over `P -> R`.
pub(crate) fn action_fn<P, R, F, Fut>(handler: F) -> ActionFn
where
    F: Fn(Context, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
{
    Arc::new(move |ctx: Context, payload: Payload<'_>| {
        let answer_format = ctx.answer_format;
        match payload.decode::<P>() {
            Ok(params) => handler(ctx, params)
                .map(move |result| result.and_then(|value| answer(value, answer_format)))
                .boxed(),
            Err(err) => futures_util::future::ready(Err(err)).boxed(),
        }
    })
}

/// A handler's value as its caller takes it: live for a call made on this node; for a peer's
/// request, encoded in the answer's format at once (a value about to be encoded needs no box),
/// unless it is a byte stream, which flows on its own.
fn answer<R: Serialize + Send + 'static>(
    value: R,
    answer_format: Option<ContentType>,
) -> Result<Payload<'static>> {
    match answer_format {
        Some(format) if TypeId::of::<R>() != TypeId::of::<ByteStream>() => {
            let (bytes, content_type) = encode_value(&value, format)?;
            Ok(Payload::encoded(bytes, content_type))
        }
        _ => Ok(Payload::local(value)),
    }
}

/// Erases an event handler over `P`.
pub(crate) fn event_fn<P, F, Fut>(handler: F) -> EventFn
where
    F: Fn(Context, P) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
    P: DeserializeOwned + Send + 'static,
{
    Arc::new(
        move |ctx, payload: Payload<'_>| match payload.decode::<P>() {
            Ok(data) => handler(ctx, data).boxed(),
            Err(err) => futures_util::future::ready(Err(err)).boxed(),
        },
    )
}
