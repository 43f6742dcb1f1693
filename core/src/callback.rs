//! Callback parameters: a [`Callback<T>`] argument lets a handler call its caller back, as
//! often as it likes and for as long as it keeps the callback (progress reports, partial
//! results), over the same connection.
//!
//! The caller makes the callback from a closure ([`Callback::from_fn`]) or a channel
//! ([`Callback::channel`]); the handler gets a `Callback<T>` whose [`Callback::call`] delivers
//! a value to it, in order, from any task, even after the handler has returned. It ends when
//! the handler drops it (the caller's channel then closes), when the caller stops listening
//! (the handler's next `call` fails with [`RpcError::Closed`]), or when the connection ends.
//!
//! On the wire each delivery is an ordinary call back to the client, to a service every
//! client offers (PROTOCOL.md §3.3), so callbacks obey the limits every call does.
//!
//! ```
//! use courier::{Callback, Client, Server, RpcError};
//! use courier_cbor::Cbor;
//!
//! #[courier::service]
//! pub trait Jobs {
//!     /// Runs a job of `steps` steps, reporting each to `progress`, and returns at once.
//!     async fn start(&self, steps: u32, progress: Callback<u32>) -> String;
//! }
//! struct Worker;
//! impl Jobs for Worker {
//!     async fn start(&self, steps: u32, progress: Callback<u32>) -> String {
//!         tokio::spawn(async move {
//!             for step in 1..=steps {
//!                 if progress.call(step).await.is_err() { break } // the caller left
//!             }
//!         }); // dropping `progress` at the end tells the caller there is no more
//!         "started".into()
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), RpcError> {
//! let server = Server::builder(Cbor::default()).service(JobsServer::new(Worker)).build();
//! let listeners = server.listen(["mem://jobs"])?;
//! tokio::spawn(async move { server.serve_all(listeners).await });
//! let jobs = JobsClient::new(Client::builder(Cbor::default()).connect_to("mem://jobs").await?);
//!
//! let (progress, mut reports) = Callback::channel(8);
//! assert_eq!(jobs.start(3, progress).await?, "started");
//! let mut seen = Vec::new();
//! while let Some(step) = reports.recv().await {
//!     seen.push(step);
//! }
//! assert_eq!(seen, [1, 2, 3]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::codec::Codec;
use crate::error::RpcError;
use crate::ids::{InterfaceId, MethodDesc, MethodId};
use crate::sync::lock;

/// The interface id of the callback service every client offers (`"COCB"`).
pub const INTERFACE: InterfaceId = InterfaceId::new(0x434F_4342);
pub(crate) const SERVICE: &str = "courier::Callback";

/// Delivers one value: `(callback id: u64, value: bytes)` → `()`.
pub(crate) const DELIVER: MethodDesc = MethodDesc {
    service: SERVICE,
    name: "deliver",
    interface: INTERFACE,
    version: 1,
    method: MethodId::new(1),
    idempotent: false,
};

/// One-way: the handler dropped callback `(id: u64,)`; no more values will come.
pub(crate) const CLOSE: MethodDesc = MethodDesc {
    service: SERVICE,
    name: "close",
    interface: INTERFACE,
    version: 1,
    method: MethodId::new(2),
    idempotent: false,
};

/// Where a callback's values go on the caller's side.
trait Sink<T>: Send + Sync {
    /// Delivers `value`; `Err` if nobody listens any more.
    fn deliver(&self, value: T) -> BoxFuture<'_, Result<(), ()>>;
}

struct FnSink<F>(Mutex<F>);

impl<T, F: FnMut(T) + Send> Sink<T> for FnSink<F> {
    fn deliver(&self, value: T) -> BoxFuture<'_, Result<(), ()>> {
        (lock(&self.0))(value);
        Box::pin(async { Ok(()) })
    }
}

struct ChannelSink<T>(mpsc::Sender<T>);

impl<T: Send + 'static> Sink<T> for ChannelSink<T> {
    fn deliver(&self, value: T) -> BoxFuture<'_, Result<(), ()>> {
        // A full channel holds the reply back, and so the handler's next `call`: the caller's
        // pace is the handler's.
        Box::pin(async move { self.0.send(value).await.map_err(drop) })
    }
}

