//! Per-call options on the client, and per-connection limits on both sides.

use std::time::Duration;

/// Options for one call: its deadline, and how long one attempt waits before the call is sent
/// again.
///
/// Stubs carry a default set; `FooClient::with_options` makes a stub with other defaults.
///
/// ```
/// use std::time::Duration;
/// let opts = courier::CallOptions::new().timeout(Duration::from_millis(250));
/// assert_eq!(opts.timeout_value(), Some(Duration::from_millis(250)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallOptions {
    timeout: Option<Duration>,
    attempt_timeout: Option<Duration>,
    metadata: crate::Metadata,
}

impl CallOptions {
    /// No deadline: the call waits until the reply arrives or the connection is lost.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the call a deadline `timeout` after it starts. The server is told the remaining
    /// budget and drops the handler when it passes; the caller gets
    /// [`RpcError::DeadlineExceeded`](crate::RpcError::DeadlineExceeded).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout, if one is set.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sends the call again over the same link when `attempt` passes without its outcome (the
    /// seed's "retransmit until we get a response"), until the deadline. The server runs an
    /// at-most-once call once however many copies arrive. Off by default: QUIC, shared memory
    /// and in-process links do not lose frames (a lost link is handled by reconnecting); set it
    /// over a link that may drop frames, or to cover a server that lost a call. Overrides the
    /// client's default ([`ClientBuilder::attempt_timeout`](crate::ClientBuilder::attempt_timeout)).
    pub fn attempt_timeout(mut self, attempt: Duration) -> Self {
        self.attempt_timeout = Some(attempt);
        self
    }

    /// The attempt timeout, if one is set.
    pub fn attempt_timeout_value(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Sends `metadata` with the call, beside its arguments; the handler reads it with
    /// [`Context::metadata`](crate::Context::metadata). Metadata that breaks the receiver's
    /// rules or the client's [`Limits`] fails the call at once with
    /// [`RpcError::BadRequest`](crate::RpcError::BadRequest). Default: none (and a call
    /// without metadata sends not a byte more).
    pub fn metadata(mut self, metadata: crate::Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata sent with the call.
    pub fn metadata_value(&self) -> &crate::Metadata {
        &self.metadata
    }
}

/// How a client reconnects when its link dies: exponential backoff with jitter, for as long
/// as [`ReconnectPolicy::give_up_after`] allows (and each call waits no longer than its own
/// deadline).
///
/// On by default: the first retry after 20 ms, doubling to at most 2 s between attempts, giving
/// up after 30 s without a link (calls then fail with
/// [`RpcError::ConnectionLost`](crate::RpcError::ConnectionLost); the next call starts
/// reconnecting again).
///
/// ```
/// use std::time::Duration;
/// use courier::ReconnectPolicy;
/// let patient = ReconnectPolicy::default().give_up_after(Duration::from_secs(300));
/// assert!(patient.delay(0, 0) <= Duration::from_millis(20));
/// assert!(patient.delay(30, u64::MAX) <= Duration::from_secs(2));
/// assert!(ReconnectPolicy::never().is_never());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    enabled: bool,
    initial: Duration,
    max_delay: Duration,
    give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
            give_up_after: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// Never reconnect: when the link dies, calls in flight fail with
    /// [`RpcError::ConnectionLost`](crate::RpcError::ConnectionLost), and so does every later
    /// call (the behaviour of a plain connection).
    pub fn never() -> Self {
        ReconnectPolicy {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether this policy never reconnects.
    pub fn is_never(&self) -> bool {
        !self.enabled
    }

    /// The delay before the first retry; each later one doubles it, up to
    /// [`ReconnectPolicy::max_delay`].
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// The longest delay between two attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How long to keep trying without a link before failing the calls that wait.
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up_after = limit;
        self
    }

    /// How long to keep trying.
    pub fn give_up_value(&self) -> Duration {
        self.give_up_after
    }

    /// The delay before retry number `attempt` (0 for the first), with `jitter` (any random
    /// number) spreading it over its upper half, so that clients that lost the same server do
    /// not all come back at the same instant.
    pub fn delay(&self, attempt: u32, jitter: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let half = base / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let spread = if nanos == 0 { 0 } else { jitter % (nanos + 1) };
        half + Duration::from_nanos(spread)
    }
}

/// Limits that protect one side of a connection from its peer. Each has a safe default.
///
/// ```
/// let limits = courier::Limits::default().max_frame_size(1 << 20).max_in_flight(64);
/// assert_eq!(limits.frame_size_limit(), 1 << 20);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub(crate) max_frame_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_handlers: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_peer: usize,
    pub(crate) max_call_bytes: usize,
    pub(crate) max_server_call_bytes: usize,
    pub(crate) reply_cache_bytes: usize,
    pub(crate) reply_cache_age: Duration,
    pub(crate) session_linger: Duration,
    pub(crate) max_sessions: usize,
    pub(crate) max_metadata_entries: usize,
    pub(crate) max_metadata_bytes: usize,
    pub(crate) max_callback_deliveries: usize,
    pub(crate) callback_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_size: 16 * 1024 * 1024 + 64 * 1024,
            max_in_flight: 1024,
            max_handlers: 4096,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_peer: 64,
            max_call_bytes: 256 << 20,
            max_server_call_bytes: 2 << 30,
            reply_cache_bytes: 64 << 20,
            reply_cache_age: Duration::from_secs(120),
            session_linger: Duration::from_secs(30),
            max_sessions: 4096,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
            max_callback_deliveries: 1024,
            callback_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Largest frame (header and payload) this side sends or accepts. Default: 16 MiB plus
    /// 64 KiB, so a 16 MiB byte string and its encoding overhead fit. A larger frame is refused with
    /// [`RpcError::FrameTooLarge`](crate::RpcError::FrameTooLarge); the connection goes on.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(crate::wire::HEADER_LEN);
        self
    }

