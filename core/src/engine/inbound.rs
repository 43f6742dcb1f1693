//! Frames from the peer: routing replies to callers, admitting and running calls.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::{AbortHandle, Abortable};
use futures::FutureExt;
use tokio::time::Instant;

use super::{cut_message, drain, lock, Event, Shared, Work};
use super::{RawCall, Router};
use crate::budget::Taken;
use crate::error::RpcError;
use crate::handler::{HandlerFuture, ReplyBody};
use crate::metadata::Metadata;
use crate::trace;
use crate::transport::LinkRx;
use crate::wire::{Claims, ErrorPayload, Flags, FrameKind, Header, HEADER_LEN};
use courier_proto::connection::{Admitted, Answer, Room, Ticket};
use courier_proto::session::replies::Begin;

/// What a running handler holds of its link: its [`Ticket`] (a place among the link's handlers
/// and the bytes of its frame, counted by the [`Connection`](courier_proto::connection)),
/// given back when the handler ends however it ends. It holds the link too.
pub(crate) struct Admission {
    shared: Arc<Shared>,
    ticket: Option<Ticket>,
}

impl Admission {
    /// The call cannot run: answer its caller with `error` (a one-way call has nobody to
    /// answer: it is logged) and give the ticket back.
    fn refuse(&mut self, header: &Header, error: &RpcError) {
        if header.kind == FrameKind::OneWay {
            tracing::warn!(call_id = header.call_id, %error, "one-way call refused");
        }
        if let Some(ticket) = self.ticket.take() {
            let payload = cut_message(error.to_payload());
            let out = self
                .shared
                .input(|conn| conn.refuse(ticket, header, &payload));
            self.shared.act(out);
            self.shared.wake_room_waiters();
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        give_back(&mut self.ticket, &self.shared);
    }
}

/// Gives a handler's ticket back to its connection, if it still holds one.
fn give_back(ticket: &mut Option<Ticket>, shared: &Shared) {
    if let Some(ticket) = ticket.take() {
        match ticket.plain() {
            // Counted now, given back to the connection with its next input: no lock at the
            // end of most of a server's calls. SeqCst against the waiters: see `wait_room`.
            Ok(_plain) => {
                shared.plain_ended.fetch_add(1, Ordering::SeqCst);
            }
            Err(ticket) => lock(&shared.conn).handler_finished(ticket),
        }
        shared.wake_room_waiters();
    }
}

/// Room waited for by a one-way call ([`Shared::wait_room`]): its place and bytes on the link,
/// and, for a large frame on a server, its bytes among all the server's connections.
pub(crate) struct WaitedRoom {
    room: Room,
    server_bytes: Option<Taken>,
}

impl Shared {
    /// Handles one frame from the reader.
    pub(crate) fn on_frame(self: &Arc<Self>, frame: Bytes) -> Option<Work> {
        self.on_frame_with(frame, None)
    }

    /// Handles one frame; a one-way call runs in the room the deliverer waited for, if it did
    /// (see [`Shared::waits_for_room`]).
    pub(super) fn on_frame_with(
        self: &Arc<Self>,
        frame: Bytes,
        room: Option<WaitedRoom>,
    ) -> Option<Work> {
        let (room, mut server_bytes) = match room {
            Some(WaitedRoom { room, server_bytes }) => (Some(room), server_bytes),
            None => (None, None),
        };
        // An answer changes nothing in the connection (this side's calls are its session's):
        // it goes to the session without the connection's lock.
        let frame = match room {
            Some(_) => frame,
            None => match super::Conn::take_answer(frame, self.limits.max_frame_size) {
                Ok(answer) => return self.on_event(answer, &mut server_bytes),
                Err(frame) => frame,
            },
        };
        // Most frames make one event and nothing to send: that one is taken out as it is,
        // the rest (if any) together, all under one hold of the lock. A frame admits at most
        // one call, so at most one handler comes back to run.
        let (first, rest) = {
            let mut conn = lock(&self.conn);
            self.give_back_plain(&mut conn);
            match room {
                Some(room) => conn.handle_frame_in(frame, room),
                None => conn.handle_frame(frame),
            }
            let first = conn.poll_event();
            let rest = conn.has_output().then(|| drain(&mut conn));
            (first, rest)
        };
        let work = first.and_then(|event| self.on_event(event, &mut server_bytes));
        if let Some(rest) = rest {
            self.act(rest);
        }
        work
    }

