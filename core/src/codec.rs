//! Codecs: how values become the bytes of a payload.
//!
//! A [`Codec`] encodes a serde value into memory the transport provides (so the payload is
//! written once, where it will travel) and decodes one from a byte slice, borrowing from it where
//! the type allows. The codec's [`Codec::NAME`] goes into the handshake, so two sides that would
//! misread each other's payloads never exchange a call.
//!
//! A server may offer several codecs at once: a [`CodecSet`] is one codec, or a tuple of them,
//! and each connection uses the one its client asked for.

use std::fmt;

use bytes::BufMut;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::dispatch::{HandlerFuture, Incoming, Service};
use crate::error::{CodecError, RpcError};

/// Turns serde values into payload bytes and back.
///
/// Implementations live in their own crates (`courier-cbor`, `courier-xdr`). A codec is a small,
/// cheap-to-clone value holding its limits.
pub trait Codec: Clone + Send + Sync + fmt::Debug + 'static {
    /// The codec's name in the handshake: short, lowercase ASCII, at most 32 bytes.
    const NAME: &'static str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// `out` is memory the transport provides: a heap buffer for channels and QUIC, a slot of
    /// the shared segment for shared memory.
    fn encode<T, B>(&self, value: &T, out: &mut B) -> Result<(), CodecError>
    where
        T: Serialize + ?Sized,
        B: BufMut + ?Sized;

    /// Decodes exactly one owned value from `bytes`; bytes left over are an error.
    fn decode<T>(&self, bytes: &[u8]) -> Result<T, CodecError>
    where
        T: DeserializeOwned;

    /// Decodes exactly one value that may borrow from `bytes` (`&str`, `&[u8]` fields), so that
    /// large strings and byte fields are not copied.
    ///
    /// Not every format library can lend its input out: the default refuses with an error that
    /// says so, and codecs that can override it.
    fn decode_borrowed<'de, T>(&self, bytes: &'de [u8]) -> Result<T, CodecError>
    where
        T: Deserialize<'de>,
    {
        let _ = bytes;
        Err(CodecError::new(format_args!(
            "the `{}` codec cannot decode borrowed values; use owned types (String, Vec<u8>)",
            Self::NAME
        )))
    }
}

/// One codec or several that a server offers; each connection picks one in its handshake.
///
/// Implemented for every [`Codec`] and for tuples of two or three codecs:
/// `Server::builder((Cbor::default(), Xdr::default()))`.
pub trait CodecSet: Send + Sync + 'static {
    /// The names of the codecs, in order.
    fn names(&self) -> Vec<&'static str>;

    /// Dispatches `call` to `service` with the codec at `index` in [`CodecSet::names`].
    fn dispatch<S: Service>(
        &self,
        index: usize,
        service: &S,
        call: Incoming<'_>,
    ) -> Result<HandlerFuture, RpcError>;
}

impl<C: Codec> CodecSet for C {
    fn names(&self) -> Vec<&'static str> {
        vec![C::NAME]
    }

    fn dispatch<S: Service>(
        &self,
        _index: usize,
        service: &S,
        call: Incoming<'_>,
    ) -> Result<HandlerFuture, RpcError> {
        service.dispatch(self, call)
    }
}

macro_rules! tuple_codec_set {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Codec),+> CodecSet for ($($t,)+) {
            fn names(&self) -> Vec<&'static str> {
                vec![$($t::NAME),+]
            }

            fn dispatch<S: Service>(
                &self,
                index: usize,
                service: &S,
                call: Incoming<'_>,
            ) -> Result<HandlerFuture, RpcError> {
                match index {
                    $($i => service.dispatch(&self.$i, call),)+
                    _ => Err(RpcError::Internal(format!("no codec at index {index}"))),
                }
            }
        }
    };
}
tuple_codec_set!(A 0, B 1);
tuple_codec_set!(A 0, B 1, C 2);
