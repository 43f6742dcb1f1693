//! The connection engine: one per link, on both sides.
//!
//! Files: this one holds the connection's state and the sending of frames; [`inbound`] the
//! frames from the peer (routing answers, admitting and running calls); [`outbound`] the calls
//! this side makes over the link alone (a server calling a client back); [`handshake`] the
//! hello and welcome. What outlives a link (the client's calls across reconnects, the server's
//! reply cache) is in `courier_proto::session` as state machines, and driven from here and from
//! `crate::client::session`.
//!
//! A connection keeps a call table for the calls this side makes (keyed by call id, each waiting
//! on a oneshot for its reply) and a handler table for the calls the peer makes (keyed by the
//! peer's call id, each a spawned task that can be aborted). Either side can call and serve on
//! the same connection: the two tables are independent, because each side numbers its own calls.
//!
//! One reader task per connection takes frames off the link in order and never blocks on
//! anything the peer controls: replies go to their waiting callers, calls are decoded and spawned,
//! and anything that needs a frame sent back is done by a task of its own, bounded in number.
//!
//! Back-pressure, never unbounded queues: callers wait for one of `max_in_flight` slots; the
//! peer's calls beyond `max_handlers` are refused with `Overloaded`; the link's own buffers are
//! bounded and `send` waits for room.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

pub(crate) mod handshake;
mod inbound;
mod outbound;
pub(crate) mod served;

pub(crate) use inbound::error_frame;
pub(crate) use outbound::{driven, CallSlot};
pub(crate) use served::Served;

use crate::budget::{Budget, Taken};
use crate::error::{RpcError, TransportError};
use crate::handler::HandlerFuture;
use crate::ids::{InterfaceId, MethodId};
use crate::options::Limits;
use crate::peer::Peer;
use crate::sync::lock;
use crate::transport::{FrameBuf, Link, LinkTx, TrySend};
use crate::wire::{ErrorPayload, FrameKind, Header, HEADER_LEN};
use courier_proto::handlers::HandlerTable;
use inbound::{read_loop, RunningHandler};
use outbound::PendingCall;

/// How many handlers may run one inside another on one thread (see [`Shared::run_here`]).
const MAX_INLINE_DEPTH: u32 = 16;

/// Routes a connection's incoming calls to their handlers: a server's registry with the codec
/// the connection's handshake chose ([`dispatch`](crate::dispatch) implements it).
pub(crate) trait Router: Send + Sync + 'static {
    /// The handler of `call`, or why the call is refused.
    fn dispatch(&self, call: RawCall<'_>) -> Result<HandlerFuture, RpcError>;

    /// The service's and the method's names, where they are known.
    fn names(
        &self,
        interface: InterfaceId,
        method: MethodId,
    ) -> (Option<&'static str>, Option<&'static str>);
}

/// An incoming call as the engine hands it to its [`Router`]: the header, the arguments, and
/// what the handler's [`Context`](crate::Context) is made of.
#[derive(Debug)]
pub(crate) struct RawCall<'a> {
    pub(crate) header: &'a Header,
    pub(crate) payload: &'a [u8],
    pub(crate) link: &'a Arc<Shared>,
    pub(crate) deadline: Option<tokio::time::Instant>,
    pub(crate) metadata: crate::metadata::Metadata,
}

/// How long a last frame before a close (a goodbye, a refusal before closing) may take to
/// send: a peer that does not read must not hold the close up.
pub(crate) const LAST_WORDS: Duration = Duration::from_secs(1);

/// Longest error message put on the wire; the rest is cut so error frames stay small.
const MAX_ERROR_MESSAGE: usize = 1024;

/// A handler ready to run, returned by [`Shared::on_frame`]: the caller awaits it on its own
/// task or spawns it. Dropping it (or aborting it through the handler table) drops the handler.
pub(crate) type Work = BoxFuture<'static, ()>;

/// A reply frame (its parsed header and the whole frame), or why none will come.
pub(crate) type ReplyResult = Result<(Header, Bytes), RpcError>;

