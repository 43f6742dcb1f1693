//! Sessions that outlive their links, over in-process links: at-most-once calls through a link
//! that loses, duplicates and cuts frames run exactly once; a client's newer epoch aborts its
//! old handlers; the reply cache keeps to its bytes.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::testing::faulty::{Faults, FaultyConnector};
use courier::testing::{lost_and_repeated, unique_name, ByteBuf, Progress};
use courier::transport::mem;
use courier::{
    CallOptions, Client, Context, HandshakeError, Identity, Limits, ReconnectPolicy, RpcError,
    Server,
};
use courier_cbor::Cbor;
use tokio::sync::Notify;

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test timed out")
}

#[courier::service]
pub trait Ledger {
    /// At-most-once: counts its runs per id.
    async fn record(&self, id: u64) -> u64;
    /// Idempotent: counts its runs per id.
    #[idempotent]
    async fn read(&self, id: u64) -> u64;
    /// Waits until dropped; reports its start and its drop.
    async fn hold(&self) -> u32;
    /// Calls the client's `Doubler` back.
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String>;
    /// One-way: counts its runs per id.
    #[oneway]
    async fn note(&self, id: u64);
    /// At-most-once: counts its runs per id and returns `n` bytes.
    async fn fill(&self, id: u64, n: u32) -> ByteBuf;
}

#[courier::service]
pub trait Doubler {
    async fn double(&self, x: u32) -> u32;
}

struct Twice;

impl Doubler for Twice {
    async fn double(&self, x: u32) -> u32 {
        2 * x
    }
}

#[derive(Default)]
struct Books {
    runs: Mutex<HashMap<u64, u32>>,
    started: AtomicU32,
    dropped: AtomicU32,
    changed: Notify,
}

impl Books {
    fn run(&self, id: u64) -> u64 {
        *self.runs.lock().unwrap().entry(id).or_insert(0) += 1;
        id
    }

    async fn until(&self, what: &str, done: impl Fn(&Books) -> bool) {
        let bound = Duration::from_secs(60);
        courier::testing::until(&self.changed, bound, what, || done(self)).await;
    }
}

struct Keeper(Arc<Books>);

struct DropGuard(Arc<Books>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Ledger for Keeper {
    async fn record(&self, id: u64) -> u64 {
        self.0.run(id)
    }
    async fn read(&self, id: u64) -> u64 {
        self.0.run(id)
    }
    async fn hold(&self) -> u32 {
        let _guard = DropGuard(Arc::clone(&self.0));
        self.0.started.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
        std::future::pending::<()>().await;
        0
    }
    async fn note(&self, id: u64) {
        self.0.run(id);
    }
    async fn fill(&self, id: u64, n: u32) -> ByteBuf {
        self.0.run(id);
        ByteBuf::from(vec![7; n as usize])
    }
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String> {
        let client = ctx.client(Cbor::default()).map_err(|e| e.to_string())?;
        DoublerClient::new(client)
            .double(x)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A server for `Ledger` on a fresh in-process name, with `limits`.
fn serve(limits: Limits) -> (String, Arc<Books>, Server<Cbor>) {
    let name = unique_name("sessions");
    let listener = mem::Listener::bind(name.clone()).unwrap();
    let books = Arc::new(Books::default());
    let server = Server::builder(Cbor::default())
        .service(LedgerServer::new(Keeper(Arc::clone(&books))))
        .limits(limits)
        .build();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    (name, books, server)
}

/// 10,000 at-most-once calls from 8 tasks through a link that drops 5 % of frames,
/// duplicates 1 % and is cut 3 times: every call completes, and every method ran exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_calls_through_a_faulty_link_run_exactly_once() {
    within(async {
        const TASKS: u64 = 8;
        const PER_TASK: u64 = 1250;
        let (name, books, _server) = serve(Limits::default());
        let faults = Faults::new(12).drop(0.05).duplicate(0.01);
        let connector = FaultyConnector::new(mem::Dialer::new(name), faults);
        let ledger = LedgerClient::new(
            Client::builder(Cbor::default())
                .attempt_timeout(Duration::from_millis(50))
                .connect(&connector)
                .await
                .unwrap(),
        );
        let progress = Arc::new(Progress::default());
        let workers = (0..TASKS).map(|t| {
            let ledger = ledger.clone();
            let progress = Arc::clone(&progress);
            tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let id = t * PER_TASK + i;
                    assert_eq!(ledger.record(id).await, Ok(id));
                    progress.step();
                }
            })
        });
        let workers: Vec<_> = workers.collect();
        // Three cuts, at a quarter, a half and three quarters of the calls.
        let cuts = connector.cuts();
        for quarter in 1..=3 {
            progress.reached(quarter * TASKS * PER_TASK / 4).await;
            cuts.cut();
        }
        for w in workers {
            w.await.unwrap();
        }
        let runs = books.runs.lock().unwrap();
        let total = TASKS * PER_TASK;
        assert_eq!(
            lost_and_repeated(&runs, 0..total),
            (0, 0),
            "lost and repeated executions"
        );
        assert_eq!(runs.len() as u64, total);
        let counts = connector.counts();
        assert_eq!(counts.cuts.load(Ordering::Relaxed), 3);
        assert!(counts.dropped.load(Ordering::Relaxed) > 0);
        assert!(counts.duplicated.load(Ordering::Relaxed) > 0);
    })
    .await
}

