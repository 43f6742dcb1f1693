//! The client's calls in flight, across links.
//!
//! Each call keeps its encoded frame until its outcome arrives, so that it can be sent again:
//! over a new link after a reconnect, or over the same link when its attempt timeout passes.
//! Whether sending again is allowed depends on the call's [`Semantics`] and on whether the
//! server is still the instance the call was sent to.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Hashes this side's own call ids: they are chosen here, in sequence, never by a peer, so a
/// multiplication spreads them well enough and no keyed hash is needed.
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    #[inline]
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits, which the table uses, depend on every bit of id.
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// What the client may do with a call whose outcome it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Semantics {
    /// Runs at most once: re-sent only to the server instance that may have it (its reply
    /// cache turns copies into one execution); failed with *outcome unknown* if that instance
    /// is gone.
    AtMostOnce,
    /// Idempotent: re-sent to whichever server answers, until it has an outcome.
    AtLeastOnce,
}

/// A link as the table knows it: a generation number (new for every link the session opens)
/// and the server instance its handshake named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkId {
    /// Counts the session's links from 1.
    pub generation: u64,
    /// The server instance (session id) the link's Welcome named.
    pub instance: u128,
}

#[derive(Debug)]
struct Outstanding<W> {
    frame: Bytes,
    semantics: Semantics,
    /// The server instance that may have this call: set before the frame is first handed to a
    /// link (a frame handed over may arrive even if the send then fails).
    sent_to: Option<u128>,
    /// The link it was last sent on.
    sent_on: Option<u64>,
    /// When to send it again on the same link if no outcome has come.
    attempt_due: Option<Instant>,
    waiter: W,
}

/// What to do after a new link came up.
#[derive(Debug)]
pub struct Relink<W> {
    /// Calls to send on the new link, in call-id order.
    pub resend: Vec<(u64, Bytes)>,
    /// At-most-once calls the previous server instance may have run: their outcome is unknown.
    pub unknown: Vec<W>,
}

/// The calls in flight of one client session, keyed by call id (a hash map: a call goes in and
/// out of it on every call, and a tree would allocate and free a node each time when few are in
/// flight; the lowest id, needed only for a watermark, is found by a scan). `W` is whatever waits for a
/// call's outcome (the driver's reply channel; `()` in tests).
#[derive(Debug)]
pub struct CallTable<W> {
    calls: HashMap<u64, Outstanding<W>, BuildHasherDefault<IdHasher>>,
    link: Option<LinkId>,
    /// The generation of a link being drained: still up, taking no new calls, closed once
    /// the calls sent on it have their outcomes (a planned move to another server).
    draining: Option<u64>,
    /// Outcomes received since the last watermark was handed out.
    settled: u32,
    /// Bytes of the frames of those outcomes.
    settled_bytes: usize,
}

/// How many outcomes arrive between two watermarks the client sends ([`CallTable::release_due`]).
pub const RELEASE_EVERY: u32 = 64;

/// How many bytes of outcomes arrive between two watermarks at most: a large reply is released
/// at once, so the server does not keep it waiting for 63 more calls.
pub const RELEASE_BYTES: usize = 64 << 10;

impl<W> Default for CallTable<W> {
    fn default() -> Self {
        CallTable {
            calls: HashMap::default(),
            link: None,
            draining: None,
            settled: 0,
            settled_bytes: 0,
        }
    }
}

impl<W> CallTable<W> {
    /// The link calls go out on now, if one is up.
    #[cfg(test)]
    pub fn link(&self) -> Option<LinkId> {
        self.link
    }

    /// Adds a call. If a link is up, the call is marked as sent on it and the link returned:
    /// the caller sends the frame there. With no link, the call waits for the next one.
    pub fn insert(
        &mut self,
        id: u64,
        frame: Bytes,
        semantics: Semantics,
        attempt: Option<Duration>,
        now: Instant,
        waiter: W,
    ) -> Option<LinkId> {
        let link = self.link;
        self.calls.insert(
            id,
            Outstanding {
                frame,
                semantics,
                sent_to: link.map(|l| l.instance),
                sent_on: link.map(|l| l.generation),
                attempt_due: link.and(attempt).map(|a| now + a),
                waiter,
            },
        );
        link
    }

