//! Frames from the peer: routing replies to callers, admitting and running calls.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use tokio::time::Instant;

use super::{cut_message, lock, ReplyResult, Shared, Work};
use super::{RawCall, Router};
use crate::budget::Taken;
use crate::error::RpcError;
use crate::handler::{HandlerFuture, ReplyBody};
use crate::metadata::Metadata;
use crate::trace;
use crate::transport::LinkRx;
use crate::wire::{kind_of, Claims, ErrorCode, ErrorPayload, Flags, FrameKind, Header, HEADER_LEN};
use courier_proto::handlers::{HandlerTable, Refused};
use courier_proto::received::{self, receive, Received, Refusal};
use courier_proto::session::replies::Begin;

pub(super) struct RunningHandler {
    pub(super) abort: AbortHandle,
    /// This handler's place among the connection's handlers and call bytes; freed when it ends.
    _room: Room,
    /// One-way handlers run to completion even if the connection closes: nobody waits for
    /// them, and the caller may well have closed right after sending.
    pub(super) abort_on_close: bool,
}

/// What a running handler holds beside its place in the handler table: for a frame larger
/// than [`SMALL_FRAME`], its bytes counted against the connection's `max_call_bytes` and the
/// server's `max_server_call_bytes`, so that what peers make the server hold while it works
/// (the arguments, and the result while it waits to be sent) is bounded per connection and in
/// all. Smaller frames are bounded well enough by `max_handlers`, and skipping them keeps the
/// shared counter off the path of small calls.
pub(crate) struct Room {
    _bytes: Option<(Taken, Option<Taken>)>,
    /// On a server's link, a place among its handlers taken while waiting for room
    /// ([`Shared::wait_room`]): the call moves into it rather than taking another.
    place: Option<Reservation>,
}

/// One place among a server link's handlers (`served_running`), given back when dropped.
pub(crate) struct Reservation(Arc<Shared>);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.free_place();
    }
}

/// Frames up to this size take no call bytes (see [`Room`]).
const SMALL_FRAME: usize = 4096;

impl Shared {
    /// Handles one frame from the reader.
    pub(crate) fn on_frame(self: &Arc<Self>, frame: Bytes) -> Option<Work> {
        self.on_frame_with(frame, None)
    }

    /// Handles one frame; a call runs in `room` if the reader already holds it (it waits for
    /// room before reading on, for one-way calls), else it takes free room or is refused.
    pub(super) fn on_frame_with(
        self: &Arc<Self>,
        frame: Bytes,
        room: Option<Room>,
    ) -> Option<Work> {
        match receive(&frame, self.limits.max_frame_size) {
            Received::Call(header) => return self.on_call(header, frame, room),
            Received::Answer(header) if header.kind == FrameKind::Ack => self.on_ack(&header),
            Received::Answer(header) => self.on_answer(header, frame),
            Received::Cancel(header) => {
                if let Some(h) = lock(&self.handlers).remove(header.call_id) {
                    h.abort.abort();
                }
                if let Some(served) = &self.served {
                    served.cancel(header.call_id, self);
                }
            }
            Received::Release { watermark } => {
                if let Some(served) = &self.served {
                    served.release(watermark);
                }
            }
            Received::Goodbye => {
                if let Some(served) = &self.served {
                    served.release(u64::MAX);
                } else if let Some(session) = self.client_session() {
                    session.server_goodbye(self.generation());
                }
            }
            Received::Refused(refusal) => self.on_refused(refusal),
            // What the protocol crate knows and this engine does not handle yet.
            other => tracing::debug!(peer = ?self.peer, frame = ?other, "frame ignored"),
        }
        None
    }

    /// A Reply or Error for one of this side's calls.
    fn on_answer(&self, header: Header, frame: Bytes) {
        if header.kind == FrameKind::Error && header.call_id == 0 {
            // A report about a frame that named no call: no call of ours has id 0.
            let payload = ErrorPayload::decode(&frame[HEADER_LEN..]);
            tracing::warn!(peer = ?self.peer, message = %payload.message, "peer reported a protocol error");
            return;
        }
        self.settle(header.call_id, Ok((header, frame)));
    }

    /// Ends this side's call `call_id` with `outcome`: a call over this link alone, else one
    /// of the client session's calls (or one whose caller gave up).
    fn settle(&self, call_id: u64, outcome: ReplyResult) {
        let pending = lock(&self.calls).remove(&call_id);
        match pending {
            Some(p) => {
                let _ = p.reply.send(outcome);
            }
            None => {
                if let Some(session) = self.client_session() {
                    session.on_answer(call_id, outcome);
                }
            }
        }
    }

