//! The connection engine: one per link, on both sides.
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
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{AbortHandle, BoxFuture};
use futures::FutureExt;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::budget::{Budget, Taken};
use crate::context::Context;
use crate::dispatch::{HandlerFuture, Incoming, Router};
use crate::error::{HandshakeError, RpcError, TransportError};
use crate::ids::{InterfaceId, MethodDesc, MethodId};
use crate::options::Limits;
use crate::peer::Peer;
use crate::transport::{FrameBuf, Link, LinkRx, LinkTx, ReplyReader};
use crate::wire::{
    ErrorPayload, Flags, FrameError, FrameKind, FrameProblem, Header, Hello, Welcome,
    WelcomeStatus, HEADER_LEN, PROTOCOL_VERSION,
};

/// Longest error message put on the wire; the rest is cut so error frames stay small.
const MAX_ERROR_MESSAGE: usize = 1024;

/// A handler ready to run, returned by [`Shared::on_frame`]: the caller awaits it on its own
/// task or spawns it. Dropping it (or aborting it through the handler table) drops the handler.
pub(crate) type Work = BoxFuture<'static, ()>;

/// A reply frame (its parsed header and the whole frame), or why none will come.
pub(crate) type ReplyResult = Result<(Header, Bytes), RpcError>;

struct PendingCall {
    reply: oneshot::Sender<ReplyResult>,
    ack: Option<oneshot::Sender<()>>,
}

struct RunningHandler {
    abort: AbortHandle,
    /// This handler's place among the connection's handlers and call bytes; freed when it ends.
    _room: Room,
    /// One-way handlers run to completion even if the connection closes: nobody waits for
    /// them, and the caller may well have closed right after sending.
    abort_on_close: bool,
}

/// What a running handler holds beside its place in the handler table: for a frame larger
/// than [`SMALL_FRAME`], its bytes counted against the connection's `max_call_bytes` and the
/// server's `max_server_call_bytes`, so that what peers make the server hold while it works
/// (the arguments, and the result while it waits to be sent) is bounded per connection and in
/// all. Smaller frames are bounded well enough by `max_handlers`, and skipping them keeps the
/// shared counter off the path of small calls.
pub(crate) struct Room {
    _bytes: Option<(Taken, Option<Taken>)>,
}

