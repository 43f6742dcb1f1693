//! Who reads a receiving ring: the link's reading task, or a caller waiting for its reply.
//!
//! LRPC's caller waits for its reply where it is, and so does a Courier caller over shared
//! memory: while its call is out it looks at the receiving ring itself, delivering what it finds
//! to the connection, its own reply among them, on its own task. A reply then reaches its
//! caller with no task woken and no thread switched; the reading task sleeps meanwhile, so
//! only the caller spins (on a machine with few cores, a third spinning thread would cost more
//! than the wake-up it saves).
//!
//! One reader at a time, in the ring's order: whoever holds [`Reading::state`] looks at the
//! ring and delivers what it pops before letting go. A frame that cannot be delivered without
//! waiting (a one-way call while the handlers are full) is left in [`State::held`] for the
//! reading task, and nobody reads past it until it is delivered.
//!
//! The doorbell protocol stays the ring's (see [`Consumer::set_sleeping`]): the peer rings only
//! when the flag says nobody looks. Spinning callers clear it; the last one to stop sets it
//! again and looks once more, so a frame published meanwhile is not left unseen, and wakes
//! the reading task for what that last look left behind.
//!
//! `models.rs` checks this hand-off with loom, step for step as `receive` and
//! [`OwnReply`] take it: change them together.

use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier::transport::{FrameSink, TrySend};
use courier::wire::FrameKind;
use tokio::sync::Notify;

use crate::end::End;
use crate::ring::Consumer;
use crate::sys;

/// The receiving ring of one link end and who may read it.
#[derive(Debug)]
pub(crate) struct Reading {
    pub(crate) state: Mutex<State>,
    /// Callers looking at the ring now.
    spinning: AtomicUsize,
    /// Set once frames go straight to the engine: callers read only from then on (before, the
    /// reading task queues frames for the handshake, in order).
    open: AtomicBool,
    /// Where frames go once open.
    pub(crate) sink: OnceLock<FrameSink>,
    /// Wakes the reading task: a caller left it a frame, or found the ring broken.
    pub(crate) wake: Notify,
    pub(crate) end: Arc<End>,
    /// What the reading task is doing, for [`crate::report`].
    phase: AtomicU8,
}

/// What a link's reading task is doing; see [`Reading::set_phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Reading and delivering, or about to.
    Reading = 0,
    /// Looking at an empty ring, without sleeping.
    Spinning = 1,
    /// Waiting for its doorbell (or a caller's nudge, or the peer's end).
    Sleeping = 2,
    /// Delivering a frame that waits for room among the handlers.
    Delivering = 3,
    /// Stopped: the link is closed.
    Stopped = 4,
}

impl Phase {
    fn name(raw: u8) -> &'static str {
        match raw {
            0 => "reading",
            1 => "spinning",
            2 => "sleeping",
            3 => "delivering a held frame",
            _ => "stopped",
        }
    }
}

/// What the reader holds.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) consumer: Consumer,
    pub(crate) stall: Stall,
    /// A frame read but not delivered yet, which only the reading task may deliver (it waits
    /// for room); nothing more is read until it has.
    pub(crate) held: Held,
    /// Why reading must stop, if a caller found out.
    pub(crate) failed: Option<&'static str>,
}

/// A frame that stops the reading until the reading task has delivered it.
#[derive(Debug, Default)]
pub(crate) enum Held {
    /// None: reading goes on.
    #[default]
    Nothing,
    /// Read, waiting for the reading task.
    Frame(Bytes),
    /// Being delivered by the reading task, outside the lock.
    Delivering,
}

impl Held {
    /// The held frame, to deliver; from then on it is being delivered.
    pub(crate) fn take(&mut self) -> Option<Bytes> {
        match std::mem::replace(self, Held::Nothing) {
            Held::Frame(frame) => {
                *self = Held::Delivering;
                Some(frame)
            }
            other => {
                *self = other;
                None
            }
        }
    }
}

/// One look at the ring.
pub(crate) enum Look {
    Frame(Bytes),
    Empty,
    Failed(&'static str),
}

/// What delivering what the ring holds came to.
pub(crate) enum Drained {
    /// The ring is empty, or a batch was delivered (so that a peer that writes without pause
    /// cannot keep the reader from its other duties); `any` says whether frames were
    /// delivered, `mine` whether the reply awaited was among them.
    Empty { any: bool, mine: bool },
    /// A frame waits in `held` for the reading task.
    Held,
    /// Nobody listens any more.
    Closed,
    /// The ring cannot be read any more, for this reason.
    Failed(&'static str),
}

impl State {
    /// Pops the next frame, if whole, keeping the peer's producer and stall watch informed.
    pub(crate) fn look(&mut self, end: &End) -> Look {
        end.room_freed();
        let popped = self.consumer.try_pop();
        if self.stall.watch(&self.consumer) {
            return Look::Failed("a frame did not arrive within the frame timeout");
        }
        if self.consumer.producer_waiting() {
            sys::ring(end.peer_bell.as_raw_fd());
        }
        match popped {
            Ok(Some(frame)) => Look::Frame(Bytes::from(frame)),
            Ok(None) => Look::Empty,
            Err(e) => {
                tracing::warn!(error = %e, "dropping a shared-memory connection");
                Look::Failed("the peer corrupted the shared segment")
            }
        }
    }

