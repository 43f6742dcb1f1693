//! XDR (RFC 4506) for Courier: a serde data format written here, endianness-neutral and
//! strict.
//!
//! [`Xdr`] is the codec (named `xdr` in the handshake); [`to_vec`] and [`from_slice`] are the
//! same encoding as free functions. Decoding borrows: `&str` and `&[u8]` fields point into the
//! input, so a large opaque decodes in constant time.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Point<'a> { x: i32, label: &'a str }
//!
//! let bytes = courier_xdr::to_vec(&Point { x: -2, label: "ab" }).unwrap();
//! assert_eq!(bytes, [0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 2, b'a', b'b', 0, 0]);
//! let back: Point = courier_xdr::from_slice(&bytes).unwrap();
//! assert_eq!(back, Point { x: -2, label: "ab" });
//! ```
//!
//! # How serde types map to XDR
//!
//! Everything is in 4-byte units, big-endian; padding is zero.
//!
//! | serde type | XDR (RFC 4506 section) |
//! |---|---|
//! | `bool` | boolean (§4.4): an int, 0 or 1 |
//! | `i8`, `i16`, `i32` | int (§4.1), range-checked on decode |
//! | `u8`, `u16`, `u32` | unsigned int (§4.2), range-checked on decode |
//! | `i64` / `u64` | hyper / unsigned hyper (§4.5) |
//! | `i128`, `u128` | refused: [`ErrorKind::Unsupported`] |
//! | `f32` / `f64` | float (§4.6) / double (§4.7) |
//! | `char` | unsigned int holding the code point |
//! | `String`, `&str` | string (§4.11): length, UTF-8 bytes, padding |
//! | `serde_bytes` buffers, `&[u8]` | variable-length opaque (§4.10) |
//! | `Vec<u8>` and other sequences of `u8` | variable-length opaque: one byte per element, padded |
//! | `[u8; N]` and other tuples of `u8` | fixed-length opaque (§4.9): one byte per element, padded |
//! | other sequences (`Vec<T>`, sets) | variable-length array (§4.13): count, then elements |
//! | other tuples, `[T; N]` | fixed-length array (§4.12): the elements |
//! | structs, tuple structs | structure (§4.14): the fields in order, no names |
//! | `()`, unit structs | void (§4.16): nothing |
//! | newtype structs | the inner value |
//! | `Option<T>` | optional-data (§4.19): a boolean, then `T` if true |
//! | enums | discriminated union (§4.15): serde's variant index as unsigned int, then the arm |
//! | maps | a count of entries, then each key and value |
//!
//! Within a sequence or tuple, consecutive `u8` elements are packed one byte each and the run is
//! zero-padded to a 4-byte boundary before the next element of another type and at the end, so
//! `Vec<u8>` is exactly XDR's opaque. Fields of structs are never packed: a `u8` field is an
//! unsigned int.
//!
//! Enum discriminants are serde's variant indices (0, 1, 2, … in declaration order). A protocol
//! that fixes its own enum values (`enum { RED = 2, BLUE = 5 }`) should encode such enums with
//! `serde_repr`, which serializes them as their integer value.
//!
//! XDR is not self-describing: serde features that need the format to describe itself
//! (`#[serde(untagged)]`, `#[serde(flatten)]`, `skip_serializing_if`) are refused with a clear
//! error rather than producing bytes that cannot be read back.
//!
//! # Strict decoding
//!
//! Input that breaks any of these is an [`Error`], never a panic or an allocation of what the
//! input merely claims: padding bytes are zero; a boolean is 0 or 1; a discriminant names a
//! variant; a narrow integer fits its type; a `char` is a valid code point; text is UTF-8; every
//! length or count fits in the bytes that remain (checked before anything is allocated); nesting
//! stays within [`Xdr::max_depth`] (default [`DEFAULT_MAX_DEPTH`]); nothing follows the value.
//!
//! XDR's bounded forms (`string<N>`, `opaque<N>`, `T<N>`) are [`Bounded`].

#![warn(clippy::unwrap_used)]

mod de;
mod ser;

use std::fmt;

use bytes::BufMut;
use serde::{de::DeserializeOwned, Deserialize, Deserializer, Serialize, Serializer};

/// How deeply [`Xdr`] lets values nest by default: arrays, structures, unions and optional data
/// each count one level.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Why a value could not be encoded or decoded: [`Error::kind`] says which rule was broken.
///
/// The details live behind a box, so that the `Result`s on the decoder's hot path stay one
/// pointer wide.
#[derive(Clone, PartialEq, Eq)]
pub struct Error(Box<ErrorKind>);

