//! What the server answers at the edges of a session, over in-process links, some through a
//! raw client that speaks the wire as PROTOCOL.md describes it: copies it will not run are
//! refused with a code that says why (below the watermark, cancelled, superseded, another
//! method), calls cut short by a shutdown are answered, callback deliveries are bounded, and
//! epochs cannot jump arbitrarily far ahead.
#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use courier::transport::{mem, Connector, Link};
use courier::wire::{
    ErrorCode, ErrorPayload, FrameKind, Header, Hello, Welcome, WelcomeStatus, HEADER_LEN,
    PROTOCOL_VERSION,
};
use courier::{Callback, Client, Codec, Limits, MethodDesc, RpcError, Server};
use courier_cbor::Cbor;
use tokio::sync::{mpsc, Notify};

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test timed out")
}

#[courier::service]
pub trait Desk {
    /// At-most-once: counts its runs.
    async fn record(&self, id: u64) -> u64;
    /// Another method with the same arguments.
    async fn other(&self, id: u64) -> u64;
    /// Never returns; counts the handlers dropped.
    async fn hold(&self) -> u32;
    /// Delivers one value to `to` from a task of its own, and reports how that went.
    async fn notify(&self, to: Callback<u32>);
}

#[derive(Default)]
struct Books {
    runs: Mutex<HashMap<u64, u32>>,
    held: AtomicU32,
    dropped: AtomicU32,
    changed: Notify,
    deliveries: Mutex<Vec<Result<(), RpcError>>>,
}

impl Books {
    async fn until(&self, what: &str, done: impl Fn(&Books) -> bool) {
        let bound = Duration::from_secs(15);
        courier::testing::until(&self.changed, bound, what, || done(self)).await;
    }

    fn ran(&self, id: u64) -> u64 {
        *self.runs.lock().unwrap().entry(id).or_insert(0) += 1;
        self.changed.notify_waiters();
        id
    }
}

struct Dropped(Arc<Books>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

struct Clerk(Arc<Books>);

impl Desk for Clerk {
    async fn record(&self, id: u64) -> u64 {
        self.0.ran(id)
    }
    async fn other(&self, id: u64) -> u64 {
        self.0.ran(id)
    }
    async fn hold(&self) -> u32 {
        let _guard = Dropped(Arc::clone(&self.0));
        self.0.held.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
        std::future::pending::<()>().await;
        0
    }
    async fn notify(&self, to: Callback<u32>) {
        let books = Arc::clone(&self.0);
        tokio::spawn(async move {
            let delivered = to.call(1).await;
            books.deliveries.lock().unwrap().push(delivered);
            books.changed.notify_waiters();
        });
    }
}

fn serve(limits: Limits) -> (String, Arc<Books>, Server<Cbor>) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "edges-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let listener = mem::Listener::bind(name.clone()).unwrap();
    let books = Arc::new(Books::default());
    let server = Server::builder(Cbor::default())
        .service(DeskServer::new(Clerk(Arc::clone(&books))))
        .limits(limits)
        .build();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    (name, books, server)
}

const RECORD: MethodDesc = DeskClient::<Cbor>::RECORD;
const OTHER: MethodDesc = DeskClient::<Cbor>::OTHER;
const HOLD: MethodDesc = DeskClient::<Cbor>::HOLD;

/// A client that speaks the wire itself, as PROTOCOL.md describes it.
struct Raw {
    link: Link,
}

impl Raw {
    /// Connects to `name` and says hello as `client_id` with `epoch`; the Welcome's status.
    async fn hello(name: &str, client_id: u128, epoch: u64) -> (Raw, WelcomeStatus) {
        let link = mem::Dialer::new(name.to_owned()).connect().await.unwrap();
        let mut raw = Raw { link };
        let hello = Hello {
            version: u16::from(PROTOCOL_VERSION),
            codec: "cbor".to_owned(),
            client_id,
            epoch,
        };
        raw.send(hello.encode()).await;
        let welcome = Welcome::decode(&raw.recv().await.unwrap()).unwrap();
        (raw, welcome.status)
    }

    async fn send(&mut self, bytes: Bytes) {
        let mut buf = self.link.tx.buffer(bytes.len()).await.unwrap();
        buf.put_slice(&bytes);
        self.link.tx.send(buf).await.unwrap();
    }

