//! [`Server`]: services registered once, served on any number of listeners and links.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::address::{Address, Bound, Listeners, Transports};
use crate::budget::{Budget, Taken};
use crate::codec::CodecSet;
use crate::directory::InterfaceRecord;
use crate::dispatch::{Authorizer, BoundRouter, Registry, Service};
use crate::engine::handshake::server_handshake;
use crate::engine::served::ServerSessions;
use crate::engine::Router;
use crate::engine::{Role, Served, Shared};
use crate::error::{AddressError, RpcError, TransportError};
use crate::options::Limits;
use crate::peer::Peer;
use crate::shutdown::{Lifecycle, ShutdownReport};
use crate::sync::lock;
use crate::transport::{Link, Listener};
use crate::wire::{Hello, WelcomeStatus};
use courier_proto::session::replies::{CacheLimits, Sessions};

/// Serves registered services over links; cheap to clone.
///
/// Built with [`Server::builder`], given the codec or codecs it offers (`Cbor::default()`, or a
/// tuple such as `(Cbor::default(), Xdr::default())`); each connection uses the codec its client
/// asks for in the handshake.
///
/// A handler starts on the task that read its call (LRPC's lesson: a hand-off costs more than a
/// short call); if it completes on its first poll, no task is spawned for it at all, and if it
/// waits, it moves to a task of its own. So a handler must not block its thread: heavy
/// synchronous work belongs in `tokio::task::spawn_blocking`, or it holds up the next frames of
/// its connection.
pub struct Server<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    registry: Arc<Registry<K>>,
    limits: Limits,
    authorizer: Option<Arc<dyn Authorizer>>,
    /// The bytes of running calls, across every connection (`Limits::max_server_call_bytes`).
    call_bytes: Arc<Budget>,
    /// Random per server: tells a reconnecting client whether it found the same server.
    instance: u128,
    /// Every client's session: running calls and the reply cache, across links.
    sessions: ServerSessions,
    /// What [`Server::listen`] binds addresses with; the global registry if `None`.
    transports: Option<Transports>,
    /// Running handlers, open links, and whether the server is shutting down.
    lifecycle: Arc<Lifecycle>,
}