/// A client that comes back with a newer epoch of its identity has its old incarnation's
/// handlers aborted; the old incarnation is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_epoch_aborts_the_old_handlers() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let dialer = mem::Dialer::new(name);
        let old = Identity::new(0xC0FFEE, 1);
        let first = LedgerClient::new(
            Client::builder(Cbor::default())
                .identity(old)
                .reconnect(ReconnectPolicy::default().give_up_after(Duration::from_secs(1)))
                .connect(&dialer)
                .await
                .unwrap(),
        );
        let held = tokio::spawn({
            let first = first.clone();
            async move { first.hold().await }
        });
        books
            .until("the old handler started", |b| {
                b.started.load(Ordering::SeqCst) == 1
            })
            .await;
        let newer = LedgerClient::new(
            Client::builder(Cbor::default())
                .identity(Identity::new(0xC0FFEE, 2))
                .connect(&dialer)
                .await
                .unwrap(),
        );
        books
            .until("the old handler was dropped", |b| {
                b.dropped.load(Ordering::SeqCst) == 1
            })
            .await;
        assert_eq!(newer.record(1).await, Ok(1));
        // The old incarnation's own link still stands; a new one is refused as stale.
        let refused = Client::builder(Cbor::default())
            .identity(old)
            .connect(&dialer)
            .await
            .unwrap_err();
        assert_eq!(refused, RpcError::Handshake(HandshakeError::StaleEpoch));
        held.abort();
    })
    .await
}

/// Under 100,000 at-most-once calls, with one call held so that the client's watermark cannot
/// pass it (nothing is released), the reply cache never holds more than its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_cache_stays_within_its_bytes() {
    within(async {
        const LIMIT: usize = 64 << 10;
        let (name, books, server) = serve(Limits::default().reply_cache_bytes(LIMIT));
        let ledger = LedgerClient::new(
            Client::builder(Cbor::default())
                .connect(&mem::Dialer::new(name))
                .await
                .unwrap(),
        );
        let held = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.hold().await }
        });
        books
            .until("the held call started", |b| {
                b.started.load(Ordering::SeqCst) == 1
            })
            .await;
        let peak = Arc::new(AtomicU64::new(0));
        let workers = (0..4u64).map(|t| {
            let (ledger, server, peak) = (ledger.clone(), server.clone(), Arc::clone(&peak));
            tokio::spawn(async move {
                for i in 0..25_000u64 {
                    let id = t * 25_000 + i;
                    assert_eq!(ledger.record(id).await, Ok(id));
                    peak.fetch_max(server.reply_cache_bytes() as u64, Ordering::Relaxed);
                }
            })
        });
        for w in workers.collect::<Vec<_>>() {
            w.await.unwrap();
        }
        let peak = peak.load(Ordering::Relaxed) as usize;
        assert!(peak <= LIMIT, "the cache held {peak} bytes, over {LIMIT}");
        assert!(
            peak > LIMIT / 2,
            "the cache never filled ({peak} bytes): nothing tested"
        );
        held.abort();
    })
    .await
}