    /// The call's outcome (a frame of `len` bytes) arrived: its waiter, if it was still
    /// waiting.
    pub fn complete(&mut self, id: u64, len: usize) -> Option<W> {
        let call = self.calls.remove(&id)?;
        self.settled = self.settled.saturating_add(1);
        self.settled_bytes = self.settled_bytes.saturating_add(len);
        Some(call.waiter)
    }

    /// The waiter of a call still in flight, to tell it something short of the outcome (an
    /// acknowledgement).
    pub fn waiter_mut(&mut self, id: u64) -> Option<&mut W> {
        self.calls.get_mut(&id).map(|c| &mut c.waiter)
    }

    /// The caller gave up on a call: forget it. Returns whether it was in flight (the server
    /// should then be told to drop it) and the link it was last sent on.
    pub fn cancel(&mut self, id: u64) -> Option<Option<u64>> {
        let call = self.calls.remove(&id)?;
        self.settled = self.settled.saturating_add(1);
        Some(call.sent_on)
    }

    /// The lowest call id still waiting for its outcome.
    pub fn lowest(&self) -> Option<u64> {
        self.calls.keys().min().copied()
    }

    /// Whether enough outcomes arrived since the last watermark that the server should be told
    /// (every [`RELEASE_EVERY`] outcomes, or [`RELEASE_BYTES`] of them); resets the counts
    /// when it says yes.
    pub fn release_due(&mut self) -> bool {
        if self.settled >= RELEASE_EVERY || self.settled_bytes >= RELEASE_BYTES {
            self.settled = 0;
            self.settled_bytes = 0;
            true
        } else {
            false
        }
    }

    /// The link went down: calls wait for the next one.
    pub fn link_down(&mut self, generation: u64) {
        if self.link.is_some_and(|l| l.generation == generation) {
            self.link = None;
        }
    }

    /// Starts draining the current link: new calls wait for the next link, while the calls
    /// sent on this one stay there until their outcomes come. Returns the link's generation
    /// and whether it is drained already; `None` if no link is up.
    pub fn start_drain(&mut self) -> Option<(u64, bool)> {
        let link = self.link.take()?;
        self.draining = Some(link.generation);
        Some((link.generation, self.drained(link.generation)))
    }

    /// Whether `generation` is being drained and has no call in flight any more: it may be
    /// closed. Stops draining it when so.
    pub fn drained(&mut self, generation: u64) -> bool {
        let done = self.draining == Some(generation)
            && !self.calls.values().any(|c| c.sent_on == Some(generation));
        if done {
            self.draining = None;
        }
        done
    }

    /// The server instance of the link calls go out on now, if one is up.
    pub fn current_instance(&self) -> Option<u128> {
        self.link.map(|l| l.instance)
    }

    /// The link being drained, if any.
    pub fn draining(&self) -> Option<u64> {
        self.draining
    }

    /// The link being drained died before its calls had their outcomes: they are treated as
    /// any call of a lost link. If a link is up, what to send on it (or fail) now; otherwise
    /// they wait for [`CallTable::link_up`].
    pub fn drain_lost(
        &mut self,
        generation: u64,
        attempt: Option<Duration>,
        now: Instant,
    ) -> Option<Relink<W>> {
        if self.draining != Some(generation) {
            return None;
        }
        self.draining = None;
        let link = self.link?;
        Some(self.relink(link, attempt, now, Some(generation)))
    }

    /// A new link is up. Every call is sent on it again, except at-most-once calls that were
    /// sent to another server instance: that instance may have run them and took its reply
    /// cache with it, so their outcome is unknown. Calls in flight on a link being drained
    /// stay there.
    pub fn link_up(&mut self, link: LinkId, attempt: Option<Duration>, now: Instant) -> Relink<W> {
        self.link = Some(link);
        self.relink(link, attempt, now, None)
    }

