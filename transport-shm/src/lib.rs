//! Shared-memory transport for Courier between processes on one machine, after LRPC.
//!
//! Work in progress: this crate holds the data path so far, [`ring`], a single-producer,
//! single-consumer ring of records in memory shared with another process, written to treat
//! that memory as hostile. The listener and connector (Unix socket, `SO_PEERCRED`, `memfd`
//! passed with `SCM_RIGHTS`, futex or eventfd wake-ups) come next; see DESIGN.md §6.
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

pub mod ring;
