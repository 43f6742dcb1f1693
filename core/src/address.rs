//! Addresses: where a server listens and a client connects, written as a URL.
//!
//! | address | transport | crate |
//! |---|---|---|
//! | `mem://name` | [`transport::mem`](crate::transport::mem), within one process | `courier` |
//! | `quic://host:port?server_name=…&ca=/roots.pem` | QUIC between machines | `courier-quic` |
//! | `shm:///path/to/socket` | shared memory between processes on one host | `courier-shm` |
//!
//! An [`Address`] is parsed and checked once; which transport serves it is looked up at run
//! time in a [`Transports`] registry by its scheme. The core knows only `mem`; a transport
//! crate adds its scheme with [`Transports::install`] (process-wide) or a [`Transports`]
//! value given to a builder. An address whose scheme no registered transport serves, or
//! that its transport cannot use, is an [`AddressError`] naming what was wrong.
//!
//! ```
//! use courier::address::{Address, Transports};
//! use courier::{Client, Server};
//! use courier_cbor::Cbor;
//!
//! #[courier::service]
//! pub trait Hello { async fn hello(&self) -> String; }
//! struct World;
//! impl Hello for World { async fn hello(&self) -> String { "world".into() } }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let address: Address = "mem://greeter".parse()?;
//! assert_eq!(address.scheme(), "mem");
//!
//! let server = Server::builder(Cbor::default()).service(HelloServer::new(World)).build();
//! let listeners = server.listen(["mem://greeter"])?;
//! tokio::spawn(async move { server.serve_all(listeners).await });
//!
//! let client = Client::builder(Cbor::default()).connect_to("mem://greeter").await?;
//! assert_eq!(client.address().map(|a| a.scheme().to_owned()).as_deref(), Some("mem"));
//! assert_eq!(HelloClient::new(client).hello().await?, "world");
//!
//! // A scheme nobody registered is a clear error, not a panic.
//! let err = Transports::global().connector(&"carrier-pigeon://loft".parse()?).err().expect("refused");
//! assert!(err.to_string().contains("carrier-pigeon"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use crate::error::AddressError;
use crate::transport::{mem, BoxListener, DynConnector};

/// The longest address accepted, in bytes: enough for any real one, small enough that a
/// hostile directory record cannot make parsing expensive.
pub const MAX_ADDRESS_LEN: usize = 2048;

/// A parsed, checked transport address: `scheme://host:port/path?key=value&…`.
///
/// The grammar is the subset of URLs that addresses need, and anything else is refused
/// rather than ignored: the scheme is lower-cased ASCII; the host is a name, an IPv4
/// address or a bracketed IPv6 address; there is no user part and no fragment; query keys
/// are `[a-z0-9_]`, each at most once; `%XX` escapes are decoded in the path and in values.
/// Displaying an address gives a string that parses back to the same address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address {
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
    params: Vec<(String, String)>,
}

