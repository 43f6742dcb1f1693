//! The transport conformance suite: what every transport must do, written once.
//!
//! Enabled by the `testing` feature. A transport's tests implement [`Harness`] (how to bind a
//! listener and make a connector to it) and invoke [`conformance_tests!`](crate::conformance_tests)
//! once; that expands to one `#[test]` per behaviour, so every transport is held to the same
//! rules on call kinds, payload sizes, frame limits, cancellation, peer death, peers that stop
//! reading, handshakes that never come, connection churn and hostile frames. The in-process,
//! QUIC and shared-memory transports all run it; a transport written outside this workspace
//! should too.
//!
//! ```no_run
//! // tests/conformance.rs of a transport crate
//! use courier::testing::Harness;
//! use courier::transport::mem;
//! use courier::TransportError;
//!
//! struct Mem;
//!
//! impl Harness for Mem {
//!     type Listener = mem::Listener;
//!     type Connector = mem::Dialer;
//!     type Address = String;
//!
//!     fn bind(&self, _frame_limit: usize) -> Result<(mem::Listener, String), TransportError> {
//!         let name = courier::testing::unique_name("my-transport");
//!         Ok((mem::Listener::bind(name.clone())?, name))
//!     }
//!
//!     fn connector(&self, name: &String, _frame_limit: usize)
//!         -> Result<mem::Dialer, TransportError>
//!     {
//!         Ok(mem::Dialer::new(name.clone()))
//!     }
//! }
//!
//! courier::conformance_tests!(Mem, courier_cbor::Cbor::default());
//! # fn main() {}
//! ```
//!
//! # How it measures
//!
//! The server runs on a runtime of its own, so the suite can count the server's live tasks
//! (tokio's runtime metrics) apart from the client's; open descriptors are counted in
//! `/proc/self/fd`. Leak checks compare those counts after the clients have gone with the
//! counts before they came, waiting (within a bound) for the transport to finish closing. The
//! tests of one binary run one at a time, since descriptors are counted per process.
//!
//! Nothing here measures time: a behaviour that "happens promptly" is one that happens before
//! the test's overall timeout, which is far shorter than any transport's idle timeout the
//! harness should configure (a few seconds at most, so peer death is seen).

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes};
use tokio::runtime::Runtime;
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::codec::Codec;
use crate::error::{HandshakeError, RpcError, TransportError};
use crate::transport::{BoxListener, Connector, DynConnector, Link, Listener};
use crate::wire::{
    ErrorPayload, FrameKind, Header, Hello, Welcome, WelcomeStatus, HEADER_LEN, PROTOCOL_VERSION,
};
use crate::{CallOptions, Client, Context, Limits, ReconnectPolicy, Server};

pub mod faulty;
pub mod suite;

/// What the suite needs from a transport: a listener and a connector that reaches it.
pub trait Harness: Send + Sync + 'static {
    /// The transport's listener.
    type Listener: Listener;
    /// The transport's connector.
    type Connector: Connector + Clone + Send + Sync + 'static;
    /// What a connector needs to reach a listener (an address, a path, a certificate).
    type Address: Send + 'static;

    /// Binds a new listener whose links read frames of up to `server_frame_limit` bytes.
    /// Called on the server's runtime, so a transport may spawn its listener's tasks here.
    fn bind(
        &self,
        server_frame_limit: usize,
    ) -> Result<(Self::Listener, Self::Address), TransportError>;

    /// A connector to the listener at `address`, whose links read frames of up to
    /// `client_frame_limit` bytes. Called on the client's runtime.
    ///
    /// Timeouts the transport has for a silent peer (QUIC's idle timeout) should be a few
    /// seconds at most, on both sides, so that the peer-death tests end well within their
    /// bound.
    fn connector(
        &self,
        address: &Self::Address,
        client_frame_limit: usize,
    ) -> Result<Self::Connector, TransportError>;

    /// How many calls one connection may keep open in the transport itself, each with a task
    /// of its own, beyond the engine's running handlers (QUIC: its concurrent-stream limit).
    /// The suite allows the server that many more tasks while a peer stops reading. Default: 0.
    fn open_calls_per_connection(&self) -> usize {
        0
    }

    /// Whether each link is one byte stream on which a frame's header is all that says where it
    /// ends (TCP). A frame that the suite sends with a header claiming more payload than it
    /// sends would then swallow the frames after it, so on such a transport the suite sends
    /// the whole declared payload of an oversized frame. Default: false (frames keep their own
    /// bounds: in-process messages, QUIC streams, shared-memory records).
    fn one_byte_stream(&self) -> bool {
        false
    }

    /// A payload larger than every buffer, window and ring the transport has. Default: 12 MiB.
    fn large_payload(&self) -> usize {
        12 << 20
    }

    /// What the transport's links in this process are doing now (positions, flags, who waits
    /// for whom): printed by a load test's watchdog when the test runs past its bound, so
    /// that a rare stall leaves evidence. Default: nothing to add.
    fn report(&self) -> String {
        String::new()
    }
}

