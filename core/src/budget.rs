//! [`Budget`]: an amount that takers share and give back (the bytes of running calls, a
//! listener's connections), without a lock.
//!
//! A connection's larger calls take from its own budget and from the server's, which every
//! connection of the server shares. Tokio's semaphore locks a mutex on every release; here
//! taking is a compare-and-swap and giving back an atomic subtraction, and only a taker that
//! has to wait (a one-way call, which cannot be refused) registers for a wake-up, so only then
//! does giving back touch the `Notify`.
//!
//! A budget of *places* ([`Budget::places`], every take is one: calls in flight) wakes one
//! waiter per place given back. That loses nothing: a wake-up that finds nobody registered is
//! kept for the next to register (several collapse into one), and every waiter looks at the
//! budget after registering, so it sees whatever was given back before. Waking every waiter at every release, as a budget of amounts must (the woken one
//! may need more than was freed), costs each release as many polls as there are waiters: with
//! thousands of calls queued for a place in flight, that turned a shared-memory client's
//! 10,000 concurrent calls from 0.3 s into minutes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// A limited amount that takers share.
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
    /// Takers waiting in [`Budget::take`]; givers wake them only when there are some.
    waiting: AtomicUsize,
    freed: Notify,
    closed: AtomicBool,
    /// Every take is one place: a release wakes one waiter, not all of them.
    places: bool,
}

/// An amount taken from a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Taken {
    budget: Arc<Budget>,
    amount: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        let budget = &self.budget;
        // SeqCst with the load of `waiting`, against a taker's increment of `waiting` and
        // load of `used`: either the taker sees this room, or this sees the taker.
        budget.used.fetch_sub(self.amount, Ordering::SeqCst);
        if budget.waiting.load(Ordering::SeqCst) > 0 {
            budget.wake();
        }
    }
}

