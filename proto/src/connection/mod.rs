//! One link's protocol state: the calls this side made and awaits, the peer's calls running
//! here and the room they take, and what each received frame means for them.
//!
//! # The contract
//!
//! A [`Connection`] is driven the way `quinn-proto`'s is: it never waits, reads a clock or
//! touches a socket. The driver (in `courier`, one per link) feeds it
//!
//! - frames from the link: [`handle_frame`](Connection::handle_frame), or
//!   [`handle_frame_in`](Connection::handle_frame_in) for a one-way call that waited for room
//!   ([`reserve`](Connection::reserve));
//! - its own calls: [`start_call`](Connection::start_call) and
//!   [`start_one_way`](Connection::start_one_way) give the header to send,
//!   [`cancel`](Connection::cancel) gives a call up;
//! - the handlers it runs: [`running`](Connection::running) once a handler exists,
//!   [`refuse`](Connection::refuse) if it could not be made, and
//!   [`handler_finished`](Connection::handler_finished) when it ends;
//! - time: [`handle_timeout`](Connection::handle_timeout) with the current instant, at or after
//!   [`poll_timeout`](Connection::poll_timeout);
//! - the end of the link: [`link_lost`](Connection::link_lost).
//!
//! After each input it drains [`poll_event`](Connection::poll_event) (what to do: wake a
//! caller, run or abort a handler, tell the session) and
//! [`poll_transmit`](Connection::poll_transmit) (frames to send: refusals, cancels). Every call
//! this side starts ends exactly once: an [`Event::Answered`] or the waiter handed back by
//! [`cancel`](Connection::cancel). Every admitted handler holds a [`Ticket`] until it is given
//! back, and the tables never grow past [`Config`]'s limits, whatever the peer sends.
//!
//! `W` is what the driver keeps per call of its own (what wakes the caller), `H` per running
//! handler (what aborts it); the connection stores them and hands them back, and never looks
//! inside.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use courier_proto::connection::{Config, Connection, Event, NewCall};
//! use courier_proto::ids::{InterfaceId, MethodId};
//! use courier_proto::wire::{FrameKind, Header};
//!
//! let now = Instant::now();
//! let mut conn: Connection<&str, ()> = Connection::new(Config::default());
//! let call = NewCall::new(InterfaceId::new(1), MethodId::new(2))
//!     .deadline(now + Duration::from_millis(5));
//! let header = conn.start_call(now, &call, "caller").expect("room");
//! assert_eq!(header.budget_micros, 5_000);
//!
//! // The reply arrives: the caller is woken with it.
//! let reply = Header::new(FrameKind::Reply, header.call_id, header.interface, header.method);
//! conn.handle_frame(now, Bytes::copy_from_slice(&reply.to_bytes()));
//! match conn.poll_event() {
//!     Some(Event::Answered { waiter, outcome: Ok((h, _)), .. }) => {
//!         assert_eq!((waiter, h.kind), ("caller", FrameKind::Reply))
//!     }
//!     other => panic!("{other:?}"),
//! }
//! assert!(conn.poll_event().is_none());
//! ```

mod admission;
mod calls;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

pub use admission::{Admitted, Room, Ticket};
pub use calls::{NewCall, StartError};

use crate::handlers::HandlerTable;
use crate::received::{receive, Received, Refusal};
use crate::wire::{error_frame, Claims, ErrorPayload, FrameKind, FrameProblem, Header, HEADER_LEN};

/// The limits a connection applies. Defaults are `courier`'s `Limits` defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame accepted, header included.
    pub max_frame_size: usize,
    /// Most of the peer's calls running at once on this link.
    pub max_handlers: usize,
    /// Most of this side's calls awaiting an answer on this link.
    pub max_in_flight: usize,
    /// Most bytes the frames of running calls may hold (frames above `small_frame` count).
    pub call_bytes: usize,
    /// Frames up to this size take no call bytes: `max_handlers` bounds them well enough, and
    /// skipping them keeps the count off the path of small calls.
    pub small_frame: usize,
    /// Most metadata entries a call may carry.
    pub max_metadata_entries: usize,
    /// Most metadata bytes a call may carry.
    pub max_metadata_bytes: usize,
    /// Whether the peer's calls belong to a session that outlives this link (a server's link):
    /// the session recognizes copies by call id, so this link only counts their handlers. On
    /// a link without one (a client serving its server's callbacks) handlers are kept by call
    /// id, and a second call with a running call's id is refused.
    pub sessions: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_frame_size: 16 << 20,
            max_handlers: 4096,
            max_in_flight: 1024,
            call_bytes: 64 << 20,
            small_frame: 4096,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
            sessions: false,
        }
    }
}

