//! Listener, connector and link over a shared segment.
//!
//! The server listens on a Unix socket. For each connection it reads the client's credentials
//! (`SO_PEERCRED`: they become the [`Peer`]), creates an anonymous memory file holding two rings
//! (client to server, server to client) and two eventfds (one doorbell per side), and passes the
//! three descriptors over the socket (`SCM_RIGHTS`). Both map the segment. From then on frames
//! travel through the rings; the socket carries nothing more, and its end is how each side
//! learns that the other is gone.
//!
//! Sending reserves room at the tail of the sending ring and lets the codec encode straight
//! into it, then publishes the frame with one store of the tail: the payload is copied once, by
//! the encoder. A frame that outgrows the room (more than half the ring) moves to the heap and
//! is copied into the ring in pieces instead.
//!
//! Receiving copies each frame out of the ring once, into memory of its own, before anyone
//! reads it; the codec then decodes from that copy, borrowing byte strings from it. Decoding
//! straight from the segment would save that copy but not be sound: the peer can write the
//! segment at any time, so bytes checked once (a string found to be UTF-8, a length found to
//! fit) could change before they are used.
//!
//! Each end has a receiving task. Until the handshake is done it queues frames for the
//! engine's `recv`; after, it hands each frame straight to the engine, which runs a call's
//! handler right there when it completes on its first poll and writes the reply into the other
//! ring from there (LRPC's run to completion: no queue, no hop, no task woken). A caller
//! waiting for its reply reads the ring itself meanwhile (see `reader.rs`), so its reply
//! reaches it on its own task too; the receiving task sleeps while callers read.
//!
//! How each reader waits when its ring is empty is the end's [`Wait`]: polling, spinning for a
//! while then sleeping, or sleeping at once. A sleeping reader sets its ring's `sleeping` flag
//! and waits on its doorbell; a sender rings the doorbell only when that flag is set. A sender
//! that finds the ring full backs off until the receiver frees room.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use std::any::Any;
use std::sync::atomic::Ordering;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use courier::transport::{FrameBuf, FrameSink, Link, LinkRx, LinkTx, ReplyReader, TrySend};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify, OwnedMutexGuard};

use crate::end::{corrupt, lock, End};
use crate::reader::{Drained, Held, Look, Phase, Reading, Stall, LOOK_ROUND};
use crate::ring::{Consumer, Gauge, Producer, Reservation, HEADER};
use crate::sys::{self, Mapping};

/// Frames queued between the receiving task and the connection before it starts.
const QUEUE_DEPTH: usize = 256;

/// Settings of a shared-memory listener or connector. Each has a documented default.
#[derive(Debug, Clone)]
pub struct ShmOptions {
    ring_capacity: usize,
    max_frame_size: usize,
    mode: u32,
    wait: Wait,
    connect_timeout: Duration,
    frame_timeout: Duration,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            ring_capacity: 4 << 20,
            max_frame_size: courier::Limits::default().frame_size_limit(),
            mode: 0o600,
            wait: Wait::default(),
            connect_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
        }
    }
}

impl ShmOptions {
    /// Bytes in each direction's ring, rounded up to a power of two (at least 4 KiB). Frames
    /// of up to half the ring are encoded straight into it; larger frames still go through,
    /// encoded on the heap and copied into the ring in pieces. Default: 4 MiB, so that frames
    /// up to 2 MiB take the one-copy path. The segment's pages are only backed once touched,
    /// but a busy connection touches them all: two rings of this size per connection. Chosen
    /// by the server.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.max(4096).next_power_of_two();
        self
    }

    /// Largest frame accepted from the peer. Default: the same as [`courier::Limits`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(courier::wire::HEADER_LEN);
        self
    }

    /// How this end's reader waits when its ring is empty: see [`Wait`]. Default:
    /// [`Wait::SpinThenPark`] for 50 µs. Each end chooses its own: a client's for its replies,
    /// a listener's for the calls of every connection it accepts.
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// How long a connector waits for the listener to accept it and hand over the segment.
    /// Default: 10 s. A listener that never answers then fails the connection with
    /// [`TransportError::Timeout`] instead of holding the caller forever.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a frame may take to arrive once its first record has: a peer that starts a
    /// frame larger than a record and never finishes it holds this side's memory (up to the
    /// frame limit), so after this the connection is closed. Default: 30 s.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// Permission bits of the listener's socket file. Default: `0o600`, owner only; widen it
    /// (and decide with an `Authorizer` on the peer's uid) to serve other users.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

