//! Per-call options on the client, and per-connection limits on both sides.

use std::time::Duration;

/// Options for one call: its deadline.
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

    /// The per-connection call-bytes budget in force: at least one frame's worth.
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
