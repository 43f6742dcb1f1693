//! QUIC transport for Courier: calls between machines over quinn, with rustls (ring) and TLS 1.3.
//!
//! Each call gets a bidirectional stream of its own, so a slow or large call never blocks
//! another; a one-way call gets a unidirectional stream; cancelling a call resets its stream.
//! The ALPN protocol is `courier/1`. See the `link` module docs for the exact mapping.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use courier::{Client, Server};
//! use courier_cbor::Cbor;
//! use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
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
//! // One call makes a development certificate; the client trusts exactly that one.
//! let cert = DevCert::localhost()?;
//! let listener = QuicListener::bind("127.0.0.1:0".parse()?, ServerTls::dev(&cert), QuicOptions::default())?;
//! let addr = listener.local_addr()?;
//! let server = Server::builder(Cbor::default()).service(EchoServer::new(Me)).build();
//! tokio::spawn(async move { server.serve(listener).await });
//!
//! let connector = QuicConnector::new(addr, "localhost", ClientTls::trusting_dev(&cert), QuicOptions::default())?;
//! let client = EchoClient::new(Client::builder(Cbor::default()).connect(&connector).await?);
//! assert_eq!(client.echo("over QUIC".into()).await?, "over QUIC");
//! # Ok(()) }
//! ```
//!
//! For production, [`ServerTls::from_pem_files`] and [`ClientTls::from_pem_file`] read
//! certificates from PEM files, and [`ServerTls::require_client_certificates`] turns on mutual
//! TLS: the client's certificate chain then reaches handlers as
//! [`Peer::Network`](courier::Peer::Network)`{ certificates, .. }`.

#![warn(clippy::unwrap_used)]

mod address;
mod link;
mod options;

use std::net::SocketAddr;
use std::sync::Arc;

use courier::transport::{Connector, Link, Listener};
use courier::TransportError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

pub use address::QuicTransport;
pub use courier_tls::{ClientTls, DevCert, ServerTls, ALPN};
pub use options::{Congestion, QuicOptions};

/// Why a QUIC endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TLS settings could not be made (a key that does not match its certificate, an
    /// unreadable PEM file, …).
    #[error(transparent)]
    Tls(#[from] courier_tls::Error),
    /// The socket could not be bound.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Another configuration problem, described.
    #[error("configuration: {0}")]
    Config(String),
}

fn tls_error(e: &quinn::ConnectionError) -> Option<String> {
    match e {
        quinn::ConnectionError::TransportError(t) if t.code.to_string().contains("crypto") => {
            Some(t.to_string())
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code.to_string().contains("crypto") =>
        {
            Some(c.to_string())
        }
        _ => None,
    }
}

fn connection_error(addr: SocketAddr, e: quinn::ConnectionError) -> TransportError {
    match tls_error(&e) {
        Some(detail) => TransportError::Tls {
            detail: format!("with {addr}: {detail}"),
            source: Some(Arc::new(e)),
        },
        None => TransportError::connection(format!("QUIC connection to {addr} failed"), e),
    }
}

/// Accepts QUIC connections as links for a [`courier::Server`].
///
/// Dropping the listener stops it accepting: new clients are refused during their QUIC
/// handshake, connections already made go on, and the UDP port is released once the last of
/// them has closed. [`QuicListenerHandle::close`] closes everything at once instead.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
    links: mpsc::Receiver<Link>,
    /// Dropped with the listener: ends the accepting task.
    _stop: oneshot::Sender<()>,
}

