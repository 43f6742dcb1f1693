//! The connection state machine without a runtime: frames, calls, handlers and instants in,
//! events and frames out.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::ids::{InterfaceId, MethodId};
use crate::wire::{forge, ErrorCode, Flags};

const IFACE: InterfaceId = InterfaceId::new(0x11);
const METHOD: MethodId = MethodId::new(0x22);

type Conn = Connection<&'static str, u32>;

fn config(sessions: bool) -> Config {
    Config {
        max_frame_size: 64 << 10,
        max_handlers: 3,
        max_in_flight: 2,
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

fn events<W, H>(conn: &mut Connection<W, H>) -> Vec<Event<W, H>> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// The frames queued for the peer, as (kind, call id, error code if an Error).
fn sent<W, H>(conn: &mut Connection<W, H>) -> Vec<(FrameKind, u64, Option<ErrorCode>)> {
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

/// Admits a call from the peer and returns its ticket.
fn admit<W: std::fmt::Debug, H: std::fmt::Debug>(
    conn: &mut Connection<W, H>,
    now: Instant,
    id: u64,
) -> Ticket {
    conn.handle_frame(now, frame(FrameKind::Call, id, 8));
    match conn.poll_event() {
        Some(Event::Run(admitted)) => admitted.ticket,
        other => panic!("expected a Run, got {other:?}"),
    }
}

// ---- this side's calls ----

#[test]
fn a_reply_wakes_its_caller_once_and_a_second_reply_is_unclaimed() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let h = conn
        .start_call(now, &NewCall::new(IFACE, METHOD), "a")
        .expect("room");
    assert_eq!(
        (h.kind, h.call_id, h.budget_micros),
        (FrameKind::Call, 1, 0)
    );
    conn.handle_frame(now, frame(FrameKind::Reply, 1, 3));
    match events(&mut conn).as_slice() {
        [Event::Answered {
            call_id: 1,
            waiter: "a",
            outcome: Ok((h, f)),
        }] => assert_eq!((h.payload_len, f.len()), (3, HEADER_LEN + 3)),
        other => panic!("{other:?}"),
    }
    conn.handle_frame(now, frame(FrameKind::Reply, 1, 0));
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Unclaimed {
            call_id: 1,
            answer: Unclaimed::Outcome(Ok(_))
        }]
    ));
    assert_eq!(conn.calls_in_flight(), 0);
}

#[test]
fn an_error_frame_ends_its_call_and_one_naming_no_call_is_reported() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let h = conn
        .start_call(now, &NewCall::new(IFACE, METHOD), "a")
        .expect("room");
    let mut error = BytesMut::new();
    let payload = ErrorPayload::new(ErrorCode::Overloaded, "busy");
    let mut header = Header::new(FrameKind::Error, h.call_id, IFACE, METHOD);
    header.payload_len = payload.encoded_len() as u32;
    header.encode(&mut error);
    payload.encode(&mut error);
    conn.handle_frame(now, error.clone().freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answered { outcome: Ok((h, _)), .. }] if h.kind == FrameKind::Error
    ));
    crate::wire::set_call_id(&mut error, 0);
    conn.handle_frame(now, error.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::PeerReported { message }] if message == "busy"
    ));
}

#[test]
fn an_ack_marks_the_call_so_giving_it_up_sends_no_cancel() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let call = NewCall::new(IFACE, METHOD).flags(Flags::ACK);
    let acked = conn.start_call(now, &call, "acked").expect("room").call_id;
    let plain = conn.start_call(now, &call, "plain").expect("room").call_id;
    conn.handle_frame(now, frame(FrameKind::Ack, acked, 0));
    assert!(
        matches!(events(&mut conn).as_slice(), [Event::Acked { call_id }] if *call_id == acked)
    );
    assert_eq!(conn.waiter_mut(acked), Some(&mut "acked"));
    assert_eq!(conn.cancel(acked), Some("acked"));
    assert_eq!(conn.cancel(plain), Some("plain"));
    assert_eq!(conn.cancel(plain), None, "a call ends once");
    assert_eq!(sent(&mut conn), vec![(FrameKind::Cancel, plain, None)]);
    // An ack for a call not in the table is the session's.
    conn.handle_frame(now, frame(FrameKind::Ack, 99, 0));
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Unclaimed {
            call_id: 99,
            answer: Unclaimed::Ack
        }]
    ));
}