    /// Moves calls onto `link`: those last sent on `only` if given, else all but the draining
    /// link's.
    fn relink(
        &mut self,
        link: LinkId,
        attempt: Option<Duration>,
        now: Instant,
        only: Option<u64>,
    ) -> Relink<W> {
        let draining = self.draining;
        let moves = |c: &Outstanding<W>| match only {
            Some(generation) => c.sent_on == Some(generation),
            None => draining.is_none() || c.sent_on != draining,
        };
        let lost: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                moves(c)
                    && c.semantics == Semantics::AtMostOnce
                    && c.sent_to.is_some_and(|i| i != link.instance)
            })
            .map(|(id, _)| *id)
            .collect();
        let mut lost = lost;
        lost.sort_unstable();
        let unknown = lost
            .iter()
            .filter_map(|id| self.calls.remove(id))
            .map(|c| c.waiter)
            .collect();
        let mut resend: Vec<(u64, Bytes)> = self
            .calls
            .iter_mut()
            .filter(|(_, c)| moves(c))
            .map(|(id, c)| {
                c.sent_to = Some(link.instance);
                c.sent_on = Some(link.generation);
                c.attempt_due = attempt.map(|a| now + a);
                (*id, c.frame.clone())
            })
            .collect();
        resend.sort_unstable_by_key(|(id, _)| *id);
        Relink { resend, unknown }
    }

    /// When call `id`'s attempt timeout passes: the frame to send again on the same link, if
    /// the call is still waiting and a link is up. The next attempt is due `attempt` later.
    pub fn attempt_expired(
        &mut self,
        id: u64,
        attempt: Duration,
        now: Instant,
    ) -> Option<(LinkId, Bytes)> {
        let link = self.link?;
        let call = self.calls.get_mut(&id)?;
        // A call on a link being drained is answered there; a copy elsewhere could run twice.
        if call.attempt_due.is_some_and(|due| due > now)
            || (call.sent_on.is_some() && call.sent_on == self.draining)
        {
            return None;
        }
        call.sent_to = Some(link.instance);
        call.sent_on = Some(link.generation);
        call.attempt_due = Some(now + attempt);
        Some((link, call.frame.clone()))
    }

    /// The server said goodbye on the current link: it ended the client's session (it shuts
    /// down) and will not answer there again. The at-most-once calls sent to that session may
    /// have run (a handler cut short by the shutdown), so their outcome is unknown now, as if
    /// a reconnect had found another session; the rest wait for the next link.
    pub fn session_ended(&mut self, generation: u64) -> Vec<W> {
        let Some(link) = self.link.filter(|l| l.generation == generation) else {
            return Vec::new();
        };
        let mut lost: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                c.semantics == Semantics::AtMostOnce && c.sent_to == Some(link.instance)
            })
            .map(|(id, _)| *id)
            .collect();
        lost.sort_unstable();
        lost.iter()
            .filter_map(|id| self.calls.remove(id))
            .map(|c| c.waiter)
            .collect()
    }

    /// Every call's waiter, the table emptied: the session gave up reconnecting.
    pub fn fail_all(&mut self) -> Vec<W> {
        let mut calls: Vec<(u64, Outstanding<W>)> = self.calls.drain().collect();
        calls.sort_unstable_by_key(|(id, _)| *id);
        calls.into_iter().map(|(_, c)| c.waiter).collect()
    }

    /// How many calls are in flight.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