/// Why one of this side's calls ended without an answer frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// The answer frame was malformed.
    Malformed(FrameProblem),
    /// The call's deadline passed first.
    DeadlineExceeded,
    /// The link was lost first (the reason it gave).
    ConnectionLost(String),
}

/// How one of this side's calls ended: the answer frame (its header and all its bytes), or why
/// none came.
pub type Outcome = Result<(Header, Bytes), CallError>;

/// An answer for a call this link's table does not hold: a client session's call (its table
/// outlives the link), or one given up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unclaimed {
    /// The server acknowledged the call.
    Ack,
    /// The call's outcome.
    Outcome(Outcome),
}

/// What the driver must do, from [`Connection::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<W, H> {
    /// One of this side's calls ended: wake its caller with `outcome`.
    Answered {
        /// The call.
        call_id: u64,
        /// What the driver registered for it.
        waiter: W,
        /// The answer, or why none came.
        outcome: Outcome,
    },
    /// The peer acknowledged one of this side's calls (still in the table: see
    /// [`Connection::waiter_mut`]). From now on cancelling it sends no Cancel: it runs on.
    Acked {
        /// The call.
        call_id: u64,
    },
    /// An answer for a call not in this link's table.
    Unclaimed {
        /// The call it names.
        call_id: u64,
        /// What it says.
        answer: Unclaimed,
    },
    /// A peer's call was admitted: make and run its handler, and give the ticket back with
    /// [`Connection::handler_finished`] when it ends (or [`Connection::refuse`] if it cannot
    /// run).
    Run(Admitted),
    /// Stop a running handler: the peer cancelled it, or the link was lost while its caller
    /// waited for it.
    Abort(H),
    /// The peer cancelled call `call_id`, which belongs to its session
    /// ([`Config::sessions`]): the session decides.
    Cancelled {
        /// The call.
        call_id: u64,
    },
    /// The peer holds every outcome below `watermark` (a client's Release).
    Release {
        /// The watermark.
        watermark: u64,
    },
    /// The peer said goodbye: its session is over (from a client) or it shuts down (from a
    /// server).
    Goodbye,
    /// The peer reported an error about a frame that named no call.
    PeerReported {
        /// Its message.
        message: String,
    },
    /// A malformed frame nobody is owed an answer for was dropped.
    Dropped {
        /// What was wrong.
        problem: FrameProblem,
    },
}

/// One link's protocol state; see the [module docs](self) for the contract.
#[derive(Debug)]
pub struct Connection<W, H> {
    config: Config,
    calls: calls::CallTable<W>,
    handlers: HandlerTable<admission::Entry<H>>,
    /// With [`Config::sessions`]: how many of the peer's calls run on this link.
    counted: usize,
    /// Bytes held by the frames of running calls.
    call_bytes: usize,
    /// Tickets handed out, so that an entry is removed only by its own ticket.
    serial: u64,
    events: VecDeque<Event<W, H>>,
    transmits: VecDeque<Bytes>,
    closed: Option<String>,
}

impl<W, H> Connection<W, H> {
    /// A connection with nothing in flight.
    pub fn new(config: Config) -> Self {
        Connection {
            calls: calls::CallTable::new(config.max_in_flight),
            handlers: HandlerTable::new(config.max_handlers),
            config,
            counted: 0,
            call_bytes: 0,
            serial: 0,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            closed: None,
        }
    }

