//! What a transport implements, and the in-process transport [`mem`].
//!
//! A transport turns an address into a [`Link`]: a pair of halves that carry *messages*
//! (whole frames, and the two handshake messages) in order, plus the [`Peer`] it authenticated.
//! The connection engine does the rest: call table, deadlines, cancellation, dispatch.
//!
//! # Marshal once, into the memory that travels
//!
//! Sending is two steps so that the codec writes straight into transport memory:
//! [`LinkTx::buffer`] hands out a [`FrameBuf`] (the engine writes the header and the codec
//! writes the payload into it), then [`LinkTx::send`] publishes it. Receiving yields a
//! [`Bytes`] holding one whole frame, which the codec decodes in place.
//!
//! How the transports implement this:
//!
//! - **In-process** ([`mem`]): the buffer is a `BytesMut`; `send` freezes it and, once the
//!   handshake is done, hands it to the receiving engine on the sender's own task
//!   ([`FrameSink::push`]; before, through a bounded channel), so the receiver decodes the very
//!   bytes the sender wrote, and a handler that does not wait runs on its caller's thread.
//! - **QUIC**: the buffer is a `BytesMut`; `send` writes it to the call's stream (a new
//!   bidirectional stream for a call, the call's stream for its reply, a unidirectional stream
//!   for a one-way call), which quinn sends without another copy. `recv` reads whole frames off
//!   the streams, bounded by the frame size limit.
//! - **Shared memory** (`courier-shm`): `buffer` reserves room at the tail of the sending ring
//!   in the shared segment and returns a `FrameBuf` that writes into it directly (a frame that
//!   outgrows the room moves to the heap and is copied into the ring in pieces); `send`
//!   publishes the ring's tail and wakes the receiver if it sleeps. `recv` copies each frame
//!   out of the ring once before it is decoded: the segment is writable by the peer, so bytes
//!   validated in place could change before they are used.

pub mod mem;

use std::any::Any;
use std::fmt;
use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;

use crate::error::TransportError;
use crate::peer::Peer;

/// Memory for one outgoing message, provided by the transport.
pub trait FrameBuf: BufMut + Send + Any {
    /// How many bytes have been written so far.
    fn written(&self) -> usize;

    /// Overwrites `bytes.len()` bytes already written, starting at `offset`; used to fill in
    /// the payload length once the codec is done.
    ///
    /// # Panics
    ///
    /// May panic if the range was not written yet; the engine only patches its own header.
    fn patch(&mut self, offset: usize, bytes: &[u8]);
}

impl FrameBuf for BytesMut {
    fn written(&self) -> usize {
        self.len()
    }

    fn patch(&mut self, offset: usize, bytes: &[u8]) {
        self[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
}

/// Heap memory for one outgoing message, for transports whose frames live on the heap
/// (in-process channels and QUIC).
/// The hint is capped: it is not a promise, and must not allocate before anything is written.
pub fn heap_buffer(size_hint: usize) -> Box<dyn FrameBuf> {
    Box::new(BytesMut::with_capacity(size_hint.min(64 * 1024)))
}

/// Takes back a buffer made by [`heap_buffer`]; any other kind of buffer is an error naming
/// `transport`.
pub fn take_heap_buffer(
    message: Box<dyn FrameBuf>,
    transport: &str,
) -> Result<BytesMut, TransportError> {
    let any: Box<dyn Any> = message;
    any.downcast::<BytesMut>().map(|b| *b).map_err(|_| {
        TransportError::Other(format!("the {transport} link was given a foreign buffer"))
    })
}

/// What [`LinkTx::try_send_shared`] (or [`FrameSink::try_push`], which never answers
/// [`TrySend::SentReading`]) did with a frame.
#[non_exhaustive]
pub enum TrySend {
    /// The transport took it.
    Sent,
    /// The transport took a call, and gives the caller this to poll while it waits for the
    /// reply (see [`LinkTx::send_call`]).
    SentReading(ReplyReader),
    /// Sending it now would wait (for room, for a lock), or the transport has no path that
    /// does not: here it is back, for [`LinkTx::send_shared`].
    Wait(Bytes),
    /// The link failed or closed.
    Failed(TransportError),
}

impl fmt::Debug for TrySend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySend::Sent => f.write_str("Sent"),
            TrySend::SentReading(_) => f.write_str("SentReading(..)"),
            TrySend::Wait(frame) => f.debug_tuple("Wait").field(&frame.len()).finish(),
            TrySend::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// The reading of one call's reply, handed to the caller by [`LinkTx::send_call`]: it delivers
/// what it reads to the connection and ends with the call's stream.
pub type ReplyReader = BoxFuture<'static, ()>;

/// The sending half of a link. Shared by every call on the connection.
pub trait LinkTx: Send + Sync + fmt::Debug + 'static {
    /// Memory for a message of about `size_hint` bytes. May wait for room (back-pressure).
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>>;

    /// Memory for a message at once, if the transport has it without waiting: saves the
    /// boxed future of [`LinkTx::buffer`] on every frame. `None` means "ask `buffer`", which
    /// is also the default.
    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        let _ = size_hint;
        None
    }

