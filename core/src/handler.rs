//! What a handler gives back: the future a dispatcher returns and the result it yields, ready
//! to be encoded into the reply. Re-exported by [`dispatch`](crate::dispatch), whose
//! generated dispatchers make them; the engine runs them.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;

use crate::codec::Codec;
use crate::error::{CodecError, RpcError};
use crate::transport::FrameBuf;

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