impl<K> Clone for Server<K> {
    fn clone(&self) -> Self {
        Server {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for Server<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.inner.registry)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl<K: CodecSet> Server<K> {
    /// Starts building a server that offers `codecs`.
    pub fn builder(codecs: K) -> ServerBuilder<K> {
        ServerBuilder {
            registry: Registry::new(codecs),
            limits: Limits::default(),
            authorizer: None,
            transports: None,
        }
    }

    /// Accepts links from `listener` and serves each on a task of its own, until the listener
    /// fails (an error) or the server shuts down (`Ok`, the listener dropped: no new
    /// connections). A link whose handshake fails is logged and closed; the others go on.
    ///
    /// The connections from this listener are capped by [`Limits::max_connections`] in all and
    /// [`Limits::max_connections_per_peer`] per peer (network address or uid); a client over
    /// either cap is told so in the handshake ([`HandshakeError::Busy`]) and its link closed.
    ///
    /// [`HandshakeError::Busy`]: crate::HandshakeError::Busy
    pub async fn serve(&self, mut listener: impl Listener) -> Result<(), TransportError> {
        let admission = Admission::new(&self.inner.limits);
        let lifecycle = Arc::clone(&self.inner.lifecycle);
        loop {
            let mut link = tokio::select! {
                accepted = listener.accept() => accepted?,
                () = lifecycle.stopping() => return Ok(()),
            };
            let ticket = match admission.admit(&link.peer) {
                Ok(ticket) => Some(ticket),
                Err(refusals) => {
                    let Some(refusal) = refusals else {
                        // Refusing politely costs a task; past a few at once, just hang up.
                        link.tx.close();
                        continue;
                    };
                    let server = self.clone();
                    tokio::spawn(async move {
                        let _ = server.handshake(&mut link, true, |_| Ok(((), 0))).await;
                        link.tx.close();
                        drop(refusal);
                    });
                    continue;
                }
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.start_link(link, ticket).await {
                    tracing::warn!(error = %e, "connection refused");
                }
            });
        }
    }

    /// Listens on every address in `addresses` (`quic://0.0.0.0:4433`, `shm:///run/app.sock`,
    /// …; see [`courier::address`](crate::address)), through the transports of
    /// [`ServerBuilder::transports`] or else [`Transports::global`]. Either all are bound or
    /// none is: the first address that fails is the error.
    pub fn listen<A: AsRef<str>>(
        &self,
        addresses: impl IntoIterator<Item = A>,
    ) -> Result<Listeners, AddressError> {
        let transports = self
            .inner
            .transports
            .clone()
            .unwrap_or_else(Transports::global);
        let mut listeners = Listeners::default();
        for address in addresses {
            let address = Address::parse(address.as_ref())?;
            listeners.push(transports.listen(&address)?);
        }
        Ok(listeners)
    }

    /// Serves every listener of `listeners` at once, each connection with its own
    /// [`Peer`]; the limits of [`Server::serve`] apply to each listener. Returns when one
    /// listener fails, dropping (and so closing) the others with it, or when the server shuts
    /// down ([`Server::shutdown`]).
    pub async fn serve_all(&self, listeners: Listeners) -> Result<(), TransportError> {
        let serving = listeners
            .into_iter()
            .map(|Bound { listener, address }| async move {
                self.serve(listener).await.inspect_err(
                    |e| tracing::warn!(%address, error = %e, "listener failed; stopping all"),
                )
            });
        futures::future::try_join_all(serving).await.map(drop)
    }

    /// Shuts the server down gracefully, over every transport: at once (when called, not when
    /// awaited) its listeners stop accepting ([`Server::serve`] and [`Server::serve_all`]
    /// return `Ok`) and new calls are refused with [`RpcError::Unavailable`], which
    /// [`RpcError::is_retryable`] (the call did not run, so a client may send it to another
    /// server). Then the running handlers have up to `grace` to finish; those still running are
    /// cancelled, every connection is closed, and the returned future resolves with what was
    /// done. Called within a runtime, the shutdown goes on even if the future is dropped.
    ///
    /// Copies of calls already running or finished are still answered while the handlers run:
    /// their callers wait for those outcomes. A client that loses its connection this way
    /// reconnects as its [`ReconnectPolicy`](crate::ReconnectPolicy) says (to another instance
    /// if bound by name; withdraw the server's directory registration first so clients move
    /// before the end).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use courier::{Client, RpcError, Server};
    /// # use courier_cbor::Cbor;
    /// # #[courier::service] pub trait Nap { async fn nap(&self, ms: u64) -> u64; }
    /// # struct Napper;
    /// # impl Nap for Napper { async fn nap(&self, ms: u64) -> u64 {
    /// #     tokio::time::sleep(Duration::from_millis(ms)).await; ms } }
    /// # #[tokio::main] async fn main() -> Result<(), RpcError> {
    /// let server = Server::builder(Cbor::default()).service(NapServer::new(Napper)).build();
    /// let serving = tokio::spawn({
    ///     let server = server.clone();
    ///     let listeners = server.listen(["mem://nap"])?;
    ///     async move { server.serve_all(listeners).await }
    /// });
    /// let nap = NapClient::new(Client::builder(Cbor::default()).connect_to("mem://nap").await?);
    /// let short = tokio::spawn({ let nap = nap.clone(); async move { nap.nap(200).await } });
    /// # while server.running_handlers() == 0 { tokio::task::yield_now().await; }
    ///
    /// // Ctrl-C, say: stop taking calls; give the running ones 5 s.
    /// let stopped = server.shutdown(Duration::from_secs(5));
    /// assert!(matches!(nap.nap(1).await, Err(e) if e.is_retryable()));
    /// let report = stopped.await;
    /// assert_eq!(report.cancelled, 0);
    /// assert_eq!(short.await.unwrap()?, 200);
    /// assert!(serving.await.unwrap().is_ok());
    /// # Ok(()) }
    /// ```
    pub fn shutdown(
        &self,
        grace: std::time::Duration,
    ) -> impl std::future::Future<Output = ShutdownReport> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        lock(&inner.sessions).stop_accepting();
        inner.lifecycle.stop();
        let running = inner.lifecycle.running();
        tracing::info!(running, ?grace, "shutting down");
        let finish = async move {
            let _ = tokio::time::timeout(grace, inner.lifecycle.idle()).await;
            let now = std::time::Instant::now();
            let ended = lock(&inner.sessions).abort_running(now, aborted_frame);
            let cancelled = ended.len();
            // Whoever waits for an aborted call is told before the connections close (and a
            // copy that comes later gets the same answer): no caller waits for an outcome that
            // will not come.
            let mut telling = Vec::new();
            for ended in ended {
                ended.abort.abort();
                for link in ended.waiters.into_iter().filter_map(|w| w.open()) {
                    let frame = ended.frame.clone();
                    telling.push(async move { link.send_shared(frame).await });
                }
            }
            let told = futures::future::join_all(telling);
            let _ = tokio::time::timeout(crate::engine::LAST_WORDS, told).await;
            inner.lifecycle.close_all().await;
            tracing::info!(running, cancelled, "shut down");
            ShutdownReport { running, cancelled }
        };
        // On a task of its own where there is a runtime, so that the grace period ends and
        // connections close even if the caller drops the future rather than await it.
        let done: futures::future::BoxFuture<'static, ShutdownReport> =
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let task = runtime.spawn(finish);
                    Box::pin(async move {
                        task.await.unwrap_or(ShutdownReport {
                            running,
                            cancelled: 0,
                        })
                    })
                }
                Err(_) => Box::pin(finish),
            };
        done
    }

    /// How many client connections are open now, across every listener (a connection counts
    /// from its accepted handshake until it closes).
    pub fn connections(&self) -> usize {
        self.inner.lifecycle.open_links()
    }

    /// How many handlers are running now, across every connection.
    pub fn running_handlers(&self) -> usize {
        self.inner.lifecycle.running()
    }

    /// The interfaces this server offers, for a directory record
    /// ([`InstanceRecord::interfaces`](crate::directory::InstanceRecord::interfaces)).
    pub fn interfaces(&self) -> Vec<InterfaceRecord> {
        let interfaces = self.inner.registry.interfaces().into_iter();
        interfaces
            .map(|(name, id, version)| InterfaceRecord::new(name, id, version))
            .collect()
    }

    /// Performs the handshake over one link and starts serving it. Returns once the handshake
    /// is done; the connection then runs on its own until the peer closes it. If the handshake
    /// fails, the link is closed.
    ///
    /// Links served this way are not counted against [`Limits::max_connections`]: that is
    /// [`Server::serve`]'s count of one listener's connections.
    pub async fn serve_link(&self, link: Link) -> Result<(), RpcError> {
        self.start_link(link, None).await
    }

    async fn handshake<T>(
        &self,
        link: &mut Link,
        busy: bool,
        admit: impl FnOnce(&Hello) -> Result<(T, u128), WelcomeStatus>,
    ) -> Result<(usize, T), RpcError> {
        let names = self.inner.registry.codecs().names();
        let timeout = self.inner.limits.handshake_timeout;
        let instance = self.inner.instance;
        server_handshake(link, &names, timeout, busy, instance, admit).await
    }

    /// Bytes the reply cache holds now: the kept outcomes of at-most-once calls, each with its
    /// bookkeeping, across all clients; never more than [`Limits::reply_cache_bytes`].
    pub fn reply_cache_bytes(&self) -> usize {
        lock(&self.inner.sessions).cached_bytes()
    }

    /// This server's instance id, sent in every welcome; new for every server built.
    pub fn instance(&self) -> u128 {
        self.inner.instance
    }

    async fn start_link(&self, mut link: Link, ticket: Option<Ticket>) -> Result<(), RpcError> {
        let sessions = &self.inner.sessions;
        let lifecycle = &self.inner.lifecycle;
        let linger = self.inner.limits.session_linger;
        let peer = link.peer.clone();
        let instance = self.inner.instance;
        let admit = |hello: &Hello| {
            if !crate::engine::served::epoch_in_range(hello.epoch) {
                return Err(WelcomeStatus::EpochOutOfRange);
            }
            let served = Served::join(
                sessions,
                lifecycle,
                hello.client_id,
                &peer,
                hello.epoch,
                linger,
            )
            .ok_or(WelcomeStatus::StaleEpoch)?;
            let id = served.welcome_id(instance);
            Ok(((served, hello.client_id, hello.epoch), id))
        };
        let (codec_index, (served, client_id, epoch)) =
            match self.handshake(&mut link, false, admit).await {
                Ok(done) => done,
                Err(e) => {
                    // Nothing more will come of this link: free its resources now, not at the
                    // transport's idle timeout.
                    link.tx.close();
                    return Err(e);
                }
            };
        let names = self.inner.registry.codecs().names();
        tracing::debug!(
            peer = ?link.peer,
            codec = names[codec_index],
            client_id,
            epoch,
            "connection accepted"
        );
        let router: Arc<dyn Router> = Arc::new(BoundRouter {
            registry: Arc::clone(&self.inner.registry),
            codec_index,
            authorizer: self.inner.authorizer.clone(),
        });
        let shared = Shared::start(
            link,
            names[codec_index].to_owned(),
            self.inner.limits.clone(),
            Some(router),
            ticket.map(|t| Box::new(t) as Box<dyn std::any::Any + Send>),
            Some(Arc::clone(&self.inner.call_bytes)),
            Role::Server(served),
        );
        if !self.inner.lifecycle.track(&shared) {
            shared.close("the server shut down".to_owned());
        }
        Ok(())
    }
}