    /// The limits it applies.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the link was lost (or closed).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the link closed, once it has.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<Event<W, H>> {
        self.events.pop_front()
    }

    /// The next frame to send (an Error refusing a call, a Cancel), whole.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// Handles one frame from the peer, received at `now`.
    pub fn handle_frame(&mut self, now: Instant, frame: Bytes) {
        self.handle(now, frame, None);
    }

    /// Handles a one-way call for which the driver waited for `room` (see
    /// [`Connection::reserve`]).
    pub fn handle_frame_in(&mut self, now: Instant, frame: Bytes, room: Room) {
        self.handle(now, frame, Some(room));
    }

    fn handle(&mut self, now: Instant, frame: Bytes, room: Option<Room>) {
        let mut room = room;
        match receive(&frame, self.config.max_frame_size) {
            Received::Call(header) => self.on_call(now, header, frame, &mut room),
            Received::Answer(header) => self.on_answer(header, frame),
            Received::Cancel(header) => self.on_cancel(header.call_id),
            Received::Release { watermark } => self.events.push_back(Event::Release { watermark }),
            Received::Goodbye => self.events.push_back(Event::Goodbye),
            Received::Refused(refusal) => self.on_refused(refusal),
        }
        if let Some(room) = room {
            // A reserved room the frame did not use (it was refused): give it back.
            self.give_back(room);
        }
    }

    fn on_answer(&mut self, header: Header, frame: Bytes) {
        if header.kind == FrameKind::Error && header.call_id == 0 {
            // A report about a frame that named no call: no call of ours has id 0.
            let payload = ErrorPayload::decode(frame.get(HEADER_LEN..).unwrap_or_default());
            self.events.push_back(Event::PeerReported {
                message: payload.message,
            });
            return;
        }
        if header.kind == FrameKind::Ack {
            let event = if self.calls.acked(header.call_id) {
                Event::Acked {
                    call_id: header.call_id,
                }
            } else {
                Event::Unclaimed {
                    call_id: header.call_id,
                    answer: Unclaimed::Ack,
                }
            };
            self.events.push_back(event);
            return;
        }
        self.settle(header.call_id, Ok((header, frame)));
    }

    /// Ends this side's call `call_id` with `outcome`, or passes the outcome on if the table
    /// does not hold it.
    fn settle(&mut self, call_id: u64, outcome: Outcome) {
        let event = match self.calls.remove(call_id) {
            Some(call) => Event::Answered {
                call_id,
                waiter: call.waiter,
                outcome,
            },
            None => Event::Unclaimed {
                call_id,
                answer: Unclaimed::Outcome(outcome),
            },
        };
        self.events.push_back(event);
    }

    fn on_refused(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::FailOwnCall { call_id, problem } => {
                self.settle(call_id, Err(CallError::Malformed(problem)));
            }
            Refusal::AnswerPeer { claims, problem } => {
                self.transmits
                    .push_back(error_frame(&claims, &ErrorPayload::for_problem(&problem)));
            }
            Refusal::Drop { problem } => self.events.push_back(Event::Dropped { problem }),
        }
    }

    /// Queues an Error for the peer's call `header` (nothing for a one-way call: nobody
    /// waits for an answer to it).
    fn answer_error(&mut self, header: &Header, payload: &ErrorPayload) {
        if header.kind != FrameKind::OneWay {
            self.transmits
                .push_back(error_frame(&Claims::of(header), payload));
        }
    }

    /// The link is gone (`reason`): every call of this side ends with `ConnectionLost`, and
    /// every handler whose caller waits is aborted (one-way handlers run on: nobody waits for
    /// them, and the caller may well have closed right after sending). Idempotent.
    pub fn link_lost(&mut self, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason.to_owned());
        for (call_id, call) in self.calls.drain() {
            self.events.push_back(Event::Answered {
                call_id,
                waiter: call.waiter,
                outcome: Err(CallError::ConnectionLost(reason.to_owned())),
            });
        }
        let events = &mut self.events;
        self.handlers.retain(|entry| {
            if entry.one_way {
                return true;
            }
            if let Some(h) = entry.handler.take() {
                events.push_back(Event::Abort(h));
            }
            false
        });
        self.transmits.clear();
    }

    /// The earliest instant at which [`Connection::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls.earliest_deadline()
    }

    /// Ends, with `DeadlineExceeded`, every call of this side whose deadline is at or before
    /// `now`, and cancels it on the peer unless it was acknowledged to run on.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (call_id, call) in self.calls.expire(now) {
            if call.cancels_on_drop() {
                self.transmits.push_back(call.cancel_frame(call_id));
            }
            self.events.push_back(Event::Answered {
                call_id,
                waiter: call.waiter,
                outcome: Err(CallError::DeadlineExceeded),
            });
        }
    }
}

impl ErrorPayload {
    /// The payload of an Error refusing a frame for `problem`: TooLarge with the sizes for a
    /// frame too large, Protocol otherwise.
    pub fn for_problem(problem: &FrameProblem) -> ErrorPayload {
        match *problem {
            FrameProblem::TooLarge { len, limit } => ErrorPayload {
                too_large: Some((len as u64, limit as u64)),
                ..ErrorPayload::new(
                    crate::wire::ErrorCode::TooLarge,
                    format!("frame of {len} bytes exceeds the limit of {limit} bytes"),
                )
            },
            ref other => ErrorPayload::new(crate::wire::ErrorCode::Protocol, other.to_string()),
        }
    }
}