    /// Does what one event of the connection says.
    pub(super) fn on_event(
        self: &Arc<Self>,
        event: Event,
        server_bytes: &mut Option<Taken>,
    ) -> Option<Work> {
        match event {
            Event::Answer { call_id, answer } => match (self.client_session(), answer) {
                (Some(session), Answer::Ack) => session.on_ack(call_id),
                (Some(session), Answer::Outcome(outcome)) => {
                    session.on_answer(call_id, outcome.map_err(RpcError::from));
                }
                (_, answer) => tracing::debug!(call_id, ?answer, "an answer for no call"),
            },
            Event::Run(admitted) => return self.on_call(admitted, server_bytes.take()),
            Event::Abort(abort) => abort.abort(),
            Event::Cancelled { call_id } => {
                if let Some(served) = &self.served {
                    served.cancel(call_id, self);
                }
            }
            Event::Release { watermark } => {
                if let Some(served) = &self.served {
                    served.release(watermark);
                }
            }
            Event::Goodbye => {
                if let Some(served) = &self.served {
                    served.release(u64::MAX);
                } else if let Some(session) = self.client_session() {
                    session.server_goodbye(self.generation());
                }
            }
            Event::PeerReported { message } => {
                tracing::warn!(peer = ?self.peer, %message, "peer reported a protocol error");
            }
            Event::Dropped { problem } => {
                tracing::debug!(peer = ?self.peer, %problem, "malformed frame dropped");
            }
            other => tracing::debug!(peer = ?self.peer, event = ?other, "event ignored"),
        }
        None
    }

    /// Gives the connection back the plain tickets of the handlers that ended since its last
    /// input (see [`Admission`]'s drop), so that it admits with its counts exact.
    fn give_back_plain(&self, conn: &mut super::Conn) {
        // A load first: the swap's write would take the counter's cache line on every frame,
        // even when no handler ended.
        if self.served.is_some() && self.plain_ended.load(Ordering::SeqCst) > 0 {
            let ended = self.plain_ended.swap(0, Ordering::SeqCst);
            conn.plain_finished(ended);
        }
    }

    /// Wakes the deliverers waiting for room, if any wait.
    pub(super) fn wake_room_waiters(&self) {
        if self.slot_waiting.load(Ordering::SeqCst) > 0 {
            self.slot_freed.notify_waiters();
        }
    }

