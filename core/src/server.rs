//! [`Server`]: services registered once, served on any number of listeners and links.

use std::fmt;
use std::sync::Arc;

use crate::codec::CodecSet;
use crate::connection::{server_handshake, Shared};
use crate::dispatch::{Authorizer, BoundRouter, Registry, Router, Service};
use crate::error::{RpcError, TransportError};
use crate::options::Limits;
use crate::transport::{Link, Listener};

/// Serves registered services over links; cheap to clone.
///
/// Built with [`Server::builder`], given the codec or codecs it offers (`Cbor::default()`, or a
/// tuple such as `(Cbor::default(), Xdr::default())`); each connection uses the codec its client
/// asks for in the handshake.
pub struct Server<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    registry: Arc<Registry<K>>,
    limits: Limits,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl<K> Clone for Server<K> {
    fn clone(&self) -> Self {
        Server {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> fmt::Debug for Server<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("services", &self.inner.registry)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl<K: CodecSet> Server<K> {
    /// Starts building a server that offers `codecs`.
    pub fn builder(codecs: K) -> ServerBuilder<K> {
        ServerBuilder {
            registry: Registry::new(codecs),
            limits: Limits::default(),
            authorizer: None,
        }
    }

    /// Accepts links from `listener` and serves each on a task of its own, until the listener
    /// fails. A link whose handshake fails is logged and dropped; the others go on.
    pub async fn serve(&self, mut listener: impl Listener) -> Result<(), TransportError> {
        loop {
            let link = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_link(link).await {
                    tracing::warn!(error = %e, "connection refused");
                }
            });
        }
    }

    /// Performs the handshake over one link and starts serving it. Returns once the handshake
    /// is done; the connection then runs on its own until the peer closes it.
    pub async fn serve_link(&self, mut link: Link) -> Result<(), RpcError> {
        let names = self.inner.registry.codecs().names();
        let (codec_index, hello) =
            server_handshake(&mut link, &names, self.inner.limits.handshake_timeout).await?;
        tracing::debug!(
            peer = ?link.peer,
            codec = names[codec_index],
            client_id = hello.client_id,
            epoch = hello.epoch,
            "connection accepted"
        );
        let router: Arc<dyn Router> = Arc::new(BoundRouter {
            registry: Arc::clone(&self.inner.registry),
            codec_index,
            authorizer: self.inner.authorizer.clone(),
        });
        Shared::start(
            link,
            names[codec_index].to_owned(),
            self.inner.limits.clone(),
            Some(router),
        );
        Ok(())
    }
}

/// Configures a [`Server`].
pub struct ServerBuilder<K> {
    registry: Registry<K>,
    limits: Limits,
    authorizer: Option<Arc<dyn Authorizer>>,
}

impl<K> fmt::Debug for ServerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("services", &self.registry)
            .field("limits", &self.limits)
            .finish()
    }
}

impl<K: CodecSet> ServerBuilder<K> {
    /// Registers a service, such as `CalcServer::new(my_calc)`.
    ///
    /// # Panics
    ///
    /// If a service with the same interface id is already registered (a programming error that
    /// no call could work around); [`ServerBuilder::try_service`] returns it as an error.
    pub fn service<S: Service>(self, service: S) -> Self {
        match self.try_service(service) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// Registers a service; fails if another has the same interface id.
    pub fn try_service<S: Service>(mut self, service: S) -> Result<Self, String> {
        self.registry.add(service)?;
        Ok(self)
    }

    /// Sets the limits of every connection.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Asks `authorizer` before every call; a refusal reaches the caller as
    /// [`RpcError::AccessDenied`].
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Finishes the server.
    pub fn build(self) -> Server<K> {
        Server {
            inner: Arc::new(Inner {
                registry: Arc::new(self.registry),
                limits: self.limits,
                authorizer: self.authorizer,
            }),
        }
    }
}