/// Frames up to this size take no call bytes (see [`Room`]).
const SMALL_FRAME: usize = 4096;

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
    handlers: Mutex<HashMap<u64, RunningHandler>>,
    /// Readers waiting for a place in the handler table, and their wake-up: a handler that
    /// ends notifies only when some wait.
    slot_waiting: AtomicUsize,
    slot_freed: Notify,
    /// Bytes of the frames of running handlers (`max_call_bytes`).
    call_bytes: Arc<Budget>,
    /// The same, for all the connections of a server (`max_server_call_bytes`).
    server_call_bytes: Option<Arc<Budget>>,
    in_flight: Arc<Semaphore>,
    /// Bounds the tasks that only send a notice back (errors for refused or malformed frames).
    notices: Arc<Semaphore>,
    closed: AtomicBool,
    close_reason: Mutex<String>,
    shutdown: Notify,
    /// Held while the connection is open and dropped when it closes: the server's count of
    /// connections (see `Limits::max_connections`).
    admission: Mutex<Option<Box<dyn std::any::Any + Send>>>,
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

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The deadline budget for the header: µs left, or `DeadlineExceeded` if none is.
fn budget(deadline: Option<Instant>) -> Result<u32, RpcError> {
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
    ) -> Arc<Shared> {
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
            handlers: Mutex::new(HashMap::new()),
            slot_waiting: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            call_bytes: Budget::new(limits.call_bytes_budget()),
            server_call_bytes,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            notices: Arc::new(Semaphore::new(limits.max_handlers)),
            closed: AtomicBool::new(false),
            close_reason: Mutex::new(String::new()),
            shutdown: Notify::new(),
            admission: Mutex::new(admission),
            limits,
        });
        let sink = crate::transport::FrameSink {
            shared: Arc::downgrade(&shared),
        };
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
        lock(&self.handlers).retain(|_, h| {
            if h.abort_on_close {
                h.abort.abort();
            }
            !h.abort_on_close
        });
        self.in_flight.close();
        self.call_bytes.close();
        self.tx.close();
        drop(lock(&self.admission).take());
        // Wake the reader (pull mode) and the keeper (push mode), wherever they wait.
        self.shutdown.notify_waiters();
        self.shutdown.notify_one();
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
        let len = buf.written();
        if len > self.limits.max_frame_size {
            return Err(RpcError::FrameTooLarge {
                size: len,
                limit: self.limits.max_frame_size,
            });
        }
        let payload_len = u32::try_from(len - HEADER_LEN).map_err(|_| RpcError::FrameTooLarge {
            size: len,
            limit: self.limits.max_frame_size,
        })?;
        buf.patch(24, &payload_len.to_be_bytes());
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
        mut payload: ErrorPayload,
    ) {
        let mut cut = payload.message.len().min(MAX_ERROR_MESSAGE);
        while !payload.message.is_char_boundary(cut) {
            cut -= 1;
        }
        payload.message.truncate(cut);
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

    /// Sends an error frame from a task of its own, so the reader never waits on the link. The
    /// number of such tasks is bounded; past the bound the notice is dropped (and logged), since
    /// a peer flooding us with bad frames is not owed an answer to each. A notice still waiting
    /// for room on the link when the connection closes is dropped with it.
    fn notify_peer(
        self: &Arc<Self>,
        call_id: u64,
        interface: InterfaceId,
        method: MethodId,
        payload: ErrorPayload,
    ) {
        let Ok(permit) = Arc::clone(&self.notices).try_acquire_owned() else {
            tracing::warn!(call_id, message = %payload.message, "too many error notices pending; dropping one");
            return;
        };
        let shared = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::select! {
                () = shared.send_notice(call_id, interface, method, payload) => {}
                () = shared.closed() => {}
            }
            drop(permit);
        });
    }

    fn refuse(self: &Arc<Self>, to: &Header, error: RpcError) {
        if to.kind == FrameKind::OneWay {
            tracing::warn!(call_id = to.call_id, %error, "one-way call refused");
            return;
        }
        self.notify_peer(to.call_id, to.interface, to.method, error.to_payload());
    }

    /// Handles one frame from the reader.
    pub(crate) fn on_frame(self: &Arc<Self>, frame: Bytes) -> Option<Work> {
        self.on_frame_with(frame, None)
    }

    /// Handles one frame; a call runs in `room` if the reader already holds it (it waits for
    /// room before reading on, for one-way calls), else it takes free room or is refused.
    fn on_frame_with(self: &Arc<Self>, frame: Bytes, room: Option<Room>) -> Option<Work> {
        if frame.len() > self.limits.max_frame_size {
            let call_id = (frame.len() >= 16).then(|| {
                let mut id = [0u8; 8];
                id.copy_from_slice(&frame[8..16]);
                u64::from_be_bytes(id)
            });
            let problem = FrameProblem::TooLarge {
                len: frame.len(),
                limit: self.limits.max_frame_size,
            };
            self.on_bad_frame(&frame, FrameError { call_id, problem });
            return None;
        }
        let header = match Header::decode(&frame) {
            Ok(h) => h,
            Err(FrameError {
                call_id,
                problem: FrameProblem::LengthMismatch { declared, .. },
            }) if HEADER_LEN + declared as usize > self.limits.max_frame_size => {
                // A transport that refuses to read an oversized frame hands over its header
                // alone; report the size, not the missing bytes.
                let problem = FrameProblem::TooLarge {
                    len: HEADER_LEN + declared as usize,
                    limit: self.limits.max_frame_size,
                };
                self.on_bad_frame(&frame, FrameError { call_id, problem });
                return None;
            }
            Err(e) => {
                self.on_bad_frame(&frame, e);
                return None;
            }
        };
        match header.kind {
            FrameKind::Call | FrameKind::OneWay => return self.on_call(header, frame, room),
            FrameKind::Reply | FrameKind::Error => {
                let pending = lock(&self.calls).remove(&header.call_id);
                match pending {
                    Some(p) => {
                        let _ = p.reply.send(Ok((header, frame)));
                    }
                    None if header.kind == FrameKind::Error && header.call_id == 0 => {
                        let payload = ErrorPayload::decode(&frame[HEADER_LEN..]);
                        tracing::warn!(peer = ?self.peer, message = %payload.message, "peer reported a protocol error");
                    }
                    // The caller gave up (cancelled or timed out) before the reply came.
                    None => {}
                }
            }
            FrameKind::Ack => {
                if let Some(p) = lock(&self.calls).get_mut(&header.call_id) {
                    if let Some(ack) = p.ack.take() {
                        let _ = ack.send(());
                    }
                }
            }
            FrameKind::Cancel => {
                if let Some(h) = lock(&self.handlers).remove(&header.call_id) {
                    h.abort.abort();
                }
            }
        }
        None
    }

    /// A frame that could not be parsed: fail the call it belongs to, on whichever side that is,
    /// and keep the connection.
    fn on_bad_frame(self: &Arc<Self>, frame: &[u8], error: FrameError) {
        let kind = frame.get(1).copied();
        let is_response = matches!(kind, Some(3..=5)); // Ack, Reply, Error
        tracing::debug!(peer = ?self.peer, problem = %error.problem, "malformed frame");
        let rpc_error = RpcError::from(error.problem.clone());
        match error.call_id {
            Some(id) if is_response => {
                if let Some(p) = lock(&self.calls).remove(&id) {
                    let _ = p.reply.send(Err(rpc_error));
                }
            }
            Some(_) if kind == Some(FrameKind::Cancel as u8) => {}
            // Nothing ever answers a one-way call, not even a malformed one (once its header
            // is whole enough to say it is one).
            _ if kind == Some(FrameKind::OneWay as u8) && frame.len() >= HEADER_LEN => {}
            id => {
                let zero = InterfaceId::new(0);
                let payload = rpc_error.to_payload();
                self.notify_peer(id.unwrap_or(0), zero, MethodId::new(0), payload);
            }
        }
    }

    /// Room for a call whose frame is `len` bytes, if there is some now (the handler table's
    /// own limit is checked as the call goes in).
    fn take_room(&self, len: usize) -> Result<Room, RpcError> {
        if len <= SMALL_FRAME {
            return Ok(Room { _bytes: None });
        }
        let bytes = self.call_bytes.try_take(len).ok_or_else(|| {
            RpcError::Overloaded(format!(
                "the calls running on this connection already hold close to {} bytes",
                self.limits.call_bytes_budget()
            ))
        })?;
        let server_bytes = match &self.server_call_bytes {
            Some(server) => Some(server.try_take(len).ok_or_else(|| {
                RpcError::Overloaded(
                    "the calls running on this server hold as many bytes as it allows".to_owned(),
                )
            })?),
            None => None,
        };
        Ok(Room {
            _bytes: Some((bytes, server_bytes)),
        })
    }

    /// Waits for a place in the handler table and room for a call whose frame is `len` bytes;
    /// `None` once the connection has closed. Only the reader waits, so the place is still
    /// free when it inserts the call.
    async fn wait_room(&self, len: usize) -> Option<Room> {
        loop {
            let freed = self.slot_freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            // SeqCst against the load in `Deregister`, which follows the removal under the
            // table's lock: either this sees the free place, or that sees this waiter.
            self.slot_waiting.fetch_add(1, Ordering::SeqCst);
            let free = lock(&self.handlers).len() < self.limits.max_handlers;
            if free {
                self.slot_waiting.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            let closed = tokio::select! {
                () = freed => false,
                () = self.closed() => true,
            };
            self.slot_waiting.fetch_sub(1, Ordering::SeqCst);
            if closed {
                return None;
            }
        }
        if len <= SMALL_FRAME {
            return Some(Room { _bytes: None });
        }
        let bytes = self.call_bytes.take(len).await?;
        let server_bytes = match &self.server_call_bytes {
            Some(server) => Some(tokio::select! {
                taken = server.take(len) => taken?,
                () = self.closed() => return None,
            }),
            None => None,
        };
        Some(Room {
            _bytes: Some((bytes, server_bytes)),
        })
    }

    /// Whether the handler table has room for `header`'s call: not full, and its id not taken.
    fn room_for(
        &self,
        handlers: &HashMap<u64, RunningHandler>,
        header: &Header,
    ) -> Result<(), RpcError> {
        if handlers.len() >= self.limits.max_handlers {
            return Err(RpcError::Overloaded(format!(
                "{} calls already running on this connection",
                self.limits.max_handlers
            )));
        }
        if handlers.contains_key(&header.call_id) {
            return Err(RpcError::Protocol(format!(
                "call id {} is already running",
                header.call_id
            )));
        }
        Ok(())
    }

    fn on_call(self: &Arc<Self>, header: Header, frame: Bytes, room: Option<Room>) -> Option<Work> {
        if self.is_closed() {
            return None;
        }
        let deadline = (header.budget_micros != 0)
            .then(|| Instant::now() + Duration::from_micros(u64::from(header.budget_micros)));
        let Some(router) = &self.router else {
            let interface = header.interface;
            self.refuse(&header, RpcError::UnknownInterface { interface });
            return None;
        };
        let context = Context::new(Arc::clone(self), &header, deadline);
        // Refuse before decoding if there is no room, but decode without the table's lock:
        // every call on the connection takes it, from whichever thread its frame arrives on.
        let room = match room.map_or_else(|| self.take_room(frame.len()), Ok) {
            Ok(room) => room,
            Err(e) => {
                self.refuse(&header, e);
                return None;
            }
        };
        let free = self.room_for(&lock(&self.handlers), &header);
        if let Err(e) = free {
            self.refuse(&header, e);
            return None;
        }
        let incoming = Incoming {
            header: &header,
            payload: &frame[HEADER_LEN..],
            context: &context,
        };
        let future = match router.dispatch(incoming) {
            Ok(f) => f,
            Err(e) => {
                self.refuse(&header, e);
                return None;
            }
        };
        drop(frame);
        let (work, abort) =
            futures::future::abortable(run_handler(Arc::clone(self), header, future, deadline));
        // Look again as the entry goes in: other calls may have filled the table meanwhile.
        let mut handlers = lock(&self.handlers);
        if let Err(e) = self.room_for(&handlers, &header) {
            drop(handlers);
            self.refuse(&header, e);
            return None;
        }
        handlers.insert(
            header.call_id,
            RunningHandler {
                abort,
                _room: room,
                abort_on_close: header.kind == FrameKind::Call,
            },
        );
        drop(handlers);
        Some(Box::pin(async move {
            let _: Result<(), _> = work.await;
        }))
    }

    /// Registers a call in the table and sends it. The returned [`CallSlot`] resolves with the
    /// reply; dropping it before then cancels the call.
    pub(crate) async fn begin_call<F>(
        self: &Arc<Self>,
        method: &MethodDesc,
        deadline: Option<Instant>,
        flags: Flags,
        size_hint: usize,
        body: F,
    ) -> Result<CallSlot, RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        let acquire = Arc::clone(&self.in_flight).acquire_owned();
        let permit = match deadline {
            Some(d) => tokio::time::timeout_at(d, acquire)
                .await
                .map_err(|_| RpcError::DeadlineExceeded)?,
            None => acquire.await,
        }
        .map_err(|_| self.lost())?;
        let budget_micros = budget(deadline)?;
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply) = oneshot::channel();
        let (ack_tx, ack) = if flags.contains(Flags::ACK) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        {
            let mut calls = lock(&self.calls);
            // Checked under the table's lock: `close` drains the table under it, so a call
            // inserted after the drain would wait forever.
            if self.is_closed() {
                return Err(self.lost());
            }
            calls.insert(
                call_id,
                PendingCall {
                    reply: reply_tx,
                    ack: ack_tx,
                },
            );
        }
        let guard = CallGuard {
            shared: Arc::clone(self),
            call_id,
            interface: method.interface,
            method: method.method,
            cancel_on_drop: true,
            finished: false,
            _permit: permit,
        };
        let header = Header {
            flags,
            version: method.version,
            budget_micros,
            ..Header::new(FrameKind::Call, call_id, method.interface, method.method)
        };
        let buf = self.fill_frame(header, size_hint, body).await?;
        let reader = self
            .tx
            .send_call(buf)
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok(CallSlot {
            reply,
            ack,
            deadline,
            guard,
            reader,
        })
    }

    /// Sends a one-way call; resolves once the transport has taken it.
    pub(crate) async fn send_one_way<F>(
        &self,
        method: &MethodDesc,
        size_hint: usize,
        body: F,
    ) -> Result<(), RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        if self.is_closed() {
            return Err(self.lost());
        }
        // One-way calls take ids from the same sequence as the others: the server keys its
        // handlers by call id, so a shared id would refuse a one-way call while another runs.
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let header = Header {
            version: method.version,
            ..Header::new(FrameKind::OneWay, call_id, method.interface, method.method)
        };
        self.send_frame(header, size_hint, body).await
    }
}

