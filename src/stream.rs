//! Byte streams through services: an action may take one beside its params
//! ([`CallOptions::stream`](crate::CallOptions::stream), [`Context::take_stream`](crate::Context::take_stream))
//! and may answer one (return a [`ByteStream`]; call with `call::<ByteStream>`).
//!
//! In one process the stream is handed over as it is. Across a link it travels in chunks of at
//! most [`CHUNK_LEN`] bytes, at most [`WINDOW`] chunks ahead of what the receiver has read: a
//! slow reader slows the producer, and memory stays flat for any size. A producer's error, or a
//! reader that drops the stream, reaches the other side at once and stops it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> phalanx::Result<()> {
//! use phalanx::{ByteStream, CallOptions, Context};
//! use futures_util::StreamExt;
//!
//! let broker = phalanx::Broker::builder().start().await?;
//! broker
//!     .service("files")
//!     // A stream in: its length out.
//!     .action("size", |ctx: Context, _: ()| async move {
//!         let mut body = ctx.take_stream().ok_or_else(|| phalanx::Error::validation("no body"))?;
//!         let mut len = 0;
//!         while let Some(chunk) = body.next().await {
//!             len += chunk?.len();
//!         }
//!         Ok(len)
//!     })
//!     // Params in: a stream out.
//!     .action("zeros", |_ctx, n: usize| async move {
//!         Ok(ByteStream::from_bytes(vec![0u8; n]))
//!     })
//!     .start()
//!     .await?;
//! let body = ByteStream::from_bytes(&b"hello"[..]);
//! let len: usize = broker.call_with("files.size", (), CallOptions::new().stream(body)).await?;
//! assert_eq!(len, 5);
//! let zeros: ByteStream = broker.call("files.zeros", 3usize).await?;
//! assert_eq!(zeros.collect(1024).await?.as_ref(), &[0, 0, 0]);
//! # broker.stop().await;
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::protocol::packet::StreamInfo;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use futures_util::StreamExt;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest chunk a stream sends over a link, in bytes.
pub const CHUNK_LEN: usize = 32 * 1024;

/// Chunks a producer may send ahead of what the receiver has read.
pub const WINDOW: u32 = 16;

/// A stream of bytes with, when known, its length and content type.
///
/// Build one from any `Stream<Item = Result<Bytes>>`, an [`AsyncRead`], or bytes in memory; read
/// it as a [`Stream`], or [`collect`](ByteStream::collect) it with a bound.
pub struct ByteStream {
    chunks: Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
    len: Option<u64>,
    content_type: Option<String>,
}

impl fmt::Debug for ByteStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteStream")
            .field("len", &self.len)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

impl ByteStream {
    /// A stream of the chunks `chunks` yields.
    pub fn new(chunks: impl Stream<Item = Result<Bytes>> + Send + 'static) -> Self {
        Self {
            chunks: Box::pin(chunks),
            len: None,
            content_type: None,
        }
    }