#[test]
fn calls_in_flight_stop_at_the_limit_and_a_finished_one_frees_a_place() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let call = NewCall::new(IFACE, METHOD);
    let first = conn.start_call(now, &call, "1").expect("room").call_id;
    conn.start_call(now, &call, "2").expect("room");
    assert_eq!(conn.start_call(now, &call, "3"), Err(StartError::Full("3")));
    // One-way calls are not kept, and take the next id of the same sequence.
    assert_eq!(conn.start_one_way(&call).map(|h| h.call_id), Ok(3));
    conn.handle_frame(now, frame(FrameKind::Reply, first, 0));
    assert_eq!(conn.start_call(now, &call, "4").map(|h| h.call_id), Ok(4));
}

#[test]
fn deadlines_become_budgets_and_expire_by_instant() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let soon = NewCall::new(IFACE, METHOD).deadline(now + Duration::from_micros(1500));
    let later = NewCall::new(IFACE, METHOD).deadline(now + Duration::from_secs(10));
    let a = conn.start_call(now, &soon, "soon").expect("room");
    let b = conn.start_call(now, &later, "later").expect("room");
    assert_eq!((a.budget_micros, b.budget_micros), (1500, 10_000_000));
    assert_eq!(conn.poll_timeout(), soon.deadline_at());
    // Not yet: nothing happens.
    conn.handle_timeout(now + Duration::from_micros(1499));
    assert!(events(&mut conn).is_empty());
    conn.handle_timeout(now + Duration::from_micros(1500));
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answered {
            waiter: "soon",
            outcome: Err(CallError::DeadlineExceeded),
            ..
        }]
    ));
    assert_eq!(sent(&mut conn), vec![(FrameKind::Cancel, a.call_id, None)]);
    assert_eq!(conn.poll_timeout(), later.deadline_at());
    // A call whose deadline has passed does not start.
    let past = NewCall::new(IFACE, METHOD).deadline(now);
    assert_eq!(
        conn.start_call(now, &past, "past"),
        Err(StartError::DeadlineExceeded("past"))
    );
    // A sub-microsecond budget is sent as 1 µs, not as "none".
    let tiny = NewCall::new(IFACE, METHOD).deadline(now + Duration::from_nanos(10));
    assert_eq!(
        conn.start_call(now, &tiny, "tiny").map(|h| h.budget_micros),
        Ok(1)
    );
}

#[test]
fn a_malformed_answer_fails_the_call_it_names() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let id = conn
        .start_call(now, &NewCall::new(IFACE, METHOD), "a")
        .expect("room")
        .call_id;
    let mut bad = BytesMut::from(&frame(FrameKind::Reply, id, 4)[..]);
    forge::set_reserved(&mut bad, 1);
    conn.handle_frame(now, bad.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Answered {
            waiter: "a",
            outcome: Err(CallError::Malformed(_)),
            ..
        }]
    ));
    assert!(
        sent(&mut conn).is_empty(),
        "nothing is owed for a bad answer"
    );
}

// ---- the peer's calls ----

#[test]
fn a_call_is_admitted_with_its_deadline_and_its_handler_kept_until_it_finishes() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let mut header = Header::new(FrameKind::Call, 5, IFACE, METHOD);
    header.budget_micros = 2000;
    conn.handle_frame(now, frame_with(header, 10));
    let admitted = match conn.poll_event() {
        Some(Event::Run(a)) => a,
        other => panic!("{other:?}"),
    };
    assert_eq!(admitted.deadline, Some(now + Duration::from_millis(2)));
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
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let ticket = admit(&mut conn, now, 5);
    conn.handle_frame(now, frame(FrameKind::Call, 5, 0));
    assert!(events(&mut conn).is_empty());
    assert_eq!(
        sent(&mut conn),
        vec![(FrameKind::Error, 5, Some(ErrorCode::Protocol))]
    );
    assert_eq!(conn.running(&ticket, 1), Ok(()));
    conn.handler_finished(ticket);
    // Once it ended, the id may be used again.
    let again = admit(&mut conn, now, 5);
    conn.handler_finished(again);
}

