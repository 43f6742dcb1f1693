//! The client's session driver: links come and go, calls stay.
//!
//! The rules (which call is sent again where, which fails how) are in
//! [`CallTable`](courier_proto::session::calls::CallTable); this file owns what they need from the
//! outside: the current link, the reconnecting task and its timers, the callers' channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::handshake::client_handshake;
use super::{ReplyResult, Role, Router, Shared};
use crate::address::Address;
use crate::callback::CallbackTable;
use crate::error::{HandshakeError, RpcError};
use crate::identity::{random_u64, Identity};
use crate::ids::MethodDesc;
use crate::options::{Limits, ReconnectPolicy};
use crate::peer::Peer;
use crate::sync::lock;
use crate::transport::{BoxConnector, DynConnector, FrameBuf, Link, ReplyReader};
use crate::wire::{Flags, FrameKind, Header, HEADER_LEN};
use courier_proto::session::calls::{CallTable, LinkId, Semantics};

/// A place among a session's calls in flight when there was none at once, waited for within
/// `deadline`; the client's closing ends the wait. The places are a count without a lock (see
/// [`Budget`](crate::budget::Budget)): tokio's semaphore would lock a mutex at every call's end.
async fn waited_slot(
    in_flight: &Arc<crate::budget::Budget>,
    deadline: Option<Instant>,
) -> Result<crate::budget::Taken, RpcError> {
    let take = in_flight.take(1);
    let taken = match deadline {
        Some(d) => tokio::time::timeout_at(d, take)
            .await
            .map_err(|_| RpcError::DeadlineExceeded)?,
        None => take.await,
    };
    taken.ok_or_else(client_closed)
}

/// The deadline budget for a call's header, sent at `now`: µs left, or `DeadlineExceeded` if
/// the deadline has passed.
fn budget(now: Instant, deadline: Instant) -> Result<u32, RpcError> {
    courier_proto::received::budget_micros(now.into_std(), Some(deadline.into_std()))
        .ok_or(RpcError::DeadlineExceeded)
}

/// Waits for `wait` while polling `reader`, reader first, so that a reply it delivers is seen
/// in the same poll. A finished reader is dropped.
async fn driven<T>(
    reader: &mut Option<ReplyReader>,
    wait: impl std::future::Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    std::future::poll_fn(|cx| {
        if let Some(r) = reader {
            if r.as_mut().poll(cx).is_ready() {
                *reader = None;
            }
        }
        wait.as_mut().poll(cx)
    })
    .await
}

/// The generation of the one link of a session over a link alone ([`ClientSession::over_link`]).
pub(crate) const OVER_LINK: u64 = 1;

/// What a call gets once its client has been dropped.
fn client_closed() -> RpcError {
    RpcError::ConnectionLost("the client was closed".into())
}

/// Every session of one identity in this process: they number their calls from one sequence,
/// since the server knows them as one client, and the watermark must cover all of them.
pub(crate) struct Lineage {
    next: AtomicU64,
    sessions: Mutex<Vec<Weak<ClientSession>>>,
}

impl Lineage {
    /// The lineage of `identity`, made on first use and kept for the life of the process:
    /// call ids are never reused under one identity, not even by a client made after all the
    /// earlier ones are gone (a server may still remember their calls).
    fn of(identity: Identity) -> Arc<Lineage> {
        type Registry = Mutex<HashMap<(u128, u64), Arc<Lineage>>>;
        static LINEAGES: OnceLock<Registry> = OnceLock::new();
        let mut all = lock(LINEAGES.get_or_init(Registry::default));
        let key = (identity.client_id(), identity.epoch());
        let lineage = all.entry(key).or_insert_with(|| {
            Arc::new(Lineage {
                next: AtomicU64::new(1),
                sessions: Mutex::new(Vec::new()),
            })
        });
        Arc::clone(lineage)
    }

    /// A lineage of its own, not kept for the process: a session over a link alone, whose
    /// peer knows its calls only on that link.
    pub(crate) fn detached() -> Arc<Lineage> {
        Arc::new(Lineage {
            next: AtomicU64::new(1),
            sessions: Mutex::new(Vec::new()),
        })
    }

    /// Adds a session, forgetting those that ended.
    fn join(&self, session: &Arc<ClientSession>) {
        let mut sessions = lock(&self.sessions);
        sessions.retain(|s| s.strong_count() > 0);
        sessions.push(Arc::downgrade(session));
    }