    /// Delivers what the ring holds, in order, until it is empty or a frame would wait;
    /// `reply_to` names a call whose reply the reader is looking for.
    pub(crate) fn drain(&mut self, end: &End, sink: &FrameSink, reply_to: Option<u64>) -> Drained {
        let (mut any, mut mine) = (false, false);
        for _ in 0..BATCH {
            if !matches!(self.held, Held::Nothing) {
                return Drained::Held;
            }
            let frame = match self.look(end) {
                Look::Frame(frame) => frame,
                Look::Empty => return Drained::Empty { any, mine },
                Look::Failed(reason) => return Drained::Failed(reason),
            };
            any = true;
            mine |= reply_to.is_some_and(|id| answers(&frame, id));
            match sink.try_push(frame) {
                TrySend::Sent => {}
                TrySend::Wait(frame) => {
                    self.held = Held::Frame(frame);
                    return Drained::Held;
                }
                _ => return Drained::Closed,
            }
        }
        Drained::Empty { any, mine }
    }
}

/// Frames delivered in one go at most.
const BATCH: usize = 64;

/// How long a reader looks at the ring within one turn on the runtime before it yields: long
/// enough that a reply a few microseconds away costs no round through the scheduler, short
/// enough that the other tasks of its thread wait no longer than a few microseconds more.
pub(crate) const LOOK_ROUND: Duration = Duration::from_micros(10);

/// How many callers look at the ring at once at most; see [`OwnReply`].
const MAX_LOOKERS: usize = 2;

/// Whether `frame` is the reply (or error) that ends call `id`.
fn answers(frame: &[u8], id: u64) -> bool {
    matches!(
        courier::wire::kind_of(frame),
        Some(FrameKind::Reply | FrameKind::Error)
    ) && courier::wire::call_id_of(frame) == Some(id)
}

impl Reading {
    pub(crate) fn new(consumer: Consumer, stall: Stall, end: Arc<End>) -> Arc<Reading> {
        Arc::new(Reading {
            state: Mutex::new(State {
                consumer,
                stall,
                held: Held::Nothing,
                failed: None,
            }),
            spinning: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            sink: OnceLock::new(),
            wake: Notify::new(),
            end,
            phase: AtomicU8::new(Phase::Reading as u8),
        })
    }

    /// Notes what the reading task does now (read only by [`crate::report`]).
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// One line on who reads this ring and how: for [`crate::report`].
    pub(crate) fn describe(&self) -> String {
        let state = match self.state.try_lock() {
            Ok(state) => format!(
                "free (held frame: {}, failed: {:?}, assembling: {})",
                match state.held {
                    Held::Nothing => "none",
                    Held::Frame(_) => "waiting for the reading task",
                    Held::Delivering => "being delivered",
                },
                state.failed,
                state.consumer.assembling()
            ),
            Err(TryLockError::WouldBlock) => "held by a reader".to_owned(),
            Err(TryLockError::Poisoned(_)) => "poisoned".to_owned(),
        };
        format!(
            "reading task {}; callers looking {}; open {}; reader state {}",
            Phase::name(self.phase.load(Ordering::Relaxed)),
            self.spinning.load(Ordering::SeqCst),
            self.open.load(Ordering::Acquire),
            state
        )
    }

    /// Locks the state (a holder only ever looks and delivers, briefly).
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::end::lock(&self.state)
    }

    /// From now on frames go to `sink`, and callers may read.
    pub(crate) fn open(&self, sink: FrameSink) {
        let _ = self.sink.set(sink);
        self.open.store(true, Ordering::Release);
    }

    /// Whether callers are looking at the ring now (the reading task then sleeps).
    pub(crate) fn callers_spinning(&self) -> bool {
        self.spinning.load(Ordering::SeqCst) > 0
    }

