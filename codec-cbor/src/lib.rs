//! CBOR (RFC 8949) for Courier, through [ciborium], hardened against hostile input.
//!
//! [`Cbor`] is the codec (named `cbor` in the handshake); [`to_vec`] and [`from_slice`] are the
//! same encoding as free functions.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Point { x: i32, y: i32 }
//!
//! let bytes = courier_cbor::to_vec(&Point { x: 1, y: -2 }).unwrap();
//! assert_eq!(courier_cbor::from_slice::<Point>(&bytes).unwrap(), Point { x: 1, y: -2 });
//!
//! // One value, exactly: a byte more is an error.
//! let mut longer = bytes.clone();
//! longer.push(0);
//! assert!(courier_cbor::from_slice::<Point>(&longer).is_err());
//! ```
//!
//! # How serde types map to CBOR
//!
//! | serde type | CBOR |
//! |---|---|
//! | `bool` | simple value false / true |
//! | integers | major type 0 or 1, shortest form; `u128`/`i128` beyond 64 bits as bignums (tags 2, 3) |
//! | `f32`, `f64` | floats, shortest form that is exact |
//! | `char`, `String`, `&str` | text string |
//! | `Vec<u8>`, `[u8; N]` | **array** of integers (serde sees a sequence) |
//! | `serde_bytes::ByteBuf`, `#[serde(with = "serde_bytes")]` | byte string: use these for binary data |
//! | `Option<T>` | null, or `T` itself |
//! | `()`, unit structs | null |
//! | sequences, tuples, tuple structs | arrays |
//! | structs | maps with text keys (the field names) |
//! | maps | maps |
//! | enums | externally tagged: a unit variant as its name, other variants as a one-entry map `{name: content}` |
//!
//! `Option<T>` where `T` itself encodes as null (`Option<()>`, `Option<Option<T>>`) cannot round
//! trip: `Some(())` comes back as `None`. Use an enum instead.
//!
//! ciborium cannot lend out its input, so values decode owned: use `String` and `Vec<u8>`
//! rather than `&str` and `&[u8]`.
//!
//! # Hostile input
//!
//! Before ciborium sees the input, one iterative pass checks its structure; while decoding, a
//! serde layer checks what depends on the type. Input that breaks any rule below is an
//! [`Error`], never a panic, a stack overflow or an allocation of what the input merely claims:
//!
//! - exactly one data item, nothing after it;
//! - every declared length and count fits in the bytes that remain;
//! - nesting at most [`Cbor::max_depth`] deep (default [`DEFAULT_MAX_DEPTH`]: 128, far below
//!   what overflows a 2 MiB thread stack);
//! - indefinite-length strings made of definite chunks of their own type (RFC 8949 §3.2.3);
//!   text valid UTF-8; breaks only where an indefinite item may end;
//! - a type reads every item it is given: a 2-tuple given a 3-item array is an error, not a
//!   silent success that leaves an item for the next field to misread; too few items is an
//!   error too.
//!
//! Where the standard leaves a choice, the codec takes the one that cannot surprise a caller:
//!
//! | input | policy |
//! |---|---|
//! | duplicate map keys (same encoding) | refused: ambiguous, and a classic smuggling trick |
//! | tags | refused, except bignums (2, 3) on ≤ 16-byte strings, which `u128`/`i128` need |
//! | a double decoded as `f32` | refused unless exact (NaN is kept) |
//! | simple values other than false/true/null/undefined | refused |
//! | `undefined` | read as null |

#![warn(clippy::unwrap_used)]

mod scan;
mod strict;

use bytes::BufMut;
use serde::de::{Deserialize, DeserializeOwned, Deserializer};
use serde::Serialize;

