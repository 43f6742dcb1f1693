//! The behaviours every transport must have, one function each; see the [parent](super).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// Calls of every kind: plain, acknowledged, one-way, blocking (from a `spawn_blocking`
/// thread), a typed application error, and a call-back into a service the client exports;
/// through the transport's connector as a trait object.
pub async fn every_call_kind<H: Harness, C: Codec>(env: Arc<Env<H>>, codec: C) {
    let connector: Arc<dyn DynConnector> = Arc::new(env.serve_default(&codec).await);
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    assert_eq!(lab.echo(42).await, Ok(42));
    assert_eq!(
        lab.invert(0).await,
        Ok(Err("zero has no inverse".to_owned()))
    );
    assert_eq!(lab.ask_back(21).await, Ok(Ok(42)));

    let pending = lab.echo_acked(7).await.expect("acknowledged call");
    assert_eq!(pending.await, Ok(7));

    lab.count().await.expect("one-way call");
    env.probes
        .until("the one-way call ran", |p| {
            p.counted.load(Ordering::SeqCst) >= 1
        })
        .await;

    // Blocking stubs belong on threads that may block, such as spawn_blocking's.
    let blocking = lab.clone();
    let answer = tokio::task::spawn_blocking(move || blocking.echo_blocking(9))
        .await
        .expect("the blocking thread panicked");
    assert_eq!(answer, Ok(9));
}

/// 10,000 one-way calls in a row, sent as fast as the transport takes them, all run, each
/// exactly once.
pub async fn ten_thousand_one_way_calls_all_run<H: Harness, C: Codec>(env: Arc<Env<H>>, codec: C) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let sent = Progress::default();
    let work = async {
        for _ in 0..10_000 {
            lab.count().await.expect("one-way call");
            sent.step();
        }
        env.probes
            .until("10,000 one-way calls ran", |p| {
                p.counted.load(Ordering::SeqCst) == 10_000
            })
            .await;
    };
    env.watched("10,000 one-way calls", LOAD_BOUND, &sent, work)
        .await;
    // A call after them still works: none of them broke the connection.
    assert_eq!(lab.echo(1).await, Ok(1));
    // Exactly once: none ran twice.
    assert_eq!(env.probes.counted.load(Ordering::SeqCst), 10_000);
}

/// 10,000 calls at once on one connection, awaited together on one task (as `join_all` does),
/// all return their own answers: with the in-flight limit at its default (1,024), most wait
/// for a place, and each reply must let the next one go without a crowd of wake-ups.
pub async fn ten_thousand_concurrent_calls_all_return<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let done = Progress::default();
    let calls = (0..10_000u64).map(|i| {
        let (lab, done) = (lab.clone(), &done);
        async move {
            let reply = lab.echo(i * 3).await;
            done.step();
            (i, reply)
        }
    });
    let replies = env
        .watched(
            "10,000 concurrent calls",
            LOAD_BOUND,
            &done,
            futures::future::join_all(calls),
        )
        .await;
    for (i, reply) in replies {
        assert_eq!(reply, Ok(i * 3));
    }
}

/// Payloads from empty to larger than every internal buffer come back intact.
pub async fn payloads_from_empty_to_past_every_buffer<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let large = env.harness.large_payload();
    let sizes = [
        0,
        1,
        31,
        32,
        33,
        4095,
        4096,
        4097,
        65_535,
        65_536,
        65_537,
        1 << 20,
        (1 << 20) + 1,
        large,
    ];
    for size in sizes {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let back = lab
            .blob(ByteBuf::from(data.clone()))
            .await
            .unwrap_or_else(|e| panic!("{size} bytes: {e}"));
        assert!(
            back.as_slice() == data.as_slice(),
            "{size} bytes came back changed"
        );
    }
}

