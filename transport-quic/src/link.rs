//! One QUIC connection as a Courier [`Link`].
//!
//! The engine sends and receives whole frames; this module maps them onto streams:
//!
//! | frame | stream |
//! |---|---|
//! | Call (ours) | a new bidirectional stream; its reply comes back on it |
//! | Ack, Reply, Error (to the peer's call) | the send half of the call's stream; a reply finishes it |
//! | OneWay, or an Error that belongs to no stream | a new unidirectional stream |
//! | Cancel (of our call) | STOP_SENDING on the call's stream (its reader is dropped); the peer turns that, or a reset, into a Cancel |
//!
//! The caller reads its own reply: the reading of a call's stream is handed to the engine
//! ([`LinkTx::send_call`]) and polled by the calling task while it waits, so a reply reaches
//! its caller without a task per call or a wake-up between tasks. Dropping the call drops the
//! reading, and with it the receive half: that is the STOP_SENDING that cancels it.
//!
//! The handshake's two messages travel on the connection's first bidirectional stream, each
//! with a 4-byte length before it.
//!
//! A bidirectional stream the peer opens carries exactly one Call frame, then its FIN. A stream
//! whose first frame is not a Call (a stray Reply, Ack, Error or Cancel), or that carries a
//! second frame after its Call, is refused: this side stops reading it and resets its reply
//! half with code 2, and the engine never sees the frame. Unidirectional streams carry one-way
//! calls and answers whose call stream is gone.
//!
//! Memory is bounded three times over: every frame is checked against the frame size limit
//! before it is read; it is counted against a per-connection budget and, on a listener, a
//! ceiling shared by all its connections, and given back when the engine drops the frame, so
//! a peer that opens many streams at once waits on QUIC flow control instead of growing this
//! side's memory; and a frame that has not arrived whole within the frame timeout is dropped
//! with what it held. Frames of up to 4 KiB that arrived whole are not counted: the
//! concurrent-stream limit bounds them.
//!
//! The two counts differ in when they are taken. The connection's budget is taken for the
//! whole frame when its header arrives: frames in progress then never hold the budget between
//! them while each waits for more (counted only as bytes arrived, 64 calls of 1 MiB on one
//! connection did exactly that, and waited for each other until the frame timeout). That
//! budget is the peer's own, so a peer that lies in its headers holds up only its own calls.
//! The listener's ceiling, shared with every other peer, is counted as bytes arrive, never on
//! a header's word, so that no peer can take it with headers alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier::transport::{FrameBuf, FrameSink, Link, LinkRx, LinkTx, ReplyReader};
use courier::wire::{
    self, call_id_of, kind_of, Claims, ErrorCode, ErrorPayload, FrameKind, HEADER_LEN,
};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use futures::FutureExt;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::options::ReadLimits;

/// Frames queued between the connection's readers and the engine.
const QUEUE_DEPTH: usize = 256;
/// Largest handshake message accepted.
const MAX_HANDSHAKE: usize = 1024;
/// Stream error code for a frame refused as too large.
const REFUSED: VarInt = VarInt::from_u32(2);
/// Connection close code for a goodbye (PROTOCOL.md §7.5): the close carries the goodbye, so
/// that it cannot be lost to the close, as a frame on a stream would be.
const GOODBYE: VarInt = VarInt::from_u32(1);