/// The nesting depth [`Cbor`] accepts by default.
pub const DEFAULT_MAX_DEPTH: usize = 128;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended inside a data item.
    #[error("CBOR input ends early, at byte {offset}")]
    Truncated {
        /// Where more was expected.
        offset: usize,
    },
    /// The input is not well-formed CBOR.
    #[error("malformed CBOR at byte {offset}: {reason}")]
    Malformed {
        /// Where the problem is.
        offset: usize,
        /// What the problem is.
        reason: &'static str,
    },
    /// Bytes follow the data item.
    #[error("{count} bytes follow the CBOR item that ends at byte {offset}")]
    TrailingBytes {
        /// Where the item ends.
        offset: usize,
        /// How many bytes follow.
        count: usize,
    },
    /// Nesting deeper than the codec's limit.
    #[error("CBOR nesting deeper than the limit of {limit} at byte {offset}")]
    DepthLimit {
        /// The limit in force.
        limit: usize,
        /// Where the limit was crossed.
        offset: usize,
    },
    /// A length or count that the rest of the input cannot hold.
    #[error("CBOR item at byte {offset} declares {declared} but only {available} bytes remain")]
    LengthBeyondInput {
        /// Where the item starts.
        offset: usize,
        /// What it declares.
        declared: u64,
        /// The bytes left.
        available: usize,
    },
    /// A text string that is not UTF-8.
    #[error("CBOR text at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the text starts.
        offset: usize,
    },
    /// The same key twice in one map.
    #[error("CBOR map has a duplicate key at byte {offset}")]
    DuplicateKey {
        /// Where the second copy starts.
        offset: usize,
    },
    /// A tag this codec does not accept.
    #[error("CBOR tag {tag} at byte {offset} is not accepted")]
    Tag {
        /// Where the tag starts.
        offset: usize,
        /// The tag number.
        tag: u64,
    },
    /// The input is well-formed but does not match the type (a wrong type, a missing field,
    /// too many or too few items, an inexact float).
    #[error("CBOR does not match the expected type: {0}")]
    Decode(String),
    /// The value could not be encoded.
    #[error("value could not be encoded as CBOR: {0}")]
    Encode(String),
}

impl From<Error> for courier::CodecError {
    fn from(e: Error) -> Self {
        courier::CodecError::new(e)
    }
}

/// The CBOR codec, with its limits. `Cbor::default()` is ready to use.
///
/// ```
/// use courier::Codec;
/// let cbor = courier_cbor::Cbor::default().max_depth(16);
/// let mut buf = Vec::new();
/// cbor.encode(&vec![1u32, 2, 3], &mut buf).unwrap();
/// assert_eq!(buf, [0x83, 1, 2, 3]);
/// assert_eq!(cbor.decode::<Vec<u32>>(&buf).unwrap(), [1, 2, 3]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cbor {
    max_depth: usize,
}

impl Default for Cbor {
    fn default() -> Self {
        Cbor {
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl Cbor {
    /// Sets how deep arrays and maps may nest in input. Each level costs stack while decoding:
    /// raise it only as far as your types need.
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
        ciborium::into_writer(value, BufMut::writer(out)).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Decodes exactly one value from `bytes`.
    pub fn from_slice<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, Error> {
        scan::scan(bytes, self.max_depth)?;
        let mut rest = bytes;
        // The scan has bounded the depth already; ciborium's own limit is a second fence.
        let Checked(value) =
            ciborium::de::from_reader_with_recursion_limit(&mut rest, self.max_depth + 2)
                .map_err(|e| Error::Decode(describe(e)))?;
        if !rest.is_empty() {
            return Err(Error::TrailingBytes {
                offset: bytes.len() - rest.len(),
                count: rest.len(),
            });
        }
        Ok(value)
    }
}

fn describe<E: std::fmt::Debug>(e: ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Semantic(Some(offset), msg) => format!("{msg} (at byte {offset})"),
        ciborium::de::Error::Semantic(None, msg) => msg,
        ciborium::de::Error::Syntax(offset) => format!("syntax error at byte {offset}"),
        ciborium::de::Error::RecursionLimitExceeded => "nesting too deep".to_owned(),
        ciborium::de::Error::Io(e) => format!("{e:?}"),
    }
}

/// A value decoded through the checks of [`strict`].
struct Checked<T>(T);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(strict::Strict(d)).map(Checked)
    }
}

impl courier::Codec for Cbor {
    const NAME: &'static str = "cbor";

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
}

/// Encodes `value` as CBOR.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    Cbor::default().to_writer(value, &mut out)?;
    Ok(out)
}

/// Decodes exactly one value from `bytes` with the default limits; bytes left over are an error.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    Cbor::default().from_slice(bytes)
}
