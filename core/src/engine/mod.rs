//! The driver: the async layer around `courier_proto`'s state machines, one per link, on both
//! sides. It owns the link, the timers and the tasks; the decisions are the state machines'.
//!
//! Files: this one holds a link's driver ([`Shared`]) and the sending of frames; [`inbound`]
//! acts on what the link's [`Connection`] makes of each frame from the peer (answers go to the
//! session that made the call; admitted calls run, through one path, in the room the
//! connection gave them); [`session`] drives a client's calls across links
//! ([`CallTable`](courier_proto::session::calls::CallTable)); [`served`] drives a server's
//! side of a client's session ([`Sessions`](courier_proto::session::replies::Sessions));
//! [`handshake`] the hello and welcome.
//!
//! Every call this side makes belongs to a session: a client's, which reconnects, or, for a
//! server's handler calling its client back, one over that link alone, which never does. So
//! there is one type for a call in flight ([`session::SessionCall`]), and the connection keeps
//! only the peer's calls: each side numbers its own calls, so the two never mix.
//!
//! Frames arrive in order from one reader task, or are pushed by the transport from the
//! sender's thread; neither ever blocks on anything the peer controls: answers go to their
//! callers, admitted calls are decoded and run, and anything that needs a frame sent back is
//! done by a task of its own, bounded in number.
//!
//! Back-pressure, never unbounded queues: callers wait for one of `max_in_flight` slots; the
//! peer's calls beyond `max_handlers` (or its call bytes) are refused with `Overloaded`, and a
//! one-way call waits for room instead; the link's own buffers are bounded and `send` waits
//! for room.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};

pub(crate) mod handshake;
mod inbound;
pub(crate) mod served;
pub(crate) mod session;

pub(crate) use inbound::error_frame;
pub(crate) use served::Served;

use crate::budget::Budget;
use crate::error::{RpcError, TransportError};
use crate::handler::HandlerFuture;
use crate::ids::{InterfaceId, MethodId};
use crate::options::Limits;
use crate::peer::Peer;
use crate::sync::lock;
use crate::transport::{FrameBuf, Link, LinkTx, TrySend};
use crate::wire::{ErrorPayload, FrameKind, Header, HEADER_LEN};
use courier_proto::connection::{self, Config, Connection};
use futures::future::AbortHandle;
use inbound::read_loop;
use session::ClientSession;

/// The protocol state of one link, with what this driver keeps per handler (what aborts it).
pub(crate) type Conn = Connection<AbortHandle>;

/// An event of [`Conn`].
type Event = connection::Event<AbortHandle>;

/// What one input to the connection produced, taken out under its lock so that the thread
/// that gave the input acts on it (an in-process call's handler runs on its caller's thread).
/// The common input, a frame making one event, does not come through here (see
/// `on_frame_with`): these lists hold the rarer rest.
#[derive(Default)]
pub(crate) struct Outputs {
    events: Vec<Event>,
    frames: Vec<Bytes>,
}

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
    /// The link's protocol state: what each frame is, the peer's calls running here and the
    /// room they take. Every decision about a frame or a handler is made there; this side's
    /// calls are their session's.
    conn: Mutex<Conn>,
    /// Deliverers waiting for room for a one-way call, and their wake-up: a handler that ends
    /// notifies only when some wait.
    slot_waiting: AtomicUsize,
    slot_freed: Notify,
    /// Handlers that ended holding plain tickets, not yet given back to the connection
    /// ([`courier_proto::connection::Ticket::plain`]): it gets them with its next input.
    plain_ended: AtomicUsize,
    /// The bytes of the frames of running handlers across all the connections of a server
    /// (`max_server_call_bytes`); per connection, the [`Conn`] counts them.
    server_call_bytes: Option<Arc<Budget>>,
    /// Callback deliveries pending on this connection (`Limits::max_callback_deliveries`).
    pub(crate) callback_deliveries: Arc<Budget>,
    /// Bounds the tasks that only send a frame back ([`Shared::send_aside`]: errors for refused
    /// or malformed frames, cached outcomes for copies).
    notices: Arc<Semaphore>,
    /// Set once, as the close begins (the connection itself learns it under its lock right
    /// after); read without any lock.
    closed: AtomicBool,
    shutdown: Notify,
    /// Held while the connection is open and dropped when it closes: the server's count of
    /// connections (see `Limits::max_connections`).
    admission: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// On a server: the session of the client on the other end, which outlives this link.
    served: Option<Served>,
    /// On a client: the session whose calls this link carries, and the link's generation in
    /// it. Answers to the session's calls go there, and so does the news that the link closed.
    session: OnceLock<(Weak<ClientSession>, u64)>,
    /// On a server: the session through which its handlers call the client back
    /// ([`Shared::calls`]), while someone holds it, and the sequence its calls are numbered
    /// from, which outlives it: a later session over the link must not reuse an id the client
    /// may still run.
    calls_back: Mutex<(Weak<ClientSession>, Option<Arc<session::Lineage>>)>,
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