/// How long a load test of the suite may run before its watchdog reports and fails it: far
/// above what any transport takes on a loaded machine, and below [`run`]'s overall timeout.
pub const LOAD_BOUND: Duration = Duration::from_secs(60);

/// Counts progress that tests wait on without sleeping: workers [`Progress::step`], a test
/// [`Progress::reached`] a mark (to cut a link at a quarter of the calls, say).
#[derive(Debug, Default)]
pub struct Progress {
    done: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
}

impl Progress {
    /// One more done.
    pub fn step(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// How many are done.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Resolves once `mark` are done.
    pub async fn reached(&self, mark: u64) {
        loop {
            let changed = self.changed.notified();
            if self.done.load(Ordering::SeqCst) >= mark {
                return;
            }
            changed.await;
        }
    }
}

/// How many of `ids` never ran, and how many ran more than once, by a count of runs per id.
pub fn lost_and_repeated(
    runs: &std::collections::HashMap<u64, u32>,
    ids: std::ops::Range<u64>,
) -> (usize, usize) {
    let lost = ids.clone().filter(|id| !runs.contains_key(id)).count();
    let repeated = ids
        .filter(|id| runs.get(id).is_some_and(|n| *n > 1))
        .count();
    (lost, repeated)
}

/// Runs `work`, which counts what it finishes in `progress`. Past `bound` it fails the test
/// (panics) with what was done, how much more in the second that followed (none: a hang; a
/// little: a crawl), and `report`, which it awaits then. The work goes on being polled
/// meanwhile, so the report shows the stall, not a test the watchdog stopped.
pub async fn watchdog<F: Future, R: Future<Output = String>>(
    what: &str,
    bound: Duration,
    progress: &Progress,
    report: R,
    work: F,
) -> F::Output {
    let watch = async {
        tokio::time::sleep(bound).await;
        let before = progress.done();
        let report = report.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        format!(
            "{what}: no end within {bound:?}; {before} done, {} more in the next second; {report}",
            progress.done() - before
        )
    };
    tokio::select! {
        output = work => output,
        report = watch => panic!("{report}"),
    }
}

/// Waits until `done` holds, looking again each time `changed` is notified (whoever changes
/// what `done` reads notifies its waiters): no sleeping. Panics, naming `what`, if `done`
/// does not hold within `bound`.
pub async fn until(changed: &Notify, bound: Duration, what: &str, done: impl Fn() -> bool) {
    let wait = async {
        loop {
            let notified = changed.notified();
            if done() {
                return;
            }
            notified.await;
        }
    };
    tokio::time::timeout(bound, wait)
        .await
        .unwrap_or_else(|_| panic!("waited {bound:?} for: {what}"));
}

/// A name no other test in this process uses: for socket paths and in-process names.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs one suite test: a server runtime and a client runtime of its own, one test of the
/// binary at a time, within an overall timeout. Used by
/// [`conformance_tests!`](crate::conformance_tests).
pub fn run<H, C, F, Fut>(harness: H, codec: C, test: F)
where
    H: Harness,
    C: Codec,
    F: FnOnce(Arc<Env<H>>, C) -> Fut,
    Fut: Future<Output = ()>,
{
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = |workers| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
    };
    let env = Arc::new(Env {
        harness: Arc::new(harness),
        server_runtime: Mutex::new(Some(runtime(1))),
        probes: Arc::default(),
    });
    let client_runtime = runtime(2);
    client_runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(180), test(Arc::clone(&env), codec))
            .await
            .unwrap_or_else(|_| panic!("the conformance test did not finish in 180 s"));
    });
    drop(env);
    client_runtime.shutdown_background();
}