/// A client whose server is gone and does not come back fails its calls within their
/// deadline, and with `ConnectionLost` once its reconnect policy gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_is_bounded_by_the_policy_and_the_deadline() {
    within(async {
        let name = unique_name("sessions-gone");
        // The server runs on a runtime of its own, stopped at once as a crash would stop it.
        let server_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = mem::Listener::bind(name.clone()).unwrap();
        let server = Server::builder(Cbor::default())
            .service(LedgerServer::new(Keeper(Arc::default())))
            .build();
        server_runtime.spawn(async move { server.serve(listener).await });
        let ledger = LedgerClient::new(
            Client::builder(Cbor::default())
                .reconnect(ReconnectPolicy::default().give_up_after(Duration::from_millis(500)))
                .connect(&mem::Dialer::new(name))
                .await
                .unwrap(),
        );
        assert_eq!(ledger.read(1).await, Ok(1));
        // Dropping the runtime returns once every task of the server is gone (a shutdown in
        // the background could still answer a call in the poll it is finishing).
        tokio::task::spawn_blocking(move || drop(server_runtime))
            .await
            .unwrap();
        let hurried = ledger.with_options(CallOptions::new().timeout(Duration::from_millis(50)));
        let err = hurried.read(2).await.unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::DeadlineExceeded | RpcError::ConnectionLost(_)
            ),
            "{err:?}"
        );
        let err = ledger.read(3).await.unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
        // A one-way call waits for a link through one round of reconnecting, then gives up.
        let err = ledger.note(4).await.unwrap_err();
        assert!(matches!(err, RpcError::ConnectionLost(_)), "{err:?}");
    })
    .await
}

/// After a reconnect, the client's exported services answer the server's calls back on the new
/// link, and idempotent calls carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_services_answer_again_after_a_reconnect() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let connector = FaultyConnector::new(mem::Dialer::new(name), Faults::new(3));
        let ledger = LedgerClient::new(
            Client::builder(Cbor::default())
                .export(DoublerServer::new(Twice))
                .connect(&connector)
                .await
                .unwrap(),
        );
        assert_eq!(ledger.ask_back(4).await, Ok(Ok(8)));
        for round in 1..=3u32 {
            connector.cuts().cut();
            assert_eq!(ledger.ask_back(round).await, Ok(Ok(2 * round)));
            assert_eq!(ledger.read(u64::from(round)).await, Ok(u64::from(round)));
        }
        assert_eq!(ledger.client().reconnections(), 3);
        assert_eq!(books.runs.lock().unwrap().len(), 3);
    })
    .await
}

/// Many large replies at once overflow a small reply cache: its oldest outcomes are evicted,
/// and calls that arrive after later ones were evicted (here, held back by the link) still run:
/// they are late, not copies. With nothing lost, no call gets `ReplyEvicted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_never_refuse_a_call_that_is_merely_late() {
    within(async {
        const SIZE: u32 = 64 << 10;
        let (name, books, server) = serve(Limits::default().reply_cache_bytes(4 * SIZE as usize));
        let late = Faults::new(31).delay(0.05, Duration::from_millis(20));
        let connector = FaultyConnector::new(mem::Dialer::new(name), late);
        let ledger = LedgerClient::new(
            Client::builder(Cbor::default())
                .connect(&connector)
                .await
                .unwrap(),
        );
        let workers: Vec<_> = (0..16u64)
            .map(|t| {
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    for i in 0..100u64 {
                        let got = ledger.fill(t * 100 + i, SIZE).await.unwrap();
                        assert_eq!(got.as_slice().len(), SIZE as usize);
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        assert_eq!(books.runs.lock().unwrap().len(), 1600);
        assert!(connector.counts().delayed.load(Ordering::Relaxed) > 0);
        assert!(server.reply_cache_bytes() <= 4 * SIZE as usize + 64 * 16);
    })
    .await
}