    /// An Ack for one of this side's calls.
    fn on_ack(&self, header: &Header) {
        let mut calls = lock(&self.calls);
        if let Some(p) = calls.get_mut(&header.call_id) {
            if let Some(ack) = p.ack.take() {
                let _ = ack.send(());
            }
        } else {
            drop(calls);
            if let Some(session) = self.client_session() {
                session.on_ack(header.call_id);
            }
        }
    }

    /// A frame that could not be accepted: fail the one call it concerns, on whichever side
    /// that is, and keep the connection.
    fn on_refused(self: &Arc<Self>, refusal: Refusal) {
        match refusal {
            Refusal::FailOwnCall { call_id, problem } => {
                tracing::debug!(peer = ?self.peer, %problem, "malformed answer");
                self.settle(call_id, Err(RpcError::from(problem)));
            }
            Refusal::AnswerPeer { claims, problem } => {
                tracing::debug!(peer = ?self.peer, %problem, "malformed call");
                let payload = RpcError::from(problem).to_payload();
                self.send_aside(crate::wire::error_frame(&claims, &cut_message(payload)));
            }
            Refusal::Drop { problem } => {
                tracing::debug!(peer = ?self.peer, %problem, "malformed frame dropped");
            }
            other => tracing::debug!(peer = ?self.peer, refusal = ?other, "frame refused"),
        }
    }