/// A frame larger than the receiver's limit fails that call with `FrameTooLarge` (carrying
/// the receiver's limit), whichever side refuses it; calls before and after it succeed.
pub async fn a_frame_over_the_limit_fails_that_call_only<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let frames = FrameLimits {
        server: 256 << 10,
        client: 8 << 20,
    };
    let connector = env.serve(&codec, test_limits(), frames).await;
    let lab = client(&codec, &connector, frames.client).await;
    assert_eq!(lab.echo(1).await, Ok(1));
    // Refused by the server on receipt: the client allows it.
    let err = expect_err(
        "a 1 MiB argument to a server limited to 256 KiB",
        lab.blob(ByteBuf::from(vec![5u8; 1 << 20])).await,
    );
    match err {
        RpcError::FrameTooLarge { size, limit } => {
            assert_eq!(limit, frames.server, "the limit reported is the server's");
            assert!(size > 1 << 20, "the size reported is the frame's: {size}");
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // Refused by the client before sending.
    let err = expect_err(
        "a 9 MiB argument from a client limited to 8 MiB",
        lab.blob(ByteBuf::from(vec![5u8; 9 << 20])).await,
    );
    assert!(
        matches!(err, RpcError::FrameTooLarge { limit, .. } if limit == frames.client),
        "{err:?}"
    );
    // The connection goes on, for small calls and calls just under the limit.
    assert_eq!(lab.echo(2).await, Ok(2));
    let under = vec![1u8; 200 << 10];
    assert_eq!(
        lab.blob(ByteBuf::from(under.clone())).await,
        Ok(ByteBuf::from(under))
    );
}

/// Starts `hold` on a task of its own and waits until the server has started it, the
/// `nth` handler to start in this test.
async fn hold_started<H, C: Codec>(
    env: &Env<H>,
    lab: &ConformanceClient<C>,
    nth: u32,
) -> tokio::task::JoinHandle<Result<u32, RpcError>> {
    let call = tokio::spawn({
        let lab = lab.clone();
        async move { lab.hold(nth).await }
    });
    env.probes
        .until("the handler started", |p| {
            p.started.load(Ordering::SeqCst) == nth
        })
        .await;
    call
}

/// Dropping the caller's future, or letting its deadline pass, drops the server's handler.
pub async fn cancelling_or_timing_out_drops_the_handler<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;

    let call = hold_started(&env, &lab, 1).await;
    call.abort();
    env.probes
        .until("the cancelled handler was dropped", |p| {
            p.dropped.load(Ordering::SeqCst) == 1
        })
        .await;

    let timed = lab.with_options(options(Duration::from_millis(200)));
    let err = expect_err("a call past its deadline", timed.hold(2).await);
    assert_eq!(err, RpcError::DeadlineExceeded);
    env.probes
        .until("the timed-out handler was dropped", |p| {
            p.dropped.load(Ordering::SeqCst) == 2
        })
        .await;
    assert_eq!(lab.echo(3).await, Ok(3));
}

/// When the server dies (its runtime stops at once, dropping every task, as a crash would),
/// calls in flight fail with `ConnectionLost`, and so do calls made afterwards.
pub async fn server_death_fails_calls_in_flight<H: Harness, C: Codec>(env: Arc<Env<H>>, codec: C) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let call = hold_started(&env, &lab, 1).await;
    env.kill_server();
    let err = expect_err(
        "a call whose server died",
        call.await.expect("the caller panicked"),
    );
    assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
    let err = expect_err("a call after the server died", lab.echo(1).await);
    assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
}

