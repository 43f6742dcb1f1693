//! Shared-memory transport for Courier between processes on one machine, after LRPC.
//!
//! [`ShmListener`] and [`ShmConnector`] connect two processes through a Unix socket, then move
//! every frame through rings in an anonymous shared segment ([`ring`]), which each side treats
//! as hostile memory. Linux only.
//!
//! ```
//! # use courier_shm::ring::{Consumer, Producer, HEADER};
//! #[repr(C, align(64))]
//! struct Segment([u8; HEADER + 256]);
//! let mut segment = Box::new(Segment([0; HEADER + 256]));
//! let base = segment.0.as_mut_ptr();
//! // SAFETY: the segment is 64-aligned, HEADER + 256 bytes, and outlives both ends.
//! let (mut producer, mut consumer) = unsafe {
//!     (Producer::new(base, 256).unwrap(), Consumer::new(base, 256, 1 << 20).unwrap())
//! };
//! assert!(producer.try_push(b"hello", false).unwrap());
//! assert_eq!(consumer.try_pop().unwrap().as_deref(), Some(&b"hello"[..]));
//! ```

#![warn(clippy::unwrap_used)]

#[cfg(not(target_os = "linux"))]
compile_error!("courier-shm needs Linux: memfd_create, eventfd and SO_PEERCRED");

mod link;
pub mod ring;
mod sys;

pub use link::{ShmConnector, ShmListener, ShmOptions};
