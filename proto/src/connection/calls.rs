//! This side's calls over one link: starting them, the table of those awaiting an answer,
//! cancelling them and their deadlines.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;

use super::Connection;
use crate::ids::{InterfaceId, MethodId};
use crate::wire::{Flags, FrameKind, Header};

/// A call this side is about to make: what its header says.
#[derive(Debug, Clone)]
pub struct NewCall {
    interface: InterfaceId,
    method: MethodId,
    version: u16,
    flags: Flags,
    deadline: Option<Instant>,
}

impl NewCall {
    /// A call of `method` of `interface`: version 0, no flags, no deadline.
    pub fn new(interface: InterfaceId, method: MethodId) -> NewCall {
        NewCall {
            interface,
            method,
            version: 0,
            flags: Flags::NONE,
            deadline: None,
        }
    }

    /// The interface version the caller was built against.
    pub fn version(mut self, version: u16) -> NewCall {
        self.version = version;
        self
    }

    /// The header's flags.
    pub fn flags(mut self, flags: Flags) -> NewCall {
        self.flags = flags;
        self
    }

    /// The instant the caller gives up.
    pub fn deadline(mut self, deadline: Instant) -> NewCall {
        self.deadline = Some(deadline);
        self
    }

    /// The deadline, if any.
    pub fn deadline_at(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Why a call could not start; the waiter comes back with it.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartError<W> {
    /// The link was lost (the reason it gave).
    Closed(String, W),
    /// `max_in_flight` calls already await an answer: wait for one to end.
    Full(W),
    /// The deadline has passed already.
    DeadlineExceeded(W),
}

/// One of this side's calls awaiting its answer.
#[derive(Debug)]
pub(super) struct OwnCall<W> {
    pub(super) waiter: W,
    interface: InterfaceId,
    method: MethodId,
    deadline: Option<Instant>,
    /// The peer acknowledged it: it runs on whatever the caller does.
    acked: bool,
}

impl<W> OwnCall<W> {
    /// Whether giving it up tells the peer to drop it.
    pub(super) fn cancels_on_drop(&self) -> bool {
        !self.acked
    }

    /// The Cancel frame for it.
    pub(super) fn cancel_frame(&self, call_id: u64) -> Bytes {
        let header = Header::new(FrameKind::Cancel, call_id, self.interface, self.method);
        Bytes::copy_from_slice(&header.to_bytes())
    }
}

/// The calls awaiting an answer, by call id, at most `max` at once.
#[derive(Debug)]
pub(super) struct CallTable<W> {
    max: usize,
    next_id: u64,
    calls: HashMap<u64, OwnCall<W>>,
}

impl<W> CallTable<W> {
    pub(super) fn new(max: usize) -> Self {
        CallTable {
            max,
            next_id: 1,
            calls: HashMap::new(),
        }
    }

    /// The next call id: one sequence for every kind, since the peer keys its handlers by id.
    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn remove(&mut self, call_id: u64) -> Option<OwnCall<W>> {
        self.calls.remove(&call_id)
    }

    /// Marks call `call_id` acknowledged; false if the table does not hold it.
    pub(super) fn acked(&mut self, call_id: u64) -> bool {
        match self.calls.get_mut(&call_id) {
            Some(call) => {
                call.acked = true;
                true
            }
            None => false,
        }
    }

    pub(super) fn drain(&mut self) -> impl Iterator<Item = (u64, OwnCall<W>)> + '_ {
        self.calls.drain()
    }

    pub(super) fn earliest_deadline(&self) -> Option<Instant> {
        self.calls.values().filter_map(|c| c.deadline).min()
    }

    /// Takes out every call whose deadline is at or before `now`.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(u64, OwnCall<W>)> {
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.calls.remove(&id).map(|c| (id, c)))
            .collect()
    }
}

/// The deadline budget a header carries: microseconds left, rounded up so that a
/// sub-microsecond budget is not mistaken for "none"; a budget too long for the field is sent
/// as none (the caller enforces it alone). `None` if the deadline has passed.
pub(super) fn budget_micros(now: Instant, deadline: Option<Instant>) -> Option<u32> {
    let Some(deadline) = deadline else {
        return Some(0);
    };
    let left = deadline.saturating_duration_since(now);
    if left.is_zero() {
        return None;
    }
    Some(u32::try_from(left.as_micros().max(1)).unwrap_or(0))
}

impl<W, H> Connection<W, H> {
    /// Starts a call that awaits an answer: registers `waiter` under a new call id and returns
    /// the header to send (budget from the deadline and `now`, the call's flags). The call
    /// ends with an [`Event::Answered`], or by [`Connection::cancel`].
    pub fn start_call(
        &mut self,
        now: Instant,
        call: &NewCall,
        waiter: W,
    ) -> Result<Header, StartError<W>> {
        if let Some(reason) = &self.closed {
            return Err(StartError::Closed(reason.clone(), waiter));
        }
        if self.calls.calls.len() >= self.calls.max {
            return Err(StartError::Full(waiter));
        }
        let Some(budget_micros) = budget_micros(now, call.deadline) else {
            return Err(StartError::DeadlineExceeded(waiter));
        };
        let call_id = self.calls.next_id();
        self.calls.calls.insert(
            call_id,
            OwnCall {
                waiter,
                interface: call.interface,
                method: call.method,
                deadline: call.deadline,
                acked: false,
            },
        );
        Ok(Header {
            flags: call.flags,
            version: call.version,
            budget_micros,
            ..Header::new(FrameKind::Call, call_id, call.interface, call.method)
        })
    }

    /// Starts a one-way call: nothing awaits it, so nothing is kept; returns the header.
    pub fn start_one_way(&mut self, call: &NewCall) -> Result<Header, String> {
        if let Some(reason) = &self.closed {
            return Err(reason.clone());
        }
        let call_id = self.calls.next_id();
        Ok(Header {
            flags: call.flags,
            version: call.version,
            ..Header::new(FrameKind::OneWay, call_id, call.interface, call.method)
        })
    }

    /// The caller gave call `call_id` up: it leaves the table and its waiter comes back; a
    /// Cancel is queued for the peer unless the call was acknowledged (it runs on) or the
    /// link is closed. `None` if the call had already ended.
    pub fn cancel(&mut self, call_id: u64) -> Option<W> {
        let call = self.calls.remove(call_id)?;
        if call.cancels_on_drop() && self.closed.is_none() {
            self.transmits.push_back(call.cancel_frame(call_id));
        }
        Some(call.waiter)
    }

    /// Whether call `call_id` awaits its answer in this table.
    pub fn awaits(&self, call_id: u64) -> bool {
        self.calls.calls.contains_key(&call_id)
    }

    /// What the driver registered for call `call_id`, while it awaits its answer.
    pub fn waiter_mut(&mut self, call_id: u64) -> Option<&mut W> {
        self.calls.calls.get_mut(&call_id).map(|c| &mut c.waiter)
    }

    /// How many of this side's calls await an answer.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.calls.len()
    }
}