/// Why a connection ended, as the engine hears it; a peer's close with [`GOODBYE`] is also
/// handed to the engine as the goodbye frame, before the end.
fn close_reason(reason: &quinn::ConnectionError) -> (String, bool) {
    match reason {
        quinn::ConnectionError::LocallyClosed => ("closed by this side".to_owned(), false),
        quinn::ConnectionError::ApplicationClosed(close) if close.error_code == GOODBYE => {
            ("the peer said goodbye".to_owned(), true)
        }
        quinn::ConnectionError::ApplicationClosed(_) => {
            ("the peer closed the connection".to_owned(), false)
        }
        other => (format!("QUIC connection lost: {other}"), false),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The send half of a call the peer opened, and what its FIN waits for.
///
/// The FIN goes out once the call is answered *and* the request half has ended (its FIN read,
/// or more frames refused). Holding it until then is what makes a second frame's refusal
/// visible to every caller: a caller that finished its half may see its data acknowledged
/// before our STOP_SENDING arrives, and QUIC then drops the stop (RFC 9000 §3.5), but the
/// Error that follows our reply always reaches it.
struct CallStream {
    send: SendStream,
    /// The request half has ended: nothing more will be read from it.
    ended: bool,
    /// The call's last answer (Reply or Error) is written.
    answered: bool,
    /// The refusal of frames that followed the call, written after the answer.
    refusal: Option<Bytes>,
}

impl CallStream {
    fn new(send: SendStream, ended: bool, refusal: Option<Bytes>) -> Self {
        CallStream {
            send,
            ended: ended || refusal.is_some(),
            answered: false,
            refusal,
        }
    }

    /// Writes the call's answer and, if this was its last, what follows it.
    async fn answer(&mut self, bytes: Bytes, last: bool) -> Result<(), TransportError> {
        self.send.write_chunk(bytes).await.map_err(closed)?;
        if last {
            self.answered = true;
            self.close_if_done().await;
        }
        Ok(())
    }

    /// The request half ended (`refusal` is `None`) or carried more than its call.
    async fn request_ended(&mut self, refusal: Option<Bytes>) {
        self.ended = true;
        if self.refusal.is_none() {
            self.refusal = refusal;
        }
        self.close_if_done().await;
    }

    /// Once answered and read to the end: the refusal, if any, then the FIN.
    async fn close_if_done(&mut self) {
        if self.answered && self.ended {
            if let Some(refusal) = self.refusal.take() {
                let _ = self.send.write_chunk(refusal).await;
            }
            let _ = self.send.finish();
        }
    }
}

type Shared = Arc<tokio::sync::Mutex<CallStream>>;

/// A peer call's send half, owned outright or under its lock.
enum Exclusive {
    Owned(CallStream),
    Locked(tokio::sync::OwnedMutexGuard<CallStream>),
}

impl std::ops::Deref for Exclusive {
    type Target = CallStream;
    fn deref(&self) -> &CallStream {
        match self {
            Exclusive::Owned(s) => s,
            Exclusive::Locked(g) => g,
        }
    }
}

impl std::ops::DerefMut for Exclusive {
    fn deref_mut(&mut self) -> &mut CallStream {
        match self {
            Exclusive::Owned(s) => s,
            Exclusive::Locked(g) => g,
        }
    }
}

struct State {
    conn: Connection,
    limits: ReadLimits,
    incoming: mpsc::Sender<Bytes>,
    /// Set once the handshake is done: frames then go straight to the connection.
    sink: OnceLock<FrameSink>,
    /// The handshake stream's send half, until the one handshake message is sent.
    control: Mutex<Option<SendStream>>,
    /// Set once the handshake message went out on `control`.
    handshake_sent: AtomicBool,
    /// Send halves of the peer's calls, waiting for their ack or reply.
    theirs: Mutex<HashMap<u64, Shared>>,
    /// On the accepting side, from the Welcome until the engine starts: resolves when the
    /// client closes. A close meanwhile (the Welcome refused the client) waits for it, briefly,
    /// so that the Welcome is read before the connection goes: a close that overtakes it
    /// would discard it, acknowledged or not.
    handshake_delivered: Mutex<Option<BoxFuture<'static, ()>>>,
    /// Whether this side accepted the connection (it answers the handshake).
    accepting: bool,
    /// Set once the handshake message is in `incoming`: until then no frame may go there, so
    /// that the engine always reads the handshake first (a reply to a call sent before the
    /// welcome can arrive on its own stream before the welcome does).
    handshake_queued: AtomicBool,
    /// Wakes the frames that wait for `handshake_queued`.
    handshake_signal: tokio::sync::Notify,
    /// Set by the first `close`: a later one (the link dropped after closing it) must not cut
    /// short the wait for the handshake message.
    closing: AtomicBool,
}

fn closed(e: impl std::error::Error + Send + Sync + 'static) -> TransportError {
    TransportError::connection("QUIC", e)
}

/// How long a close after a refusing Welcome waits for the client to close first.
const HANDSHAKE_LINGER: Duration = Duration::from_secs(2);

impl State {
    /// Closes the connection with a goodbye (see [`GOODBYE`]), at once.
    fn goodbye(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.handshake_delivered).take();
        self.conn.close(GOODBYE, b"goodbye");
    }

    /// Closes the connection: at once, or, right after this side sent a Welcome, once the client
    /// has closed (it does as soon as it reads a refusal) or the linger has passed.
    fn close(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        let delivered = lock(&self.handshake_delivered).take();
        match (delivered, tokio::runtime::Handle::try_current()) {
            (Some(delivered), Ok(runtime)) => {
                let conn = self.conn.clone();
                runtime.spawn(async move {
                    let _ = tokio::time::timeout(HANDSHAKE_LINGER, delivered).await;
                    conn.close(VarInt::from_u32(0), b"closed");
                });
            }
            _ => self.conn.close(VarInt::from_u32(0), b"closed"),
        }
    }
}

/// Turns a finished QUIC connection into a link. `control` is the handshake stream for the
/// connecting side; the accepting side takes the first stream the peer opens.
pub(crate) fn link(
    conn: Connection,
    control: Option<(SendStream, RecvStream)>,
    limits: ReadLimits,
) -> Link {
    let (incoming, rx) = mpsc::channel(QUEUE_DEPTH);
    let max_frame = limits.max_frame;
    let peer = Peer::Network {
        addr: conn.remote_address(),
        certificates: conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .map(|chain| chain.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default(),
    };
    let (control_send, control_recv) = match control {
        Some((s, r)) => (Some(s), Some(r)),
        None => (None, None),
    };
    let state = Arc::new(State {
        conn: conn.clone(),
        limits,
        incoming,
        sink: OnceLock::new(),
        control: Mutex::new(control_send),
        handshake_sent: AtomicBool::new(false),
        theirs: Mutex::new(HashMap::new()),
        handshake_delivered: Mutex::new(None),
        accepting: control_recv.is_none(),
        handshake_queued: AtomicBool::new(false),
        handshake_signal: tokio::sync::Notify::new(),
        closing: AtomicBool::new(false),
    });
    tokio::spawn(accept_streams(Arc::clone(&state), control_recv));
    Link {
        tx: Box::new(Tx(Arc::clone(&state))),
        rx: Box::new(Rx {
            said_goodbye: false,
            frames: rx,
            conn,
            max_frame,
            state: Arc::clone(&state),
        }),
        peer,
    }
}

/// Reads the peer's streams for the lifetime of the connection.
async fn accept_streams(state: Arc<State>, control: Option<RecvStream>) {
    let conn = state.conn.clone();
    // The handshake message is read whole before any other stream is accepted: frames that
    // arrived earlier on later streams (a client may send calls before the welcome comes) wait
    // in quinn until then, so the engine always sees the handshake first. Reading them as they
    // came let such a call reach the engine first, which took it for a malformed hello.
    let control = match control {
        // Connecting side: the peer's welcome comes back on our handshake stream.
        Some(recv) => recv,
        // Accepting side: quinn hands over streams in the order of their ids, so this is the
        // peer's first bidirectional stream (id 0), whatever order their data arrived in.
        None => match conn.accept_bi().await {
            Ok((send, recv)) => {
                *lock(&state.control) = Some(send);
                recv
            }
            Err(_) => return,
        },
    };
    if !read_handshake(&state, control).await {
        return;
    }
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(read_peer_call(Arc::clone(&state), send, recv));
                }
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(read_frames(Arc::clone(&state), recv));
                }
                Err(_) => return,
            },
        }
    }
}

