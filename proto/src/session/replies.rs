//! The server's sessions: one per client id, across that client's links.
//!
//! A session remembers, for each call id it has seen and the client still may ask about, either
//! that the call is running (with whoever waits for its outcome) or its outcome: the reply or
//! error frame, byte for byte, so that a copy of an at-most-once call is answered without
//! running the method again. The cache is bounded in bytes and age across all sessions; it
//! remembers the ids of the outcomes it evicts (up to a bound, then a high-water id), so that a
//! late copy is refused with a distinct error instead of being run a second time.
//!
//! Epochs: a hello with a newer epoch for a known client id ends the old session (its handlers
//! are aborted, its cache dropped); a hello with an older epoch is refused.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::hash_table::Entry;

use super::call_map::{CallMap, Key};
use crate::wire::{ErrorCode, ErrorPayload};

/// What every cached outcome costs beside its bytes (map entries, bookkeeping), so that the
/// byte bound also bounds the number of entries, even of empty outcomes.
pub const ENTRY_OVERHEAD: usize = 64;

/// Who a session belongs to: the client id from the hello, and a digest of the peer's
/// authenticated identity (its certificate chain, or its uid, under a hash keyed at random per
/// process; 0 when the transport authenticated nothing), so that a peer that learns another's client id cannot take over
/// that client's session unless it can also authenticate as it.
pub type ClientKey = (u128, u64);

/// How many of a client's most recent one-way call ids a session remembers to drop copies.
pub const ONE_WAY_MEMORY: usize = 1024;

/// The reply cache's bounds.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Bytes of cached outcomes across all sessions (each counted with [`ENTRY_OVERHEAD`]).
    pub max_bytes: usize,
    /// How long an outcome is kept for a client that has not yet said it has it.
    pub max_age: Duration,
    /// Sessions kept at most; past it, a new client's session ends the one detached longest.
    pub max_sessions: usize,
}

/// How a hello fits the sessions.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello<A> {
    /// A new client id, or the same epoch again (a reconnect): serve it. A new session past
    /// the bound on sessions ended the longest-detached one: its handlers, to abort.
    Accepted(Vec<A>),
    /// A newer epoch of a known client: the old incarnation's running handlers, to abort.
    Reincarnated(Vec<A>),
    /// An older epoch than the one the server knows: refuse it.
    Stale,
}

/// Which call a call frame is, besides its id: a copy must name the same interface and method
/// as the call it copies, or it is no copy (a client that reuses an id, or a peer probing the
/// cache) and is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Called {
    /// The interface id the call named.
    pub interface: u32,
    /// The method id the call named.
    pub method: u32,
}

/// What to do with a call frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// A call not seen before: run it (and [`Sessions::finish`] it).
    Run,
    /// A copy of a call still running: its outcome goes to this waiter too when it finishes.
    Attached,
    /// A copy of a finished call: answer with this frame.
    Cached(Bytes),
    /// A copy of a call that was cancelled before it finished: refuse it with `Cancelled`
    /// (it may have partly run; it does not run again).
    Cancelled,
    /// A copy of a call below the client's watermark: the client said it holds its outcome.
    /// Refuse it with `Released`; it does not run again.
    Released,
    /// The same call id as a call of another interface or method: refuse it with `Protocol`.
    Mismatch(Called),
    /// A copy of a call the cache no longer remembers: refuse it with `ReplyEvicted`.
    Forgotten,
    /// The link belongs to a session that ended (a newer epoch replaced it): refuse the call
    /// with `Superseded`, then close the link.
    Superseded,
    /// A call not seen before, while the server is shutting down: refuse it with
    /// `Unavailable` (it did not run, so the client may send it elsewhere).
    Unavailable,
}

impl Begin {
    /// The Error payload that refuses call `call` for this reason, for the reasons that
    /// refuse a call (`None` for [`Begin::Run`], [`Begin::Attached`] and [`Begin::Cached`]).
    /// After [`Begin::Superseded`]'s the server closes the link.
    pub fn refusal(&self, call: u64) -> Option<ErrorPayload> {
        let (code, message) = match self {
            Begin::Run | Begin::Attached | Begin::Cached(_) => return None,
            Begin::Unavailable => (
                ErrorCode::Unavailable,
                "the server is shutting down; the call did not run".to_owned(),
            ),
            Begin::Forgotten => (
                ErrorCode::ReplyEvicted,
                format!("call {call} is no longer in the server's reply cache"),
            ),
            Begin::Mismatch(called) => (
                ErrorCode::Protocol,
                format!(
                    "call id {call} was used for interface {:#010x} method {:#010x}: a copy \
                     must call the same method",
                    called.interface, called.method
                ),
            ),
            Begin::Released => (
                ErrorCode::Released,
                format!(
                    "call {call} is below the client's watermark (a release said the client \
                     holds its outcome); it does not run again"
                ),
            ),
            Begin::Cancelled => (
                ErrorCode::Cancelled,
                format!("call {call} was cancelled before it finished; it does not run again"),
            ),
            Begin::Superseded => (
                ErrorCode::Superseded,
                "a newer epoch of this client took over; this connection closes and the call \
                 did not run"
                    .to_owned(),
            ),
        };
        Some(ErrorPayload::new(code, message))
    }
}

/// A running call ended by the server (its shutdown's grace passed): its handler, to abort,
/// who waits for it, and the frame to tell them.
#[derive(Debug)]
pub struct Ended<A, W> {
    /// Aborts the handler.
    pub abort: A,
    /// Who waits for the call's outcome.
    pub waiters: Waiters<W>,
    /// The Error frame (`Aborted`) that tells them.
    pub frame: Bytes,
}

