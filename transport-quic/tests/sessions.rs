//! At-most-once at the edges of a session, end to end over real QUIC on loopback: a call in
//! flight when the server forgets the session (its linger passed, it was evicted to make room)
//! fails as "outcome unknown" and never runs twice; a sibling's goodbye does not end a session
//! another client still uses; a clean client's goodbye arrives, and ends its session at once.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

mod support {
    pub mod relay;
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BufMut;
use courier::wire::{Hello, Welcome, WelcomeStatus, PROTOCOL_VERSION};
use courier::{Client, Identity, Limits, ReconnectPolicy, RpcError, Server};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use support::relay::{Relay, Weather};
use tokio::sync::{Notify, Semaphore};

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

#[courier::service]
pub trait Edge {
    /// At-most-once: counts its run, then waits for the gate.
    async fn work(&self, id: u64) -> u64;
    /// Answers at once.
    async fn echo(&self, id: u64) -> u64;
}

struct Books {
    runs: Mutex<HashMap<u64, u32>>,
    /// Handlers dropped before they finished.
    dropped: AtomicU32,
    changed: Notify,
    gate: Semaphore,
}

impl Default for Books {
    fn default() -> Self {
        Books {
            runs: Mutex::default(),
            dropped: AtomicU32::new(0),
            changed: Notify::new(),
            gate: Semaphore::new(0),
        }
    }
}

impl Books {
    fn runs(&self, id: u64) -> u32 {
        self.runs.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    /// Waits until `done` holds (each change wakes it; no sleeping).
    async fn until(&self, what: &str, done: impl Fn(&Books) -> bool) {
        let bound = Duration::from_secs(45);
        courier::testing::until(&self.changed, bound, what, || done(self)).await;
    }
}

/// Counts a handler dropped before it finished.
struct Unfinished(Arc<Books>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.changed.notify_waiters();
        }
    }
}

struct Lab(Arc<Books>);

impl Edge for Lab {
    async fn work(&self, id: u64) -> u64 {
        let mut guard = Unfinished(Arc::clone(&self.0), false);
        *self.0.runs.lock().unwrap().entry(id).or_insert(0) += 1;
        self.0.changed.notify_waiters();
        let _permit = self.0.gate.acquire().await.unwrap();
        guard.1 = true;
        id
    }
    async fn echo(&self, id: u64) -> u64 {
        id
    }
}

/// Both sides see a cut path within a second.
fn quick_options() -> QuicOptions {
    QuicOptions::default()
        .idle_timeout(Duration::from_secs(1))
        .keep_alive(Some(Duration::from_millis(200)))
}

struct Setup {
    server: Server<Cbor>,
    books: Arc<Books>,
    addr: SocketAddr,
    cert: DevCert,
}

fn serve(limits: Limits) -> Setup {
    let cert = DevCert::localhost().unwrap();
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls::dev(&cert),
        quick_options(),
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let books = Arc::new(Books::default());
    let server = Server::builder(Cbor::default())
        .service(EdgeServer::new(Lab(Arc::clone(&books))))
        .limits(limits)
        .build();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    Setup {
        server,
        books,
        addr,
        cert,
    }
}

fn connector(setup: &Setup, to: SocketAddr) -> QuicConnector {
    QuicConnector::new(
        to,
        "localhost",
        ClientTls::trusting_dev(&setup.cert),
        quick_options(),
    )
    .unwrap()
}

async fn relay(setup: &Setup) -> Relay {
    let calm = Weather {
        seed: 1,
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };
    Relay::start(setup.addr, calm).await
}

/// A patient client, as the docs suggest: it keeps reconnecting for five minutes.
async fn patient(setup: &Setup, connector: &QuicConnector, identity: Identity) -> EdgeClient<Cbor> {
    let policy = ReconnectPolicy::default().give_up_after(Duration::from_secs(300));
    let client = Client::builder(Cbor::default())
        .identity(identity)
        .reconnect(policy)
        .connect(connector)
        .await
        .unwrap();
    let edge = EdgeClient::new(client);
    assert_eq!(
        edge.echo(setup.addr.port().into()).await,
        Ok(setup.addr.port().into())
    );
    edge
}

/// Waits until the server has `n` connections open (it learns of a cut path at its idle
/// timeout, a second here).
async fn until_connections(server: &Server<Cbor>, n: usize) {
    while server.connections() != n {
        tokio::task::yield_now().await;
    }
}

/// Heals the path and lets handlers finish: `call`, whose session the server forgot while
/// the path was cut, must fail as "outcome unknown" having run once.
async fn heal_and_expect_unknown(
    relay: &Relay,
    books: &Books,
    call: tokio::task::JoinHandle<Result<u64, RpcError>>,
) {
    relay.restore();
    books.gate.add_permits(1000);
    let outcome = call.await.unwrap();
    assert!(
        matches!(outcome, Err(RpcError::OutcomeUnknown(_))),
        "{outcome:?}"
    );
    assert_eq!(books.runs(1), 1, "the method ran once");
}