/// Expands to one `#[test]` per behaviour of the conformance suite, for the transport of
/// `$harness` (a [`Harness`](crate::testing::Harness) value) with the codec `$codec`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr, $codec:expr) => {
        $crate::__conformance_tests!($harness, $codec;
            every_call_kind,
            ten_thousand_one_way_calls_all_run,
            ten_thousand_concurrent_calls_all_return,
            payloads_from_empty_to_past_every_buffer,
            a_frame_over_the_limit_fails_that_call_only,
            cancelling_or_timing_out_drops_the_handler,
            server_death_fails_calls_in_flight,
            client_death_drops_its_handlers,
            a_peer_that_stops_reading_is_bounded_and_released,
            silent_and_garbled_handshakes_are_closed,
            connection_churn_leaks_nothing,
            hostile_frames_never_wedge_the_connection,
            errors_for_refused_frames_echo_the_call,
            a_call_sent_before_the_welcome_is_served,
            running_calls_hold_no_more_bytes_than_the_limits,
            connections_beyond_the_limit_are_refused,
            calls_through_a_link_that_delays_frames_all_complete,
            shutdown_finishes_running_calls_refuses_new_ones_and_ends,
            metadata_reaches_the_handler_and_bad_blocks_fail_only_their_call,
            in_out_arguments_come_back_and_stay_put_on_failure,
            callbacks_arrive_in_order_and_end_cleanly
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($harness:expr, $codec:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                $crate::testing::run($harness, $codec, $crate::testing::suite::$name);
            }
        )*
    };
}

pub use crate::codec::ByteBuf;

/// The service every conformance test calls.
#[crate::service(id = 0x434F_4E46)]
pub trait Conformance {
    /// Returns its argument.
    async fn echo(&self, v: u64) -> u64;
    /// Returns the bytes it was given.
    async fn blob(&self, b: ByteBuf) -> ByteBuf;
    /// Reports that it started, then waits for the gate; reports being dropped if it is.
    async fn hold(&self, tag: u32) -> u32;
    /// Reports that it started, then waits for the gate, holding its argument; returns its
    /// length.
    async fn hold_blob(&self, b: ByteBuf) -> u64;
    /// One-way: counts itself.
    #[oneway]
    async fn count(&self);
    /// Calls back the client's `Doubler` on the same connection.
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String>;
    /// Fails with a typed error for 0.
    async fn invert(&self, x: u32) -> Result<u32, String>;
    /// The value of metadata key `key` the caller sent, if any.
    async fn meta(&self, ctx: Context, key: String) -> Option<ByteBuf>;
    /// In-out: appends `suffix` to `text`, pushes `n` onto `list` and moves `point` by `n`;
    /// returns the list's new length. Panics (the call fails) if `fail`.
    async fn edit(
        &self,
        text: &mut String,
        list: &mut Vec<u32>,
        point: &mut Point,
        suffix: String,
        n: u32,
        fail: bool,
    ) -> u32;
    /// Returns `n` at once; then, from a task of its own, calls `progress` with 0, 1, … up to
    /// `n` (exclusive), stopping at the first error, which it reports to the probes; then
    /// drops it.
    async fn report(&self, n: u32, progress: crate::Callback<u32>) -> u32;
}