    /// Whether `leaving` (already marked closed) says goodbye: see
    /// [`says_goodbye`](courier_proto::session::calls::says_goodbye). Under the lineage's lock, so that
    /// of siblings that close at once, the last to look says it.
    fn says_goodbye(&self, leaving: &ClientSession) -> bool {
        let sessions = lock(&self.sessions);
        let mine = lock(&leaving.state).session_id;
        let siblings = sessions
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|s| !std::ptr::eq(&**s, leaving) && !s.closed.load(Ordering::Acquire))
            .map(|s| lock(&s.state).session_id)
            .collect::<Vec<_>>();
        courier_proto::session::calls::says_goodbye(mine, siblings)
    }

    /// Every call id below this has its outcome at its caller (or was given up): the lowest
    /// call in flight in any session, or the next id if none is. Ids are taken under a
    /// session's lock together with their entry, and the sequence is read before the tables,
    /// so no id can slip under the watermark unseen.
    fn watermark(&self) -> u64 {
        let next = self.next.load(Ordering::SeqCst);
        let sessions: Vec<Arc<ClientSession>> = lock(&self.sessions)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        sessions
            .iter()
            .filter_map(|s| lock(&s.state).table.lowest())
            .fold(next, u64::min)
    }
}

/// Whoever waits for a call's outcome.
pub(crate) struct Waiter {
    reply: oneshot::Sender<ReplyResult>,
    ack: Option<oneshot::Sender<()>>,
}

struct State {
    table: CallTable<Waiter>,
    link: Option<Arc<Shared>>,
    /// A link being drained ([`ClientSession::rebind`]): its calls finish there, then it is
    /// closed.
    draining: Option<Arc<Shared>>,
    reconnecting: bool,
    /// Why the last reconnecting gave up; calls fail with it until a new attempt starts.
    failure: Option<String>,
    peer: Peer,
    /// The session the latest Welcome named (see [`Welcome::instance`]), kept while the link
    /// is down: siblings on the same session leave it to the last of them to say goodbye.
    ///
    /// [`Welcome::instance`]: crate::wire::Welcome::instance
    session_id: Option<u128>,
}

impl State {
    fn new(table: CallTable<Waiter>, link: Option<Arc<Shared>>, peer: Peer) -> State {
        State {
            table,
            link,
            draining: None,
            reconnecting: false,
            failure: None,
            peer,
            session_id: None,
        }
    }
}

/// What a session is made with.
pub(crate) struct Config {
    pub(crate) connector: Option<BoxConnector>,
    pub(crate) codec: &'static str,
    pub(crate) identity: Identity,
    pub(crate) limits: Limits,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) attempt_timeout: Option<Duration>,
    /// The services the session's links offer the peer (none over a server's link: its
    /// server's registry serves there).
    pub(crate) router: Option<Arc<dyn Router>>,
    /// Where the session's links go, when it connects by address or by name.
    pub(crate) whereabouts: Option<Arc<Whereabouts>>,
    /// The callbacks this client passed in its calls (none over a server's link: a handler
    /// cannot pass callbacks to its caller).
    pub(crate) callbacks: Option<Arc<CallbackTable>>,
    /// Whether the peer keeps the outcomes of this session's calls (a server's reply cache):
    /// then calls may be sent again (attempt timeouts) and outcomes are released. A client
    /// serving calls back keeps none, so a session over a server's link does neither.
    pub(crate) peer_keeps_outcomes: bool,
}

