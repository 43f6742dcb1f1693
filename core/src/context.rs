//! [`Context`]: what a handler knows about the call it serves.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::Shared;
use crate::ids::{InterfaceId, MethodId};
use crate::peer::Peer;
use crate::wire::Header;

/// Per call, on the server: who called, until when, and a way to call them back.
///
/// A method receives it when its first parameter (after `&self`) has type `Context`.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
    call_id: u64,
    interface: InterfaceId,
    method: MethodId,
    deadline: Option<Instant>,
    metadata: crate::Metadata,
}

impl Context {
    pub(crate) fn new(
        shared: Arc<Shared>,
        header: &Header,
        deadline: Option<Instant>,
        metadata: crate::Metadata,
    ) -> Self {
        Context {
            shared,
            call_id: header.call_id,
            interface: header.interface,
            method: header.method,
            deadline,
            metadata,
        }
    }

    /// The metadata the caller sent with the call
    /// ([`CallOptions::metadata`](crate::CallOptions::metadata)); empty if none.
    pub fn metadata(&self) -> &crate::Metadata {
        &self.metadata
    }

    /// Who called, as the transport authenticated them.
    pub fn peer(&self) -> &Peer {
        self.shared.peer()
    }

    /// The caller's id for this call (unique among its calls in flight).
    pub fn call_id(&self) -> u64 {
        self.call_id
    }

    /// The interface called.
    pub fn interface(&self) -> InterfaceId {
        self.interface
    }

    /// The method called.
    pub fn method(&self) -> MethodId {
        self.method
    }

    /// When the caller gives up, if it set a deadline. The handler is dropped at that instant.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline, if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The codec this connection's handshake chose.
    pub fn codec_name(&self) -> &str {
        self.shared.codec_name()
    }

    /// The connection the call came in on.
    pub(crate) fn link(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The connection's budget of pending callback deliveries, and how long one may take.
    pub(crate) fn callback_limits(&self) -> (Arc<crate::budget::Budget>, std::time::Duration) {
        (
            Arc::clone(&self.shared.callback_deliveries),
            self.shared.limits().callback_timeout,
        )
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("peer", self.peer())
            .field("call_id", &self.call_id)
            .field("interface", &self.interface)
            .field("method", &self.method)
            .field("deadline", &self.deadline)
            .finish()
    }
}
