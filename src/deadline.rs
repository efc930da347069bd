//! Deadlines: how a call's deadline is set, how it travels, and how it is enforced.
//!
//! A call's deadline is the sooner of its own timeout and the one it inherits from the handler
//! that made it. It travels as the time remaining (clocks of two nodes are not compared), and
//! the receiving node turns it back into a deadline of its own clock when the request arrives;
//! work whose time is already up never starts. Enforcing it costs nothing when the work
//! finishes at once ([`LazyDeadline`]).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

/// The deadline of a call made at `started`: its own `timeout`, or the `inherited` deadline of
/// the handler that makes it, whichever comes first.
pub(crate) fn of_call(
    started: Instant,
    timeout: Option<Duration>,
    inherited: Option<Instant>,
) -> Option<Instant> {
    let own = timeout.map(|t| started + t);
    match (own, inherited) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What travels with a request: the milliseconds left before `deadline` (at least 1 while any
/// time is left, so a sub-millisecond remainder does not read as "expired").
pub(crate) fn remaining_ms(deadline: Option<Instant>) -> Option<u64> {
    deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        match left.as_millis() as u64 {
            0 if !left.is_zero() => 1,
            ms => ms,
        }
    })
}

/// The deadline of a request that arrived at `arrived` with `remaining_ms` left; `Err` when its
/// time was already up.
pub(crate) fn of_arrival(
    arrived: Instant,
    remaining_ms: Option<u64>,
) -> Result<Option<Instant>, Elapsed> {
    match remaining_ms {
        Some(0) => Err(Elapsed),
        Some(ms) => Ok(Some(arrived + Duration::from_millis(ms))),
        None => Ok(None),
    }
}

/// A deadline whose timer is armed only if the work does not finish on its first poll: most
/// local handlers complete at once and never pay for a timer. Without a deadline, the work alone.
pub(crate) struct LazyDeadline<F> {
    work: F,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> LazyDeadline<F> {
    pub(crate) fn new(work: F, deadline: Option<Instant>) -> Self {
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
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    }
}

/// A deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test(start_paused = true)]
    async fn the_sooner_deadline_wins_and_travels_as_time_left() {
        let now = Instant::now();
        let inherited = now + Duration::from_millis(50);
        assert_eq!(
            of_call(now, Some(Duration::from_secs(1)), Some(inherited)),
            Some(inherited)
        );
        assert_eq!(
            of_call(now, Some(Duration::from_millis(10)), Some(inherited)),
            Some(now + Duration::from_millis(10))
        );
        assert_eq!(of_call(now, None, None), None);
        assert_eq!(remaining_ms(Some(inherited)), Some(50));
        assert_eq!(
            remaining_ms(Some(now + Duration::from_micros(300))),
            Some(1)
        );
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(remaining_ms(Some(inherited)), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_time_is_up_never_starts() {
        let now = Instant::now();
        assert_eq!(of_arrival(now, Some(0)), Err(Elapsed));
        assert_eq!(
            of_arrival(now, Some(5)),
            Ok(Some(now + Duration::from_millis(5)))
        );
        assert_eq!(of_arrival(now, None), Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_finishes_at_once_needs_no_timer() {
        let done = LazyDeadline::new(std::future::ready(7), Some(Instant::now())).await;
        assert_eq!(done, Ok(7));
        let never = LazyDeadline::new(std::future::pending::<()>(), Some(Instant::now()));
        assert_eq!(never.await, Err(Elapsed));
        let mut unbounded = LazyDeadline::new(std::future::pending::<()>(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(
            (&mut unbounded).now_or_never().is_none(),
            "no deadline, no end"
        );
        assert!(unbounded.timer.is_none());
    }
}
