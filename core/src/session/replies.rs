//! The server's sessions: one per client id, across that client's links.
//!
//! A session remembers, for each call id it has seen and the client still may ask about, either
//! that the call is running (with whoever waits for its outcome) or its outcome: the reply or
//! error frame, byte for byte, so that a copy of an at-most-once call is answered without
//! running the method again. The cache is bounded in bytes and age across all sessions; what it
//! evicts it remembers as a high-water call id (`forgotten`), so that a late copy is refused
//! with a distinct error instead of being run a second time.
//!
//! Epochs: a hello with a newer epoch for a known client id ends the old session (its handlers
//! are aborted, its cache dropped); a hello with an older epoch is refused.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// What every cached outcome costs beside its bytes (map entries, bookkeeping), so that the
/// byte bound also bounds the number of entries, even of empty outcomes.
pub(crate) const ENTRY_OVERHEAD: usize = 64;

/// Who a session belongs to: the client id from the hello, and a digest of the peer's
/// authenticated identity (its certificate chain, or its uid; 0 when the transport
/// authenticated nothing), so that a peer that learns another's client id cannot take over
/// that client's session unless it can also authenticate as it.
pub(crate) type ClientKey = (u128, u64);

/// How many of a client's most recent one-way call ids a session remembers to drop copies.
pub(crate) const ONE_WAY_MEMORY: usize = 1024;

/// The reply cache's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CacheLimits {
    /// Bytes of cached outcomes across all sessions (each counted with [`ENTRY_OVERHEAD`]).
    pub(crate) max_bytes: usize,
    /// How long an outcome is kept for a client that has not yet said it has it.
    pub(crate) max_age: Duration,
    /// Sessions kept at most; past it, a new client's session ends the one detached longest.
    pub(crate) max_sessions: usize,
}

/// How a hello fits the sessions.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello<A> {
    /// A new client id, or the same epoch again (a reconnect): serve it. A new session past
    /// the bound on sessions ended the longest-detached one: its handlers, to abort.
    Accepted(Vec<A>),
    /// A newer epoch of a known client: the old incarnation's running handlers, to abort.
    Reincarnated(Vec<A>),
    /// An older epoch than the one the server knows: refuse it.
    Stale,
}

/// What to do with a call frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// A call not seen before: run it (and [`Sessions::finish`] it).
    Run,
    /// A copy of a call still running: its outcome goes to this waiter too when it finishes.
    Attached,
    /// A copy of a finished call: answer with this frame (`None`: the call was cancelled or
    /// was one-way, nothing to answer).
    Cached(Option<Bytes>),
    /// A copy of a call the client already has the outcome of: ignore it.
    Stale,
    /// A copy of a call the cache no longer remembers: refuse it with `ReplyEvicted`.
    Forgotten,
    /// The link belongs to an epoch a newer one replaced: close it.
    Superseded,
}

#[derive(Debug)]
enum Slot<A, W> {
    Running { abort: A, waiters: Vec<W> },
    Done { frame: Option<Bytes>, seq: u64 },
}

#[derive(Debug)]
struct Session<A, W> {
    epoch: u64,
    /// Every call id below this has its outcome at the client.
    floor: u64,
    /// The highest call id whose outcome was evicted; a call at or below it that is not in
    /// `calls` may be a copy of an evicted one.
    forgotten: Option<u64>,
    calls: HashMap<u64, Slot<A, W>>,
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
            forgotten: None,
            calls: HashMap::new(),
            links: 0,
            detached: None,
            one_way: HashSet::new(),
            one_way_order: VecDeque::new(),
        }
    }
}

/// Every client's session on one server. `A` aborts a running handler; `W` is a waiter for a
/// call's outcome (a link to answer on). Tests use plain values for both.
#[derive(Debug)]
pub(crate) struct Sessions<A, W> {
    limits: CacheLimits,
    clients: HashMap<ClientKey, Session<A, W>>,
    /// Cached outcomes in the order they were stored: (client, call id, bytes, when).
    order: BTreeMap<u64, (ClientKey, u64, usize, Instant)>,
    next_seq: u64,
    bytes: usize,
}