/// One client identity talking to one server, over as many links as it takes.
pub(crate) struct ClientSession {
    config: Config,
    lineage: Arc<Lineage>,
    runtime: Handle,
    in_flight: Arc<crate::budget::Budget>,
    state: Mutex<State>,
    /// A link came up, or reconnecting gave up.
    changed: Notify,
    closed: AtomicBool,
    next_generation: AtomicU64,
    /// Links opened after the first.
    reconnections: AtomicU64,
    /// When the session started: the instant given to the call table when none matters.
    started: std::time::Instant,
    me: Weak<ClientSession>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("identity", &self.config.identity)
            .field("codec", &self.config.codec)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ClientSession {
    /// Starts a session over `link`, whose handshake is not done yet.
    pub(crate) async fn start(config: Config, link: Link) -> Result<Arc<ClientSession>, RpcError> {
        let lineage = Lineage::of(config.identity);
        let state = State::new(CallTable::default(), None, link.peer.clone());
        let session = Self::assemble(config, &lineage, state, 1, std::time::Instant::now());
        session.open(link).await?;
        Ok(session)
    }

    /// A session over `link` alone, a server's link whose handshake is done: it never
    /// reconnects, so when the link ends its calls fail with `ConnectionLost`. How a handler
    /// calls its client back ([`Shared::calls`]); the link carries its answers here.
    pub(crate) fn over_link(
        link: &Arc<Shared>,
        codec: &'static str,
        lineage: Arc<Lineage>,
    ) -> Arc<ClientSession> {
        let config = Config {
            connector: None,
            codec,
            identity: Identity::random(),
            limits: link.limits().clone(),
            policy: ReconnectPolicy::never(),
            attempt_timeout: None,
            router: None,
            whereabouts: None,
            callbacks: None,
            peer_keeps_outcomes: false,
        };
        let started = std::time::Instant::now();
        let mut table = CallTable::default();
        let on = LinkId {
            generation: OVER_LINK,
            instance: 0,
        };
        // Nothing to hand over: the table is empty.
        let _ = table.link_up(on, None, started);
        let state = State::new(table, Some(Arc::clone(link)), link.peer().clone());
        Self::assemble(config, &lineage, state, OVER_LINK + 1, started)
    }

    /// A session in `state`, one of `lineage`'s, whose next link is `next_generation`.
    fn assemble(
        config: Config,
        lineage: &Arc<Lineage>,
        state: State,
        next_generation: u64,
        started: std::time::Instant,
    ) -> Arc<ClientSession> {
        let session = Arc::new_cyclic(|me| ClientSession {
            in_flight: crate::budget::Budget::places(config.limits.max_in_flight),
            config,
            lineage: Arc::clone(lineage),
            runtime: Handle::current(),
            state: Mutex::new(state),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            next_generation: AtomicU64::new(next_generation),
            reconnections: AtomicU64::new(0),
            started,
            me: me.clone(),
        });
        lineage.join(&session);
        session
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.runtime
    }

    /// How many times the session replaced a lost link.
    pub(crate) fn reconnections(&self) -> u64 {
        self.reconnections.load(Ordering::Relaxed)
    }

    /// The address of the current (or latest) link, if known.
    pub(crate) fn address(&self) -> Option<Address> {
        self.config.whereabouts.as_ref().and_then(|w| w.address())
    }

    /// The directory instance of the current (or latest) link, if bound by name.
    pub(crate) fn instance(&self) -> Option<String> {
        self.config.whereabouts.as_ref().and_then(|w| w.instance())
    }

    /// Moves the session to another link (bound by name: its instance has left the directory),
    /// make-before-break: new calls wait for the next link, which the reconnecting task opens
    /// at once, while the calls in flight finish on the current one, which is closed when they
    /// have. No call fails or runs twice because of the move.
    pub(crate) fn rebind(&self, reason: String) {
        let closable = {
            let mut state = lock(&self.state);
            if state.draining.is_some() || self.closed.load(Ordering::Acquire) {
                return;
            }
            let Some(link) = state.link.take() else {
                return;
            };
            let drained = match state.table.start_drain() {
                Some((_, drained)) => drained,
                None => true,
            };
            self.start_reconnecting(&mut state, reason.clone());
            if drained {
                Some(link)
            } else {
                state.draining = Some(link);
                None
            }
        };
        tracing::info!(%reason, "moving to another instance");
        if let Some(link) = closable {
            link.close(reason);
        }
    }

    /// The link being drained, taken out of the state if its last call just finished: the
    /// caller closes it, outside the lock.
    fn drained(state: &mut State) -> Option<Arc<Shared>> {
        let generation = state.table.draining()?;
        if state.table.drained(generation) {
            state.draining.take()
        } else {
            None
        }
    }

    /// Ends the callbacks this client passed: the connection they went over ended.
    fn forget_callbacks(&self) {
        if let Some(callbacks) = &self.config.callbacks {
            callbacks.clear();
        }
    }

    /// The callbacks this client passed in its calls, if it can pass any.
    pub(crate) fn callbacks(&self) -> Option<&Arc<CallbackTable>> {
        self.config.callbacks.as_ref()
    }

    /// The limits the session's links apply.
    pub(crate) fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The attempt timeout of a call whose options say `asked`: that, else the session's
    /// default; none if the peer keeps no outcomes (a copy would run again).
    pub(crate) fn attempt_timeout(&self, asked: Option<Duration>) -> Option<Duration> {
        if !self.config.peer_keeps_outcomes {
            return None;
        }
        asked.or(self.config.attempt_timeout)
    }

    /// The server, as the transport of the latest link authenticated it.
    pub(crate) fn peer(&self) -> Peer {
        lock(&self.state).peer.clone()
    }

    /// Whether the session has ended: closed by its owner, or, without reconnecting, its link
    /// lost.
    pub(crate) fn is_closed(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        let state = lock(&self.state);
        state.link.is_none() && !self.can_redial() && state.failure.is_some()
    }

    /// Whether the session reconnects when its link dies: it has a connector to dial again
    /// and a policy that says to.
    fn can_redial(&self) -> bool {
        self.config.connector.is_some() && !self.config.policy.is_never()
    }

    /// Performs the handshake over `link` and makes it the session's link.
    async fn open(&self, mut link: Link) -> Result<(), RpcError> {
        let identity = self.config.identity;
        let (id, epoch) = (identity.client_id(), identity.epoch());
        let timeout = self.config.limits.handshake_timeout;
        let instance =
            match client_handshake(&mut link, self.config.codec, id, epoch, timeout).await {
                Ok(instance) => instance,
                Err(e) => {
                    link.tx.close();
                    return Err(e);
                }
            };
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        if generation > 1 {
            self.reconnections.fetch_add(1, Ordering::Relaxed);
        }
        let peer = link.peer.clone();
        let shared = Shared::start(
            link,
            self.config.codec.to_owned(),
            self.config.limits.clone(),
            self.config.router.clone(),
            None,
            None,
            Role::Client(self.me.clone(), generation),
        );
        let now = std::time::Instant::now();
        let (relink, lost_at_once) = {
            let mut state = lock(&self.state);
            if self.closed.load(Ordering::Acquire) {
                drop(state);
                shared.shutdown();
                return Err(client_closed());
            }
            state.link = Some(Arc::clone(&shared));
            state.session_id = Some(instance);
            state.peer = peer;
            state.reconnecting = false;
            state.failure = None;
            let link = LinkId {
                generation,
                instance,
            };
            let relink = state.table.link_up(link, self.config.attempt_timeout, now);
            (relink, shared.is_closed())
        };
        self.changed.notify_waiters();
        self.hand_over(relink, &shared, instance);
        if lost_at_once {
            // It closed before it was installed, so its close found another generation.
            self.link_closed(generation, "the link closed at once");
        }
        Ok(())
    }

    /// Carries out a [`Relink`](courier_proto::session::calls::Relink) onto `link` (of server
    /// `instance`): fails the calls whose outcome is unknown, sends the others.
    fn hand_over(
        &self,
        relink: courier_proto::session::calls::Relink<Waiter>,
        link: &Arc<Shared>,
        instance: u128,
    ) {
        for waiter in relink.unknown {
            let _ = waiter.reply.send(Err(RpcError::OutcomeUnknown(format!(
                "the call was in flight when its link was lost, and the server that answered \
                 the reconnect does not hold the session the call was sent to (it restarted, \
                 was left for another instance, or forgot the session: its linger passed, it \
                 was evicted, or a goodbye ended it; session {instance:032x} now), so whether \
                 it ran is unknown"
            ))));
        }
        for (_, frame) in relink.resend {
            let link = Arc::clone(link);
            let runtime = self.runtime.clone();
            self.runtime.spawn(async move {
                // A reader for the copy's reply (QUIC) runs on a task of its own: the caller
                // waits on its channel, which the reader feeds.
                if let Ok(Some(reader)) = link.send_call_shared(frame).await {
                    runtime.spawn(reader);
                }
            });
        }
    }

    /// Starts the reconnecting task unless it runs already.
    fn start_reconnecting(&self, state: &mut State, reason: String) {
        if state.reconnecting {
            return;
        }
        state.reconnecting = true;
        state.failure = None;
        tracing::debug!(%reason, "link lost; reconnecting");
        self.runtime.spawn(reconnect(self.me.clone(), reason));
    }

    /// The current link, waiting (within `deadline`) for one if needed, and starting to
    /// reconnect if nobody has.
    async fn link(&self, deadline: Option<Instant>) -> Result<Arc<Shared>, RpcError> {
        // Through one round of reconnecting at most: when it gives up, so does this.
        let mut waited = false;
        loop {
            let changed = self.changed.notified();
            {
                let mut state = lock(&self.state);
                if self.closed.load(Ordering::Acquire) {
                    return Err(client_closed());
                }
                if let Some(link) = &state.link {
                    return Ok(Arc::clone(link));
                }
                match state.failure.clone() {
                    Some(reason) if waited || !self.can_redial() => {
                        return Err(RpcError::ConnectionLost(reason));
                    }
                    Some(reason) => self.start_reconnecting(&mut state, reason),
                    None if !state.reconnecting => {
                        self.start_reconnecting(&mut state, "no link".into())
                    }
                    None => {}
                }
                waited = true;
            }
            wait_until(deadline, changed).await?;
        }
    }

    /// Makes a two-way call: encodes it once, keeps it for re-sending, sends it on the current
    /// link (if any; otherwise on the next).
    pub(crate) async fn begin_call(
        self: &Arc<Self>,
        method: &MethodDesc,
        timeout: Option<Duration>,
        flags: Flags,
        attempt: Option<Duration>,
        body: impl FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    ) -> Result<SessionCall, RpcError> {
        // The clock is read once for a call with a timeout that finds a place at once (nearly
        // every call): its budget is then the whole timeout. No timeout, no reading at all.
        let started = timeout.map(|t| {
            let now = Instant::now();
            (now, now + t)
        });
        let deadline = started.map(|(_, deadline)| deadline);
        let (permit, budget_micros) = match self.in_flight.try_take(1) {
            Some(permit) => (permit, started.map(|(now, d)| budget(now, d))),
            None => {
                let permit = waited_slot(&self.in_flight, deadline).await?;
                (permit, deadline.map(|d| budget(Instant::now(), d)))
            }
        };
        let budget_micros = budget_micros.transpose()?.unwrap_or(0);
        let semantics = if method.idempotent {
            Semantics::AtLeastOnce
        } else {
            Semantics::AtMostOnce
        };
        let flags = if method.idempotent {
            flags.union(Flags::IDEMPOTENT)
        } else {
            flags
        };
        let header = Header {
            flags,
            version: method.version,
            budget_micros,
            ..Header::new(FrameKind::Call, 0, method.interface, method.method)
        };
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 64);
        header.encode(&mut buf);
        body(&mut buf)?;
        super::seal(&mut buf, self.config.limits.frame_size_limit())?;
        // Make the buffer shareable now, outside the lock: the table keeps one handle on the
        // frame and the link gets another, and a plain buffer would allocate the shared
        // header on its first clone, under the lock.
        let mut buf = buf.split();

        let (reply_tx, reply) = oneshot::channel();
        let (ack_tx, ack) = if flags.contains(Flags::ACK) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let waiter = Waiter {
            reply: reply_tx,
            ack: ack_tx,
        };
        let (id, frame, link) = {
            let mut state = lock(&self.state);
            if self.closed.load(Ordering::Acquire) {
                return Err(client_closed());
            }
            // The id is taken under the lock, with its entry: see `Lineage::watermark`.
            let id = self.lineage.next.fetch_add(1, Ordering::SeqCst);
            crate::wire::set_call_id(&mut buf, id);
            let frame = buf.freeze();
            // The clock only matters for an attempt timeout.
            let now = match attempt {
                Some(_) => std::time::Instant::now(),
                None => self.started,
            };
            let on = state
                .table
                .insert(id, frame.clone(), semantics, attempt, now, waiter);
            let link = match on {
                Some(_) => state.link.clone(),
                None => {
                    if !state.reconnecting {
                        if let Some(reason) = state.failure.clone() {
                            if !self.can_redial() {
                                state.table.cancel(id);
                                return Err(RpcError::ConnectionLost(reason));
                            }
                        }
                        self.start_reconnecting(&mut state, "no link".into());
                    }
                    None
                }
            };
            (id, frame, link)
        };
        let mut call = SessionCall {
            session: Arc::clone(self),
            id,
            interface_method: (method.interface, method.method),
            reply: Some(reply),
            ack,
            deadline,
            attempt,
            reader: None,
            finished: false,
            cancel_on_drop: true,
            _permit: permit,
        };
        if let Some(link) = link {
            // A failed send is the link's death, which the session handles: the call waits for
            // the next link.
            if let Ok(reader) = link.send_call_shared(frame).await {
                call.reader = reader;
            }
        }
        Ok(call)
    }