/// How the reader of a ring waits when it finds the ring empty: the trade between latency and
/// CPU that a shared-memory link makes (the LRPC notes' "domain caching" trades an idle
/// processor for a context switch in the same way).
///
/// The readers are the link's receiving task and, while their calls are out, the callers
/// themselves. "Spinning" means looking at the ring again and again in turns of up to 10 µs,
/// yielding to the runtime's other tasks between turns: a spinning reader delays the other
/// tasks of its thread by at most a turn, but it keeps a core busy. A sleeping reader waits on
/// its doorbell (an eventfd, through the runtime's epoll), and the peer rings it, a system
/// call, for the next frame.
///
/// | mode | latency | CPU while idle | system calls per frame |
/// |---|---|---|---|
/// | [`Wait::Poll`] | lowest: a frame is seen within a look | one core per link end, always | none |
/// | [`Wait::SpinThenPark`] | as `Poll` while busy; a wake-up after an idle spell | one core per busy end, for the spell after each frame | none while busy, 1–2 after a sleep |
/// | [`Wait::Park`] | a wake-up per frame (eventfd, epoll, the scheduler) | none | 2–3 (the ring, the wake-up, the drain) |
///
/// `benches/RESULTS.md` has each mode's null call beside the raw spin, futex and eventfd
/// ping-pongs, and why a parked link costs what a sleeping CPU costs to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// Never sleeps: for latency-critical deployments that dedicate cores to their links.
    Poll,
    /// Spins for this long after the ring was last found non-empty, then sleeps on the
    /// doorbell.
    SpinThenPark(Duration),
    /// Sleeps as soon as the ring is empty.
    Park,
}

impl Default for Wait {
    fn default() -> Self {
        Wait::SpinThenPark(Duration::from_micros(50))
    }
}

fn io_error(context: &str, e: io::Error) -> TransportError {
    TransportError::io(context, e)
}

/// A frame being written straight into the sending ring.
///
/// Holds the producer (so no other frame is written meanwhile) and room reserved at the
/// ring's tail. The codec writes there; `send` publishes it with one store. A frame that
/// outgrows the room moves to the heap and is sent in pieces, like any frame larger than a
/// record.
struct RingBuf {
    producer: OwnedMutexGuard<Producer>,
    /// Keeps the segment mapped while `payload` points into it.
    end: Arc<End>,
    reservation: Option<Reservation>,
    payload: *mut u8,
    room: usize,
    written: usize,
    spilled: Option<BytesMut>,
}

// SAFETY: `payload` points into the shared mapping, which `end` keeps alive and which any
// thread may write; the producer guard is Send. Nothing ties the buffer to one thread.
unsafe impl Send for RingBuf {}

impl RingBuf {
    fn boxed(
        end: &Arc<End>,
        producer: OwnedMutexGuard<Producer>,
        reservation: Reservation,
    ) -> Box<dyn FrameBuf> {
        Box::new(RingBuf {
            payload: producer.payload(&reservation),
            room: reservation.room(),
            reservation: Some(reservation),
            producer,
            end: Arc::clone(end),
            written: 0,
            spilled: None,
        })
    }

    /// Moves what was written to the heap, where the frame can grow without bound.
    fn spill(&mut self) -> &mut BytesMut {
        let written = self.written;
        let payload = self.payload;
        self.spilled.get_or_insert_with(|| {
            let mut heap = BytesMut::with_capacity(2 * written.max(4096));
            // SAFETY: the first `written` bytes of the reservation were written by the codec
            // (advance_mut counted them) and lie within the mapping. The peer could change
            // them meanwhile; then it only changes the frame it receives.
            heap.extend_from_slice(unsafe { std::slice::from_raw_parts(payload, written) });
            heap
        })
    }
}

// SAFETY: `chunk_mut` hands out the reservation's unwritten bytes (or the heap buffer's), and
// `advance_mut` counts only bytes within them, as BufMut requires.
unsafe impl BufMut for RingBuf {
    fn remaining_mut(&self) -> usize {
        usize::MAX - self.written()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        match &mut self.spilled {
            // SAFETY: forwarded: the caller initialised `cnt` bytes of the last chunk.
            Some(heap) => unsafe { heap.advance_mut(cnt) },
            None => {
                assert!(
                    cnt <= self.room - self.written,
                    "advance past the reserved room"
                );
                self.written += cnt;
            }
        }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        if self.spilled.is_none() && self.written == self.room {
            self.spill();
        }
        match &mut self.spilled {
            Some(heap) => heap.chunk_mut(),
            // SAFETY: `payload + written .. payload + room` is reserved room in the sending
            // ring: inside the mapping (kept alive by `end`), owned by this producer until it
            // commits, and never read by this process through this slice. The peer is not
            // meant to touch it; if a hostile peer writes there anyway, it can only change the
            // bytes of the frame it is about to receive: we never read them back to make a
            // decision (the header is written, not read, and `patch` only writes).
            None => unsafe {
                UninitSlice::from_raw_parts_mut(
                    self.payload.add(self.written),
                    self.room - self.written,
                )
            },
        }
    }
}