/// Runs one handler: ack if asked, apply the deadline, catch a panic, send the outcome.
async fn run_handler(
    shared: Arc<Shared>,
    header: Header,
    future: HandlerFuture,
    deadline: Option<Instant>,
) {
    struct Deregister<'a>(&'a Shared, u64);
    impl Drop for Deregister<'_> {
        fn drop(&mut self) {
            lock(&self.0.handlers).remove(&self.1);
            if self.0.slot_waiting.load(Ordering::SeqCst) > 0 {
                self.0.slot_freed.notify_waiters();
            }
        }
    }
    let _deregister = Deregister(&shared, header.call_id);

    if header.flags.contains(Flags::ACK) {
        let ack = Header::new(
            FrameKind::Ack,
            header.call_id,
            header.interface,
            header.method,
        );
        // The rarer paths (ack, deadline, error) are boxed, so that the common one keeps this
        // future small: it is allocated once per call.
        if let Err(e) = Box::pin(shared.send_frame(ack, 0, |_| Ok(()))).await {
            tracing::debug!(call_id = header.call_id, error = %e, "could not send an ack");
        }
    }
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let outcome = match deadline {
        Some(d) => Box::pin(tokio::time::timeout_at(d, guarded))
            .await
            .unwrap_or(Ok(Err(RpcError::DeadlineExceeded))),
        None => guarded.await,
    };
    let outcome = outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string payload".to_owned());
        tracing::error!(call_id = header.call_id, panic = %what, "handler panicked");
        Err(RpcError::Internal(format!("the handler panicked: {what}")))
    });
    if header.kind == FrameKind::OneWay {
        if let Err(e) = outcome {
            tracing::warn!(call_id = header.call_id, error = %e, "one-way call failed");
        }
        return;
    }
    let result = match outcome {
        Ok(body) => {
            let reply = Header::new(
                FrameKind::Reply,
                header.call_id,
                header.interface,
                header.method,
            );
            shared
                .send_frame(reply, 64, move |buf| {
                    body.encode(buf)
                        .map_err(|e| RpcError::Internal(format!("could not encode the reply: {e}")))
                })
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {}
        Err(RpcError::ConnectionLost(_)) => {}
        Err(e) => Box::pin(shared.send_error(&header, &e)).await,
    }
}