/// A struct passed in-out by the conformance tests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// Across.
    pub x: i64,
    /// Up.
    pub y: i64,
    /// A name.
    pub label: String,
}

/// What a conformance client exports for call-backs.
#[crate::service(id = 0x444F_5542)]
pub trait Doubler {
    /// Doubles.
    async fn double(&self, x: u32) -> u32;
}

/// What the server's handlers report, for the tests to wait on.
#[derive(Debug)]
pub struct Probes {
    /// The error a `report` task's callback failed with.
    callback_error: Mutex<Option<RpcError>>,
    started: AtomicU32,
    dropped: AtomicU32,
    counted: AtomicU64,
    changed: Notify,
    gate: Semaphore,
}

impl Default for Probes {
    fn default() -> Self {
        Probes {
            callback_error: Mutex::new(None),
            started: AtomicU32::new(0),
            dropped: AtomicU32::new(0),
            counted: AtomicU64::new(0),
            changed: Notify::new(),
            gate: Semaphore::new(0),
        }
    }
}

impl Probes {
    fn bump(&self, counter: &AtomicU32) {
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds for the probes.
    async fn until(&self, what: &str, done: impl Fn(&Probes) -> bool) {
        let what = format!("{what}; probes: {self:?}");
        until(&self.changed, Duration::from_secs(60), &what, || done(self)).await;
    }
}

struct Lab<C> {
    codec: C,
    probes: Arc<Probes>,
}

/// Reports the handler dropped unless disarmed.
struct DropGuard(Option<Arc<Probes>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.bump(&p.dropped);
        }
    }
}

impl<C: Codec> Conformance for Lab<C> {
    async fn echo(&self, v: u64) -> u64 {
        v
    }

    async fn blob(&self, b: ByteBuf) -> ByteBuf {
        b
    }

    async fn hold(&self, tag: u32) -> u32 {
        let mut guard = DropGuard(Some(Arc::clone(&self.probes)));
        self.probes.bump(&self.probes.started);
        if let Ok(permit) = self.probes.gate.acquire().await {
            permit.forget();
        }
        guard.0 = None;
        tag
    }

    async fn hold_blob(&self, b: ByteBuf) -> u64 {
        self.hold(0).await;
        b.as_slice().len() as u64
    }

    async fn count(&self) {
        self.probes.counted.fetch_add(1, Ordering::SeqCst);
        self.probes.changed.notify_waiters();
    }

    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String> {
        let client = ctx.client(self.codec.clone()).map_err(|e| e.to_string())?;
        DoublerClient::new(client)
            .double(x)
            .await
            .map_err(|e| e.to_string())
    }

    async fn invert(&self, x: u32) -> Result<u32, String> {
        u32::MAX
            .checked_div(x)
            .ok_or_else(|| "zero has no inverse".to_owned())
    }

    async fn meta(&self, ctx: Context, key: String) -> Option<ByteBuf> {
        ctx.metadata().get(&key).map(|v| ByteBuf::from(v.to_vec()))
    }

    async fn edit(
        &self,
        text: &mut String,
        list: &mut Vec<u32>,
        point: &mut Point,
        suffix: String,
        n: u32,
        fail: bool,
    ) -> u32 {
        text.push_str(&suffix);
        list.push(n);
        point.x += i64::from(n);
        point.y -= i64::from(n);
        point.label.push('!');
        assert!(!fail, "a deliberate failure, after changing its copies");
        u32::try_from(list.len()).unwrap_or(u32::MAX)
    }

    async fn report(&self, n: u32, progress: crate::Callback<u32>) -> u32 {
        let probes = Arc::clone(&self.probes);
        tokio::spawn(async move {
            for i in 0..n {
                if let Err(e) = progress.call(i).await {
                    *probes
                        .callback_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e);
                    probes.changed.notify_waiters();
                    break;
                }
            }
        });
        n
    }
}

struct Twice;

