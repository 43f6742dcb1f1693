//! The connection state machine without a runtime: frames, calls, handlers and instants in,
//! events and frames out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::ids::{InterfaceId, MethodId};
use crate::wire::{forge, ErrorCode, Flags};

const IFACE: InterfaceId = InterfaceId::new(0x11);
const METHOD: MethodId = MethodId::new(0x22);

type Conn = Connection<u32>;

fn config(sessions: bool) -> Config {
    Config {
        max_frame_size: 64 << 10,
        max_handlers: 3,
        call_bytes: 20_000,
        small_frame: 1024,
        max_metadata_entries: 4,
        max_metadata_bytes: 256,
        sessions,
    }
}

/// A frame of `kind` for call `id` with `payload` bytes of payload.
fn frame(kind: FrameKind, id: u64, payload: usize) -> Bytes {
    frame_with(Header::new(kind, id, IFACE, METHOD), payload)
}

fn frame_with(mut header: Header, payload: usize) -> Bytes {
    header.payload_len = payload as u32;
    let mut out = BytesMut::new();
    header.encode(&mut out);
    out.put_bytes(7, payload);
    out.freeze()
}

fn events<H>(conn: &mut Connection<H>) -> Vec<Event<H>> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// The frames queued for the peer, as (kind, call id, error code if an Error).
fn sent<H>(conn: &mut Connection<H>) -> Vec<(FrameKind, u64, Option<ErrorCode>)> {
    std::iter::from_fn(|| conn.poll_transmit())
        .map(|f| {
            let h = Header::decode(&f).expect("a well-formed frame");
            let code = (h.kind == FrameKind::Error)
                .then(|| ErrorPayload::decode(&f[HEADER_LEN..]).code)
                .flatten();
            (h.kind, h.call_id, code)
        })
        .collect()
}

/// Asserts that the one frame queued for the peer is an Error refusing call `id` with `code`.
#[track_caller]
fn assert_refused<H>(conn: &mut Connection<H>, id: u64, code: ErrorCode) {
    assert_eq!(sent(conn), vec![(FrameKind::Error, id, Some(code))]);
}

/// Admits a call from the peer and returns its ticket.
fn admit<H: std::fmt::Debug>(conn: &mut Connection<H>, id: u64) -> Ticket {
    conn.handle_frame(frame(FrameKind::Call, id, 8));
    match conn.poll_event() {
        Some(Event::Run(admitted)) => admitted.ticket,
        other => panic!("expected a Run, got {other:?}"),
    }
}

// ---- answers to this side's calls ----

#[test]
fn answers_go_out_as_they_came_for_whoever_keeps_the_call() {
    let mut conn = Conn::new(config(false));
    conn.handle_frame(frame(FrameKind::Ack, 1, 0));
    conn.handle_frame(frame(FrameKind::Reply, 1, 3));
    // A second reply for the same call is passed on too: the session knows it ended.
    conn.handle_frame(frame(FrameKind::Reply, 1, 0));
    match events(&mut conn).as_slice() {
        [Event::Answer {
            call_id: 1,
            answer: Answer::Ack,
        }, Event::Answer {
            call_id: 1,
            answer: Answer::Outcome(Ok((h, f))),
        }, Event::Answer { call_id: 1, .. }] => {
            assert_eq!((h.payload_len, f.len()), (3, HEADER_LEN + 3))
        }
        other => panic!("{other:?}"),
    }
    assert!(sent(&mut conn).is_empty());
}

#[test]
fn an_error_frame_is_an_outcome_and_one_naming_no_call_is_reported() {
    let mut conn = Conn::new(config(false));
    let mut error = BytesMut::new();
    let payload = ErrorPayload::new(ErrorCode::Overloaded, "busy");
    let mut header = Header::new(FrameKind::Error, 4, IFACE, METHOD);
    header.payload_len = payload.encoded_len() as u32;
    header.encode(&mut error);
    payload.encode(&mut error);
    conn.handle_frame(error.clone().freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answer { call_id: 4, answer: Answer::Outcome(Ok((h, _))) }] if h.kind == FrameKind::Error
    ));
    crate::wire::set_call_id(&mut error, 0);
    conn.handle_frame(error.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::PeerReported { message }] if message == "busy"
    ));
}