    async fn recv(&mut self) -> Option<Bytes> {
        self.link.rx.recv().await.unwrap()
    }

    /// Sends call `id` to `method` with one `u64` argument.
    async fn call(&mut self, id: u64, method: &MethodDesc, arg: Option<u64>) {
        let mut payload = Vec::new();
        match arg {
            Some(a) => Cbor::default().encode(&(a,), &mut payload).unwrap(),
            None => Cbor::default().encode(&(), &mut payload).unwrap(),
        }
        self.frame(FrameKind::Call, id, method, &payload).await;
    }

    async fn frame(&mut self, kind: FrameKind, id: u64, method: &MethodDesc, payload: &[u8]) {
        let mut header = Header::new(kind, id, method.interface, method.method);
        header.version = method.version;
        header.payload_len = payload.len() as u32;
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        header.encode(&mut frame);
        frame.extend_from_slice(payload);
        self.send(frame.into()).await;
    }

    /// The next frame: its header and, for an Error, its code.
    async fn answer(&mut self) -> (Header, Option<ErrorCode>) {
        let frame = self.recv().await.expect("an answer, not the end");
        let header = Header::decode(&frame).unwrap();
        let code = (header.kind == FrameKind::Error)
            .then(|| ErrorPayload::decode(&frame[HEADER_LEN..]).code)
            .flatten();
        (header, code)
    }
}

/// A copy below the client's watermark is refused with Released, not ignored: a caller
/// without a deadline of its own does not wait for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_below_the_watermark_is_refused_with_released() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let (mut raw, status) = Raw::hello(&name, 0xA1, 1).await;
        assert_eq!(status, WelcomeStatus::Accepted);
        raw.call(5, &RECORD, Some(5)).await;
        assert_eq!(raw.answer().await.0.kind, FrameKind::Reply);
        let release = Header::new(
            FrameKind::Release,
            10,
            courier::InterfaceId::new(0),
            courier::MethodId::new(0),
        );
        raw.send(Bytes::copy_from_slice(&release.to_bytes())).await;
        raw.call(5, &RECORD, Some(5)).await;
        let (header, code) = raw.answer().await;
        assert_eq!((header.call_id, code), (5, Some(ErrorCode::Released)));
        assert_eq!(books.runs.lock().unwrap()[&5], 1);
    })
    .await
}

/// A copy of a cancelled call is refused with Cancelled; a copy attached on another link
/// when the call is cancelled is told so at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_cancelled_call_are_refused_with_cancelled() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let (mut first, _) = Raw::hello(&name, 0xB2, 1).await;
        let (mut second, _) = Raw::hello(&name, 0xB2, 1).await;
        first.call(7, &HOLD, None).await;
        books
            .until("the call runs", |b| b.held.load(Ordering::SeqCst) == 1)
            .await;
        // A copy on the second link attaches to the running call.
        second.call(7, &HOLD, None).await;
        first.frame(FrameKind::Cancel, 7, &HOLD, &[]).await;
        books
            .until("the handler is dropped", |b| {
                b.dropped.load(Ordering::SeqCst) == 1
            })
            .await;
        let (header, code) = second.answer().await;
        assert_eq!((header.call_id, code), (7, Some(ErrorCode::Cancelled)));
        // A later copy is refused the same way, and does not run.
        first.call(7, &HOLD, None).await;
        let (header, code) = first.answer().await;
        assert_eq!((header.call_id, code), (7, Some(ErrorCode::Cancelled)));
        assert_eq!(books.held.load(Ordering::SeqCst), 1);
    })
    .await
}

/// A call on a connection whose epoch a newer hello replaced is refused with Superseded, and
/// the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_of_a_superseded_epoch_is_refused_and_its_connection_closes() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let (mut old, _) = Raw::hello(&name, 0xC3, 1).await;
        let (_new, status) = Raw::hello(&name, 0xC3, 2).await;
        assert_eq!(status, WelcomeStatus::Accepted);
        old.call(1, &RECORD, Some(1)).await;
        let (header, code) = old.answer().await;
        assert_eq!((header.call_id, code), (1, Some(ErrorCode::Superseded)));
        assert_eq!(old.recv().await, None, "the connection closes");
        assert!(books.runs.lock().unwrap().is_empty());
    })
    .await
}

