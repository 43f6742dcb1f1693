//! The fault-injecting link wrapper, over in-process links: each fault does what it says, on
//! a schedule its seed fixes.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BufMut;
use courier::testing::faulty::{Faults, FaultyConnector};
use courier::testing::unique_name;
use courier::transport::{mem, Connector, Link, Listener};
use courier::wire::{FrameKind, Header, Hello};
use courier::{CallOptions, Client, InterfaceId, MethodId, ReconnectPolicy, RpcError, Server};
use courier_cbor::Cbor;

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out")
}

async fn send(link: &Link, bytes: &[u8]) {
    let mut buf = link.tx.buffer(bytes.len()).await.unwrap();
    buf.put_slice(bytes);
    link.tx.send(buf).await.unwrap();
}

fn frame(id: u64) -> [u8; 32] {
    Header::new(FrameKind::OneWay, id, InterfaceId::new(1), MethodId::new(2)).to_bytes()
}

/// A faulty client link and the plain server end of it, past a hand-made hello.
async fn linked(faults: Faults) -> (Link, Link, FaultyConnector<mem::Dialer>) {
    let name = unique_name("faulty");
    let mut listener = mem::Listener::bind(name.clone()).unwrap();
    let connector = FaultyConnector::new(mem::Dialer::new(name), faults);
    let client = connector.connect().await.unwrap();
    let mut server = listener.accept().await.unwrap();
    let hello = Hello {
        version: u16::from(courier::wire::PROTOCOL_VERSION),
        codec: "cbor".to_owned(),
        client_id: 1,
        epoch: 1,
    }
    .encode();
    send(&client, &hello).await;
    assert_eq!(
        server.rx.recv().await.unwrap().unwrap(),
        hello,
        "the hello always passes"
    );
    (client, server, connector)
}

/// The ids of the frames `link` receives until `n` have come or it goes quiet.
async fn received(link: &mut Link, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let next = tokio::time::timeout(Duration::from_millis(300), link.rx.recv()).await;
        let Ok(Ok(Some(frame))) = next else { break };
        ids.push(Header::decode(&frame).unwrap().call_id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_is_lost_at_a_drop_rate_of_one() {
    within(async {
        let (client, mut server, connector) = linked(Faults::new(1).drop(1.0)).await;
        for id in 1..=5 {
            send(&client, &frame(id)).await;
        }
        assert_eq!(received(&mut server, 1).await, Vec::<u64>::new());
        assert_eq!(connector.counts().dropped.load(Ordering::Relaxed), 5);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_frame_comes_twice_at_a_duplicate_rate_of_one() {
    within(async {
        let (client, mut server, _connector) = linked(Faults::new(2).duplicate(1.0)).await;
        for id in 1..=3 {
            send(&client, &frame(id)).await;
        }
        assert_eq!(received(&mut server, 6).await, vec![1, 1, 2, 2, 3, 3]);
        // And in the other direction.
        let (mut client, server, _connector) = linked(Faults::new(2).duplicate(1.0)).await;
        // The welcome, the first message this way, passes alone.
        send(&server, b"welcome").await;
        assert_eq!(&client.rx.recv().await.unwrap().unwrap()[..], b"welcome");
        send(&server, &frame(9)).await;
        assert_eq!(received(&mut client, 2).await, vec![9, 9]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_frame_is_overtaken() {
    within(async {
        // Seed 3 with these rates: find the first frame the schedule delays, and check that
        // the frame after it arrives first.
        let (client, mut server, connector) =
            linked(Faults::new(3).delay(0.5, Duration::from_millis(100))).await;
        for id in 1..=8 {
            send(&client, &frame(id)).await;
        }
        let ids = received(&mut server, 8).await;
        let delayed = connector.counts().delayed.load(Ordering::Relaxed);
        assert!(delayed > 0, "seed 3 delays some of 8 frames at p = 0.5");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=8).collect::<Vec<_>>(),
            "every frame arrives once"
        );
        assert_ne!(ids, sorted, "a delayed frame is overtaken: {ids:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_schedule() {
    within(async {
        let mut runs = Vec::new();
        for _ in 0..2 {
            let (client, mut server, _connector) =
                linked(Faults::new(42).drop(0.3).duplicate(0.2)).await;
            for id in 1..=40 {
                send(&client, &frame(id)).await;
            }
            runs.push(received(&mut server, 80).await);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(
            runs[0].len() < 40 + 40 && runs[0].len() != 40,
            "{:?}",
            runs[0]
        );
    })
    .await
}

#[courier::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(&self, v: u64) -> u64;
}

struct Me;

impl Echo for Me {
    async fn echo(&self, v: u64) -> u64 {
        v
    }
}

/// A server for `Echo` and a faulty connector to it.
fn echo_server(faults: Faults) -> FaultyConnector<mem::Dialer> {
    let name = unique_name("faulty-echo");
    let listener = mem::Listener::bind(name.clone()).unwrap();
    let server = Server::builder(Cbor::default())
        .service(EchoServer::new(Me))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    FaultyConnector::new(mem::Dialer::new(name), faults)
}

async fn echo_client(connector: &FaultyConnector<mem::Dialer>) -> EchoClient<Cbor> {
    EchoClient::new(
        Client::builder(Cbor::default())
            .connect(connector)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_fails_the_link_open_now_and_not_the_next() {
    within(async {
        let connector = echo_server(Faults::new(5));
        // A client that does not reconnect sees the cut as the end of its connection.
        let first = EchoClient::new(
            Client::builder(Cbor::default())
                .reconnect(ReconnectPolicy::never())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(first.echo(1).await, Ok(1));
        connector.cuts().cut();
        let err = first.echo(2).await.unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
        assert_eq!(connector.counts().cuts.load(Ordering::Relaxed), 1);
        let second = echo_client(&connector).await;
        assert_eq!(second.echo(3).await, Ok(3));
        // One that does (the default) carries on over a new link.
        connector.cuts().cut();
        assert_eq!(second.echo(4).await, Ok(4));
        assert_eq!(connector.counts().cuts.load(Ordering::Relaxed), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_call_runs_into_its_deadline() {
    within(async {
        let connector = echo_server(Faults::new(6).drop(1.0));
        let client = echo_client(&connector).await;
        let hurried = client.with_options(CallOptions::new().timeout(Duration::from_millis(100)));
        assert_eq!(hurried.echo(1).await, Err(RpcError::DeadlineExceeded));
        assert!(connector.counts().dropped.load(Ordering::Relaxed) >= 1);
    })
    .await
}