#[test]
fn handlers_stop_at_the_limit_on_each_kind_of_link() {
    for sessions in [false, true] {
        let now = Instant::now();
        let mut conn = Conn::new(config(sessions));
        let tickets: Vec<Ticket> = (1..=3).map(|id| admit(&mut conn, now, id)).collect();
        conn.handle_frame(now, frame(FrameKind::Call, 4, 0));
        assert!(events(&mut conn).is_empty());
        assert_eq!(
            sent(&mut conn),
            vec![(FrameKind::Error, 4, Some(ErrorCode::Overloaded))]
        );
        // A one-way call over the limit is dropped without an answer.
        conn.handle_frame(now, frame(FrameKind::OneWay, 6, 0));
        assert!(sent(&mut conn).is_empty());
        assert_eq!(conn.reserve(10), None, "no room to reserve either");
        let mut tickets = tickets.into_iter();
        conn.handler_finished(tickets.next().expect("three"));
        let next = admit(&mut conn, now, 4);
        assert_eq!(conn.handlers_running(), 3);
        for t in tickets.chain([next]) {
            conn.handler_finished(t);
        }
        assert_eq!(conn.handlers_running(), 0);
    }
}

#[test]
fn call_bytes_bound_large_frames_but_not_small_ones() {
    let now = Instant::now();
    let mut conn = Conn::new(config(true));
    conn.handle_frame(now, frame(FrameKind::Call, 1, 12_000));
    let big = match conn.poll_event() {
        Some(Event::Run(a)) => a.ticket,
        other => panic!("{other:?}"),
    };
    assert_eq!(conn.call_bytes_held(), HEADER_LEN + 12_000);
    conn.handle_frame(now, frame(FrameKind::Call, 2, 12_000));
    assert_eq!(
        sent(&mut conn),
        vec![(FrameKind::Error, 2, Some(ErrorCode::Overloaded))]
    );
    // A small frame takes no bytes and still runs.
    let small = admit(&mut conn, now, 3);
    assert_eq!(conn.call_bytes_held(), HEADER_LEN + 12_000);
    conn.handler_finished(big);
    conn.handler_finished(small);
    assert_eq!(conn.call_bytes_held(), 0);
    // A frame larger than the whole budget takes all of it and runs alone.
    conn.handle_frame(now, frame(FrameKind::Call, 4, 30_000));
    let huge = match conn.poll_event() {
        Some(Event::Run(a)) => a.ticket,
        other => panic!("{other:?}"),
    };
    assert_eq!(conn.call_bytes_held(), 20_000);
    conn.handler_finished(huge);
}

#[test]
fn a_one_way_call_runs_in_the_room_reserved_for_it() {
    for sessions in [false, true] {
        let now = Instant::now();
        let mut conn = Conn::new(config(sessions));
        let room = conn.reserve(HEADER_LEN + 5000).expect("room");
        assert_eq!(conn.call_bytes_held(), HEADER_LEN + 5000);
        conn.handle_frame_in(now, frame(FrameKind::OneWay, 9, 5000), room);
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
        conn.handle_frame_in(now, frame_with(header, 1), room);
        assert!(events(&mut conn).is_empty());
        assert!(sent(&mut conn).is_empty(), "nothing answers a one-way call");
        assert_eq!((conn.handlers_running(), conn.call_bytes_held()), (0, 0));
    }
}

