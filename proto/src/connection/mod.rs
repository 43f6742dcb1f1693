//! One link's protocol state: what each received frame means, the peer's calls running here
//! and the room they take.
//!
//! This side's own calls are not kept here: they outlive links (a client's session sends them
//! again over the next link), so their table is the session's
//! ([`CallTable`](crate::session::calls::CallTable)), and a call over a link that never
//! reconnects is a session call like any other. The connection says which answers arrived
//! ([`Event::Answer`]); the session settles them.
//!
//! # The contract
//!
//! A [`Connection`] is driven the way `quinn-proto`'s is: it never waits, reads a clock or
//! touches a socket. The driver (in `courier`, one per link) feeds it
//!
//! - frames from the link: [`handle_frame`](Connection::handle_frame), or
//!   [`handle_frame_in`](Connection::handle_frame_in) for a one-way call that waited for room
//!   ([`reserve`](Connection::reserve));
//! - the handlers it runs: [`running`](Connection::running) once a handler exists,
//!   [`refuse`](Connection::refuse) if it could not be made, and
//!   [`handler_finished`](Connection::handler_finished) when it ends;
//! - the end of the link: [`link_lost`](Connection::link_lost).
//!
//! No decision here depends on the time: a call's deadline is its budget from the instant it
//! arrived, which the driver reads from its clock only for calls that have one
//! ([`Admitted::deadline`]). After each input the driver drains
//! [`poll_event`](Connection::poll_event) (what to do: settle an answer, run or abort a
//! handler, tell the session) and [`poll_transmit`](Connection::poll_transmit) (frames to
//! send: refusals). Every admitted handler holds a [`Ticket`] until it is given back, and the
//! table and counts never grow past [`Config`]'s limits, whatever the peer sends.
//!
//! `H` is what the driver keeps per running handler (what aborts it); the connection stores
//! it and hands it back, and never looks inside.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use courier_proto::connection::{Answer, Config, Connection, Event};
//! use courier_proto::ids::{InterfaceId, MethodId};
//! use courier_proto::wire::{FrameKind, Header};
//!
//! let now = Instant::now();
//! let mut conn: Connection<&str> = Connection::new(Config::default());
//!
//! // The peer calls, with 5 ms to spare: the call is admitted, its deadline an instant.
//! let mut call = Header::new(FrameKind::Call, 7, InterfaceId::new(1), MethodId::new(2));
//! call.budget_micros = 5_000;
//! conn.handle_frame(Bytes::copy_from_slice(&call.to_bytes()));
//! let Some(Event::Run(admitted)) = conn.poll_event() else { panic!("admitted") };
//! assert_eq!(admitted.deadline(now), Some(now + Duration::from_millis(5)));
//! conn.running(&admitted.ticket, "its abort handle").expect("not cancelled");
//! conn.handler_finished(admitted.ticket);
//!
//! // A reply to one of this side's calls goes to whoever keeps that call.
//! let reply = Header::new(FrameKind::Reply, 1, InterfaceId::new(1), MethodId::new(2));
//! conn.handle_frame(Bytes::copy_from_slice(&reply.to_bytes()));
//! assert!(matches!(
//!     conn.poll_event(),
//!     Some(Event::Answer { call_id: 1, answer: Answer::Outcome(Ok(_)) })
//! ));
//! ```

mod admission;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use std::collections::VecDeque;

pub use admission::{Admitted, Plain, Room, Ticket};

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
            call_bytes: 64 << 20,
            small_frame: 4096,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
            sessions: false,
        }
    }
}

/// An outcome of one of this side's calls: the answer frame (its header and all its bytes), or
/// what was wrong with a malformed one.
pub type Outcome = Result<(Header, Bytes), FrameProblem>;

/// What the peer said about one of this side's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// It has the call (an Ack): the call runs on even if its caller gives up.
    Ack,
    /// The call's outcome (a Reply or an Error), or a malformed answer, which fails the call.
    Outcome(Outcome),
}

