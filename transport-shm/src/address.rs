//! `shm:///path/to/socket`: shared memory reachable by address ([`courier::address`]).

use std::sync::Arc;

use courier::address::{Address, Bound, Transport};
use courier::transport::DynConnector;
use courier::AddressError;

use crate::{ShmConnector, ShmListener, ShmOptions};

/// Shared memory as a [`Transport`] of the `shm` scheme, for
/// [`Transports`](courier::address::Transports). The address is the path of the Unix socket
/// that connections are set up through: `shm:///run/app/courier.sock` (three slashes: no host,
/// an absolute path). Options come from [`ShmTransport::options`]; addresses take none.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use courier::address::Transports;
/// use courier_shm::ShmTransport;
///
/// let transports = Transports::new().with(ShmTransport::default());
/// let path = std::env::temp_dir().join(format!("courier-doc-{}.sock", std::process::id()));
/// let bound = transports.listen(&format!("shm://{}", path.display()).parse()?)?;
/// assert_eq!(bound.address.path(), path.to_str().unwrap());
/// // Relative paths are refused: which directory they meant depends on who reads them.
/// assert!(transports.listen(&"shm://relative/x.sock".parse()?).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ShmTransport {
    options: ShmOptions,
}

impl ShmTransport {
    /// Shared memory with these options for every connector and listener.
    pub fn new(options: ShmOptions) -> ShmTransport {
        ShmTransport { options }
    }

    /// Sets the options.
    pub fn options(mut self, options: ShmOptions) -> Self {
        self.options = options;
        self
    }
}

fn socket_path(address: &Address) -> Result<&str, AddressError> {
    address.check_params(&[])?;
    if address.host().is_some() || address.port().is_some() || !address.path().starts_with('/') {
        return Err(address.unusable(
            "a shared-memory address is `shm:///absolute/path/to/socket`: no host, an absolute \
             path",
        ));
    }
    Ok(address.path())
}

impl Transport for ShmTransport {
    fn scheme(&self) -> &'static str {
        "shm"
    }

    fn connector(&self, address: &Address) -> Result<Arc<dyn DynConnector>, AddressError> {
        let path = socket_path(address)?;
        Ok(Arc::new(ShmConnector::new(path, self.options.clone())))
    }

    fn listen(&self, address: &Address) -> Result<Bound, AddressError> {
        let path = socket_path(address)?;
        let listener = ShmListener::bind(path, self.options.clone())
            .map_err(|e| address.unusable(e.to_string()))?;
        Ok(Bound {
            listener: Box::new(listener),
            address: address.clone(),
        })
    }
}