async fn read_loop(shared: Arc<Shared>, mut rx: Box<dyn LinkRx>) {
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = shared.shutdown.notified() => break "closed by this side".to_owned(),
            next = rx.recv() => next,
        };
        match next {
            Ok(Some(frame)) => {
                // A one-way call cannot be refused with an answer, so instead of dropping one
                // when the handlers leave no room, stop reading until room frees: the link's
                // bounded buffers then push back on the peer.
                // (`close` closes the semaphores, which ends this wait.) A frame larger than
                // the limit is not a call that will run: it is refused without waiting.
                let one_way = frame.get(1) == Some(&(FrameKind::OneWay as u8))
                    && frame.len() <= shared.limits.max_frame_size;
                let room = if one_way {
                    match shared.wait_room(frame.len()).await {
                        Some(room) => Some(room),
                        None => break "closed by this side".to_owned(),
                    }
                } else {
                    None
                };
                if let Some(work) = shared.on_frame_with(frame, room) {
                    shared.runtime.spawn(work);
                }
            }
            Ok(None) => break "the peer closed the connection".to_owned(),
            Err(e) => break format!("the link failed: {e}"),
        }
    };
    shared.close(reason);
}

/// A call registered in the table and sent.
pub(crate) struct CallSlot {
    reply: oneshot::Receiver<ReplyResult>,
    ack: Option<oneshot::Receiver<()>>,
    deadline: Option<Instant>,
    guard: CallGuard,
    /// The transport's reading of this call's reply stream, if it hands that to the caller
    /// ([`LinkTx::send_call`]): polled while the caller waits.
    reader: Option<ReplyReader>,
}

