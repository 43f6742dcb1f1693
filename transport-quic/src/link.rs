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
//! Memory is bounded twice over: every frame is checked against the frame size limit before it
//! is read, and a per-connection byte budget is taken before its payload is read and given back
//! when the engine drops the frame, so a peer that opens many streams at once waits on QUIC flow
//! control instead of growing this side's memory. Frames of up to 4 KiB that arrived whole are
//! not counted: the concurrent-stream limit bounds them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Bytes, BytesMut};
use courier::transport::{FrameBuf, FrameSink, Link, LinkRx, LinkTx, ReplyReader};
use courier::wire::{FrameKind, HEADER_LEN};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Frames queued between the connection's readers and the engine.
const QUEUE_DEPTH: usize = 256;
/// Largest handshake message accepted.
const MAX_HANDSHAKE: usize = 1024;
/// Stream error code for a frame refused as too large.
const REFUSED: VarInt = VarInt::from_u32(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Shared = Arc<tokio::sync::Mutex<SendStream>>;

/// A peer call's send half, owned outright or under its lock.
enum Exclusive {
    Owned(SendStream),
    Locked(tokio::sync::OwnedMutexGuard<SendStream>),
}

impl std::ops::Deref for Exclusive {
    type Target = SendStream;
    fn deref(&self) -> &SendStream {
        match self {
            Exclusive::Owned(s) => s,
            Exclusive::Locked(g) => g,
        }
    }
}

impl std::ops::DerefMut for Exclusive {
    fn deref_mut(&mut self) -> &mut SendStream {
        match self {
            Exclusive::Owned(s) => s,
            Exclusive::Locked(g) => g,
        }
    }
}

struct State {
    conn: Connection,
    max_frame: usize,
    budget: Arc<Semaphore>,
    budget_bytes: usize,
    incoming: mpsc::Sender<Bytes>,
    /// Set once the handshake is done: frames then go straight to the connection.
    sink: OnceLock<FrameSink>,
    /// The handshake stream's send half, until the one handshake message is sent.
    control: Mutex<Option<SendStream>>,
    /// Set once the handshake message went out on `control`.
    handshake_sent: AtomicBool,
    /// Send halves of the peer's calls, waiting for their ack or reply.
    theirs: Mutex<HashMap<u64, Shared>>,
}

fn closed(e: impl std::fmt::Display) -> TransportError {
    TransportError::Other(format!("QUIC: {e}"))
}

/// Turns a finished QUIC connection into a link. `control` is the handshake stream for the
/// connecting side; the accepting side takes the first stream the peer opens.
pub(crate) fn link(
    conn: Connection,
    control: Option<(SendStream, RecvStream)>,
    max_frame: usize,
    budget_bytes: usize,
) -> Link {
    let (incoming, rx) = mpsc::channel(QUEUE_DEPTH);
    let budget_bytes = budget_bytes.max(max_frame);
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
        max_frame,
        budget: Arc::new(Semaphore::new(budget_bytes)),
        budget_bytes,
        incoming,
        sink: OnceLock::new(),
        control: Mutex::new(control_send),
        handshake_sent: AtomicBool::new(false),
        theirs: Mutex::new(HashMap::new()),
    });
    tokio::spawn(accept_streams(Arc::clone(&state), control_recv));
    Link {
        tx: Box::new(Tx(Arc::clone(&state))),
        rx: Box::new(Rx {
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
    if let Some(recv) = control {
        // Connecting side: the peer's welcome comes back on our handshake stream.
        tokio::spawn(read_handshake(Arc::clone(&state), recv));
    } else {
        // Accepting side: the peer's first stream carries its hello.
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                *lock(&state.control) = Some(send);
                tokio::spawn(read_handshake(Arc::clone(&state), recv));
            }
            Err(_) => return,
        }
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
            None => match self.incoming.send(frame).await {
                Ok(()) => Delivered::Done,
                Err(_) => Delivered::Gone,
            },
        }
    }
}

