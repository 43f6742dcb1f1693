//! Shared-memory transport for Courier between processes on one machine, after LRPC.
//!
//! [`ShmListener`] and [`ShmConnector`] connect two processes through a Unix socket, then move
//! every frame through rings in an anonymous shared segment ([`ring`]), which each side treats
//! as hostile memory. Linux only.
//!
//! As in LRPC, a call runs to completion on the server's task that reads it when its handler
//! does not wait, and a caller reads its own reply from the ring while its call is out.
//! [`ShmOptions::wait`] chooses how each end waits for frames ([`Wait`]): the trade between
//! latency and CPU, with each mode's cost measured in `benches/RESULTS.md`.
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

// Under `--cfg loom` only the rings and their models are built: tokio leaves out its I/O
// there, and the models need none of it.
#[cfg(not(loom))]
mod address;
#[cfg(not(loom))]
mod end;
#[cfg(not(loom))]
mod link;
#[cfg(all(test, loom))]
#[allow(clippy::unwrap_used)]
mod models;
#[cfg(not(loom))]
mod reader;
#[cfg(not(loom))]
mod report;
pub mod ring;
#[cfg(not(loom))]
mod sys;

#[cfg(not(loom))]
pub use address::ShmTransport;
#[cfg(not(loom))]
pub use link::{ShmConnector, ShmListener, ShmOptions, Wait};
#[cfg(not(loom))]
pub use report::report;

/// Test support: a client that breaks the rules on purpose. Not a public API.
#[doc(hidden)]
#[cfg(not(loom))]
pub mod __hostile {
    use std::os::fd::AsRawFd;
    use std::path::Path;

    /// Connects to the listener at `path` like a client, overwrites the whole shared segment
    /// with bytes from `seed`, rings the server's doorbell, and returns the socket (closed when
    /// dropped) so the caller can watch for the server dropping the connection.
    pub fn connect_and_scribble(
        path: &Path,
        seed: u64,
    ) -> std::io::Result<std::os::unix::net::UnixStream> {
        let socket = std::os::unix::net::UnixStream::connect(path)?;
        let [memfd, _mine, server_bell] = crate::sys::recv_fds::<3>(socket.as_raw_fd())?;
        let len = crate::sys::file_len(&memfd)?;
        let map = crate::sys::Mapping::new(&memfd, len)?;
        let mut x = seed | 1;
        for i in 0..map.len() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // SAFETY: `i` is within the mapping, which lives until the end of this function.
            unsafe { map.base().add(i).write_volatile(x as u8) };
        }
        crate::sys::ring(server_bell.as_raw_fd());
        Ok(socket)
    }

    /// Connects to the listener at `path` like a client, publishes the first record of a
    /// message that it never finishes, rings the server's doorbell, and returns the socket so
    /// the caller can watch for the server dropping the connection.
    pub fn connect_and_stall(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
        let socket = std::os::unix::net::UnixStream::connect(path)?;
        let [memfd, _mine, server_bell] = crate::sys::recv_fds::<3>(socket.as_raw_fd())?;
        let len = crate::sys::file_len(&memfd)?;
        let map = crate::sys::Mapping::new(&memfd, len)?;
        let capacity = len / 2 - crate::ring::HEADER;
        // SAFETY: ring 0 (client to server) starts at the mapping's base, which is page-aligned
        // and holds HEADER + capacity bytes for it; `map` outlives the producer, which is used
        // only within this function, and this process is the ring's only producer.
        let mut producer = unsafe { crate::ring::Producer::new(map.base(), capacity) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        producer
            .try_push(&[0u8; 16], true)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        crate::sys::ring(server_bell.as_raw_fd());
        Ok(socket)
    }
}
