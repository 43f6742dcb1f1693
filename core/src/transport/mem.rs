//! The in-process transport: services and clients within one process, over bounded channels.
//!
//! Frames move as [`Bytes`] without being copied. A listener is bound to a name in a
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Connector, FrameBuf, Link, LinkRx, LinkTx};
use crate::error::TransportError;
use crate::peer::Peer;

/// How many messages each direction of a link buffers before `send` waits.
const CHANNEL_DEPTH: usize = 256;
/// How many connections a listener queues before `connect` waits.
const BACKLOG: usize = 128;

#[derive(Debug)]
struct Tx {
    // `None` once closed; cloned out per send so that `close` needs no await.
    chan: Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl Tx {
    fn sender(&self) -> Option<mpsc::Sender<Bytes>> {
        self.chan.lock().ok().and_then(|g| g.clone())
    }

    async fn deliver(&self, message: Box<dyn FrameBuf>) -> Result<(), TransportError> {
        let buf = super::take_heap_buffer(message, "in-process")?;
        self.deliver_bytes(buf.freeze()).await
    }

    async fn deliver_bytes(&self, frame: Bytes) -> Result<(), TransportError> {
        let sender = self.sender().ok_or(TransportError::Closed)?;
        sender.send(frame).await.map_err(|_| TransportError::Closed)
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

    fn close(&self) {
        if let Ok(mut g) = self.chan.lock() {
            g.take();
        }
    }
}

#[derive(Debug)]
struct Rx(mpsc::Receiver<Bytes>);

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move { Ok(self.0.recv().await) })
    }
}

fn half(name: &Option<String>, tx: mpsc::Sender<Bytes>, rx: mpsc::Receiver<Bytes>) -> Link {
    Link {
        tx: Box::new(Tx {
            chan: Mutex::new(Some(tx)),
        }),
        rx: Box::new(Rx(rx)),
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
    (half(&name, a_tx, b_rx), half(&name, b_tx, a_rx))
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
