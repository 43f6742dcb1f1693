//! A hostile client written with raw quinn, against a real Courier server over loopback UDP
//! with real TLS: what the `Link` API cannot express (frames on streams of the client's
//! choosing, frames that never finish).
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use courier::wire::{FrameKind, Header, HEADER_LEN};
use courier::Client;
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicOptions};

mod support {
    pub mod ping;
    pub mod raw;
}

use support::ping::{serve, within, PingClient};
use support::raw::{header, ping_call, raw};

/// Resident memory of this process, from `/proc/self/status`.
fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Stray replies, acks, errors and cancels on streams the client opens are refused at once:
/// each stream is closed, so the client's stream credit comes back and the connection goes on.
/// (They used to leave each stream half-open with a task waiting forever; about 1,023 of them
/// wedged the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_frames_on_new_streams_are_refused_and_never_wedge_the_connection() {
    within(async {
        let cert = DevCert::localhost().unwrap();
        let options = QuicOptions::default().max_concurrent_calls(64);
        let addr = serve(&cert, options);
        let (_endpoint, conn) = raw(addr, &cert).await;
        // Far more than the 64 streams the server allows at once.
        for id in 0..600u64 {
            let kind = [FrameKind::Reply, FrameKind::Cancel, FrameKind::Ack, FrameKind::Error]
                [(id % 4) as usize];
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let _ = send.write_all(&header(kind, 1_000 + id, 0)).await;
            let _ = send.finish();
            // The server resets its half with "refused" (2).
            let read = recv.read_to_end(1024).await;
            assert!(
                matches!(read, Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) if code.into_inner() == 2),
                "stream {id}: {read:?}"
            );
        }
        // A second frame after a call on the same stream is refused too, the call answered.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&ping_call(5, 7)).await.unwrap();
        send.write_all(&header(FrameKind::Call, 6, 2)).await.unwrap();
        send.write_all(&[0x81, 0x08]).await.unwrap();
        let _ = send.finish();
        let mut reply = vec![0u8; HEADER_LEN + 1];
        recv.read_exact(&mut reply).await.unwrap();
        let h = Header::decode(&reply).unwrap();
        assert_eq!((h.kind, h.call_id, reply[HEADER_LEN]), (FrameKind::Reply, 5, 7));

        // A well-behaved client on another connection is served as usual.
        let connector = QuicConnector::new(
            addr,
            "localhost",
            ClientTls::trusting_dev(&cert),
            QuicOptions::default(),
        )
        .unwrap();
        let client = PingClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(client.ping(3).await.unwrap(), 3);
    })
    .await
}

/// The amplification probe: 16 connections × 4 streams each announce frames just under the
/// 16 MiB limit and send 1 KB of each. The server's memory stays far below its configured
/// ceiling (bodies are taken as their bytes arrive), and each stalled frame is dropped at the
/// frame timeout: its stream is stopped with "refused" (2) and the call answered with an
/// error. (This used to take a server from 12 MiB to 786 MiB, held indefinitely.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_never_finish_cost_only_what_arrived_and_are_dropped_at_their_timeout() {
    within(async {
        const CEILING: usize = 64 << 20;
        let cert = DevCert::localhost().unwrap();
        let options = QuicOptions::default()
            .receive_ceiling(CEILING)
            .frame_timeout(Duration::from_secs(1));
        let addr = serve(&cert, options);
        let limit = courier::Limits::default().frame_size_limit();
        let declared = u32::try_from(limit - HEADER_LEN - 1024).unwrap();
        let before = resident_bytes();
        let mut stalled = Vec::new();
        let mut connections = Vec::new();
        for _ in 0..16 {
            let (endpoint, conn) = raw(addr, &cert).await;
            for s in 0..4u64 {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&header(FrameKind::Call, 1 + s, declared))
                    .await
                    .unwrap();
                send.write_all(&[0u8; 1000]).await.unwrap();
                stalled.push((send, recv));
            }
            connections.push((endpoint, conn));
        }
        // Measured while every frame is stalled, before any timeout has passed.
        let grown = resident_bytes().saturating_sub(before);
        assert!(
            grown < CEILING,
            "64 stalled frames grew the server by {} MiB (ceiling {} MiB)",
            grown >> 20,
            CEILING >> 20
        );
        for (send, mut recv) in stalled {
            // Stopped by the server once the frame timeout passes...
            let stopped = send.stopped().await;
            assert!(
                matches!(stopped, Ok(Some(code)) if code.into_inner() == 2),
                "{stopped:?}"
            );
            // ...and the call answered with an error.
            let mut answer = vec![0u8; HEADER_LEN];
            recv.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[1], FrameKind::Error as u8, "{answer:?}");
        }
        drop(connections);
    })
    .await
}

/// Frames in progress never hold a connection's receive budget between them while each waits
/// for more: two calls, each three quarters of the budget, arrive half and then half, and both
/// are read whole and answered. (Counted only as their bytes arrived, the two first halves took
/// the whole budget, and each frame waited for the other's until the frame timeout: 64 calls
/// of 1 MiB on one connection did that in the matrix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_progress_never_wait_for_each_other_on_the_receive_budget() {
    within(async {
        const BUDGET: usize = 256 * 1024;
        let cert = DevCert::localhost().unwrap();
        // Only the budget can stop these frames: no timeout fires within the test.
        let options = QuicOptions::default()
            .max_frame_size(BUDGET)
            .receive_budget(BUDGET)
            .frame_timeout(Duration::from_secs(3600));
        let addr = serve(&cert, options);
        let (_endpoint, conn) = raw(addr, &cert).await;
        let payload = u32::try_from(BUDGET * 3 / 4).unwrap();
        let half = vec![0u8; payload as usize / 2];
        let mut streams = Vec::new();
        for id in 1..=2u64 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&header(FrameKind::Call, id, payload))
                .await
                .unwrap();
            send.write_all(&half).await.unwrap();
            streams.push((id, send, recv));
        }
        for (_, send, _) in &mut streams {
            send.write_all(&half).await.unwrap();
            send.finish().unwrap();
        }
        for (id, _, recv) in &mut streams {
            // Zeros are not the CBOR of `ping`'s arguments: the answer is an error, and it
            // can only come once the whole frame has been read.
            let mut answer = vec![0u8; HEADER_LEN];
            recv.read_exact(&mut answer).await.unwrap();
            assert_eq!(answer[1], FrameKind::Error as u8, "call {id}: {answer:?}");
        }
    })
    .await
}
