//! TLS 1.3 over TCP for Courier: calls between machines where UDP (and so QUIC) is blocked.
//!
//! One TCP connection carries every call of a link, multiplexed with Courier's own frames
//! (each says its length in its header), under TLS 1.3 with the ring provider and the ALPN
//! protocol `courier/1`. The TLS settings are `courier-tls`'s, the same as QUIC's: one
//! certificate, one [`ClientTls`], and mutual TLS with [`ServerTls::require_client_certificates`],
//! whose client chain reaches handlers as [`Peer::Network`].
//!
//! Unlike QUIC's stream per call, one byte stream has **head-of-line blocking**: a large frame
//! (a 64 MiB argument) delays the frames written after it, and one lost TCP segment delays
//! every call on the connection until it is sent again. Prefer QUIC where UDP is allowed; see
//! the `link` module for the framing.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use courier::{Client, Server};
//! use courier_cbor::Cbor;
//! use courier_tcp::{ClientTls, DevCert, ServerTls, TcpConnector, TcpListener, TcpOptions};
//!
//! #[courier::service]
//! pub trait Echo {
//!     /// Returns its argument.
//!     async fn echo(&self, text: String) -> String;
//! }
//! struct Me;
//! impl Echo for Me {
//!     async fn echo(&self, text: String) -> String { text }
//! }
//!
//! let cert = DevCert::localhost()?;
//! let listener = TcpListener::bind("127.0.0.1:0".parse()?, ServerTls::dev(&cert), TcpOptions::default())?;
//! let addr = listener.local_addr()?;
//! let server = Server::builder(Cbor::default()).service(EchoServer::new(Me)).build();
//! tokio::spawn(async move { server.serve(listener).await });
//!
//! let connector = TcpConnector::new(addr, "localhost", ClientTls::trusting_dev(&cert), TcpOptions::default())?;
//! let client = EchoClient::new(Client::builder(Cbor::default()).connect(&connector).await?);
//! assert_eq!(client.echo("over TCP".into()).await?, "over TCP");
//! # Ok(()) }
//! ```

#![warn(clippy::unwrap_used)]

mod address;
mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use courier::transport::{Connector, Link, Listener};
use courier::{Peer, TransportError};
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;

pub use address::TcpTransport;
pub use courier_tls::{ClientTls, DevCert, ServerTls, ALPN};

/// Why a TCP listener or connector could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TLS settings could not be made.
    #[error(transparent)]
    Tls(#[from] courier_tls::Error),
    /// The socket could not be bound or read.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Another configuration problem, described.
    #[error("configuration: {0}")]
    Config(String),
}

/// Settings shared by listeners and connectors. Each has a documented default.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    pub(crate) max_frame_size: usize,
    handshake_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    pub(crate) send_queue: usize,
    backlog: usize,
    max_handshakes: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            max_frame_size: courier::Limits::default().frame_size_limit(),
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            send_queue: 256,
            backlog: 128,
            max_handshakes: 256,
        }
    }
}

impl TcpOptions {
    /// The largest frame this side reads; a larger one is not read (its bytes are skipped)
    /// and fails its call with `FrameTooLarge`. Default: the core's frame size limit.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// How long the TCP connect and the TLS handshake may take together; a peer that does
    /// not finish them in time is dropped. Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a frame (or a handshake message) that has begun to arrive may take to arrive
    /// whole; after that the connection is closed, since on one byte stream a stalled frame
    /// stalls every call behind it. Time between frames is not counted. Default: 30 s.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// How many frames may wait for the socket before senders wait in turn (the back-pressure
    /// of a peer that reads slowly). Default: 256.
    pub fn send_queue(mut self, frames: usize) -> Self {
        self.send_queue = frames.max(1);
        self
    }

    /// How many TLS handshakes a listener runs at once; a connection that comes while that
    /// many are under way is closed at once, so that a flood of connections that never
    /// finish TLS cannot hold a task and a descriptor each for the handshake time. Default:
    /// 256.
    pub fn max_handshakes(mut self, handshakes: usize) -> Self {
        self.max_handshakes = handshakes.max(1);
        self
    }

    /// How many connections that finished their TLS handshake may wait for the server to take
    /// them; beyond that, new ones wait in the kernel's queue. Default: 128.
    pub fn backlog(mut self, connections: usize) -> Self {
        self.backlog = connections.max(1);
        self
    }
}

