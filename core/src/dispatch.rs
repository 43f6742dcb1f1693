//! The server side of a service: the [`Service`] trait that `#[courier::service]` implements for
//! `FooServer<S>`, and what a dispatcher receives and returns.
//!
//! Generated dispatchers are plain code over this module: match the method id, decode the
//! arguments with the connection's codec, and return a [`HandlerFuture`] that runs the method and
//! yields its encodable result. The connection engine runs that future, applies the deadline,
//! drops it on cancel, and writes the reply.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::codec::{Codec, CodecSet};
use crate::context::Context;
use crate::error::{CodecError, RpcError};
use crate::ids::{InterfaceId, MethodId};
use crate::peer::Peer;
use crate::transport::FrameBuf;
use crate::wire::Header;

/// A service's dispatcher; `#[courier::service] trait Foo` implements it for `FooServer<S>`.
pub trait Service: Send + Sync + 'static {
    /// The service's name: its trait's path, such as `my_api::calc::Calc`.
    const NAME: &'static str;
    /// The service's interface id.
    const INTERFACE: InterfaceId;
    /// The service's version; a caller built against another version is refused with
    /// [`RpcError::VersionMismatch`].
    const VERSION: u16;

    /// Decodes `call`'s arguments with `codec` and returns the future that runs the method.
    ///
    /// Errors returned here (unknown method, undecodable arguments) reach the caller at once.
    fn dispatch<C: Codec>(&self, codec: &C, call: Incoming<'_>) -> Result<HandlerFuture, RpcError>;
}

/// A method's result, ready to be encoded into the reply frame.
pub trait ReplyBody: Send {
    /// Encodes the result as the reply's payload.
    fn encode(&self, out: &mut dyn FrameBuf) -> Result<(), CodecError>;
}

struct Encoded<C, T> {
    codec: C,
    value: T,
}

impl<C: Codec, T: Serialize + Send> ReplyBody for Encoded<C, T> {
    fn encode(&self, out: &mut dyn FrameBuf) -> Result<(), CodecError> {
        self.codec.encode(&self.value, out)
    }
}

/// The future a dispatcher returns: runs the method and yields its result, ready to encode.
pub type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Box<dyn ReplyBody>, RpcError>> + Send + 'static>>;

/// Wraps a method's future into a [`HandlerFuture`] whose result is encoded with `codec`.
pub fn handler<C, F>(codec: &C, method: F) -> HandlerFuture
where
    C: Codec,
    F: Future + Send + 'static,
    F::Output: Serialize + Send + 'static,
{
    let codec = codec.clone();
    Box::pin(async move {
        let value = method.await;
        Ok(Box::new(Encoded { codec, value }) as Box<dyn ReplyBody>)
    })
}

/// One incoming call, as a dispatcher sees it.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub(crate) header: &'a Header,
    pub(crate) payload: &'a [u8],
    pub(crate) context: &'a Context,
}

impl<'a> Incoming<'a> {
    /// The method called.
    pub fn method(&self) -> MethodId {
        self.header.method
    }

    /// The interface called.
    pub fn interface(&self) -> InterfaceId {
        self.header.interface
    }

    /// The encoded arguments.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// Decodes the arguments with `codec`; a failure is [`RpcError::BadRequest`].
    pub fn decode<C: Codec, T: DeserializeOwned>(&self, codec: &C) -> Result<T, RpcError> {
        codec
            .decode(self.payload)
            .map_err(|e| RpcError::BadRequest(e.to_string()))
    }

    /// The call's context, for methods that take one.
    pub fn context(&self) -> Context {
        self.context.clone()
    }

    /// The error for a method id this service does not have.
    pub fn unknown_method(&self) -> RpcError {
        RpcError::UnknownMethod {
            interface: self.header.interface,
            method: self.header.method,
        }
    }
}

/// [`Service`] with the codec chosen at run time, so services of different types can share a
/// table.
trait ErasedService<K>: Send + Sync {
    fn dispatch(
        &self,
        codecs: &K,
        index: usize,
        call: Incoming<'_>,
    ) -> Result<HandlerFuture, RpcError>;
}

impl<K: CodecSet, S: Service> ErasedService<K> for S {
    fn dispatch(
        &self,
        codecs: &K,
        index: usize,
        call: Incoming<'_>,
    ) -> Result<HandlerFuture, RpcError> {
        codecs.dispatch(index, self, call)
    }
}