    /// Sends a message written into a buffer from [`LinkTx::buffer`] or
    /// [`LinkTx::try_buffer`]. Resolves once the transport has taken it; may wait for room
    /// (back-pressure).
    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>>;

    /// Closes the sending direction: the peer's `recv` ends after what was sent.
    fn close(&self);

    /// Ends the link with a goodbye ([`wire::goodbye`](crate::wire::goodbye), a Release of
    /// every call id): the peer's engine must get `goodbye` before it sees the link end. The
    /// default sends it as any frame, then closes, which suits transports that deliver what
    /// was sent before a close. A transport whose close may discard frames still in flight
    /// carries the goodbye in the close itself (QUIC: application close code 1, which the
    /// receiving side turns back into the goodbye frame, PROTOCOL.md §7.5).
    fn goodbye(&self, goodbye: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let sent = self.send_shared(goodbye).await;
            self.close();
            sent
        })
    }

    /// Sends a whole frame that the engine keeps too (a call it may send again, an outcome it
    /// caches), like [`LinkTx::send`]. The default copies it into a [`LinkTx::buffer`];
    /// transports whose frames live on the heap send the bytes themselves, without a copy.
    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let mut buf = self.buffer(frame.len()).await?;
            buf.put_slice(&frame);
            self.send(buf).await
        })
    }

    /// Sends a whole frame the engine keeps, as [`LinkTx::send_shared`] does, if that needs no
    /// waiting: no boxed future, no task. The engine tries this first for the frames it keeps
    /// (replies it caches; calls go to [`LinkTx::try_send_call_shared`], which by default
    /// comes here). The default hands every frame back.
    fn try_send_shared(&self, frame: Bytes) -> TrySend {
        TrySend::Wait(frame)
    }

    /// [`LinkTx::try_send_shared`] for a call: the transport may hand back a reader of its
    /// reply ([`TrySend::SentReading`]). The default sends it as any other frame.
    fn try_send_call_shared(&self, frame: Bytes) -> TrySend {
        self.try_send_shared(frame)
    }

    /// [`LinkTx::send_call`] for a whole frame the engine keeps; see [`LinkTx::send_shared`].
    fn send_call_shared(
        &self,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        Box::pin(async move {
            let mut buf = self.buffer(frame.len()).await?;
            buf.put_slice(&frame);
            self.send_call(buf).await
        })
    }

    /// Sends a call's frame, like [`LinkTx::send`], and returns the reading of its reply if
    /// the transport reads each call's reply on a stream of its own (QUIC): a future for the
    /// caller to poll while it waits. The frames it reads still go to the connection as usual;
    /// polling it on the caller's task saves a task per call and a wake-up per reply.
    /// Dropping it before the reply has come must tell the peer the call is cancelled.
    ///
    /// The default sends with [`LinkTx::send`] and returns `None`: the transport reads on its
    /// own.
    fn send_call(
        &self,
        message: Box<dyn FrameBuf>,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        Box::pin(async move { self.send(message).await.map(|()| None) })
    }
}