#[test]
fn a_malformed_answer_fails_the_call_it_names_and_nothing_is_sent() {
    let mut conn = Conn::new(config(false));
    let mut bad = BytesMut::from(&frame(FrameKind::Reply, 6, 4)[..]);
    forge::set_reserved(&mut bad, 1);
    conn.handle_frame(bad.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answer {
            call_id: 6,
            answer: Answer::Outcome(Err(_))
        }]
    ));
    assert!(
        sent(&mut conn).is_empty(),
        "nothing is owed for a bad answer"
    );
}

#[test]
fn an_answer_taken_without_the_connection_makes_the_same_event() {
    let mut bad = BytesMut::from(&frame(FrameKind::Reply, 6, 4)[..]);
    forge::set_reserved(&mut bad, 1);
    let frames = [
        frame(FrameKind::Ack, 1, 0),
        frame(FrameKind::Reply, 2, 3),
        frame(FrameKind::Error, 0, 0),
        bad.freeze(),
        frame(FrameKind::Reply, 7, 70 << 10),
    ];
    for f in frames {
        let mut conn = Conn::new(config(false));
        conn.handle_frame(f.clone());
        let through = format!("{:?}", events(&mut conn));
        let taken = Conn::take_answer(f, 64 << 10).expect("an answer");
        assert_eq!(through, format!("{:?}", [taken]));
        assert!(sent(&mut conn).is_empty());
    }
    // Not answers, or answers that need a refusal sent: handed back.
    for f in [
        frame(FrameKind::Call, 1, 0),
        frame(FrameKind::Cancel, 1, 0),
        frame(FrameKind::Reply, 1, 0).slice(..12),
    ] {
        assert_eq!(Conn::take_answer(f.clone(), 64 << 10).map(|_| ()), Err(f));
    }
}

// ---- the peer's calls ----