/// Where a cached outcome is, in storing order.
#[derive(Debug, Clone, Copy)]
struct Kept {
    at: SessionRef,
    call: Key,
    seq: u64,
    when: Instant,
}

/// What a cached outcome counts against the cache's bytes.
fn cost(frame: &Option<Bytes>) -> usize {
    frame.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD
}

#[derive(Debug)]
enum Slot<A, W> {
    Running {
        abort: A,
        waiters: Waiters<W>,
        called: Called,
    },
    Done {
        frame: Option<Bytes>,
        seq: u64,
        called: Called,
    },
}

impl<A, W> Slot<A, W> {
    fn called(&self) -> Called {
        match self {
            Slot::Running { called, .. } | Slot::Done { called, .. } => *called,
        }
    }
}

/// Who waits for a running call: nearly always one link, which needs no allocation; each
/// waiter at most once, so copies of a call on one link cannot grow the list.
#[derive(Debug)]
pub struct Waiters<W> {
    first: Option<W>,
    more: Vec<W>,
    /// A copy came on the first waiter's link while the call ran: that link may need the
    /// outcome again (the first answer may have gone before the copy came, and on a transport
    /// with a stream per call the copy waits on a stream of its own).
    again: bool,
}

impl<W: PartialEq> Waiters<W> {
    fn one(waiter: W) -> Self {
        Waiters {
            first: Some(waiter),
            more: Vec::new(),
            again: false,
        }
    }

    fn none() -> Self {
        Waiters {
            first: None,
            more: Vec::new(),
            again: false,
        }
    }

    fn add(&mut self, waiter: W) {
        if self.first.as_ref() == Some(&waiter) {
            self.again = true;
        } else if !self.more.contains(&waiter) {
            self.more.push(waiter);
        }
    }
}

impl<W> Waiters<W> {
    /// Whether a copy came on the first waiter's link while the call ran, so that link must
    /// be sent the outcome again even if it had it already.
    pub fn asked_again(&self) -> bool {
        self.again
    }
}

impl<W> IntoIterator for Waiters<W> {
    type Item = W;
    type IntoIter = std::iter::Chain<std::option::IntoIter<W>, std::vec::IntoIter<W>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.more)
    }
}

#[derive(Debug)]
struct Session<A, W> {
    epoch: u64,
    /// Every call id below this has its outcome at the client.
    floor: u64,
    /// The ids of calls whose outcomes were evicted (above `floor`): a copy of one is refused.
    /// Kept apart from the outcomes, so that a call that is merely late (overtaken by later
    /// ones whose outcomes were evicted) still runs.
    evicted: BTreeSet<u64>,
    /// Beyond the bound on those ids, the highest one dropped: a call at or below it that is
    /// not known is refused, since it may be a copy of one.
    forgotten: Option<u64>,
    calls: CallMap<Slot<A, W>>,
    /// The ids of `calls`, lowest first, so that a release finds what it releases in time
    /// proportional to that, not to what the session holds. Ids whose entry went another way
    /// (an idempotent call's, an evicted outcome's) stay until a release or a compaction
    /// passes them; a heap on a vector keeps its room, so the per-call path allocates nothing
    /// (an ordered map would allocate and free its nodes as calls come and go).
    ids: BinaryHeap<Reverse<Key>>,
    /// Links of this client open now.
    links: usize,
    /// Since when no link is open.
    detached: Option<Instant>,
    /// The most recent one-way call ids, to drop copies of them (see [`Sessions::one_way`]).
    one_way: HashSet<u64>,
    one_way_order: VecDeque<u64>,
}

impl<A, W> Session<A, W> {
    fn new(epoch: u64) -> Self {
        Session {
            epoch,
            floor: 0,
            evicted: BTreeSet::new(),
            forgotten: None,
            calls: CallMap::new(),
            ids: BinaryHeap::new(),
            links: 0,
            detached: None,
            one_way: HashSet::new(),
            one_way_order: VecDeque::new(),
        }
    }
}

/// A handle on one session, kept by each of its links: a place in the sessions' slab and the
/// generation of its occupant, so that a link of an ended session finds nothing (and a later
/// session in the same place is not mistaken for its own). Per-call lookups go through it,
/// not through a hash of the client's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRef {
    slot: usize,
    generation: u64,
}

impl SessionRef {
    /// The session's number: new for every session the server starts (counted from 1), the
    /// same for every link of one session. A link's Welcome tells the client this number
    /// (mixed into the server's instance id), so a client that reconnects can tell the session
    /// it left from a new one.
    pub fn number(&self) -> u64 {
        self.generation
    }
}

/// The session id a Welcome names for a link of the session at `at` on the server whose
/// instance id is `instance`: the same on every link of one session, another value for each
/// new session and each server start (PROTOCOL.md §2).
pub fn welcome_id(instance: u128, at: SessionRef) -> u128 {
    instance ^ u128::from(at.number())
}

#[derive(Debug)]
struct Place<A, W> {
    generation: u64,
    client: ClientKey,
    session: Option<Session<A, W>>,
}

/// Whether `kept` names an outcome still cached.
fn is_kept<A, W>(places: &[Place<A, W>], kept: &Kept) -> bool {
    places
        .get(kept.at.slot)
        .filter(|p| p.generation == kept.at.generation)
        .and_then(|p| p.session.as_ref())
        .is_some_and(
            |s| matches!(s.calls.get(kept.call), Some(Slot::Done { seq, .. }) if *seq == kept.seq),
        )
}

/// The session at `at`, if it is still there.
fn session_at<A, W>(places: &mut [Place<A, W>], at: SessionRef) -> Option<&mut Session<A, W>> {
    places
        .get_mut(at.slot)
        .filter(|p| p.generation == at.generation)
        .and_then(|p| p.session.as_mut())
}