impl Doubler for Twice {
    async fn double(&self, x: u32) -> u32 {
        x * 2
    }
}

/// One conformance test's world: the harness, the server's runtime and its probes.
pub struct Env<H> {
    harness: Arc<H>,
    server_runtime: Mutex<Option<Runtime>>,
    probes: Arc<Probes>,
}

impl<H> std::fmt::Debug for Env<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("probes", &self.probes)
            .finish_non_exhaustive()
    }
}

impl<H> Drop for Env<H> {
    fn drop(&mut self) {
        self.kill_server();
    }
}

/// Frame limits of one test's server and client, each applied to both the transport and the
/// engine.
#[derive(Debug, Clone, Copy)]
struct FrameLimits {
    server: usize,
    client: usize,
}

impl<H> Env<H> {
    /// Stops the server's runtime at once, dropping every task, as a crash of the server would.
    fn kill_server(&self) {
        let runtime = self
            .server_runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }

    /// Tasks alive on the server's runtime.
    fn server_tasks(&self) -> usize {
        self.server_runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |rt| rt.metrics().num_alive_tasks())
    }
}

impl<H: Harness> Env<H> {
    /// [`watchdog`] for a load test of the suite: its report says what the server's handlers
    /// did, the server's tasks, and what the transport says of its links
    /// ([`Harness::report`]).
    pub async fn watched<F: Future>(
        &self,
        what: &str,
        bound: Duration,
        progress: &Progress,
        work: F,
    ) -> F::Output {
        let report = async {
            let links = self.harness.report();
            format!(
                "server handlers started {}, dropped {}, one-way calls counted {}; server \
                 tasks {}\nthe transport's links:\n{}",
                self.probes.started.load(Ordering::SeqCst),
                self.probes.dropped.load(Ordering::SeqCst),
                self.probes.counted.load(Ordering::SeqCst),
                self.server_tasks(),
                if links.is_empty() {
                    "(no report)"
                } else {
                    &links
                },
            )
        };
        watchdog(what, bound, progress, report, work).await
    }

    /// Starts a server for `Conformance` with `limits` on a fresh listener; returns a
    /// connector to it.
    async fn serve<C: Codec>(
        &self,
        codec: &C,
        limits: Limits,
        frames: FrameLimits,
    ) -> H::Connector {
        self.start_server(codec, limits, frames).await.connector
    }

    /// [`Env::serve`], with the server itself and word of its serving's end.
    async fn start_server<C: Codec>(
        &self,
        codec: &C,
        limits: Limits,
        frames: FrameLimits,
    ) -> Running<H, C> {
        let server = Server::builder(codec.clone())
            .service(ConformanceServer::new(Lab {
                codec: codec.clone(),
                probes: Arc::clone(&self.probes),
            }))
            .limits(limits.max_frame_size(frames.server))
            .build();
        let harness = Arc::clone(&self.harness);
        let (bound, connector) = oneshot::channel();
        let (ended_tx, ended) = oneshot::channel();
        {
            let guard = self
                .server_runtime
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let Some(runtime) = guard.as_ref() else {
                panic!("the server's runtime is gone");
            };
            let server = server.clone();
            runtime.spawn(async move {
                match harness.bind(frames.server) {
                    Ok((listener, address)) => {
                        let _ = bound.send(Ok(address));
                        // Served as a trait object, as a server that picks its transports at
                        // run time serves them.
                        let listener: BoxListener = Box::new(listener);
                        let served = server.serve(listener).await;
                        if let Err(e) = &served {
                            tracing::debug!(error = %e, "conformance listener ended");
                        }
                        let _ = ended_tx.send(served);
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                    }
                }
            });
        }
        let address = connector
            .await
            .unwrap_or_else(|_| panic!("the harness's bind panicked"))
            .unwrap_or_else(|e| panic!("the harness could not bind: {e}"));
        let connector = self
            .harness
            .connector(&address, frames.client)
            .unwrap_or_else(|e| panic!("the harness could not make a connector: {e}"));
        Running {
            connector,
            server,
            ended,
        }
    }