/// The receiving half of a link. Owned by the connection's reader.
pub trait LinkRx: Send + fmt::Debug + 'static {
    /// The next whole message, or `None` once the peer has closed the link.
    ///
    /// A transport that refuses to read a frame larger than its limit may deliver the frame's
    /// header alone; the engine then fails that call with `FrameTooLarge`.
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>>;

    /// The largest frame this transport reads, if it enforces a limit of its own. The engine
    /// applies the smaller of this and its configured limit, so an oversized frame is reported
    /// as `FrameTooLarge` whichever side of the link refused it.
    fn frame_limit(&self) -> Option<usize> {
        None
    }

    /// Switches to push delivery once the handshake is done: the transport hands every frame
    /// to `sink` from its own tasks, as it arrives, instead of waiting to be polled by
    /// [`LinkRx::recv`], and reports the link's end through [`FrameSink::close`]. This saves a
    /// hop and a task wake-up per frame on transports that already read on many tasks at once
    /// (one per QUIC stream).
    ///
    /// Returns true if the transport switched; false (the default) to keep being polled. After
    /// a switch the engine drops the receiver, so the transport moves out what it still needs.
    fn start(&mut self, sink: FrameSink) -> bool {
        let _ = sink;
        false
    }
}

/// What a [`FrameSink`] delivers to: the engine's side of a link, seen from the transport only
/// through these two calls.
pub(crate) trait Deliver: Send + Sync {
    /// Handles one frame; a call's handler comes back to be run.
    fn deliver(self: std::sync::Arc<Self>, frame: Bytes) -> Option<BoxFuture<'static, ()>>;
    /// The link ended.
    fn close(&self, reason: String);
    /// Whether the connection has closed: frames handed over now are dropped.
    fn is_closed(&self) -> bool;
    /// Whether this side still waits for the reply to its call `call_id`.
    fn awaits(&self, call_id: u64) -> bool;
    /// Handles one frame on the sender's task and runs what it starts there (see
    /// [`FrameSink::push`]), unless it is a one-way call that must first wait for room: that
    /// comes back.
    fn try_push(self: std::sync::Arc<Self>, frame: Bytes) -> Result<(), Bytes>;
    /// [`Deliver::try_push`] for a one-way call, once room frees among the handlers.
    fn push_waiting(self: std::sync::Arc<Self>, frame: Bytes) -> BoxFuture<'static, ()>;
}

/// Where a transport in push mode delivers frames; see [`LinkRx::start`].
///
/// Delivering is synchronous and cheap: the engine routes the frame and spawns whatever work it
/// needs. The sink holds the connection weakly, so a transport may keep it as long as it likes.
#[derive(Clone)]
pub struct FrameSink {
    target: std::sync::Weak<dyn Deliver>,
}

impl FrameSink {
    pub(crate) fn new(target: std::sync::Weak<dyn Deliver>) -> Self {
        FrameSink { target }
    }

    /// Hands one whole frame to the connection.
    ///
    /// If the frame is a call, the returned future runs its handler: await it on the delivering
    /// task (a transport that reads each call on a task of its own saves a spawn that way) or
    /// spawn it. Dropping it drops the handler, as a Cancel would.
    #[must_use = "a returned handler does nothing unless awaited or spawned"]
    pub fn deliver(&self, frame: Bytes) -> Option<BoxFuture<'static, ()>> {
        self.target.upgrade()?.deliver(frame)
    }

    /// Hands one whole frame to the connection and runs what it starts on this task, as the
    /// in-process transport does from its sender's task and the shared-memory one from its
    /// ring's reader: a call's handler runs right here if it completes on its first poll
    /// (LRPC's run to completion), else on a task of its own. In process, the reply comes
    /// back the same way and is at its caller before this returns. A one-way call waits here
    /// for room among the handlers (it cannot be refused with an answer): that is the
    /// back-pressure on its sender. Fails with [`TransportError::Closed`] once the connection
    /// has closed.
    ///
    /// LRPC's trade: a handler that computes for long without ever waiting holds this task
    /// (and its thread) as long; one that waits goes to a task of its own at its first wait.
    pub async fn push(&self, frame: Bytes) -> Result<(), TransportError> {
        match self.try_push(frame) {
            TrySend::Sent | TrySend::SentReading(_) => Ok(()),
            TrySend::Failed(e) => Err(e),
            TrySend::Wait(frame) => match self.target.upgrade() {
                Some(target) => {
                    target.push_waiting(frame).await;
                    Ok(())
                }
                None => Err(TransportError::Closed),
            },
        }
    }

    /// [`FrameSink::push`] without waiting: a one-way call that would wait for room comes
    /// back.
    pub fn try_push(&self, frame: Bytes) -> TrySend {
        let Some(target) = self.target.upgrade() else {
            return TrySend::Failed(TransportError::Closed);
        };
        if target.is_closed() {
            return TrySend::Failed(TransportError::Closed);
        }
        match target.try_push(frame) {
            Ok(()) => TrySend::Sent,
            Err(frame) => TrySend::Wait(frame),
        }
    }

    /// Whether this side still waits for the reply to its call `call_id`: a transport whose
    /// callers read their own replies asks, to stop reading for a call answered some other
    /// way. False once the connection is gone.
    pub fn awaits(&self, call_id: u64) -> bool {
        self.target.upgrade().is_some_and(|t| t.awaits(call_id))
    }

    /// Tells the connection the link has ended; calls in flight fail with `ConnectionLost`
    /// carrying `reason`.
    pub fn close(&self, reason: String) {
        if let Some(target) = self.target.upgrade() {
            target.close(reason);
        }
    }
}