/// The answer to a call whose handler a shutdown's grace cut short.
fn aborted_frame(call: u64, called: courier_proto::session::replies::Called) -> bytes::Bytes {
    crate::engine::served::refusal_frame(
        call,
        called,
        crate::wire::ErrorCode::Aborted,
        "the server shut down before the handler finished: it may have partly run",
    )
}

/// Who counts as one peer for [`Limits::max_connections_per_peer`]: the network address
/// without its port, or the local user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PeerKey {
    Ip(IpAddr),
    Uid(u32),
}

fn peer_key(peer: &Peer) -> Option<PeerKey> {
    match peer {
        Peer::Network { addr, .. } => Some(PeerKey::Ip(addr.ip())),
        Peer::Process { uid, .. } => Some(PeerKey::Uid(*uid)),
        _ => None,
    }
}

/// How many refused clients are answered at once; past this, they are hung up on.
const MAX_REFUSALS: usize = 64;

/// One listener's count of connections, in all and per peer.
struct Admission {
    total: Arc<Budget>,
    per_peer: Arc<Mutex<HashMap<PeerKey, usize>>>,
    max_per_peer: usize,
    refusals: Arc<Budget>,
}

/// A connection's place in its listener's count; given back when dropped.
struct Ticket {
    _total: Taken,
    peer: Option<PeerKey>,
    per_peer: Arc<Mutex<HashMap<PeerKey, usize>>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.peer.take() {
            let mut counts = lock(&self.per_peer);
            if let Some(n) = counts.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&key);
                }
            }
        }
    }
}