#[test]
fn bad_metadata_refuses_the_call_with_protocol() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let mut header = Header::new(FrameKind::Call, 3, IFACE, METHOD);
    header.flags = Flags::METADATA;
    let mut f = BytesMut::new();
    header.payload_len = 4;
    header.encode(&mut f);
    f.put_u16(1000); // more metadata than the limit of 256
    f.put_u16(0);
    conn.handle_frame(now, f.freeze());
    assert!(events(&mut conn).is_empty());
    assert_eq!(
        sent(&mut conn),
        vec![(FrameKind::Error, 3, Some(ErrorCode::Protocol))]
    );
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn a_cancel_aborts_a_kept_handler_and_a_handler_not_yet_made_never_runs() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let made = admit(&mut conn, now, 1);
    conn.running(&made, 100).expect("kept");
    let unmade = admit(&mut conn, now, 2);
    conn.handle_frame(now, frame(FrameKind::Cancel, 1, 0));
    conn.handle_frame(now, frame(FrameKind::Cancel, 2, 0));
    conn.handle_frame(now, frame(FrameKind::Cancel, 3, 0));
    assert!(matches!(events(&mut conn).as_slice(), [Event::Abort(100)]));
    assert_eq!(conn.running(&unmade, 200), Err(200));
    assert_eq!(conn.handlers_running(), 0);
    // The ticket of a cancelled call frees its bytes and nothing else.
    let reused = admit(&mut conn, now, 1);
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
    let now = Instant::now();
    let mut conn = Conn::new(config(true));
    let t = admit(&mut conn, now, 1);
    conn.handle_frame(now, frame(FrameKind::Cancel, 1, 0));
    conn.handle_frame(now, frame(FrameKind::Release, 7, 0));
    conn.handle_frame(now, crate::wire::goodbye());
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
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    // Too large: TooLarge with the sizes.
    conn.handle_frame(now, frame(FrameKind::Call, 8, 70 << 10));
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
    conn.handle_frame(now, bad.freeze());
    conn.handle_frame(now, frame(FrameKind::Call, 10, 0).slice(..16));
    let sent = sent(&mut conn);
    assert_eq!(sent[0], (FrameKind::Error, 9, Some(ErrorCode::Protocol)));
    assert_eq!(sent[1], (FrameKind::Error, 10, Some(ErrorCode::Protocol)));
    // A malformed one-way call or cancel is dropped, unanswered.
    let mut bad = BytesMut::from(&frame(FrameKind::OneWay, 11, 0)[..]);
    forge::set_reserved(&mut bad, 3);
    conn.handle_frame(now, bad.freeze());
    assert!(matches!(
        events(&mut conn).as_slice(),
        [Event::Dropped { .. }]
    ));
    assert!(conn.poll_transmit().is_none());
    assert_eq!(conn.handlers_running(), 0);
}

#[test]
fn a_handler_the_driver_cannot_make_is_refused_with_its_error() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    conn.handle_frame(now, frame(FrameKind::Call, 4, 0));
    let Some(Event::Run(a)) = conn.poll_event() else {
        panic!("a run");
    };
    let payload = ErrorPayload::new(ErrorCode::UnknownMethod, "no such method");
    conn.refuse(a.ticket, &a.header, &payload);
    assert_eq!(
        sent(&mut conn),
        vec![(FrameKind::Error, 4, Some(ErrorCode::UnknownMethod))]
    );
    assert_eq!(conn.handlers_running(), 0);
}

// ---- link loss ----

#[test]
fn link_loss_ends_every_call_and_aborts_the_handlers_someone_waits_for() {
    let now = Instant::now();
    let mut conn = Conn::new(config(false));
    let call = NewCall::new(IFACE, METHOD);
    conn.start_call(now, &call, "a").expect("room");
    conn.start_call(now, &call.clone().flags(Flags::ACK), "b")
        .expect("room");
    let waited = admit(&mut conn, now, 1);
    conn.running(&waited, 1).expect("kept");
    conn.handle_frame(now, frame(FrameKind::OneWay, 2, 0));
    let Some(Event::Run(one_way)) = conn.poll_event() else {
        panic!("a run");
    };
    conn.running(&one_way.ticket, 2).expect("kept");
    conn.link_lost("gone");
    let mut answered: Vec<&str> = Vec::new();
    let mut aborted = Vec::new();
    for e in events(&mut conn) {
        match e {
            Event::Answered {
                waiter,
                outcome: Err(CallError::ConnectionLost(reason)),
                ..
            } if reason == "gone" => answered.push(waiter),
            Event::Abort(h) => aborted.push(h),
            other => panic!("{other:?}"),
        }
    }
    answered.sort_unstable();
    assert_eq!((answered, aborted), (vec!["a", "b"], vec![1]));
    assert!(conn.poll_transmit().is_none());
    // The one-way handler runs on; what arrives now is ignored; nothing starts.
    assert_eq!(conn.handlers_running(), 1);
    conn.handle_frame(now, frame(FrameKind::Call, 3, 0));
    assert!(events(&mut conn).is_empty());
    assert!(matches!(
        conn.start_call(now, &call, "c"),
        Err(StartError::Closed(r, "c")) if r == "gone"
    ));
    assert_eq!(conn.start_one_way(&call), Err("gone".to_owned()));
    assert_eq!(conn.reserve(10), None);
    assert_eq!(conn.cancel(1), None);
    conn.handler_finished(one_way.ticket);
    conn.handler_finished(waited);
    assert_eq!(conn.handlers_running(), 0);
    conn.link_lost("again");
    assert_eq!(conn.close_reason(), Some("gone"));
}