/// State shared by the reader, the callers and the handlers of one connection.
pub(crate) struct Shared {
    tx: Box<dyn LinkTx>,
    peer: Peer,
    codec: String,
    limits: Limits,
    runtime: Handle,
    router: Option<Arc<dyn Router>>,
    next_call_id: AtomicU64,
    calls: Mutex<HashMap<u64, PendingCall>>,
    handlers: Mutex<HandlerTable<RunningHandler>>,
    /// On a server: how many of the client's calls run on this link (their entries are in the
    /// client's session).
    served_running: AtomicUsize,
    /// Readers waiting for a place in the handler table, and their wake-up: a handler that
    /// ends notifies only when some wait.
    slot_waiting: AtomicUsize,
    slot_freed: Notify,
    /// Bytes of the frames of running handlers (`max_call_bytes`).
    call_bytes: Arc<Budget>,
    /// The same, for all the connections of a server (`max_server_call_bytes`).
    server_call_bytes: Option<Arc<Budget>>,
    in_flight: Arc<Budget>,
    /// Callback deliveries pending on this connection (`Limits::max_callback_deliveries`).
    pub(crate) callback_deliveries: Arc<Budget>,
    /// Bounds the tasks that only send a frame back ([`Shared::send_aside`]: errors for refused
    /// or malformed frames, cached outcomes for copies).
    notices: Arc<Semaphore>,
    closed: AtomicBool,
    close_reason: Mutex<String>,
    shutdown: Notify,
    /// Held while the connection is open and dropped when it closes: the server's count of
    /// connections (see `Limits::max_connections`).
    admission: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// On a server: the session of the client on the other end, which outlives this link.
    served: Option<Served>,
    /// On a client: the session this link serves, and the link's generation in it. Answers to
    /// the session's calls go there, and so does the news that the link closed.
    session: Option<(Weak<dyn SessionHooks>, u64)>,
}

impl crate::transport::Deliver for Shared {
    fn deliver(self: Arc<Self>, frame: Bytes) -> Option<BoxFuture<'static, ()>> {
        self.on_frame(frame)
    }

    fn close(&self, reason: String) {
        Shared::close(self, reason);
    }

    fn is_closed(&self) -> bool {
        Shared::is_closed(self)
    }

    fn awaits(&self, call_id: u64) -> bool {
        if self.is_closed() {
            return false;
        }
        if lock(&self.calls).contains_key(&call_id) {
            return true;
        }
        self.client_session().is_some_and(|s| s.awaits(call_id))
    }

    fn try_push(self: Arc<Self>, frame: Bytes) -> Result<(), Bytes> {
        if self.waits_for_room(&frame) {
            return Err(frame);
        }
        if let Some(work) = self.on_frame(frame) {
            self.run_here(work);
        }
        Ok(())
    }

    fn push_waiting(self: Arc<Self>, frame: Bytes) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Some(room) = self.wait_room(frame.len()).await else {
                return;
            };
            if let Some(work) = self.on_frame_with(frame, Some(room)) {
                self.run_here(work);
            }
        })
    }
}

/// What a client's link tells the session it serves: the engine knows the client's session
/// only through this, so the engine does not depend on the client.
pub(crate) trait SessionHooks: Send + Sync + 'static {
    /// An answer (or a malformed one) to one of the session's calls.
    fn on_answer(&self, call_id: u64, answer: ReplyResult);
    /// The server acknowledged one of the session's calls.
    fn on_ack(&self, call_id: u64);
    /// The link of `generation` closed.
    fn link_closed(&self, generation: u64, reason: &str);
    /// The server said goodbye on the link of `generation`: it ended the session.
    fn server_goodbye(&self, generation: u64);
    /// Whether call `call_id` of the session still waits for its outcome.
    fn awaits(&self, call_id: u64) -> bool;
    /// The session itself, for code that knows its type (a handler calling back its server).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// Who a connection works for, beside its own calls and handlers.