impl FrameBuf for RingBuf {
    fn written(&self) -> usize {
        self.spilled.as_ref().map_or(self.written, BytesMut::len)
    }

    fn patch(&mut self, offset: usize, bytes: &[u8]) {
        match &mut self.spilled {
            Some(heap) => heap.patch(offset, bytes),
            None => {
                assert!(
                    offset + bytes.len() <= self.written,
                    "patching unwritten bytes"
                );
                // SAFETY: within the written part of the reservation (asserted above).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.payload.add(offset),
                        bytes.len(),
                    )
                }
            }
        }
    }
}

#[derive(Debug)]
struct Tx {
    end: Arc<End>,
    /// The receiving ring, which callers read while their calls are out.
    reading: Arc<Reading>,
    wait: Wait,
}

impl Drop for Tx {
    /// The engine holds the sending half while the connection is in use; once it lets go
    /// (the connection closed, or its handshake failed) the socket is shut so that both sides'
    /// receivers stop, and the segment, doorbells and tasks are released.
    fn drop(&mut self) {
        self.end.closing.store(true, Ordering::Release);
        sys::shutdown(self.end.socket.as_raw_fd());
    }
}

impl Tx {
    /// The caller's own reading of the ring for the reply to the call in `frame` (see
    /// [`crate::reader`]), unless this end parks.
    fn reader(&self, frame: &[u8]) -> Option<ReplyReader> {
        let budget = match self.wait {
            Wait::Park => return None,
            Wait::Poll => None,
            Wait::SpinThenPark(spell) => Some(spell),
        };
        let reader = self.reading.own_reply(frame, budget)?;
        Some(Box::pin(reader))
    }

    /// Sends a frame from the heap, in records of at most half the ring each.
    async fn push(end: &End, producer: &mut Producer, frame: &[u8]) -> Result<(), TransportError> {
        let chunk = producer.max_record();
        // A frame is never empty (it has a header), so `chunks` yields at least one part.
        let last = frame.len().saturating_sub(1) / chunk;
        for (i, part) in frame.chunks(chunk).enumerate() {
            let more = i != last;
            end.until_room(producer, |p| Ok(p.try_push(part, more)?.then_some(())))
                .await?;
            end.wake_peer(producer);
        }
        Ok(())
    }

    /// Sends a frame the engine keeps (a call it may send again, an outcome it caches): copied
    /// into the ring straight from its bytes, without a [`RingBuf`] and without the trait's
    /// default path (which boxes a buffer and two more futures).
    async fn send_bytes(&self, frame: &[u8]) -> Result<(), TransportError> {
        let end = &self.end;
        let mut producer = end.producer.lock().await;
        Tx::push(end, &mut producer, frame).await
    }

    /// Publishes a frame written in a [`RingBuf`].
    async fn publish(&self, message: Box<dyn FrameBuf>) -> Result<(), TransportError> {
        let any: Box<dyn Any> = message;
        let Ok(buf) = any.downcast::<RingBuf>() else {
            return Err(TransportError::Other(
                "the shared-memory link was given a foreign buffer".into(),
            ));
        };
        let RingBuf {
            mut producer,
            end,
            reservation,
            written,
            spilled,
            ..
        } = *buf;
        match (spilled, reservation) {
            (None, Some(reservation)) => {
                producer.commit(reservation, written);
                end.wake_peer(&producer);
                Ok(())
            }
            (Some(heap), _) => Tx::push(&end, &mut producer, &heap).await,
            (None, None) => Err(TransportError::Other(
                "a frame buffer was sent twice".into(),
            )),
        }
    }
}

