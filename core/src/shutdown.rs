//! A server's life: serving, then shutting down gracefully ([`Server::shutdown`]).
//!
//! [`Server::shutdown`]: crate::Server::shutdown

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{watch, Notify};

use crate::engine::Shared;
use crate::sync::lock;

/// What every connection of one server shares about its life: the handlers running, the
/// links open, and whether it is stopping.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    running: AtomicUsize,
    idle: Notify,
    /// How many wait in [`Lifecycle::idle`]: the last handler to end wakes them only if some
    /// do, so that the common case (nobody waits) costs no lock per call.
    idle_waiters: AtomicUsize,
    stopping: watch::Sender<bool>,
    links: Mutex<Vec<Weak<Shared>>>,
    closed: AtomicBool,
}

impl Lifecycle {
    pub(crate) fn new() -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            idle_waiters: AtomicUsize::new(0),
            stopping: watch::channel(false).0,
            links: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// Whether the server is shutting down.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    /// Resolves once the server starts shutting down: listeners stop accepting.
    pub(crate) async fn stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        // The sender lives as long as `self`, so this ends only when stopping.
        let _ = stopping.wait_for(|s| *s).await;
    }

    /// Begins the shutdown: listeners stop, and from now on no handler starts.
    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A handler of this server started.
    pub(crate) fn handler_started(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// A handler of this server ended, however it ended.
    pub(crate) fn handler_ended(&self) {
        // SeqCst against `idle`: either this sees its waiter, or it sees no handler running.
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1
            && self.idle_waiters.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }

    /// Handlers running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Resolves when no handler runs.
    pub(crate) async fn idle(&self) {
        /// Counts this waiter among `idle_waiters` for as long as it waits.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.idle_waiters);
        loop {
            let changed = self.idle.notified();
            if self.running() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Counts `link` among the server's connections, to close at the end of a shutdown.
    /// False if the shutdown has closed them already: the caller closes it.
    pub(crate) fn track(&self, link: &Arc<Shared>) -> bool {
        let mut links = lock(&self.links);
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        // Dead entries go whenever the list doubles, so it stays within twice the open links.
        if links.len() >= 64 && links.len().is_power_of_two() {
            links.retain(|l| l.strong_count() > 0);
        }
        links.push(Arc::downgrade(link));
        true
    }

    /// How many of the server's connections are open now.
    pub(crate) fn open_links(&self) -> usize {
        lock(&self.links)
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|l| !l.is_closed())
            .count()
    }

    /// Closes every connection of the server with a goodbye (the client then knows the
    /// server ended its session rather than lost the link), and any connection that
    /// completes its handshake later without one.
    pub(crate) async fn close_all(&self) {
        let links = {
            let mut links = lock(&self.links);
            self.closed.store(true, Ordering::SeqCst);
            std::mem::take(&mut *links)
        };
        let links: Vec<_> = links.iter().filter_map(Weak::upgrade).collect();
        futures::future::join_all(links.iter().map(|l| l.say_goodbye())).await;
    }
}

/// What [`Server::shutdown`](crate::Server::shutdown) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Handlers running when the shutdown began.
    pub running: usize,
    /// Handlers still running when the grace period ended, and so cancelled.
    pub cancelled: usize,
}