/// Whether a client that closes says goodbye (ending its session on the server at once):
/// only if none of its *siblings* (other clients of this process with the same identity) is
/// still open on the same server session (`session`, the id its last Welcome named; `None`
/// if it never had a link). A sibling's goodbye must not end a session another client still
/// uses, even while that client's link is down: the server would forget its calls in flight.
pub fn says_goodbye(
    session: Option<u128>,
    siblings: impl IntoIterator<Item = Option<u128>>,
) -> bool {
    session.is_some() && !siblings.into_iter().any(|s| s == session)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u128 = 0xA;
    const B: u128 = 0xB;

    fn link(generation: u64, instance: u128) -> LinkId {
        LinkId {
            generation,
            instance,
        }
    }

    fn frame(id: u64) -> Bytes {
        Bytes::from(id.to_be_bytes().to_vec())
    }

    #[test]
    fn calls_made_without_a_link_wait_and_go_out_on_the_next() {
        let now = Instant::now();
        let mut t = CallTable::default();
        assert_eq!(
            t.insert(1, frame(1), Semantics::AtMostOnce, None, now, "one"),
            None
        );
        assert_eq!(
            t.insert(2, frame(2), Semantics::AtLeastOnce, None, now, "two"),
            None
        );
        let relink = t.link_up(link(1, A), None, now);
        assert!(relink.unknown.is_empty());
        assert_eq!(relink.resend, vec![(1, frame(1)), (2, frame(2))]);
        assert_eq!(
            t.insert(3, frame(3), Semantics::AtMostOnce, None, now, "three"),
            Some(link(1, A))
        );
    }

    #[test]
    fn the_same_instance_gets_every_call_again_after_a_reconnect() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(5, frame(5), Semantics::AtMostOnce, None, now, ());
        t.insert(6, frame(6), Semantics::AtLeastOnce, None, now, ());
        t.link_down(1);
        assert_eq!(t.link(), None);
        let relink = t.link_up(link(2, A), None, now);
        assert!(relink.unknown.is_empty());
        assert_eq!(relink.resend, vec![(5, frame(5)), (6, frame(6))]);
    }

    #[test]
    fn a_restarted_server_fails_sent_at_most_once_calls_and_gets_the_rest() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(
            1,
            frame(1),
            Semantics::AtMostOnce,
            None,
            now,
            "sent, at most once",
        );
        t.insert(
            2,
            frame(2),
            Semantics::AtLeastOnce,
            None,
            now,
            "sent, idempotent",
        );
        t.link_down(1);
        t.insert(3, frame(3), Semantics::AtMostOnce, None, now, "never sent");
        let relink = t.link_up(link(2, B), None, now);
        assert_eq!(relink.unknown, vec!["sent, at most once"]);
        assert_eq!(relink.resend, vec![(2, frame(2)), (3, frame(3))]);
        // Now sent to B: another restart fails call 3 too, and B again keeps it.
        t.link_down(2);
        let again = t.link_up(link(3, B), None, now);
        assert!(again.unknown.is_empty());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_drained_link_keeps_its_calls_until_they_finish_while_new_calls_wait() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(1, frame(1), Semantics::AtMostOnce, None, now, "on A");
        assert_eq!(t.start_drain(), Some((1, false)));
        // New calls wait for the next link.
        assert_eq!(
            t.insert(2, frame(2), Semantics::AtMostOnce, None, now, "waits"),
            None
        );
        // Another instance comes up: only the waiting call goes there; call 1 stays on A,
        // where it is answered (not failed as unknown, not sent twice).
        let relink = t.link_up(link(2, B), None, now);
        assert!(relink.unknown.is_empty());
        assert_eq!(relink.resend, vec![(2, frame(2))]);
        assert_eq!(t.attempt_expired(1, Duration::ZERO, now), None);
        assert!(!t.drained(1));
        assert_eq!(t.complete(1, 0), Some("on A"));
        assert!(t.drained(1));
        assert_eq!(t.draining(), None);
    }

    #[test]
    fn a_drained_link_that_dies_hands_its_calls_over_by_their_semantics() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(
            1,
            frame(1),
            Semantics::AtMostOnce,
            None,
            now,
            "at most once",
        );
        t.insert(2, frame(2), Semantics::AtLeastOnce, None, now, "idempotent");
        t.start_drain();
        // The next link is not up yet: nothing to do but wait for it.
        assert!(t.drain_lost(1, None, now).is_none());
        let relink = t.link_up(link(2, B), None, now);
        assert_eq!(relink.unknown, vec!["at most once"]);
        assert_eq!(relink.resend, vec![(2, frame(2))]);

        // And when the next link is already up, at once.
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(1, frame(1), Semantics::AtLeastOnce, None, now, "idempotent");
        t.start_drain();
        assert!(t.link_up(link(2, B), None, now).resend.is_empty());
        let relink = t.drain_lost(1, None, now).expect("a link is up");
        assert_eq!(relink.resend, vec![(1, frame(1))]);
        assert_eq!(t.draining(), None);
    }

    #[test]
    fn an_old_links_end_does_not_take_down_the_new_one() {
        let now = Instant::now();
        let mut t: CallTable<()> = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.link_up(link(2, A), None, now);
        t.link_down(1);
        assert_eq!(t.link(), Some(link(2, A)));
    }

    #[test]
    fn attempts_repeat_on_the_same_link_only_when_due() {
        let now = Instant::now();
        let attempt = Duration::from_millis(100);
        let mut t = CallTable::default();
        t.link_up(link(1, A), Some(attempt), now);
        t.insert(1, frame(1), Semantics::AtMostOnce, Some(attempt), now, ());
        assert_eq!(t.attempt_expired(1, attempt, now), None, "not due yet");
        let later = now + attempt;
        assert_eq!(
            t.attempt_expired(1, attempt, later),
            Some((link(1, A), frame(1)))
        );
        assert_eq!(t.attempt_expired(1, attempt, later), None, "re-armed");
        t.complete(1, 8);
        assert_eq!(t.attempt_expired(1, attempt, later + attempt), None, "done");
        t.insert(2, frame(2), Semantics::AtMostOnce, Some(attempt), now, ());
        t.link_down(1);
        assert_eq!(t.attempt_expired(2, attempt, later), None, "no link");
    }

    #[test]
    fn the_watermark_is_the_lowest_call_in_flight_and_is_sent_now_and_then() {
        let now = Instant::now();
        let mut t = CallTable::default();
        assert_eq!(t.lowest(), None);
        for id in 10..10 + u64::from(RELEASE_EVERY) + 1 {
            t.insert(id, frame(id), Semantics::AtMostOnce, None, now, ());
        }
        assert_eq!(t.lowest(), Some(10));
        assert_eq!(t.cancel(10), Some(None));
        assert_eq!(t.lowest(), Some(11));
        assert!(!t.release_due());
        for id in 11..10 + u64::from(RELEASE_EVERY) {
            assert_eq!(t.complete(id, 40), Some(()));
        }
        assert!(t.release_due());
        assert!(!t.release_due());
        assert_eq!(t.lowest(), Some(10 + u64::from(RELEASE_EVERY)));
        assert_eq!(
            t.complete(11, 40),
            None,
            "an outcome that comes twice is taken once"
        );
        // One large outcome is reason enough.
        let last = 10 + u64::from(RELEASE_EVERY);
        assert_eq!(t.complete(last, RELEASE_BYTES), Some(()));
        assert!(t.release_due());
    }

    #[test]
    fn a_server_goodbye_fails_the_at_most_once_calls_it_had_and_keeps_the_rest() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.link_up(link(1, A), None, now);
        t.insert(1, frame(1), Semantics::AtMostOnce, None, now, "sent");
        t.insert(2, frame(2), Semantics::AtLeastOnce, None, now, "idempotent");
        assert!(t.session_ended(7).is_empty(), "another link's goodbye");
        assert_eq!(t.session_ended(1), vec!["sent"]);
        t.link_down(1);
        assert_eq!(t.link_up(link(2, B), None, now).resend, vec![(2, frame(2))]);
    }

    #[test]
    fn only_the_last_sibling_on_a_session_says_goodbye() {
        assert!(says_goodbye(Some(A), []));
        assert!(says_goodbye(Some(A), [Some(B), None]));
        assert!(!says_goodbye(Some(A), [Some(B), Some(A)]));
        assert!(!says_goodbye(None, []), "never connected: nothing to end");
    }

    #[test]
    fn giving_up_fails_every_call() {
        let now = Instant::now();
        let mut t = CallTable::default();
        t.insert(1, frame(1), Semantics::AtMostOnce, None, now, 1);
        t.insert(2, frame(2), Semantics::AtLeastOnce, None, now, 2);
        assert_eq!(t.fail_all(), vec![1, 2]);
        assert_eq!(t.len(), 0);
    }
}