/// When a client dies (its runtime stops at once), the server drops its running handlers and
/// releases the connection.
pub async fn client_death_drops_its_handlers<H: Harness, C: Codec>(env: Arc<Env<H>>, codec: C) {
    let connector = Arc::new(env.serve_default(&codec).await);
    let (tasks, fds) = (env.server_tasks(), open_fds());
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the client");
    let started = {
        let codec = codec.clone();
        let connector = Arc::clone(&connector);
        doomed.spawn(async move {
            let lab = client(&codec, &*connector, DEFAULT_FRAMES.client).await;
            let _ = lab.hold(1).await;
        })
    };
    env.probes
        .until("the handler started", |p| {
            p.started.load(Ordering::SeqCst) == 1
        })
        .await;
    doomed.shutdown_background();
    drop(started);
    env.probes
        .until("the dead client's handler was dropped", |p| {
            p.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
    settles(&env, "after the client died", tasks, fds).await;
}

/// A client that sends calls and never reads their replies makes the server hold no more than
/// its limits allow (running handlers, pending notices), and everything is released when it
/// leaves.
pub async fn a_peer_that_stops_reading_is_bounded_and_released<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    const HANDLERS: usize = 32;
    let limits = test_limits().max_handlers(HANDLERS);
    let connector = env.serve(&codec, limits, DEFAULT_FRAMES).await;
    let (tasks, fds) = (env.server_tasks(), open_fds());

    let link = raw_link::<C>(&connector).await;
    let payload = vec![9u8; 64 << 10];
    let desc = ConformanceClient::<C>::BLOB;
    let mut encoded = bytes::BytesMut::new();
    codec
        .encode(&(ByteBuf::from(payload),), &mut encoded)
        .expect("encodable");
    // Far more replies than any ring, window or queue holds, and more calls than handlers.
    let calls = 8 * HANDLERS as u64 + 256;
    let mut sent = 0;
    for id in 1..=calls {
        let header = Header {
            version: desc.version,
            ..Header::new(FrameKind::Call, id, desc.interface, desc.method)
        };
        let bytes = frame(header, &encoded);
        let send = send_bytes(&link, &bytes);
        // The server may stop reading too (back-pressure): that is allowed, not a failure.
        match tokio::time::timeout(Duration::from_secs(2), send).await {
            Ok(true) => sent += 1,
            _ => break,
        }
    }
    assert!(sent > 0, "not one call could be sent");
    // Handlers, their notices, the transport's open calls and the connection's own tasks:
    // bounded by the limits, not by the number of calls.
    let bound = tasks + 2 * HANDLERS + env.harness.open_calls_per_connection() + 16;
    let held = env.server_tasks();
    assert!(
        held <= bound,
        "a client that stopped reading made the server hold {held} tasks \
         (before: {tasks}, bound: {bound}) after {sent} calls"
    );
    drop(link);
    settles(&env, "after the stalled client left", tasks, fds).await;
}

/// A client that opens a link and says nothing, or sends a garbled hello, is closed at the
/// handshake timeout or at once, and leaves nothing behind.
pub async fn silent_and_garbled_handshakes_are_closed<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let (tasks, fds) = (env.server_tasks(), open_fds());
    let bound = Duration::from_secs(30);

    let mut silent = connector.connect().await.expect("a link");
    assert!(
        closes_within(&mut silent, bound).await,
        "a silent client was not closed at the handshake timeout"
    );

    let mut garbled = connector.connect().await.expect("a link");
    send_bytes(&garbled, b"GET / HTTP/1.1\r\nHost: courier\r\n\r\n").await;
    assert!(
        closes_within(&mut garbled, bound).await,
        "a client with a garbled hello was not closed"
    );

    let mut wrong_codec = connector.connect().await.expect("a link");
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: "no-such-codec".to_owned(),
        client_id: 1,
        epoch: 1,
    };
    send_bytes(&wrong_codec, &hello.encode()).await;
    let welcome = wrong_codec
        .rx
        .recv()
        .await
        .expect("a welcome")
        .expect("a welcome before the close");
    let welcome = Welcome::decode(&welcome).expect("a well-formed welcome");
    assert_eq!(welcome.status, WelcomeStatus::CodecUnsupported);
    assert!(
        closes_within(&mut wrong_codec, bound).await,
        "a refused client was not closed"
    );
    drop((silent, garbled, wrong_codec));
    settles(&env, "after the failed handshakes", tasks, fds).await;

    // Well-behaved clients are still served.
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    assert_eq!(lab.echo(5).await, Ok(5));
}

/// How much the process may grow over 200 connections that came and went (allocator caches,
/// runtime buffers): a leak of 160 KiB per connection would pass it.
const CHURN_MEMORY_SLACK: usize = 32 << 20;

/// Connections opened, used and closed, 200 times, leave no task, descriptor, mapping or
/// memory behind.
pub async fn connection_churn_leaks_nothing<H: Harness, C: Codec>(env: Arc<Env<H>>, codec: C) {
    let connector = env.serve_default(&codec).await;
    // The first connection may set up things that live as long as the listener.
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    assert_eq!(lab.echo(0).await, Ok(0));
    drop(lab);
    let (tasks, fds, maps, rss) = (env.server_tasks(), open_fds(), mappings(), resident());
    let connected = Progress::default();
    let churn = async {
        for i in 0..200u64 {
            let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
            assert_eq!(lab.echo(i).await, Ok(i));
            if i % 2 == 0 {
                lab.count().await.expect("one-way call");
            }
            connected.step();
        }
    };
    env.watched("200 connections", LOAD_BOUND, &connected, churn)
        .await;
    settles_with_maps(
        &env,
        "after 200 connections came and went",
        tasks,
        fds,
        maps,
    )
    .await;
    // Memory: what 200 connections leaked would show; the allocator may keep some freed pages.
    if let (Some(before), Some(after)) = (rss, resident()) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < CHURN_MEMORY_SLACK,
            "200 connections left the process {} KiB larger",
            grown >> 10
        );
    }
}