/// Every client's session on one server. `A` aborts a running handler; `W` is a waiter for a
/// call's outcome (a link to answer on). Tests use plain values for both.
#[derive(Debug)]
pub struct Sessions<A, W> {
    limits: CacheLimits,
    /// Where each client's session is, for hellos.
    clients: HashMap<ClientKey, usize>,
    places: Vec<Place<A, W>>,
    free: Vec<usize>,
    next_generation: u64,
    /// Cached outcomes in the order they were stored, oldest first, for eviction. Entries of
    /// outcomes already released stay until they reach the front or the queue is compacted
    /// (it never holds more than twice the live ones, plus 1,024), so a release costs no
    /// search here.
    order: VecDeque<Kept>,
    /// Outcomes cached now.
    live: usize,
    next_seq: u64,
    bytes: usize,
    /// Evicted ids remembered, across all sessions.
    tombstones: usize,
    /// Whether new calls may start: false once the server is shutting down.
    accepting: bool,
    /// Entries the releases looked at, so that a test can hold them to what they released.
    #[cfg(test)]
    release_steps: usize,
}

/// Bytes of the cache's bound that one remembered evicted id stands for: the ids kept are
/// bounded by `max_bytes / TOMBSTONE_SHARE` (at least 4,096).
const TOMBSTONE_SHARE: usize = 256;

impl<A, W: PartialEq> Sessions<A, W> {
    /// No sessions yet, with a reply cache bounded by `limits`.
    pub fn new(limits: CacheLimits) -> Self {
        Sessions {
            limits,
            clients: HashMap::new(),
            places: Vec::new(),
            free: Vec::new(),
            next_generation: 1,
            order: VecDeque::new(),
            live: 0,
            next_seq: 0,
            bytes: 0,
            tombstones: 0,
            accepting: true,
            #[cfg(test)]
            release_steps: 0,
        }
    }

    /// Stops new calls: from now on, a call not seen before gets [`Begin::Unavailable`] and a
    /// new one-way call is not run; copies of running or finished calls are answered as
    /// before, since their callers wait for those outcomes.
    pub fn stop_accepting(&mut self) {
        self.accepting = false;
    }

    /// Every call still running, in every session, ended as aborted: its abort handle, who
    /// waits for it, and the frame that tells them (made by `outcome` from the call's id and
    /// what it called). The frame is also cached as the call's outcome, so that a copy that
    /// comes later gets the same answer and does not run.
    pub fn abort_running(
        &mut self,
        now: Instant,
        outcome: impl Fn(u64, Called) -> Bytes,
    ) -> Vec<Ended<A, W>> {
        let mut running = Vec::new();
        for (slot, place) in self.places.iter().enumerate() {
            if let Some(session) = &place.session {
                let at = SessionRef {
                    slot,
                    generation: place.generation,
                };
                running.extend(session.calls.iter().filter_map(|(call, s)| {
                    matches!(s, Slot::Running { .. }).then_some((at, call))
                }));
            }
        }
        running
            .into_iter()
            .filter_map(|(at, call)| {
                let called = self.get(at)?.calls.get(call)?.called();
                let frame = outcome(call.id, called);
                self.end_call(at, call.id, Some(frame.clone()), now)
                    .map(|(abort, waiters, _)| Ended {
                        abort,
                        waiters,
                        frame,
                    })
            })
            .collect()
    }

    /// Bytes the cached outcomes hold now (with their overhead).
    pub fn cached_bytes(&self) -> usize {
        self.bytes
    }

    fn get(&mut self, at: SessionRef) -> Option<&mut Session<A, W>> {
        session_at(&mut self.places, at)
    }