/// Waits for `wait` while polling `reader`, reader first, so that a reply it delivers is seen
/// in the same poll. A finished reader is dropped.
async fn driven<T>(
    reader: &mut Option<ReplyReader>,
    wait: impl std::future::Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    std::future::poll_fn(|cx| {
        if let Some(r) = reader {
            if r.as_mut().poll(cx).is_ready() {
                *reader = None;
            }
        }
        wait.as_mut().poll(cx)
    })
    .await
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        // A reader still running: if the call was answered or runs on without a caller (it
        // was acknowledged), let it read to the end of its stream on the runtime; otherwise
        // dropping it is what cancels the call.
        if let Some(reader) = self.reader.take() {
            if self.guard.finished || !self.guard.cancel_on_drop {
                self.guard.shared.runtime.spawn(reader);
            }
        }
    }
}

impl CallSlot {
    /// Waits for the reply frame, within the deadline.
    pub(crate) async fn reply(mut self) -> ReplyResult {
        let reply = &mut self.reply;
        let reader = &mut self.reader;
        let received = match self.deadline {
            Some(d) => driven(reader, tokio::time::timeout_at(d, reply))
                .await
                .map_err(|_| RpcError::DeadlineExceeded)?,
            None => driven(reader, reply).await,
        };
        self.guard.finished = true;
        received.map_err(|_| self.guard.shared.lost())?
    }