impl fmt::Debug for FrameSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSink").finish_non_exhaustive()
    }
}

/// A connected link: both halves and who is on the other end.
#[derive(Debug)]
pub struct Link {
    /// The sending half.
    pub tx: Box<dyn LinkTx>,
    /// The receiving half.
    pub rx: Box<dyn LinkRx>,
    /// The peer, as the transport authenticated it.
    pub peer: Peer,
}

/// Accepts links, on the server side.
///
/// Implement this; [`DynListener`] makes any listener usable as a trait object
/// ([`BoxListener`]), for code that picks its transport at run time.
pub trait Listener: Send {
    /// Waits for the next link. An error here ends [`Server::serve`](crate::Server::serve).
    fn accept(&mut self) -> impl Future<Output = Result<Link, TransportError>> + Send;
}

/// Opens links to one address, on the client side.
///
/// Implement this; [`DynConnector`] makes any connector usable as a trait object
/// ([`BoxConnector`]), for code that keeps a connector to redial or picks its transport at run
/// time.
pub trait Connector: Send + Sync {
    /// Opens a new link.
    fn connect(&self) -> impl Future<Output = Result<Link, TransportError>> + Send;
}

/// A [`Listener`] as a trait object. Implemented for every listener; a [`BoxListener`] is a
/// [`Listener`] again, so a server serves it like any other.
///
/// ```
/// use courier::transport::{mem, BoxListener, BoxConnector};
/// let listener: BoxListener = Box::new(mem::Listener::bind("dyn-example").unwrap());
/// let connector: BoxConnector = Box::new(mem::Dialer::new("dyn-example"));
/// # drop((listener, connector));
/// ```
pub trait DynListener: Send {
    /// [`Listener::accept`], boxed.
    fn accept_boxed(&mut self) -> BoxFuture<'_, Result<Link, TransportError>>;
}

impl<L: Listener> DynListener for L {
    fn accept_boxed(&mut self) -> BoxFuture<'_, Result<Link, TransportError>> {
        Box::pin(self.accept())
    }
}

/// A listener of a transport chosen at run time.
pub type BoxListener = Box<dyn DynListener>;

// For any lifetime of the trait object, not only `'static`: the compiler's check that a future
// holding a `BoxListener` is `Send` asks for it.
impl<'a> Listener for Box<dyn DynListener + 'a> {
    fn accept(&mut self) -> impl Future<Output = Result<Link, TransportError>> + Send {
        (**self).accept_boxed()
    }
}

/// A [`Connector`] as a trait object. Implemented for every connector; a [`BoxConnector`] is a
/// [`Connector`] again.
pub trait DynConnector: Send + Sync {
    /// [`Connector::connect`], boxed.
    fn connect_boxed(&self) -> BoxFuture<'_, Result<Link, TransportError>>;
}

impl<C: Connector> DynConnector for C {
    fn connect_boxed(&self) -> BoxFuture<'_, Result<Link, TransportError>> {
        Box::pin(self.connect())
    }
}

/// A connector of a transport chosen at run time.
pub type BoxConnector = Box<dyn DynConnector>;

impl<'a> Connector for Box<dyn DynConnector + 'a> {
    fn connect(&self) -> impl Future<Output = Result<Link, TransportError>> + Send {
        (**self).connect_boxed()
    }
}

/// A shared connector of a transport chosen at run time: cheap to clone, so a client can keep a
/// copy to redial with ([`ClientBuilder::connect`](crate::ClientBuilder::connect)).
impl Connector for std::sync::Arc<dyn DynConnector> {
    fn connect(&self) -> impl Future<Output = Result<Link, TransportError>> + Send {
        (**self).connect_boxed()
    }
}