/// Sends one value of callback `id` back over the connection.
pub(crate) type SendValue<T> =
    Box<dyn Fn(u64, T) -> BoxFuture<'static, Result<(), RpcError>> + Send + Sync>;

/// A handler's end of a caller's callback: each value is a call back over the connection.
struct Remote<T> {
    id: u64,
    send: SendValue<T>,
    close: Box<dyn Fn(u64) + Send + Sync>,
    /// One value at a time, so that they arrive in the order `call` was called.
    order: tokio::sync::Mutex<()>,
    /// The connection's pending deliveries (`Limits::max_callback_deliveries`).
    pending: Arc<crate::budget::Budget>,
    /// How long one delivery may take, its wait for its turn included.
    timeout: std::time::Duration,
}

impl<T> Drop for Remote<T> {
    fn drop(&mut self) {
        (self.close)(self.id);
    }
}

impl<T> Remote<T> {
    /// Sends `value` back to the caller, after the values of earlier calls: counted among the
    /// connection's pending deliveries (refused past their limit) and bounded in time.
    async fn send(&self, value: T) -> Result<(), RpcError> {
        let _pending = self.pending.try_take(1).ok_or_else(|| {
            RpcError::Overloaded(
                "too many callback deliveries are pending on this connection \
                 (Limits::max_callback_deliveries): the caller is not taking them"
                    .to_owned(),
            )
        })?;
        let delivery = async {
            let _turn = self.order.lock().await;
            (self.send)(self.id, value).await
        };
        tokio::time::timeout(self.timeout, delivery)
            .await
            .map_err(|_| RpcError::DeadlineExceeded)?
    }
}

impl<T: Send + 'static> Sink<T> for Remote<T> {
    fn deliver(&self, value: T) -> BoxFuture<'_, Result<(), ()>> {
        Box::pin(async move { self.send(value).await.map_err(drop) })
    }
}

/// A callback argument; see the [module docs](self).
pub struct Callback<T> {
    side: Side<T>,
}

enum Side<T> {
    /// Made by the caller: values go to its closure or channel.
    Local(Arc<dyn Sink<T>>),
    /// Received by a handler: values go back over the connection.
    Remote(Arc<Remote<T>>),
}

impl<T> Clone for Callback<T> {
    fn clone(&self) -> Self {
        Callback {
            side: match &self.side {
                Side::Local(s) => Side::Local(Arc::clone(s)),
                Side::Remote(r) => Side::Remote(Arc::clone(r)),
            },
        }
    }
}

impl<T> fmt::Debug for Callback<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.side {
            Side::Local(_) => f.write_str("Callback(local)"),
            Side::Remote(r) => write!(f, "Callback(remote {})", r.id),
        }
    }
}

impl<T: Send + 'static> Callback<T> {
    /// A callback that runs `f` with each value, in order. `f` runs on the connection's
    /// runtime and should be quick; a slow consumer is better served by
    /// [`Callback::channel`].
    pub fn from_fn(f: impl FnMut(T) + Send + 'static) -> Self {
        Callback {
            side: Side::Local(Arc::new(FnSink(Mutex::new(f)))),
        }
    }

    /// A callback that sends each value to `sender`. When the receiver is dropped, the
    /// handler's next [`Callback::call`] fails with [`RpcError::Closed`]; when the handler
    /// drops the callback (or the connection ends), the receiver sees the channel close.
    pub fn from_sender(sender: mpsc::Sender<T>) -> Self {
        Callback {
            side: Side::Local(Arc::new(ChannelSink(sender))),
        }
    }

    /// A callback and the receiver of its values, through a channel of `capacity` values:
    /// a handler that gets ahead of the receiver waits.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Callback::from_sender(tx), rx)
    }

    /// Delivers `value` to the caller and waits until it has taken it. Values delivered from
    /// several tasks arrive one at a time, in the order of these calls. Fails with
    /// [`RpcError::Closed`] once the caller stops listening, and with the connection's error
    /// once it ends.
    pub async fn call(&self, value: T) -> Result<(), RpcError> {
        match &self.side {
            Side::Local(sink) => sink
                .deliver(value)
                .await
                .map_err(|()| RpcError::Closed("the caller stopped listening".to_owned())),
            Side::Remote(remote) => remote.send(value).await,
        }
    }

    /// The caller's sink (for [`Client::register_callback`]): a received callback passed on
    /// forwards to its own caller.
    fn sink(self) -> Arc<dyn Sink<T>> {
        match self.side {
            Side::Local(sink) => sink,
            Side::Remote(remote) => remote,
        }
    }
}

