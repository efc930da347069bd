//! The answer to a request: what [`Transporter::request`](super::Transporter::request) hands
//! back once the request is on its way. The broker fills it when the RESPONSE arrives, or fails
//! it when the node is lost; a transport may look whether it is already there.
//!
//! The slot an answer is left in is shared by two threads, so it lives on the heap; a reply
//! that took its answer hands its slot to a small per-thread pool when the broker's end has
//! let go of it too, and the next request of that thread reuses it: a remote call allocates
//! no slot once its thread has made a few.

use crate::error::{Error, Result};
use crate::protocol::packet::Response;
use futures_util::task::AtomicWaker;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Most answered slots a thread keeps for reuse: about the calls it has in flight at once.
const POOLED_SLOTS: usize = 64;

thread_local! {
    /// Answered slots nobody else holds, emptied, for this thread's next requests.
    static FREE_SLOTS: RefCell<Vec<Arc<Slot>>> = const { RefCell::new(Vec::new()) };
}

/// Where the answer to one request is left: shared by its [`ReplySender`] and its
/// [`PendingReply`], so the reply stays two words however large a response is, and whether it
/// arrived is one atomic load.
#[derive(Debug, Default)]
struct Slot {
    answer: Mutex<Option<Result<Response>>>,
    /// Set once `answer` holds the answer (release; read with acquire).
    filled: AtomicBool,
    waiter: AtomicWaker,
}

/// The broker's end: fills a [`PendingReply`]. Dropped unsent, the reply fails as abandoned.
#[derive(Debug)]
pub(crate) struct ReplySender(Option<Arc<Slot>>);

impl ReplySender {
    /// Hands `answer` to the waiting reply.
    pub(crate) fn send(mut self, answer: Result<Response>) {
        if let Some(slot) = self.0.take() {
            fill(&slot, answer);
        }
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            fill(&slot, Err(abandoned()));
        }
    }
}

impl Slot {
    /// An empty slot: one from this thread's pool if it has one (a thread that is exiting has
    /// none: its pool may already be gone).
    fn take_free() -> Arc<Slot> {
        FREE_SLOTS
            .try_with(|free| free.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Empties `slot` and keeps it for this thread's next request, if nobody else holds it
    /// and the pool has room; otherwise it is simply dropped.
    fn recycle(mut slot: Arc<Slot>) {
        let Some(unshared) = Arc::get_mut(&mut slot) else {
            return;
        };
        *unshared = Slot::default();
        // A reply dropped while its thread exits (a task torn down with its runtime) finds the
        // pool gone: its slot is simply dropped.
        let _ = FREE_SLOTS.try_with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < POOLED_SLOTS {
                free.push(slot);
            }
        });
    }
}

fn fill(slot: &Slot, answer: Result<Response>) {
    *slot.answer.lock().expect("reply slot lock") = Some(answer);
    slot.filled.store(true, Ordering::Release);
    slot.waiter.wake();
}

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
/// assert_eq!(reply.count_in(&waiting), 1);
/// assert_eq!(waiting.load(Ordering::Relaxed), 1);
/// assert!(reply.is_ready());
/// assert!(reply.await.is_err());                 // nobody will answer
/// assert_eq!(waiting.load(Ordering::Relaxed), 0);
/// # }
/// ```
#[derive(Debug)]
pub struct PendingReply {
    /// Until the answer is taken out of it.
    slot: Option<Arc<Slot>>,
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
        let slot = Slot::take_free();
        let reply = Self {
            slot: Some(slot.clone()),
            counted: None,
        };
        (ReplySender(Some(slot)), reply)
    }

    /// A reply nobody will give (for tests of transports outside a broker).
    pub fn abandoned() -> Self {
        let (sender, reply) = Self::channel();
        drop(sender);
        reply
    }

    /// Counts this request in `waiting` until its reply is taken or it is dropped; returns how
    /// many requests `waiting` counts now, this one included. A request counted there already
    /// (a `try_request` that fell back to `request`) is not counted twice.
    pub fn count_in(&mut self, waiting: &Arc<AtomicUsize>) -> usize {
        if let Some(Counted(counted)) = &self.counted
            && Arc::ptr_eq(counted, waiting)
        {
            return waiting.load(Ordering::Acquire);
        }
        let now = waiting.fetch_add(1, Ordering::AcqRel) + 1;
        self.counted = Some(Counted(waiting.clone()));
        now
    }

    /// Whether the answer (or the failure) is already here; never waits.
    pub fn is_ready(&mut self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|slot| slot.filled.load(Ordering::Acquire))
    }
}