/// Frames no well-behaved peer sends (unknown ids, stray replies, acks and cancels, truncated
/// and lying headers, oversized declared lengths) never wedge the connection: a valid call
/// afterwards is answered, or the connection is closed cleanly.
pub async fn hostile_frames_never_wedge_the_connection<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let (tasks, fds) = (env.server_tasks(), open_fds());
    let mut link = raw_link::<C>(&connector).await;
    let any = (
        crate::InterfaceId::new(0x0BAD_F00D),
        crate::MethodId::new(3),
    );
    let desc = ConformanceClient::<C>::ECHO;
    let mut hostile: Vec<Vec<u8>> = Vec::new();
    for id in 0..1000u64 {
        let kind = [
            FrameKind::Reply,
            FrameKind::Error,
            FrameKind::Ack,
            FrameKind::Cancel,
        ][(id % 4) as usize];
        hostile.push(frame(
            Header::new(kind, 1_000_000 + id, any.0, any.1),
            b"xx",
        ));
    }
    hostile.push(frame(Header::new(FrameKind::Call, 10, any.0, any.1), b""));
    hostile.push(frame(
        Header::new(FrameKind::Call, 11, desc.interface, crate::MethodId::new(1)),
        b"",
    ));
    hostile.push(frame(
        Header::new(FrameKind::Call, 12, desc.interface, desc.method),
        b"\xff\xff\xff",
    ));
    hostile.push(vec![PROTOCOL_VERSION, 1, 0, 0, 0, 0]);
    let mut lying = Header {
        payload_len: 1000,
        ..Header::new(FrameKind::Call, 13, any.0, any.1)
    }
    .to_bytes()
    .to_vec();
    lying.extend_from_slice(b"abc");
    hostile.push(lying);
    let huge = Header {
        payload_len: u32::MAX,
        ..Header::new(FrameKind::Call, 14, desc.interface, desc.method)
    };
    hostile.push(huge.to_bytes().to_vec());
    let mut bad_kind = frame(Header::new(FrameKind::Call, 15, any.0, any.1), b"");
    crate::wire::forge::set_kind(&mut bad_kind, 99);
    hostile.push(bad_kind);
    for bytes in &hostile {
        if !send_bytes(&link, bytes).await {
            break;
        }
    }
    let call = echo_call(&codec, 100, 77);
    if send_bytes(&link, &call).await {
        match tokio::time::timeout(Duration::from_secs(30), answer_to(&mut link, 100)).await {
            Ok(Some(reply)) => {
                let header = Header::decode(&reply).expect("a well-formed reply");
                assert_eq!(header.kind, FrameKind::Reply, "{}", describe(&reply));
                let v: u64 = codec
                    .decode(&reply[HEADER_LEN..])
                    .expect("a decodable reply");
                assert_eq!(v, 77);
            }
            // Closed cleanly: allowed.
            Ok(None) => {}
            Err(_) => panic!("the connection was wedged: no answer and no close in 30 s"),
        }
    }
    drop(link);
    settles(&env, "after the hostile client left", tasks, fds).await;
}