    /// How many calls this side may have waiting for replies at once. Default: 1024. Further
    /// calls wait for a slot (back-pressure), within their deadline.
    pub fn max_in_flight(mut self, calls: usize) -> Self {
        self.max_in_flight = calls.max(1);
        self
    }

    /// How many of the peer's calls may run here at once. Default: 4096. A call beyond it is
    /// refused at once with [`RpcError::Overloaded`](crate::RpcError::Overloaded) rather than
    /// queued without bound. A one-way call cannot be refused with an answer, so beyond it the
    /// connection stops reading until a handler ends (the transport then pushes back on the
    /// peer); a handler that waits for a reply on the same connection (a call back to the peer)
    /// while every place is taken would wait for that reader, so keep such handlers well
    /// under this limit.
    pub fn max_handlers(mut self, calls: usize) -> Self {
        self.max_handlers = calls.max(1);
        self
    }

    /// How long the handshake may take. Default: 10 s. A server closes a link whose client
    /// has not sent a valid hello by then, so a silent or garbled client holds its resources
    /// no longer.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How many connections one listener may serve at once ([`Server::serve`]). Default:
    /// 1024. A client beyond it is refused in the handshake with
    /// [`HandshakeError::Busy`](crate::HandshakeError::Busy). What all the connections
    /// together can make the server hold is capped apart from their number
    /// ([`Limits::max_server_call_bytes`], and the QUIC listener's receive ceiling), so this
    /// limit is about descriptors, tasks and per-connection buffers (a shared-memory
    /// connection maps two rings); raise it with the machine.
    ///
    /// [`Server::serve`]: crate::Server::serve
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// How many of one listener's connections may come from the same peer: the same network
    /// address (any port), or the same local user for shared memory. Default: 64. Keeps one
    /// client from taking all of [`Limits::max_connections`].
    pub fn max_connections_per_peer(mut self, connections: usize) -> Self {
        self.max_connections_per_peer = connections.max(1);
        self
    }

    /// Bytes the frames of the peer's running calls may add up to on one connection. Default:
    /// 256 MiB (never less than the frame size limit). A running handler holds its call's
    /// arguments, and its result until the peer takes it, so this bounds what one connection
    /// can make this side hold, even when the peer stops reading: a call beyond it is refused
    /// with [`RpcError::Overloaded`](crate::RpcError::Overloaded), a one-way call waits.
    pub fn max_call_bytes(mut self, bytes: usize) -> Self {
        self.max_call_bytes = bytes;
        self
    }

    /// The same as [`Limits::max_call_bytes`], for all the connections of one server together.
    /// Default: 2 GiB (never less than the frame size limit): with the other defaults, what a
    /// server's peers can make it hold stays within a few GiB however many they are. Server
    /// only.
    pub fn max_server_call_bytes(mut self, bytes: usize) -> Self {
        self.max_server_call_bytes = bytes;
        self
    }