/// What became of a delivered frame.
enum Delivered {
    /// Taken; nothing more to do here.
    Done,
    /// A call whose handler this task should run (or drop, to cancel it).
    Handler(futures::future::BoxFuture<'static, ()>),
    /// Nobody listens any more.
    Gone,
}

impl State {
    /// Hands a frame to the connection: straight to its sink once the handshake is done, else
    /// through the queue that `recv` reads.
    async fn deliver(&self, frame: Bytes) -> Delivered {
        match self.sink.get() {
            Some(sink) => match sink.deliver(frame) {
                Some(handler) => Delivered::Handler(handler),
                None => Delivered::Done,
            },
            None => {
                if !self.handshake_queued().await {
                    return Delivered::Gone;
                }
                self.queue(frame).await
            }
        }
    }

    /// Puts a message in the queue that `recv` reads (before the engine takes frames itself).
    async fn queue(&self, message: Bytes) -> Delivered {
        match self.incoming.send(message).await {
            Ok(()) => Delivered::Done,
            Err(_) => Delivered::Gone,
        }
    }

    /// Waits until the handshake message is queued; false if the connection ended first.
    async fn handshake_queued(&self) -> bool {
        loop {
            let signal = self.handshake_signal.notified();
            let mut signal = std::pin::pin!(signal);
            signal.as_mut().enable();
            if self.handshake_queued.load(Ordering::Acquire) {
                return true;
            }
            tokio::select! {
                () = signal => {}
                _ = self.conn.closed() => return false,
            }
        }
    }
}

/// Reads the one handshake message off the handshake stream and hands it to the engine;
/// false if none came (the engine's handshake timeout then closes the connection).
async fn read_handshake(state: &State, mut recv: RecvStream) -> bool {
    let mut len = [0u8; 4];
    if recv.read_exact(&mut len).await.is_err() {
        return false;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE {
        state.conn.close(REFUSED, b"handshake message too large");
        return false;
    }
    let mut message = vec![0u8; len];
    if recv.read_exact(&mut message).await.is_err() {
        return false;
    }
    if !matches!(state.queue(Bytes::from(message)).await, Delivered::Done) {
        return false;
    }
    state.handshake_queued.store(true, Ordering::Release);
    state.handshake_signal.notify_waiters();
    true
}

/// What reading one frame off a stream gave.
enum Read {
    Frame(Bytes),
    /// The stream ended cleanly between frames.
    End,
    /// The peer reset the stream.
    Reset,
    /// The stream or the connection failed; nothing more will come.
    Failed,
}

/// The bytes of one frame, holding their share of the receive budgets until dropped.
struct Budgeted {
    bytes: Bytes,
    _permits: Permits,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Bytes taken from the connection's budget and, on a listener, from its ceiling.
#[derive(Default)]
struct Permits {
    connection: Option<OwnedSemaphorePermit>,
    ceiling: Option<OwnedSemaphorePermit>,
}

impl Permits {
    /// Takes a whole frame's `n` bytes from the connection's budget at once, waiting for them;
    /// false if the budget is closed.
    async fn frame(&mut self, limits: &ReadLimits, n: usize) -> bool {
        more(&limits.connection, &mut self.connection, n).await
    }

    /// Takes `n` more arrived bytes from the listener's ceiling, if any, waiting for them;
    /// false if the ceiling is closed.
    async fn arrived(&mut self, limits: &ReadLimits, n: usize) -> bool {
        match &limits.ceiling {
            Some(ceiling) => more(ceiling, &mut self.ceiling, n).await,
            None => true,
        }
    }
}

/// Takes `n` more permits from `budget` into `held`, waiting for them; false if it is closed.
async fn more(budget: &Arc<Semaphore>, held: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if n == 0 {
        return true;
    }
    let Ok(p) = Arc::clone(budget).acquire_many_owned(n).await else {
        return false;
    };
    match held {
        Some(h) => h.merge(p),
        None => *held = Some(p),
    }
    true
}

/// Reads whole frames off one stream.
///
/// Reading takes quinn's chunks as they are (`read_chunk`), without copying: a small frame
/// that arrived in one packet is delivered as a slice of that packet's buffer. A frame split
/// across chunks is gathered into a buffer that grows with what has arrived (see
/// `Frames::gather`).
struct Frames {
    recv: RecvStream,
    /// Bytes read and not yet framed.
    pending: Bytes,
    /// The header of the frame being gathered, if it is not whole yet.
    partial_header: Bytes,
}

/// Frames up to this size that have already arrived are not counted against the receive
/// budget: the stream limit bounds them (a frame per stream at a time, so at most
/// `max_concurrent_calls` × 4 KiB per direction), and counting them cost a contended semaphore
/// and an allocation per frame.
const UNBUDGETED: usize = 4096;

/// The outcome of a read that may hit the end of the stream.
fn read_error(e: quinn::ReadError) -> Read {
    match e {
        quinn::ReadError::Reset(_) => Read::Reset,
        _ => Read::Failed,
    }
}

impl Frames {
    fn new(recv: RecvStream) -> Self {
        Frames {
            recv,
            pending: Bytes::new(),
            partial_header: Bytes::new(),
        }
    }

    /// Reads until `pending` holds at least `want` bytes (`want` is small: a header).
    /// `Ok(false)` if the stream ended first.
    async fn fill_pending(&mut self, want: usize) -> Result<bool, Read> {
        while self.pending.len() < want {
            match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) if self.pending.is_empty() => self.pending = chunk.bytes,
                Ok(Some(chunk)) => {
                    let mut joined =
                        BytesMut::with_capacity(self.pending.len() + chunk.bytes.len());
                    joined.extend_from_slice(&self.pending);
                    joined.extend_from_slice(&chunk.bytes);
                    self.pending = joined.freeze();
                }
                Ok(None) => return Ok(false),
                Err(e) => return Err(read_error(e)),
            }
        }
        Ok(true)
    }

    /// Gathers a frame of `total` bytes whose start is in `pending`, copying each piece into
    /// the frame's buffer as it arrives, so quinn's packet buffers go back at once. The buffer
    /// starts at one [`BUDGET_STEP`]; once more than that has arrived, it grows to the whole
    /// frame at once, so what came is copied once more at most (doubling from 64 KiB copied a
    /// 1 MiB frame's first half again on the way, and allocating the whole frame before any of
    /// it came was slower at 64 KiB). The listener's ceiling is taken as bytes arrive, in
    /// steps of at most [`BUDGET_STEP`].
    /// `Err(Ok(bytes))` if the stream ended first, with what came.
    async fn gather(
        &mut self,
        total: usize,
        limits: &ReadLimits,
        permits: &mut Permits,
    ) -> Result<Bytes, Result<Bytes, Read>> {
        let first = std::mem::take(&mut self.pending);
        let mut frame = BytesMut::with_capacity(total.min(BUDGET_STEP.max(first.len())));
        frame.extend_from_slice(&first);
        let mut reserved = 0;
        loop {
            let have = frame.len();
            if have > reserved {
                let step = (have - reserved).max(BUDGET_STEP.min(total - reserved));
                if !permits.arrived(limits, step).await {
                    return Err(Err(Read::Failed));
                }
                reserved += step;
            }
            if have == total {
                return Ok(frame.freeze());
            }
            // At most the rest of this frame: what follows stays in quinn for the next one.
            match self.recv.read_chunk(total - have, true).await {
                Ok(Some(chunk)) => {
                    if chunk.bytes.len() > frame.capacity() - have {
                        frame.reserve(total - have);
                    }
                    frame.extend_from_slice(&chunk.bytes);
                }
                Ok(None) => return Err(Ok(frame.freeze())),
                Err(e) => return Err(Err(read_error(e))),
            }
        }
    }

    /// The next frame, waiting as long as it takes for its first byte (a reply may take the
    /// handler's time) and at most the frame timeout for the rest.
    async fn next(&mut self, state: &State) -> Read {
        if self.pending.is_empty() {
            match self.fill_pending(1).await {
                Ok(true) => {}
                Ok(false) => return Read::End,
                Err(read) => return read,
            }
        }
        let limits = &state.limits;
        let mut permits = Permits::default();
        let rest = tokio::time::timeout(limits.frame_timeout, self.rest(limits, &mut permits));
        match rest.await {
            Ok(Read::Frame(frame)) if frame.len() > UNBUDGETED => {
                Read::Frame(Bytes::from_owner(Budgeted {
                    bytes: frame,
                    _permits: permits,
                }))
            }
            Ok(read) => read,
            Err(_) => {
                // Too slow: drop what came (and its budget), stop the stream, and hand the
                // engine the header alone so that it fails the call with a protocol error.
                let _ = self.recv.stop(REFUSED);
                let header = std::mem::take(&mut self.partial_header);
                tracing::debug!("a frame did not arrive within the frame timeout");
                if header.len() == HEADER_LEN {
                    Read::Frame(header)
                } else {
                    Read::Failed
                }
            }
        }
    }

    /// The rest of a frame whose first byte is in `pending`.
    async fn rest(&mut self, limits: &ReadLimits, permits: &mut Permits) -> Read {
        match self.fill_pending(HEADER_LEN).await {
            Ok(true) => {}
            // A truncated header, which the engine reports.
            Ok(false) => return Read::Frame(std::mem::take(&mut self.pending)),
            Err(read) => return read,
        }
        let Some(total) = Claims::read(&self.pending).declared_size() else {
            return Read::Failed;
        };
        if total > limits.max_frame {
            // Refuse to read it: the engine sees the header alone and reports the frame as too
            // large against its call; the stream's sender is told to stop.
            let _ = self.recv.stop(REFUSED);
            let header = self.pending.split_to(HEADER_LEN);
            self.pending = Bytes::new();
            return Read::Frame(header);
        }
        if self.pending.len() >= total {
            return Read::Frame(self.pending.split_to(total));
        }
        // Kept aside in case the frame times out: the engine then learns which call it was.
        self.partial_header = self.pending.slice(..HEADER_LEN);
        if !permits.frame(limits, total).await {
            self.partial_header = Bytes::new();
            return Read::Failed;
        }
        let frame = match self.gather(total, limits, permits).await {
            Ok(frame) => frame,
            // Truncated: hand over what came; the engine reports the length mismatch.
            Err(Ok(partial)) => partial,
            Err(Err(read)) => {
                self.partial_header = Bytes::new();
                return read;
            }
        };
        self.partial_header = Bytes::new();
        Read::Frame(frame)
    }
}

/// Budget is taken ahead of the bytes in steps of this size (or the rest of the frame), not
/// per packet: a semaphore operation per 64 KiB instead of per 1.2 KB. It is also the first
/// allocation for a frame being gathered.
const BUDGET_STEP: usize = 64 * 1024;

fn cancel_frame(id: u64) -> Bytes {
    let header = courier::wire::Header::new(
        FrameKind::Cancel,
        id,
        courier::InterfaceId::new(0),
        courier::MethodId::new(0),
    );
    Bytes::copy_from_slice(&header.to_bytes())
}

/// What follows a call's frame on its stream, as far as can be told without waiting.
enum After {
    /// The request half ended: the call was all it carried (the usual case: the caller's FIN
    /// comes in the call's last packet).
    Ended,
    /// More bytes: refused.
    More,
    /// Nothing yet; the reading goes on once the call is delivered.
    Unknown,
    /// The caller reset its half.
    Reset,
    /// The stream or the connection failed.
    Failed,
}

impl Frames {
    /// Looks, without waiting, at what follows the frame just read.
    fn after(&mut self) -> After {
        if !self.pending.is_empty() {
            return After::More;
        }
        match self.recv.read_chunk(usize::MAX, true).now_or_never() {
            None => After::Unknown,
            Some(Ok(None)) => After::Ended,
            Some(Ok(Some(chunk))) => {
                self.pending = chunk.bytes;
                After::More
            }
            Some(Err(e)) => match read_error(e) {
                Read::Reset => After::Reset,
                _ => After::Failed,
            },
        }
    }