    /// Waits for the server's ack (or an early reply, such as an error), within the deadline.
    /// Afterwards, dropping the slot no longer cancels the call: it runs to completion.
    pub(crate) async fn acked(mut self) -> Result<CallSlot, RpcError> {
        if let Some(ack) = self.ack.take() {
            let early = &mut self.reply;
            let wait = async {
                tokio::select! {
                    // Either an ack, or the sender dropped because a reply or error arrived
                    // first; both mean the server has the call.
                    _ = ack => Ok::<_, RpcError>(None),
                    r = early => Ok(Some(r)),
                }
            };
            let reader = &mut self.reader;
            let got = match self.deadline {
                Some(d) => driven(reader, tokio::time::timeout_at(d, wait))
                    .await
                    .map_err(|_| RpcError::DeadlineExceeded)?,
                None => driven(reader, wait).await,
            }?;
            if let Some(early) = got {
                let result = early.map_err(|_| self.guard.shared.lost())?;
                self.guard.finished = true;
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(result);
                self.reply = rx;
            }
        }
        self.guard.cancel_on_drop = false;
        Ok(self)
    }
}

/// Removes a call from the table if its caller goes away, and tells the server to drop it.
struct CallGuard {
    shared: Arc<Shared>,
    call_id: u64,
    interface: InterfaceId,
    method: MethodId,
    cancel_on_drop: bool,
    finished: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let was_pending = lock(&self.shared.calls).remove(&self.call_id).is_some();
        if was_pending && self.cancel_on_drop && !self.shared.is_closed() {
            let shared = Arc::clone(&self.shared);
            let header = Header::new(FrameKind::Cancel, self.call_id, self.interface, self.method);
            self.shared.runtime.spawn(async move {
                let _ = shared.send_frame(header, 0, |_| Ok(())).await;
            });
        }
    }
}