/// Who a connection works for, beside its own calls and handlers.
pub(crate) enum Role {
    /// A server's link: the client's session on the server.
    Server(Served),
    /// A client's link: its session and the link's generation in it.
    Client(Weak<ClientSession>, u64),
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

/// Everything the connection has for the driver.
pub(crate) fn drain(conn: &mut Conn) -> Outputs {
    Outputs {
        events: std::iter::from_fn(|| conn.poll_event()).collect(),
        frames: std::iter::from_fn(|| conn.poll_transmit()).collect(),
    }
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
        let session = OnceLock::new();
        let served = match role {
            Role::Server(served) => Some(served),
            Role::Client(client, generation) => {
                let _ = session.set((client, generation));
                None
            }
        };
        let Link { tx, rx, peer } = link;
        let mut limits = limits;
        if let Some(limit) = rx.frame_limit() {
            limits.max_frame_size = limits.max_frame_size.min(limit);
        }
        let mut config = Config::default();
        config.max_frame_size = limits.max_frame_size;
        config.max_handlers = limits.max_handlers;
        config.call_bytes = limits.call_bytes_budget();
        config.max_metadata_entries = limits.max_metadata_entries;
        config.max_metadata_bytes = limits.max_metadata_bytes;
        config.sessions = served.is_some();
        let shared = Arc::new(Shared {
            tx,
            peer,
            codec,
            runtime: Handle::current(),
            router,
            conn: Mutex::new(Connection::new(config)),
            slot_waiting: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            plain_ended: AtomicUsize::new(0),
            server_call_bytes,
            callback_deliveries: Budget::new(limits.max_callback_deliveries),
            notices: Arc::new(Semaphore::new(limits.max_handlers)),
            closed: AtomicBool::new(false),
            shutdown: Notify::new(),
            admission: Mutex::new(admission),
            served,
            session,
            calls_back: Mutex::new((Weak::new(), None)),
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

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn lost(&self) -> RpcError {
        let reason = lock(&self.conn)
            .close_reason()
            .unwrap_or_default()
            .to_owned();
        RpcError::ConnectionLost(reason)
    }

    /// Gives the connection one input and takes out what it produced, under one hold of its
    /// lock.
    pub(crate) fn input(&self, input: impl FnOnce(&mut Conn)) -> Outputs {
        let mut conn = lock(&self.conn);
        input(&mut conn);
        drain(&mut conn)
    }

    /// Sends what the connection queued for the peer, each from a task of its own.
    fn send_frames(self: &Arc<Self>, frames: Vec<Bytes>) {
        for frame in frames {
            self.send_aside(frame);
        }
    }

    /// Acts on an input's outputs: sends its frames, does what its events say, and runs here
    /// any handler they admit.
    pub(crate) fn act(self: &Arc<Self>, out: Outputs) {
        self.send_frames(out.frames);
        let mut none = None;
        for event in out.events {
            if let Some(work) = self.on_event(event, &mut none) {
                self.run_here(work);
            }
        }
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
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // The connection admits nothing from here on, under its own lock.
        let lost = self.input(|conn| conn.link_lost(&reason));
        tracing::debug!(peer = ?self.peer, %reason, "connection closed");
        for event in lost.events {
            match event {
                connection::Event::Abort(abort) => abort.abort(),
                other => tracing::debug!(event = ?other, "event after close ignored"),
            }
        }
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

    /// The session whose calls this link carries, if it has one and it lives.
    pub(crate) fn client_session(&self) -> Option<Arc<ClientSession>> {
        match self.session.get() {
            Some((session, _)) => session.upgrade(),
            None if self.served.is_some() => lock(&self.calls_back).0.upgrade(),
            None => None,
        }
    }

    /// The session through which a handler on this link calls the peer: on a client's link,
    /// the client's own (the call is numbered in its sequence and sent again after a
    /// reconnect, like any other); on a server's link, a session over this link alone, which
    /// never reconnects, made on first use.
    pub(crate) fn calls(
        self: &Arc<Self>,
        codec: &'static str,
    ) -> Result<Arc<ClientSession>, RpcError> {
        if let Some(session) = self.client_session() {
            return Ok(session);
        }
        let mut calls_back = lock(&self.calls_back);
        if self.is_closed() {
            return Err(self.lost());
        }
        if let Some(session) = calls_back.0.upgrade() {
            return Ok(session);
        }
        let lineage = calls_back.1.get_or_insert_with(session::Lineage::detached);
        let session = ClientSession::over_link(self, codec, Arc::clone(lineage));
        calls_back.0 = Arc::downgrade(&session);
        Ok(session)
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

    /// This link's generation in the session whose calls it carries.
    fn generation(&self) -> u64 {
        self.session.get().map_or(session::OVER_LINK, |(_, g)| *g)
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
}
