//! The engine seen from the wire: a test plays one side with raw frames over an in-process link.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use courier::transport::{mem, Link};
use courier::wire::{
    decode_error_payload, ErrorCode, Flags, FrameKind, Header, Hello, Welcome, WelcomeStatus,
    HEADER_LEN,
};
use courier::{Client, Codec, CodecError, HandshakeError, MethodDesc, RpcError, Server};
use courier_cbor::Cbor;
use serde::{de::DeserializeOwned, Serialize};

async fn send(link: &Link, bytes: &[u8]) {
    let mut buf = link.tx.buffer(bytes.len()).await.unwrap();
    bytes::BufMut::put_slice(&mut buf, bytes);
    link.tx.send(buf).await.unwrap();
}

async fn recv(link: &mut Link) -> Bytes {
    link.rx.recv().await.unwrap().expect("link closed")
}

fn hello(version: u16, codec: &str) -> Bytes {
    Hello {
        version,
        codec: codec.into(),
        client_id: 1,
        epoch: 1,
    }
    .encode()
}

/// A raw client end, handshaken with `server`.
async fn raw_client(server: &Server<Cbor>) -> Link {
    let (server_end, mut raw) = mem::pair();
    let serving = server.serve_link(server_end);
    let handshake = async {
        send(
            &raw,
            &hello(u16::from(courier::wire::PROTOCOL_VERSION), "cbor"),
        )
        .await;
        let welcome = Welcome::decode(&recv(&mut raw).await).unwrap();
        assert_eq!(welcome.status, WelcomeStatus::Accepted);
    };
    let (served, ()) = tokio::join!(serving, handshake);
    served.unwrap();
    raw
}