/// A copy must call what the call it copies called: the same id for another method is
/// refused with Protocol, never answered with the other method's cached reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_naming_another_method_is_refused() {
    within(async {
        let (name, books, _server) = serve(Limits::default());
        let (mut raw, _) = Raw::hello(&name, 0xD4, 1).await;
        raw.call(9, &RECORD, Some(9)).await;
        assert_eq!(raw.answer().await.0.kind, FrameKind::Reply);
        raw.call(9, &OTHER, Some(9)).await;
        let (header, code) = raw.answer().await;
        assert_eq!(
            (header.call_id, header.method, code),
            (9, OTHER.method, Some(ErrorCode::Protocol))
        );
        // The real copy still gets its cached reply.
        raw.call(9, &RECORD, Some(9)).await;
        assert_eq!(raw.answer().await.0.kind, FrameKind::Reply);
        assert_eq!(books.runs.lock().unwrap()[&9], 1);
    })
    .await
}

/// A hello whose epoch is far ahead of the server's clock is refused: nobody can lock a
/// client id out for good with epoch `u64::MAX`. The real client, with a sane epoch, is then
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_far_ahead_is_refused() {
    within(async {
        let (name, _books, _server) = serve(Limits::default());
        let (_raw, status) = Raw::hello(&name, 0xE5, u64::MAX).await;
        assert_eq!(status, WelcomeStatus::EpochOutOfRange);
        let identity = courier::Identity::new(0xE5, 1);
        let client = Client::builder(Cbor::default())
            .identity(identity)
            .connect(&mem::Dialer::new(name))
            .await
            .unwrap();
        assert_eq!(DeskClient::new(client).record(3).await, Ok(3));
    })
    .await
}

/// A server that shuts down answers the calls its grace cut short (outcome unknown) before
/// it closes, rather than leave their callers to wait for a reconnect that finds nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_short_by_a_shutdown_are_answered() {
    within(async {
        let (name, books, server) = serve(Limits::default());
        let client = Client::builder(Cbor::default())
            .connect(&mem::Dialer::new(name))
            .await
            .unwrap();
        let desk = DeskClient::new(client);
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let desk = desk.clone();
                tokio::spawn(async move { desk.hold().await })
            })
            .collect();
        books
            .until("the calls run", |b| b.held.load(Ordering::SeqCst) == 4)
            .await;
        let report = server.shutdown(Duration::from_millis(50)).await;
        assert_eq!(report.cancelled, 4);
        for call in calls {
            let outcome = call.await.unwrap();
            assert!(
                matches!(outcome, Err(RpcError::OutcomeUnknown(_))),
                "{outcome:?}"
            );
        }
    })
    .await
}

/// Callback deliveries a caller never takes are bounded per connection, in number and in
/// time: past the limit a delivery fails at once with Overloaded, and each pending one fails
/// with DeadlineExceeded when its time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_deliveries_are_bounded_in_number_and_time() {
    within(async {
        let limits = Limits::default()
            .max_callback_deliveries(4)
            .callback_timeout(Duration::from_millis(500));
        let (name, books, _server) = serve(limits);
        let client = Client::builder(Cbor::default())
            .connect(&mem::Dialer::new(name))
            .await
            .unwrap();
        let desk = DeskClient::new(client);
        let mut receivers = Vec::new();
        for _ in 0..10 {
            // A channel that is full already, and never read: the delivery never completes.
            let (tx, rx) = mpsc::channel(1);
            tx.send(0).await.unwrap();
            receivers.push(rx);
            desk.notify(Callback::from_sender(tx)).await.unwrap();
        }
        books
            .until("every delivery ends", |b| {
                b.deliveries.lock().unwrap().len() == 10
            })
            .await;
        let deliveries = books.deliveries.lock().unwrap();
        let overloaded = deliveries
            .iter()
            .filter(|d| matches!(d, Err(RpcError::Overloaded(_))))
            .count();
        let late = deliveries
            .iter()
            .filter(|d| matches!(d, Err(RpcError::DeadlineExceeded)))
            .count();
        assert_eq!((overloaded, late), (6, 4), "{deliveries:?}");
    })
    .await
}