impl Budget {
    /// A budget of `limit`.
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Budget::with(limit, false)
    }

    /// A budget of `limit` places, each take one of them: see the module's docs.
    pub(crate) fn places(limit: usize) -> Arc<Budget> {
        Budget::with(limit, true)
    }

    fn with(limit: usize, places: bool) -> Arc<Budget> {
        Arc::new(Budget {
            used: AtomicUsize::new(0),
            limit,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            closed: AtomicBool::new(false),
            places,
        })
    }

    /// Tells waiters that room was freed: one of them for a budget of places (a freed place
    /// fits any waiter; if nobody waits at this instant, the wake is kept for the next one),
    /// all of them otherwise.
    fn wake(&self) {
        if self.places {
            self.freed.notify_one();
        } else {
            self.freed.notify_waiters();
        }
    }

    /// Takes `amount` if that much is free now.
    pub(crate) fn try_take(self: &Arc<Self>, amount: usize) -> Option<Taken> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if self.closed.load(Ordering::Acquire) || amount > self.limit.saturating_sub(used) {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + amount,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Taken {
                        budget: Arc::clone(self),
                        amount,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `amount`, waiting until that much is free; `None` once the budget is closed, or
    /// if `amount` is more than it will ever have.
    pub(crate) async fn take(self: &Arc<Self>, amount: usize) -> Option<Taken> {
        debug_assert!(
            amount == 1 || !self.places,
            "a place is taken one at a time"
        );
        if amount > self.limit {
            return None;
        }
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let taken = self.try_take(amount);
            if taken.is_some() || self.closed.load(Ordering::Acquire) {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return taken;
            }
            freed.await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Refuses every take from now on and wakes the waiting ones; what was taken is still
    /// given back as usual.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_and_gives_back_on_drop() {
        let budget = Budget::new(10);
        let a = budget.try_take(6).expect("6 of 10");
        assert!(budget.try_take(5).is_none());
        let b = budget.try_take(4).expect("4 more");
        assert!(budget.try_take(1).is_none());
        drop(a);
        assert!(budget.try_take(6).is_some());
        drop(b);
        assert!(budget.try_take(11).is_none());
        assert!(budget.try_take(10).is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_taker_is_woken_by_what_is_given_back_or_by_the_close() {
        let budget = Budget::new(3);
        let held = budget.try_take(3).expect("all of it");
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(2).await.map(|t| t.amount) }
        });
        tokio::task::yield_now().await;
        drop(held);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert_eq!(got.expect("woken").expect("no panic"), Some(2));

        let held = budget.try_take(3).expect("all of it again");
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.take(1).await.is_none() }
        });
        tokio::task::yield_now().await;
        budget.close();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert!(
            got.expect("woken").expect("no panic"),
            "a closed budget gives nothing"
        );
        drop(held);
    }

    /// What stalled 10,000 concurrent calls over shared memory: with a thousand calls queued
    /// for a place in flight, every reply woke them all, and each woken call looked at the
    /// budget again. A place given back wakes one waiter.
    #[tokio::test]
    async fn a_place_given_back_wakes_one_waiter_not_the_crowd() {
        use futures::StreamExt;
        let budget = Budget::places(2);
        let held = [
            budget.try_take(1).expect("one"),
            budget.try_take(1).expect("two"),
        ];
        let polls = Arc::new(AtomicUsize::new(0));
        let mut waiters: futures::stream::FuturesUnordered<_> = (0..1000)
            .map(|_| {
                let (budget, polls) = (Arc::clone(&budget), Arc::clone(&polls));
                async move {
                    let mut take = std::pin::pin!(budget.take(1));
                    std::future::poll_fn(|cx| {
                        polls.fetch_add(1, Ordering::SeqCst);
                        std::future::Future::poll(take.as_mut(), cx)
                    })
                    .await
                }
            })
            .collect();
        // Every waiter registers.
        assert!(futures::poll!(waiters.next()).is_pending());
        assert_eq!(polls.swap(0, Ordering::SeqCst), 1000);
        let [first, second] = held;
        drop(first);
        let mut taken = Vec::new();
        while let std::task::Poll::Ready(Some(got)) = futures::poll!(waiters.next()) {
            taken.push(got.expect("open"));
        }
        assert_eq!(taken.len(), 1, "one place, one taker");
        assert!(polls.swap(0, Ordering::SeqCst) <= 2, "a crowd was woken");
        drop(second);
        drop(taken);
        // Two places given back: two waiters take them, and nobody else looks.
        let mut taken = Vec::new();
        while let std::task::Poll::Ready(Some(got)) = futures::poll!(waiters.next()) {
            taken.push(got.expect("open"));
        }
        assert_eq!(taken.len(), 2);
        assert!(polls.load(Ordering::SeqCst) <= 4, "a crowd was woken");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_takers_and_givers_lose_no_wake_up_even_when_some_give_up() {
        for budget in [Budget::new(4), Budget::places(4)] {
            takers_and_givers(budget).await;
        }
    }

    async fn takers_and_givers(budget: Arc<Budget>) {
        let tasks: Vec<_> = (0..64)
            .map(|task| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move {
                    let mut taken_so_far = 0;
                    while taken_so_far < 200 {
                        // A quarter of the takers give up waiting now and then (a call's
                        // deadline): a wake meant for one of them must reach another waiter.
                        let taken = if task % 4 == 0 {
                            let patience = std::time::Duration::from_micros(20);
                            match tokio::time::timeout(patience, budget.take(1)).await {
                                Ok(taken) => taken,
                                Err(_) => continue,
                            }
                        } else {
                            budget.take(1).await
                        };
                        let taken = taken.expect("open");
                        tokio::task::yield_now().await;
                        drop(taken);
                        taken_so_far += 1;
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), all).await;
        assert!(done.expect("no lost wake-up").iter().all(Result::is_ok));
        assert_eq!(budget.used.load(Ordering::SeqCst), 0);
    }
}