impl Admission {
    fn new(limits: &Limits) -> Self {
        Admission {
            total: Budget::new(limits.max_connections),
            per_peer: Arc::default(),
            max_per_peer: limits.max_connections_per_peer,
            refusals: Budget::new(MAX_REFUSALS),
        }
    }

    /// A ticket for a new connection from `peer`, or (refused) a permit to tell it so, if
    /// not too many refusals are under way already.
    fn admit(&self, peer: &Peer) -> Result<Ticket, Option<Taken>> {
        let refuse = || self.refusals.try_take(1);
        let total = self.total.try_take(1).ok_or_else(refuse)?;
        let key = peer_key(peer);
        if let Some(key) = &key {
            let mut counts = lock(&self.per_peer);
            let n = counts.entry(key.clone()).or_insert(0);
            if *n >= self.max_per_peer {
                return Err(refuse());
            }
            *n += 1;
        }
        Ok(Ticket {
            _total: total,
            peer: key,
            per_peer: Arc::clone(&self.per_peer),
        })
    }
}

/// Configures a [`Server`].
pub struct ServerBuilder<K> {
    registry: Registry<K>,
    limits: Limits,
    authorizer: Option<Arc<dyn Authorizer>>,
    transports: Option<Transports>,
}

impl<K> fmt::Debug for ServerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("services", &self.registry)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<K: CodecSet> ServerBuilder<K> {
    /// Registers a service, such as `CalcServer::new(my_calc)`.
    ///
    /// # Panics
    ///
    /// If a service with the same interface id is already registered (a programming error that
    /// no call could work around); [`ServerBuilder::try_service`] returns it as an error.
    pub fn service<S: Service>(self, service: S) -> Self {
        match self.try_service(service) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// Registers a service; fails if another has the same interface id.
    pub fn try_service<S: Service>(mut self, service: S) -> Result<Self, String> {
        self.registry.add(service)?;
        Ok(self)
    }

    /// Sets the limits of every connection.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Asks `authorizer` before every call; a refusal reaches the caller as
    /// [`RpcError::AccessDenied`].
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// The transports that [`Server::listen`] binds addresses with. Default:
    /// [`Transports::global`] as it is when `listen` is called.
    pub fn transports(mut self, transports: Transports) -> Self {
        self.transports = Some(transports);
        self
    }

    /// Finishes the server.
    pub fn build(self) -> Server<K> {
        Server {
            inner: Arc::new(Inner {
                registry: Arc::new(self.registry),
                call_bytes: Budget::new(self.limits.server_call_bytes_budget()),
                instance: crate::identity::random_u128(),
                sessions: Arc::new(Mutex::new(Sessions::new(CacheLimits {
                    max_bytes: self.limits.reply_cache_bytes,
                    max_age: self.limits.reply_cache_age,
                    max_sessions: self.limits.max_sessions,
                }))),
                limits: self.limits,
                authorizer: self.authorizer,
                transports: self.transports,
                lifecycle: Lifecycle::new(),
            }),
        }
    }
}