    /// Room for a call whose frame is `len` bytes, if there is some now (the handler table's
    /// own limit is checked as the call goes in).
    fn take_room(&self, len: usize) -> Result<Room, RpcError> {
        if len <= SMALL_FRAME {
            return Ok(Room {
                _bytes: None,
                place: None,
            });
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
            place: None,
        })
    }

    /// Waits for a place among the handlers and room for a call whose frame is `len` bytes;
    /// `None` once the connection has closed. On a server's link the place is taken as it is
    /// found (many tasks may wait at once: a transport that delivers from its senders' tasks);
    /// on a client's link only the reader waits, so the place is still free when it inserts
    /// the call.
    pub(super) async fn wait_room(self: &Arc<Self>, len: usize) -> Option<Room> {
        let place = loop {
            let freed = self.slot_freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            // SeqCst against the load in `free_place` and `Deregister`, which follow the
            // release: either this sees the free place, or that sees this waiter.
            self.slot_waiting.fetch_add(1, Ordering::SeqCst);
            let found = if self.served.is_some() {
                self.try_reserve().map(Some)
            } else {
                lock(&self.handlers).has_room().then_some(None)
            };
            if let Some(place) = found {
                self.slot_waiting.fetch_sub(1, Ordering::SeqCst);
                break place;
            }
            let closed = tokio::select! {
                () = freed => false,
                () = self.closed() => true,
            };
            self.slot_waiting.fetch_sub(1, Ordering::SeqCst);
            if closed {
                return None;
            }
        };
        if len <= SMALL_FRAME {
            return Some(Room {
                _bytes: None,
                place,
            });
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
            place,
        })
    }

    /// Whether `frame` is a one-way call that must wait for room before it is handed over:
    /// it cannot be refused with an answer, so rather than drop one when the handlers leave
    /// no room, whoever delivers it waits (and the link's bounded buffers push back on the
    /// peer). A frame larger than the limit is not a call that will run: it is refused
    /// without waiting.
    pub(crate) fn waits_for_room(&self, frame: &[u8]) -> bool {
        kind_of(frame) == Some(FrameKind::OneWay) && frame.len() <= self.limits.max_frame_size
    }

    /// Whether the handler table has room for `header`'s call: not full, and its id not taken.
    fn room_for(
        &self,
        handlers: &HandlerTable<RunningHandler>,
        header: &Header,
    ) -> Result<(), RpcError> {
        handlers.check(header.call_id).map_err(refused)
    }

    fn on_call(self: &Arc<Self>, header: Header, frame: Bytes, room: Option<Room>) -> Option<Work> {
        if self.is_closed() {
            return None;
        }
        // Read from tokio's clock, which tests may pause.
        let deadline =
            received::deadline(Instant::now().into_std(), &header).map(Instant::from_std);
        let Some(router) = &self.router else {
            let interface = header.interface;
            self.refuse(&header, RpcError::UnknownInterface { interface });
            return None;
        };
        // The metadata block, if the flag says there is one; the arguments follow it.
        let limits = &self.limits;
        let (max_entries, max_bytes) = (limits.max_metadata_entries, limits.max_metadata_bytes);
        let (metadata, args_at) =
            match received::call_arguments(&frame, &header, max_entries, max_bytes) {
                Ok(found) => found,
                Err(reason) => {
                    self.refuse(&header, RpcError::Protocol(format!("metadata: {reason}")));
                    return None;
                }
            };
        let span = trace::server_span(header.call_id, &self.codec, &self.peer, || {
            router.names(header.interface, header.method)
        });
        #[cfg(feature = "opentelemetry")]
        if !span.is_disabled() {
            trace::extract(&span, &metadata);
        }
        // Refuse before decoding if there is no room, but decode without the table's lock:
        // every call on the connection takes it, from whichever thread its frame arrives on.
        let room = match room.map_or_else(|| self.take_room(frame.len()), Ok) {
            Ok(room) => room,
            Err(e) => {
                self.refuse(&header, e);
                return None;
            }
        };
        if let Some(session) = &self.served {
            let args = &frame[args_at..];
            return self.on_served_call(session, header, args, room, (deadline, metadata), span);
        }
        let free = self.room_for(&lock(&self.handlers), &header);
        if let Err(e) = free {
            self.refuse(&header, e);
            return None;
        }
        let future = self.dispatch(router, &header, &frame[args_at..], deadline, metadata)?;
        let entry = Deregister(Arc::clone(self), header.call_id);
        let run = traced(
            span,
            run_handler(header, future, deadline, Hold::Link { entry }),
        );
        let (work, abort) = futures::future::abortable(run);
        // Look again as the entry goes in: other calls may have filled the table meanwhile.
        let mut handlers = lock(&self.handlers);
        if let Err(e) = self.room_for(&handlers, &header) {
            drop(handlers);
            self.refuse(&header, e);
            return None;
        }
        let entry = RunningHandler {
            abort,
            _room: room,
            abort_on_close: header.kind == FrameKind::Call,
        };
        // Checked just above, under the same lock.
        let _ = handlers.insert(header.call_id, entry);
        drop(handlers);
        Some(Box::pin(async move {
            let _: Result<(), _> = work.await;
        }))
    }

    /// A call from a server's client: its handler belongs to the client's session, which
    /// outlives this link, recognizes copies and keeps outcomes. The link only counts it.
    fn on_served_call(
        self: &Arc<Self>,
        session: &super::Served,
        header: Header,
        args: &[u8],
        room: Room,
        (deadline, metadata): (Option<Instant>, Metadata),
        span: tracing::Span,
    ) -> Option<Work> {
        let mut room = room;
        // A place among the link's handlers: the one the deliverer waited for, else one taken
        // at once (frames may be delivered from many tasks at a time).
        let Some(reservation) = room.place.take().or_else(|| self.try_reserve()) else {
            let e = RpcError::Overloaded(format!(
                "{} calls already running on this connection",
                self.limits.max_handlers
            ));
            self.refuse(&header, e);
            return None;
        };
        let mut place = Place {
            reservation,
            _room: room,
            counted: false,
        };
        let router = self.router.as_ref()?;
        let future = self.dispatch(router, &header, args, deadline, metadata)?;
        let (abort, registration) = AbortHandle::new_pair();
        if header.kind == FrameKind::OneWay {
            if !session.one_way(header.call_id) {
                if session.lifecycle.is_stopping() {
                    tracing::debug!(
                        call_id = header.call_id,
                        "a one-way call dropped: shutting down"
                    );
                } else {
                    tracing::debug!(call_id = header.call_id, "a copy of a one-way call dropped");
                }
                return None;
            }
            place.counted = true;
        } else {
            let call = header.call_id;
            let refusal = match session.begin(&header, abort, self) {
                Begin::Run => {
                    place.counted = true;
                    None
                }
                Begin::Attached => return None,
                Begin::Cached(outcome) => {
                    self.send_aside(outcome);
                    return None;
                }
                Begin::Unavailable => Some(
                    RpcError::Unavailable(
                        "the server is shutting down; the call did not run".to_owned(),
                    )
                    .to_payload(),
                ),
                Begin::Forgotten => Some(
                    RpcError::ReplyEvicted(format!(
                        "call {call} is no longer in the server's reply cache"
                    ))
                    .to_payload(),
                ),
                Begin::Mismatch(called) => Some(
                    RpcError::Protocol(format!(
                        "call id {call} was used for interface {:#010x} method {:#010x}: a \
                         copy must call the same method",
                        called.interface, called.method
                    ))
                    .to_payload(),
                ),
                Begin::Released => Some(ErrorPayload::new(
                    ErrorCode::Released,
                    format!(
                        "call {call} is below the client's watermark (a release said the \
                         client holds its outcome); it does not run again"
                    ),
                )),
                Begin::Cancelled => Some(ErrorPayload::new(
                    ErrorCode::Cancelled,
                    format!("call {call} was cancelled before it finished; it does not run again"),
                )),
                Begin::Superseded => {
                    let payload = ErrorPayload::new(
                        ErrorCode::Superseded,
                        "a newer epoch of this client took over; this connection closes and \
                         the call did not run",
                    );
                    let frame = self.error_frame(&header, payload);
                    self.send_then_close(frame, "a newer epoch of this client took over");
                    return None;
                }
            };
            if let Some(payload) = refusal {
                self.notify_peer(call, header.interface, header.method, payload);
                return None;
            }
        }
        let run = traced(
            span,
            run_handler(header, future, deadline, Hold::Session { place }),
        );
        let work = Abortable::new(run, registration);
        Some(Box::pin(async move {
            let _: Result<(), _> = work.await;
        }))
    }

    /// Decodes a call and makes its handler's future, or refuses the call (and says so to the
    /// caller, unless it is one-way).
    fn dispatch(
        self: &Arc<Self>,
        router: &Arc<dyn Router>,
        header: &Header,
        payload: &[u8],
        deadline: Option<Instant>,
        metadata: Metadata,
    ) -> Option<HandlerFuture> {
        let call = RawCall {
            header,
            payload,
            link: self,
            deadline,
            metadata,
        };
        match router.dispatch(call) {
            Ok(f) => Some(f),
            Err(e) => {
                self.refuse(header, e);
                None
            }
        }
    }

    /// A place among a server link's handlers, if one is free now.
    fn try_reserve(self: &Arc<Self>) -> Option<Reservation> {
        let max = self.limits.max_handlers;
        self.served_running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Reservation(Arc::clone(self)))
    }

    /// A handler of a server's client ended (or was refused): its place is free.
    fn free_place(&self) {
        self.served_running.fetch_sub(1, Ordering::SeqCst);
        if self.slot_waiting.load(Ordering::SeqCst) > 0 {
            self.slot_freed.notify_waiters();
        }
    }
}