struct Entry<K> {
    name: &'static str,
    version: u16,
    service: Arc<dyn ErasedService<K>>,
}

/// The services one side offers, by interface id, with the codecs it offers them in.
pub(crate) struct Registry<K> {
    codecs: K,
    services: HashMap<InterfaceId, Entry<K>>,
}

impl<K: CodecSet> Registry<K> {
    pub(crate) fn new(codecs: K) -> Self {
        Registry {
            codecs,
            services: HashMap::new(),
        }
    }

    pub(crate) fn codecs(&self) -> &K {
        &self.codecs
    }

    /// The interfaces registered, by id.
    pub(crate) fn interfaces(&self) -> Vec<crate::directory::InterfaceRecord> {
        let mut list: Vec<_> = self
            .services
            .iter()
            .map(|(id, e)| crate::directory::InterfaceRecord::new(e.name, *id, e.version))
            .collect();
        list.sort_by_key(|r| r.id);
        list
    }

    /// Adds a service; a second service with the same interface id is refused, since calls
    /// could not tell them apart.
    pub(crate) fn add<S: Service>(&mut self, service: S) -> Result<(), String> {
        if let Some(existing) = self.services.get(&S::INTERFACE) {
            return Err(format!(
                "services `{}` and `{}` both have interface id {}; give one another id with \
                 #[courier::service(id = …)]",
                existing.name,
                S::NAME,
                S::INTERFACE
            ));
        }
        self.services.insert(
            S::INTERFACE,
            Entry {
                name: S::NAME,
                version: S::VERSION,
                service: Arc::new(service),
            },
        );
        Ok(())
    }
}

impl<K> fmt::Debug for Registry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.services.values().map(|e| (e.name, e.version)))
            .finish()
    }
}

/// Routes a connection's incoming calls: a registry with the codec its handshake chose.
pub(crate) trait Router: Send + Sync + 'static {
    fn dispatch(&self, call: Incoming<'_>) -> Result<HandlerFuture, RpcError>;
}

pub(crate) struct BoundRouter<K> {
    pub(crate) registry: Arc<Registry<K>>,
    pub(crate) codec_index: usize,
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
}

impl<K: CodecSet> Router for BoundRouter<K> {
    fn dispatch(&self, call: Incoming<'_>) -> Result<HandlerFuture, RpcError> {
        let entry = self.registry.services.get(&call.header.interface).ok_or(
            RpcError::UnknownInterface {
                interface: call.header.interface,
            },
        )?;
        if entry.version != call.header.version {
            return Err(RpcError::VersionMismatch {
                interface: call.header.interface,
                message: format!(
                    "the server's `{}` is version {}, the caller was built against version {}",
                    entry.name, entry.version, call.header.version
                ),
            });
        }
        if let Some(auth) = &self.authorizer {
            auth.authorize(
                call.context.peer(),
                call.header.interface,
                call.header.method,
            )
            .map_err(RpcError::AccessDenied)?;
        }
        entry
            .service
            .dispatch(&self.registry.codecs, self.codec_index, call)
    }
}

/// Decides, before dispatch, whether a peer may call a method.
///
/// Implemented for closures `Fn(&Peer, InterfaceId, MethodId) -> bool`; implement the trait
/// itself to give the caller a reason.
///
/// ```
/// use courier::{Peer, ids::{InterfaceId, MethodId}};
/// let only_root = |peer: &Peer, _: InterfaceId, _: MethodId| {
///     matches!(peer, Peer::Process { uid: 0, .. })
/// };
/// # fn takes(_: impl courier::dispatch::Authorizer) {}
/// takes(only_root);
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(())` to let the call through, or the reason it is refused; the caller receives
    /// [`RpcError::AccessDenied`] with that reason.
    fn authorize(
        &self,
        peer: &Peer,
        interface: InterfaceId,
        method: MethodId,
    ) -> Result<(), String>;
}

impl<F> Authorizer for F
where
    F: Fn(&Peer, InterfaceId, MethodId) -> bool + Send + Sync + 'static,
{
    fn authorize(
        &self,
        peer: &Peer,
        interface: InterfaceId,
        method: MethodId,
    ) -> Result<(), String> {
        if self(peer, interface, method) {
            Ok(())
        } else {
            Err(format!(
                "peer may not call method {method} of interface {interface}"
            ))
        }
    }
}