impl Error {
    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }

    /// What went wrong, by value.
    pub fn into_kind(self) -> ErrorKind {
        *self.0
    }
}

impl From<ErrorKind> for Error {
    #[cold]
    fn from(kind: ErrorKind) -> Self {
        Error(Box::new(kind))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Error {}

/// What went wrong; see [`Error::kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input ended early.
    #[error("XDR input ends early: {needed} more bytes needed at byte {offset}")]
    Truncated {
        /// Where more was needed.
        offset: usize,
        /// How many bytes were needed.
        needed: usize,
    },
    /// Padding bytes were not zero.
    #[error("XDR padding at byte {offset} is not zero")]
    NonZeroPadding {
        /// Where the padding starts.
        offset: usize,
    },
    /// A boolean was neither 0 nor 1.
    #[error("XDR boolean at byte {offset} is {value}, not 0 or 1")]
    InvalidBool {
        /// Where the boolean is.
        offset: usize,
        /// What it was.
        value: u32,
    },
    /// A union discriminant named no variant.
    #[error(
        "XDR discriminant {value} at byte {offset} names no variant (the type has {variants})"
    )]
    InvalidDiscriminant {
        /// Where the discriminant is.
        offset: usize,
        /// What it was.
        value: u32,
        /// How many variants the type has.
        variants: usize,
    },
    /// An integer did not fit the narrower type it decodes into.
    #[error("XDR integer {value} at byte {offset} does not fit {target}")]
    IntegerOutOfRange {
        /// Where the integer is.
        offset: usize,
        /// Its value.
        value: i64,
        /// The type it had to fit.
        target: &'static str,
    },
    /// An unsigned int that is not a Unicode scalar value, where a `char` was expected.
    #[error("XDR value {value:#x} at byte {offset} is not a valid char")]
    InvalidChar {
        /// Where it is.
        offset: usize,
        /// What it was.
        value: u32,
    },
    /// A string that is not UTF-8.
    #[error("XDR string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string's length is.
        offset: usize,
    },
    /// A length or count that the rest of the input cannot hold.
    #[error("XDR length at byte {offset} declares {declared} but only {available} bytes remain")]
    LengthBeyondInput {
        /// Where the length is.
        offset: usize,
        /// What it declares.
        declared: u32,
        /// The bytes left.
        available: usize,
    },
    /// Bytes follow the value.
    #[error("{count} bytes follow the XDR value that ends at byte {offset}")]
    TrailingBytes {
        /// Where the value ends.
        offset: usize,
        /// How many bytes follow.
        count: usize,
    },
    /// Nesting deeper than the codec's limit.
    #[error("XDR nesting deeper than the limit of {limit} at byte {offset}")]
    DepthLimit {
        /// The limit in force.
        limit: usize,
        /// Where the limit was crossed.
        offset: usize,
    },
    /// A [`Bounded`] value longer than its bound.
    #[error("length {len} exceeds the declared maximum of {max}")]
    BoundExceeded {
        /// The value's length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A length too large for XDR's 32-bit lengths.
    #[error("length {len} does not fit XDR's 32-bit length field")]
    TooLong {
        /// The length.
        len: usize,
    },
    /// A struct field was skipped (`skip_serializing_if`): XDR has no field names to tell.
    #[error("field `{0}` was skipped, but XDR structures have every field, in order")]
    SkippedField(&'static str),
    /// A serde type or feature that XDR cannot carry.
    #[error("XDR cannot carry {0}")]
    Unsupported(&'static str),
    /// An error raised by the type being encoded or decoded.
    #[error("{0}")]
    Message(String),
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::from(ErrorKind::Message(msg.to_string()))
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::from(ErrorKind::Message(msg.to_string()))
    }
}

impl From<Error> for courier::CodecError {
    fn from(e: Error) -> Self {
        courier::CodecError::new(e)
    }
}

/// The XDR codec, with its limits. `Xdr::default()` is ready to use.
///
/// ```
/// use courier::Codec;
/// let xdr = courier_xdr::Xdr::default();
/// let mut buf = Vec::new();
/// xdr.encode(&(true, 7u16), &mut buf).unwrap();
/// assert_eq!(buf, [0, 0, 0, 1, 0, 0, 0, 7]);
/// let (flag, n): (bool, u16) = xdr.decode(&buf).unwrap();
/// assert!(flag && n == 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xdr {
    max_depth: usize,
}