/// A served handler's place among its link's handlers, and its call bytes; freed when the
/// handler ends, however it ends.
struct Place {
    /// Its place among the link's handlers, given back (after this drops) when it ends; it
    /// holds the link too.
    reservation: Reservation,
    _room: Room,
    /// Whether the server counts it among its running handlers (it began a call, rather than
    /// attaching a copy): see [`Served::begin`](super::Served::begin).
    counted: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.counted {
            if let Some(served) = &self.reservation.0.served {
                served.lifecycle.handler_ended();
            }
        }
    }
}

/// The error a caller gets for a call its link's handler table refused.
fn refused(why: Refused) -> RpcError {
    match why {
        Refused::Running { call_id } => {
            RpcError::Protocol(format!("call id {call_id} is already running"))
        }
        Refused::Full { max } => {
            RpcError::Overloaded(format!("{max} calls already running on this connection"))
        }
        other => RpcError::Overloaded(format!("{other:?}")),
    }
}

/// A handler's entry in its link's handler table, removed when the handler ends.
struct Deregister(Arc<Shared>, u64);

impl Drop for Deregister {
    fn drop(&mut self) {
        lock(&self.0.handlers).remove(self.1);
        if self.0.slot_waiting.load(Ordering::SeqCst) > 0 {
            self.0.slot_freed.notify_waiters();
        }
    }
}

/// What a running handler holds on to until it ends.
enum Hold {
    /// An entry in its link's handler table (a client serving its server's calls back).
    Link { entry: Deregister },
    /// Its place on a server's link; the entry is in the client's session.
    Session { place: Place },
}

impl Hold {
    /// The link the handler runs on (each hold keeps it alive).
    fn link(&self) -> &Arc<Shared> {
        match self {
            Hold::Link { entry } => &entry.0,
            Hold::Session { place } => &place.reservation.0,
        }
    }
}

/// `run` inside `span`, which records its outcome and duration; `run` itself, with no
/// wrapper at all, when no subscriber wants the span.
fn traced(
    span: tracing::Span,
    run: impl std::future::Future<Output = &'static str>,
) -> impl std::future::Future<Output = ()> {
    use tracing::Instrument;
    if span.is_disabled() {
        return futures::future::Either::Left(run.map(drop));
    }
    let started = std::time::Instant::now();
    let recorder = span.clone();
    futures::future::Either::Right(
        run.map(move |outcome| trace::finish(&recorder, started, outcome))
            .instrument(span),
    )
}