// ---- random sequences ----

/// One input to the connection.
#[derive(Debug, Clone)]
enum Step {
    Start { ack: bool, deadline_ms: Option<u64> },
    OneWay,
    GiveUp(u64),
    Answer { kind: u8, id: u64 },
    PeerCall { kind: u8, id: u64, payload: usize },
    PeerCancel(u64),
    Hostile(Vec<u8>),
    Finish(usize),
    Reserve(usize),
    Advance(u64),
    Lose,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (any::<bool>(), proptest::option::of(0u64..20))
            .prop_map(|(ack, deadline_ms)| Step::Start { ack, deadline_ms }),
        Just(Step::OneWay),
        (0u64..8).prop_map(Step::GiveUp),
        (3u8..=5, 0u64..8).prop_map(|(kind, id)| Step::Answer { kind, id }),
        (
            1u8..=2,
            0u64..8,
            prop_oneof![Just(0usize), Just(2000), Just(9000)]
        )
            .prop_map(|(kind, id, payload)| Step::PeerCall { kind, id, payload }),
        (0u64..8).prop_map(Step::PeerCancel),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Step::Hostile),
        (0usize..6).prop_map(Step::Finish),
        prop_oneof![Just(40usize), Just(9000)].prop_map(Step::Reserve),
        (0u64..15).prop_map(Step::Advance),
        Just(Step::Lose),
    ]
}

/// Checks the invariants after every step: the tables within their limits, every call ended
/// once, no two handlers at once for one call id on a link that keys them.
struct Model {
    conn: Connection<u64, u64>,
    now: Instant,
    /// Calls started and not yet ended, by id.
    open: HashSet<u64>,
    ended: HashSet<u64>,
    tickets: Vec<Ticket>,
    rooms: Vec<Room>,
    /// Handlers running by call id (keyed links only).
    running: HashMap<u64, u64>,
}