impl Address {
    /// Parses `text`; [`AddressError::Malformed`] says what is wrong with it.
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let bad = |reason: &str| AddressError::Malformed {
            address: shorten(text),
            reason: reason.to_owned(),
        };
        if text.len() > MAX_ADDRESS_LEN {
            return Err(bad(&format!("longer than {MAX_ADDRESS_LEN} bytes")));
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(&format!("contains the character {c:?}")));
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("no `scheme://` at the start (e.g. `quic://host:port`)"))?;
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return Err(bad(&format!("`{scheme}` is not a scheme name")));
        }
        if rest.contains('#') {
            return Err(bad("fragments (`#…`) mean nothing in an address"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        if authority.contains('@') {
            return Err(bad(
                "user names and passwords do not belong in an address; use the transport's \
                 options",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|r| bad(&r))?;
        let path = decode(path).map_err(|r| bad(&r))?;
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(bad(&format!(
                    "`{key}` is not an option name (lower-case letters, digits and `_`)"
                )));
            }
            if params.iter().any(|(k, _)| k == key) {
                return Err(bad(&format!("option `{key}` is given twice")));
            }
            params.push((key.to_owned(), decode(value).map_err(|r| bad(&r))?));
        }
        Ok(Address {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
            path,
            params,
        })
    }

    /// The scheme, lower-cased: `quic`, `shm`, `mem`, …
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host (a name, or an IP address without brackets), if the address has one.
    pub fn host(&self) -> Option<&str> {
        (!self.host.is_empty()).then_some(self.host.as_str())
    }

    /// The port, if the address has one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path, decoded; empty if the address has none.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The value of option `key` (`?key=value`), decoded.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every option, in the order written.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// This address with option `key` set to `value` (replacing any earlier value).
    pub fn with_param(mut self, key: &str, value: impl Into<String>) -> Address {
        let value = value.into();
        match self.params.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => self.params.push((key.to_owned(), value)),
        }
        self
    }

    /// This address with another host and port: what a server that listens on a wildcard
    /// address advertises instead.
    pub fn with_host_port(mut self, host: &str, port: Option<u16>) -> Address {
        self.host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        self.port = port;
        self
    }

    /// The host and port of a network address, `scheme://host:port` with no path; otherwise an
    /// error that shows the form expected.
    pub fn host_port(&self) -> Result<(&str, u16), AddressError> {
        match self.port {
            Some(port) if self.path.is_empty() && !self.host.is_empty() => Ok((&self.host, port)),
            _ => Err(self.unusable(format!(
                "a `{0}` address is `{0}://host:port`, with no path",
                self.scheme
            ))),
        }
    }

    /// The socket address a listener of this network address binds: the first that its host
    /// resolves to, at its port.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, AddressError> {
        use std::net::ToSocketAddrs;
        let (host, port) = self.host_port()?;
        (host, port)
            .to_socket_addrs()
            .map_err(|e| self.unusable(format!("cannot resolve `{host}`: {e}")))?
            .next()
            .ok_or_else(|| self.unusable(format!("`{host}` has no address")))
    }

    /// The address a listener made from this one advertises once bound at `local`: the same
    /// scheme, the port bound, and the host kept if it is a name (its certificate is likely for
    /// it) or replaced by the IP bound if it is an address. The options are left out: they
    /// are the listener's own (files of its private key, say), not its clients'.
    pub fn bound_at(&self, local: std::net::SocketAddr) -> Address {
        let host = if self.host.parse::<std::net::IpAddr>().is_ok() {
            local.ip().to_string()
        } else {
            self.host.clone()
        };
        Address {
            scheme: self.scheme.clone(),
            host,
            port: Some(local.port()),
            path: String::new(),
            params: Vec::new(),
        }
    }

    /// Refuses any option not in `known`, for a transport that reads only those: a misspelt
    /// option is an error rather than silently ignored.
    pub fn check_params(&self, known: &[&str]) -> Result<(), AddressError> {
        match self
            .params
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(self.unusable(format!(
                "unknown option `{k}` (this transport reads: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))),
        }
    }

    /// An [`AddressError::Unusable`] for this address.
    pub fn unusable(&self, reason: impl Into<String>) -> AddressError {
        AddressError::Unusable {
            address: self.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether the host is a loopback or wildcard IP address (`127.0.0.1`, `::1`, `0.0.0.0`,
    /// `::`) or `localhost`: reachable, if at all, only from the host itself.
    pub fn is_local_only(&self) -> bool {
        if self.host == "localhost" {
            return true;
        }
        match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
            Err(_) => false,
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Address, AddressError> {
        Address::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        encode(f, &self.path, b"/-._~!$&'()*+,;=:@")?;
        for (i, (k, v)) in self.params.iter().enumerate() {
            f.write_str(if i == 0 { "?" } else { "&" })?;
            f.write_str(k)?;
            f.write_str("=")?;
            encode(f, v, b"/-._~!$'()*+,;:@")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Address::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// At most 100 characters of `text`, for error messages about input that may be huge.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address opened with `[` is not closed")?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{ip}` is not an IPv6 address"));
        }
        match after {
            "" => (ip, None),
            p => (
                ip,
                Some(
                    p.strip_prefix(':')
                        .ok_or("only `:port` may follow an IPv6 address")?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if !authority.starts_with('[') {
        let host_ok = host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !host_ok {
            return Err(format!(
                "`{host}` is not a host name (IPv6 addresses go in brackets)"
            ));
        }
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("`{p}` is not a port number (0 to 65535)"))?,
        ),
    };
    Ok((host, port))
}

fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a `%` is not followed by two hex digits".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "an escape decodes to invalid UTF-8".to_owned())
}

fn encode(f: &mut fmt::Formatter<'_>, text: &str, keep: &[u8]) -> fmt::Result {
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            write!(f, "{}", b as char)?;
        } else {
            write!(f, "%{b:02X}")?;
        }
    }
    Ok(())
}

/// A transport reachable by address: it turns addresses of its scheme into connectors and
/// listeners. Implemented by each transport crate (`courier_quic::QuicTransport`,
/// `courier_shm::ShmTransport`) and by [`MemTransport`] here.
pub trait Transport: Send + Sync + 'static {
    /// The scheme it serves, lower-case: `quic`.
    fn scheme(&self) -> &'static str;

    /// A connector for `address`, whose scheme is this transport's. Checks the address (and
    /// reads any files it names) now; connecting happens when the connector is used.
    fn connector(&self, address: &Address) -> Result<Arc<dyn DynConnector>, AddressError>;

    /// Starts listening on `address`. The returned address is the one bound, which a client
    /// can use: a port of 0 becomes the port the system chose.
    fn listen(&self, address: &Address) -> Result<Bound, AddressError>;
}

/// A listener made from an address, with the address it is bound to.
pub struct Bound {
    /// The listener, ready for [`Server::serve`](crate::Server::serve).
    pub listener: BoxListener,
    /// Where it listens, as clients dial it.
    pub address: Address,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Listeners bound to addresses ([`Server::listen`](crate::Server::listen)), to serve together
/// with [`Server::serve_all`](crate::Server::serve_all).
#[derive(Debug, Default)]
pub struct Listeners {
    bound: Vec<Bound>,
}

impl Listeners {
    /// Adds a listener: one made from an address, or any [`Listener`](crate::transport::Listener)
    /// boxed with the address its clients dial.
    pub fn push(&mut self, bound: Bound) {
        self.bound.push(bound);
    }

    /// Where they listen, as clients dial them: what a server advertises
    /// ([`InstanceRecord::new`](crate::directory::InstanceRecord::new)).
    pub fn addresses(&self) -> Vec<Address> {
        self.bound.iter().map(|b| b.address.clone()).collect()
    }
}

impl IntoIterator for Listeners {
    type Item = Bound;
    type IntoIter = std::vec::IntoIter<Bound>;
    fn into_iter(self) -> Self::IntoIter {
        self.bound.into_iter()
    }
}

/// The transports addresses may use, by scheme.
///
/// [`Transports::global`] is the process-wide registry that builders use unless given
/// another; it starts with `mem`, and a transport crate is added to it once, early in
/// `main`, with [`Transports::install`]. A value built with [`Transports::new`] and
/// [`Transports::with`] can be given to a builder instead, for code that keeps no global
/// state (tests, libraries).
#[derive(Clone)]
pub struct Transports {
    by_scheme: BTreeMap<&'static str, Arc<dyn Transport>>,
}

static GLOBAL: RwLock<Option<Transports>> = RwLock::new(None);

impl Transports {
    /// A registry with the in-process transport (`mem://`) only.
    pub fn new() -> Transports {
        Transports {
            by_scheme: BTreeMap::new(),
        }
        .with(MemTransport)
    }

    /// This registry with `transport` added, replacing any with the same scheme.
    pub fn with(mut self, transport: impl Transport) -> Transports {
        self.by_scheme
            .insert(transport.scheme(), Arc::new(transport));
        self
    }

    /// Adds `transport` to the process-wide registry, replacing any with the same scheme.
    pub fn install(transport: impl Transport) {
        let mut global = GLOBAL.write().unwrap_or_else(|p| p.into_inner());
        let current = global.take().unwrap_or_default();
        *global = Some(current.with(transport));
    }

    /// A copy of the process-wide registry.
    pub fn global() -> Transports {
        GLOBAL
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// The schemes registered, in order.
    pub fn schemes(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_scheme.keys().copied()
    }

    /// Whether a transport serves `scheme`.
    pub fn serves(&self, scheme: &str) -> bool {
        self.by_scheme.contains_key(scheme)
    }

    fn transport(&self, address: &Address) -> Result<&Arc<dyn Transport>, AddressError> {
        self.by_scheme
            .get(address.scheme())
            .ok_or_else(|| AddressError::UnknownScheme {
                scheme: address.scheme().to_owned(),
                registered: self.schemes().map(str::to_owned).collect(),
            })
    }

    /// A connector for `address`, from the transport of its scheme.
    pub fn connector(&self, address: &Address) -> Result<Arc<dyn DynConnector>, AddressError> {
        self.transport(address)?.connector(address)
    }

    /// A listener on `address`, from the transport of its scheme.
    pub fn listen(&self, address: &Address) -> Result<Bound, AddressError> {
        self.transport(address)?.listen(address)
    }
}

impl Default for Transports {
    fn default() -> Transports {
        Transports::new()
    }
}

impl fmt::Debug for Transports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.schemes()).finish()
    }
}

/// `mem://name`: the in-process transport ([`transport::mem`](crate::transport::mem)).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemTransport;

impl MemTransport {
    fn name(address: &Address) -> Result<&str, AddressError> {
        address.check_params(&[])?;
        if address.port().is_some() || !address.path().is_empty() {
            return Err(address.unusable("a mem address is `mem://name`, with no port or path"));
        }
        address
            .host()
            .ok_or_else(|| address.unusable("a mem address needs a name: `mem://name`"))
    }
}

impl Transport for MemTransport {
    fn scheme(&self) -> &'static str {
        "mem"
    }

    fn connector(&self, address: &Address) -> Result<Arc<dyn DynConnector>, AddressError> {
        Ok(Arc::new(mem::Dialer::new(MemTransport::name(address)?)))
    }

    fn listen(&self, address: &Address) -> Result<Bound, AddressError> {
        let listener = mem::Listener::bind(MemTransport::name(address)?)
            .map_err(|e| address.unusable(e.to_string()))?;
        Ok(Bound {
            listener: Box::new(listener),
            address: address.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_addresses_give_their_host_port_and_advertise_what_was_bound() {
        let named: Address = "tcp://example.com:4433?cert=c.pem&key=k.pem"
            .parse()
            .unwrap();
        assert_eq!(named.host_port().unwrap(), ("example.com", 4433));
        let local = "10.1.2.3:5555".parse().unwrap();
        assert_eq!(named.bound_at(local).to_string(), "tcp://example.com:5555");
        let wildcard: Address = "quic://0.0.0.0:0".parse().unwrap();
        assert_eq!(wildcard.bound_at(local).to_string(), "quic://10.1.2.3:5555");
        let v6: Address = "quic://[::]:0".parse().unwrap();
        let bound = v6.bound_at("[::1]:7".parse().unwrap());
        assert_eq!((bound.host(), bound.port()), (Some("::1"), Some(7)));
        assert_eq!(bound.to_string().parse::<Address>().unwrap(), bound);
        for bad in ["quic://host", "tcp://host:1/path"] {
            let err = bad.parse::<Address>().unwrap().host_port().unwrap_err();
            assert!(err.to_string().contains("://host:port"), "{bad}: {err}");
        }
        let listen: Address = "tcp://127.0.0.1:0".parse().unwrap();
        assert_eq!(
            listen.listen_addr().unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
    }

    fn malformed(text: &str) -> String {
        match Address::parse(text) {
            Err(AddressError::Malformed { reason, .. }) => reason,
            other => panic!("{text}: expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn parses_each_part() {
        let a = Address::parse("QUIC://Example.com:4433/x%20y?server_name=a.b&ca=%2Ftmp%2Fr.pem")
            .expect("parses");
        assert_eq!(a.scheme(), "quic");
        assert_eq!(a.host(), Some("example.com"));
        assert_eq!(a.port(), Some(4433));
        assert_eq!(a.path(), "/x y");
        assert_eq!(a.param("server_name"), Some("a.b"));
        assert_eq!(a.param("ca"), Some("/tmp/r.pem"));
        assert_eq!(a.param("nope"), None);

        let v6 = Address::parse("quic://[::1]:1").expect("parses");
        assert_eq!(v6.host(), Some("::1"));
        assert!(v6.is_local_only());
        let shm = Address::parse("shm:///run/app.sock").expect("parses");
        assert_eq!((shm.host(), shm.path()), (None, "/run/app.sock"));
        assert!(!Address::parse("quic://10.0.0.1:1")
            .expect("parses")
            .is_local_only());
        assert!(Address::parse("quic://0.0.0.0:1")
            .expect("parses")
            .is_local_only());
    }

    #[test]
    fn display_parses_back_to_the_same_address() {
        for text in [
            "mem://a",
            "shm:///tmp/a%20b.sock",
            "quic://[fe80::1]:4433?server_name=x&ca=%2Fa%26b%3Dc",
            "quic://h:0",
        ] {
            let a = Address::parse(text).expect("parses");
            let again = Address::parse(&a.to_string()).expect("reparses");
            assert_eq!(a, again, "{text} → {a}");
        }
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        assert!(malformed("localhost:4433").contains("scheme://"));
        assert!(malformed("9p://x").contains("not a scheme"));
        assert!(malformed("quic://h:99999").contains("not a port"));
        assert!(malformed("quic://h:x").contains("not a port"));
        assert!(malformed("quic://user@h:1").contains("user names"));
        assert!(malformed("quic://h:1#frag").contains("fragments"));
        assert!(malformed("quic://h h:1").contains("character"));
        assert!(malformed("quic://[::1:1").contains("not closed"));
        assert!(malformed("quic://[zz]:1").contains("IPv6"));
        assert!(malformed("quic://h:1?a=1&a=2").contains("twice"));
        assert!(malformed("quic://h:1?A=1").contains("option name"));
        assert!(malformed("shm:///a%zz").contains("hex"));
        assert!(malformed("shm:///a%ff").contains("UTF-8"));
        assert!(malformed(&format!("mem://{}", "a".repeat(3000))).contains("longer"));
    }

    #[test]
    fn a_scheme_nobody_serves_names_the_ones_served() {
        let t = Transports::new();
        let err = t
            .connector(&Address::parse("quic://h:1").expect("parses"))
            .err()
            .expect("refused");
        assert_eq!(
            err,
            AddressError::UnknownScheme {
                scheme: "quic".into(),
                registered: vec!["mem".into()],
            }
        );
        assert!(err.to_string().contains("courier-quic"), "{err}");
    }

    #[test]
    fn mem_addresses_are_checked() {
        let t = Transports::new();
        for bad in ["mem://", "mem://a:1", "mem://a/b", "mem://a?x=1"] {
            let address = Address::parse(bad).expect("parses");
            assert!(
                matches!(
                    t.connector(&address).err(),
                    Some(AddressError::Unusable { .. })
                ),
                "{bad}"
            );
        }
    }
}