    /// Waits for what follows a call whose request half had not ended when it came: the end,
    /// or the start of more. Of more, no more than a header is waited for (within
    /// `frame_timeout`): enough to name the refused frame, never its body.
    async fn after_call(&mut self, frame_timeout: Duration) -> After {
        match self.fill_pending(1).await {
            Ok(false) => After::Ended,
            Ok(true) => {
                let _ = tokio::time::timeout(frame_timeout, self.fill_pending(HEADER_LEN)).await;
                After::More
            }
            Err(Read::Reset) => After::Reset,
            Err(_) => After::Failed,
        }
    }

    /// Refuses what followed a call on its stream (the pending bytes): stops the request half
    /// with code 2 and returns the Error that follows the call's answer, which echoes what the
    /// refused frame claimed.
    fn refuse_extra(&mut self) -> Bytes {
        tracing::debug!("refused a second frame on a call's stream");
        let _ = self.recv.stop(REFUSED);
        let claims = Claims::read(&std::mem::take(&mut self.pending));
        let payload = ErrorPayload::new(
            ErrorCode::Protocol,
            "a call's stream carries one Call frame; what followed it was not read",
        );
        wire::error_frame(&claims, &payload)
    }
}

/// A stream the peer opened for a call: register its send half for the reply, pass the call
/// on, refuse anything after it, and turn a reset into a Cancel.
async fn read_peer_call(state: Arc<State>, send: SendStream, recv: RecvStream) {
    // Resolves when the caller stops reading (it cancelled), or once our reply is finished and
    // acknowledged.
    let mut stopped = Some(Box::pin(send.stopped()));
    let mut frames = Frames::new(recv);
    let frame = match frames.next(&state).await {
        Read::Frame(frame) => frame,
        Read::End | Read::Reset | Read::Failed => return,
    };
    if kind_of(&frame) != Some(FrameKind::Call) {
        // Only a Call opens a bidirectional stream: a stray Reply, Ack, Error or Cancel here
        // would leave the stream open waiting for an answer that never comes, so refuse it
        // both ways at once.
        tracing::debug!("refused a stream that did not start with a call");
        let _ = frames.recv.stop(REFUSED);
        let mut send = send;
        let _ = send.reset(REFUSED);
        return;
    }
    let after = frames.after();
    let refusal = matches!(after, After::More).then(|| frames.refuse_extra());
    let id = call_id_of(&frame);
    // While the request half may still carry something, this task keeps a handle on the
    // stream to finish it (or refuse what came) once the call is answered.
    let mut mine = None;
    if let Some(call) = id {
        let ended = matches!(after, After::Ended);
        let stream = Arc::new(tokio::sync::Mutex::new(CallStream::new(
            send, ended, refusal,
        )));
        if matches!(after, After::Unknown) {
            mine = Some(Arc::clone(&stream));
        }
        // A copy of the call on this connection takes over its answer; the earlier stream,
        // dropped, finishes unanswered.
        lock(&state.theirs).insert(call, stream);
    }
    match state.deliver(frame).await {
        Delivered::Done => {}
        Delivered::Gone => return,
        Delivered::Handler(mut handler) => {
            // Run the handler on this task, the stream's own: no spawn per call. Most finish
            // at once; only one that waits needs watching for the caller's STOP_SENDING (a
            // lock and a registration in quinn per call).
            if futures::poll!(&mut handler).is_ready() {
                stopped = None;
            } else if let Some(mut stop) = stopped.take() {
                // A STOP_SENDING from the caller is its Cancel: drop the handler.
                tokio::select! {
                    // Answered: a later STOP_SENDING no longer matters, so stop watching for
                    // one (it would only wake this task once more).
                    () = &mut handler => drop(stop),
                    why = &mut stop => {
                        if let Ok(Some(_)) = why {
                            if let Some(call) = id {
                                lock(&state.theirs).remove(&call);
                            }
                            return;
                        }
                        handler.await;
                    }
                }
            }
        }
    }
    // What followed the call, when it was not known as the call came: the request half's end,
    // or the start of more, of which no more than a header is read.
    let after = match after {
        After::Unknown => frames.after_call(state.limits.frame_timeout).await,
        known => known,
    };
    if let Some(stream) = mine.take() {
        let refusal = matches!(after, After::More).then(|| frames.refuse_extra());
        stream.lock().await.request_ended(refusal).await;
    }
    match after {
        After::Ended | After::More => {}
        After::Reset => {
            if let Some(call) = id {
                if let Delivered::Handler(h) = state.deliver(cancel_frame(call)).await {
                    h.await;
                }
            }
            return;
        }
        After::Failed | After::Unknown => return,
    }
    // The request is all read; a handler still running elsewhere (delivered before the switch
    // to push mode) is cancelled through the connection if the caller stops reading.
    if let (Some(call), Some(stop)) = (id, stopped) {
        if let Ok(Some(_)) = stop.await {
            lock(&state.theirs).remove(&call);
            state.deliver(cancel_frame(call)).await;
        }
    }
}

/// Frames on a stream whose send half, if any, is not ours to answer on: one-way calls and
/// notices (uni streams), and the replies to our own calls.
async fn read_frames(state: Arc<State>, recv: RecvStream) {
    let mut frames = Frames::new(recv);
    // Read to the end of the stream even after the reply, so the stream closes cleanly instead
    // of with the STOP_SENDING that means "cancelled".
    while let Read::Frame(frame) = frames.next(&state).await {
        match state.deliver(frame).await {
            Delivered::Done => {}
            // A one-way call: run it here, on its stream's task.
            Delivered::Handler(handler) => handler.await,
            Delivered::Gone => break,
        }
    }
}

#[derive(Debug)]
struct Tx(Arc<State>);

impl Drop for Tx {
    /// The engine holds the sending half for as long as the connection is in use: once it
    /// lets go (a connection that closed, or a handshake that failed), nothing more will be
    /// sent or answered, so the connection closes rather than lingering until its idle
    /// timeout, which keep-alives would postpone forever.
    fn drop(&mut self) {
        self.0.close();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLink")
            .field("remote", &self.conn.remote_address())
            .field("max_frame", &self.limits.max_frame)
            .field("frame_timeout", &self.limits.frame_timeout)
            .finish_non_exhaustive()
    }
}

/// Where a frame goes, decided before any waiting, so that each boxed future holds only the
/// state of its own way (the frames of a call cross here twice).
enum Route {
    /// The handshake message, on the handshake stream.
    Handshake(SendStream),
    /// A call of ours: a new bidirectional stream.
    Call,
    /// The cancel of a call of ours: nothing to send (see `route`).
    Cancel,
    /// An ack (`last == false`), reply or error, on the stream of the peer's call.
    Answer { stream: Shared, last: bool },
    /// Anything else: a unidirectional stream of its own.
    Uni,
}

impl Tx {
    fn route(&self, bytes: &[u8]) -> Route {
        let state = &self.0;
        // After the handshake, skip the lock: every frame passes here.
        if !state.handshake_sent.load(Ordering::Acquire) {
            if let Some(control) = lock(&state.control).take() {
                state.handshake_sent.store(true, Ordering::Release);
                return Route::Handshake(control);
            }
        }
        let id = call_id_of(bytes).unwrap_or(0);
        match kind_of(bytes) {
            Some(FrameKind::Call) => Route::Call,
            // The caller's reader went with the call, and dropping it dropped the receive half,
            // which sends STOP_SENDING; the peer turns that into a Cancel for the handler.
            Some(FrameKind::Cancel) => Route::Cancel,
            Some(k) if k.is_answer() => {
                let last = k != FrameKind::Ack;
                let stream = if last {
                    lock(&state.theirs).remove(&id)
                } else {
                    lock(&state.theirs).get(&id).cloned()
                };
                match stream {
                    Some(stream) => Route::Answer { stream, last },
                    // An answer with no stream (a notice about a malformed frame, or a call
                    // whose stream is gone): send it on a stream of its own.
                    None => Route::Uni,
                }
            }
            _ => Route::Uni,
        }
    }