    /// The bytes of `bytes`, with their length.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let len = bytes.len() as u64;
        let once = futures_util::stream::iter((!bytes.is_empty()).then_some(Ok(bytes)));
        Self::new(once).with_len(len)
    }

    /// What `reader` reads, [`CHUNK_LEN`] bytes at a time.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> phalanx::Result<()> {
    /// let stream = phalanx::ByteStream::from_reader(&b"abc"[..]);
    /// assert_eq!(stream.collect(10).await?.as_ref(), b"abc");
    /// # Ok(()) }
    /// ```
    pub fn from_reader(reader: impl AsyncRead + Send + 'static) -> Self {
        let reader = Box::pin(reader);
        Self::new(futures_util::stream::unfold(
            Some(reader),
            |reader| async move {
                let mut reader = reader?;
                let mut buf = BytesMut::with_capacity(CHUNK_LEN);
                match reader.read_buf(&mut buf).await {
                    Ok(0) => None,
                    Ok(_) => Some((Ok(buf.freeze()), Some(reader))),
                    Err(err) => Some((
                        Err(Error::transport(format!(
                            "reading the stream failed: {err}"
                        ))),
                        None,
                    )),
                }
            },
        ))
    }

    /// A stream with no bytes.
    pub fn empty() -> Self {
        Self::from_bytes(Bytes::new())
    }

    /// Declares the stream's length in bytes (a gateway sends it as `Content-Length`).
    pub fn with_len(mut self, len: u64) -> Self {
        self.len = Some(len);
        self
    }

    /// Declares the stream's content type (a gateway sends it as `Content-Type`).
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// The declared length, if any.
    pub fn len(&self) -> Option<u64> {
        self.len
    }

    /// Whether the stream is declared empty.
    pub fn is_empty(&self) -> bool {
        self.len == Some(0)
    }

    /// The declared content type, if any.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// Reads the whole stream into memory; fails (422) beyond `limit` bytes.
    pub async fn collect(mut self, limit: usize) -> Result<Bytes> {
        let mut all = BytesMut::new();
        while let Some(chunk) = self.next().await {
            let chunk = chunk?;
            if all.len() + chunk.len() > limit {
                return Err(Error::validation(format!(
                    "the stream is longer than {limit} bytes"
                )));
            }
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }

    /// The stream as an [`AsyncRead`], for `tokio::io::copy` into a file or a decoder that reads.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use tokio::io::AsyncReadExt;
    ///
    /// let mut reader = phalanx::ByteStream::from_bytes(&b"hello"[..]).into_async_read();
    /// let mut text = String::new();
    /// reader.read_to_string(&mut text).await?;
    /// assert_eq!(text, "hello");
    /// # Ok(()) }
    /// ```
    pub fn into_async_read(self) -> impl AsyncRead + Send + Unpin {
        StreamReader {
            stream: self,
            current: Bytes::new(),
        }
    }

    /// The length and content type, as they travel beside the stream.
    pub(crate) fn info(&self) -> StreamInfo {
        StreamInfo {
            len: self.len,
            content_type: self.content_type.clone(),
        }
    }

    /// A stream of `chunks` with the length and type `header` declares.
    pub(crate) fn with_info(
        chunks: impl Stream<Item = Result<Bytes>> + Send + 'static,
        info: StreamInfo,
    ) -> Self {
        Self {
            chunks: Box::pin(chunks),
            len: info.len,
            content_type: info.content_type,
        }
    }
}

impl Stream for ByteStream {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.as_mut().poll_next(cx)
    }
}

/// [`ByteStream::into_async_read`]: the chunk being read out, then the next.
struct StreamReader {
    stream: ByteStream,
    current: Bytes,
}

impl AsyncRead for StreamReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.current.is_empty() {
            match self.stream.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
                Poll::Ready(Some(Err(err))) => return Poll::Ready(Err(std::io::Error::other(err))),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// A stream is not a value: it travels beside the params and results, never inside them.
impl serde::Serialize for ByteStream {
    fn serialize<S: serde::Serializer>(&self, _: S) -> std::result::Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "a byte stream is not a value: this action answers a stream (call it with call::<ByteStream>)",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for ByteStream {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "the action did not answer a stream",
        ))
    }
}

/// A stream handed from a call to the attempt that sends it: the first attempt takes it.
#[derive(Clone, Default)]
pub(crate) struct StreamSlot(Option<Arc<Mutex<Option<ByteStream>>>>);

impl fmt::Debug for StreamSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "StreamSlot(Some)"
        } else {
            "StreamSlot(None)"
        })
    }
}

impl StreamSlot {
    pub(crate) fn new(stream: ByteStream) -> Self {
        Self(Some(Arc::new(Mutex::new(Some(stream)))))
    }

    /// Whether a stream was put here and has been taken.
    pub(crate) fn is_spent(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|slot| slot.lock().expect("stream slot").is_none())
    }

    /// Takes the stream, if nobody has.
    pub(crate) fn take(&self) -> Option<ByteStream> {
        self.0
            .as_ref()
            .and_then(|slot| slot.lock().expect("stream slot").take())
    }
}