impl LinkTx for Tx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        Box::pin(async move {
            let end = &self.end;
            let mut producer = Arc::clone(&end.producer).lock_owned().await;
            // Ask for the hint, but at least a page: a frame's size is not known before it
            // is encoded, and spilling to the heap costs a copy.
            let reservation = end
                .until_room(&mut producer, |p| p.reserve(size_hint.max(4096)))
                .await?;
            Ok(RingBuf::boxed(end, producer, reservation))
        })
    }

    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        let end = &self.end;
        let mut producer = Arc::clone(&end.producer).try_lock_owned().ok()?;
        // No room (or a corrupt ring, which `buffer` then reports): take the slow path.
        let reservation = producer.reserve(size_hint.max(4096)).ok()??;
        Some(RingBuf::boxed(end, producer, reservation))
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.publish(message))
    }

    fn send_call(
        &self,
        message: Box<dyn FrameBuf>,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        // Calls written in place are a server's calls back to its client, which read their
        // replies through the reading task.
        Box::pin(async move { self.publish(message).await.map(|()| None) })
    }

    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move { self.send_bytes(&frame).await })
    }

    fn send_call_shared(
        &self,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        Box::pin(async move {
            self.send_bytes(&frame).await?;
            Ok(self.reader(&frame))
        })
    }

    fn try_send_call_shared(&self, frame: Bytes) -> TrySend {
        match self.try_send_shared(frame.clone()) {
            TrySend::Sent => match self.reader(&frame) {
                Some(reader) => TrySend::SentReading(reader),
                None => TrySend::Sent,
            },
            other => other,
        }
    }

    fn try_send_shared(&self, frame: Bytes) -> TrySend {
        let end = &self.end;
        let Ok(mut producer) = end.producer.try_lock() else {
            return TrySend::Wait(frame);
        };
        if frame.len() > producer.max_record() {
            return TrySend::Wait(frame);
        }
        match producer.try_push(&frame, false) {
            Ok(true) => {
                end.wake_peer(&producer);
                TrySend::Sent
            }
            // No room now: the slow path waits for it (and reports a closed link).
            Ok(false) => TrySend::Wait(frame),
            Err(e) => TrySend::Failed(corrupt(e)),
        }
    }

    fn close(&self) {
        // The peer reads the end of the stream and closes its side; our receiver sees the
        // same and stops.
        self.end.closing.store(true, Ordering::Release);
        sys::shutdown(self.end.socket.as_raw_fd());
    }
}

#[derive(Debug)]
struct Rx {
    frames: mpsc::Receiver<Bytes>,
    max_frame: usize,
    inbox: Arc<InboxShared>,
}

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move { Ok(self.frames.recv().await) })
    }

    fn frame_limit(&self) -> Option<usize> {
        Some(self.max_frame)
    }

    fn start(&mut self, sink: FrameSink) -> bool {
        let inbox = &self.inbox;
        let mut state = lock(&inbox.state);
        if state.ended {
            // The reader has stopped: what it queued ends with the queue, read as before.
            return false;
        }
        let (_, none) = mpsc::channel(1);
        state.queued = Some(std::mem::replace(&mut self.frames, none));
        let _ = inbox.sink.set(sink);
        drop(state);
        inbox.started.notify_one();
        true
    }
}

/// What the receiving task and the connection share about where frames go.
#[derive(Debug, Default)]
struct InboxShared {
    /// Set when the engine starts ([`LinkRx::start`]).
    sink: OnceLock<FrameSink>,
    state: Mutex<InboxState>,
    /// Wakes a sleeping reader when the engine starts, so frames it queued before do not wait
    /// for the next one.
    started: Notify,
}

#[derive(Debug, Default)]
struct InboxState {
    /// The queue of frames read before the start, handed back to the reader to drain.
    queued: Option<mpsc::Receiver<Bytes>>,
    /// The reader has stopped; a start now is refused.
    ended: bool,
}

/// Where the receiving task puts frames: into a queue that [`Rx::recv`] reads until the
/// handshake is done and the engine starts, then straight into the engine
/// ([`FrameSink::push`]), which runs a call's handler right here, on the task that read it,
/// when it completes on its first poll, and sends its reply from here: no queue, no hop, no
/// wake-up. From then on callers waiting for replies may read the ring too (see
/// [`crate::reader`]).
struct Inbox {
    queue: Option<mpsc::Sender<Bytes>>,
    sink: Option<FrameSink>,
    shared: Arc<InboxShared>,
}

impl Inbox {
    /// Switches to the engine once it has started, delivering first what was queued, then
    /// lets callers read.
    async fn switch(&mut self, reading: &Reading) -> Result<(), ()> {
        if self.sink.is_some() {
            return Ok(());
        }
        let Some(sink) = self.shared.sink.get() else {
            return Ok(());
        };
        let queued = lock(&self.shared.state).queued.take();
        self.queue = None;
        self.sink = Some(sink.clone());
        // This task was the queue's only sender, so nothing more can be added to it.
        if let Some(mut queued) = queued {
            while let Ok(frame) = queued.try_recv() {
                sink.push(frame).await.map_err(drop)?;
            }
        }
        reading.open(sink.clone());
        Ok(())
    }