    /// Sends a one-way call on the current link (waiting for one if there is none). Never sent
    /// again: if the link dies with it, it may be lost.
    pub(crate) async fn send_one_way(
        &self,
        method: &MethodDesc,
        flags: Flags,
        size_hint: usize,
        body: impl FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    ) -> Result<(), RpcError> {
        let link = self.link(None).await?;
        let call_id = self.lineage.next.fetch_add(1, Ordering::SeqCst);
        let header = Header {
            flags,
            version: method.version,
            ..Header::new(FrameKind::OneWay, call_id, method.interface, method.method)
        };
        link.send_frame(header, size_hint, body).await
    }

    /// Tells the server which outcomes the client holds, so it can trim its reply cache.
    fn release(&self) {
        if !self.config.peer_keeps_outcomes {
            return;
        }
        let watermark = self.lineage.watermark();
        let zero = (
            crate::ids::InterfaceId::new(0),
            crate::ids::MethodId::new(0),
        );
        self.send_control(Header::new(FrameKind::Release, watermark, zero.0, zero.1));
    }

    /// Sends a frame with no payload on the current link: at once if the link takes it
    /// without waiting (no task, no wake-up), else from a task of its own.
    fn send_control(&self, header: Header) {
        let Some(link) = lock(&self.state).link.clone() else {
            return;
        };
        let mut sending = Box::pin(async move {
            let _ = link.send_frame(header, 0, |_| Ok(())).await;
        });
        if futures::FutureExt::now_or_never(sending.as_mut()).is_none() {
            self.runtime.spawn(sending);
        }
    }

