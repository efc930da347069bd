//! The answer to a request: what [`Transporter::request`](super::Transporter::request) hands
//! back once the request is on its way. The broker fills it when the RESPONSE arrives, or fails
//! it when the node is lost; a transport may look whether it is already there.

use crate::error::{Error, Result};
use crate::protocol::packet::Response;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::oneshot;

/// The broker's end: fills a [`PendingReply`].
pub(crate) type ReplySender = oneshot::Sender<Result<Response>>;

/// The reply to one request, as a future.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use phalanx::transport::PendingReply;
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
///
/// // A transport counts the requests of a link that wait for their answer.
/// let waiting = Arc::new(AtomicUsize::new(0));
/// let mut reply = PendingReply::abandoned();
/// reply.count_in(&waiting);
/// assert_eq!(waiting.load(Ordering::Relaxed), 1);
/// assert!(reply.is_ready());
/// assert!(reply.await.is_err());                 // nobody will answer
/// assert_eq!(waiting.load(Ordering::Relaxed), 0);
/// # }
/// ```
#[derive(Debug)]
pub struct PendingReply {
    /// Until the answer is taken out of it.
    receiver: Option<oneshot::Receiver<Result<Response>>>,
    /// An answer taken out early by [`PendingReply::is_ready`].
    ready: Option<Result<Response>>,
    counted: Option<Counted>,
}

/// One entry in a transport's count of waiting requests, removed on drop.
#[derive(Debug)]
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PendingReply {
    /// A reply and the sender the broker fills it with.
    pub(crate) fn channel() -> (ReplySender, Self) {
        let (sender, receiver) = oneshot::channel();
        let reply = Self {
            receiver: Some(receiver),
            ready: None,
            counted: None,
        };
        (sender, reply)
    }

    /// A reply nobody will give (for tests of transports outside a broker).
    pub fn abandoned() -> Self {
        Self {
            receiver: None,
            ready: Some(Err(abandoned())),
            counted: None,
        }
    }

    /// Counts this request in `waiting` until its reply is taken or it is dropped.
    pub fn count_in(&mut self, waiting: &Arc<AtomicUsize>) {
        waiting.fetch_add(1, Ordering::AcqRel);
        self.counted = Some(Counted(waiting.clone()));
    }

    /// Whether the answer (or the failure) is already here; never waits.
    pub fn is_ready(&mut self) -> bool {
        let Some(receiver) = &mut self.receiver else {
            return true;
        };
        let answer = match receiver.try_recv() {
            Ok(answer) => answer,
            Err(oneshot::error::TryRecvError::Empty) => return false,
            Err(oneshot::error::TryRecvError::Closed) => Err(abandoned()),
        };
        self.ready = Some(answer);
        self.receiver = None;
        true
    }
}

impl Future for PendingReply {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match (self.ready.take(), &mut self.receiver) {
            (Some(answer), _) => answer,
            (None, Some(receiver)) => match Pin::new(receiver).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(answer) => answer.unwrap_or_else(|_| Err(abandoned())),
            },
            (None, None) => Err(abandoned()),
        };
        self.receiver = None;
        self.counted = None;
        Poll::Ready(answer)
    }
}

fn abandoned() -> Error {
    Error::rejected("the call was abandoned before its answer")
}