/// An Error that refuses a malformed frame (a bad header, a declared size past the limit)
/// echoes the call id, interface and method the frame claimed, like every other Error
/// (PROTOCOL.md §1), so that a caller can tell which of its calls failed and why.
pub async fn errors_for_refused_frames_echo_the_call<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    use crate::wire::ErrorCode;
    let connector = env.serve_default(&codec).await;
    let mut link = raw_link::<C>(&connector).await;
    let desc = ConformanceClient::<C>::ECHO;
    let call = |id| Header::new(FrameKind::Call, id, desc.interface, desc.method);
    let mut reserved = frame(call(40), b"");
    crate::wire::forge::set_reserved(&mut reserved, 1);
    let mut flags = frame(call(41), b"");
    crate::wire::forge::set_flags(&mut flags, 0x80);
    // A header alone that declares a payload as large as the limit (on a byte stream, the
    // payload follows: it is the only way to say where the frame ends).
    let oversized = Header {
        payload_len: u32::try_from(DEFAULT_FRAMES.server).unwrap_or(u32::MAX),
        ..call(42)
    }
    .to_bytes();
    let mut oversized = oversized.to_vec();
    if env.harness.one_byte_stream() {
        oversized.resize(HEADER_LEN + DEFAULT_FRAMES.server, 0);
    }
    let cases: [(u64, Vec<u8>, ErrorCode); 3] = [
        (40, reserved, ErrorCode::Protocol),
        (41, flags, ErrorCode::Protocol),
        (42, oversized, ErrorCode::TooLarge),
    ];
    for (id, bytes, code) in cases {
        assert!(send_bytes(&link, &bytes).await, "frame {id} sent");
        let answer = tokio::time::timeout(Duration::from_secs(30), answer_to(&mut link, id))
            .await
            .expect("an answer in time")
            .expect("the connection stays open");
        let header = Header::decode(&answer).expect("a well-formed answer");
        assert_eq!(
            header.kind,
            FrameKind::Error,
            "frame {id}: {}",
            describe(&answer)
        );
        assert_eq!(
            (header.interface, header.method),
            (desc.interface, desc.method),
            "frame {id}: the error echoes the interface and method"
        );
        let error = ErrorPayload::decode(&answer[HEADER_LEN..]);
        assert_eq!(error.code, Some(code), "frame {id}: {}", error.message);
    }
    // The connection goes on.
    assert!(send_bytes(&link, &echo_call(&codec, 43, 8)).await);
    let answer = answer_to(&mut link, 43).await.expect("an answer");
    assert_eq!(codec.decode::<u64>(&answer[HEADER_LEN..]), Ok(8));
}

/// A client may send a call before the Welcome arrives (PROTOCOL.md §7.2): the server reads
/// the Hello first, welcomes the client, then serves the call.
pub async fn a_call_sent_before_the_welcome_is_served<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let mut link = connector
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot open a link: {e}"));
    assert!(send_bytes(&link, &hello::<C>(8)).await, "the hello is sent");
    assert!(
        send_bytes(&link, &echo_call(&codec, 1, 41)).await,
        "the early call is sent"
    );
    let first = tokio::time::timeout(Duration::from_secs(30), link.rx.recv())
        .await
        .expect("the welcome in time")
        .unwrap_or_else(|e| panic!("no welcome: {e}"))
        .unwrap_or_else(|| panic!("the link closed instead of a welcome"));
    let welcome = Welcome::decode(&first).unwrap_or_else(|e| panic!("bad welcome: {e}"));
    assert_eq!(welcome.status, WelcomeStatus::Accepted);
    let answer = tokio::time::timeout(Duration::from_secs(30), answer_to(&mut link, 1))
        .await
        .expect("the reply in time")
        .expect("the connection stays open");
    assert_eq!(codec.decode::<u64>(&answer[HEADER_LEN..]), Ok(41));
}

/// A listener serves at most `max_connections`; the next client is told the server is busy,
/// and is served again once a connection closes.
pub async fn connections_beyond_the_limit_are_refused<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let limits = test_limits().max_connections(3).max_connections_per_peer(2);
    let connector = env.serve(&codec, limits, DEFAULT_FRAMES).await;
    // Every connection of one test comes from the same peer (one address, one uid) except
    // in process, where peers have no identity to count: there the total limit applies.
    let mut held = Vec::new();
    let err = loop {
        match Client::builder(codec.clone()).connect(&connector).await {
            Ok(c) => {
                let lab = ConformanceClient::new(c);
                assert_eq!(lab.echo(1).await, Ok(1));
                held.push(lab);
                assert!(held.len() <= 3, "a fourth connection was let in");
            }
            Err(e) => break e,
        }
    };
    assert!(busy(&err), "expected HandshakeError::Busy, got {err:?}");
    assert!(
        held.len() >= 2,
        "refused with only {} connections",
        held.len()
    );
    held.pop();
    // The freed place comes back once the server has seen the connection close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Client::builder(codec.clone()).connect(&connector).await {
            Ok(c) => {
                let lab = ConformanceClient::new(c);
                assert_eq!(lab.echo(9).await, Ok(9));
                break;
            }
            Err(e) if busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("a place did not come back: {e}"),
        }
    }
}

