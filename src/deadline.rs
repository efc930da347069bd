//! Deadlines that cost nothing when the work finishes at once.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use tokio::time::Instant;

/// A deadline whose timer is armed only if the work does not finish on its first poll: most
/// local handlers complete at once and never pay for a timer.
pub(crate) struct LazyDeadline<F> {
    work: F,
    deadline: Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> LazyDeadline<F> {
    pub(crate) fn new(work: F, deadline: Instant) -> Self {
        Self {
            work,
            deadline,
            timer: None,
        }
    }
}

impl<F: Future + Unpin> Future for LazyDeadline<F> {
    type Output = std::result::Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = Pin::new(&mut self.work).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

/// The deadline of a [`LazyDeadline`] passed.
pub(crate) struct Elapsed;