impl<T: Send + 'static> Callback<T> {
    /// The handler's end of a caller's callback `id`: each value goes back through `send`,
    /// within the connection's `pending` deliveries and `timeout`; `close` runs once no
    /// handler holds it any more.
    pub(crate) fn remote(
        id: u64,
        send: SendValue<T>,
        close: Box<dyn Fn(u64) + Send + Sync>,
        (pending, timeout): (Arc<crate::budget::Budget>, std::time::Duration),
    ) -> Self {
        Callback {
            side: Side::Remote(Arc::new(Remote {
                id,
                send,
                close,
                order: tokio::sync::Mutex::new(()),
                pending,
                timeout,
            })),
        }
    }
}

/// A registered callback with its value type erased: it decodes the bytes it is given with
/// the client's codec.
pub(crate) trait Erased: Send + Sync {
    /// Decodes `bytes` and hands the value to the sink.
    fn deliver(&self, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), RpcError>>;
}

struct Decoding<C, T> {
    codec: C,
    sink: Arc<dyn Sink<T>>,
}

impl<C: Codec, T: DeserializeOwned + Send + 'static> Erased for Decoding<C, T> {
    fn deliver(&self, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), RpcError>> {
        Box::pin(async move {
            let value: T = self
                .codec
                .decode(&bytes)
                .map_err(|e| RpcError::BadRequest(e.to_string()))?;
            self.sink
                .deliver(value)
                .await
                .map_err(|()| RpcError::Closed("the caller stopped listening".to_owned()))
        })
    }
}

/// A client's callbacks, by id: what its callback service delivers to.
pub(crate) struct CallbackTable {
    next: std::sync::atomic::AtomicU64,
    sinks: Mutex<HashMap<u64, Arc<dyn Erased>>>,
    /// How many may be open at once: the client's `Limits::max_in_flight`.
    max: std::sync::atomic::AtomicUsize,
}

impl CallbackTable {
    pub(crate) fn new() -> Arc<CallbackTable> {
        Arc::new(CallbackTable {
            next: std::sync::atomic::AtomicU64::new(1),
            sinks: Mutex::new(HashMap::new()),
            max: std::sync::atomic::AtomicUsize::new(crate::Limits::default().max_in_flight),
        })
    }

    /// Bounds the callbacks open at once.
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Registers `callback`, to decode its values with `codec`; its id, to send in its place.
    pub(crate) fn register<C: Codec, T>(
        &self,
        codec: &C,
        callback: Callback<T>,
    ) -> Result<u64, RpcError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let mut sinks = lock(&self.sinks);
        let max = self.max.load(std::sync::atomic::Ordering::Relaxed);
        if sinks.len() >= max {
            return Err(RpcError::Overloaded(format!(
                "{max} callbacks already open on this client"
            )));
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sink = Decoding {
            codec: codec.clone(),
            sink: callback.sink(),
        };
        sinks.insert(id, Arc::new(sink));
        Ok(id)
    }

    /// The sink of callback `id`, while it is listened to.
    pub(crate) fn sink(&self, id: u64) -> Option<Arc<dyn Erased>> {
        lock(&self.sinks).get(&id).cloned()
    }

    /// Forgets callback `id`: its caller closed it, or it stopped listening.
    pub(crate) fn remove(&self, id: u64) {
        lock(&self.sinks).remove(&id);
    }

    /// Ends every callback: the connection they were sent on has ended.
    pub(crate) fn clear(&self) {
        let ended = std::mem::take(&mut *lock(&self.sinks));
        drop(ended);
    }
}