/// The frames of running calls count against `max_call_bytes` per connection and
/// `max_server_call_bytes` per server: a call beyond either is refused with `Overloaded`, and
/// served again once the running ones finish.
pub async fn running_calls_hold_no_more_bytes_than_the_limits<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    const BLOB: usize = 100 << 10;
    let frames = FrameLimits {
        server: 200 << 10,
        client: 200 << 10,
    };
    let limits = test_limits()
        .max_call_bytes(250 << 10)
        .max_server_call_bytes(350 << 10);
    let connector = env.serve(&codec, limits, frames).await;
    let a = client(&codec, &connector, frames.client).await;
    let b = client(&codec, &connector, frames.client).await;
    let blob = || ByteBuf::from(vec![7u8; BLOB]);
    let hold = |lab: &ConformanceClient<C>| {
        let lab = lab.clone();
        let blob = blob();
        tokio::spawn(async move { lab.hold_blob(blob).await })
    };
    let started = |n: u32| move |p: &Probes| p.started.load(Ordering::SeqCst) == n;
    // Two on `a` fit its 250 KiB; a third does not.
    let held = [hold(&a), hold(&a)];
    env.probes.until("two calls running on a", started(2)).await;
    let err = expect_err("a third call on a", a.hold_blob(blob()).await);
    assert!(matches!(err, RpcError::Overloaded(_)), "{err:?}");
    // One on `b` fits the server's 350 KiB; a second does not.
    let third = hold(&b);
    env.probes.until("a call running on b", started(3)).await;
    let err = expect_err("a second call on b", b.hold_blob(blob()).await);
    assert!(matches!(err, RpcError::Overloaded(_)), "{err:?}");
    // Small calls still run: they fit.
    assert_eq!(b.echo(1).await, Ok(1));
    env.probes.gate.add_permits(3);
    for call in held.into_iter().chain([third]) {
        assert_eq!(call.await.expect("the caller"), Ok(BLOB as u64));
    }
    env.probes.gate.add_permits(1);
    assert_eq!(b.hold_blob(blob()).await, Ok(BLOB as u64));
}

/// The fault-injecting link wrapper ([`faulty`]) works over the
/// transport: calls whose frames it holds back, and so reorders, all complete.
pub async fn calls_through_a_link_that_delays_frames_all_complete<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    use crate::testing::faulty::{Faults, FaultyConnector};
    let faults = Faults::new(11).delay(0.3, Duration::from_millis(5));
    let connector = FaultyConnector::new(env.serve_default(&codec).await, faults);
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let done = Progress::default();
    let calls = (0..100u64).map(|i| {
        let (lab, done) = (lab.clone(), &done);
        async move {
            let reply = lab.echo(i).await;
            done.step();
            reply
        }
    });
    let all = futures::future::join_all(calls);
    let replies = env
        .watched("100 calls through delays", LOAD_BOUND, &done, all)
        .await;
    for (i, reply) in replies.into_iter().enumerate() {
        assert_eq!(reply, Ok(i as u64));
    }
    let delayed = connector.counts().delayed.load(Ordering::Relaxed);
    assert!(delayed > 0, "some frames were held back");
}

/// A graceful shutdown with calls running: a call that finishes within the grace period
/// completes, a new call is refused with the retryable `Unavailable`, the call still running
/// at the end of the grace period is cancelled, and the server's serving ends.
pub async fn shutdown_finishes_running_calls_refuses_new_ones_and_ends<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let running = env
        .start_server(&codec, test_limits(), DEFAULT_FRAMES)
        .await;
    let lab = client(&codec, &running.connector, DEFAULT_FRAMES.client).await;
    // Two calls that wait for the gate: one will be let through, one never.
    let first = tokio::spawn({
        let lab = lab.clone();
        async move { lab.hold(1).await }
    });
    let second = tokio::spawn({
        let lab = lab.clone();
        async move { lab.hold(2).await }
    });
    env.probes
        .until("both calls started", |p| {
            p.started.load(Ordering::SeqCst) == 2
        })
        .await;

    // Long enough for the released call to finish on a loaded machine; the other waits it out.
    let stopped = running.server.shutdown(Duration::from_secs(2));
    let refused = lab.echo(5).await;
    assert!(
        matches!(&refused, Err(RpcError::Unavailable(_))),
        "a new call during the shutdown: {refused:?}"
    );
    assert!(refused.is_err_and(|e| e.is_retryable()));
    env.probes.gate.add_permits(1);
    let report = stopped.await;
    // Which of the two the gate let through is the scheduler's choice.
    let finished = first.await.expect("caller task");
    let second = second.await.expect("caller task");
    let (done, cancelled) = match (finished, second) {
        (Ok(tag), Err(e)) | (Err(e), Ok(tag)) => (tag, e),
        other => panic!("one call should finish and one be cancelled: {other:?}"),
    };
    assert!([1, 2].contains(&done));
    assert!(
        !matches!(cancelled, RpcError::Unavailable(_)),
        "a call that started is not `Unavailable`: {cancelled:?}"
    );
    assert_eq!((report.running, report.cancelled), (2, 1));
    env.probes
        .until("the cancelled handler was dropped", |p| {
            p.dropped.load(Ordering::SeqCst) == 1
        })
        .await;
    let ended = running.ended.await.expect("the serving task ended");
    assert!(ended.is_ok(), "serving ends cleanly: {ended:?}");
    assert!(lab.echo(6).await.is_err(), "the server is gone");
}

