//! How calls ride QUIC streams, checked with a client written by hand with raw quinn against
//! a real Courier server over loopback UDP with real TLS (PROTOCOL.md §7): which stream is the
//! handshake's, what a second frame on a call's stream gets, and that every call's stream is
//! answered and finished, even for a copy the server will not run.
#![allow(clippy::unwrap_used, missing_docs)]

use courier::wire::{
    Claims, ErrorCode, ErrorPayload, FrameKind, Header, WelcomeStatus, HEADER_LEN,
};
use std::time::Duration;

use courier_quic::{DevCert, QuicOptions};

mod support {
    pub mod ping;
    pub mod raw;
}

use support::ping::{serve, within};
use support::raw::{dial, handshake, header, ping_call, raw};

/// Reads one whole frame off `recv`, or `None` at the stream's clean end.
async fn read_frame(recv: &mut quinn::RecvStream) -> Option<Vec<u8>> {
    let mut head = vec![0u8; HEADER_LEN];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return None,
        Err(e) => panic!("reading a frame: {e:?}"),
    }
    let len = Claims::read(&head).payload_len.unwrap() as usize;
    let mut frame = head;
    frame.resize(HEADER_LEN + len, 0);
    recv.read_exact(&mut frame[HEADER_LEN..]).await.unwrap();
    Some(frame)
}
/// A client may send calls before the welcome comes. The handshake stream is the first
/// bidirectional stream by id, whatever order the data of the streams arrives in: here the
/// call's stream (id 4) is delivered and acknowledged before a byte of the hello (stream 0)
/// is sent. The server reads the hello first, welcomes the client and serves the call. (The
/// server used to take frames in the order they came, read the call as a malformed hello and
/// close the connection without a welcome.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_before_the_hello_is_served_after_the_welcome() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let addr = serve(&cert, QuicOptions::default());
        for round in 0..20u8 {
            let (_endpoint, conn) = dial(addr, &cert).await;
            let (mut control_send, mut control_recv) = conn.open_bi().await.unwrap();
            let (mut call_send, mut call_recv) = conn.open_bi().await.unwrap();
            assert!(control_send.id() < call_send.id());
            // A call id of its own per round: the rounds share a client id, and a second call 1
            // would be a copy of the first.
            let id = 1 + u64::from(round);
            call_send.write_all(&ping_call(id, round)).await.unwrap();
            call_send.finish().unwrap();
            // The server's QUIC stack has the call (it acknowledged all of it).
            assert!(matches!(call_send.stopped().await, Ok(None)));
            let welcome = handshake(&mut control_send, &mut control_recv).await;
            assert!(
                matches!(&welcome, Ok(w) if w.status == WelcomeStatus::Accepted),
                "round {round}: {welcome:?}"
            );
            let mut reply = vec![0u8; HEADER_LEN + 1];
            call_recv.read_exact(&mut reply).await.unwrap();
            let h = Header::decode(&reply).unwrap();
            assert_eq!(
                (h.kind, h.call_id, reply[HEADER_LEN]),
                (FrameKind::Reply, id, round),
                "round {round}"
            );
        }
    })
    .await
}

/// A second frame on a call's stream is refused the same way every time: the call is
/// answered, and its Reply is followed by an Error (Protocol, echoing the refused frame's call
/// id) and the FIN. A caller whose half is still open also gets STOP_SENDING 2. This holds
/// whether the second frame came with the call, after the reply, or before the caller's FIN.
/// (The server used to finish its half with the reply and only stop the request half: a caller
/// that had finished its own half usually never saw the stop, QUIC dropping it once the data
/// was acknowledged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_frame_on_a_calls_stream_is_always_refused_after_the_reply() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let addr = serve(&cert, QuicOptions::default());
        let (_endpoint, conn) = raw(addr, &cert).await;
        for round in 0..60u64 {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let id = 10 + 2 * round;
            // 0: both frames at once, the half left open; 1: the second after the reply;
            // 2: both frames and the FIN at once.
            let how = round % 3;
            let mut first = ping_call(id, 7);
            if how != 1 {
                first.extend_from_slice(&ping_call(id + 1, 8));
            }
            send.write_all(&first).await.unwrap();
            if how == 2 {
                send.finish().unwrap();
            }
            let reply = read_frame(&mut recv).await.expect("the call's reply");
            let h = Header::decode(&reply).unwrap();
            assert_eq!((h.kind, h.call_id), (FrameKind::Reply, id), "round {round}");
            if how == 1 {
                send.write_all(&ping_call(id + 1, 8)).await.unwrap();
            }
            let refused = read_frame(&mut recv).await.expect("the refusal");
            let h = Header::decode(&refused).unwrap();
            assert_eq!(
                (h.kind, h.call_id),
                (FrameKind::Error, id + 1),
                "round {round}"
            );
            let error = ErrorPayload::decode(&refused[HEADER_LEN..]);
            assert_eq!(error.code, Some(ErrorCode::Protocol), "round {round}");
            assert_eq!(
                read_frame(&mut recv).await,
                None,
                "round {round}: then the FIN"
            );
            if how != 2 {
                let stopped = send.stopped().await;
                assert!(
                    matches!(stopped, Ok(Some(code)) if code.into_inner() == 2),
                    "round {round}: {stopped:?}"
                );
            }
        }
    })
    .await
}
/// Every copy of a call gets one answer on its own stream, which then finishes: the cached
/// reply while the server holds it, and Released (14) once a Release put the call below the
/// watermark. (The server used to send a reply before keeping it: a copy that came in between,
/// on the same connection, attached to a call whose answer had gone and was never answered,
/// its stream left open until the next copy came. About one run in twenty of this test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_below_the_watermark_is_answered_on_its_stream_which_finishes() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let addr = serve(&cert, QuicOptions::default());
        let (_endpoint, conn) = raw(addr, &cert).await;
        // A copy sent the moment the reply came: the race that left copies unanswered.
        for id in 1..=300 {
            for attempt in ["call", "copy"] {
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.write_all(&ping_call(id, 5)).await.unwrap();
                send.finish().unwrap();
                let reply = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv))
                    .await
                    .unwrap_or_else(|_| panic!("{attempt} {id}: no answer in 10 s"))
                    .expect("an answer");
                let h = Header::decode(&reply).unwrap();
                assert_eq!(
                    (h.kind, h.call_id),
                    (FrameKind::Reply, id),
                    "{attempt} {id}"
                );
                assert_eq!(read_frame(&mut recv).await, None, "{attempt} {id}: the FIN");
            }
        }
        // The client holds every outcome below 2.
        let mut release = conn.open_uni().await.unwrap();
        release
            .write_all(&header(FrameKind::Release, 2, 0))
            .await
            .unwrap();
        release.finish().unwrap();
        // A copy sent before the server read the Release gets the cached reply; either way
        // the answer is the copy's stream's one frame and the stream then ends.
        let mut copies = 0;
        loop {
            copies += 1;
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(&ping_call(1, 5)).await.unwrap();
            send.finish().unwrap();
            let answer = read_frame(&mut recv).await.expect("every copy is answered");
            assert_eq!(
                read_frame(&mut recv).await,
                None,
                "the copy's stream finishes"
            );
            let h = Header::decode(&answer).unwrap();
            if h.kind == FrameKind::Reply {
                assert!(copies < 10_000, "the Release was never read");
                continue;
            }
            assert_eq!(h.kind, FrameKind::Error);
            let error = ErrorPayload::decode(&answer[HEADER_LEN..]);
            assert_eq!(error.code, Some(ErrorCode::Released), "{}", error.message);
            break;
        }
    })
    .await
}