    /// Sends a frame that is not a call.
    fn send_other(&self, route: Route, bytes: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        match route {
            Route::Handshake(control) => Box::pin(self.handshake(control, bytes)),
            Route::Cancel => Box::pin(async { Ok(()) }),
            Route::Answer { stream, last } => Box::pin(Self::answer(stream, last, bytes)),
            Route::Uni => Box::pin(self.uni(bytes)),
            // A call sent with `send` rather than `send_call` has no caller polling its reply:
            // read it on a task of its own.
            Route::Call => Box::pin(async move {
                tokio::spawn(self.call(bytes).await?);
                Ok(())
            }),
        }
    }

    async fn answer(stream: Shared, last: bool, bytes: Bytes) -> Result<(), TransportError> {
        // The reply to a call without an ack holds the only handle: no lock to take.
        let mut send = match Arc::try_unwrap(stream) {
            Ok(only) => Exclusive::Owned(only.into_inner()),
            Err(shared) => Exclusive::Locked(shared.lock_owned().await),
        };
        send.answer(bytes, last).await
    }

    /// The handshake message: length-prefixed on the handshake stream.
    async fn handshake(&self, mut control: SendStream, bytes: Bytes) -> Result<(), TransportError> {
        let len = u32::try_from(bytes.len()).map_err(|_| TransportError::FrameTooLarge {
            size: bytes.len(),
            limit: MAX_HANDSHAKE,
        })?;
        control
            .write_all(&len.to_be_bytes())
            .await
            .map_err(closed)?;
        control.write_chunk(bytes).await.map_err(closed)?;
        let _ = control.finish();
        if self.0.accepting {
            let conn = self.0.conn.clone();
            *lock(&self.0.handshake_delivered) = Some(Box::pin(async move {
                conn.closed().await;
            }));
        }
        Ok(())
    }