/// A call in flight on a link that stays down past the server's linger: the server forgets
/// the session (dropping the handler); the client comes back, learns from the Welcome that its
/// session is gone, and fails the call as "outcome unknown" instead of sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outliving_its_session_fails_as_unknown_and_does_not_run_twice() {
    within(async {
        let setup = serve(Limits::default().session_linger(Duration::from_millis(300)));
        let relay = relay(&setup).await;
        let edge = patient(&setup, &connector(&setup, relay.addr()), Identity::random()).await;
        let call = tokio::spawn({
            let edge = edge.clone();
            async move { edge.work(1).await }
        });
        let books = &setup.books;
        books.until("the call runs", |b| b.runs(1) == 1).await;
        relay.cut();
        books
            .until("the linger passes and the handler is dropped", |b| {
                b.dropped.load(Ordering::SeqCst) == 1
            })
            .await;
        heal_and_expect_unknown(&relay, books, call).await;
        assert_eq!(edge.echo(2).await, Ok(2), "the client goes on");
    })
    .await
}

/// Says hello with a fresh client id, then hangs up without a goodbye: a session that lingers.
async fn hello_and_hang_up(setup: &Setup) {
    use courier::transport::Connector;
    let link = connector(setup, setup.addr).connect().await.unwrap();
    let hello = Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: "cbor".to_owned(),
        client_id: Identity::random().client_id(),
        epoch: 1,
    }
    .encode();
    let mut buf = link.tx.buffer(hello.len()).await.unwrap();
    buf.put_slice(&hello);
    link.tx.send(buf).await.unwrap();
    let mut rx = link.rx;
    let welcome = Welcome::decode(&rx.recv().await.unwrap().unwrap()).unwrap();
    assert_eq!(welcome.status, WelcomeStatus::Accepted);
    link.tx.close();
}

/// Hellos with fresh ids fill the server's sessions while a client's link is down: its session,
/// detached longest, is ended to make room, well inside its linger. The client comes back and
/// fails its call as "outcome unknown"; the method ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_fails_its_call_as_unknown_and_does_not_run_it_twice() {
    within(async {
        let limits = Limits::default()
            .session_linger(Duration::from_secs(60))
            .max_sessions(2);
        let setup = serve(limits);
        let relay = relay(&setup).await;
        let edge = patient(&setup, &connector(&setup, relay.addr()), Identity::random()).await;
        let call = tokio::spawn({
            let edge = edge.clone();
            async move { edge.work(1).await }
        });
        let books = &setup.books;
        books.until("the call runs", |b| b.runs(1) == 1).await;
        relay.cut();
        until_connections(&setup.server, 0).await;
        // The victim plus one hung-up session fill the bound; the next hello evicts the victim.
        hello_and_hang_up(&setup).await;
        hello_and_hang_up(&setup).await;
        books
            .until("the evicted session's handler is dropped", |b| {
                b.dropped.load(Ordering::SeqCst) == 1
            })
            .await;
        heal_and_expect_unknown(&relay, books, call).await;
    })
    .await
}

/// Two clients of one process share an identity, and so a session. While B's link is down,
/// A is dropped: A must not end the session B still uses. B reconnects, its copy finds the
/// running call, and the method runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siblings_goodbye_does_not_end_a_shared_session() {
    within(async {
        let setup = serve(Limits::default().session_linger(Duration::from_secs(60)));
        let relay = relay(&setup).await;
        let identity = Identity::random();
        let a = patient(&setup, &connector(&setup, setup.addr), identity).await;
        let b = patient(&setup, &connector(&setup, relay.addr()), identity).await;
        let call = tokio::spawn({
            let b = b.clone();
            async move { b.work(1).await }
        });
        let books = &setup.books;
        books.until("B's call runs", |b| b.runs(1) == 1).await;
        relay.cut();
        until_connections(&setup.server, 1).await;
        drop(a);
        until_connections(&setup.server, 0).await;
        relay.restore();
        books.gate.add_permits(1000);
        assert_eq!(call.await.unwrap(), Ok(1), "the session was still there");
        assert_eq!(books.runs(1), 1, "the method ran once");
        assert_eq!(books.dropped.load(Ordering::SeqCst), 0);
    })
    .await
}

/// A client that closes cleanly over QUIC ends its session at once: the goodbye rides the
/// connection's close, so the close cannot discard it, and the server drops the client's
/// running handler now rather than after the linger (a minute here, past the test's bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_over_quic_ends_the_session_at_once() {
    within(async {
        let setup = serve(Limits::default().session_linger(Duration::from_secs(120)));
        let edge = patient(&setup, &connector(&setup, setup.addr), Identity::random()).await;
        // Acknowledged: dropping the reply no longer cancels the call, so only the session's
        // end can drop its handler.
        let pending = edge.work_acked(1).await.unwrap();
        let books = &setup.books;
        books.until("the call runs", |b| b.runs(1) == 1).await;
        drop(pending);
        drop(edge);
        books
            .until("the goodbye ends the session and drops the handler", |b| {
                b.dropped.load(Ordering::SeqCst) == 1
            })
            .await;
    })
    .await
}