#[test]
fn a_call_is_admitted_with_its_deadline_and_its_handler_kept_until_it_finishes() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let mut header = Header::new(FrameKind::Call, 5, IFACE, METHOD);
    header.budget_micros = 2000;
    conn.handle_frame(frame_with(header, 10));
    let admitted = match conn.poll_event() {
        Some(Event::Run(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(admitted.budget(), Some(Duration::from_millis(2)));
    assert_eq!(admitted.deadline(now), Some(now + Duration::from_millis(2)));
    assert_eq!(
        (admitted.args_at, admitted.frame.len()),
        (HEADER_LEN, HEADER_LEN + 10)
    );
    assert_eq!(conn.running(&admitted.ticket, 1), Ok(()));
    assert_eq!(conn.handlers_running(), 1);
    conn.handler_finished(admitted.ticket);
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn a_second_call_with_a_running_id_is_refused_and_the_first_runs_on() {
    let mut conn = Conn::new(config(false));
    let ticket = admit(&mut conn, 5);
    conn.handle_frame(frame(FrameKind::Call, 5, 0));
    assert!(events(&mut conn).is_empty());
    assert_refused(&mut conn, 5, ErrorCode::Protocol);
    assert_eq!(conn.running(&ticket, 1), Ok(()));
    conn.handler_finished(ticket);
    // Once it ended, the id may be used again.
    let again = admit(&mut conn, 5);
    conn.handler_finished(again);
}

#[test]
fn handlers_stop_at_the_limit_on_each_kind_of_link() {
    for sessions in [false, true] {
        let mut conn = Conn::new(config(sessions));
        let tickets: Vec<Ticket> = (1..=3).map(|id| admit(&mut conn, id)).collect();
        conn.handle_frame(frame(FrameKind::Call, 4, 0));
        assert!(events(&mut conn).is_empty());
        assert_refused(&mut conn, 4, ErrorCode::Overloaded);
        // A one-way call over the limit is dropped without an answer.
        conn.handle_frame(frame(FrameKind::OneWay, 6, 0));
        assert!(sent(&mut conn).is_empty());
        assert_eq!(conn.reserve(10), None, "no room to reserve either");
        let mut tickets = tickets.into_iter();
        conn.handler_finished(tickets.next().expect("three"));
        let next = admit(&mut conn, 4);
        assert_eq!(conn.handlers_running(), 3);
        for t in tickets.chain([next]) {
            conn.handler_finished(t);
        }
        assert_eq!(conn.handlers_running(), 0);
    }
}

#[test]
fn call_bytes_bound_large_frames_but_not_small_ones() {
    let mut conn = Conn::new(config(true));
    conn.handle_frame(frame(FrameKind::Call, 1, 12_000));
    let big = match conn.poll_event() {
        Some(Event::Run(a)) => a.ticket,
        other => panic!("{other:?}"),
    };
    assert_eq!(conn.call_bytes_held(), HEADER_LEN + 12_000);
    conn.handle_frame(frame(FrameKind::Call, 2, 12_000));
    assert_refused(&mut conn, 2, ErrorCode::Overloaded);
    // A small frame takes no bytes and still runs.
    let small = admit(&mut conn, 3);
    assert!(big.counts_bytes() && !small.counts_bytes());
    assert_eq!(conn.call_bytes_held(), HEADER_LEN + 12_000);
    conn.handler_finished(big);
    conn.handler_finished(small);
    assert_eq!(conn.call_bytes_held(), 0);
    // A frame larger than the whole budget takes all of it and runs alone.
    conn.handle_frame(frame(FrameKind::Call, 4, 30_000));
    let huge = match conn.poll_event() {
        Some(Event::Run(a)) => a.ticket,
        other => panic!("{other:?}"),
    };
    assert_eq!(conn.call_bytes_held(), 20_000);
    conn.handler_finished(huge);
}

#[test]
fn plain_tickets_are_given_back_in_bulk_and_others_are_not_plain() {
    let mut conn = Conn::new(config(true));
    let tickets: Vec<Ticket> = (1..=3).map(|id| admit(&mut conn, id)).collect();
    assert_eq!(conn.reserve(10), None, "full");
    let plain: Vec<Plain> = tickets
        .into_iter()
        .map(|t| t.plain().expect("a session's small call"))
        .collect();
    assert_eq!(
        conn.handlers_running(),
        3,
        "counted until they are given back"
    );
    conn.plain_finished(2);
    assert_eq!(conn.handlers_running(), 1);
    drop(plain);
    conn.plain_finished(1);
    assert_eq!(conn.handlers_running(), 0);
    // A large frame's ticket holds bytes, and a keyed link's an entry: neither is plain.
    conn.handle_frame(frame(FrameKind::Call, 9, 5000));
    let Some(Event::Run(big)) = conn.poll_event() else {
        panic!("a run");
    };
    let big = big.ticket.plain().expect_err("it holds bytes");
    conn.handler_finished(big);
    let mut keyed = Conn::new(config(false));
    let t = admit(&mut keyed, 1);
    let t = t.plain().expect_err("it holds an entry");
    keyed.handler_finished(t);
    assert_eq!((conn.call_bytes_held(), keyed.handlers_running()), (0, 0));
}

#[test]
fn a_one_way_call_runs_in_the_room_reserved_for_it() {
    for sessions in [false, true] {
        let mut conn = Conn::new(config(sessions));
        let room = conn.reserve(HEADER_LEN + 5000).expect("room");
        assert_eq!(conn.call_bytes_held(), HEADER_LEN + 5000);
        conn.handle_frame_in(frame(FrameKind::OneWay, 9, 5000), room);
        let ticket = match conn.poll_event() {
            Some(Event::Run(a)) => a.ticket,
            other => panic!("{other:?}"),
        };
        assert_eq!(conn.handlers_running(), 1);
        conn.handler_finished(ticket);
        assert_eq!((conn.handlers_running(), conn.call_bytes_held()), (0, 0));
        // Room the frame does not use (bad metadata) is given back.
        let room = conn.reserve(HEADER_LEN).expect("room");
        let mut header = Header::new(FrameKind::OneWay, 10, IFACE, METHOD);
        header.flags = Flags::METADATA;
        conn.handle_frame_in(frame_with(header, 1), room);
        assert!(events(&mut conn).is_empty());
        assert!(sent(&mut conn).is_empty(), "nothing answers a one-way call");
        assert_eq!((conn.handlers_running(), conn.call_bytes_held()), (0, 0));
    }
}

#[test]
fn only_one_way_calls_wait_for_room_and_only_calls_that_ask_are_acked() {
    assert!(Conn::waits_for_room(
        &frame(FrameKind::OneWay, 1, 10),
        64 << 10
    ));
    assert!(!Conn::waits_for_room(
        &frame(FrameKind::OneWay, 1, 70 << 10),
        64 << 10
    ));
    assert!(!Conn::waits_for_room(
        &frame(FrameKind::Call, 1, 10),
        64 << 10
    ));
    assert!(!Conn::waits_for_room(&[], 64 << 10));
    let mut call = Header::new(FrameKind::Call, 3, IFACE, METHOD);
    assert_eq!(Conn::ack_for(&call), None);
    call.flags = Flags::ACK;
    let ack = Conn::ack_for(&call).expect("asked for");
    assert_eq!(
        (ack.kind, ack.call_id, ack.interface, ack.method),
        (FrameKind::Ack, 3, IFACE, METHOD)
    );
    assert_eq!(
        (ack.flags, ack.payload_len, ack.budget_micros),
        (Flags::NONE, 0, 0)
    );
}

#[test]
fn bad_metadata_refuses_the_call_with_protocol() {
    let mut conn = Conn::new(config(false));
    let mut header = Header::new(FrameKind::Call, 3, IFACE, METHOD);
    header.flags = Flags::METADATA;
    let mut f = BytesMut::new();
    header.payload_len = 4;
    header.encode(&mut f);
    f.put_u16(1000); // more metadata than the limit of 256
    f.put_u16(0);
    conn.handle_frame(f.freeze());
    assert!(events(&mut conn).is_empty());
    assert_refused(&mut conn, 3, ErrorCode::Protocol);
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn a_cancel_aborts_a_kept_handler_and_a_handler_not_yet_made_never_runs() {
    let mut conn = Conn::new(config(false));
    let made = admit(&mut conn, 1);
    conn.running(&made, 100).expect("kept");
    let unmade = admit(&mut conn, 2);
    conn.handle_frame(frame(FrameKind::Cancel, 1, 0));
    conn.handle_frame(frame(FrameKind::Cancel, 2, 0));
    conn.handle_frame(frame(FrameKind::Cancel, 3, 0));
    assert!(matches!(events(&mut conn).as_slice(), [Event::Abort(100)]));
    assert_eq!(conn.running(&unmade, 200), Err(200));
    assert_eq!(conn.handlers_running(), 0);
    // The ticket of a cancelled call frees its bytes and nothing else.
    let reused = admit(&mut conn, 1);
    conn.handler_finished(made);
    assert_eq!(
        conn.handlers_running(),
        1,
        "the new call with id 1 is still kept"
    );
    conn.handler_finished(reused);
    conn.handler_finished(unmade);
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn on_a_session_link_cancel_release_and_goodbye_go_to_the_session() {
    let mut conn = Conn::new(config(true));
    let t = admit(&mut conn, 1);
    conn.handle_frame(frame(FrameKind::Cancel, 1, 0));
    conn.handle_frame(frame(FrameKind::Release, 7, 0));
    conn.handle_frame(crate::wire::goodbye());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [
            Event::Cancelled { call_id: 1 },
            Event::Release { watermark: 7 },
            Event::Goodbye
        ]
    ));
    // The session's handler holds its place until it ends, cancelled or not.
    assert_eq!(conn.handlers_running(), 1);
    conn.handler_finished(t);
}

#[test]
fn refused_frames_are_answered_with_an_error_echoing_their_claims() {
    let mut conn = Conn::new(config(false));
    // Too large: TooLarge with the sizes.
    conn.handle_frame(frame(FrameKind::Call, 8, 70 << 10));
    let f = conn.poll_transmit().expect("an error");
    let h = Header::decode(&f).expect("well formed");
    let payload = ErrorPayload::decode(&f[HEADER_LEN..]);
    assert_eq!(
        (h.kind, h.call_id, h.interface, h.method),
        (FrameKind::Error, 8, IFACE, METHOD)
    );
    assert_eq!(
        payload.too_large,
        Some(((HEADER_LEN + (70 << 10)) as u64, 64 << 10))
    );
    // A bad header: Protocol. A frame shorter than a header: answered with what it claims.
    let mut bad = BytesMut::from(&frame(FrameKind::Call, 9, 0)[..]);
    forge::set_version(&mut bad, 9);
    conn.handle_frame(bad.freeze());
    conn.handle_frame(frame(FrameKind::Call, 10, 0).slice(..16));
    let sent = sent(&mut conn);
    assert_eq!(sent[0], (FrameKind::Error, 9, Some(ErrorCode::Protocol)));
    assert_eq!(sent[1], (FrameKind::Error, 10, Some(ErrorCode::Protocol)));
    // A malformed one-way call or cancel is dropped, unanswered.
    let mut bad = BytesMut::from(&frame(FrameKind::OneWay, 11, 0)[..]);
    forge::set_reserved(&mut bad, 3);
    conn.handle_frame(bad.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Dropped { .. }]
    ));
    assert!(conn.poll_transmit().is_none());
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn a_handler_the_driver_cannot_make_is_refused_with_its_error() {
    let mut conn = Conn::new(config(false));
    conn.handle_frame(frame(FrameKind::Call, 4, 0));
    let Some(Event::Run(a)) = conn.poll_event() else {
        panic!("a run");
    };
    let payload = ErrorPayload::new(ErrorCode::UnknownMethod, "no such method");
    conn.refuse(a.ticket, &a.header, &payload);
    assert_refused(&mut conn, 4, ErrorCode::UnknownMethod);
    assert_eq!(conn.handlers_running(), 0);
}

// ---- link loss ----

#[test]
fn link_loss_aborts_the_handlers_someone_waits_for_and_admits_nothing_more() {
    let mut conn = Conn::new(config(false));
    let waited = admit(&mut conn, 1);
    conn.running(&waited, 1).expect("kept");
    let unmade = admit(&mut conn, 3);
    conn.handle_frame(frame(FrameKind::OneWay, 2, 0));
    let Some(Event::Run(one_way)) = conn.poll_event() else {
        panic!("a run");
    };
    conn.running(&one_way.ticket, 2).expect("kept");
    // A refusal queued before the loss is not sent after it.
    conn.handle_frame(frame(FrameKind::Call, 1, 0));
    conn.link_lost("gone");
    assert!(matches!(events(&mut conn).as_slice(), [Event::Abort(1)]));
    assert!(conn.poll_transmit().is_none());
    // A handler not made yet when the link went does not run.
    assert_eq!(conn.running(&unmade, 3), Err(3));
    // The one-way handler runs on; calls arriving now are ignored; no room is given.
    assert_eq!(conn.handlers_running(), 1);
    conn.handle_frame(frame(FrameKind::Call, 4, 0));
    conn.handle_frame(frame(FrameKind::Reply, 4, 0));
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answer { call_id: 4, .. }]
    ));
    assert_eq!(conn.reserve(10), None);
    for t in [one_way.ticket, waited, unmade] {
        conn.handler_finished(t);
    }
    assert_eq!((conn.handlers_running(), conn.call_bytes_held()), (0, 0));
    conn.link_lost("again");
    assert_eq!(conn.close_reason(), Some("gone"));
}

