//! The in-process transport: services and clients within one process.
//!
//! Frames move as [`Bytes`] without being copied: through bounded channels until the handshake
//! is done, then handed by the sender straight to the receiving engine, which runs a call whose
//! handler does not wait right there, on the caller's thread (LRPC's run to completion). A listener is bound to a name in a
//! process-wide table; [`connect`] (or a [`Dialer`]) reaches it by that name. [`pair`] makes
//! one link of each end without a name.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use courier::transport::{mem, Listener};
//! let mut listener = mem::Listener::bind("docs-example").unwrap();
//! let client_end = mem::connect("docs-example").await.unwrap();
//! let server_end = listener.accept().await.unwrap();
//! # drop((client_end, server_end));
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, Notify};

use super::{Connector, FrameBuf, FrameSink, Link, LinkRx, LinkTx, TrySend};
use crate::error::TransportError;
use crate::peer::Peer;

/// How many messages each direction of a link buffers before `send` waits (before the
/// receiving engine starts; after, frames are handed over directly).
const CHANNEL_DEPTH: usize = 256;
/// How many connections a listener queues before `connect` waits.
const BACKLOG: usize = 128;

/// One direction of a link. Until the receiving engine starts (the handshake travels before
/// it), frames wait in a bounded queue that [`LinkRx::recv`] reads; from then on the sender
/// hands each frame straight to the engine ([`FrameSink::push`]), on its own task: a call runs
/// on its caller's thread, and the reply is there before the send returns. No task, no
/// wake-up, no hand-off: LRPC's structure, which only a transport within one address space
/// can have in full.
#[derive(Debug)]
struct Direction {
    /// Set when the receiving engine starts; read without a lock on every frame after.
    sink: OnceLock<FrameSink>,
    /// Set once the frames queued before the start have been handed over: a frame sent
    /// directly must not overtake them.
    drained: AtomicBool,
    drained_now: Notify,
    queue: Mutex<Queue>,
}

#[derive(Debug)]
enum Queue {
    /// Before the start: frames go through the channel.
    Open(mpsc::Sender<Bytes>),
    /// The engine started; `sink` is set.
    Started,
    /// The sender closed.
    Closed,
}

impl Direction {
    fn new(sender: mpsc::Sender<Bytes>) -> Arc<Direction> {
        Arc::new(Direction {
            sink: OnceLock::new(),
            drained: AtomicBool::new(false),
            drained_now: Notify::new(),
            queue: Mutex::new(Queue::Open(sender)),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        crate::sync::lock(&self.queue)
    }

    /// Waits until the frames queued before the start have been handed over.
    async fn until_drained(&self) {
        loop {
            let notified = self.drained_now.notified();
            if self.drained.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Debug)]
struct Tx(Arc<Direction>);

impl Tx {
    async fn deliver(&self, message: Box<dyn FrameBuf>) -> Result<(), TransportError> {
        let buf = super::take_heap_buffer(message, "in-process")?;
        self.deliver_bytes(buf.freeze()).await
    }

    async fn deliver_bytes(&self, frame: Bytes) -> Result<(), TransportError> {
        let direction = &self.0;
        loop {
            if let Some(sink) = direction.sink.get() {
                if !direction.drained.load(Ordering::Acquire) {
                    direction.until_drained().await;
                }
                return sink.push(frame).await;
            }
            let sender = match &*direction.queue() {
                Queue::Open(sender) => sender.clone(),
                // The sink is set before the queue says so, under the same lock.
                Queue::Started => continue,
                Queue::Closed => return Err(TransportError::Closed),
            };
            let permit = sender.reserve().await.map_err(|_| TransportError::Closed)?;
            // Queue only while the queue is still the way in: the start drains it under
            // this lock, and a frame queued after that would never be read.
            match &*direction.queue() {
                Queue::Open(_) => {
                    permit.send(frame);
                    return Ok(());
                }
                Queue::Started => continue,
                Queue::Closed => return Err(TransportError::Closed),
            }
        }
    }

    fn close(&self) {
        let (was, drained) = {
            let mut queue = self.0.queue();
            let was = std::mem::replace(&mut *queue, Queue::Closed);
            (was, self.0.drained.load(Ordering::Acquire))
        };
        // Before the start, dropping the queue's sender ends the receiver's `recv`; after
        // it, the engine is told directly, once the frames queued before the start are in
        // (until then, the task handing them over tells it).
        if let (Queue::Started, true, Some(sink)) = (was, drained, self.0.sink.get()) {
            sink.close("the peer closed the connection".to_owned());
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.close();
    }
}

impl LinkTx for Tx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        let buf = super::heap_buffer(size_hint);
        Box::pin(async move { Ok(buf) })
    }

    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        Some(super::heap_buffer(size_hint))
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.deliver(message))
    }

    fn send_call(
        &self,
        message: Box<dyn FrameBuf>,
    ) -> BoxFuture<'_, Result<Option<super::ReplyReader>, TransportError>> {
        Box::pin(async move { self.deliver(message).await.map(|()| None) })
    }

    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.deliver_bytes(frame))
    }

    fn send_call_shared(
        &self,
        frame: Bytes,
    ) -> BoxFuture<'_, Result<Option<super::ReplyReader>, TransportError>> {
        Box::pin(async move { self.deliver_bytes(frame).await.map(|()| None) })
    }

    fn try_send_shared(&self, frame: Bytes) -> TrySend {
        let direction = &self.0;
        match direction.sink.get() {
            Some(sink) if direction.drained.load(Ordering::Acquire) => sink.try_push(frame),
            _ => TrySend::Wait(frame),
        }
    }

    fn close(&self) {
        Tx::close(self);
    }
}

