//! Byte streams between nodes: chunks with credits, over whatever link the call took.
//!
//! A call has up to two streams, both named by the caller's request id: its params' (the caller
//! produces, the callee reads) and its result's (the callee produces, the caller reads). The
//! reader grants credit — [`WINDOW`] chunks at first, more as it reads — and the producer sends a
//! chunk only for a credit, so at most `WINDOW` chunks of [`CHUNK_LEN`] bytes are on their way or
//! waiting per stream, whatever its size and however slow the reader. A producer's failure, a
//! reader that drops its stream, a deadline or a lost peer ends the stream on both sides at once.
//!
//! What a peer sends is checked: chunks in sequence, no larger than `CHUNK_LEN`, never beyond the
//! credit granted (a producer that overruns its window has its stream failed); at most
//! [`Limits::max_peer_streams`](crate::limits::Limits::max_peer_streams) streams read from one
//! peer at once; packets for streams that do not exist are dropped.

use super::{Broker, WeakBroker};
use crate::error::{Error, ErrorKind, Result};
use crate::limits::Limit;
use crate::protocol::packet::{
    Packet, PacketBody, StreamChunk, StreamCredit, StreamEnd, StreamError, StreamInfo,
};
use crate::stream::{ByteStream, CHUNK_LEN, WINDOW};
use crate::transport::{LinkKind, Transporter};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use rustc_hash::FxHashMap as HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

/// How long a producer waits for credit before it gives up on a reader that stopped reading.
const CREDIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Credit is returned once this many chunks have been read.
const CREDIT_BATCH: u32 = WINDOW / 4;

/// One stream of one call, from this node's side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    peer: Arc<str>,
    id: u64,
    /// The params' stream (else the result's).
    params: bool,
    /// This node made the call.
    we_call: bool,
}

enum Entry {
    /// This node reads the stream: chunks go to the reader.
    Reading {
        chunks: mpsc::Sender<Result<Bytes>>,
        next_seq: u64,
    },
    /// This node produces the stream: credit comes back.
    Writing { credit: Arc<Semaphore> },
}

/// The streams this node is reading or producing with its peers.
#[derive(Default)]
pub(crate) struct OpenStreams(Mutex<HashMap<Key, Entry>>);

impl std::fmt::Debug for OpenStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.0.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("OpenStreams").field("open", &open).finish()
    }
}

impl OpenStreams {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.0.lock().expect("streams lock")
    }

    /// Fails and forgets every stream with `peer`.
    pub(crate) fn peer_lost(&self, peer: &str, error: &Error) {
        self.table().retain(|key, entry| {
            if &*key.peer != peer {
                return true;
            }
            match entry {
                Entry::Reading { chunks, .. } => {
                    let _ = chunks.try_send(Err(error.clone()));
                }
                Entry::Writing { credit } => credit.close(),
            }
            false
        });
    }
}

/// The link a stream's packets take, and who is at each end.
#[derive(Clone)]
struct Route {
    transport: Arc<dyn Transporter>,
    this_node: Arc<str>,
    key: Key,
}

impl Route {
    async fn send(&self, body: PacketBody) -> Result<()> {
        let packet = Packet::new(self.this_node.clone(), body);
        self.transport.send(&self.key.peer, &packet).await
    }

    /// Sends without waiting (credit and cancellations are sent from `poll` and `drop`).
    fn send_soon(&self, body: PacketBody) {
        let route = self.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(err) = route.send(body).await {
                    tracing::debug!(peer = %route.key.peer, %err, "stream control packet not sent");
                }
            });
        }
    }
}

impl Broker {
    fn route(
        &self,
        peer: &Arc<str>,
        link: LinkKind,
        id: u64,
        params: bool,
        we_call: bool,
    ) -> Result<Route> {
        let transport = self
            .transport_of(link)
            .ok_or_else(|| Error::transport(format!("no transport for link kind {link}")))?;
        Ok(Route {
            transport,
            this_node: self.inner.node_id.clone(),
            key: Key {
                peer: peer.clone(),
                id,
                params,
                we_call,
            },
        })
    }