pub(crate) enum Role {
    /// A server's link: the client's session on the server.
    Server(Served),
    /// A client's link: its session and the link's generation in it.
    Client(Weak<dyn SessionHooks>, u64),
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("codec", &self.codec)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A place among a caller's calls in flight, waited for within `deadline`; `None` inside the
/// error means the budget was closed (the connection or the client is gone). A count without
/// a lock (see [`Budget`]): tokio's semaphore would lock a mutex at every call's end.
pub(crate) async fn in_flight_slot(
    in_flight: &Arc<Budget>,
    deadline: Option<Instant>,
) -> Result<Result<Taken, ()>, RpcError> {
    if let Some(taken) = in_flight.try_take(1) {
        return Ok(Ok(taken));
    }
    let take = in_flight.take(1);
    let taken = match deadline {
        Some(d) => tokio::time::timeout_at(d, take)
            .await
            .map_err(|_| RpcError::DeadlineExceeded)?,
        None => take.await,
    };
    Ok(taken.ok_or(()))
}

/// Finishes a frame whose header and payload are written: refuses it past `limit`, else
/// writes the payload's length into the header.
pub(crate) fn seal(buf: &mut dyn FrameBuf, limit: usize) -> Result<(), RpcError> {
    let size = buf.written();
    let too_large = || RpcError::FrameTooLarge { size, limit };
    if size > limit {
        return Err(too_large());
    }
    let payload_len = u32::try_from(size - HEADER_LEN).map_err(|_| too_large())?;
    let (at, bytes) = crate::wire::payload_len_patch(payload_len);
    buf.patch(at, &bytes);
    Ok(())
}

/// The payload with its message cut to [`MAX_ERROR_MESSAGE`] bytes, so error frames stay small.
fn cut_message(mut payload: ErrorPayload) -> ErrorPayload {
    let mut cut = payload.message.len().min(MAX_ERROR_MESSAGE);
    while !payload.message.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.message.truncate(cut);
    payload
}

/// The deadline budget for the header: µs left, or `DeadlineExceeded` if none is.
pub(crate) fn budget(deadline: Option<Instant>) -> Result<u32, RpcError> {
    let Some(deadline) = deadline else {
        return Ok(0);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(RpcError::DeadlineExceeded);
    }
    // Round up so a sub-microsecond budget is not mistaken for "no deadline"; a budget too
    // long for the field is sent as "none" and enforced by the caller alone.
    let micros = left.as_micros().max(1);
    Ok(u32::try_from(micros).unwrap_or(0))
}

impl Shared {
    /// Starts the engine over a link whose handshake is done.
    pub(crate) fn start(
        link: Link,
        codec: String,
        limits: Limits,
        router: Option<Arc<dyn Router>>,
        admission: Option<Box<dyn std::any::Any + Send>>,
        server_call_bytes: Option<Arc<Budget>>,
        role: Role,
    ) -> Arc<Shared> {
        let (served, session) = match role {
            Role::Server(served) => (Some(served), None),
            Role::Client(session, generation) => (None, Some((session, generation))),
        };
        let Link { tx, rx, peer } = link;
        let mut limits = limits;
        if let Some(limit) = rx.frame_limit() {
            limits.max_frame_size = limits.max_frame_size.min(limit);
        }
        let shared = Arc::new(Shared {
            tx,
            peer,
            codec,
            runtime: Handle::current(),
            router,
            next_call_id: AtomicU64::new(1),
            calls: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HandlerTable::new(limits.max_handlers)),
            served_running: AtomicUsize::new(0),
            slot_waiting: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            call_bytes: Budget::new(limits.call_bytes_budget()),
            server_call_bytes,
            in_flight: Budget::places(limits.max_in_flight),
            callback_deliveries: Budget::new(limits.max_callback_deliveries),
            notices: Arc::new(Semaphore::new(limits.max_handlers)),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
            shutdown: Notify::new(),
            admission: Mutex::new(admission),
            served,
            session,
            limits,
        });
        let weak: Weak<dyn crate::transport::Deliver> = Arc::downgrade(&shared) as Weak<Shared>;
        let sink = crate::transport::FrameSink::new(weak);
        let mut rx = rx;
        if rx.start(sink) {
            // The transport holds the connection only weakly; this task keeps it alive until
            // it closes, as the reader task does in pull mode.
            let keeper = Arc::clone(&shared);
            tokio::spawn(async move { keeper.closed().await });
        } else {
            tokio::spawn(read_loop(Arc::clone(&shared), rx));
        }
        shared
    }

    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Runs a handler here, once: one that completes on its first poll (most do) costs no
    /// task and no hand-off, LRPC's lesson. One that waits goes to a task of its own, which
    /// polls it again with its own waker.
    ///
    /// "Here" may be another runtime's thread (an in-process caller's): the handler runs
    /// inside this connection's runtime all the same, so what it spawns, and the timers it
    /// sets, belong to the server's runtime and end with it.
    ///
    /// A handler run here that calls in process runs the next handler here too, one stack
    /// frame deeper; past [`MAX_INLINE_DEPTH`] such handlers go to tasks of their own, so that
    /// calls that recurse through services cannot overflow the thread's stack.
    pub(crate) fn run_here(&self, mut work: Work) {
        thread_local! {
            static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        /// One level of [`DEPTH`], given back however the poll ends.
        struct Level(u32);
        impl Drop for Level {
            fn drop(&mut self) {
                DEPTH.with(|d| d.set(self.0));
            }
        }
        let depth = DEPTH.with(|d| d.get());
        if depth >= MAX_INLINE_DEPTH {
            self.runtime.spawn(work);
            return;
        }
        let finished = {
            DEPTH.with(|d| d.set(depth + 1));
            let _level = Level(depth);
            let _inside = self.runtime.enter();
            futures::FutureExt::now_or_never(&mut work).is_some()
        };
        if !finished {
            self.runtime.spawn(work);
        }
    }

    pub(crate) fn codec_name(&self) -> &str {
        &self.codec
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn lost(&self) -> RpcError {
        RpcError::ConnectionLost(lock(&self.close_reason).clone())
    }

    /// Resolves once the connection has closed.
    async fn closed(&self) {
        loop {
            let notified = self.shutdown.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Closes the connection from this side and stops the reader.
    pub(crate) fn shutdown(&self) {
        self.close("closed by this side".to_owned());
    }

    /// Fails every call in flight with `ConnectionLost`, stops the handlers that have someone to
    /// reply to, and closes the link.
    pub(crate) fn close(&self, reason: String) {
        let pending: Vec<PendingCall> = {
            let mut calls = lock(&self.calls);
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            *lock(&self.close_reason) = reason.clone();
            calls.drain().map(|(_, p)| p).collect()
        };
        tracing::debug!(peer = ?self.peer, %reason, "connection closed");
        for p in pending {
            let _ = p.reply.send(Err(RpcError::ConnectionLost(reason.clone())));
        }
        lock(&self.handlers).retain(|h| {
            if h.abort_on_close {
                h.abort.abort();
            }
            !h.abort_on_close
        });
        self.in_flight.close();
        self.call_bytes.close();
        self.tx.close();
        drop(lock(&self.admission).take());
        if let Some(served) = &self.served {
            served.link_closed(&self.runtime);
        }
        if let Some(session) = self.client_session() {
            session.link_closed(self.generation(), &reason);
        }
        // Wake the reader (pull mode) and the keeper (push mode), wherever they wait.
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
    }

    /// The limits this side applies to the connection.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The client session this link serves, if it is a client's link and the session lives.
    pub(crate) fn client_session(&self) -> Option<Arc<dyn SessionHooks>> {
        self.session.as_ref().and_then(|(s, _)| s.upgrade())
    }

    /// Whether this is the link of `generation` in its client session.
    pub(crate) fn generation_is(&self, generation: u64) -> bool {
        self.generation() == generation
    }

    /// Says goodbye (a release of every call id, [`wire::goodbye`](crate::wire::goodbye)),
    /// then closes: from a client, its session is over; from a server, it shuts down. Bounded
    /// in time: a peer that misses it keeps the session for its linger (server) or treats the
    /// close as a lost link (client).
    pub(crate) async fn say_goodbye(&self) {
        let bye = self.tx.goodbye(crate::wire::goodbye());
        let _ = tokio::time::timeout(LAST_WORDS, bye).await;
        self.shutdown();
    }

    /// [`Shared::say_goodbye`] from a task of its own.
    pub(crate) fn goodbye(self: &Arc<Self>) {
        let shared = Arc::clone(self);
        self.runtime
            .spawn(async move { shared.say_goodbye().await });
    }

    /// This link's generation in its client session (0 on a server).
    fn generation(&self) -> u64 {
        self.session.as_ref().map_or(0, |(_, g)| *g)
    }

    /// Sends a whole frame kept elsewhere too (a call kept for re-sending, a cached reply).
    pub(crate) async fn send_shared(&self, frame: Bytes) -> Result<(), RpcError> {
        let frame = match self.tx.try_send_shared(frame) {
            TrySend::Sent | TrySend::SentReading(_) => return Ok(()),
            TrySend::Wait(frame) => frame,
            TrySend::Failed(e) => return Err(self.transport_error(e)),
        };
        self.tx
            .send_shared(frame)
            .await
            .map_err(|e| self.transport_error(e))
    }

    /// Sends a call's whole frame kept for re-sending; see [`LinkTx::send_call`].
    pub(crate) async fn send_call_shared(
        &self,
        frame: Bytes,
    ) -> Result<Option<crate::transport::ReplyReader>, RpcError> {
        let frame = match self.tx.try_send_call_shared(frame) {
            TrySend::Sent => return Ok(None),
            TrySend::SentReading(reader) => return Ok(Some(reader)),
            TrySend::Wait(frame) => frame,
            TrySend::Failed(e) => return Err(self.transport_error(e)),
        };
        self.tx
            .send_call_shared(frame)
            .await
            .map_err(|e| self.transport_error(e))
    }

    /// Writes one frame: the header, then whatever `body` writes, then the payload length.
    pub(crate) async fn send_frame<F>(
        &self,
        header: Header,
        size_hint: usize,
        body: F,
    ) -> Result<(), RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        let buf = self.fill_frame(header, size_hint, body).await?;
        self.tx.send(buf).await.map_err(|e| self.transport_error(e))
    }

    /// The header, then whatever `body` writes, then the payload length, in a buffer from the
    /// transport, ready to send.
    async fn fill_frame<F>(
        &self,
        header: Header,
        size_hint: usize,
        body: F,
    ) -> Result<Box<dyn FrameBuf>, RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        let mut buf = match self.tx.try_buffer(HEADER_LEN + size_hint) {
            Some(buf) => buf,
            None => self.tx.buffer(HEADER_LEN + size_hint).await?,
        };
        header.encode(&mut buf);
        body(&mut *buf)?;
        seal(&mut *buf, self.limits.max_frame_size)?;
        Ok(buf)
    }

    fn transport_error(&self, e: TransportError) -> RpcError {
        match e {
            TransportError::Closed => self.lost(),
            other => RpcError::Transport(other),
        }
    }

    async fn send_error(&self, to: &Header, error: &RpcError) {
        self.send_notice(to.call_id, to.interface, to.method, error.to_payload())
            .await;
    }

    async fn send_notice(
        &self,
        call_id: u64,
        interface: InterfaceId,
        method: MethodId,
        payload: ErrorPayload,
    ) {
        let payload = cut_message(payload);
        let header = Header::new(FrameKind::Error, call_id, interface, method);
        let sent = self
            .send_frame(header, payload.encoded_len(), |buf| {
                payload.encode(buf);
                Ok(())
            })
            .await;
        if let Err(e) = sent {
            tracing::debug!(call_id, error = %e, "could not send an error frame");
        }
    }

    /// Sends an error frame from a task of its own, so the reader never waits on the link; see
    /// [`Shared::send_aside`].
    fn notify_peer(
        self: &Arc<Self>,
        call_id: u64,
        interface: InterfaceId,
        method: MethodId,
        payload: ErrorPayload,
    ) {
        let about = Header::new(FrameKind::Error, call_id, interface, method);
        self.send_aside(self.error_frame(&about, payload));
    }

    /// Sends a frame the reader produced (an error notice, a cached outcome for a copy of a
    /// call) from a task of its own, so the reader never waits on the link. The number of such
    /// tasks is bounded; past the bound the frame is dropped (and logged): a peer flooding us
    /// with bad frames or copies is not owed an answer to each. A frame still waiting for room
    /// on the link when the connection closes is dropped with it.
    pub(crate) fn send_aside(self: &Arc<Self>, frame: Bytes) {
        let Ok(permit) = Arc::clone(&self.notices).try_acquire_owned() else {
            tracing::warn!(peer = ?self.peer, "too many frames waiting to be sent aside; dropping one");
            return;
        };
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::select! {
                sent = shared.send_shared(frame) => {
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "could not send a frame");
                    }
                }
                () = shared.closed() => {}
            }
            drop(permit);
        });
    }

    /// Sends `frame` (bounded in time), then closes the connection with `reason`: a last
    /// answer that must not be lost to the close.
    pub(crate) fn send_then_close(self: &Arc<Self>, frame: Bytes, reason: &str) {
        let shared = Arc::clone(self);
        let reason = reason.to_owned();
        self.runtime.spawn(async move {
            let _ = tokio::time::timeout(LAST_WORDS, shared.send_shared(frame)).await;
            shared.close(reason);
        });
    }

    fn refuse(self: &Arc<Self>, to: &Header, error: RpcError) {
        if to.kind == FrameKind::OneWay {
            tracing::warn!(call_id = to.call_id, %error, "one-way call refused");
            return;
        }
        self.notify_peer(to.call_id, to.interface, to.method, error.to_payload());
    }
}