    /// Delivers one frame, waiting if it must; an error means nobody listens any more.
    async fn deliver(&mut self, frame: Bytes) -> Result<(), ()> {
        match (&self.sink, &self.queue) {
            (Some(sink), _) => sink.push(frame).await.map_err(drop),
            (None, Some(queue)) => queue.send(frame).await.map_err(drop),
            (None, None) => Err(()),
        }
    }

    /// The reader stopped: the engine learns why (or, before it started, `recv` ends).
    async fn end(mut self, reading: &Reading, reason: &str) {
        let started = {
            let mut state = lock(&self.shared.state);
            state.ended = true;
            self.shared.sink.get().is_some()
        };
        if started && self.switch(reading).await.is_ok() {
            if let Some(sink) = &self.sink {
                sink.close(reason.to_owned());
            }
        }
    }
}

/// Why the receiving task stops.
type Stop = &'static str;

/// Reads what the ring holds now and delivers it, in order: a frame a caller left first, then
/// the ring. True if anything was delivered.
async fn read_once(reading: &Reading, inbox: &mut Inbox) -> Result<bool, Stop> {
    inbox
        .switch(reading)
        .await
        .map_err(|()| "the connection closed")?;
    let held = {
        let mut state = reading.lock();
        if let Some(reason) = state.failed {
            return Err(reason);
        }
        state.held.take()
    };
    if let Some(frame) = held {
        // Nobody reads past it meanwhile (`Held::Delivering`).
        reading.set_phase(Phase::Delivering);
        let delivered = inbox.deliver(frame).await;
        reading.set_phase(Phase::Reading);
        reading.lock().held = Held::Nothing;
        delivered.map_err(|()| "the connection closed")?;
        return Ok(true);
    }
    let end = &reading.end;
    match &inbox.sink {
        Some(sink) => match reading.lock().drain(end, sink, None) {
            Drained::Empty { any, .. } => Ok(any),
            // Delivered (waiting for room) on the next round.
            Drained::Held => Ok(true),
            Drained::Closed => Err("the connection closed"),
            Drained::Failed(reason) => Err(reason),
        },
        None => {
            let look = reading.lock().look(end);
            match look {
                Look::Frame(frame) => {
                    inbox
                        .deliver(frame)
                        .await
                        .map_err(|()| "the connection closed")?;
                    Ok(true)
                }
                Look::Empty => Ok(false),
                Look::Failed(reason) => Err(reason),
            }
        }
    }
}

