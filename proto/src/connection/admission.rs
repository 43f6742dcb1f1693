//! The peer's calls on one link: admitting them within the limits, the tickets their handlers
//! hold, cancelling them.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Connection, Event};
use crate::handlers::Refused;
use crate::metadata::Metadata;
use crate::received::call_arguments;
use crate::wire::{ErrorCode, ErrorPayload, FrameKind, Header};

/// A peer's call admitted to run, from [`Event::Run`].
#[derive(Debug)]
pub struct Admitted {
    /// Its header.
    pub header: Header,
    /// The whole frame.
    pub frame: Bytes,
    /// Where its arguments start in `frame` (after the metadata block, if any).
    pub args_at: usize,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its place among the link's handlers and call bytes, held until it is given back.
    pub ticket: Ticket,
}

impl Admitted {
    /// How long its caller waits, from the instant the call arrived: its header's budget
    /// (none for no deadline).
    #[inline]
    pub fn budget(&self) -> Option<Duration> {
        (self.header.budget_micros != 0)
            .then(|| Duration::from_micros(u64::from(self.header.budget_micros)))
    }

    /// When its caller gives up, for a call that arrived at `arrived`.
    #[inline]
    pub fn deadline(&self, arrived: Instant) -> Option<Instant> {
        self.budget().map(|budget| arrived + budget)
    }
}

/// What a running handler holds of its link: a place among the handlers and the bytes of its
/// frame. Given back, once, with [`Connection::handler_finished`] or [`Connection::refuse`];
/// it cannot be copied, so it cannot be given back twice.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a ticket not given back holds its place for the connection's life"]
pub struct Ticket {
    pub(super) call_id: u64,
    pub(super) serial: u64,
    bytes: usize,
    /// Counted among the session's handlers ([`Config::sessions`](super::Config::sessions)),
    /// rather than kept in the table by call id.
    counted: bool,
}

impl Ticket {
    /// The call it admitted.
    #[inline]
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// Whether its frame counts against the call-bytes budget (it is larger than
    /// [`Config::small_frame`](super::Config::small_frame)).
    #[inline]
    pub fn counts_bytes(&self) -> bool {
        self.bytes > 0
    }

    /// A ticket that holds only a counted place (a session's call with a small frame, the
    /// common case on a server's link) turns into a [`Plain`] token: several are given back
    /// at once with [`Connection::plain_finished`], so a driver can count them without
    /// taking the connection's lock at every handler's end. Any other ticket comes back as
    /// it is.
    #[inline]
    pub fn plain(self) -> Result<Plain, Ticket> {
        if self.counted && self.bytes == 0 {
            Ok(Plain(()))
        } else {
            Err(self)
        }
    }
}

/// A [`Ticket`] that held only a counted place ([`Ticket::plain`]): give it back by counting it
/// in [`Connection::plain_finished`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a plain ticket not counted back holds its place for the connection's life"]
pub struct Plain(());

impl Room {
    /// Whether the frame it was reserved for counts against the call-bytes budget.
    #[inline]
    pub fn counts_bytes(&self) -> bool {
        self.bytes > 0
    }
}

/// Room taken ahead for a one-way call ([`Connection::reserve`]): such a call cannot be
/// refused with an answer, so whoever delivers it waits for room rather than drop it.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "room not used or given back holds its place for the connection's life"]
pub struct Room {
    bytes: usize,
    counted: bool,
}

/// A handler kept by call id (a link without a session).
#[derive(Debug)]
pub(super) struct Entry<H> {
    serial: u64,
    pub(super) one_way: bool,
    /// Set by [`Connection::running`] once the driver has made it.
    pub(super) handler: Option<H>,
}

impl<H> Connection<H> {
    /// Bytes a frame of `len` bytes takes from the call-bytes budget (a frame larger than the
    /// whole budget takes all of it, so it runs alone rather than never).
    fn bytes_for(&self, len: usize) -> usize {
        if len <= self.config.small_frame {
            0
        } else {
            len.min(self.config.call_bytes)
        }
    }

    /// Whether `bytes` more fit the call-bytes budget.
    fn bytes_fit(&self, bytes: usize) -> bool {
        self.call_bytes + bytes <= self.config.call_bytes
    }

    /// Whether a place among the handlers is free.
    fn place_free(&self) -> bool {
        if self.config.sessions {
            self.counted < self.config.max_handlers
        } else {
            self.handlers.has_room()
        }
    }

    /// Takes room for a one-way call of `len` bytes if there is some now; `None` means wait
    /// for a handler to finish (or the link to close) and try again. Used with
    /// [`Connection::handle_frame_in`].
    pub fn reserve(&mut self, len: usize) -> Option<Room> {
        let bytes = self.bytes_for(len);
        if self.closed.is_some() || !self.bytes_fit(bytes) || !self.place_free() {
            return None;
        }
        self.call_bytes += bytes;
        // Only a session's handlers are counted ahead: on a link that keys them by call id,
        // only one reader delivers, so the place it saw free is still free when the call
        // goes in.
        let counted = self.config.sessions;
        if counted {
            self.counted += 1;
        }
        Some(Room { bytes, counted })
    }

    /// Gives back room a frame did not use (the driver could not use it after all).
    pub fn give_back(&mut self, room: Room) {
        self.call_bytes -= room.bytes;
        if room.counted {
            self.counted -= 1;
        }
    }

