//! A server link's part in its client's session: the thin driver around
//! [`Sessions`](courier_proto::session::replies::Sessions).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::AbortHandle;
use tokio::runtime::Handle;

use super::{lock, Shared};
use crate::peer::Peer;
use crate::shutdown::Lifecycle;
use crate::wire::{ErrorCode, ErrorPayload, FrameKind, Header};
use courier_proto::session::replies::{Begin, Called, Hello, SessionRef, Sessions, Waiters};

/// Every client's session on one server, shared by its links.
pub(crate) type ServerSessions = Arc<Mutex<Sessions<AbortHandle, LinkRef>>>;

/// A link waiting for a call's outcome, compared by identity so that it waits once.
#[derive(Debug)]
pub(crate) struct LinkRef(Weak<Shared>);

impl LinkRef {
    /// The link, if it is still open.
    pub(crate) fn open(&self) -> Option<Arc<Shared>> {
        self.0.upgrade().filter(|l| !l.is_closed())
    }
}

impl PartialEq for LinkRef {
    fn eq(&self, other: &LinkRef) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

/// The session of the client on the other end of one server link.
pub(crate) struct Served {
    sessions: ServerSessions,
    /// The server's life: its running handlers are counted for a graceful shutdown.
    pub(crate) lifecycle: Arc<Lifecycle>,
    at: SessionRef,
    client_id: u128,
    linger: Duration,
    /// Whether this link still counts among the client's links (until it closes, or this is
    /// dropped without having served: a handshake that failed after the hello).
    joined: AtomicBool,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(runtime) = Handle::try_current() {
            self.link_closed(&runtime);
        } else {
            self.leave();
        }
    }
}

impl Served {
    /// Joins (or starts, or replaces) `client`'s session for a link whose hello said `epoch`.
    /// `None` if the epoch is older than the one the server knows: refuse the link. (An epoch
    /// too far ahead is refused before this: see [`epoch_in_range`].)
    pub(crate) fn join(
        sessions: &ServerSessions,
        lifecycle: &Arc<Lifecycle>,
        client_id: u128,
        peer: &Peer,
        epoch: u64,
        linger: Duration,
    ) -> Option<Served> {
        let client = (client_id, principal(peer));
        let (hello, at) = lock(sessions).hello(client, epoch);
        match hello {
            Hello::Accepted(aborts) => {
                if !aborts.is_empty() {
                    tracing::debug!(client_id, "a new client took the session of one long gone");
                }
                for abort in aborts {
                    abort.abort();
                }
            }
            Hello::Reincarnated(aborts) => {
                tracing::debug!(
                    client_id,
                    epoch,
                    aborted = aborts.len(),
                    "a client restarted"
                );
                for abort in aborts {
                    abort.abort();
                }
            }
            Hello::Stale => return None,
        }
        Some(Served {
            sessions: Arc::clone(sessions),
            lifecycle: Arc::clone(lifecycle),
            at: at?,
            client_id,
            linger,
            joined: AtomicBool::new(true),
        })
    }

    /// The id the Welcome names for this link: the server's `instance` id with the session's
    /// number mixed in. The same on every link of one session; another value once the server
    /// has forgotten the session (linger, eviction, goodbye, a newer epoch) or restarted, so
    /// that a client that reconnects knows whether its at-most-once calls in flight may be
    /// sent again.
    pub(crate) fn welcome_id(&self, instance: u128) -> u128 {
        courier_proto::session::replies::welcome_id(instance, self.at)
    }

    /// Takes this link off the client's links, once; true if the client has none left.
    fn leave(&self) -> bool {
        if !self.joined.swap(false, Ordering::AcqRel) {
            return false;
        }
        let now = std::time::Instant::now();
        lock(&self.sessions).link_closed(self.at, now)
    }

    /// A call arrived on `link`; see [`Sessions::begin`]. A call to run is counted among the
    /// server's running handlers under the sessions' lock, so that a shutdown, which stops
    /// new calls under the same lock, counts every handler it must wait for.
    pub(crate) fn begin(&self, header: &Header, abort: AbortHandle, link: &Arc<Shared>) -> Begin {
        let called = Called {
            interface: header.interface.get(),
            method: header.method.get(),
        };
        let mut sessions = lock(&self.sessions);
        let waiter = LinkRef(Arc::downgrade(link));
        let begin = sessions.begin(self.at, header.call_id, called, abort, waiter);
        if matches!(begin, Begin::Run) {
            self.lifecycle.handler_started();
        }
        begin
    }

    /// A one-way call arrived: whether to run it (counted as [`Served::begin`] counts).
    pub(crate) fn one_way(&self, call: u64) -> bool {
        let mut sessions = lock(&self.sessions);
        let run = sessions.one_way(self.at, call);
        if run {
            self.lifecycle.handler_started();
        }
        run
    }

    /// A call finished with `frame` at `now`: who waits for it (send it to each with
    /// [`Served::deliver`]).
    pub(crate) fn finish(
        &self,
        call: u64,
        frame: &Bytes,
        keep: bool,
        now: std::time::Instant,
    ) -> Waiters<LinkRef> {
        // Only a kept outcome needs a handle of its own on the frame.
        let kept = keep.then(|| frame.clone());
        lock(&self.sessions).finish(self.at, call, kept, keep, now)
    }

