//! One end of a connection's segment: its sending ring's producer and doorbell, the socket
//! that tells each side the other is gone, and what senders waiting for room wait on. The
//! link (`link.rs`) sends through it and its reader (`reader.rs`) frees room through it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::TransportError;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::ring::{Gauge, Producer};
use crate::sys::{self, Mapping};

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A ring the peer broke, as the transport reports it.
pub(crate) fn corrupt(e: crate::ring::Corrupt) -> TransportError {
    TransportError::Other(e.to_string())
}

/// One end of a connection's segment.
pub(crate) struct End {
    map: Arc<Mapping>,
    pub(crate) producer: Arc<tokio::sync::Mutex<Producer>>,
    pub(crate) peer_bell: OwnedFd,
    pub(crate) socket: Arc<UnixStream>,
    /// Set by a sender waiting for room in the sending ring; the receiving task, woken by
    /// the peer when it frees room, passes the news on through `room`.
    wants_room: AtomicBool,
    room: Notify,
    /// Set when the receiving task has stopped (the peer left, or broke the rules): senders
    /// waiting for room give up instead of waiting for a reader that is gone.
    closed: AtomicBool,
    /// Set when this side closes the link: the receiving task stops at its next look, even
    /// one that never waits on the socket (a polling one).
    pub(crate) closing: AtomicBool,
    /// Read-only views of the sending and the receiving ring, for [`crate::report`].
    gauges: [Gauge; 2],
    /// Which end this is: "client" or "server".
    role: &'static str,
}

impl std::fmt::Debug for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink")
            .field("segment_bytes", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl End {
    pub(crate) fn new(
        map: Arc<Mapping>,
        producer: Producer,
        peer_bell: OwnedFd,
        socket: UnixStream,
        gauges: [Gauge; 2],
        role: &'static str,
    ) -> End {
        End {
            map,
            producer: Arc::new(tokio::sync::Mutex::new(producer)),
            peer_bell,
            socket: Arc::new(socket),
            wants_room: AtomicBool::new(false),
            room: Notify::new(),
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            gauges,
            role,
        }
    }

    /// One line on this end's rings and senders: for [`crate::report`].
    pub(crate) fn describe(&self) -> String {
        let [sending, receiving] = &self.gauges;
        format!(
            "{} end: sending ring [{}], receiving ring [{}]; producer {}; a sender waits for room {}; closed {}, closing {}",
            self.role,
            sending.read(),
            receiving.read(),
            if self.producer.try_lock().is_ok() { "free" } else { "held by a sender" },
            self.wants_room.load(Ordering::SeqCst),
            self.closed.load(Ordering::Acquire),
            self.closing.load(Ordering::Acquire),
        )
    }

    /// Wakes the peer's receiver if it said it sleeps.
    pub(crate) fn wake_peer(&self, producer: &Producer) {
        if producer.consumer_sleeping() {
            sys::ring(self.peer_bell.as_raw_fd());
        }
    }

    /// Runs `attempt` on the producer until it succeeds, waiting for room in between: a few
    /// yields first, then a wake-up from the receiving task (which the peer's doorbell
    /// brings when it frees room), with a short timeout as a backstop so that a lost wake-up
    /// costs a millisecond, never a hang.
    pub(crate) async fn until_room<T>(
        &self,
        producer: &mut Producer,
        mut attempt: impl FnMut(&mut Producer) -> Result<Option<T>, crate::ring::Corrupt>,
    ) -> Result<T, TransportError> {
        let mut tries = 0u32;
        let found = loop {
            if let Some(found) = attempt(producer).map_err(corrupt)? {
                break found;
            }
            if self.closed.load(Ordering::Acquire) {
                producer.set_waiting(false);
                return Err(TransportError::Closed);
            }
            // Say that we wait, and make sure the consumer is awake to free room.
            producer.set_waiting(true);
            self.wake_peer(producer);
            tries += 1;
            if tries < 8 {
                tokio::task::yield_now().await;
                continue;
            }
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.wants_room.store(true, Ordering::SeqCst);
            // Look again now that a wake-up cannot be missed.
            if let Some(found) = attempt(producer).map_err(corrupt)? {
                break found;
            }
            if self.closed.load(Ordering::Acquire) {
                producer.set_waiting(false);
                return Err(TransportError::Closed);
            }
            let _ = tokio::time::timeout(Duration::from_millis(1), notified).await;
        };
        producer.set_waiting(false);
        Ok(found)
    }

    /// Called by the receiving task when it stops: senders waiting for room fail now.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.wants_room.store(false, Ordering::SeqCst);
        self.room.notify_waiters();
    }

    /// Called by the receiving task whenever it runs: a sender waiting for room looks again.
    pub(crate) fn room_freed(&self) {
        if self.wants_room.load(Ordering::Relaxed) && self.wants_room.swap(false, Ordering::SeqCst)
        {
            self.room.notify_waiters();
        }
    }
}