#[test]
fn every_frame_kind_in_every_state_of_a_link() {
    // States: open and idle; open with a call running under the frame's id; closed.
    let kinds = [
        FrameKind::Call,
        FrameKind::OneWay,
        FrameKind::Ack,
        FrameKind::Reply,
        FrameKind::Error,
        FrameKind::Cancel,
        FrameKind::Release,
    ];
    for sessions in [false, true] {
        for state in ["idle", "running", "closed"] {
            for kind in kinds {
                let mut conn = Conn::new(config(sessions));
                let running = (state == "running").then(|| {
                    let t = admit(&mut conn, 5);
                    conn.running(&t, 50).expect("kept");
                    t
                });
                if state == "closed" {
                    conn.link_lost("closed");
                }
                conn.handle_frame(frame(kind, 5, 0));
                let events = events(&mut conn);
                let sent = sent(&mut conn);
                let what = format!("{kind:?} on a {state} link (sessions: {sessions})");
                match (kind, state) {
                    (_, "closed") if matches!(kind, FrameKind::Call | FrameKind::OneWay) => {
                        assert!(events.is_empty() && sent.is_empty(), "{what}")
                    }
                    (FrameKind::Call, "running") if !sessions => {
                        assert!(events.is_empty(), "{what}");
                        assert_eq!(sent, vec![(FrameKind::Error, 5, Some(ErrorCode::Protocol))]);
                    }
                    (FrameKind::OneWay, "running") if !sessions => {
                        assert!(events.is_empty() && sent.is_empty(), "{what}")
                    }
                    (FrameKind::Call | FrameKind::OneWay, _) => {
                        assert!(matches!(events.as_slice(), [Event::Run(_)]), "{what}");
                        assert!(sent.is_empty(), "{what}");
                    }
                    (FrameKind::Ack | FrameKind::Reply | FrameKind::Error, _) => {
                        assert!(
                            matches!(events.as_slice(), [Event::Answer { call_id: 5, .. }]),
                            "{what}"
                        )
                    }
                    (FrameKind::Cancel, _) => {
                        let aborted = state == "running" && !sessions;
                        let expected = usize::from(aborted) + usize::from(sessions);
                        assert_eq!(events.len(), expected, "{what}");
                        if aborted {
                            assert!(matches!(events[0], Event::Abort(50)), "{what}");
                        }
                    }
                    (FrameKind::Release, _) => {
                        assert!(
                            matches!(events.as_slice(), [Event::Release { watermark: 5 }]),
                            "{what}"
                        )
                    }
                }
                if let Some(t) = running {
                    conn.handler_finished(t);
                }
                for e in events {
                    if let Event::Run(a) = e {
                        conn.handler_finished(a.ticket);
                    }
                }
                assert_eq!(conn.handlers_running(), 0, "{what}");
            }
        }
    }
}