    /// Sends an outcome to the links that wait for it, but `sent`, which has it already
    /// unless a copy came on it while the call ran (it may have come after the outcome went).
    pub(crate) async fn deliver(
        waiters: Waiters<LinkRef>,
        sent: &Arc<Shared>,
        call: u64,
        frame: Bytes,
    ) {
        let again = waiters.asked_again();
        for link in waiters.into_iter().filter_map(|w| w.0.upgrade()) {
            if link.is_closed() || (Arc::ptr_eq(sent, &link) && !again) {
                continue;
            }
            if let Err(e) = link.send_shared(frame.clone()).await {
                tracing::debug!(call, error = %e, "could not send an outcome");
            }
        }
    }

    /// The client cancelled a call on `link`: abort its handler, wherever it runs, and tell
    /// the other links that wait for it (copies attached there) that no outcome will come.
    pub(crate) fn cancel(&self, call: u64, link: &Arc<Shared>) {
        let now = std::time::Instant::now();
        let cancelled = lock(&self.sessions).cancel(self.at, call, now);
        let Some((abort, waiters, called)) = cancelled else {
            return;
        };
        abort.abort();
        let message = format!("call {call} was cancelled by its client; it does not run again");
        let frame = refusal_frame(call, called, ErrorCode::Cancelled, message);
        for other in waiters.into_iter().filter_map(|w| w.open()) {
            if !Arc::ptr_eq(&other, link) {
                other.send_aside(frame.clone());
            }
        }
    }

    /// The client released the outcomes below `watermark`; or, with `u64::MAX`, said goodbye
    /// on this link: if no other link of the client's is open (other clients in its process
    /// may share its identity), its session ends now rather than after the linger.
    pub(crate) fn release(&self, watermark: u64) {
        let aborts = if watermark == u64::MAX {
            if !self.leave() {
                return;
            }
            let now = std::time::Instant::now();
            lock(&self.sessions).expire(self.at, Duration::ZERO, now)
        } else {
            // The released frames are dropped (freed) after the lock, not under it.
            let released = lock(&self.sessions).release(self.at, watermark);
            drop(released);
            Vec::new()
        };
        for abort in aborts {
            abort.abort();
        }
    }

    /// This link closed: if it was the client's last, the session ends after the linger unless
    /// the client comes back.
    pub(crate) fn link_closed(&self, runtime: &Handle) {
        if !self.leave() {
            return;
        }
        let sessions = Arc::clone(&self.sessions);
        let (at, client_id, linger) = (self.at, self.client_id, self.linger);
        runtime.spawn(async move {
            tokio::time::sleep(linger).await;
            let now = std::time::Instant::now();
            let aborts = lock(&sessions).expire(at, linger, now);
            if !aborts.is_empty() {
                tracing::debug!(
                    client_id,
                    aborted = aborts.len(),
                    "a client's session expired"
                );
            }
            for abort in aborts {
                abort.abort();
            }
        });
    }
}

/// An Error frame with `code` for call `call` of a session, which `called` names: how the
/// server answers the waiters of a call it ended (cancelled, or aborted by a shutdown).
pub(crate) fn refusal_frame(
    call: u64,
    called: Called,
    code: ErrorCode,
    message: impl Into<String>,
) -> bytes::Bytes {
    let header = Header::new(
        FrameKind::Error,
        call,
        crate::ids::InterfaceId::new(called.interface),
        crate::ids::MethodId::new(called.method),
    );
    super::error_frame(&header, ErrorPayload::new(code, message))
}

/// How far ahead of this server's clock an epoch may be: a day. Courier's clients take the
/// start time in µs as their epoch, or count up by one per start from a file; either stays
/// far below this. Without the bound, a peer that knows a client id (without mutual TLS it is
/// a bearer credential) could say hello with epoch `u64::MAX` and lock that client out for
/// the server's life; with it, the lock-out lasts at most a day past the forger's hello.
pub(crate) const EPOCH_LEAD: Duration = Duration::from_secs(24 * 60 * 60);

/// Whether `epoch` is at most [`EPOCH_LEAD`] ahead of the wall clock (in µs since 1970).
pub(crate) fn epoch_in_range(epoch: u64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let bound = (now + EPOCH_LEAD).as_micros();
    u128::from(epoch) <= bound
}

/// A digest of what the transport authenticated about the peer (see
/// [`ClientKey`](courier_proto::session::replies::ClientKey)), keyed at random per process so that no
/// peer can make its principal collide with another's.
fn principal(peer: &Peer) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut h = KEY.get_or_init(Default::default).build_hasher();
    match peer {
        Peer::Network { certificates, .. } if !certificates.is_empty() => {
            1u8.hash(&mut h);
            certificates.hash(&mut h);
        }
        Peer::Process { uid, .. } => {
            2u8.hash(&mut h);
            uid.hash(&mut h);
        }
        _ => return 0,
    }
    h.finish()
}