    /// A reader for the reply to the call in `frame`, looking for at most `budget` (`None`:
    /// until the reply comes); `None` if callers may not read yet.
    pub(crate) fn own_reply(
        self: &Arc<Self>,
        frame: &[u8],
        budget: Option<Duration>,
    ) -> Option<OwnReply> {
        if !self.open.load(Ordering::Acquire) {
            return None;
        }
        let call = courier::wire::call_id_of(frame)?;
        Some(OwnReply {
            reading: Arc::clone(self),
            call,
            budget,
            started: None,
            looks: 0,
            counted: false,
            cleared: false,
        })
    }
}

/// A caller's looking at the ring while its call is out: the link's `ReplyReader` over shared
/// memory. It ends when it has delivered the call's reply, when its budget is spent, when the
/// call is no longer awaited (its reply came some other way), or when the ring fails.
pub(crate) struct OwnReply {
    reading: Arc<Reading>,
    call: u64,
    budget: Option<Duration>,
    started: Option<Instant>,
    looks: u32,
    counted: bool,
    /// Whether this caller has cleared the doorbell flag yet.
    cleared: bool,
}

impl OwnReply {
    /// Stops looking: the last caller to stop hands the ring back to the doorbell.
    fn stop(&mut self) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        let reading = &self.reading;
        if reading.spinning.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let Ok(mut state) = reading.state.try_lock() else {
            // The reading task holds the ring: have it look at the flag again before it sleeps
            // (it may have seen this caller still spinning).
            reading.wake.notify_one();
            return;
        };
        state.consumer.set_sleeping(true);
        // Look once more, now that a frame published from here on rings the doorbell.
        if let Some(sink) = reading.sink.get() {
            match state.drain(&reading.end, sink, None) {
                Drained::Empty { any: false, .. } | Drained::Closed => {}
                // A drain stops after a batch: frames published before the flag was set, past
                // the batch, would wait for a doorbell that nobody rings. The reading task
                // takes the rest.
                Drained::Empty { any: true, .. } | Drained::Held => reading.wake.notify_one(),
                Drained::Failed(reason) => {
                    state.failed = Some(reason);
                    reading.wake.notify_one();
                }
            }
        }
    }
}

impl std::future::Future for OwnReply {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let reading = Arc::clone(&this.reading);
        let Some(sink) = reading.sink.get() else {
            return Poll::Ready(());
        };
        let now = Instant::now();
        let started = *this.started.get_or_insert(now);
        if !this.counted {
            this.counted = true;
            reading.spinning.fetch_add(1, Ordering::SeqCst);
        }
        this.looks = this.looks.wrapping_add(1);
        // First and now and then, ask whether the call is still awaited: its reply may have
        // come through the reading task or another caller (a reader is also polled, on a task
        // of its own, after its call has been answered).
        if this.looks % 64 == 1 && !sink.awaits(this.call) {
            this.stop();
            return Poll::Ready(());
        }
        // Look again and again for a short while before going back to the runtime: a round
        // through its scheduler costs more than a look, and the reply is usually near.
        let round_ends = now + LOOK_ROUND;
        let mut now = now;
        loop {
            match reading.state.try_lock() {
                Ok(mut state) => {
                    if state.failed.is_some() {
                        break;
                    }
                    if !this.cleared {
                        // Looking now: no need for the doorbell.
                        this.cleared = true;
                        state.consumer.set_sleeping(false);
                    }
                    match state.drain(&reading.end, sink, Some(this.call)) {
                        Drained::Empty { mine: true, .. } | Drained::Closed => {
                            drop(state);
                            this.stop();
                            return Poll::Ready(());
                        }
                        Drained::Empty { mine: false, .. } => {}
                        Drained::Held => {
                            drop(state);
                            reading.wake.notify_one();
                            break;
                        }
                        Drained::Failed(reason) => {
                            state.failed = Some(reason);
                            drop(state);
                            reading.wake.notify_one();
                            this.stop();
                            return Poll::Ready(());
                        }
                    }
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => {
                    this.stop();
                    return Poll::Ready(());
                }
            }
            now = Instant::now();
            // Only a lone caller keeps its thread: with others waiting too, the runtime's
            // turn goes round them (and to whatever else must run for their replies to come).
            if now >= round_ends
                || this
                    .budget
                    .is_some_and(|b| now.duration_since(started) >= b)
                || reading.spinning.load(Ordering::Relaxed) > 1
            {
                break;
            }
            std::hint::spin_loop();
        }
        if this
            .budget
            .is_some_and(|b| now.duration_since(started) >= b)
        {
            this.stop();
            return Poll::Ready(());
        }
        // A crowd of callers looking in turns would only take the runtime's time from the
        // work their replies wait for: past a few, the others leave it to those who look (and
        // to the reading task), which deliver their replies too.
        if reading.spinning.load(Ordering::Relaxed) > MAX_LOOKERS {
            this.stop();
            return Poll::Ready(());
        }
        // Look again after the runtime's other tasks have had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for OwnReply {
    fn drop(&mut self) {
        self.stop();
    }
}

/// When the message being assembled began to arrive: a frame the peer starts and never
/// finishes holds memory (up to the frame limit), so it gets the frame timeout.
#[derive(Debug)]
pub(crate) struct Stall {
    since: Option<tokio::time::Instant>,
    timeout: Duration,
}

impl Stall {
    pub(crate) fn new(timeout: Duration) -> Stall {
        Stall {
            since: None,
            timeout,
        }
    }

    /// Notes whether `consumer` is assembling a message; true once one has taken too long.
    pub(crate) fn watch(&mut self, consumer: &Consumer) -> bool {
        if !consumer.assembling() {
            self.since = None;
            return false;
        }
        let now = tokio::time::Instant::now();
        now.duration_since(*self.since.get_or_insert(now)) > self.timeout
    }

    /// When the message being assembled runs out of time, if one is.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.since.map(|t| t + self.timeout)
    }
}