    /// The caller gave up on call `id`: forget it, and tell the server to drop it.
    fn cancel(&self, id: u64, interface: crate::ids::InterfaceId, method: crate::ids::MethodId) {
        let (sent, on_draining, drained) = {
            let mut state = lock(&self.state);
            let sent = state.table.cancel(id);
            let on_draining = match (sent, &state.draining) {
                (Some(Some(generation)), Some(link)) if link.generation_is(generation) => {
                    Some(Arc::clone(link))
                }
                _ => None,
            };
            (sent, on_draining, Self::drained(&mut state))
        };
        let cancel = Header::new(FrameKind::Cancel, id, interface, method);
        match (sent, on_draining) {
            (_, Some(link)) => {
                self.runtime.spawn(async move {
                    let _ = link.send_frame(cancel, 0, |_| Ok(())).await;
                });
            }
            (Some(Some(_)), None) => self.send_control(cancel),
            _ => {}
        }
        if let Some(link) = drained {
            link.close("moved to another instance; its last call finished".to_owned());
        }
    }

    /// The call's attempt timeout passed: send it again on the current link, if still due.
    async fn attempt_expired(&self, id: u64, attempt: Duration) -> Option<ReplyReader> {
        let now = std::time::Instant::now();
        let (link, frame) = {
            let mut state = lock(&self.state);
            let (_, frame) = state.table.attempt_expired(id, attempt, now)?;
            (state.link.clone()?, frame)
        };
        link.send_call_shared(frame).await.ok().flatten()
    }