impl Default for Xdr {
    fn default() -> Self {
        Xdr {
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl Xdr {
    /// Sets how deeply input may nest. Each level costs stack while decoding: raise it only as
    /// far as your types need (a linked list of `Option<Box<Node>>` takes two levels a node).
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth.max(1);
        self
    }

    /// Encodes `value`, appending to `out`.
    pub fn to_writer<T, B>(&self, value: &T, out: &mut B) -> Result<(), Error>
    where
        T: Serialize + ?Sized,
        B: BufMut + ?Sized,
    {
        value.serialize(&mut ser::Serializer { out })
    }

    /// Decodes exactly one value from `bytes`, borrowing strings and opaque data from it.
    pub fn from_slice<'de, T: Deserialize<'de>>(&self, bytes: &'de [u8]) -> Result<T, Error> {
        let mut de = de::Deserializer::new(bytes, self.max_depth);
        let value = T::deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

impl courier::Codec for Xdr {
    const NAME: &'static str = "xdr";

    fn encode<T, B>(&self, value: &T, out: &mut B) -> Result<(), courier::CodecError>
    where
        T: Serialize + ?Sized,
        B: BufMut + ?Sized,
    {
        Ok(self.to_writer(value, out)?)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, courier::CodecError> {
        Ok(self.from_slice(bytes)?)
    }

    fn decode_borrowed<'de, T: Deserialize<'de>>(
        &self,
        bytes: &'de [u8],
    ) -> Result<T, courier::CodecError> {
        Ok(self.from_slice(bytes)?)
    }
}

/// Encodes `value` as XDR.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Xdr::default().to_writer(value, &mut out)?;
    Ok(out)
}

/// Decodes exactly one value from `bytes` with the default limits, borrowing where the type
/// allows; bytes left over are an error.
pub fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    Xdr::default().from_slice(bytes)
}

/// Something with a length that [`Bounded`] can check.
pub trait XdrLen {
    /// The length XDR would write: bytes for strings and opaque data, elements for arrays.
    fn xdr_len(&self) -> usize;
}

impl XdrLen for String {
    fn xdr_len(&self) -> usize {
        self.len()
    }
}

impl XdrLen for &str {
    fn xdr_len(&self) -> usize {
        self.len()
    }
}

impl XdrLen for &[u8] {
    fn xdr_len(&self) -> usize {
        self.len()
    }
}

impl<T> XdrLen for Vec<T> {
    fn xdr_len(&self) -> usize {
        self.len()
    }
}

/// XDR's bounded forms: `string<N>`, `opaque<N>` and `T<N>` are `Bounded<String, N>`,
/// `Bounded<Vec<u8>, N>` (or `Bounded<&[u8], N>`) and `Bounded<Vec<T>, N>`.
///
/// A longer value is refused when encoding and when decoding ([`ErrorKind::BoundExceeded`]). On the
/// wire it is the unbounded form: the bound is the protocol's promise, not extra bytes.
///
/// ```
/// use courier_xdr::{Bounded, ErrorKind};
/// let name: Bounded<String, 8> = Bounded::new("courier".to_owned()).unwrap();
/// let bytes = courier_xdr::to_vec(&name).unwrap();
/// assert!(courier_xdr::from_slice::<Bounded<String, 4>>(&bytes).is_err());
/// let err = Bounded::<String, 3>::new("toolong".into()).unwrap_err();
/// assert!(matches!(err.kind(), ErrorKind::BoundExceeded { .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Bounded<T, const N: usize>(T);

impl<T: XdrLen, const N: usize> Bounded<T, N> {
    /// Wraps `value` if its length is at most `N`.
    pub fn new(value: T) -> Result<Self, Error> {
        let len = value.xdr_len();
        if len > N {
            return Err(Error::from(ErrorKind::BoundExceeded { len, max: N }));
        }
        Ok(Bounded(value))
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// The value, borrowed.
    pub fn get(&self) -> &T {
        &self.0
    }
}

impl<T: XdrLen + Serialize, const N: usize> Serialize for Bounded<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.0.xdr_len();
        if len > N {
            return Err(serde::ser::Error::custom(Error::from(
                ErrorKind::BoundExceeded { len, max: N },
            )));
        }
        self.0.serialize(s)
    }
}

impl<'de, T: XdrLen + Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Lengths were already checked against the input before anything was allocated; the
        // bound is the protocol's own, stricter maximum.
        let value = T::deserialize(d)?;
        Bounded::new(value).map_err(serde::de::Error::custom)
    }
}