    /// Bytes a server keeps of the outcomes of at-most-once calls, across all its clients, so
    /// that a copy of a call (re-sent after a lost link or an attempt timeout) is answered
    /// without running the method again. Default: 64 MiB. Each outcome counts its frame and 64
    /// bytes of bookkeeping. Clients release what they have received as they go; beyond this
    /// bound the oldest outcomes are evicted, and a copy of an evicted call is refused with
    /// [`RpcError::ReplyEvicted`](crate::RpcError::ReplyEvicted), never run twice. Server only.
    pub fn reply_cache_bytes(mut self, bytes: usize) -> Self {
        self.reply_cache_bytes = bytes;
        self
    }

    /// How long a server keeps an outcome its client has not yet released. Default: 120 s:
    /// longer than a client usually takes to reconnect. Server only.
    pub fn reply_cache_age(mut self, age: Duration) -> Self {
        self.reply_cache_age = age;
        self
    }

    /// How long a server keeps a client's session (its running calls and cached outcomes) after
    /// the client's last link closed without a goodbye, waiting for it to reconnect. Default:
    /// 30 s. After it, the client's handlers are dropped, and a client that comes back is
    /// told (its Welcome names a new session): its at-most-once calls in flight fail with
    /// [`RpcError::OutcomeUnknown`](crate::RpcError::OutcomeUnknown) rather than run again. A
    /// client that closes cleanly (the last one of its identity in its process) ends its
    /// session at once. Server only.
    pub fn session_linger(mut self, linger: Duration) -> Self {
        self.session_linger = linger;
        self
    }

    /// How many [`Callback::call`](crate::Callback::call) deliveries may be pending on one
    /// connection at once (sent, or waiting for their turn), across all its callbacks.
    /// Default: 1024. A delivery past it fails at once with
    /// [`RpcError::Overloaded`](crate::RpcError::Overloaded), so a caller that passes callbacks and never takes their
    /// values cannot make the handler's side hold unbounded work. The side that calls back
    /// (usually the server) applies it.
    pub fn max_callback_deliveries(mut self, deliveries: usize) -> Self {
        self.max_callback_deliveries = deliveries.max(1);
        self
    }

    /// How long one [`Callback::call`](crate::Callback::call) delivery may take, its wait for
    /// its turn included, before it fails with
    /// [`RpcError::DeadlineExceeded`](crate::RpcError::DeadlineExceeded). Default: 30 s. The side that calls back applies
    /// it; the caller's handler of the delivery gets the same deadline.
    pub fn callback_timeout(mut self, timeout: Duration) -> Self {
        self.callback_timeout = timeout;
        self
    }

    /// How many client sessions a server keeps. Default: 4096. A session outlives its client's
    /// links for [`Limits::session_linger`]; past this bound, a new client's session ends the
    /// one whose client left longest ago (its handlers are dropped). Each session remembers
    /// its client's last 1,024 one-way call ids (about 32 KiB), so this bounds that memory as
    /// the reply cache's bytes bound the rest. Server only.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions.max(1);
        self
    }

    /// The per-connection call-bytes budget in force: at least one frame's worth.
    /// How many metadata entries one call may carry ([`CallOptions::metadata`]). Default: 64.
    /// A call with more is refused (a Protocol error for that call; the connection goes on).
    pub fn max_metadata_entries(mut self, entries: usize) -> Self {
        self.max_metadata_entries = entries;
        self
    }

    /// How many bytes one call's metadata block may take (keys, values and their lengths).
    /// Default: 16 KiB; at most 65,535 (the block's length field). A call with more is
    /// refused (a Protocol error for that call; the connection goes on).
    pub fn max_metadata_bytes(mut self, bytes: usize) -> Self {
        self.max_metadata_bytes = bytes.min(usize::from(u16::MAX));
        self
    }

    pub(crate) fn call_bytes_budget(&self) -> usize {
        self.max_call_bytes.max(self.max_frame_size)
    }

    /// The per-server call-bytes budget in force: at least one frame's worth.
    pub(crate) fn server_call_bytes_budget(&self) -> usize {
        self.max_server_call_bytes.max(self.max_frame_size)
    }

    /// The frame size limit in force.
    pub fn frame_size_limit(&self) -> usize {
        self.max_frame_size
    }
}