    /// Ends the session: tells the server goodbye (so it drops the session's state at once),
    /// fails the calls in flight, closes the link.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Callers waiting for a place among the calls in flight stop waiting.
        self.in_flight.close();
        let (link, draining, failed) = {
            let mut state = lock(&self.state);
            (
                state.link.take(),
                state.draining.take(),
                state.table.fail_all(),
            )
        };
        if let Some(draining) = draining {
            draining.shutdown();
        }
        self.forget_callbacks();
        for w in failed {
            let _ = w.reply.send(Err(client_closed()));
        }
        self.changed.notify_waiters();
        // Said only by the last client of this identity on the server's session: a sibling's
        // goodbye would end the session under a client whose link is down, and its calls in
        // flight with it.
        if let Some(link) = link {
            if self.lineage.says_goodbye(self) {
                link.goodbye();
            } else {
                link.shutdown();
            }
        }
    }
}

/// Waits for `changed`, within `deadline`.
async fn wait_until(
    deadline: Option<Instant>,
    changed: impl std::future::Future<Output = ()>,
) -> Result<(), RpcError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, changed)
            .await
            .map_err(|_| RpcError::DeadlineExceeded),
        None => {
            changed.await;
            Ok(())
        }
    }
}

/// Redials until a link is up, the policy gives up, or the session is gone.
async fn reconnect(session: Weak<ClientSession>, reason: String) {
    let started = Instant::now();
    let mut last = reason;
    let mut attempt = 0u32;
    loop {
        let Some(s) = session.upgrade() else { return };
        if s.closed.load(Ordering::Acquire) {
            return;
        }
        let policy = s.config.policy.clone();
        let Some(connector) = s.config.connector.as_ref() else {
            return;
        };
        let left = policy.give_up_value().saturating_sub(started.elapsed());
        let dialed = tokio::time::timeout(left.max(Duration::from_millis(1)), async {
            let link = connector.connect_boxed().await?;
            s.open(link).await
        })
        .await;
        match dialed {
            Ok(Ok(())) => {
                tracing::debug!(attempt, "reconnected");
                return;
            }
            Ok(Err(RpcError::Handshake(
                e @ (HandshakeError::StaleEpoch | HandshakeError::EpochOutOfRange),
            ))) => {
                // Final: the same identity will be refused again.
                last = e.to_string();
                break;
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("reconnecting timed out; last: {last}"),
        }
        if started.elapsed() >= policy.give_up_value() {
            break;
        }
        let delay = policy.delay(attempt, random_u64());
        attempt = attempt.saturating_add(1);
        drop(s);
        tokio::time::sleep(delay).await;
    }
    let Some(s) = session.upgrade() else { return };
    let failed = {
        let mut state = lock(&s.state);
        if state.link.is_some() {
            return;
        }
        state.reconnecting = false;
        state.failure = Some(last.clone());
        state.table.fail_all()
    };
    tracing::warn!(reason = %last, "gave up reconnecting");
    s.changed.notify_waiters();
    for w in failed {
        let _ = w.reply.send(Err(RpcError::ConnectionLost(format!(
            "could not reconnect: {last}"
        ))));
    }
}

/// One of the session's calls, sent (or waiting for a link). Resolves with its outcome;
/// dropping it before then cancels the call.
impl SessionCall {
    /// The call's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

pub(crate) struct SessionCall {
    session: Arc<ClientSession>,
    id: u64,
    interface_method: (crate::ids::InterfaceId, crate::ids::MethodId),
    /// Taken while it is awaited (the wait also borrows the call to drive it).
    reply: Option<oneshot::Receiver<ReplyResult>>,
    ack: Option<oneshot::Receiver<()>>,
    deadline: Option<Instant>,
    attempt: Option<Duration>,
    /// The transport's reading of the reply to the latest copy sent from here (QUIC).
    reader: Option<ReplyReader>,
    finished: bool,
    cancel_on_drop: bool,
    _permit: crate::budget::Taken,
}

impl SessionCall {
    /// Waits for `wait` while polling the reader and sending the call again whenever its
    /// attempt timeout passes.
    async fn drive<T>(&mut self, wait: impl std::future::Future<Output = T>) -> T {
        let mut wait = std::pin::pin!(wait);
        let Some(attempt) = self.attempt else {
            // No attempt timeout: only the reader (if any) to drive beside the wait.
            return driven(&mut self.reader, wait).await;
        };
        loop {
            let outcome = driven(&mut self.reader, async {
                tokio::select! {
                    biased;
                    v = &mut wait => Some(v),
                    () = tokio::time::sleep(attempt) => None,
                }
            })
            .await;
            if let Some(v) = outcome {
                return v;
            }
            if let Some(reader) = self.session.attempt_expired(self.id, attempt).await {
                // Keep reading the previous copy's stream too: dropping it would cancel.
                if let Some(old) = self.reader.replace(reader) {
                    self.session.runtime.spawn(old);
                }
            }
        }
    }

    /// Waits for the outcome, within the deadline.
    pub(crate) async fn reply(mut self) -> ReplyResult {
        let deadline = self.deadline;
        let mut reply = self.reply.take().ok_or_else(client_closed)?;
        let received = match deadline {
            // The timer is made only if the reply is not there at the first look (in process it
            // usually is).
            Some(d) => self
                .drive(crate::deadline::within(d, &mut reply))
                .await
                .map_err(|_| RpcError::DeadlineExceeded)?,
            None => self.drive(&mut reply).await,
        };
        self.finished = true;
        received.map_err(|_| client_closed())?
    }

    /// Waits for the server's ack (or an early outcome), within the deadline; afterwards,
    /// dropping the call no longer cancels it.
    pub(crate) async fn acked(mut self) -> Result<SessionCall, RpcError> {
        if let Some(mut ack) = self.ack.take() {
            let mut early = self.reply.take().ok_or_else(client_closed)?;
            let deadline = self.deadline;
            let wait = async {
                tokio::select! {
                    _ = &mut ack => None,
                    r = &mut early => Some(r),
                }
            };
            let got = match deadline {
                Some(d) => self
                    .drive(tokio::time::timeout_at(d, wait))
                    .await
                    .map_err(|_| RpcError::DeadlineExceeded)?,
                None => self.drive(wait).await,
            };
            match got {
                Some(result) => {
                    let result = result.map_err(|_| client_closed())?;
                    self.finished = true;
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send(result);
                    self.reply = Some(rx);
                }
                None => self.reply = Some(early),
            }
        }
        self.cancel_on_drop = false;
        Ok(self)
    }
}

impl Drop for SessionCall {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            if self.finished || !self.cancel_on_drop {
                self.session.runtime.spawn(reader);
            }
        }
        if self.finished {
            return;
        }
        if self.cancel_on_drop {
            let (interface, method) = self.interface_method;
            self.session.cancel(self.id, interface, method);
        }
    }
}

