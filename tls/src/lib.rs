//! TLS settings shared by Courier's network transports (`courier-quic`, `courier-tcp`):
//! development certificates in one call, PEM files for production, and mutual TLS as one
//! option. Both transports speak TLS 1.3 only, with the ring provider and the ALPN protocol
//! `courier/1`, so one certificate and one [`ClientTls`] serve a client that may reach a server
//! either way.
//!
//! ```
//! use courier_tls::{ClientTls, DevCert, ServerTls};
//!
//! // One call makes a development certificate; the client trusts exactly that one.
//! let cert = DevCert::localhost()?;
//! let server = ServerTls::dev(&cert).into_rustls()?;
//! let client = ClientTls::trusting_dev(&cert).into_rustls()?;
//! assert_eq!(server.alpn_protocols, [courier_tls::ALPN.to_vec()]);
//! assert_eq!(client.alpn_protocols, [courier_tls::ALPN.to_vec()]);
//! # Ok::<(), courier_tls::Error>(())
//! ```

#![warn(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

/// Why a TLS setting could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// rustls refused the configuration (a key that does not match its certificate, …).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate could not be generated.
    #[error("certificate generation: {0}")]
    Certificate(String),
    /// A PEM file could not be read or held nothing usable.
    #[error("PEM: {0}")]
    Pem(String),
    /// Another configuration problem, described.
    #[error("configuration: {0}")]
    Config(String),
}

/// The ALPN protocol Courier speaks over TLS, on QUIC and on TCP alike.
pub const ALPN: &[u8] = b"courier/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate and its key, made with rcgen: for development and tests.
///
/// ```
/// # fn main() -> Result<(), courier_tls::Error> {
/// let cert = courier_tls::DevCert::localhost()?;
/// let server = courier_tls::ServerTls::dev(&cert);
/// let client = courier_tls::ClientTls::trusting_dev(&cert);
/// # drop((server, client));
/// # Ok(()) }
/// ```
pub struct DevCert {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for DevCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("DevCert").finish_non_exhaustive()
    }
}

impl Clone for DevCert {
    fn clone(&self) -> Self {
        DevCert {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl DevCert {
    /// A certificate for `names` (DNS names or IP addresses).
    pub fn generate(names: impl Into<Vec<String>>) -> Result<DevCert, Error> {
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        Ok(DevCert {
            cert: certified.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()),
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
        })
    }

    /// A certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn localhost() -> Result<DevCert, Error> {
        Self::generate(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, DER.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The certificate as PEM, for writing to a file.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key as PEM, for writing to a file.
    pub fn private_key_pem(&self) -> &str {
        &self.key_pem
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Pem(format!("{}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::Pem(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| Error::Pem(format!("{}: {e}", path.display())))
}

fn roots(certs: &[CertificateDer<'static>]) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert.clone()).map_err(Error::Tls)?;
    }
    Ok(store)
}

/// The server's TLS identity and, optionally, the roots it checks client certificates against.
#[derive(Debug)]
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<Vec<CertificateDer<'static>>>,
}

impl Clone for ServerTls {
    fn clone(&self) -> Self {
        ServerTls {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            client_roots: self.client_roots.clone(),
        }
    }
}

impl ServerTls {
    /// A certificate chain (leaf first) and its private key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        ServerTls {
            chain,
            key,
            client_roots: None,
        }
    }

    /// A development certificate.
    pub fn dev(cert: &DevCert) -> Self {
        Self::new(vec![cert.certificate().clone()], cert.private_key())
    }

    /// Reads the chain and the key from PEM files.
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::new(
            read_certs(chain.as_ref())?,
            read_key(key.as_ref())?,
        ))
    }

    /// Requires every client to present a certificate that chains to one of `roots` (mutual
    /// TLS). The client's certificate chain becomes the `Peer` handlers see.
    pub fn require_client_certificates(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.client_roots = Some(roots);
        self
    }

    /// The identity a listener's address asks for: the PEM files its `cert` and `key` options
    /// name (both or neither), or else `configured`, the transport's own. The error says what
    /// to add, naming `transport` (`QuicTransport`, `TcpTransport`).
    pub fn for_address(
        cert: Option<&str>,
        key: Option<&str>,
        configured: Option<&ServerTls>,
        transport: &str,
    ) -> Result<ServerTls, String> {
        match (cert, key, configured) {
            (Some(cert), Some(key), _) => Self::from_pem_files(cert, key)
                .map_err(|e| format!("cannot read `{cert}` and `{key}`: {e}")),
            (Some(_), None, _) | (None, Some(_), _) => {
                Err("`cert` and `key` go together".to_owned())
            }
            (None, None, Some(tls)) => Ok(tls.clone()),
            (None, None, None) => Err(format!(
                "no certificate: add `?cert=chain.pem&key=key.pem` or configure \
                 {transport}::server_tls"
            )),
        }
    }

    /// [`ServerTls::require_client_certificates`] with the roots read from a PEM file.
    pub fn require_client_certificates_pem(self, roots: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(self.require_client_certificates(read_certs(roots.as_ref())?))
    }

    /// The rustls configuration this makes: TLS 1.3 only, the ring provider, ALPN
    /// `courier/1`, and a client certificate required if asked for.
    pub fn into_rustls(self) -> Result<rustls::ServerConfig, Error> {
        self.build()
    }

    /// A 32-byte key derived one way from the private key under `label` (SHA-256 of the label
    /// and the key): every process that serves with this identity derives the same key, and
    /// the key tells nothing about the private key. QUIC derives its stateless-reset and
    /// connection-id keys this way, so that a restarted server recognizes the connections its
    /// previous process left behind.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(&[0]);
        ctx.update(self.key.secret_der());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        key
    }

