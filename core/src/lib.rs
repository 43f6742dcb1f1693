//! Courier: async-first RPC where a service is a Rust trait.
//!
//! `#[courier::service]` on a trait of `async fn`s generates the client stub (`FooClient<C>`)
//! and the server dispatcher (`FooServer<S>`). A [`Codec`] (CBOR in `courier-cbor`, XDR in
//! `courier-xdr`) turns arguments into endianness-neutral bytes, and a transport carries them:
//! [`transport::mem`] within a process, QUIC between machines, shared memory between processes.
//! Codec and transport are chosen independently.
//!
//! ```
//! use courier::{transport::mem, Client, Server, RpcError};
//! use courier_cbor::Cbor;
//!
//! #[courier::service]
//! pub trait Calc {
//!     /// Adds two numbers.
//!     async fn add(&self, a: i32, b: i32) -> i32;
//!     /// Divides, or says why it cannot.
//!     async fn div(&self, a: i32, b: i32) -> Result<i32, String>;
//! }
//!
//! struct MyCalc;
//! impl Calc for MyCalc {
//!     async fn add(&self, a: i32, b: i32) -> i32 { a + b }
//!     async fn div(&self, a: i32, b: i32) -> Result<i32, String> {
//!         a.checked_div(b).ok_or_else(|| "division by zero".to_owned())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), RpcError> {
//! let server = Server::builder(Cbor::default()).service(CalcServer::new(MyCalc)).build();
//! let listener = mem::Listener::bind("calc")?;
//! tokio::spawn(async move { server.serve(listener).await });
//!
//! let calc = CalcClient::new(Client::builder(Cbor::default()).connect(&mem::Dialer::new("calc")).await?);
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert_eq!(calc.div(1, 0).await?, Err("division by zero".to_owned()));
//! # Ok(()) }
//! ```
//!
//! # Call kinds
//!
//! Every method of the stub comes in these forms:
//!
//! | form | resolves when |
//! |---|---|
//! | `calc.add(a, b).await` | the reply arrives |
//! | `calc.add_blocking(a, b)` | the same, blocking a thread that has no runtime |
//! | `calc.add_acked(a, b).await` | the server has the call, before the method runs; the [`Pending`] it returns resolves with the reply |
//!
//! A method marked `#[oneway]` (it must return `()`) is fire and forget: `calc.log(msg).await`
//! resolves once the transport has taken the request, and no reply ever comes. A method marked
//! `#[idempotent]` may run more than once when a link or the server fails (see *Failure
//! semantics*); every other two-way method runs at most once.
//!
//! Parameters are passed by value; a `&mut T` parameter is in-out (copy/restore: the caller's
//! variable gets the handler's final value), and a [`Callback<T>`] parameter lets the handler
//! call the caller back, in order, until it drops it ([`callback`]). Per-call [`Metadata`] goes
//! beside the arguments ([`CallOptions::metadata`], [`Context::metadata`]); every call has a
//! span on each side ([`trace`]); [`Server::shutdown`] stops a server gracefully.
//!
//! A method whose first parameter after `&self` is a [`Context`] receives the call's context:
//! the peer, the deadline, and [`Context::client`] to call back services that the client
//! exported on the same connection ([`ClientBuilder::export`]).
//!
//! # Failure semantics
//!
//! A [`Client`] is a session with one server that outlives its links: when a link dies it
//! reconnects ([`ReconnectPolicy`]: backoff with jitter, on by default), exports its services
//! again, and sends again what each call's semantics allow. A method is *at-most-once* unless
//! it is marked `#[idempotent]` (*at-least-once*); the server keeps the outcomes of
//! at-most-once calls in a reply cache so that a copy never runs the method twice. What the
//! caller sees, and how many times the method ran, when something fails:
//!
//! | call kind | a frame lost, link up | the link cut, server up | server restarted: crashed before / while / after running the method | server gone for good | client crashed |
//! |---|---|---|---|---|---|
//! | **call** (at-most-once, the default) | with an attempt timeout: sent again, the copy answered from the reply cache → reply; without: `DeadlineExceeded` (ran 0 or 1 times) | reconnect, copy sent, attached or answered from the cache → reply (ran once) | `OutcomeUnknown` (ran 0 / 0–1, perhaps partly / 1 times) | `ConnectionLost` when the reconnect policy gives up, or `DeadlineExceeded` (ran 0 or 1) | handler dropped after the server's session linger, or at once when the client's next epoch connects (ran 0 or 1, perhaps partly) |
//! | **`#[idempotent]` call** (at-least-once) | with an attempt timeout: sent again → reply (ran 1 or more); without: `DeadlineExceeded` | reconnect, sent again → reply (ran 1, or 2 if it had finished before the copy came) | sent again to the new server → reply (ran once there, plus 0 / 0–1 / 1 on the old one) | as for a call | as for a call |
//! | **acknowledged call** (`_acked`) | as for a call (at-most-once, or at-least-once if `#[idempotent]`); the ack comes before the method runs | as for a call | as for a call | as for a call | as for a call |
//! | **one-way** (`#[oneway]`) | lost (ran 0) | lost if the server had not read it (ran 0 or 1); never sent again | ran 0 or 1 | `send` fails with `ConnectionLost` | ran 0 or 1 (once sent, it runs) |
//!
//! A copy of an at-most-once call never runs the method a second time: a copy whose cached reply was
//! evicted (the cache is bounded by `Limits::reply_cache_bytes` and `reply_cache_age`) fails with
//! `ReplyEvicted`. Calls in flight are sent again only within their deadline; a call without one
//! waits as long as the reconnect policy keeps trying (30 s by default), then fails with
//! `ConnectionLost`.
//!
//! A client that restarts can keep its identity ([`Identity::load_or_create`]) so that the
//! server recognizes the new epoch and drops the old incarnation's handlers at once.
//!
//! # Addresses and binding by name
//!
//! [`ClientBuilder::connect_to`] and [`Server::listen`] take addresses (`quic://host:port`,
//! `shm:///path`, `mem://name`; see [`address`]), served by the transports registered in
//! [`address::Transports`]; [`Server::serve_all`] serves several listeners at once.
//! [`ClientBuilder::connect_named`] finds a server by name in a [`directory`] (a
//! [`directory::StaticDirectory`], or etcd with `courier-binding`), over shared memory when the
//! server runs on the same host, and follows the directory when its instance leaves.
//!
//! # Limits
//!
//! Nothing a peer sends can panic this side or make it allocate without bound. [`Limits`] holds
//! the frame size, calls in flight, concurrent handlers, the handshake's time and the number of
//! connections a listener serves (in all and per peer), each with a safe default. A malformed
//! frame fails that one call; the connection's other calls go on.
//!
//! # Writing a transport
//!
//! A transport implements the traits of [`transport`]. The `testing` feature adds
//! `courier::testing`, the conformance suite every transport of this workspace passes: call
//! kinds, frame limits, cancellation, peer death, stalled readers, silent handshakes, churn and
//! hostile frames, in one `courier::conformance_tests!` invocation.

#![warn(clippy::unwrap_used)]

// The generated code names `::courier`; this makes that path work inside this crate too.
extern crate self as courier;

pub mod address;
mod budget;
pub mod callback;
mod client;
pub mod codec;
mod context;
mod deadline;
pub mod directory;
pub mod dispatch;
mod engine;
pub mod error;
mod handler;
mod identity;
mod options;
mod peer;
mod server;
mod shutdown;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trace;
pub mod transport;

pub use courier_proto::{ids, metadata, wire};

pub use callback::Callback;
pub use client::{Client, ClientBuilder, Pending, PendingInOut};
pub use codec::{Codec, CodecSet, WithCodec};
pub use context::Context;
pub use courier_macros::service;
pub use error::{AddressError, Cause, CodecError, HandshakeError, RpcError, TransportError};
pub use identity::Identity;
pub use ids::{InterfaceId, MethodDesc, MethodId};
pub use metadata::Metadata;
pub use options::{CallOptions, Limits, ReconnectPolicy};
pub use peer::Peer;
pub use server::{Server, ServerBuilder};
pub use shutdown::ShutdownReport;

/// Re-exports for the code that `#[courier::service]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// The README's code blocks, compiled and run as doc-tests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