/// A failed TLS handshake as the core reports it: [`TransportError::Tls`] when TLS refused
/// (an untrusted certificate, a refused client certificate), an I/O error otherwise.
fn tls_failed(addr: SocketAddr, e: std::io::Error) -> TransportError {
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(ToString::to_string);
    match refused {
        Some(detail) => TransportError::Tls {
            detail: format!("with {addr}: {detail}"),
            source: Some(Arc::new(e)),
        },
        None => TransportError::io(format!("TLS handshake with {addr}"), e),
    }
}

/// The certificate chain the peer presented (DER, leaf first), if any.
fn certificates(tls: &rustls::CommonState) -> Vec<Vec<u8>> {
    tls.peer_certificates()
        .map(|chain| chain.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default()
}

/// Accepts TLS connections on a TCP socket, each as a Courier link.
///
/// The TLS handshakes run on tasks of their own, so a slow or silent client holds up no other;
/// one that does not finish within [`TcpOptions::handshake_timeout`] is dropped.
#[derive(Debug)]
pub struct TcpListener {
    local: SocketAddr,
    links: mpsc::Receiver<Link>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl TcpListener {
    /// Binds `addr` and accepts connections with `tls`. Call it within a tokio runtime: the
    /// accepting runs on a task of its own.
    pub fn bind(addr: SocketAddr, tls: ServerTls, options: TcpOptions) -> Result<Self, Error> {
        let config = Arc::new(tls.into_rustls()?);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Config(
                "a TCP listener needs a tokio runtime".to_owned(),
            ));
        }
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpListener::from_std(socket)?;
        let local = socket.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, links) = mpsc::channel(options.backlog);
        let accepting = tokio::spawn(accept_loop(socket, acceptor, options, tx));
        Ok(TcpListener {
            local,
            links,
            accepting,
        })
    }

    /// The address the socket is bound to (with the port the system chose for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.local)
    }
}

async fn accept_loop(
    socket: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    options: TcpOptions,
    links: mpsc::Sender<Link>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(options.max_handshakes));
    loop {
        let (tcp, addr) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: the connections already open go on.
                tracing::warn!(error = %e, "could not accept a TCP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A flood of connections that never finish TLS holds a task and a descriptor each
        // for the handshake time: past the bound, new ones are closed at once.
        let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
            tracing::debug!(peer = %addr, "too many TLS handshakes at once: connection closed");
            continue;
        };
        let (acceptor, options, links) = (acceptor.clone(), options.clone(), links.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            drop(permit);
            let certificates = certificates(stream.get_ref().1);
            let peer = Peer::Network { addr, certificates };
            let link = link::link(tokio_rustls::TlsStream::Server(stream), peer, &options);
            // The listener is gone: the link drops, and with it the connection.
            let _ = links.send(link).await;
        });
    }
}

impl Listener for TcpListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        self.links
            .recv()
            .await
            .ok_or_else(|| TransportError::Other("the TCP listener stopped".to_owned()))
    }
}

/// Connects to one server over TLS on TCP. Cheap to clone.
#[derive(Clone)]
pub struct TcpConnector {
    addr: SocketAddr,
    name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    options: TcpOptions,
}

impl std::fmt::Debug for TcpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpConnector")
            .field("addr", &self.addr)
            .field("server_name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TcpConnector {
    /// A connector for the server at `addr`, whose certificate must be valid for
    /// `server_name` (a DNS name or an IP address) and chain to a root of `tls`.
    pub fn new(
        addr: SocketAddr,
        server_name: impl Into<String>,
        tls: ClientTls,
        options: TcpOptions,
    ) -> Result<Self, Error> {
        let name = ServerName::try_from(server_name.into())
            .map_err(|e| Error::Config(format!("server name: {e}")))?;
        let config = Arc::new(tls.into_rustls()?);
        Ok(TcpConnector {
            addr,
            name,
            connector: tokio_rustls::TlsConnector::from(config),
            options,
        })
    }

    async fn open(&self) -> Result<Link, TransportError> {
        let addr = self.addr;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| TransportError::io(format!("TCP connection to {addr}"), e))?;
        let _ = tcp.set_nodelay(true);
        let stream = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| tls_failed(addr, e))?;
        let peer = Peer::Network {
            addr: self.addr,
            certificates: certificates(stream.get_ref().1),
        };
        Ok(link::link(
            tokio_rustls::TlsStream::Client(stream),
            peer,
            &self.options,
        ))
    }
}

impl Connector for TcpConnector {
    async fn connect(&self) -> Result<Link, TransportError> {
        match tokio::time::timeout(self.options.handshake_timeout, self.open()).await {
            Ok(link) => link,
            Err(_) => Err(TransportError::Timeout(format!(
                "no TLS connection to {} within {:?}",
                self.addr, self.options.handshake_timeout
            ))),
        }
    }
}