    /// A call: a new bidirectional stream, the request with its FIN, and the reading of the
    /// reply for the caller (see the module's documentation).
    async fn call(&self, bytes: Bytes) -> Result<ReplyReader, TransportError> {
        let state = &self.0;
        let (mut send, recv) = state.conn.open_bi().await.map_err(closed)?;
        match send.write_chunk(bytes).await {
            // The peer stopped reading: it refused the frame (too large) and answers with an
            // error on this stream, which the reader delivers.
            Ok(()) | Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(closed(e)),
        }
        // Cancelling is done on the receive half.
        let _ = send.finish();
        Ok(Box::pin(read_frames(Arc::clone(state), recv)))
    }

    async fn uni(&self, bytes: Bytes) -> Result<(), TransportError> {
        let mut send = self.0.conn.open_uni().await.map_err(closed)?;
        send.write_chunk(bytes).await.map_err(closed)?;
        let _ = send.finish();
        Ok(())
    }
}

impl LinkTx for Tx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        let buf = courier::transport::heap_buffer(size_hint);
        Box::pin(async move { Ok(buf) })
    }

    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        Some(courier::transport::heap_buffer(size_hint))
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        match courier::transport::take_heap_buffer(message, "QUIC") {
            Ok(buf) => {
                let route = self.route(&buf);
                self.send_other(route, buf.freeze())
            }
            Err(e) => Box::pin(async { Err(e) }),
        }
    }

    fn close(&self) {
        self.0.close();
    }

    fn goodbye(&self, _goodbye: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        self.0.goodbye();
        Box::pin(async { Ok(()) })
    }

    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        let route = self.route(&frame);
        self.send_other(route, frame)
    }

    fn send_call_shared(
        &self,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        match self.route(&frame) {
            Route::Call => Box::pin(async move { self.call(frame).await.map(Some) }),
            other => {
                let sent = self.send_other(other, frame);
                Box::pin(async move { sent.await.map(|()| None) })
            }
        }
    }

    fn send_call(
        &self,
        message: Box<dyn FrameBuf>,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        let buf = match courier::transport::take_heap_buffer(message, "QUIC") {
            Ok(buf) => buf.freeze(),
            Err(e) => return Box::pin(async { Err(e) }),
        };
        match self.route(&buf) {
            Route::Call => Box::pin(async move { self.call(buf).await.map(Some) }),
            other => {
                let sent = self.send_other(other, buf);
                Box::pin(async move { sent.await.map(|()| None) })
            }
        }
    }
}