    /// A server with default limits (and a short handshake timeout), and its connector.
    async fn serve_default<C: Codec>(&self, codec: &C) -> H::Connector {
        self.serve(codec, test_limits(), DEFAULT_FRAMES).await
    }
}

/// A conformance server started by [`Env::start_server`].
struct Running<H: Harness, C> {
    connector: H::Connector,
    server: Server<C>,
    /// How its serving ended.
    ended: oneshot::Receiver<Result<(), TransportError>>,
}

/// Frame limits that let every payload of the suite through.
const DEFAULT_FRAMES: FrameLimits = FrameLimits {
    server: 64 << 20,
    client: 64 << 20,
};

/// The engine limits the suite's servers use unless a test says otherwise.
fn test_limits() -> Limits {
    Limits::default()
        .handshake_timeout(Duration::from_millis(500))
        .session_linger(Duration::from_millis(300))
}

/// Connects a client that exports `Doubler`.
async fn client<C: Codec>(
    codec: &C,
    connector: &(impl Connector + Clone + 'static),
    frame_limit: usize,
) -> ConformanceClient<C> {
    let client = Client::builder(codec.clone())
        .limits(Limits::default().max_frame_size(frame_limit))
        .reconnect(ReconnectPolicy::default().give_up_after(Duration::from_secs(2)))
        .export(DoublerServer::new(Twice))
        .connect(connector)
        .await
        .unwrap_or_else(|e| panic!("cannot connect: {e}"));
    ConformanceClient::new(client)
}

/// Opens a link and performs the client's side of the handshake by hand, for tests that
/// then break the protocol on purpose.
async fn raw_link<C: Codec>(connector: &impl Connector) -> Link {
    let mut link = connector
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot open a link: {e}"));
    send_bytes(&link, &hello::<C>(7)).await;
    let welcome = link
        .rx
        .recv()
        .await
        .unwrap_or_else(|e| panic!("no welcome: {e}"))
        .unwrap_or_else(|| panic!("the link closed instead of a welcome"));
    let welcome = Welcome::decode(&welcome).unwrap_or_else(|e| panic!("bad welcome: {e}"));
    assert_eq!(welcome.status, WelcomeStatus::Accepted);
    link
}

/// The Hello of client `client_id` (epoch 1) for codec `C`.
fn hello<C: Codec>(client_id: u128) -> Bytes {
    Hello {
        version: u16::from(PROTOCOL_VERSION),
        codec: C::NAME.to_owned(),
        client_id,
        epoch: 1,
    }
    .encode()
}

/// Sends raw bytes as one message; failures are fine (the peer may have closed).
async fn send_bytes(link: &Link, bytes: &[u8]) -> bool {
    let Ok(mut buf) = link.tx.buffer(bytes.len()).await else {
        return false;
    };
    buf.put_slice(bytes);
    link.tx.send(buf).await.is_ok()
}

/// A whole frame: `header` (its payload length set here) and `payload`.
fn frame(mut header: Header, payload: &[u8]) -> Vec<u8> {
    header.payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A Call frame of `Conformance::meta(key)` with call id `id`, its payload starting with
/// `block` (the bytes of a metadata block, well formed or not) and the METADATA flag set.
fn meta_call<C: Codec>(codec: &C, id: u64, key: &str, block: &[u8]) -> Vec<u8> {
    let desc = ConformanceClient::<C>::META;
    let mut payload = block.to_vec();
    let mut args = bytes::BytesMut::new();
    codec
        .encode(&(key,), &mut args)
        .unwrap_or_else(|e| panic!("cannot encode: {e}"));
    payload.extend_from_slice(&args);
    let header = Header {
        version: desc.version,
        flags: crate::wire::Flags::METADATA,
        ..Header::new(FrameKind::Call, id, desc.interface, desc.method)
    };
    frame(header, &payload)
}

/// A Call frame of `Conformance::echo(v)` with call id `id`.
fn echo_call<C: Codec>(codec: &C, id: u64, v: u64) -> Vec<u8> {
    let desc = ConformanceClient::<C>::ECHO;
    let mut payload = bytes::BytesMut::new();
    codec
        .encode(&(v,), &mut payload)
        .unwrap_or_else(|e| panic!("cannot encode: {e}"));
    let header = Header {
        version: desc.version,
        ..Header::new(FrameKind::Call, id, desc.interface, desc.method)
    };
    frame(header, &payload)
}

/// Reads frames until the reply (or error) to call `id`; None if the link closed first.
async fn answer_to(link: &mut Link, id: u64) -> Option<Bytes> {
    loop {
        let frame = link.rx.recv().await.ok()??;
        if frame.len() >= HEADER_LEN {
            if let Ok(h) = Header::decode(&frame) {
                if h.call_id == id && matches!(h.kind, FrameKind::Reply | FrameKind::Error) {
                    return Some(frame);
                }
            }
        }
    }
}

/// Whether the link closes (rather than delivering anything more) before `bound` passes.
async fn closes_within(link: &mut Link, bound: Duration) -> bool {
    let drained = async { while let Ok(Some(_)) = link.rx.recv().await {} };
    tokio::time::timeout(bound, drained).await.is_ok()
}

/// Open file descriptors of this process, where the system says (Linux).
fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Memory mappings of this process (a leaked shared segment is one), where the system says.
fn mappings() -> Option<usize> {
    std::fs::read_to_string("/proc/self/maps")
        .ok()
        .map(|m| m.lines().count())
}

/// Resident memory of this process in bytes, where the system says.
fn resident() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Mappings the allocator and the runtimes may add for good while a test runs (arenas, thread
/// stacks); a leak per connection shows as many more.
const MAPPING_SLACK: usize = 16;

/// Waits, within a bound, until the server's tasks and the process's descriptors are back to
/// what they were: whatever a closed connection held must be released.
async fn settles<H>(env: &Env<H>, what: &str, tasks: usize, fds: Option<usize>) {
    let maps = mappings();
    settles_with_maps(env, what, tasks, fds, maps).await;
}

/// [`settles`], with the process's mappings counted from `maps` (taken before the clients
/// came).
async fn settles_with_maps<H>(
    env: &Env<H>,
    what: &str,
    tasks: usize,
    fds: Option<usize>,
    maps: Option<usize>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let within = |before: Option<usize>, now: Option<usize>, slack: usize| match (before, now) {
        (Some(before), Some(now)) => now <= before + slack,
        _ => true,
    };
    loop {
        let (now_tasks, now_fds, now_maps) = (env.server_tasks(), open_fds(), mappings());
        if now_tasks <= tasks && within(fds, now_fds, 0) && within(maps, now_maps, MAPPING_SLACK) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{what}: after 60 s the server still has {now_tasks} tasks (before: {tasks}), \
                 the process {now_fds:?} descriptors (before: {fds:?}) and {now_maps:?} \
                 mappings (before: {maps:?})"
            );
        }
        // Polling an outside count: closing finishes on tasks this test cannot join.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error a call must have failed with.
fn expect_err<T: std::fmt::Debug>(what: &str, r: Result<T, RpcError>) -> RpcError {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// Why a Reply was expected and not found.
fn describe(frame: &[u8]) -> String {
    match Header::decode(frame) {
        Ok(h) if h.kind == FrameKind::Error => {
            format!("an error: {:?}", ErrorPayload::decode(&frame[HEADER_LEN..]))
        }
        Ok(h) => format!("a {:?} frame", h.kind),
        Err(e) => format!("a malformed frame: {}", e.problem),
    }
}

fn busy(e: &RpcError) -> bool {
    matches!(e, RpcError::Handshake(HandshakeError::Busy))
}

fn options(timeout: Duration) -> CallOptions {
    CallOptions::new().timeout(timeout)
}