async fn read_handshake(state: Arc<State>, mut recv: RecvStream) {
    let mut len = [0u8; 4];
    if recv.read_exact(&mut len).await.is_err() {
        return;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HANDSHAKE {
        state.conn.close(REFUSED, b"handshake message too large");
        return;
    }
    let mut message = vec![0u8; len];
    if recv.read_exact(&mut message).await.is_ok() {
        let _ = state.deliver(Bytes::from(message)).await;
    }
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

/// The bytes of one frame, holding its share of the connection's budget until dropped.
struct Budgeted {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads whole frames off one stream.
///
/// Reading takes quinn's chunks as they are (`read_chunk`), without copying: a small frame
/// that arrived in one packet is delivered as a slice of that packet's buffer. A frame split
/// across chunks is gathered into a buffer of its exact size; a large one is read straight
/// into it, many packets per read.
struct Frames {
    recv: RecvStream,
    /// Bytes read and not yet framed.
    pending: Bytes,
}

/// Frames up to this size that have already arrived are not counted against the receive
/// budget: the stream limit bounds them (a frame per stream at a time, so at most
/// `max_concurrent_calls` × 4 KiB per direction), and counting them cost a contended semaphore
/// and an allocation per frame.
const UNBUDGETED: usize = 4096;

/// Above this many missing bytes, a frame's rest is read with `read_exact` into its buffer
/// rather than chunk by chunk.
const READ_EXACT_ABOVE: usize = 4096;

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

    /// Gathers a frame of `total` bytes whose start is in `pending`. `Err(Ok(bytes))` if the
    /// stream ended first, with what came.
    async fn gather(&mut self, total: usize) -> Result<Bytes, Result<Bytes, Read>> {
        let mut frame = BytesMut::with_capacity(total);
        frame.extend_from_slice(&std::mem::take(&mut self.pending));
        let have = frame.len();
        if total - have > READ_EXACT_ABOVE {
            frame.resize(total, 0);
            return match self.recv.read_exact(&mut frame[have..]).await {
                Ok(()) => Ok(frame.freeze()),
                Err(quinn::ReadExactError::FinishedEarly(n)) => {
                    frame.truncate(have + n);
                    Err(Ok(frame.freeze()))
                }
                Err(quinn::ReadExactError::ReadError(e)) => Err(Err(read_error(e))),
            };
        }
        while frame.len() < total {
            // At most the rest of this frame: what follows stays in quinn for the next one.
            match self.recv.read_chunk(total - frame.len(), true).await {
                Ok(Some(chunk)) => frame.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(Ok(frame.freeze())),
                Err(e) => return Err(Err(read_error(e))),
            }
        }
        Ok(frame.freeze())
    }

    async fn next(&mut self, state: &State) -> Read {
        match self.fill_pending(HEADER_LEN).await {
            Ok(true) => {}
            // A clean end between frames, or a truncated header, which the engine reports.
            Ok(false) if self.pending.is_empty() => return Read::End,
            Ok(false) => return Read::Frame(std::mem::take(&mut self.pending)),
            Err(read) => return read,
        }
        let p = &self.pending;
        let declared = u32::from_be_bytes([p[24], p[25], p[26], p[27]]) as usize;
        if HEADER_LEN + declared > state.max_frame {
            // Refuse to read it: the engine sees the header alone and reports the frame as too
            // large against its call; the stream's sender is told to stop.
            let _ = self.recv.stop(REFUSED);
            let header = self.pending.split_to(HEADER_LEN);
            self.pending = Bytes::new();
            return Read::Frame(header);
        }
        let total = HEADER_LEN + declared;
        if total <= UNBUDGETED && self.pending.len() >= total {
            return Read::Frame(self.pending.split_to(total));
        }
        let Ok(permit) = Arc::clone(&state.budget)
            .acquire_many_owned(u32::try_from(total).unwrap_or(u32::MAX))
            .await
        else {
            return Read::Failed;
        };
        let frame = if self.pending.len() >= total {
            self.pending.split_to(total)
        } else {
            match self.gather(total).await {
                Ok(frame) => frame,
                // Truncated: hand over what came; the engine reports the length mismatch.
                Err(Ok(partial)) => return Read::Frame(partial),
                Err(Err(read)) => return read,
            }
        };
        Read::Frame(Bytes::from_owner(Budgeted {
            bytes: frame,
            _permit: permit,
        }))
    }
}

fn call_id(frame: &[u8]) -> Option<u64> {
    let mut id = [0u8; 8];
    id.copy_from_slice(frame.get(8..16)?);
    Some(u64::from_be_bytes(id))
}

fn cancel_frame(id: u64) -> Bytes {
    let header = courier::wire::Header::new(
        FrameKind::Cancel,
        id,
        courier::InterfaceId::new(0),
        courier::MethodId::new(0),
    );
    Bytes::copy_from_slice(&header.to_bytes())
}

/// A stream the peer opened for a call: register its send half for the reply, pass the frames
/// on, and turn a reset into a Cancel.
async fn read_peer_call(state: Arc<State>, send: SendStream, recv: RecvStream) {
    // Resolves when the caller stops reading (it cancelled), or once our reply is finished and
    // acknowledged.
    let mut stopped = Some(Box::pin(send.stopped()));
    let mut send = Some(send);
    let mut id = None;
    let mut frames = Frames::new(recv);
    loop {
        match frames.next(&state).await {
            Read::Frame(frame) => {
                if let Some(send) = send.take() {
                    if let Some(call) = call_id(&frame) {
                        lock(&state.theirs).insert(call, Arc::new(tokio::sync::Mutex::new(send)));
                        id = Some(call);
                    }
                }
                match state.deliver(frame).await {
                    Delivered::Done => {}
                    Delivered::Gone => return,
                    Delivered::Handler(mut handler) => {
                        // Run the handler on this task, the stream's own: no spawn per call.
                        // Most finish at once; only one that waits needs watching for the
                        // caller's STOP_SENDING (a lock and a registration in quinn per call).
                        if futures::poll!(&mut handler).is_ready() {
                            stopped = None;
                            continue;
                        }
                        // A STOP_SENDING from the caller is its Cancel: drop the handler.
                        let Some(mut stop) = stopped.take() else {
                            handler.await;
                            continue;
                        };
                        tokio::select! {
                            // Answered: a later STOP_SENDING no longer matters, so stop
                            // watching for one (it would only wake this task once more).
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
            Read::End => break,
            Read::Reset => {
                if let Some(call) = id {
                    if let Delivered::Handler(h) = state.deliver(cancel_frame(call)).await {
                        h.await;
                    }
                }
                return;
            }
            Read::Failed => return,
        }
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

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLink")
            .field("remote", &self.conn.remote_address())
            .field("max_frame", &self.max_frame)
            .field("budget_bytes", &self.budget_bytes)
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
        let id = call_id(bytes).unwrap_or(0);
        match bytes.get(1).copied() {
            Some(k) if k == FrameKind::Call as u8 => Route::Call,
            // The caller's reader went with the call, and dropping it dropped the receive half,
            // which sends STOP_SENDING; the peer turns that into a Cancel for the handler.
            Some(k) if k == FrameKind::Cancel as u8 => Route::Cancel,
            Some(k)
                if k == FrameKind::Ack as u8
                    || k == FrameKind::Reply as u8
                    || k == FrameKind::Error as u8 =>
            {
                let last = k != FrameKind::Ack as u8;
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
            Route::Handshake(control) => Box::pin(Self::handshake(control, bytes)),
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
        send.write_chunk(bytes).await.map_err(closed)?;
        if last {
            let _ = send.finish();
        }
        Ok(())
    }

    /// The handshake message: length-prefixed on the handshake stream.
    async fn handshake(mut control: SendStream, bytes: Bytes) -> Result<(), TransportError> {
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
        self.0.conn.close(VarInt::from_u32(0), b"closed");
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
                reason = self.conn.closed() => match reason {
                    quinn::ConnectionError::LocallyClosed
                    | quinn::ConnectionError::ApplicationClosed(_) => Ok(None),
                    other => Err(TransportError::Other(format!("QUIC connection lost: {other}"))),
                },
            }
        })
    }

    fn frame_limit(&self) -> Option<usize> {
        Some(self.max_frame)
    }

    fn start(&mut self, sink: FrameSink) -> bool {
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
            let reason = match conn.closed().await {
                quinn::ConnectionError::LocallyClosed => "closed by this side".to_owned(),
                quinn::ConnectionError::ApplicationClosed(_) => {
                    "the peer closed the connection".to_owned()
                }
                other => format!("QUIC connection lost: {other}"),
            };
            sink.close(reason);
        });
        true
    }
}
