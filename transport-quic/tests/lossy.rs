//! Courier over QUIC through a lossy UDP relay on loopback (real client, real server, real
//! TLS): QUIC recovers lost, duplicated and reordered datagrams by itself; a cut path is seen
//! at the idle timeout, and a new connection works once the path is back.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod support {
    pub mod ping;
    pub mod relay;
}

use std::sync::atomic::Ordering;
use std::time::Duration;

use courier::testing::{lost_and_repeated, Progress};
use courier::{Client, ReconnectPolicy, RpcError};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicOptions};
use support::ping::{serve, serve_counting, within, PingClient};
use support::relay::{Relay, Weather};

/// A server, a relay in front of it with `weather`, and a connector through the relay.
async fn through_relay(weather: Weather, options: QuicOptions) -> (Relay, QuicConnector) {
    let cert = DevCert::localhost().unwrap();
    let server_addr = serve(&cert, options.clone());
    let relay = Relay::start(server_addr, weather).await;
    let connector = QuicConnector::new(
        relay.addr(),
        "localhost",
        ClientTls::trusting_dev(&cert),
        options,
    )
    .unwrap();
    (relay, connector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_through_loss_duplication_and_reordering() {
    within(async {
        let weather = Weather {
            seed: 21,
            drop: 0.05,
            duplicate: 0.01,
            reorder: 0.05,
        };
        let (relay, connector) = through_relay(weather, QuicOptions::default()).await;
        let client = PingClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        let workers = (0..8u64).map(|w| {
            let client = client.clone();
            async move {
                for i in 0..50u64 {
                    let v = w * 1000 + i;
                    assert_eq!(client.ping(v).await, Ok(v));
                }
            }
        });
        futures::future::join_all(workers).await;
        let c = &relay.counts;
        assert!(c.dropped.load(Ordering::Relaxed) > 0, "datagrams were lost");
        assert!(
            c.reordered.load(Ordering::Relaxed) > 0,
            "datagrams were reordered"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_path_fails_calls_at_the_idle_timeout_and_a_new_connection_works_after() {
    within(async {
        let calm = Weather {
            seed: 22,
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        };
        let options = QuicOptions::default()
            .idle_timeout(Duration::from_secs(2))
            .keep_alive(Some(Duration::from_millis(300)));
        let (relay, connector) = through_relay(calm, options).await;
        let client = PingClient::new(
            Client::builder(Cbor::default())
                .reconnect(ReconnectPolicy::never())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(client.ping(1).await, Ok(1));
        relay.cut();
        let err = client.ping(2).await.unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
        relay.restore();
        let again = PingClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(again.ping(3).await, Ok(3));
    })
    .await
}

/// 2,000 at-most-once calls from 8 tasks through 5 % datagram loss and three cuts of the path
/// (each lasting until the client, having lost its connection at the idle timeout, reconnects):
/// every call completes, and the server ran each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_calls_survive_loss_and_cuts_and_run_exactly_once() {
    within(async {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 250;
        let weather = Weather {
            seed: 23,
            drop: 0.05,
            duplicate: 0.0,
            reorder: 0.0,
        };
        let options = QuicOptions::default()
            .idle_timeout(Duration::from_secs(1))
            .keep_alive(Some(Duration::from_millis(200)));
        let cert = DevCert::localhost().unwrap();
        let (server_addr, runs) = serve_counting(&cert, options.clone());
        let relay = Relay::start(server_addr, weather).await;
        let connector = QuicConnector::new(
            relay.addr(),
            "localhost",
            ClientTls::trusting_dev(&cert),
            options,
        )
        .unwrap();
        let client = PingClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        let progress = std::sync::Arc::new(Progress::default());
        let workers: Vec<_> = (0..TASKS)
            .map(|t| {
                let client = client.clone();
                let progress = progress.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let id = t * PER_TASK + i;
                        assert_eq!(client.record(id).await, Ok(id));
                        progress.step();
                    }
                })
            })
            .collect();
        for quarter in 1..=3 {
            progress.reached(quarter * TASKS * PER_TASK / 4).await;
            relay.cut_until_reconnect();
        }
        for w in workers {
            w.await.unwrap();
        }
        let runs = runs.lock().unwrap();
        let total = TASKS * PER_TASK;
        assert_eq!(
            lost_and_repeated(&runs, 0..total),
            (0, 0),
            "lost and repeated executions"
        );
        assert!(relay.counts.dropped.load(Ordering::Relaxed) > 0);
    })
    .await
}