    /// Waits for room (a place among the handlers, the frame's bytes) for a one-way call whose
    /// frame is `len` bytes; `None` once the connection has closed.
    pub(super) async fn wait_room(self: &Arc<Self>, len: usize) -> Option<WaitedRoom> {
        let room = loop {
            let freed = self.slot_freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            // SeqCst against the load in `wake_room_waiters`, which follows the release:
            // either this sees the free room, or that sees this waiter.
            self.slot_waiting.fetch_add(1, Ordering::SeqCst);
            let found = {
                let mut conn = lock(&self.conn);
                self.give_back_plain(&mut conn);
                conn.reserve(len)
            };
            if let Some(room) = found {
                self.slot_waiting.fetch_sub(1, Ordering::SeqCst);
                break room;
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
        let server_bytes = match (&self.server_call_bytes, room.counts_bytes()) {
            (Some(server), true) => {
                let taken = tokio::select! {
                    taken = server.take(len) => taken,
                    () = self.closed() => None,
                };
                if taken.is_none() {
                    lock(&self.conn).give_back(room);
                    return None;
                }
                taken
            }
            _ => None,
        };
        Some(WaitedRoom { room, server_bytes })
    }

    /// Whether `frame` must wait for room before it is handed over: see
    /// [`Connection::waits_for_room`](courier_proto::connection::Connection::waits_for_room).
    pub(crate) fn waits_for_room(&self, frame: &[u8]) -> bool {
        super::Conn::waits_for_room(frame, self.limits.max_frame_size)
    }

    /// A call the connection admitted: find its handler and run it (or refuse it). One path
    /// for every call: on a server's link the client's session also has a say (it recognizes
    /// copies and keeps outcomes); on a link without one, the connection keeps the handler.
    fn on_call(self: &Arc<Self>, admitted: Admitted, server_bytes: Option<Taken>) -> Option<Work> {
        let budget = admitted.budget();
        let Admitted {
            header,
            frame,
            args_at,
            metadata,
            ticket,
            ..
        } = admitted;
        // A frame large enough to count on this link counts on the server too.
        let ticket_counts_bytes = ticket.counts_bytes();
        let mut admission = Admission {
            shared: Arc::clone(self),
            ticket: Some(ticket),
        };
        // The clock is read only for a call that has a deadline.
        let arrived = budget.map(|_| Instant::now());
        let deadline = arrived.zip(budget).map(|(at, budget)| at + budget);
        let Some(router) = &self.router else {
            let interface = header.interface;
            admission.refuse(&header, &RpcError::UnknownInterface { interface });
            return None;
        };
        let span = trace::server_span(header.call_id, &self.codec, &self.peer, || {
            router.names(header.interface, header.method)
        });
        #[cfg(feature = "opentelemetry")]
        if !span.is_disabled() {
            trace::extract(&span, &metadata);
        }
        // A large frame on a server also counts among all the server's connections.
        let server_bytes = match (server_bytes, &self.server_call_bytes) {
            (Some(taken), _) => Some(taken),
            (None, Some(server)) if ticket_counts_bytes => {
                let Some(taken) = server.try_take(frame.len()) else {
                    let e = RpcError::Overloaded(
                        "the calls running on this server hold as many bytes as it allows"
                            .to_owned(),
                    );
                    admission.refuse(&header, &e);
                    return None;
                };
                Some(taken)
            }
            _ => None,
        };
        let mut place = Place {
            admission,
            _server_bytes: server_bytes,
            counted: false,
        };
        let args = &frame[args_at..];
        let future = match self.make_handler(router, &header, args, deadline, metadata) {
            Ok(future) => future,
            Err(e) => {
                place.admission.refuse(&header, &e);
                return None;
            }
        };
        let (abort, registration) = AbortHandle::new_pair();
        let runs = match &self.served {
            Some(session) => self.begin_served(session, &header, abort, &mut place),
            // Cancelled (or the link lost) while the handler was made: it does not run.
            None => match &place.admission.ticket {
                Some(ticket) => lock(&self.conn).running(ticket, abort).is_ok(),
                None => false,
            },
        };
        if !runs {
            return None;
        }
        let timing = Timing { arrived, deadline };
        let run = traced(span, run_handler(header, future, timing, place));
        let work = Abortable::new(run, registration);
        Some(Box::pin(async move {
            let _: Result<(), _> = work.await;
        }))
    }

    /// What the client's session says of a call on a server's link: run it (true: it is
    /// counted among the server's handlers), or not (a copy attached to the running call, a
    /// cached outcome sent, a refusal).
    fn begin_served(
        self: &Arc<Self>,
        session: &super::Served,
        header: &Header,
        abort: AbortHandle,
        place: &mut Place,
    ) -> bool {
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
                return false;
            }
            place.counted = true;
            return true;
        }
        let begin = session.begin(header, abort, self);
        match begin {
            Begin::Run => {
                place.counted = true;
                return true;
            }
            Begin::Attached => {}
            Begin::Cached(outcome) => self.send_aside(outcome),
            Begin::Superseded => {
                if let Some(refusal) = begin.refusal(header.call_id) {
                    let frame = self.error_frame(header, refusal);
                    self.send_then_close(frame, "a newer epoch of this client took over");
                }
            }
            refused => {
                if let Some(refusal) = refused.refusal(header.call_id) {
                    self.send_aside(self.error_frame(header, refusal));
                }
            }
        }
        false
    }