    /// Opens a stream this node reads — the params of a call it serves (`we_call: false`) or
    /// the result of a call it made (`we_call: true`) — and grants its first credit.
    pub(crate) fn read_stream(
        &self,
        peer: &Arc<str>,
        link: LinkKind,
        id: u64,
        we_call: bool,
        info: StreamInfo,
        deadline: Option<Instant>,
    ) -> Result<ByteStream> {
        let route = self.route(peer, link, id, !we_call, we_call)?;
        // One slot more than the window: a failure always fits behind a full window.
        let (sender, receiver) = mpsc::channel(WINDOW as usize + 1);
        {
            let mut table = self.inner.streams.table();
            let reading = table
                .iter()
                .filter(|(k, e)| k.peer == *peer && matches!(e, Entry::Reading { .. }))
                .count();
            if reading >= self.inner.limits.max_peer_streams {
                self.inner.metrics.limit_hit(
                    Limit::PeerStreams,
                    format_args!("a stream from '{peer}' refused: too many open"),
                );
                return Err(Error::new(
                    ErrorKind::QueueFull,
                    format!(
                        "node '{}' reads too many streams from '{peer}'",
                        self.inner.node_id
                    ),
                ));
            }
            table.insert(
                route.key.clone(),
                Entry::Reading {
                    chunks: sender,
                    next_seq: 0,
                },
            );
        }
        route.send_soon(PacketBody::StreamCredit(StreamCredit {
            id,
            params: route.key.params,
            chunks: WINDOW,
        }));
        let reader = Reader {
            chunks: receiver,
            unreported: 0,
            route,
            broker: self.downgrade(),
            finished: false,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        };
        Ok(ByteStream::with_info(reader, info))
    }

    /// Starts producing `stream` to `peer`: the params of a call this node makes
    /// (`we_call: true`) or the result of a call it serves. Chunks leave as credit arrives.
    pub(crate) fn write_stream(
        &self,
        peer: &Arc<str>,
        link: LinkKind,
        id: u64,
        we_call: bool,
        stream: ByteStream,
    ) -> Result<()> {
        let route = self.route(peer, link, id, we_call, we_call)?;
        let credit = Arc::new(Semaphore::new(0));
        self.inner.streams.table().insert(
            route.key.clone(),
            Entry::Writing {
                credit: credit.clone(),
            },
        );
        let broker = self.downgrade();
        tokio::spawn(async move {
            let outcome = pump(&route, stream, &credit).await;
            if let Some(broker) = broker.upgrade() {
                broker.inner.streams.table().remove(&route.key);
            }
            if let Err(err) = outcome {
                tracing::debug!(peer = %route.key.peer, id = route.key.id, %err, "stream stopped");
            }
        });
        Ok(())
    }

    /// Stops producing a stream (its call failed).
    pub(crate) fn cancel_stream(&self, peer: &Arc<str>, id: u64, params: bool, we_call: bool) {
        let key = Key {
            peer: peer.clone(),
            id,
            params,
            we_call,
        };
        if let Some(Entry::Writing { credit }) = self.inner.streams.table().remove(&key) {
            credit.close();
        }
    }