/// Metadata set on a call reaches its handler intact (a text and a binary value); metadata
/// the sender's limits forbid is refused before it is sent; blocks that are malformed or over
/// the receiver's limits fail only their own call, with a Protocol error, and the connection
/// goes on.
pub async fn metadata_reaches_the_handler_and_bad_blocks_fail_only_their_call<
    H: Harness,
    C: Codec,
>(
    env: Arc<Env<H>>,
    codec: C,
) {
    use crate::{CallOptions, Metadata};
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let metadata = Metadata::new()
        .with("request-id", "r-17")
        .with("bin", vec![0u8, 255, 7]);
    let with = lab.with_options(CallOptions::new().metadata(metadata));
    assert_eq!(
        with.meta("request-id".into()).await,
        Ok(Some(ByteBuf::from(b"r-17".to_vec())))
    );
    assert_eq!(
        with.meta("bin".into()).await,
        Ok(Some(ByteBuf::from(vec![0, 255, 7])))
    );
    assert_eq!(with.meta("absent".into()).await, Ok(None));
    assert_eq!(
        lab.meta("request-id".into()).await,
        Ok(None),
        "not sent without"
    );

    let too_many = (0..65).fold(Metadata::new(), |m, i| m.with(format!("k{i}"), "v"));
    let refused = lab
        .with_options(CallOptions::new().metadata(too_many))
        .meta("k0".into())
        .await;
    assert!(
        matches!(refused, Err(RpcError::BadRequest(_))),
        "{refused:?}"
    );

    // Hand-made blocks, through a raw link.
    let mut link = raw_link::<C>(&connector).await;
    let mut too_big = vec![0x40, 0x01, 64];
    too_big.extend(std::iter::repeat_n(b'k', 64));
    let hostile: [(u64, Vec<u8>); 4] = [
        (20, vec![0, 50, 1, b'a']),      // claims more than the payload holds
        (21, vec![0, 4, 1, b'A', 0, 0]), // a key with a capital letter
        (22, vec![0, 8, 1, b'a', 0, 0, 1, b'a', 0, 0]), // a key twice
        (23, too_big),                   // a block over the 16 KiB limit
    ];
    for (id, block) in &hostile {
        assert!(send_bytes(&link, &meta_call(&codec, *id, "a", block)).await);
        let answer = tokio::time::timeout(Duration::from_secs(30), answer_to(&mut link, *id))
            .await
            .expect("an answer in time")
            .expect("the connection stays open");
        let header = Header::decode(&answer).expect("a well-formed answer");
        assert_eq!(header.kind, FrameKind::Error, "call {id}");
        let error = ErrorPayload::decode(&answer[HEADER_LEN..]);
        assert_eq!(
            error.code,
            Some(crate::wire::ErrorCode::Protocol),
            "call {id}"
        );
        assert!(error.message.contains("metadata"), "{}", error.message);
    }
    // A good block on the same raw link, and a plain call: both answered.
    let good = [0, 6, 1, b'a', 0, 2, b'o', b'k'];
    assert!(send_bytes(&link, &meta_call(&codec, 30, "a", &good)).await);
    let answer = answer_to(&mut link, 30).await.expect("an answer");
    let value: Option<ByteBuf> = codec.decode(&answer[HEADER_LEN..]).expect("a reply");
    assert_eq!(value, Some(ByteBuf::from(b"ok".to_vec())));
    assert!(send_bytes(&link, &echo_call(&codec, 31, 5)).await);
    let answer = answer_to(&mut link, 31).await.expect("an answer");
    assert_eq!(codec.decode::<u64>(&answer[HEADER_LEN..]), Ok(5));
    // And the stub's connection never noticed.
    assert_eq!(lab.echo(9).await, Ok(9));
}