/// Looks at the ring for up to [`LOOK_ROUND`] without going back to the runtime, delivering
/// what comes; stops early when something needs the receiving task's attention. True if it
/// delivered frames.
fn look_a_while(reading: &Reading, inbox: &Inbox) -> bool {
    let Some(sink) = &inbox.sink else {
        return false;
    };
    let end = &reading.end;
    let round_ends = std::time::Instant::now() + LOOK_ROUND;
    loop {
        match reading.lock().drain(end, sink, None) {
            Drained::Empty { any: false, .. } => {}
            Drained::Empty { any: true, .. } => return true,
            // Something the task handles.
            _ => return false,
        }
        if reading.callers_spinning()
            || end.closing.load(Ordering::Acquire)
            || std::time::Instant::now() >= round_ends
        {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Takes frames out of the receiving ring until the peer goes away or breaks the rules,
/// waiting as `wait` says when the ring is empty, and sleeping while callers read it.
async fn receive(reading: Arc<Reading>, bell: AsyncFd<OwnedFd>, mut inbox: Inbox, wait: Wait) {
    let end = Arc::clone(&reading.end);
    let reason = 'outer: loop {
        // When the ring was first found empty in this spell of looking.
        let mut idle_since: Option<std::time::Instant> = None;
        let mut looks = 0u32;
        loop {
            match read_once(&reading, &mut inbox).await {
                Ok(true) => {
                    idle_since = None;
                    continue;
                }
                Ok(false) => {}
                Err(reason) => break 'outer reason,
            }
            if end.closing.load(Ordering::Acquire) {
                break 'outer "closed by this side";
            }
            if reading.callers_spinning() {
                // They look at the ring: one spinning thread is enough.
                break;
            }
            let spin = match wait {
                Wait::Poll => true,
                Wait::Park => false,
                Wait::SpinThenPark(spell) => {
                    let now = std::time::Instant::now();
                    now.duration_since(*idle_since.get_or_insert(now)) < spell
                }
            };
            if !spin {
                break;
            }
            looks = looks.wrapping_add(1);
            // A reader that never sleeps never waits on the socket either: look at it now and
            // then, without waiting, to learn that the peer has gone.
            if wait == Wait::Poll && looks % 16 == 0 && peer_gone_now(&end.socket) {
                break 'outer "the peer closed the connection";
            }
            reading.set_phase(Phase::Spinning);
            let came = look_a_while(&reading, &inbox);
            reading.set_phase(Phase::Reading);
            if came {
                // Frames came: the spell of looking starts over.
                idle_since = None;
            }
            tokio::task::yield_now().await;
        }
        // Going to sleep. Unless callers look at the ring (the last to stop hands it back to
        // the doorbell), say so, then look once more, so a frame published meanwhile is seen.
        let stalled = {
            let state = reading.lock();
            if !reading.callers_spinning() {
                state.consumer.set_sleeping(true);
            }
            state.stall.deadline()
        };
        match read_once(&reading, &mut inbox).await {
            Ok(true) => {
                reading.lock().consumer.set_sleeping(false);
                continue;
            }
            Ok(false) => {}
            Err(reason) => break reason,
        }
        let waiting_for_start = inbox.sink.is_none();
        reading.set_phase(Phase::Sleeping);
        tokio::select! {
            ready = bell.readable() => {
                if let Ok(mut guard) = ready {
                    // Clear first, then drain: a ring after the drain raises readiness anew.
                    guard.clear_ready();
                    sys::drain(bell.as_raw_fd());
                }
                // The peer rings for frames and for room it freed in our sending ring.
                end.room_freed();
            }
            () = reading.wake.notified() => {}
            () = inbox.shared.started.notified(), if waiting_for_start => {}
            () = until(stalled) => break "a frame did not arrive within the frame timeout",
            gone = peer_gone(&end.socket) => {
                if gone {
                    // What the peer published before it left still counts (a refusing
                    // welcome, say): take it before stopping, but no more than a queue's
                    // worth, since a process that still maps the segment could go on writing.
                    for _ in 0..QUEUE_DEPTH {
                        if !matches!(read_once(&reading, &mut inbox).await, Ok(true)) {
                            break;
                        }
                    }
                    break "the peer closed the connection";
                }
            }
        }
        reading.set_phase(Phase::Reading);
        reading.lock().consumer.set_sleeping(false);
    };
    reading.set_phase(Phase::Stopped);
    tracing::debug!(reason, "shared-memory receiver stopped");
    end.mark_closed();
    inbox.end(&reading, reason).await;
}

/// Waits until `deadline`, or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether the peer is gone, without waiting: see [`peer_gone`].
fn peer_gone_now(socket: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    match socket.try_read(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Waits until the socket is readable; true if that is the end of the stream (the peer is
/// gone). The socket carries nothing after the set-up, so any byte is also the end.
async fn peer_gone(socket: &UnixStream) -> bool {
    socket.readable().await.is_err() || peer_gone_now(socket)
}

fn segment_len(capacity: usize) -> usize {
    2 * (HEADER + capacity)
}

/// The doorbells of one end: the one it waits on and the one it rings.
struct Bells {
    mine: OwnedFd,
    peer: OwnedFd,
}

/// Builds one end: it produces into ring `produce` (0: client to server, 1: server to client)
/// and consumes the other.
fn make_end(
    socket: UnixStream,
    map: Mapping,
    capacity: usize,
    produce: usize,
    bells: Bells,
    peer: Peer,
    options: &ShmOptions,
) -> Result<Link, TransportError> {
    let max_frame = options.max_frame_size;
    let Bells {
        mine: my_bell,
        peer: peer_bell,
    } = bells;
    let map = Arc::new(map);
    let ring = |i: usize| {
        // SAFETY: ring `i` of two starts at i * (HEADER + capacity) within the mapping, which
        // is 2 * (HEADER + capacity) bytes long (checked by the caller) and page-aligned.
        unsafe { map.base().add(i * (HEADER + capacity)) }
    };
    // SAFETY: each ring is HEADER + capacity bytes of the mapping, 64-aligned (HEADER and the
    // capacity are multiples of 64), kept mapped by the `Arc<Mapping>` held in `End` and the
    // receiving task for as long as the producer and consumer live; this process is the only
    // producer of one ring and the only consumer of the other.
    let (producer, consumer) = unsafe {
        (
            Producer::new(ring(produce), capacity),
            Consumer::new(ring(1 - produce), capacity, max_frame),
        )
    };
    let producer = producer.map_err(|e| TransportError::Other(e.to_string()))?;
    let consumer = consumer.map_err(|e| TransportError::Other(e.to_string()))?;
    // SAFETY: as above; gauges only read the control words, and live in `End` beside the
    // `Arc<Mapping>` that keeps them mapped.
    let gauges = unsafe {
        [
            Gauge::new(ring(produce), capacity),
            Gauge::new(ring(1 - produce), capacity),
        ]
    };
    let [sending, receiving] = gauges;
    let gauges = [
        sending.map_err(|e| TransportError::Other(e.to_string()))?,
        receiving.map_err(|e| TransportError::Other(e.to_string()))?,
    ];
    // SAFETY: `my_bell` is an open eventfd that the AsyncFd owns from here on, so it stays open
    // and refers to the same file until the AsyncFd is dropped; OwnedFd::as_raw_fd always
    // returns that same descriptor.
    let bell = unsafe { AsyncFd::register_with_interest(my_bell, Interest::READABLE) }
        .map_err(|e| io_error("eventfd", e.into()))?;
    let end = Arc::new(End::new(
        map,
        producer,
        peer_bell,
        socket,
        gauges,
        if produce == 0 { "client" } else { "server" },
    ));
    let (tx, frames) = mpsc::channel(QUEUE_DEPTH);
    let shared = Arc::new(InboxShared::default());
    let inbox = Inbox {
        queue: Some(tx),
        sink: None,
        shared: Arc::clone(&shared),
    };
    let reading = Reading::new(
        consumer,
        Stall::new(options.frame_timeout),
        Arc::clone(&end),
    );
    crate::report::register(&reading);
    tokio::spawn(receive(Arc::clone(&reading), bell, inbox, options.wait));
    Ok(Link {
        tx: Box::new(Tx {
            end,
            reading,
            wait: options.wait,
        }),
        rx: Box::new(Rx {
            frames,
            max_frame,
            inbox: shared,
        }),
        peer,
    })
}

fn process_peer(socket: &UnixStream) -> Peer {
    match socket.peer_cred() {
        Ok(cred) => Peer::Process {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        },
        Err(_) => Peer::Process {
            uid: u32::MAX,
            gid: u32::MAX,
            pid: 0,
        },
    }
}

/// Accepts shared-memory connections on a Unix socket, for a [`courier::Server`].
#[derive(Debug)]
pub struct ShmListener {
    listener: UnixListener,
    path: PathBuf,
    options: ShmOptions,
}

impl ShmListener {
    /// Listens at `path`. A stale socket file nobody listens on is replaced; a live one is
    /// [`TransportError::AddrInUse`]. The file gets the options' mode (owner only by default)
    /// and is removed when the listener is dropped.
    pub fn bind(path: impl AsRef<Path>, options: ShmOptions) -> Result<Self, TransportError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(TransportError::AddrInUse(path.display().to_string()));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|e| io_error("bind", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(options.mode))
            .map_err(|e| io_error("chmod", e))?;
        Ok(ShmListener {
            listener,
            path,
            options,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn set_up(&self, socket: UnixStream) -> Result<Link, TransportError> {
        let peer = process_peer(&socket);
        let capacity = self.options.ring_capacity;
        let len = segment_len(capacity);
        let memfd = sys::memfd(len).map_err(|e| io_error("memfd", e))?;
        let map = Mapping::new(&memfd, len).map_err(|e| io_error("mmap", e))?;
        let server_bell = sys::eventfd().map_err(|e| io_error("eventfd", e))?;
        let client_bell = sys::eventfd().map_err(|e| io_error("eventfd", e))?;
        let fds = [
            memfd.as_raw_fd(),
            client_bell.as_raw_fd(),
            server_bell.as_raw_fd(),
        ];
        loop {
            socket.writable().await.map_err(|e| io_error("socket", e))?;
            match socket.try_io(Interest::WRITABLE, || {
                sys::send_fds(socket.as_raw_fd(), &fds)
            }) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_error("sending the segment", e)),
            }
        }
        // The client holds its own copies now; ours of the memfd and its doorbell can go.
        drop(memfd);
        make_end(
            socket,
            map,
            capacity,
            1,
            Bells {
                mine: server_bell,
                peer: client_bell,
            },
            peer,
            &self.options,
        )
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl courier::transport::Listener for ShmListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        loop {
            let (socket, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| io_error("accept", e))?;
            // One client failing its set-up must not stop the others.
            match self.set_up(socket).await {
                Ok(link) => return Ok(link),
                Err(e) => tracing::warn!(error = %e, "shared-memory set-up failed"),
            }
        }
    }
}

/// Connects to a [`ShmListener`], for [`courier::ClientBuilder::connect`].
#[derive(Debug, Clone)]
pub struct ShmConnector {
    path: PathBuf,
    options: ShmOptions,
}

impl ShmConnector {
    /// A connector for the listener at `path`.
    pub fn new(path: impl AsRef<Path>, options: ShmOptions) -> Self {
        ShmConnector {
            path: path.as_ref().to_path_buf(),
            options,
        }
    }
}

impl courier::transport::Connector for ShmConnector {
    async fn connect(&self) -> Result<Link, TransportError> {
        let timeout = self.options.connect_timeout;
        tokio::time::timeout(timeout, self.connect_now())
            .await
            .map_err(|_| {
                TransportError::Timeout(format!(
                    "shm://{} did not hand over a segment within {timeout:?}",
                    self.path.display()
                ))
            })?
    }
}

impl ShmConnector {
    async fn connect_now(&self) -> Result<Link, TransportError> {
        let socket = UnixStream::connect(&self.path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    TransportError::NotFound(format!("shm://{}", self.path.display()))
                }
                _ => io_error("connect", e),
            })?;
        let [memfd, my_bell, peer_bell] = loop {
            socket.readable().await.map_err(|e| io_error("socket", e))?;
            match socket.try_io(Interest::READABLE, || {
                sys::recv_fds::<3>(socket.as_raw_fd())
            }) {
                Ok(fds) => break fds,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_error("receiving the segment", e)),
            }
        };
        let len = sys::file_len(&memfd).map_err(|e| io_error("fstat", e))?;
        let capacity = (len / 2).saturating_sub(HEADER);
        if len % 2 != 0 || capacity < 64 || !capacity.is_power_of_two() || len > 1 << 34 {
            return Err(TransportError::Other(format!(
                "the server's segment has an unexpected size of {len} bytes"
            )));
        }
        let map = Mapping::new(&memfd, len).map_err(|e| io_error("mmap", e))?;
        let peer = process_peer(&socket);
        make_end(
            socket,
            map,
            capacity,
            0,
            Bells {
                mine: my_bell,
                peer: peer_bell,
            },
            peer,
            &self.options,
        )
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;

    /// Both ends of one segment in this process, over a socket pair.
    fn ends(capacity: usize) -> (Link, Link) {
        let len = segment_len(capacity);
        let memfd = sys::memfd(len).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let socket = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true).unwrap();
            UnixStream::from_std(s).unwrap()
        };
        let (bell_a, bell_b) = (sys::eventfd().unwrap(), sys::eventfd().unwrap());
        let peer = Peer::Process {
            uid: 0,
            gid: 0,
            pid: 0,
        };
        let options = ShmOptions::default();
        let end = |s, produce, mine: &OwnedFd, theirs: &OwnedFd| {
            let bells = Bells {
                mine: mine.try_clone().unwrap(),
                peer: theirs.try_clone().unwrap(),
            };
            let map = Mapping::new(&memfd, len).unwrap();
            make_end(
                socket(s),
                map,
                capacity,
                produce,
                bells,
                peer.clone(),
                &options,
            )
            .unwrap()
        };
        (end(a, 0, &bell_a, &bell_b), end(b, 1, &bell_b, &bell_a))
    }

    #[tokio::test]
    async fn the_report_shows_each_live_link_with_its_rings_and_readers() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let (a, mut b) = ends(64 * 1024);
            let frame = vec![7u8; 40];
            a.tx.send_shared(Bytes::from(frame.clone())).await.unwrap();
            assert_eq!(b.rx.recv().await.unwrap().unwrap(), frame);
            let report = crate::report();
            // Other tests' links may be in the report too; ours have read one 48-byte record.
            assert!(
                report.contains("client end: sending ring [head 48 tail 48 (0 unread)"),
                "{report}"
            );
            assert!(
                report.contains("server end: sending ring [head 0 tail 0"),
                "{report}"
            );
            assert!(report.contains("reading task"), "{report}");
            let lines = report.lines().count();
            drop((a, b));
            // Closed links leave the report once their tasks have let go.
            while crate::report().lines().count() >= lines {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn frames_are_written_in_place_and_spill_only_past_the_room() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let capacity = 64 * 1024;
            let (a, mut b) = ends(capacity);
            // One record holds up to half the ring, less its 8-byte header.
            let room = capacity / 2 - 8;
            for size in [40, 1000, room - 1, room, room + 1, 3 * capacity] {
                let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
                let mut buf = a.tx.buffer(size).await.unwrap();
                buf.put_slice(&data);
                let any: &dyn Any = &*buf;
                let ring_buf = any.downcast_ref::<RingBuf>().unwrap();
                assert_eq!(ring_buf.spilled.is_some(), size > room, "{size} bytes");
                a.tx.send(buf).await.unwrap();
                let frame = b.rx.recv().await.unwrap().unwrap();
                assert!(frame[..] == data[..], "{size} bytes arrived changed");
            }
        })
        .await
        .unwrap();
    }
}
