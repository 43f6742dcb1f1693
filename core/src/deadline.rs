//! [`within`]: a future bounded by a deadline whose timer is made only if the future waits.
//!
//! Most calls with a deadline are answered on their first poll in process (and a handler that
//! does not wait completes on its first poll everywhere). `tokio::time::timeout_at` builds its
//! timer entry up front (a runtime handle, a clock entry), which such a call pays for nothing;
//! here the timer comes into being at the first poll that finds the future still waiting.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// The deadline passed before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// `future`, or [`Elapsed`] once `deadline` has passed; see the module.
pub(crate) fn within<F: Future + Unpin>(deadline: Instant, future: F) -> Within<F> {
    Within {
        future,
        deadline,
        timer: None,
    }
}

/// The future [`within`] returns.
#[derive(Debug)]
pub(crate) struct Within<F> {
    future: F,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F: Future + Unpin> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(output) = Pin::new(&mut this.future).poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_ready_future_needs_no_timer_and_a_waiting_one_times_out() {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut ready = within(deadline, std::future::ready(7));
        assert_eq!((&mut ready).await, Ok(7));
        assert!(ready.timer.is_none(), "a timer was made for a ready future");

        let never = within(deadline, std::future::pending::<()>());
        assert_eq!(never.await, Err(Elapsed));
        assert!(Instant::now() >= deadline);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let answered = within(Instant::now() + Duration::from_secs(1), rx);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(5);
        });
        assert_eq!(answered.await.map(Result::ok), Ok(Some(5)));
    }
}