// ---- random sequences ----

/// One input to the connection.
#[derive(Debug, Clone)]
enum Step {
    Answer {
        kind: u8,
        id: u64,
    },
    PeerCall {
        kind: u8,
        id: u64,
        payload: usize,
        budget: u32,
    },
    PeerCancel(u64),
    Hostile(Vec<u8>),
    Finish(usize),
    Reserve(usize),
    Advance(u64),
    Lose,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (3u8..=5, 0u64..8).prop_map(|(kind, id)| Step::Answer { kind, id }),
        (
            1u8..=2,
            0u64..8,
            prop_oneof![Just(0usize), Just(2000), Just(9000)],
            prop_oneof![Just(0u32), 1u32..5000],
        )
            .prop_map(|(kind, id, payload, budget)| Step::PeerCall {
                kind,
                id,
                payload,
                budget
            }),
        (0u64..8).prop_map(Step::PeerCancel),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Step::Hostile),
        (0usize..6).prop_map(Step::Finish),
        prop_oneof![Just(40usize), Just(9000)].prop_map(Step::Reserve),
        (0u64..15).prop_map(Step::Advance),
        Just(Step::Lose),
    ]
}

/// Checks the invariants after every step: the table and counts within their limits, no two
/// handlers at once for one call id on a link that keys them, a deadline reckoned from the
/// instant the call arrived, every answer passed on, every refusal a whole frame.
struct Model {
    conn: Connection<u64>,
    now: Instant,
    tickets: Vec<Ticket>,
    rooms: Vec<Room>,
    /// Handlers running by call id (keyed links only), with their ticket's serial.
    running: HashMap<u64, u64>,
    /// Answers sent in and answers passed on.
    answers: (usize, usize),
    budget: u32,
    /// Plain tickets given back but not yet counted in (the driver counts them in before
    /// its next input).
    plain: usize,
}

