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

use crate::error::CodecError;

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

    /// Runs `work` with the codec at `index` in [`CodecSet::names`], whichever type it has;
    /// `None` if there is no codec at `index`.
    fn with_codec<W: WithCodec>(&self, index: usize, work: W) -> Option<W::Output>;
}

/// Work done with one codec of a [`CodecSet`], generic over which: how a server serves a
/// connection with the codec its handshake chose.
pub trait WithCodec {
    /// What the work gives.
    type Output;

    /// Does the work with `codec`.
    fn with<C: Codec>(self, codec: &C) -> Self::Output;
}

impl<C: Codec> CodecSet for C {
    fn names(&self) -> Vec<&'static str> {
        vec![C::NAME]
    }

    fn with_codec<W: WithCodec>(&self, index: usize, work: W) -> Option<W::Output> {
        (index == 0).then(|| work.with(self))
    }
}

macro_rules! tuple_codec_set {
    ($($t:ident $i:tt),+) => {
        impl<$($t: Codec),+> CodecSet for ($($t,)+) {
            fn names(&self) -> Vec<&'static str> {
                vec![$($t::NAME),+]
            }

            fn with_codec<W: WithCodec>(&self, index: usize, work: W) -> Option<W::Output> {
                match index {
                    $($i => Some(work.with(&self.$i)),)+
                    _ => None,
                }
            }
        }
    };
}
tuple_codec_set!(A 0, B 1);
tuple_codec_set!(A 0, B 1, C 2);

/// Bytes that travel as one byte string (serde's `bytes`), not as a sequence of numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteBuf(Vec<u8>);

impl ByteBuf {
    /// Wraps `bytes`.
    pub fn from(bytes: Vec<u8>) -> Self {
        ByteBuf(bytes)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, owned.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl serde::Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}
