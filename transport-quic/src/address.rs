//! `quic://host:port`: QUIC reachable by address ([`courier::address`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use courier::address::{Address, Bound, Transport};
use courier::transport::{Connector, DynConnector, Link};
use courier::{AddressError, TransportError};

use crate::{ClientTls, QuicConnector, QuicListener, QuicOptions, ServerTls};

/// QUIC as a [`Transport`] of the `quic` scheme, for
/// [`Transports`](courier::address::Transports).
///
/// | option | side | meaning | default |
/// |---|---|---|---|
/// | `server_name` | client | the name the server's certificate must be valid for | the address's host |
/// | `ca` | client | a PEM file of the roots to trust | [`QuicTransport::client_tls`] |
/// | `cert`, `key` | server | PEM files of the certificate chain and its private key | [`QuicTransport::server_tls`] |
///
/// A host that is a name is looked up each time the client connects (so a reconnect follows
/// DNS); a listener binds it once.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use courier::address::{Address, Transports};
/// use courier_quic::{ClientTls, DevCert, QuicTransport, ServerTls};
///
/// let cert = DevCert::localhost()?;
/// let transports = Transports::new().with(
///     QuicTransport::new()
///         .server_tls(ServerTls::dev(&cert))
///         .client_tls(ClientTls::trusting_dev(&cert)),
/// );
/// let bound = transports.listen(&"quic://127.0.0.1:0".parse()?)?;
/// assert_ne!(bound.address.port(), Some(0));
/// let address = bound.address.with_param("server_name", "localhost");
/// let connector = transports.connector(&address)?;
/// # drop((bound.listener, connector));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct QuicTransport {
    client_tls: Option<ClientTls>,
    server_tls: Option<ServerTls>,
    options: QuicOptions,
}

impl QuicTransport {
    /// QUIC with default options and no certificates: addresses must then name them
    /// (`?ca=`, `?cert=&key=`).
    pub fn new() -> QuicTransport {
        QuicTransport::default()
    }

    /// The roots clients trust (and their identity, for mutual TLS) when an address has no
    /// `ca` option.
    pub fn client_tls(mut self, tls: ClientTls) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// The certificate listeners present when an address has no `cert` and `key` options.
    pub fn server_tls(mut self, tls: ServerTls) -> Self {
        self.server_tls = Some(tls);
        self
    }

    /// The transport options of every connector and listener.
    pub fn options(mut self, options: QuicOptions) -> Self {
        self.options = options;
        self
    }
}

impl Transport for QuicTransport {
    fn scheme(&self) -> &'static str {
        "quic"
    }

    fn connector(&self, address: &Address) -> Result<Arc<dyn DynConnector>, AddressError> {
        address.check_params(&["server_name", "ca"])?;
        let (host, port) = address.host_port()?;
        let tls = ClientTls::for_address(
            address.param("ca"),
            self.client_tls.as_ref(),
            "QuicTransport",
        )
        .map_err(|e| address.unusable(e))?;
        let server_name = address.param("server_name").unwrap_or(host).to_owned();
        let dialer = Dialer {
            host: host.to_owned(),
            port,
            server_name,
            tls,
            options: self.options.clone(),
            connector: Mutex::new(None),
        };
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            // Fails now, not at the first connect, if the settings are wrong.
            dialer
                .connector_for(SocketAddr::new(ip, port))
                .map_err(|e| address.unusable(e.to_string()))?;
        }
        Ok(Arc::new(dialer))
    }

    fn listen(&self, address: &Address) -> Result<Bound, AddressError> {
        address.check_params(&["cert", "key"])?;
        let tls = ServerTls::for_address(
            address.param("cert"),
            address.param("key"),
            self.server_tls.as_ref(),
            "QuicTransport",
        )
        .map_err(|e| address.unusable(e))?;
        let listener = QuicListener::bind(address.listen_addr()?, tls, self.options.clone())
            .map_err(|e| address.unusable(e.to_string()))?;
        let local = listener
            .local_addr()
            .map_err(|e| address.unusable(e.to_string()))?;
        let bound = address.bound_at(local);
        Ok(Bound {
            listener: Box::new(listener),
            address: bound,
        })
    }
}

/// Dials `host:port`, looking a host name up at each connect.
struct Dialer {
    host: String,
    port: u16,
    server_name: String,
    tls: ClientTls,
    options: QuicOptions,
    /// The connector of the last address dialed: its endpoint is reused while the address
    /// stays the same.
    connector: Mutex<Option<QuicConnector>>,
}

impl Dialer {
    fn connector_for(&self, addr: SocketAddr) -> Result<QuicConnector, crate::Error> {
        let mut cached = self.connector.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.addr == addr) {
            return Ok(c.clone());
        }
        let c = QuicConnector::new(
            addr,
            self.server_name.clone(),
            self.tls.clone(),
            self.options.clone(),
        )?;
        *cached = Some(c.clone());
        Ok(c)
    }
}

impl Connector for Dialer {
    async fn connect(&self) -> Result<Link, TransportError> {
        let target = format!("{}:{}", self.host, self.port);
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| TransportError::connection(format!("cannot resolve `{target}`"), e))?
            .next()
            .ok_or_else(|| TransportError::NotFound(target.clone()))?;
        let connector = self
            .connector_for(addr)
            .map_err(|e| TransportError::Other(e.to_string()))?;
        connector.connect().await
    }
}