    pub(super) fn on_call(&mut self, header: Header, frame: Bytes, room: &mut Option<Room>) {
        if self.closed.is_some() {
            return;
        }
        let (max_entries, max_bytes) = (
            self.config.max_metadata_entries,
            self.config.max_metadata_bytes,
        );
        let (metadata, args_at) = match call_arguments(&frame, &header, max_entries, max_bytes) {
            Ok(found) => found,
            Err(reason) => {
                let payload = ErrorPayload::new(ErrorCode::Protocol, format!("metadata: {reason}"));
                self.answer_error(&header, &payload);
                return;
            }
        };
        // Room reserved ahead is used as it is; otherwise it is taken now or the call is
        // refused. Nothing is taken until every check has passed.
        let reserved = room.as_ref().map(|r| (r.bytes, r.counted));
        let bytes = reserved.map_or_else(|| self.bytes_for(frame.len()), |(b, _)| b);
        if reserved.is_none() && !self.bytes_fit(bytes) {
            let message = format!(
                "the calls running on this connection already hold close to {} bytes",
                self.config.call_bytes
            );
            self.answer_error(&header, &overloaded(message));
            return;
        }
        let counted = self.config.sessions;
        let place_taken = reserved.is_some_and(|(_, c)| c);
        let place = if counted {
            if place_taken || self.counted < self.config.max_handlers {
                Ok(())
            } else {
                Err(Refused::Full {
                    max: self.config.max_handlers,
                })
            }
        } else {
            self.handlers.check(header.call_id)
        };
        if let Err(why) = place {
            self.answer_error(&header, &refused(why));
            return;
        }
        *room = None;
        if reserved.is_none() {
            self.call_bytes += bytes;
        }
        let serial = self.serial;
        self.serial += 1;
        if counted {
            if !place_taken {
                self.counted += 1;
            }
        } else {
            let entry = Entry {
                serial,
                one_way: header.kind == FrameKind::OneWay,
                handler: None,
            };
            // Checked just above.
            let _ = self.handlers.insert(header.call_id, entry);
        }
        let ticket = Ticket {
            call_id: header.call_id,
            serial,
            bytes,
            counted,
        };
        self.events.push_back(Event::Run(Admitted {
            header,
            frame,
            args_at,
            metadata,
            ticket,
        }));
    }

    /// The driver made the handler of `ticket`'s call: it is kept, to abort it if the peer
    /// cancels the call or the link is lost. `Err` gives it back if that happened already:
    /// do not run it (and give the ticket back).
    pub fn running(&mut self, ticket: &Ticket, handler: H) -> Result<(), H> {
        if ticket.counted {
            return Ok(());
        }
        match self.handlers.get_mut(ticket.call_id) {
            Some(entry) if entry.serial == ticket.serial => {
                entry.handler = Some(handler);
                Ok(())
            }
            _ => Err(handler),
        }
    }

    /// The handler of `ticket`'s call ended (or never ran): its place and bytes are free.
    pub fn handler_finished(&mut self, ticket: Ticket) {
        self.call_bytes -= ticket.bytes;
        if ticket.counted {
            self.counted -= 1;
        } else if self
            .handlers
            .get_mut(ticket.call_id)
            .is_some_and(|e| e.serial == ticket.serial)
        {
            self.handlers.remove(ticket.call_id);
        }
    }

    /// The handlers of `n` [`Plain`] tickets ended: their places are free.
    pub fn plain_finished(&mut self, n: usize) {
        self.counted -= n.min(self.counted);
    }

    /// The call of `ticket` cannot run (the driver found no handler for it, or it was refused
    /// beyond this link): answer `header`'s caller with `payload` and free the ticket.
    pub fn refuse(&mut self, ticket: Ticket, header: &Header, payload: &ErrorPayload) {
        self.answer_error(header, payload);
        self.handler_finished(ticket);
    }

    /// The peer cancels its call `call_id`: a handler kept by id is aborted; a session's call
    /// is the session's to cancel.
    pub(super) fn on_cancel(&mut self, call_id: u64) {
        if let Some(entry) = self.handlers.remove(call_id) {
            if let Some(h) = entry.handler {
                self.events.push_back(Event::Abort(h));
            }
        }
        if self.config.sessions {
            self.events.push_back(Event::Cancelled { call_id });
        }
    }

    /// How many of the peer's calls run on this link.
    pub fn handlers_running(&self) -> usize {
        if self.config.sessions {
            self.counted
        } else {
            self.handlers.len()
        }
    }

    /// Bytes the frames of running calls hold.
    pub fn call_bytes_held(&self) -> usize {
        self.call_bytes
    }
}

/// The error a caller gets for a call the handlers' limit refused.
fn refused(why: Refused) -> ErrorPayload {
    match why {
        Refused::Running { call_id } => ErrorPayload::new(
            ErrorCode::Protocol,
            format!("call id {call_id} is already running"),
        ),
        Refused::Full { max } => {
            overloaded(format!("{max} calls already running on this connection"))
        }
    }
}

/// An `Overloaded` payload.
fn overloaded(message: String) -> ErrorPayload {
    ErrorPayload::new(ErrorCode::Overloaded, message)
}