    /// Decodes a call and makes its handler's future, or says why the call is refused.
    fn make_handler(
        self: &Arc<Self>,
        router: &Arc<dyn Router>,
        header: &Header,
        payload: &[u8],
        deadline: Option<Instant>,
        metadata: Metadata,
    ) -> Result<HandlerFuture, RpcError> {
        router.dispatch(RawCall {
            header,
            payload,
            link: self,
            deadline,
            metadata,
        })
    }
}

/// A served handler's place among its link's handlers, and its call bytes; freed when the
/// handler ends, however it ends.
struct Place {
    /// Its ticket on the link, given back (after this drops) when it ends; it holds the link
    /// too.
    admission: Admission,
    _server_bytes: Option<Taken>,
    /// Whether the server counts it among its running handlers (it began a call, rather than
    /// attaching a copy): see [`Served::begin`](super::Served::begin).
    counted: bool,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.counted {
            if let Some(served) = &self.admission.shared.served {
                served.lifecycle.handler_ended();
            }
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

/// When a call arrived (if the clock was read for it) and its deadline.
#[derive(Clone, Copy)]
struct Timing {
    arrived: Option<Instant>,
    deadline: Option<Instant>,
}

/// Polls `future` to its end, noting in `waited` whether it ever had to wait.
async fn noting_waits<F: std::future::Future>(future: F, waited: &mut bool) -> F::Output {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        *waited |= poll.is_pending();
        poll
    })
    .await
}

/// Runs one handler: ack if asked, apply the deadline, catch a panic, send the outcome.
/// Returns how it ended, for its span.
async fn run_handler(
    header: Header,
    future: HandlerFuture,
    Timing { arrived, deadline }: Timing,
    mut place: Place,
) -> &'static str {
    // Released when this future ends or is dropped, however that happens; it also holds the
    // link, so the handler needs no handle of its own.
    let shared = &place.admission.shared;
    // Whether anything waited between the call's arrival and its outcome's sending. If not,
    // the outcome is as old as the call, to within the handler's run without a pause (and, for
    // work that was queued rather than run at once, its time in the queue), so the instant
    // read when the call arrived dates it in the reply cache with no second reading. An
    // earlier date only shortens the outcome's stay in the cache, by microseconds against a
    // `max_age` of seconds; it never lets a copy run again (an evicted outcome's id is kept).
    let mut waited = false;

    if let Some(ack) = super::Conn::ack_for(&header) {
        // The rarer paths (ack, error) are boxed, so that the common one keeps this future
        // small: it is allocated once per call.
        let acked = noting_waits(Box::pin(shared.send_frame(ack, 0, |_| Ok(()))), &mut waited);
        if let Err(e) = acked.await {
            tracing::debug!(call_id = header.call_id, error = %e, "could not send an ack");
        }
    }
    let guarded = AssertUnwindSafe(future).catch_unwind();
    let outcome = match deadline {
        // The timer is made only if the handler waits: most complete on their first poll.
        Some(d) => noting_waits(crate::deadline::within(d, guarded), &mut waited)
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
    // The handler is done: its place among the link's handlers goes back now, before its
    // outcome is sent, so that a caller that has its answer and calls again at once finds
    // the place free. A large call's ticket (its frame's bytes) stays until the outcome is
    // sent: the bytes of unsent results count. The server's count of running handlers, which
    // a shutdown waits on, still ends when this future does.
    if (place.admission.ticket.as_ref()).is_some_and(|t| !t.counts_bytes()) {
        give_back(&mut place.admission.ticket, shared);
    }
    if header.kind == FrameKind::OneWay {
        if let Err(e) = outcome {
            tracing::warn!(call_id = header.call_id, error = %e, "one-way call failed");
        }
        return label;
    }
    if let Some(session) = &shared.served {
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
        let sent = noting_waits(shared.send_shared(frame.clone()), &mut waited).await;
        if let Err(e) = sent {
            tracing::debug!(call_id = header.call_id, error = %e, "could not send an outcome");
        }
        let keep = !header.flags.contains(Flags::IDEMPOTENT);
        let finished = match arrived {
            Some(at) if !waited => at.into_std(),
            _ => std::time::Instant::now(),
        };
        let waiters = session.finish(header.call_id, &frame, keep, finished);
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