    /// Starts a session for `client` with one link.
    fn start(&mut self, client: ClientKey, epoch: u64) -> SessionRef {
        let mut session = Session::new(epoch);
        session.links = 1;
        let generation = self.next_generation;
        self.next_generation += 1;
        let place = Place {
            generation,
            client,
            session: Some(session),
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.places[slot] = place;
                slot
            }
            None => {
                self.places.push(place);
                self.places.len() - 1
            }
        };
        self.clients.insert(client, slot);
        SessionRef { slot, generation }
    }

    /// A client says hello with `epoch` over a new link: what to do, and the session the link
    /// belongs to (none if it is refused).
    pub fn hello(&mut self, client: ClientKey, epoch: u64) -> (Hello<A>, Option<SessionRef>) {
        let Some(&slot) = self.clients.get(&client) else {
            let aborts = self.make_room();
            let at = self.start(client, epoch);
            return (Hello::Accepted(aborts), Some(at));
        };
        let generation = self.places[slot].generation;
        let at = SessionRef { slot, generation };
        let Some(session) = self.get(at) else {
            // Unreachable: a client's entry always names a live place. Start afresh.
            self.clients.remove(&client);
            let at = self.start(client, epoch);
            return (Hello::Accepted(Vec::new()), Some(at));
        };
        if epoch < session.epoch {
            return (Hello::Stale, None);
        }
        if epoch == session.epoch {
            session.links += 1;
            session.detached = None;
            return (Hello::Accepted(Vec::new()), Some(at));
        }
        let aborts = self.end(at);
        let at = self.start(client, epoch);
        (Hello::Reincarnated(aborts), Some(at))
    }

    /// At the bound on sessions, ends the session detached longest, if any is: a client that
    /// left without a goodbye gives way to one that is here. (Sessions with links are bounded
    /// by the connections.)
    fn make_room(&mut self) -> Vec<A> {
        if self.clients.len() < self.limits.max_sessions {
            return Vec::new();
        }
        let oldest = self
            .places
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| {
                let detached = p.session.as_ref()?.detached?;
                Some((detached, slot, p.generation))
            })
            .min();
        match oldest {
            Some((_, slot, generation)) => self.end(SessionRef { slot, generation }),
            None => Vec::new(),
        }
    }

    /// One of the session's links closed. Returns true if it has none left: the driver then
    /// calls [`Sessions::expire`] once the session has been detached long enough.
    pub fn link_closed(&mut self, at: SessionRef, now: Instant) -> bool {
        match self.get(at) {
            Some(s) => {
                s.links = s.links.saturating_sub(1);
                if s.links == 0 {
                    s.detached = Some(now);
                    return true;
                }
                false
            }
            None => false,
        }
    }

    /// Ends a session that has had no link for `linger`: its handlers, to abort. Does nothing
    /// if a link came back meanwhile.
    pub fn expire(&mut self, at: SessionRef, linger: Duration, now: Instant) -> Vec<A> {
        match self.get(at) {
            Some(s)
                if s.links == 0 && s.detached.is_some_and(|d| now.duration_since(d) >= linger) =>
            {
                self.end(at)
            }
            _ => Vec::new(),
        }
    }

    /// The client holds every outcome below `watermark`: forget them. Returns the forgotten
    /// frames, for the caller to drop outside its lock. (A goodbye, `u64::MAX`, is a link
    /// leaving: [`Sessions::link_closed`] and [`Sessions::expire`] at once.)
    pub fn release(&mut self, at: SessionRef, watermark: u64) -> Vec<Bytes> {
        let Some(session) = session_at(&mut self.places, at) else {
            return Vec::new();
        };
        if watermark <= session.floor {
            return Vec::new();
        }
        session.floor = watermark;
        let kept = session.evicted.split_off(&watermark);
        self.tombstones -= session.evicted.len();
        session.evicted = kept;
        // The ids below the watermark come off the top of the heap: the work is in proportion
        // to what is released, not to what the session holds.
        let mut frames = Vec::new();
        let mut still_running = Vec::new();
        while let Some(&Reverse(key)) = session.ids.peek() {
            if key.id >= watermark {
                break;
            }
            session.ids.pop();
            #[cfg(test)]
            {
                self.release_steps += 1;
            }
            match session.calls.entry(key) {
                Entry::Occupied(e) if matches!(e.get().1, Slot::Done { .. }) => {
                    if let (_, Slot::Done { frame, .. }) = e.remove().0 {
                        self.bytes -= cost(&frame);
                        self.live -= 1;
                        frames.extend(frame);
                    }
                }
                // A call the client gave up on that still runs ends as it would have.
                Entry::Occupied(_) => still_running.push(Reverse(key)),
                Entry::Vacant(_) => {}
            }
        }
        session.ids.extend(still_running);
        self.compact();
        frames
    }

    /// A one-way call arrived: whether to run it. One-way calls are never re-sent, so the
    /// watermark says nothing about them (a release may overtake one on a transport without
    /// order between streams); a copy (from a link that duplicates frames) is recognized among
    /// the client's last [`ONE_WAY_MEMORY`] one-way calls.
    pub fn one_way(&mut self, at: SessionRef, call: u64) -> bool {
        if !self.accepting {
            return false;
        }
        let Some(session) = self.get(at) else {
            return false;
        };
        if !session.one_way.insert(call) {
            return false;
        }
        session.one_way_order.push_back(call);
        if session.one_way_order.len() > ONE_WAY_MEMORY {
            if let Some(old) = session.one_way_order.pop_front() {
                session.one_way.remove(&old);
            }
        }
        true
    }

    /// A call frame arrived: what to do with it. For [`Begin::Run`], `abort` is kept to stop
    /// the handler and `waiter` will get its outcome; for [`Begin::Attached`], `waiter` will.
    pub fn begin(
        &mut self,
        at: SessionRef,
        call: u64,
        called: Called,
        abort: A,
        waiter: W,
    ) -> Begin {
        let accepting = self.accepting;
        let Some(session) = self.get(at) else {
            // A link whose session ended (a newer epoch took over): nothing runs for it.
            return Begin::Superseded;
        };
        if call < session.floor {
            return Begin::Released;
        }
        let forgotten =
            session.evicted.contains(&call) || session.forgotten.is_some_and(|f| call <= f);
        let key = session.calls.key(call);
        match session.calls.entry(key) {
            Entry::Occupied(e) if e.get().1.called() != called => {
                Begin::Mismatch(e.get().1.called())
            }
            Entry::Occupied(mut e) => match &mut e.get_mut().1 {
                Slot::Running { waiters, .. } => {
                    waiters.add(waiter);
                    Begin::Attached
                }
                Slot::Done {
                    frame: Some(frame), ..
                } => Begin::Cached(frame.clone()),
                Slot::Done { frame: None, .. } => Begin::Cancelled,
            },
            Entry::Vacant(_) if forgotten => Begin::Forgotten,
            Entry::Vacant(_) if !accepting => Begin::Unavailable,
            Entry::Vacant(e) => {
                let running = Slot::Running {
                    abort,
                    waiters: Waiters::one(waiter),
                    called,
                };
                e.insert((key, running));
                session.ids.push(Reverse(key));
                // Ids whose entries went another way are dropped once they outnumber the
                // entries, so the heap stays within twice the session's calls (plus 1,024).
                if session.ids.len() > 2 * session.calls.len() + 1024 {
                    let calls = &session.calls;
                    session.ids.retain(|Reverse(key)| calls.contains(*key));
                }
                Begin::Run
            }
        }
    }

    /// A call finished with `frame` (its reply or error; `None` for a one-way or cancelled
    /// call): who waits for it. With `keep`, the outcome is cached for copies (at-most-once
    /// calls); without, the entry goes, and a later copy runs again (idempotent calls).
    pub fn finish(
        &mut self,
        at: SessionRef,
        call: u64,
        frame: Option<Bytes>,
        keep: bool,
        now: Instant,
    ) -> Waiters<W> {
        let Some(session) = session_at(&mut self.places, at) else {
            return Waiters::none();
        };
        let floor = session.floor;
        let key = session.calls.key(call);
        let Entry::Occupied(mut entry) = session.calls.entry(key) else {
            return Waiters::none();
        };
        if !matches!(entry.get().1, Slot::Running { .. }) {
            return Waiters::none();
        }
        let old = if keep && call >= floor {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.order.push_back(Kept {
                at,
                call: key,
                seq,
                when: now,
            });
            self.bytes += cost(&frame);
            self.live += 1;
            let slot = &mut entry.get_mut().1;
            let called = slot.called();
            std::mem::replace(slot, Slot::Done { frame, seq, called })
        } else {
            entry.remove().0 .1
        };
        self.tidy(now);
        match old {
            Slot::Running { waiters, .. } => waiters,
            Slot::Done { .. } => Waiters::none(),
        }
    }

    /// The client cancelled a call: its handler, to abort, and the links that attached copies
    /// of it, which must be told (with `Cancelled`) since no outcome will come. A copy that
    /// comes later is refused the same way and does not run.
    pub fn cancel(
        &mut self,
        at: SessionRef,
        call: u64,
        now: Instant,
    ) -> Option<(A, Waiters<W>, Called)> {
        self.end_call(at, call, None, now)
    }

    /// Ends a running call with `frame` as its kept outcome (`None`: cancelled): its abort
    /// handle, its waiters and what it called.
    fn end_call(
        &mut self,
        at: SessionRef,
        call: u64,
        frame: Option<Bytes>,
        now: Instant,
    ) -> Option<(A, Waiters<W>, Called)> {
        let session = session_at(&mut self.places, at)?;
        let key = session.calls.key(call);
        let Entry::Occupied(mut entry) = session.calls.entry(key) else {
            return None;
        };
        if !matches!(entry.get().1, Slot::Running { .. }) {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = &mut entry.get_mut().1;
        let called = slot.called();
        let bytes = cost(&frame);
        let old = std::mem::replace(slot, Slot::Done { frame, seq, called });
        self.order.push_back(Kept {
            at,
            call: key,
            seq,
            when: now,
        });
        self.bytes += bytes;
        self.live += 1;
        self.tidy(now);
        match old {
            Slot::Running { abort, waiters, .. } => Some((abort, waiters, called)),
            Slot::Done { .. } => None,
        }
    }

    /// Evicts what the bounds ask for, and compacts the queue of outcomes if released ones
    /// crowd it.
    fn tidy(&mut self, now: Instant) {
        let too_old = |k: &Kept| now.duration_since(k.when) >= self.limits.max_age;
        if self.bytes > self.limits.max_bytes || self.order.front().is_some_and(too_old) {
            self.evict(now);
        }
        self.compact();
    }

    /// Drops the released outcomes from the queue once they outnumber the cached ones.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.live + 1024 {
            let places = &self.places;
            self.order.retain(|k| is_kept(places, k));
        }
    }

    /// Drops the oldest cached outcomes while the cache is over its bytes or they are too old.
    fn evict(&mut self, now: Instant) {
        while let Some(&kept) = self.order.front() {
            let live = is_kept(&self.places, &kept);
            let old = now.duration_since(kept.when) >= self.limits.max_age;
            if live && !old && self.bytes <= self.limits.max_bytes {
                break;
            }
            self.order.pop_front();
            if !live {
                continue;
            }
            let Some(session) = session_at(&mut self.places, kept.at) else {
                continue;
            };
            if let Some(Slot::Done { frame, .. }) = session.calls.remove(kept.call) {
                self.bytes -= cost(&frame);
                self.live -= 1;
            }
            session.evicted.insert(kept.call.id);
            self.tombstones += 1;
            if self.tombstones > (self.limits.max_bytes / TOMBSTONE_SHARE).max(4096) {
                // Too many to remember one by one: forget this session's oldest, and refuse
                // anything unknown up to it.
                if let Some(oldest) = session.evicted.pop_first() {
                    self.tombstones -= 1;
                    session.forgotten = Some(session.forgotten.map_or(oldest, |f| f.max(oldest)));
                }
            }
        }
    }

    /// Removes a session: its running handlers, to abort.
    fn end(&mut self, at: SessionRef) -> Vec<A> {
        let Some(place) = self
            .places
            .get_mut(at.slot)
            .filter(|p| p.generation == at.generation)
        else {
            return Vec::new();
        };
        let Some(session) = place.session.take() else {
            return Vec::new();
        };
        let client = place.client;
        if self.clients.get(&client) == Some(&at.slot) {
            self.clients.remove(&client);
        }
        self.free.push(at.slot);
        self.tombstones -= session.evicted.len();
        let mut aborts = Vec::new();
        for slot in session.calls.into_values() {
            match slot {
                Slot::Running { abort, .. } => aborts.push(abort),
                Slot::Done { frame, .. } => {
                    self.bytes -= cost(&frame);
                    self.live -= 1;
                }
            }
        }
        aborts
    }

    /// Whether the session at `at` is still there with no link open.
    #[cfg(test)]
    pub fn is_detached(&mut self, at: SessionRef) -> bool {
        self.get(at).is_some_and(|s| s.links == 0)
    }

    /// How many sessions there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ClientKey = (7, 0);
    const D: ClientKey = (8, 0);

    type Lab = Sessions<&'static str, &'static str>;

    fn sessions(max_bytes: usize) -> Lab {
        Sessions::new(CacheLimits {
            max_bytes,
            max_age: Duration::from_secs(60),
            max_sessions: 3,
        })
    }

    /// A link of `client` with `epoch`, which must be accepted.
    fn join(s: &mut Lab, client: ClientKey, epoch: u64) -> SessionRef {
        match s.hello(client, epoch) {
            (Hello::Accepted(_) | Hello::Reincarnated(_), Some(at)) => at,
            other => panic!("refused: {other:?}"),
        }
    }

    /// What every test call calls, unless it says otherwise.
    const CALL: Called = Called {
        interface: 1,
        method: 1,
    };

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn reply(n: usize) -> Option<Bytes> {
        Some(bytes(n))
    }

    fn waiting<W>(w: Waiters<W>) -> Vec<W> {
        w.into_iter().collect()
    }

    #[test]
    fn every_refusing_begin_says_why_with_its_own_code() {
        let called = Called {
            interface: 1,
            method: 2,
        };
        let cases = [
            (Begin::Unavailable, ErrorCode::Unavailable),
            (Begin::Forgotten, ErrorCode::ReplyEvicted),
            (Begin::Mismatch(called), ErrorCode::Protocol),
            (Begin::Released, ErrorCode::Released),
            (Begin::Cancelled, ErrorCode::Cancelled),
            (Begin::Superseded, ErrorCode::Superseded),
        ];
        for (begin, code) in cases {
            let payload = begin.refusal(7).expect("a refusal");
            assert_eq!(payload.code, Some(code), "{begin:?}");
            assert!(!payload.message.is_empty());
        }
        for begin in [Begin::Run, Begin::Attached, Begin::Cached(Bytes::new())] {
            assert_eq!(begin.refusal(7), None, "{begin:?} runs or answers");
        }
    }

    #[test]
    fn a_call_runs_once_and_its_copies_get_the_same_outcome() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let (hello, at) = s.hello(C, 1);
        assert_eq!(hello, Hello::Accepted(Vec::new()));
        let at = at.unwrap();
        assert_eq!(s.begin(at, 5, CALL, "abort 5", "link 1"), Begin::Run);
        assert_eq!(s.begin(at, 5, CALL, "unused", "link 2"), Begin::Attached);
        // More copies over links already waiting add no waiter.
        assert_eq!(s.begin(at, 5, CALL, "unused", "link 2"), Begin::Attached);
        assert_eq!(s.begin(at, 5, CALL, "unused", "link 1"), Begin::Attached);
        let out = reply(10);
        assert_eq!(
            waiting(s.finish(at, 5, out.clone(), true, now)),
            vec!["link 1", "link 2"]
        );
        assert_eq!(
            s.begin(at, 5, CALL, "unused", "link 3"),
            Begin::Cached(out.unwrap())
        );
        assert_eq!(s.cached_bytes(), 10 + ENTRY_OVERHEAD);
    }

    /// A copy on the running call's own link adds no waiter but is remembered: the outcome
    /// may already have gone to that link before the copy came, and on QUIC the copy waits on
    /// a stream of its own, so the link is sent the outcome again.
    #[test]
    fn a_copy_on_the_calls_own_link_asks_for_the_outcome_again() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = s.hello(C, 1).1.unwrap();
        assert_eq!(s.begin(at, 5, CALL, "abort 5", "link 1"), Begin::Run);
        assert_eq!(s.begin(at, 5, CALL, "unused", "link 2"), Begin::Attached);
        let plain = s.finish(at, 5, reply(1), true, now);
        assert!(
            !plain.asked_again(),
            "a copy elsewhere is a waiter of its own"
        );
        assert_eq!(s.begin(at, 6, CALL, "abort 6", "link 1"), Begin::Run);
        assert_eq!(s.begin(at, 6, CALL, "unused", "link 1"), Begin::Attached);
        let again = s.finish(at, 6, reply(1), true, now);
        assert!(again.asked_again());
        assert_eq!(waiting(again), vec!["link 1"]);
    }

    #[test]
    fn shutting_down_refuses_new_calls_answers_copies_and_aborts_what_runs() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        let other = join(&mut s, D, 1);
        assert_eq!(s.begin(at, 1, CALL, "abort 1", "w"), Begin::Run);
        assert_eq!(s.begin(at, 2, CALL, "abort 2", "w"), Begin::Run);
        assert_eq!(s.begin(other, 7, CALL, "abort 7", "w"), Begin::Run);
        s.finish(at, 2, reply(3), true, now);
        s.stop_accepting();
        // New calls and new one-way calls are refused; copies are answered as before.
        assert_eq!(s.begin(at, 3, CALL, "a", "w"), Begin::Unavailable);
        assert!(!s.one_way(at, 4));
        assert_eq!(s.begin(at, 1, CALL, "unused", "w2"), Begin::Attached);
        assert_eq!(s.begin(at, 2, CALL, "unused", "w"), Begin::Cached(bytes(3)));
        // What still runs, in every session, is aborted once, and whoever waits for it is
        // told; a copy that comes later gets the same answer and does not run.
        let aborted_frame = |call: u64, _: Called| Bytes::from(call.to_be_bytes().to_vec());
        let mut aborted: Vec<_> = s
            .abort_running(now, aborted_frame)
            .into_iter()
            .map(|e| (e.abort, waiting(e.waiters), e.frame))
            .collect();
        aborted.sort_unstable();
        assert_eq!(
            aborted,
            vec![
                ("abort 1", vec!["w", "w2"], aborted_frame(1, CALL)),
                ("abort 7", vec!["w"], aborted_frame(7, CALL)),
            ]
        );
        assert!(s.abort_running(now, aborted_frame).is_empty());
        assert_eq!(
            s.begin(at, 1, CALL, "a", "w3"),
            Begin::Cached(aborted_frame(1, CALL))
        );
    }

    #[test]
    fn a_copy_must_call_what_the_call_called() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        let other = Called {
            interface: 1,
            method: 2,
        };
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Run);
        assert_eq!(s.begin(at, 1, other, "a", "w"), Begin::Mismatch(CALL));
        s.finish(at, 1, reply(3), true, now);
        assert_eq!(s.begin(at, 1, other, "a", "w"), Begin::Mismatch(CALL));
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Cached(bytes(3)));
    }

    #[test]
    fn a_session_keeps_its_number_across_links_and_a_new_one_gets_another() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let first = join(&mut s, C, 1);
        assert_eq!(join(&mut s, C, 1).number(), first.number());
        s.link_closed(first, now);
        s.link_closed(first, now);
        s.expire(first, Duration::ZERO, now);
        let again = join(&mut s, C, 1);
        assert_ne!(
            again.number(),
            first.number(),
            "the server forgot the first"
        );
    }

    #[test]
    fn a_release_costs_what_it_releases() {
        let now = Instant::now();
        let mut s = sessions(1 << 30);
        let at = join(&mut s, C, 1);
        // A call the client gave up on that still runs, then many finished ones.
        s.begin(at, 1, CALL, "still running", "w");
        for id in 2..=50_000 {
            s.begin(at, id, CALL, "a", "w");
            s.finish(at, id, reply(1), true, now);
        }
        // Releasing one at a time, each release takes only the lowest ids: 50,000 of them stay
        // fast (a scan of the session each time would be 2.5 billion steps).
        for watermark in 3..=50_000 {
            assert_eq!(s.release(at, watermark).len(), 1);
        }
        // Each release looked at the call it released and at the one still running below
        // the watermark, never at the rest of the session.
        assert!(s.release_steps <= 2 * 50_000, "{} steps", s.release_steps);
        assert_eq!(s.live, 1);
        assert_eq!(s.begin(at, 1, CALL, "a", "copy"), Begin::Released);
        assert_eq!(
            waiting(s.finish(at, 1, reply(1), true, now)),
            vec!["w"],
            "the running call below the watermark still ends as it would have"
        );
    }

    #[test]
    fn ids_of_calls_that_went_another_way_do_not_pile_up() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        // Idempotent calls leave no entry, and this client never releases.
        for id in 1..=100_000 {
            assert_eq!(s.begin(at, id, CALL, "a", "w"), Begin::Run);
            s.finish(at, id, reply(1), false, now);
            let session = s.get(at).expect("the session");
            // Within the bound that the next call's arrival enforces.
            assert!(session.ids.len() <= 2 * (session.calls.len() + 1) + 1024);
        }
    }

    #[test]
    fn idempotent_outcomes_are_not_kept() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Run);
        assert_eq!(waiting(s.finish(at, 1, reply(3), false, now)), vec!["w"]);
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Run, "runs again");
        assert_eq!(s.cached_bytes(), 0);
    }

    #[test]
    fn the_watermark_trims_and_later_copies_below_it_are_ignored() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        for id in 1..=4 {
            s.begin(at, id, CALL, "a", "w");
            s.finish(at, id, reply(100), true, now);
        }
        assert_eq!(s.cached_bytes(), 4 * (100 + ENTRY_OVERHEAD));
        s.release(at, 3);
        assert_eq!(s.cached_bytes(), 2 * (100 + ENTRY_OVERHEAD));
        assert_eq!(s.begin(at, 2, CALL, "a", "w"), Begin::Released);
        assert_eq!(s.begin(at, 3, CALL, "a", "w"), Begin::Cached(bytes(100)));
        // A watermark that goes back is ignored.
        s.release(at, 1);
        assert_eq!(s.begin(at, 2, CALL, "a", "w"), Begin::Released);
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_refuses_copies_it_forgot() {
        let now = Instant::now();
        let per = 1000 + ENTRY_OVERHEAD;
        let mut s = sessions(10 * per);
        let at = join(&mut s, C, 1);
        for id in 1..=100_000 {
            assert_eq!(s.begin(at, id, CALL, "a", "w"), Begin::Run);
            s.finish(at, id, reply(1000), true, now);
            assert!(s.cached_bytes() <= 10 * per);
        }
        assert_eq!(s.begin(at, 50, CALL, "a", "w"), Begin::Forgotten);
        assert_eq!(
            s.begin(at, 100_000, CALL, "a", "w"),
            Begin::Cached(bytes(1000))
        );
        assert_eq!(s.begin(at, 100_001, CALL, "a", "w"), Begin::Run);
    }

    #[test]
    fn a_late_call_runs_though_later_ones_were_evicted() {
        let now = Instant::now();
        let per = 100 + ENTRY_OVERHEAD;
        let mut s = sessions(2 * per);
        let at = join(&mut s, C, 1);
        // Calls 2..=10 finish (most evicted) before call 1, sent first, arrives.
        for id in 2..=10 {
            s.begin(at, id, CALL, "a", "w");
            s.finish(at, id, reply(100), true, now);
        }
        assert_eq!(
            s.begin(at, 3, CALL, "a", "w"),
            Begin::Forgotten,
            "a copy of an evicted call"
        );
        assert_eq!(
            s.begin(at, 1, CALL, "a", "w"),
            Begin::Run,
            "a late call is no copy"
        );
        // The watermark forgets the evicted ids too.
        s.release(at, 11);
        assert_eq!(s.tombstones, 0);
    }

    #[test]
    fn released_outcomes_do_not_crowd_the_eviction_queue() {
        let now = Instant::now();
        let mut s = sessions(1 << 30);
        let at = join(&mut s, C, 1);
        // One outcome held for good (the watermark cannot pass call 1) and 100,000 released.
        s.begin(at, 1, CALL, "a", "w");
        s.finish(at, 1, reply(10), true, now);
        for id in 2..=100_000 {
            s.begin(at, id, CALL, "a", "w");
            s.finish(at, id, reply(10), true, now);
            if id % 64 == 0 {
                s.release(at, id - 1);
            }
            assert!(
                s.order.len() <= 2 * s.live + 1024,
                "{} queued",
                s.order.len()
            );
        }
        assert!(s.live <= 64);
        assert_eq!(s.cached_bytes(), s.live * (10 + ENTRY_OVERHEAD));
    }

    #[test]
    fn outcomes_older_than_the_age_are_evicted() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        s.begin(at, 1, CALL, "a", "w");
        s.finish(at, 1, reply(1), true, now);
        s.begin(at, 2, CALL, "a", "w");
        s.finish(at, 2, reply(1), true, now + Duration::from_secs(61));
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Forgotten);
        assert_eq!(s.cached_bytes(), 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_newer_epoch_aborts_the_old_handlers_and_an_older_one_is_refused() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let old = join(&mut s, C, 1);
        s.begin(old, 1, CALL, "abort old 1", "w");
        s.begin(old, 2, CALL, "abort old 2", "w");
        s.finish(old, 2, reply(5), true, now);
        let (Hello::Reincarnated(aborts), Some(new)) = s.hello(C, 2) else {
            panic!("a newer epoch must replace the session");
        };
        assert_eq!(aborts, vec!["abort old 1"]);
        assert_eq!(s.cached_bytes(), 0, "the old epoch's cache is dropped");
        assert_eq!(s.hello(C, 1), (Hello::Stale, None));
        // The old epoch's links find no session; the new epoch starts afresh.
        assert_eq!(s.begin(old, 3, CALL, "a", "w"), Begin::Superseded);
        assert_eq!(s.begin(new, 2, CALL, "a", "w"), Begin::Run);
        assert_eq!(
            waiting(s.finish(old, 1, reply(1), true, now)),
            Vec::<&str>::new()
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_detached_session_expires_after_the_linger_unless_a_link_returns() {
        let now = Instant::now();
        let linger = Duration::from_secs(5);
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        assert_eq!(
            join(&mut s, C, 1),
            at,
            "a second link joins the same session"
        );
        s.begin(at, 1, CALL, "abort 1", "w");
        assert!(!s.link_closed(at, now));
        assert!(s.link_closed(at, now));
        assert!(s.expire(at, linger, now).is_empty(), "too early");
        join(&mut s, C, 1);
        assert!(
            s.expire(at, linger, now + linger).is_empty(),
            "a link came back"
        );
        assert!(s.link_closed(at, now + linger));
        assert_eq!(s.expire(at, linger, now + 2 * linger), vec!["abort 1"]);
        assert_eq!(s.len(), 0);
        // The place is used again by the next session; the old handle finds nothing there.
        let next = join(&mut s, (8, 0), 1);
        assert_ne!(next, at);
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Superseded);
    }

    #[test]
    fn past_the_bound_a_new_client_ends_the_session_detached_longest() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let mut at = Vec::new();
        for client in 1..=3u128 {
            let here = join(&mut s, (client, 0), 1);
            let abort = ["", "abort 1", "abort 2", "abort 3"][client as usize];
            s.begin(here, 1, CALL, abort, "w");
            at.push(here);
        }
        s.link_closed(at[1], now);
        s.link_closed(at[0], now + Duration::from_secs(1));
        assert_eq!(s.hello((4, 0), 1).0, Hello::Accepted(vec!["abort 2"]));
        assert_eq!(s.hello((5, 0), 1).0, Hello::Accepted(vec!["abort 1"]));
        // Every session has a link now: the new one is kept all the same.
        assert_eq!(s.hello((6, 0), 1).0, Hello::Accepted(Vec::new()));
        // The same client id from another authenticated peer is another session.
        let other = join(&mut s, (6, 99), 1);
        assert_eq!(s.begin(other, 1, CALL, "a", "w"), Begin::Run);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn one_way_calls_run_once_whatever_the_watermark_says() {
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        s.release(at, 100);
        assert!(
            s.one_way(at, 50),
            "a one-way call overtaken by a release still runs"
        );
        assert!(!s.one_way(at, 50), "its copy does not");
        for id in 1000..1000 + ONE_WAY_MEMORY as u64 {
            assert!(s.one_way(at, id));
        }
        assert!(
            s.one_way(at, 50),
            "beyond the memory, a copy is not recognized"
        );
    }

    #[test]
    fn goodbye_ends_the_session_and_cancel_keeps_copies_from_running() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        let at = join(&mut s, C, 1);
        s.begin(at, 1, CALL, "abort 1", "w");
        s.begin(at, 1, CALL, "unused", "copy");
        let (abort, waiters, called) = s.cancel(at, 1, now).expect("it runs");
        assert_eq!(
            (abort, waiting(waiters), called),
            ("abort 1", vec!["w", "copy"], CALL)
        );
        assert!(s.cancel(at, 1, now).is_none(), "cancelled once");
        assert_eq!(s.begin(at, 1, CALL, "a", "w"), Begin::Cancelled);
        assert!(
            waiting(s.finish(at, 1, reply(1), true, now)).is_empty(),
            "the aborted handler's end"
        );
        s.begin(at, 2, CALL, "abort 2", "w");
        // Goodbye: the link leaves and the session ends without lingering.
        assert!(s.link_closed(at, now));
        assert_eq!(s.expire(at, Duration::ZERO, now), vec!["abort 2"]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.cached_bytes(), 0);
    }
}