/// Client side of the handshake: send the hello, check the welcome.
pub(crate) async fn client_handshake(
    link: &mut Link,
    codec: &'static str,
    client_id: u128,
    epoch: u64,
    timeout: Duration,
) -> Result<(), RpcError> {
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: codec.to_owned(),
        client_id,
        epoch,
    };
    send_raw(&*link.tx, &hello.encode()).await?;
    let answer = tokio::time::timeout(timeout, link.rx.recv())
        .await
        .map_err(|_| HandshakeError::Timeout)??
        .ok_or(HandshakeError::Closed)?;
    let welcome = Welcome::decode(&answer)?;
    match welcome.status {
        WelcomeStatus::Accepted => Ok(()),
        WelcomeStatus::VersionUnsupported => Err(HandshakeError::Version {
            ours: u16::from(PROTOCOL_VERSION),
            theirs: welcome.version,
        }
        .into()),
        WelcomeStatus::CodecUnsupported => Err(HandshakeError::Codec {
            requested: codec.to_owned(),
            offered: welcome.codecs,
        }
        .into()),
        WelcomeStatus::Busy => Err(HandshakeError::Busy.into()),
    }
}

/// Server side of the handshake: read the hello, pick the codec, answer. Returns the index of
/// the codec in `codecs` and the hello. With `busy`, the hello is answered with
/// [`WelcomeStatus::Busy`] and the handshake fails with [`HandshakeError::Busy`].
///
/// The caller closes the link when this fails.
pub(crate) async fn server_handshake(
    link: &mut Link,
    codecs: &[&'static str],
    timeout: Duration,
    busy: bool,
) -> Result<(usize, Hello), RpcError> {
    let first = tokio::time::timeout(timeout, link.rx.recv())
        .await
        .map_err(|_| HandshakeError::Timeout)??
        .ok_or(HandshakeError::Closed)?;
    let hello = Hello::decode(&first)?;
    let offered = codecs.join(",");
    let answer = |status| Welcome {
        version: u16::from(PROTOCOL_VERSION),
        status,
        codecs: offered.clone(),
    };
    if busy {
        send_raw(&*link.tx, &answer(WelcomeStatus::Busy).encode()).await?;
        return Err(HandshakeError::Busy.into());
    }
    if hello.version != u16::from(PROTOCOL_VERSION) {
        send_raw(
            &*link.tx,
            &answer(WelcomeStatus::VersionUnsupported).encode(),
        )
        .await?;
        return Err(HandshakeError::Version {
            ours: u16::from(PROTOCOL_VERSION),
            theirs: hello.version,
        }
        .into());
    }
    let Some(index) = codecs.iter().position(|c| *c == hello.codec) else {
        send_raw(&*link.tx, &answer(WelcomeStatus::CodecUnsupported).encode()).await?;
        return Err(HandshakeError::Codec {
            requested: hello.codec,
            offered,
        }
        .into());
    };
    send_raw(&*link.tx, &answer(WelcomeStatus::Accepted).encode()).await?;
    Ok((index, hello))
}

async fn send_raw(tx: &dyn LinkTx, message: &[u8]) -> Result<(), TransportError> {
    let mut buf = tx.buffer(message.len()).await?;
    bytes::BufMut::put_slice(&mut buf, message);
    tx.send(buf).await
}