fn call_frame<A: Serialize>(
    kind: FrameKind,
    id: u64,
    m: &MethodDesc,
    args: A,
    budget: u32,
) -> Vec<u8> {
    let mut payload = Vec::new();
    Cbor::default().encode(&args, &mut payload).unwrap();
    let header = Header {
        version: m.version,
        payload_len: payload.len() as u32,
        budget_micros: budget,
        ..Header::new(kind, id, m.interface, m.method)
    };
    let mut frame = header.to_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

fn reply<R: DeserializeOwned>(frame: &[u8]) -> R {
    Cbor::default().decode(&frame[HEADER_LEN..]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_each_get_an_error_and_other_calls_complete() {
    within(async {
        let (server, _probes) = lab_server();
        let mut raw = raw_client(&server).await;
        let echo = LabClient::<Cbor>::ECHO;

        send(&raw, &call_frame(FrameKind::Call, 100, &echo, (41u64,), 0)).await;

        // Random bytes (deterministic, so a failure can be replayed).
        let mut x: u32 = 0x1234_5678;
        let random: Vec<u8> = (0..61)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        send(&raw, &random).await;
        // A truncated header.
        send(
            &raw,
            &call_frame(FrameKind::Call, 101, &echo, (1u64,), 0)[..20],
        )
        .await;
        // A wrong protocol version.
        let mut v = call_frame(FrameKind::Call, 102, &echo, (1u64,), 0);
        v[0] = 7;
        send(&raw, &v).await;
        // A payload length that lies.
        let mut v = call_frame(FrameKind::Call, 103, &echo, (1u64,), 0);
        v[27] = v[27].wrapping_add(5);
        send(&raw, &v).await;
        // An unknown kind.
        let mut v = call_frame(FrameKind::Call, 104, &echo, (1u64,), 0);
        v[1] = 99;
        send(&raw, &v).await;
        // A payload that is not the method's arguments.
        send(&raw, &call_frame(FrameKind::Call, 105, &echo, ("nope",), 0)).await;

        send(&raw, &call_frame(FrameKind::Call, 106, &echo, (42u64,), 0)).await;

        let mut replies = std::collections::BTreeMap::new();
        let mut errors = Vec::new();
        while replies.len() < 2 || errors.len() < 6 {
            let frame = recv(&mut raw).await;
            let h = Header::decode(&frame).unwrap();
            match h.kind {
                FrameKind::Reply => {
                    replies.insert(h.call_id, reply::<u64>(&frame));
                }
                FrameKind::Error => {
                    let (code, _, message) = decode_error_payload(&frame[HEADER_LEN..]);
                    errors.push((h.call_id, code, message));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(replies.get(&100), Some(&41));
        assert_eq!(replies.get(&106), Some(&42));
        errors.sort_by_key(|e| e.0);
        let ids: Vec<u64> = errors.iter().map(|e| e.0).collect();
        // The random bytes carry some call id; the others are reported against theirs
        // (the truncated header was long enough to carry its id).
        for id in [101, 102, 103, 104, 105] {
            assert!(ids.contains(&id), "no error for call {id}: {errors:?}");
        }
        for (id, code, message) in &errors {
            let expected = if *id == 105 {
                ErrorCode::BadRequest
            } else {
                ErrorCode::Protocol
            };
            if [101, 102, 103, 104, 105].contains(id) {
                assert_eq!(*code, Some(expected), "{message}");
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_too_short_to_name_its_call_is_reported_against_call_zero() {
    within(async {
        let (server, _probes) = lab_server();
        let mut raw = raw_client(&server).await;
        send(&raw, &[1, 2, 3]).await;
        let frame = recv(&mut raw).await;
        let h = Header::decode(&frame).unwrap();
        assert_eq!((h.kind, h.call_id), (FrameKind::Error, 0));
        let (code, _, message) = decode_error_payload(&frame[HEADER_LEN..]);
        assert_eq!(code, Some(ErrorCode::Protocol));
        assert!(message.contains("shorter than"), "{message}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_never_gets_a_reply() {
    within(async {
        let (server, mut probes) = lab_server();
        let mut raw = raw_client(&server).await;
        let note = LabClient::<Cbor>::NOTE;
        send(&raw, &call_frame(FrameKind::OneWay, 7, &note, (5u64,), 0)).await;
        assert_eq!(probes.noted.recv().await, Some(5));
        // Refused and malformed one-way calls get no answer either.
        send(&raw, &call_frame(FrameKind::OneWay, 9, &note, ("text",), 0)).await;
        let mut lying = call_frame(FrameKind::OneWay, 10, &note, (5u64,), 0);
        lying[24..28].copy_from_slice(&99u32.to_be_bytes());
        send(&raw, &lying).await;
        let unknown = MethodDesc {
            idempotent: false,
            method: courier::MethodId::new(0xdead),
            ..note
        };
        send(
            &raw,
            &call_frame(FrameKind::OneWay, 11, &unknown, (5u64,), 0),
        )
        .await;
        // The next frame the server sends is the reply to a later call, not anything for the
        // one-way calls.
        send(
            &raw,
            &call_frame(FrameKind::Call, 12, &LabClient::<Cbor>::ECHO, (9u64,), 0),
        )
        .await;
        let frame = recv(&mut raw).await;
        let h = Header::decode(&frame).unwrap();
        assert_eq!((h.kind, h.call_id), (FrameKind::Reply, 12));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_drops_the_handler_when_the_budget_runs_out() {
    within(async {
        let (server, mut probes) = lab_server();
        let mut raw = raw_client(&server).await;
        // 20 ms of budget, and no Cancel will follow: the server acts on its own.
        let hold = LabClient::<Cbor>::HOLD;
        send(
            &raw,
            &call_frame(FrameKind::Call, 3, &hold, (4u32,), 20_000),
        )
        .await;
        assert_eq!(probes.dropped.recv().await, Some(4));
        let frame = recv(&mut raw).await;
        let h = Header::decode(&frame).unwrap();
        assert_eq!((h.kind, h.call_id), (FrameKind::Error, 3));
        assert_eq!(
            decode_error_payload(&frame[HEADER_LEN..]).0,
            Some(ErrorCode::DeadlineExceeded)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_frames_precede_the_reply() {
    within(async {
        let (server, mut probes) = lab_server();
        let mut raw = raw_client(&server).await;
        let hold = LabClient::<Cbor>::HOLD;
        let mut frame = call_frame(FrameKind::Call, 11, &hold, (6u32,), 0);
        frame[2..4].copy_from_slice(&Flags::ACK.bits().to_be_bytes());
        send(&raw, &frame).await;
        let ack = recv(&mut raw).await;
        assert_eq!(Header::decode(&ack).unwrap().kind, FrameKind::Ack);
        assert_eq!(probes.started.recv().await, Some(6));
        probes.gate.add_permits(1);
        let reply_frame = recv(&mut raw).await;
        assert_eq!(Header::decode(&reply_frame).unwrap().kind, FrameKind::Reply);
        assert_eq!(reply::<u32>(&reply_frame), 6);
    })
    .await
}

/// A codec with another name: the server must refuse it in the handshake.
#[derive(Debug, Clone)]
struct Other;

impl Codec for Other {
    const NAME: &'static str = "other";
    fn encode<T: Serialize + ?Sized, B: bytes::BufMut + ?Sized>(
        &self,
        value: &T,
        out: &mut B,
    ) -> Result<(), CodecError> {
        Cbor::default().encode(value, out)
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        Cbor::default().decode(bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codec_mismatch_is_a_clear_error_on_both_sides() {
    within(async {
        let (server, _probes) = lab_server();
        let (server_end, client_end) = mem::pair();
        let (served, client) = tokio::join!(
            server.serve_link(server_end),
            Client::builder(Other).connect_link(client_end)
        );
        let server_err = served.unwrap_err();
        let client_err = client.unwrap_err();
        assert!(
            matches!(&server_err, RpcError::Handshake(HandshakeError::Codec { requested, .. }) if requested == "other"),
            "{server_err:?}"
        );
        assert!(
            matches!(&client_err, RpcError::Handshake(HandshakeError::Codec { offered, .. }) if offered == "cbor"),
            "{client_err:?}"
        );
        assert!(client_err.to_string().contains("offers: cbor"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_is_a_clear_error_on_both_sides() {
    within(async {
        // Server side: a hello from protocol version 9.
        let (server, _probes) = lab_server();
        let (server_end, mut raw) = mem::pair();
        let (served, welcome) = tokio::join!(server.serve_link(server_end), async {
            send(&raw, &hello(9, "cbor")).await;
            Welcome::decode(&recv(&mut raw).await).unwrap()
        });
        assert_eq!(welcome.status, WelcomeStatus::VersionUnsupported);
        assert!(matches!(
            served.unwrap_err(),
            RpcError::Handshake(HandshakeError::Version { theirs: 9, .. })
        ));

        // Client side: a server that answers "version unsupported".
        let (mut raw_server, client_end) = mem::pair();
        let (client, ()) = tokio::join!(
            Client::builder(Cbor::default()).connect_link(client_end),
            async {
                let hello = Hello::decode(&recv(&mut raw_server).await).unwrap();
                assert_eq!(hello.codec, "cbor");
                let answer = Welcome {
                    version: 3,
                    status: WelcomeStatus::VersionUnsupported,
                    codecs: "cbor".into(),
                    instance: 1,
                };
                send(&raw_server, &answer.encode()).await;
            }
        );
        assert!(matches!(
            client.unwrap_err(),
            RpcError::Handshake(HandshakeError::Version { theirs: 3, .. })
        ));

        // Not a Courier peer at all.
        let (server_end, raw) = mem::pair();
        let (served, ()) = tokio::join!(
            server.serve_link(server_end),
            send(&raw, b"GET / HTTP/1.1\r\n")
        );
        assert!(matches!(
            served.unwrap_err(),
            RpcError::Handshake(HandshakeError::Malformed(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_connection_fails_calls_in_flight() {
    within(async {
        // A "server" that completes the handshake, takes one call and then vanishes.
        let (mut raw_server, client_end) = mem::pair();
        let (client, ()) = tokio::join!(
            Client::builder(Cbor::default()).connect_link(client_end),
            async {
                recv(&mut raw_server).await;
                let ok = Welcome {
                    version: 2,
                    status: WelcomeStatus::Accepted,
                    codecs: "cbor".into(),
                    instance: 1,
                };
                send(&raw_server, &ok.encode()).await;
            }
        );
        let lab = LabClient::new(client.unwrap());
        let (result, ()) = tokio::join!(lab.echo(1), async {
            recv(&mut raw_server).await; // the call arrived
            drop(raw_server);
        });
        assert!(
            matches!(result, Err(RpcError::ConnectionLost(_))),
            "{result:?}"
        );
        assert!(lab.client().is_closed());
        assert!(matches!(
            lab.echo(2).await,
            Err(RpcError::ConnectionLost(_))
        ));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_has_its_handlers_dropped() {
    within(async {
        let (server, mut probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let call = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(12).await }
        });
        assert_eq!(probes.started.recv().await, Some(12));
        call.abort();
        drop(lab);
        assert_eq!(probes.dropped.recv().await, Some(12));
    })
    .await
}