    fn build(self) -> Result<rustls::ServerConfig, Error> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::Tls)?;
        let builder = match self.client_roots {
            Some(r) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(&r)?),
                    provider(),
                )
                .build()
                .map_err(|e| Error::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(self.chain, self.key)
            .map_err(Error::Tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// The certificates a client trusts and, for mutual TLS, its own identity.
#[derive(Debug)]
pub struct ClientTls {
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Clone for ClientTls {
    fn clone(&self) -> Self {
        ClientTls {
            roots: self.roots.clone(),
            identity: self
                .identity
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
        }
    }
}

impl ClientTls {
    /// Trusts servers whose certificates chain to one of `roots`.
    pub fn trusting(roots: Vec<CertificateDer<'static>>) -> Self {
        ClientTls {
            roots,
            identity: None,
        }
    }

    /// Trusts a development certificate.
    pub fn trusting_dev(cert: &DevCert) -> Self {
        Self::trusting(vec![cert.certificate().clone()])
    }

    /// Trusts the certificates in a PEM file.
    pub fn from_pem_file(roots: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self::trusting(read_certs(roots.as_ref())?))
    }

    /// The roots a client's address asks for: the PEM file its `ca` option names, or else
    /// `configured`, the transport's own. The error says what to add, naming `transport`
    /// (`QuicTransport`, `TcpTransport`).
    pub fn for_address(
        ca: Option<&str>,
        configured: Option<&ClientTls>,
        transport: &str,
    ) -> Result<ClientTls, String> {
        match (ca, configured) {
            (Some(ca), _) => {
                Self::from_pem_file(ca).map_err(|e| format!("cannot read the roots in `{ca}`: {e}"))
            }
            (None, Some(tls)) => Ok(tls.clone()),
            (None, None) => Err(format!(
                "no roots to trust: add `?ca=/path/to/roots.pem` or configure \
                 {transport}::client_tls"
            )),
        }
    }

    /// Presents this certificate chain (leaf first) and key to servers that ask (mutual TLS).
    pub fn with_identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some((chain, key));
        self
    }

    /// Presents a development certificate.
    pub fn with_dev_identity(self, cert: &DevCert) -> Self {
        self.with_identity(vec![cert.certificate().clone()], cert.private_key())
    }

    /// The rustls configuration this makes: TLS 1.3 only, the ring provider, ALPN
    /// `courier/1`, and this client's certificate if it has one.
    pub fn into_rustls(self) -> Result<rustls::ClientConfig, Error> {
        self.build()
    }

    fn build(self) -> Result<rustls::ClientConfig, Error> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(Error::Tls)?
            .with_root_certificates(roots(&self.roots)?);
        let mut config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(Error::Tls)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips_through_the_pki_types_parser() {
        let cert = DevCert::localhost().unwrap();
        let parsed = CertificateDer::from_pem_slice(cert.certificate_pem().as_bytes()).unwrap();
        assert_eq!(&parsed, cert.certificate());
        let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem().as_bytes()).unwrap();
        assert_eq!(key.secret_der(), cert.private_key().secret_der());
    }

    #[test]
    fn an_address_without_certificates_is_told_what_to_add() {
        let cert = DevCert::localhost().unwrap();
        let err = ClientTls::for_address(None, None, "TcpTransport").unwrap_err();
        assert!(
            err.contains("?ca=") && err.contains("TcpTransport::client_tls"),
            "{err}"
        );
        assert!(ClientTls::for_address(None, Some(&ClientTls::trusting_dev(&cert)), "T").is_ok());
        let err = ServerTls::for_address(None, None, None, "QuicTransport").unwrap_err();
        assert!(
            err.contains("?cert=") && err.contains("QuicTransport::server_tls"),
            "{err}"
        );
        let err = ServerTls::for_address(Some("a.pem"), None, None, "T").unwrap_err();
        assert!(err.contains("go together"), "{err}");
        assert!(ServerTls::for_address(None, None, Some(&ServerTls::dev(&cert)), "T").is_ok());
    }

    #[test]
    fn derived_keys_follow_the_identity_and_the_label() {
        let (a, b) = (DevCert::localhost().unwrap(), DevCert::localhost().unwrap());
        let server = ServerTls::dev(&a);
        assert_eq!(server.derive_key(b"x"), ServerTls::dev(&a).derive_key(b"x"));
        assert_ne!(server.derive_key(b"x"), server.derive_key(b"y"));
        assert_ne!(server.derive_key(b"x"), ServerTls::dev(&b).derive_key(b"x"));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let (a, b) = (DevCert::localhost().unwrap(), DevCert::localhost().unwrap());
        let mixed = ServerTls::new(vec![a.certificate().clone()], b.private_key());
        assert!(matches!(mixed.into_rustls(), Err(Error::Tls(_))));
    }

    #[test]
    fn a_pem_file_without_certificates_is_a_clear_error() {
        let path =
            std::env::temp_dir().join(format!("courier-tls-empty-{}.pem", std::process::id()));
        std::fs::write(&path, "no certificate here\n").unwrap();
        let err = ClientTls::from_pem_file(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(err, Error::Pem(ref m) if m.contains("no certificate")),
            "{err}"
        );
    }
}