/// In-out (`&mut`) arguments of several kinds in one method, mixed with by-value ones: the
/// caller's variables hold the handler's final values after the call, through the plain,
/// acknowledged and blocking forms; after a failed call they are as they were.
pub async fn in_out_arguments_come_back_and_stay_put_on_failure<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;
    let mut text = "ab".to_owned();
    let mut list = vec![1u32, 2];
    let mut point = Point {
        x: 10,
        y: 10,
        label: "p".into(),
    };
    let len = lab
        .edit(&mut text, &mut list, &mut point, "cd".into(), 3, false)
        .await;
    assert_eq!(len, Ok(3));
    assert_eq!((text.as_str(), list.as_slice()), ("abcd", &[1, 2, 3][..]));
    assert_eq!(
        point,
        Point {
            x: 13,
            y: 7,
            label: "p!".into()
        }
    );

    // Acknowledged: the values come back with the reply, after the ack.
    let pending = lab
        .edit_acked(&mut text, &mut list, &mut point, "e".into(), 4, false)
        .await
        .expect("acknowledged");
    assert_eq!(pending.await, Ok(4));
    assert_eq!((text.as_str(), list.len(), point.x), ("abcde", 4, 17));

    // A failed call (the handler panics after changing its copies) changes nothing here.
    let before = (text.clone(), list.clone(), point.clone());
    let failed = lab
        .edit(&mut text, &mut list, &mut point, "zz".into(), 9, true)
        .await;
    assert!(matches!(failed, Err(RpcError::Internal(_))), "{failed:?}");
    assert_eq!((text.clone(), list.clone(), point.clone()), before);

    // Blocking, from a thread that may block.
    let blocking = lab.clone();
    let (len, text) = tokio::task::spawn_blocking(move || {
        let (mut text, mut list, mut point) = before;
        let len = blocking.edit_blocking(&mut text, &mut list, &mut point, "f".into(), 5, false);
        (len, text)
    })
    .await
    .expect("the blocking thread");
    assert_eq!((len, text.as_str()), (Ok(5), "abcdef"));
}

/// A `Callback<T>` argument: 1,000 values the handler delivers after it returned arrive in
/// order, then the channel closes when the handler drops it; a caller that stops listening
/// makes the handler's next `call` fail with `Closed`; the connection ending ends the
/// callback on the caller's side.
pub async fn callbacks_arrive_in_order_and_end_cleanly<H: Harness, C: Codec>(
    env: Arc<Env<H>>,
    codec: C,
) {
    use crate::Callback;
    let connector = env.serve_default(&codec).await;
    let lab = client(&codec, &connector, DEFAULT_FRAMES.client).await;

    let (progress, mut reports) = Callback::channel(16);
    assert_eq!(lab.report(1000, progress).await, Ok(1000));
    for i in 0..1000 {
        assert_eq!(reports.recv().await, Some(i), "value {i}");
    }
    assert_eq!(
        reports.recv().await,
        None,
        "dropped by the handler: the channel closes"
    );

    let (progress, mut reports) = Callback::channel(1);
    assert_eq!(lab.report(u32::MAX, progress).await, Ok(u32::MAX));
    assert_eq!(reports.recv().await, Some(0));
    drop(reports);
    env.probes
        .until("the handler's callback failed", |p| {
            p.callback_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some()
        })
        .await;
    let error = env
        .probes
        .callback_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    assert!(matches!(error, Some(RpcError::Closed(_))), "{error:?}");
    assert_eq!(lab.echo(3).await, Ok(3), "the connection is fine");

    let (progress, mut reports) = Callback::channel(1);
    assert_eq!(lab.report(u32::MAX, progress).await, Ok(u32::MAX));
    assert_eq!(reports.recv().await, Some(0));
    env.kill_server();
    // Whatever was under way arrives; then the channel closes with the connection.
    let drained = async { while reports.recv().await.is_some() {} };
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("the callback ended with the connection");
}