#[derive(Debug)]
struct Rx {
    direction: Arc<Direction>,
    queue: mpsc::Receiver<Bytes>,
}

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move { Ok(self.queue.recv().await) })
    }

    fn start(&mut self, sink: FrameSink) -> bool {
        let direction = Arc::clone(&self.direction);
        let (_, mut queue) = mpsc::channel(1);
        std::mem::swap(&mut queue, &mut self.queue);
        {
            let mut state = direction.queue();
            let _ = direction.sink.set(sink.clone());
            if let Queue::Open(_) = *state {
                // Dropping our sender lets the queue end once the frames in it are read.
                *state = Queue::Started;
            }
        }
        // The frames queued before the start go first, in order, each one-way call waiting
        // for room as it would have in the queue; senders wait for `drained` meanwhile.
        let runtime = tokio::runtime::Handle::current();
        runtime.spawn(async move {
            while let Some(frame) = queue.recv().await {
                if sink.push(frame).await.is_err() {
                    break;
                }
            }
            let closed = {
                let state = direction.queue();
                direction.drained.store(true, Ordering::Release);
                matches!(*state, Queue::Closed)
            };
            direction.drained_now.notify_waiters();
            if closed {
                sink.close("the peer closed the connection".to_owned());
            }
        });
        true
    }
}

fn half(
    name: &Option<String>,
    out: Arc<Direction>,
    inbound: (Arc<Direction>, mpsc::Receiver<Bytes>),
) -> Link {
    Link {
        tx: Box::new(Tx(out)),
        rx: Box::new(Rx {
            direction: inbound.0,
            queue: inbound.1,
        }),
        peer: Peer::InProcess { name: name.clone() },
    }
}

/// Two connected ends of one in-process link.
pub fn pair() -> (Link, Link) {
    pair_named(None)
}

fn pair_named(name: Option<String>) -> (Link, Link) {
    let (a_tx, a_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (b_tx, b_rx) = mpsc::channel(CHANNEL_DEPTH);
    let (a, b) = (Direction::new(a_tx), Direction::new(b_tx));
    (
        half(&name, Arc::clone(&a), (Arc::clone(&b), b_rx)),
        half(&name, b, (a, a_rx)),
    )
}

struct Binding {
    token: u64,
    sender: mpsc::Sender<Link>,
}

type Registry = Mutex<HashMap<String, Binding>>;

fn registry() -> &'static Registry {
    static NAMES: OnceLock<Registry> = OnceLock::new();
    NAMES.get_or_init(Default::default)
}

fn lock_registry(
) -> Result<std::sync::MutexGuard<'static, HashMap<String, Binding>>, TransportError> {
    registry()
        .lock()
        .map_err(|_| TransportError::Other("in-process name table poisoned".into()))
}

/// Accepts in-process links made to its name. Dropping it frees the name.
#[derive(Debug)]
pub struct Listener {
    name: String,
    token: u64,
    incoming: mpsc::Receiver<Link>,
}

impl Listener {
    /// Binds `name` in this process. Fails with [`TransportError::AddrInUse`] if a live listener
    /// already holds it.
    pub fn bind(name: impl Into<String>) -> Result<Listener, TransportError> {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        let name = name.into();
        let mut names = lock_registry()?;
        if names.get(&name).is_some_and(|b| !b.sender.is_closed()) {
            return Err(TransportError::AddrInUse(name));
        }
        let (sender, incoming) = mpsc::channel(BACKLOG);
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        names.insert(name.clone(), Binding { token, sender });
        Ok(Listener {
            name,
            token,
            incoming,
        })
    }

    /// The name this listener is bound to.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Ok(mut names) = lock_registry() {
            // Remove our own binding only, never one that replaced it.
            if names.get(&self.name).is_some_and(|b| b.token == self.token) {
                names.remove(&self.name);
            }
        }
    }
}

impl super::Listener for Listener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        self.incoming.recv().await.ok_or(TransportError::Closed)
    }
}

/// Connects to the in-process listener bound to `name`.
pub async fn connect(name: &str) -> Result<Link, TransportError> {
    let sender = lock_registry()?
        .get(name)
        .map(|b| b.sender.clone())
        .ok_or_else(|| TransportError::NotFound(format!("mem://{name}")))?;
    let (ours, theirs) = pair_named(Some(name.to_owned()));
    sender
        .send(theirs)
        .await
        .map_err(|_| TransportError::NotFound(format!("mem://{name}")))?;
    Ok(ours)
}

/// A [`Connector`] for the in-process listener bound to a name.
#[derive(Debug, Clone)]
pub struct Dialer {
    name: String,
}

impl Dialer {
    /// A dialer for `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Dialer { name: name.into() }
    }
}

impl Connector for Dialer {
    async fn connect(&self) -> Result<Link, TransportError> {
        connect(&self.name).await
    }
}