/// What the session's links tell it.
impl ClientSession {
    /// An answer (or a malformed one) to one of the session's calls.
    pub(crate) fn on_answer(&self, call_id: u64, answer: ReplyResult) {
        let (waiter, release, drained) = {
            let mut state = lock(&self.state);
            let len = answer.as_ref().map_or(0, |(_, frame)| frame.len());
            let waiter = state.table.complete(call_id, len);
            (waiter, state.table.release_due(), Self::drained(&mut state))
        };
        if let Some(waiter) = waiter {
            let _ = waiter.reply.send(answer);
        }
        if let Some(link) = drained {
            link.close("moved to another instance; its last call finished".to_owned());
        }
        if release {
            self.release();
        }
    }

    /// Whether call `call_id` still waits for its outcome.
    pub(crate) fn awaits(&self, call_id: u64) -> bool {
        lock(&self.state).table.waiter_mut(call_id).is_some()
    }

    /// The server acknowledged call `call_id`.
    pub(crate) fn on_ack(&self, call_id: u64) {
        let mut state = lock(&self.state);
        if let Some(ack) = state.table.waiter_mut(call_id).and_then(|w| w.ack.take()) {
            let _ = ack.send(());
        }
    }

    /// Calls wait for the next link, which the reconnecting task opens; without
    /// reconnecting, they fail.
    pub(crate) fn link_closed(&self, generation: u64, reason: &str) {
        let mut state = lock(&self.state);
        if state
            .draining
            .as_ref()
            .is_some_and(|l| l.generation_is(generation))
        {
            // The link being drained died before its calls finished: they go on as any call
            // of a lost link does.
            state.draining = None;
            let now = std::time::Instant::now();
            let relink = state
                .table
                .drain_lost(generation, self.config.attempt_timeout, now);
            let current = state.link.clone();
            let instance = state.table.current_instance();
            drop(state);
            if let (Some(relink), Some(link), Some(instance)) = (relink, current, instance) {
                self.hand_over(relink, &link, instance);
            }
            return;
        }
        let current = state
            .link
            .as_ref()
            .is_some_and(|l| l.generation_is(generation));
        if !current {
            return;
        }
        state.link = None;
        state.table.link_down(generation);
        // The handlers that held them were on that connection: its end ends them.
        self.forget_callbacks();
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if !self.can_redial() {
            let failed = state.table.fail_all();
            state.failure = Some(reason.to_owned());
            drop(state);
            self.changed.notify_waiters();
            for w in failed {
                let _ = w
                    .reply
                    .send(Err(RpcError::ConnectionLost(reason.to_owned())));
            }
            return;
        }
        self.start_reconnecting(&mut state, reason.to_owned());
    }

    /// The server said goodbye on the link of `generation`: it ended the session.
    pub(crate) fn server_goodbye(&self, generation: u64) {
        let failed = lock(&self.state).table.session_ended(generation);
        for w in failed {
            let _ = w.reply.send(Err(RpcError::OutcomeUnknown(
                "the server ended the session (it shut down) while the call was in flight: \
                 it may have run"
                    .to_owned(),
            )));
        }
    }
}

/// Where a client is connected: the address of its current (or last) link and the instance
/// it belongs to.
#[derive(Debug, Default)]
pub(crate) struct Whereabouts {
    current: Mutex<Option<(Option<String>, Address)>>,
}

impl Whereabouts {
    pub(crate) fn set(&self, instance: Option<String>, address: Address) {
        *lock(&self.current) = Some((instance, address));
    }

    pub(crate) fn address(&self) -> Option<Address> {
        lock(&self.current).as_ref().map(|(_, a)| a.clone())
    }

    pub(crate) fn instance(&self) -> Option<String> {
        lock(&self.current).as_ref().and_then(|(i, _)| i.clone())
    }
}