impl QuicListener {
    /// Binds a UDP socket at `addr` and accepts connections with `tls`.
    ///
    /// The stateless-reset key and the connection-id generator's key are derived from `tls`'s
    /// private key, so a server restarted with the same identity on the same address
    /// recognizes its predecessor's connection ids and resets those connections at their next
    /// packet (a keep-alive, at the latest): their clients reconnect at once instead of
    /// waiting for the idle timeout.
    pub fn bind(addr: SocketAddr, tls: ServerTls, options: QuicOptions) -> Result<Self, Error> {
        // The labels (and so the keys) are those of every earlier version: a server upgraded
        // in place still recognizes its predecessor's connections.
        let reset_key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &tls.derive_key(b"courier/1 stateless reset key"),
        );
        let cid_key = {
            let key = tls.derive_key(b"courier/1 connection id key");
            let mut first = [0u8; 8];
            first.copy_from_slice(&key[..8]);
            u64::from_le_bytes(first)
        };
        let crypto = QuicServerConfig::try_from(tls.into_rustls()?)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(options.transport()?));
        let socket = options.bind_udp(addr)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("a QUIC listener needs a tokio runtime".to_owned()))?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        options.apply_endpoint(&mut endpoint_config)?;
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(config), socket, runtime)?;
        let ceiling = Arc::new(Semaphore::new(options.ceiling_permits()));
        // Handshakes run on tasks of their own, so a slow or hostile client cannot hold up
        // the others; finished links queue here, bounded.
        let (tx, links) = mpsc::channel(128);
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    incoming = accepting.accept() => incoming,
                    _ = &mut stop => None,
                };
                let Some(incoming) = incoming else { break };
                let tx = tx.clone();
                let limits = options.read_limits(Some(Arc::clone(&ceiling)));
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            let _ = tx.send(link::link(conn, None, limits)).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
                    }
                });
            }
            // The listener is gone: refuse new clients from now on. Connections already made
            // keep the endpoint (and its port) until they end.
            accepting.set_server_config(None);
        });
        Ok(QuicListener {
            endpoint,
            links,
            _stop: stop_tx,
        })
    }

    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.endpoint.local_addr()?)
    }

    /// A handle that can close the listener after it has been given to a server.
    pub fn handle(&self) -> QuicListenerHandle {
        QuicListenerHandle {
            endpoint: self.endpoint.clone(),
        }
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // Refuse new clients at once, not when the accepting task next runs: a client that
        // connects right after the drop must be refused by QUIC, not accepted and then hung up
        // on because nobody takes its link.
        self.endpoint.set_server_config(None);
    }
}

/// Closes a [`QuicListener`] from outside the server that owns it.
#[derive(Debug, Clone)]
pub struct QuicListenerHandle {
    endpoint: quinn::Endpoint,
}

impl QuicListenerHandle {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Closes the endpoint: every connection is closed at once, and calls in flight on them
    /// fail with `ConnectionLost` on the client side.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"server closing");
    }
}

impl Listener for QuicListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        self.links.recv().await.ok_or(TransportError::Closed)
    }
}

/// Opens QUIC connections to one server, for [`courier::ClientBuilder::connect`].
#[derive(Debug, Clone)]
pub struct QuicConnector {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
    options: QuicOptions,
}

impl QuicConnector {
    /// A connector for the server at `addr`, whose certificate must be valid for
    /// `server_name` and chain to a root of `tls`.
    pub fn new(
        addr: SocketAddr,
        server_name: impl Into<String>,
        tls: ClientTls,
        options: QuicOptions,
    ) -> Result<Self, Error> {
        let crypto = QuicClientConfig::try_from(tls.into_rustls()?)
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(options.transport()?));
        let local: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("a QUIC connector needs a tokio runtime".to_owned()))?;
        let endpoint = quinn::Endpoint::new(
            options.into_endpoint_config()?,
            None,
            options.bind_udp(local)?,
            runtime,
        )?;
        Ok(QuicConnector {
            endpoint,
            config,
            addr,
            server_name: server_name.into(),
            options,
        })
    }
}

impl Connector for QuicConnector {
    async fn connect(&self) -> Result<Link, TransportError> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.addr, &self.server_name)
            .map_err(|e| {
                TransportError::connection(format!("cannot connect to {}", self.addr), e)
            })?;
        let conn = connecting
            .await
            .map_err(|e| connection_error(self.addr, e))?;
        let control = conn
            .open_bi()
            .await
            .map_err(|e| connection_error(self.addr, e))?;
        Ok(link::link(
            conn,
            Some(control),
            self.options.read_limits(None),
        ))
    }
}