impl<A, W> Sessions<A, W> {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        Sessions {
            limits,
            clients: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
        }
    }

    /// Bytes the cached outcomes hold now (with their overhead).
    pub(crate) fn cached_bytes(&self) -> usize {
        self.bytes
    }

    /// A client says hello with `epoch` over a new link.
    pub(crate) fn hello(&mut self, client: ClientKey, epoch: u64) -> Hello<A> {
        let Some(session) = self.clients.get_mut(&client) else {
            let aborts = self.make_room();
            let mut session = Session::new(epoch);
            session.links = 1;
            self.clients.insert(client, session);
            return Hello::Accepted(aborts);
        };
        if epoch < session.epoch {
            return Hello::Stale;
        }
        if epoch == session.epoch {
            session.links += 1;
            session.detached = None;
            return Hello::Accepted(Vec::new());
        }
        let aborts = self.end(client);
        let mut session = Session::new(epoch);
        session.links = 1;
        self.clients.insert(client, session);
        Hello::Reincarnated(aborts)
    }

    /// At the bound on sessions, ends the session detached longest, if any is: a client that
    /// left without a goodbye gives way to one that is here. (Sessions with links are bounded
    /// by the connections.)
    fn make_room(&mut self) -> Vec<A> {
        if self.clients.len() < self.limits.max_sessions {
            return Vec::new();
        }
        let oldest = self
            .clients
            .iter()
            .filter_map(|(id, s)| s.detached.map(|d| (d, *id)))
            .min();
        match oldest {
            Some((_, client)) => self.end(client),
            None => Vec::new(),
        }
    }

    /// One of the client's links closed. Returns true if it has none left: the driver then
    /// calls [`Sessions::expire`] once the session has been detached long enough.
    pub(crate) fn link_closed(&mut self, client: ClientKey, epoch: u64, now: Instant) -> bool {
        match self.clients.get_mut(&client) {
            Some(s) if s.epoch == epoch => {
                s.links = s.links.saturating_sub(1);
                if s.links == 0 {
                    s.detached = Some(now);
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// Ends the session of a client that has had no link for `linger`: its handlers, to abort.
    /// Does nothing if a link came back meanwhile.
    pub(crate) fn expire(
        &mut self,
        client: ClientKey,
        epoch: u64,
        linger: Duration,
        now: Instant,
    ) -> Vec<A> {
        match self.clients.get(&client) {
            Some(s)
                if s.epoch == epoch
                    && s.links == 0
                    && s.detached.is_some_and(|d| now.duration_since(d) >= linger) =>
            {
                self.end(client)
            }
            _ => Vec::new(),
        }
    }

    /// The client holds every outcome below `watermark`: forget them. (A goodbye, `u64::MAX`,
    /// is a link leaving: [`Sessions::link_closed`] and [`Sessions::expire`] at once.)
    pub(crate) fn release(&mut self, client: ClientKey, epoch: u64, watermark: u64) -> Vec<A> {
        let Some(session) = self.clients.get_mut(&client) else {
            return Vec::new();
        };
        if session.epoch != epoch {
            return Vec::new();
        }
        if watermark <= session.floor {
            return Vec::new();
        }
        session.floor = watermark;
        let order = &mut self.order;
        let bytes = &mut self.bytes;
        session.calls.retain(|id, slot| match slot {
            Slot::Done { seq, .. } if *id < watermark => {
                if let Some((_, _, size, _)) = order.remove(seq) {
                    *bytes -= size;
                }
                false
            }
            _ => true,
        });
        Vec::new()
    }

    /// A one-way call arrived: whether to run it. One-way calls are never re-sent, so the
    /// watermark says nothing about them (a release may overtake one on a transport without
    /// order between streams); a copy (from a link that duplicates frames) is recognized among
    /// the client's last [`ONE_WAY_MEMORY`] one-way calls.
    pub(crate) fn one_way(&mut self, client: ClientKey, epoch: u64, call: u64) -> bool {
        let Some(session) = self.clients.get_mut(&client).filter(|s| s.epoch == epoch) else {
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
    pub(crate) fn begin(
        &mut self,
        client: ClientKey,
        epoch: u64,
        call: u64,
        abort: A,
        waiter: W,
    ) -> Begin {
        let Some(session) = self.clients.get_mut(&client).filter(|s| s.epoch == epoch) else {
            // A link whose session ended (a newer epoch took over): nothing runs for it.
            return Begin::Superseded;
        };
        if call < session.floor {
            return Begin::Stale;
        }
        match session.calls.get_mut(&call) {
            Some(Slot::Running { waiters, .. }) => {
                waiters.push(waiter);
                Begin::Attached
            }
            Some(Slot::Done { frame, .. }) => Begin::Cached(frame.clone()),
            None if session.forgotten.is_some_and(|f| call <= f) => Begin::Forgotten,
            None => {
                session.calls.insert(
                    call,
                    Slot::Running {
                        abort,
                        waiters: vec![waiter],
                    },
                );
                Begin::Run
            }
        }
    }

    /// A call finished with `frame` (its reply or error; `None` for a one-way or cancelled
    /// call): who waits for it. With `keep`, the outcome is cached for copies (at-most-once
    /// calls); without, the entry goes, and a later copy runs again (idempotent calls).
    pub(crate) fn finish(
        &mut self,
        client: ClientKey,
        epoch: u64,
        call: u64,
        frame: Option<Bytes>,
        keep: bool,
        now: Instant,
    ) -> Vec<W> {
        let Some(session) = self.clients.get_mut(&client).filter(|s| s.epoch == epoch) else {
            return Vec::new();
        };
        let waiters = match session.calls.remove(&call) {
            Some(Slot::Running { waiters, .. }) => waiters,
            Some(done @ Slot::Done { .. }) => {
                session.calls.insert(call, done);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        if keep && call >= session.floor {
            let size = frame.as_ref().map_or(0, Bytes::len) + ENTRY_OVERHEAD;
            let seq = self.next_seq;
            self.next_seq += 1;
            session.calls.insert(call, Slot::Done { frame, seq });
            self.order.insert(seq, (client, call, size, now));
            self.bytes += size;
        }
        self.evict(now);
        waiters
    }

    /// The client cancelled a call: its handler, to abort. A copy that comes later is ignored.
    pub(crate) fn cancel(
        &mut self,
        client: ClientKey,
        epoch: u64,
        call: u64,
        now: Instant,
    ) -> Option<A> {
        let session = self.clients.get_mut(&client).filter(|s| s.epoch == epoch)?;
        match session.calls.remove(&call) {
            Some(Slot::Running { abort, .. }) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                session.calls.insert(call, Slot::Done { frame: None, seq });
                self.order.insert(seq, (client, call, ENTRY_OVERHEAD, now));
                self.bytes += ENTRY_OVERHEAD;
                self.evict(now);
                Some(abort)
            }
            Some(other) => {
                session.calls.insert(call, other);
                None
            }
            None => None,
        }
    }

    /// Drops the oldest cached outcomes while the cache is over its bytes or they are too old.
    fn evict(&mut self, now: Instant) {
        while let Some((&seq, &(client, call, size, at))) = self.order.first_key_value() {
            if self.bytes <= self.limits.max_bytes && now.duration_since(at) < self.limits.max_age {
                break;
            }
            self.order.remove(&seq);
            self.bytes -= size;
            if let Some(session) = self.clients.get_mut(&client) {
                if matches!(session.calls.get(&call), Some(Slot::Done { seq: s, .. }) if *s == seq)
                {
                    session.calls.remove(&call);
                    session.forgotten = Some(session.forgotten.map_or(call, |f| f.max(call)));
                }
            }
        }
    }

    /// Removes a client's session: its running handlers, to abort.
    fn end(&mut self, client: ClientKey) -> Vec<A> {
        let Some(session) = self.clients.remove(&client) else {
            return Vec::new();
        };
        let mut aborts = Vec::new();
        for slot in session.calls.into_values() {
            match slot {
                Slot::Running { abort, .. } => aborts.push(abort),
                Slot::Done { seq, .. } => {
                    if let Some((_, _, size, _)) = self.order.remove(&seq) {
                        self.bytes -= size;
                    }
                }
            }
        }
        aborts
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

    fn sessions(max_bytes: usize) -> Sessions<&'static str, &'static str> {
        Sessions::new(CacheLimits {
            max_bytes,
            max_age: Duration::from_secs(60),
            max_sessions: 3,
        })
    }

    fn reply(n: usize) -> Option<Bytes> {
        Some(Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn a_call_runs_once_and_its_copies_get_the_same_outcome() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        assert_eq!(s.hello(C, 1), Hello::Accepted(Vec::new()));
        assert_eq!(s.begin(C, 1, 5, "abort 5", "link 1"), Begin::Run);
        assert_eq!(s.begin(C, 1, 5, "unused", "link 2"), Begin::Attached);
        let out = reply(10);
        assert_eq!(
            s.finish(C, 1, 5, out.clone(), true, now),
            vec!["link 1", "link 2"]
        );
        assert_eq!(s.begin(C, 1, 5, "unused", "link 3"), Begin::Cached(out));
        assert_eq!(s.cached_bytes(), 10 + ENTRY_OVERHEAD);
    }

    #[test]
    fn idempotent_outcomes_are_not_kept() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        assert_eq!(s.begin(C, 1, 1, "a", "w"), Begin::Run);
        assert_eq!(s.finish(C, 1, 1, reply(3), false, now), vec!["w"]);
        assert_eq!(s.begin(C, 1, 1, "a", "w"), Begin::Run, "runs again");
        assert_eq!(s.cached_bytes(), 0);
    }

    #[test]
    fn the_watermark_trims_and_later_copies_below_it_are_ignored() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        for id in 1..=4 {
            s.begin(C, 1, id, "a", "w");
            s.finish(C, 1, id, reply(100), true, now);
        }
        assert_eq!(s.cached_bytes(), 4 * (100 + ENTRY_OVERHEAD));
        s.release(C, 1, 3);
        assert_eq!(s.cached_bytes(), 2 * (100 + ENTRY_OVERHEAD));
        assert_eq!(s.begin(C, 1, 2, "a", "w"), Begin::Stale);
        assert_eq!(s.begin(C, 1, 3, "a", "w"), Begin::Cached(reply(100)));
        // A watermark that goes back is ignored.
        s.release(C, 1, 1);
        assert_eq!(s.begin(C, 1, 2, "a", "w"), Begin::Stale);
    }

    #[test]
    fn the_cache_stays_within_its_bytes_and_refuses_copies_it_forgot() {
        let now = Instant::now();
        let per = 1000 + ENTRY_OVERHEAD;
        let mut s = sessions(10 * per);
        s.hello(C, 1);
        for id in 1..=100_000 {
            assert_eq!(s.begin(C, 1, id, "a", "w"), Begin::Run);
            s.finish(C, 1, id, reply(1000), true, now);
            assert!(s.cached_bytes() <= 10 * per);
        }
        assert_eq!(s.begin(C, 1, 50, "a", "w"), Begin::Forgotten);
        assert_eq!(s.begin(C, 1, 100_000, "a", "w"), Begin::Cached(reply(1000)));
        assert_eq!(s.begin(C, 1, 100_001, "a", "w"), Begin::Run);
    }

    #[test]
    fn outcomes_older_than_the_age_are_evicted() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        s.begin(C, 1, 1, "a", "w");
        s.finish(C, 1, 1, reply(1), true, now);
        s.begin(C, 1, 2, "a", "w");
        s.finish(C, 1, 2, reply(1), true, now + Duration::from_secs(61));
        assert_eq!(s.begin(C, 1, 1, "a", "w"), Begin::Forgotten);
        assert_eq!(s.cached_bytes(), 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_newer_epoch_aborts_the_old_handlers_and_an_older_one_is_refused() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        s.begin(C, 1, 1, "abort old 1", "w");
        s.begin(C, 1, 2, "abort old 2", "w");
        s.finish(C, 1, 2, reply(5), true, now);
        let Hello::Reincarnated(mut aborts) = s.hello(C, 2) else {
            panic!("a newer epoch must replace the session");
        };
        aborts.sort();
        assert_eq!(aborts, vec!["abort old 1"]);
        assert_eq!(s.cached_bytes(), 0, "the old epoch's cache is dropped");
        assert_eq!(s.hello(C, 1), Hello::Stale);
        // The old epoch's frames find no session; the new epoch starts afresh.
        assert_eq!(s.begin(C, 1, 3, "a", "w"), Begin::Superseded);
        assert_eq!(s.begin(C, 2, 2, "a", "w"), Begin::Run);
        assert!(s.finish(C, 1, 1, reply(1), true, now).is_empty());
    }

    #[test]
    fn a_detached_session_expires_after_the_linger_unless_a_link_returns() {
        let now = Instant::now();
        let linger = Duration::from_secs(5);
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        s.hello(C, 1);
        s.begin(C, 1, 1, "abort 1", "w");
        assert!(!s.link_closed(C, 1, now));
        assert!(s.link_closed(C, 1, now));
        assert!(s.expire(C, 1, linger, now).is_empty(), "too early");
        s.hello(C, 1);
        assert!(
            s.expire(C, 1, linger, now + linger).is_empty(),
            "a link came back"
        );
        assert!(s.link_closed(C, 1, now + linger));
        assert_eq!(s.expire(C, 1, linger, now + 2 * linger), vec!["abort 1"]);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn past_the_bound_a_new_client_ends_the_session_detached_longest() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        for client in 1..=3 {
            s.hello((client, 0), 1);
            let abort = ["", "abort 1", "abort 2", "abort 3"][client as usize];
            s.begin((client, 0), 1, 1, abort, "w");
        }
        s.link_closed((2, 0), 1, now);
        s.link_closed((1, 0), 1, now + Duration::from_secs(1));
        assert_eq!(s.hello((4, 0), 1), Hello::Accepted(vec!["abort 2"]));
        assert_eq!(s.hello((5, 0), 1), Hello::Accepted(vec!["abort 1"]));
        // Every session has a link now: the new one is kept all the same.
        assert_eq!(s.hello((6, 0), 1), Hello::Accepted(Vec::new()));
        // The same client id from another authenticated peer is another session.
        assert_eq!(s.hello((6, 99), 1), Hello::Accepted(Vec::new()));
        assert_eq!(s.begin((6, 99), 1, 1, "a", "w"), Begin::Run);
        assert_eq!(s.len(), 5);
    }

    #[test]
    fn one_way_calls_run_once_whatever_the_watermark_says() {
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        s.release(C, 1, 100);
        assert!(
            s.one_way(C, 1, 50),
            "a one-way call overtaken by a release still runs"
        );
        assert!(!s.one_way(C, 1, 50), "its copy does not");
        for id in 1000..1000 + ONE_WAY_MEMORY as u64 {
            assert!(s.one_way(C, 1, id));
        }
        assert!(
            s.one_way(C, 1, 50),
            "beyond the memory, a copy is not recognized"
        );
        assert!(!s.one_way(C, 2, 7), "no session for another epoch");
    }

    #[test]
    fn goodbye_ends_the_session_and_cancel_keeps_copies_from_running() {
        let now = Instant::now();
        let mut s = sessions(1 << 20);
        s.hello(C, 1);
        s.begin(C, 1, 1, "abort 1", "w");
        assert_eq!(s.cancel(C, 1, 1, now), Some("abort 1"));
        assert_eq!(s.begin(C, 1, 1, "a", "w"), Begin::Cached(None));
        assert!(
            s.finish(C, 1, 1, reply(1), true, now).is_empty(),
            "the aborted handler's end"
        );
        s.begin(C, 1, 2, "abort 2", "w");
        // Goodbye: the link leaves and the session ends without lingering.
        assert!(s.link_closed(C, 1, now));
        assert_eq!(s.expire(C, 1, Duration::ZERO, now), vec!["abort 2"]);
        assert_eq!(s.len(), 0);
        assert_eq!(s.cached_bytes(), 0);
    }
}