/// Runs one handler: ack if asked, apply the deadline, catch a panic, send the outcome.
/// Returns how it ended, for its span.
async fn run_handler(
    header: Header,
    future: HandlerFuture,
    deadline: Option<Instant>,
    hold: Hold,
) -> &'static str {
    let served = matches!(hold, Hold::Session { .. });
    // Released when this future ends or is dropped, however that happens; it also holds the
    // link, so the handler needs no handle of its own.
    let shared = hold.link();

    if header.flags.contains(Flags::ACK) {
        let ack = Header::new(
            FrameKind::Ack,
            header.call_id,
            header.interface,
            header.method,
        );
        // The rarer paths (ack, error) are boxed, so that the common one keeps this future
        // small: it is allocated once per call.
        if let Err(e) = Box::pin(shared.send_frame(ack, 0, |_| Ok(()))).await {
            tracing::debug!(call_id = header.call_id, error = %e, "could not send an ack");
        }
    }
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let outcome = match deadline {
        // The timer is made only if the handler waits: most complete on their first poll.
        Some(d) => crate::deadline::within(d, guarded)
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
    let label = trace::outcome(&outcome);
    if header.kind == FrameKind::OneWay {
        if let Err(e) = outcome {
            tracing::warn!(call_id = header.call_id, error = %e, "one-way call failed");
        }
        return label;
    }
    if let (true, Some(session)) = (served, &shared.served) {
        // The outcome is kept (for at-most-once calls) and sent to every link that waits for
        // it, so it is encoded once into memory of its own rather than into one link's buffer.
        let frame = match outcome.and_then(|body| shared.reply_frame(&header, &*body)) {
            Ok(frame) => frame,
            Err(e) => shared.error_frame(&header, e.to_payload()),
        };
        // The caller that sent it first gets it first: the bookkeeping (keeping the outcome,
        // finding copies that attached meanwhile) follows, off the caller's path. A copy on
        // this same link that attached after this send is sent the outcome again by
        // `deliver` (`Waiters::asked_again`): on QUIC it waits on a stream of its own.
        if let Err(e) = shared.send_shared(frame.clone()).await {
            tracing::debug!(call_id = header.call_id, error = %e, "could not send an outcome");
        }
        let keep = !header.flags.contains(Flags::IDEMPOTENT);
        let waiters = session.finish(header.call_id, &frame, keep);
        super::Served::deliver(waiters, shared, header.call_id, frame).await;
        return label;
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
    label
}

impl Shared {
    /// A reply frame for `header`'s call, encoded on the heap.
    fn reply_frame(&self, header: &Header, body: &dyn ReplyBody) -> Result<Bytes, RpcError> {
        let reply = Header::new(
            FrameKind::Reply,
            header.call_id,
            header.interface,
            header.method,
        );
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 64);
        reply.encode(&mut buf);
        body.encode(&mut buf)
            .map_err(|e| RpcError::Internal(format!("could not encode the reply: {e}")))?;
        super::seal(&mut buf, self.limits.max_frame_size)?;
        Ok(buf.freeze())
    }

    /// An error frame for `header`'s call, encoded on the heap.
    pub(crate) fn error_frame(&self, header: &Header, payload: ErrorPayload) -> Bytes {
        error_frame(header, payload)
    }
}

/// An error frame for `header`'s call (its id, interface and method), encoded on the heap.
pub(crate) fn error_frame(header: &Header, payload: ErrorPayload) -> Bytes {
    crate::wire::error_frame(&Claims::of(header), &super::cut_message(payload))
}

pub(super) async fn read_loop(shared: Arc<Shared>, mut rx: Box<dyn LinkRx>) {
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = shared.shutdown.notified() => break "closed by this side".to_owned(),
            next = rx.recv() => next,
        };
        match next {
            Ok(Some(frame)) => {
                // The reader stops reading until a one-way call has room (`close` ends the
                // wait): see `waits_for_room`.
                let room = if shared.waits_for_room(&frame) {
                    match shared.wait_room(frame.len()).await {
                        Some(room) => Some(room),
                        None => break "closed by this side".to_owned(),
                    }
                } else {
                    None
                };
                if let Some(work) = shared.on_frame_with(frame, room) {
                    shared.run_here(work);
                }
            }
            Ok(None) => break "the peer closed the connection".to_owned(),
            Err(e) => break format!("the link failed: {e}"),
        }
    };
    shared.close(reason);
}