impl Model {
    fn drain(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            match e {
                Event::Answered {
                    call_id, waiter, ..
                } => {
                    assert_eq!(call_id, waiter);
                    assert!(self.open.remove(&call_id), "call {call_id} ended twice");
                    assert!(self.ended.insert(call_id));
                }
                Event::Run(a) => {
                    let id = a.header.call_id;
                    if !self.conn.config().sessions {
                        assert!(
                            self.running.insert(id, a.ticket.serial).is_none(),
                            "two handlers at once for call {id}"
                        );
                    }
                    let _ = self.conn.running(&a.ticket, id);
                    self.tickets.push(a.ticket);
                }
                Event::Unclaimed { call_id, .. } => {
                    assert!(
                        !self.open.contains(&call_id),
                        "an open call's answer went astray"
                    )
                }
                _ => {}
            }
        }
        while let Some(f) = self.conn.poll_transmit() {
            assert!(f.len() >= HEADER_LEN && f.len() <= HEADER_LEN + 2048);
        }
        let config = self.conn.config();
        assert!(self.conn.handlers_running() <= config.max_handlers);
        assert!(self.conn.calls_in_flight() <= config.max_in_flight);
        assert!(self.conn.call_bytes_held() <= config.call_bytes);
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Start { ack, deadline_ms } => {
                let mut call = NewCall::new(IFACE, METHOD);
                if ack {
                    call = call.flags(Flags::ACK);
                }
                if let Some(ms) = deadline_ms {
                    call = call.deadline(self.now + Duration::from_millis(ms));
                }
                // The waiter is the id the call will get: the next one of the sequence.
                let next = self.open.len() as u64 + self.ended.len() as u64 + 1;
                match self.conn.start_call(self.now, &call, next) {
                    Ok(h) => {
                        assert!(!self.ended.contains(&h.call_id) && self.open.insert(h.call_id));
                    }
                    Err(StartError::Full(_) | StartError::Closed(..)) => {}
                    Err(StartError::DeadlineExceeded(_)) => assert_eq!(deadline_ms, Some(0)),
                }
            }
            Step::OneWay => {
                // One-way calls take ids too: count them as ended at once.
                if let Ok(h) = self.conn.start_one_way(&NewCall::new(IFACE, METHOD)) {
                    assert!(self.ended.insert(h.call_id));
                }
            }
            Step::GiveUp(id) => {
                if let Some(w) = self.conn.cancel(id) {
                    assert_eq!(w, id);
                    assert!(self.open.remove(&id) && self.ended.insert(id));
                }
            }
            Step::Answer { kind, id } => {
                let mut f = BytesMut::from(&frame(FrameKind::Call, id, 0)[..]);
                forge::set_kind(&mut f, kind);
                self.conn.handle_frame(self.now, f.freeze());
            }
            Step::PeerCall { kind, id, payload } => {
                let mut f = BytesMut::from(&frame(FrameKind::Call, id, payload)[..]);
                forge::set_kind(&mut f, kind);
                self.conn.handle_frame(self.now, f.freeze());
            }
            Step::PeerCancel(id) => {
                // A handler kept by id is aborted: a new call may take its id.
                self.running.remove(&id);
                self.conn
                    .handle_frame(self.now, frame(FrameKind::Cancel, id, 0));
            }
            Step::Hostile(bytes) => self.conn.handle_frame(self.now, Bytes::from(bytes)),
            Step::Finish(i) => {
                if i < self.tickets.len() {
                    let t = self.tickets.swap_remove(i);
                    if self.running.get(&t.call_id) == Some(&t.serial) {
                        self.running.remove(&t.call_id);
                    }
                    self.conn.handler_finished(t);
                } else if let Some(room) = self.rooms.pop() {
                    // Use the room for a one-way call (or have it given back).
                    let id = 1000 + self.tickets.len() as u64;
                    self.conn
                        .handle_frame_in(self.now, frame(FrameKind::OneWay, id, 0), room);
                }
            }
            Step::Reserve(len) => {
                if let Some(room) = self.conn.reserve(len) {
                    self.rooms.push(room);
                }
            }
            Step::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                self.conn.handle_timeout(self.now);
            }
            Step::Lose => {
                self.conn.link_lost("lost");
                // A cancelled or aborted handler still ends (its ticket comes back later);
                // on a keyed link its entry is gone, so its id may run again.
                self.running.clear();
            }
        }
        self.drain();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_inputs_keep_every_limit_and_end_every_call_once(
        sessions in any::<bool>(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut model = Model {
            conn: Connection::new(config(sessions)),
            now: Instant::now(),
            open: HashSet::new(),
            ended: HashSet::new(),
            tickets: Vec::new(),
            rooms: Vec::new(),
            running: HashMap::new(),
        };
        for step in steps {
            model.apply(step);
        }
        // Ending the link ends every call; giving back every ticket and room frees all.
        model.conn.link_lost("end");
        model.drain();
        prop_assert!(model.open.is_empty());
        for t in std::mem::take(&mut model.tickets) {
            model.conn.handler_finished(t);
        }
        for r in std::mem::take(&mut model.rooms) {
            model.conn.handle_frame_in(model.now, frame(FrameKind::OneWay, 1, 0), r);
        }
        model.drain();
        prop_assert_eq!(model.conn.handlers_running(), 0);
        prop_assert_eq!(model.conn.call_bytes_held(), 0);
    }
}
