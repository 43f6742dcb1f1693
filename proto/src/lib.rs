//! Courier's protocol as plain data and state machines: everything that decides, nothing that
//! waits.
//!
//! This crate holds what a Courier peer must agree on and decide, with no runtime, clock,
//! socket or task: the frame header and handshake ([`wire`]), the ids that name services and
//! methods ([`ids`]), per-call metadata ([`metadata`]), and the session state machines
//! ([`session`]) that make at-most-once calls run at most once across links, reconnects and
//! restarts. Time comes in as [`std::time::Instant`]s the caller passes; frames come in as
//! bytes; decisions come out as values. `courier` is the async layer on top: it owns the links,
//! the timers and the tasks, and re-exports [`wire`], [`ids`] and [`metadata`].
//!
//! The whole protocol, with the QUIC and shared-memory mappings, is `PROTOCOL.md` at the
//! repository root.
//!
//! ```
//! use courier_proto::ids::{stable_id, InterfaceId, MethodId};
//! use courier_proto::wire::{Claims, FrameKind, Header};
//!
//! // A call's header: 32 bytes, big-endian, the same whatever the codec.
//! let interface = InterfaceId::new(stable_id("courier_examples::Kv"));
//! let call = Header::new(FrameKind::Call, 1, interface, MethodId::new(stable_id("get")));
//! let bytes = call.to_bytes();
//! assert_eq!(Header::decode(&bytes), Ok(call));
//!
//! // What a peer can read from a frame it refuses, to answer the right call.
//! let claims = Claims::read(&bytes[..20]);
//! assert_eq!((claims.call_id, claims.interface), (Some(1), Some(interface)));
//! ```

#![forbid(unsafe_code)]

pub mod connection;
pub mod handlers;
pub mod ids;
pub mod metadata;
pub mod received;
pub mod session;
pub mod wire;