/// What the driver must do, from [`Connection::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<H> {
    /// An answer to this side's call `call_id`: for whoever keeps the call (the session).
    Answer {
        /// The call it names.
        call_id: u64,
        /// What it says.
        answer: Answer,
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
pub struct Connection<H> {
    config: Config,
    handlers: HandlerTable<admission::Entry<H>>,
    /// With [`Config::sessions`]: how many of the peer's calls run on this link.
    counted: usize,
    /// Bytes held by the frames of running calls.
    call_bytes: usize,
    /// Tickets handed out, so that an entry is removed only by its own ticket.
    serial: u64,
    events: VecDeque<Event<H>>,
    transmits: VecDeque<Bytes>,
    closed: Option<String>,
}

impl<H> Connection<H> {
    /// A connection with nothing in flight.
    pub fn new(config: Config) -> Self {
        Connection {
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
    pub fn poll_event(&mut self) -> Option<Event<H>> {
        self.events.pop_front()
    }

    /// The next frame to send (an Error refusing a call), whole.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// Whether an event or a frame waits to be polled.
    pub fn has_output(&self) -> bool {
        !self.events.is_empty() || !self.transmits.is_empty()
    }

    /// Handles one frame from the peer.
    pub fn handle_frame(&mut self, frame: Bytes) {
        self.handle(frame, None);
    }

    /// Handles a one-way call for which the driver waited for `room` (see
    /// [`Connection::reserve`]).
    pub fn handle_frame_in(&mut self, frame: Bytes, room: Room) {
        self.handle(frame, Some(room));
    }

    fn handle(&mut self, frame: Bytes, room: Option<Room>) {
        let mut room = room;
        match receive(&frame, self.config.max_frame_size) {
            Received::Call(header) => self.on_call(header, frame, &mut room),
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
        self.events.push_back(answer_event(header, frame));
    }

    /// Whether `frame` is a one-way call that must wait for room ([`Connection::reserve`])
    /// before it is handed over: it cannot be refused with an answer, so rather than drop one
    /// when the handlers leave no room, whoever delivers it waits (and the link's bounded
    /// buffers push back on the peer). A frame over `max_frame_size` is not a call that will
    /// run: it is refused without waiting.
    pub fn waits_for_room(frame: &[u8], max_frame_size: usize) -> bool {
        crate::wire::kind_of(frame) == Some(FrameKind::OneWay) && frame.len() <= max_frame_size
    }

    /// The Ack an admitted call asks for (its ACK flag), to send before its handler runs.
    pub fn ack_for(header: &Header) -> Option<Header> {
        header.flags.contains(crate::wire::Flags::ACK).then(|| {
            Header::new(
                FrameKind::Ack,
                header.call_id,
                header.interface,
                header.method,
            )
        })
    }

    /// Takes an answer frame (an Ack, Reply or Error) without the connection: answers change
    /// nothing in it, since this side's calls are kept by their session, so a driver may
    /// decide them without the connection's lock. The event is the one
    /// [`Connection::handle_frame`] would make; a frame that is no answer, or one that needs
    /// the connection (a refusal to send back), is handed back.
    pub fn take_answer(frame: Bytes, max_frame_size: usize) -> Result<Event<H>, Bytes> {
        if !crate::wire::kind_of(&frame).is_some_and(FrameKind::is_answer) {
            return Err(frame);
        }
        match receive(&frame, max_frame_size) {
            Received::Answer(header) => Ok(answer_event(header, frame)),
            Received::Refused(Refusal::FailOwnCall { call_id, problem }) => Ok(Event::Answer {
                call_id,
                answer: Answer::Outcome(Err(problem)),
            }),
            _ => Err(frame),
        }
    }

    fn on_refused(&mut self, refusal: Refusal) {
        match refusal {
            Refusal::FailOwnCall { call_id, problem } => {
                self.events.push_back(Event::Answer {
                    call_id,
                    answer: Answer::Outcome(Err(problem)),
                });
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

    /// The link is gone (`reason`): every handler whose caller waits is aborted (one-way
    /// handlers run on: nobody waits for them, and the caller may well have closed right after
    /// sending), frames not yet sent are dropped, and nothing is admitted any more.
    /// Idempotent: the first reason stays.
    pub fn link_lost(&mut self, reason: &str) {
        if self.closed.is_some() {
            return;
        }
        self.closed = Some(reason.to_owned());
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
}

/// The event an answer frame makes.
fn answer_event<H>(header: Header, frame: Bytes) -> Event<H> {
    if header.kind == FrameKind::Error && header.call_id == 0 {
        // A report about a frame that named no call: no call of ours has id 0.
        let payload = ErrorPayload::decode(frame.get(HEADER_LEN..).unwrap_or_default());
        return Event::PeerReported {
            message: payload.message,
        };
    }
    let answer = match header.kind {
        FrameKind::Ack => Answer::Ack,
        _ => Answer::Outcome(Ok((header, frame))),
    };
    Event::Answer {
        call_id: header.call_id,
        answer,
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