impl Model {
    fn drain(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            match e {
                Event::Run(a) => {
                    let id = a.header.call_id;
                    assert!(!self.conn.is_closed(), "a call admitted on a closed link");
                    if !self.conn.config().sessions {
                        assert!(
                            self.running.insert(id, a.ticket.serial).is_none(),
                            "two handlers at once for call {id}"
                        );
                    }
                    let expected =
                        (self.budget != 0).then(|| Duration::from_micros(u64::from(self.budget)));
                    assert_eq!(a.budget(), expected);
                    assert_eq!(a.deadline(self.now), expected.map(|b| self.now + b));
                    let _ = self.conn.running(&a.ticket, id);
                    self.tickets.push(a.ticket);
                }
                Event::Answer { .. } => self.answers.1 += 1,
                _ => {}
            }
        }
        while let Some(f) = self.conn.poll_transmit() {
            let h = Header::decode(&f).expect("a refusal is a well-formed frame");
            assert_eq!(h.kind, FrameKind::Error);
            assert!(f.len() <= HEADER_LEN + 2048);
        }
        let config = self.conn.config();
        assert!(self.conn.handlers_running() <= config.max_handlers);
        assert!(self.conn.call_bytes_held() <= config.call_bytes);
        assert_eq!(self.answers.0, self.answers.1, "an answer was lost");
    }

    fn apply(&mut self, step: Step) {
        if self.plain > 0 {
            self.conn.plain_finished(std::mem::take(&mut self.plain));
        }
        match step {
            Step::Answer { kind, id } => {
                let mut f = BytesMut::from(&frame(FrameKind::Call, id, 0)[..]);
                forge::set_kind(&mut f, kind);
                // An Error naming call 0 is a report, not an answer.
                if !(kind == FrameKind::Error as u8 && id == 0) {
                    self.answers.0 += 1;
                }
                self.conn.handle_frame(f.freeze());
            }
            Step::PeerCall {
                kind,
                id,
                payload,
                budget,
            } => {
                let mut header = Header::new(FrameKind::Call, id, IFACE, METHOD);
                header.budget_micros = budget;
                let mut f = BytesMut::from(&frame_with(header, payload)[..]);
                forge::set_kind(&mut f, kind);
                self.budget = budget;
                self.conn.handle_frame(f.freeze());
            }
            Step::PeerCancel(id) => {
                // A handler kept by id is aborted: a new call may take its id.
                self.running.remove(&id);
                self.conn.handle_frame(frame(FrameKind::Cancel, id, 0));
            }
            Step::Hostile(bytes) => {
                // Whatever it is, it must not count as a call with a deadline we did not set.
                self.budget = Header::decode(&bytes).map_or(0, |h| h.budget_micros);
                if let Some(FrameKind::Ack | FrameKind::Reply | FrameKind::Error) =
                    crate::wire::kind_of(&bytes)
                {
                    // Passed on as an outcome or a failure, unless it is too short to name a
                    // call, or a well-formed report (an Error naming call 0).
                    let report = Header::decode(&bytes)
                        .is_ok_and(|h| h.kind == FrameKind::Error && h.call_id == 0);
                    if crate::wire::call_id_of(&bytes).is_some() && !report {
                        self.answers.0 += 1;
                    }
                }
                self.conn.handle_frame(Bytes::from(bytes));
            }
            Step::Finish(i) => {
                if i < self.tickets.len() {
                    let t = self.tickets.swap_remove(i);
                    if self.running.get(&t.call_id) == Some(&t.serial) {
                        self.running.remove(&t.call_id);
                    }
                    match t.plain() {
                        Ok(_plain) => self.plain += 1,
                        Err(t) => self.conn.handler_finished(t),
                    }
                } else if let Some(room) = self.rooms.pop() {
                    // Use the room for a one-way call (or have it given back).
                    let id = 1000 + self.tickets.len() as u64;
                    self.budget = 0;
                    self.conn
                        .handle_frame_in(frame(FrameKind::OneWay, id, 0), room);
                }
            }
            Step::Reserve(len) => {
                if let Some(room) = self.conn.reserve(len) {
                    self.rooms.push(room);
                }
            }
            Step::Advance(ms) => self.now += Duration::from_millis(ms),
            Step::Lose => {
                self.conn.link_lost("lost");
                // Aborted handlers still end (their tickets come back later); on a keyed link
                // their entries are gone, but nothing is admitted any more either.
                self.running.clear();
            }
        }
        self.drain();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_keep_every_limit_and_pass_every_answer_on(
        sessions in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut model = Model {
            conn: Connection::new(config(sessions)),
            now: Instant::now(),
            tickets: Vec::new(),
            rooms: Vec::new(),
            running: HashMap::new(),
            answers: (0, 0),
            budget: 0,
            plain: 0,
        };
        for step in steps {
            model.apply(step);
        }
        // Giving back every ticket and room frees everything.
        model.conn.link_lost("end");
        model.drain();
        for t in std::mem::take(&mut model.tickets) {
            model.conn.handler_finished(t);
        }
        model.conn.plain_finished(std::mem::take(&mut model.plain));
        for r in std::mem::take(&mut model.rooms) {
            model.conn.handle_frame_in(frame(FrameKind::OneWay, 1, 0), r);
        }
        model.drain();
        prop_assert_eq!(model.conn.handlers_running(), 0);
        prop_assert_eq!(model.conn.call_bytes_held(), 0);
    }
}