impl Future for PendingReply {
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(Err(abandoned()));
        };
        if !slot.filled.load(Ordering::Acquire) {
            slot.waiter.register(cx.waker());
            // Filled between the first look and the registration: its wake may have missed us.
            if !slot.filled.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let answer = slot
            .answer
            .lock()
            .expect("reply slot lock")
            .take()
            .unwrap_or_else(|| Err(abandoned()));
        if let Some(slot) = self.slot.take() {
            Slot::recycle(slot);
        }
        self.counted = None;
        Poll::Ready(answer)
    }
}

fn abandoned() -> Error {
    Error::rejected("the call was abandoned before its answer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::packet::Response;

    fn answer(id: u64) -> Result<Response> {
        Ok(Response {
            id,
            ..Response::default()
        })
    }

    #[tokio::test]
    async fn an_answer_reaches_its_reply_before_or_after_it_waits() {
        // Before: already there, no waiting.
        let (sender, mut reply) = PendingReply::channel();
        assert!(!reply.is_ready());
        sender.send(answer(1));
        assert!(reply.is_ready());
        assert_eq!(reply.await.unwrap().id, 1);
        // After: the waiting task is woken from another thread.
        let (sender, reply) = PendingReply::channel();
        let waiter = tokio::spawn(reply);
        tokio::task::yield_now().await;
        std::thread::spawn(move || sender.send(answer(2)));
        assert_eq!(waiter.await.unwrap().unwrap().id, 2);
    }

    #[test]
    fn a_request_is_counted_once_in_flight_however_often_it_is_counted_in() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let (_sender, mut first) = PendingReply::channel();
        assert_eq!(first.count_in(&waiting), 1);
        assert_eq!(first.count_in(&waiting), 1, "counted in again: still one");
        let (_sender, mut second) = PendingReply::channel();
        assert_eq!(second.count_in(&waiting), 2);
        let elsewhere = Arc::new(AtomicUsize::new(0));
        assert_eq!(second.count_in(&elsewhere), 1, "moved to another count");
        assert_eq!(waiting.load(Ordering::Acquire), 1);
        drop((first, second));
        assert_eq!(waiting.load(Ordering::Acquire), 0);
        assert_eq!(elsewhere.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn an_answered_slot_is_reused_by_the_next_request_and_starts_empty() {
        let (sender, reply) = PendingReply::channel();
        let first = Arc::as_ptr(reply.slot.as_ref().expect("slot"));
        sender.send(answer(1));
        assert_eq!(reply.await.unwrap().id, 1);
        let (sender, mut reply) = PendingReply::channel();
        assert_eq!(Arc::as_ptr(reply.slot.as_ref().expect("slot")), first);
        assert!(!reply.is_ready(), "a reused slot holds no old answer");
        sender.send(answer(2));
        assert_eq!(reply.await.unwrap().id, 2);
        // A slot the broker's end still holds is not reused.
        let (sender, reply) = PendingReply::channel();
        let held = reply.slot.clone().expect("slot");
        sender.send(answer(3));
        assert_eq!(reply.await.unwrap().id, 3);
        let (_sender, reply) = PendingReply::channel();
        assert!(!Arc::ptr_eq(reply.slot.as_ref().expect("slot"), &held));
    }

    #[tokio::test]
    async fn a_sender_dropped_unsent_fails_the_reply_and_counts_end() {
        let waiting = Arc::new(AtomicUsize::new(0));
        let (sender, mut reply) = PendingReply::channel();
        reply.count_in(&waiting);
        drop(sender);
        assert!(reply.is_ready());
        let err = reply.await.unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert_eq!(waiting.load(Ordering::Acquire), 0);
    }
}