    /// A stream packet from `sender`.
    pub(crate) fn on_stream_packet(&self, sender: &Arc<str>, body: PacketBody) {
        let streams = &self.inner.streams;
        match body {
            PacketBody::StreamChunk(StreamChunk {
                id,
                params,
                seq,
                data,
            }) => {
                let key = reading_key(sender, id, params);
                let mut table = streams.table();
                let Some(Entry::Reading { chunks, next_seq }) = table.get_mut(&key) else {
                    return tracing::debug!(peer = %sender, id, "chunk of no open stream dropped");
                };
                let fault = if seq != *next_seq {
                    Some(format!("chunk {seq} came when {next_seq} was due"))
                } else if data.len() > CHUNK_LEN {
                    Some(format!(
                        "a chunk of {} bytes (at most {CHUNK_LEN})",
                        data.len()
                    ))
                } else if chunks.capacity() <= 1 {
                    // The last slot is kept for a failure: the producer overran its credit.
                    Some("more chunks than the credit granted".to_owned())
                } else {
                    *next_seq += 1;
                    let _ = chunks.try_send(Ok(data));
                    None
                };
                if let Some(fault) = fault {
                    let error = Error::protocol(format!("stream from '{sender}' broke: {fault}"));
                    let _ = chunks.try_send(Err(error.clone()));
                    table.remove(&key);
                    drop(table);
                    self.inner.metrics.limit_hit(
                        Limit::PeerStreams,
                        format_args!("a stream from '{sender}' failed: {fault}"),
                    );
                }
            }
            PacketBody::StreamEnd(StreamEnd { id, params, seq }) => {
                let key = reading_key(sender, id, params);
                let mut table = streams.table();
                if let Some(Entry::Reading { chunks, next_seq }) = table.remove(&key)
                    && seq != next_seq
                {
                    let _ = chunks.try_send(Err(Error::protocol(format!(
                        "stream from '{sender}' ended after {seq} chunks; {next_seq} arrived"
                    ))));
                }
            }
            PacketBody::StreamCredit(StreamCredit { id, params, chunks }) => {
                let key = Key {
                    peer: sender.clone(),
                    id,
                    params,
                    we_call: params,
                };
                if let Some(Entry::Writing { credit }) = streams.table().get(&key) {
                    // Never more than a window ahead, whatever the reader claims.
                    let room = (WINDOW as usize).saturating_sub(credit.available_permits());
                    credit.add_permits((chunks as usize).min(room));
                }
            }
            PacketBody::StreamError(StreamError {
                id,
                params,
                from_caller,
                error,
            }) => {
                let key = Key {
                    peer: sender.clone(),
                    id,
                    params,
                    we_call: !from_caller,
                };
                match streams.table().remove(&key) {
                    Some(Entry::Reading { chunks, .. }) => {
                        let _ = chunks.try_send(Err(Error::from_peer(error).with_node(sender)));
                    }
                    Some(Entry::Writing { credit }) => credit.close(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The key of a stream this node reads, from a producer's packet.
fn reading_key(sender: &Arc<str>, id: u64, params: bool) -> Key {
    Key {
        peer: sender.clone(),
        id,
        params,
        // The callee reads the params' stream; the caller reads the result's.
        we_call: !params,
    }
}

/// Sends `stream` chunk by chunk as credit comes; the end or the failure last.
async fn pump(route: &Route, mut stream: ByteStream, credit: &Semaphore) -> Result<()> {
    let key = &route.key;
    let mut seq = 0;
    while let Some(next) = stream.next().await {
        let mut data = match next {
            Ok(data) => data,
            Err(error) => {
                let failed = StreamError {
                    id: key.id,
                    params: key.params,
                    from_caller: key.we_call,
                    error: error.body().clone(),
                };
                return route.send(PacketBody::StreamError(failed)).await;
            }
        };
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(CHUNK_LEN));
            match tokio::time::timeout(CREDIT_TIMEOUT, credit.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                // The reader cancelled, or the call failed: drop the producer.
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    let error = Error::timeout("stream")
                        .with_type("STREAM_STALLED")
                        .body()
                        .clone();
                    let failed = StreamError {
                        id: key.id,
                        params: key.params,
                        from_caller: key.we_call,
                        error,
                    };
                    return route.send(PacketBody::StreamError(failed)).await;
                }
            }
            let chunk = StreamChunk {
                id: key.id,
                params: key.params,
                seq,
                data: piece,
            };
            route.send(PacketBody::StreamChunk(chunk)).await?;
            seq += 1;
        }
    }
    let end = StreamEnd {
        id: key.id,
        params: key.params,
        seq,
    };
    route.send(PacketBody::StreamEnd(end)).await
}

/// The reading end of a stream from a peer: returns credit as it reads; cancels the producer
/// when dropped before the end.
struct Reader {
    chunks: mpsc::Receiver<Result<Bytes>>,
    /// Chunks read since credit was last returned.
    unreported: u32,
    route: Route,
    broker: WeakBroker,
    finished: bool,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Stream for Reader {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.finished = true;
            self.cancel("the call's deadline passed");
            return Poll::Ready(Some(Err(Error::timeout("stream"))));
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.unreported += 1;
                if self.unreported >= CREDIT_BATCH {
                    let chunks = std::mem::take(&mut self.unreported);
                    let key = &self.route.key;
                    let credit = StreamCredit {
                        id: key.id,
                        params: key.params,
                        chunks,
                    };
                    self.route.send_soon(PacketBody::StreamCredit(credit));
                }
                Poll::Ready(Some(Ok(data)))
            }
            Poll::Ready(Some(Err(err))) => {
                self.finished = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Reader {
    /// Forgets the stream here and tells the producer to stop.
    fn cancel(&self, why: &str) {
        let key = &self.route.key;
        if let Some(broker) = self.broker.upgrade() {
            broker.inner.streams.table().remove(key);
        }
        let error = Error::new(ErrorKind::Rejected, format!("the reader stopped: {why}"))
            .with_type("STREAM_CANCELLED");
        self.route.send_soon(PacketBody::StreamError(StreamError {
            id: key.id,
            params: key.params,
            from_caller: key.we_call,
            error: error.body().clone(),
        }));
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Closed by the producer (end, failure) or by this node (peer lost): nothing to tell.
        if !self.finished && !self.chunks.is_closed() {
            self.cancel("it dropped the stream");
        }
    }
}