struct Rx {
    frames: mpsc::Receiver<Bytes>,
    /// Whether `recv` has handed over the peer's goodbye already.
    said_goodbye: bool,
    conn: Connection,
    max_frame: usize,
    state: Arc<State>,
}

impl std::fmt::Debug for Rx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicRx")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move {
            tokio::select! {
                biased;
                frame = self.frames.recv() => Ok(frame),
                reason = self.conn.closed() => {
                    let (why, goodbye) = close_reason(&reason);
                    if goodbye && !self.said_goodbye {
                        // Once: the goodbye, then the end.
                        self.said_goodbye = true;
                        return Ok(Some(courier::wire::goodbye()));
                    }
                    match reason {
                        quinn::ConnectionError::LocallyClosed
                        | quinn::ConnectionError::ApplicationClosed(_) => Ok(None),
                        _ => Err(TransportError::Other(why)),
                    }
                }
            }
        })
    }

    fn frame_limit(&self) -> Option<usize> {
        Some(self.max_frame)
    }

    fn start(&mut self, sink: FrameSink) -> bool {
        // The handshake succeeded: a later close need not wait for the client.
        lock(&self.state.handshake_delivered).take();
        let (_, mut frames) = mpsc::channel(1);
        std::mem::swap(&mut frames, &mut self.frames);
        let conn = self.conn.clone();
        let _ = self.state.sink.set(sink.clone());
        // Frames queued before the switch (or by a reader that looked just before it) still
        // arrive, in order, through the queue.
        let forward = sink.clone();
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                if let Some(handler) = forward.deliver(frame) {
                    tokio::spawn(handler);
                }
            }
        });
        tokio::spawn(async move {
            let (reason, goodbye) = close_reason(&conn.closed().await);
            if goodbye {
                if let Some(work) = sink.deliver(courier::wire::goodbye()) {
                    work.await;
                }
            }
            sink.close(reason);
        });
        true
    }
}
