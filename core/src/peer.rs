//! Who is on the other end of a connection.

use std::net::SocketAddr;

/// The identity of the peer of a connection, as the transport established it.
///
/// The server's [`Authorizer`](crate::dispatch::Authorizer) decides on it, and handlers read it
/// from their [`Context`](crate::Context).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Peer {
    /// A peer in this process, over the in-process transport.
    InProcess {
        /// The name the listener was bound to, if any.
        name: Option<String>,
    },
    /// A process on this machine, identified by the kernel (for example through `SO_PEERCRED`).
    Process {
        /// The peer's user id.
        uid: u32,
        /// The peer's group id.
        gid: u32,
        /// The peer's process id.
        pid: u32,
    },
    /// A peer across a network, identified by its address and, with mutual TLS, its
    /// certificate chain (DER, leaf first).
    Network {
        /// The peer's address.
        addr: SocketAddr,
        /// The peer's certificate chain, when it presented one.
        certificates: Vec<Vec<u8>>,
    },
}
