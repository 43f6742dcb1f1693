//! The serde `Deserializer` that reads XDR in place, borrowing strings and opaque data.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use crate::{Error, ErrorKind};

/// Reads XDR from a byte slice.
pub(crate) struct Deserializer<'de> {
    input: &'de [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
}

#[inline]
fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl<'de> Deserializer<'de> {
    pub(crate) fn new(input: &'de [u8], max_depth: usize) -> Self {
        Deserializer {
            input,
            pos: 0,
            depth: 0,
            max_depth,
        }
    }

    /// Fails unless every byte was read.
    #[inline]
    pub(crate) fn end(&self) -> Result<(), Error> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(Error::from(ErrorKind::TrailingBytes {
                offset: self.pos,
                count: self.input.len() - self.pos,
            }))
        }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        let input: &'de [u8] = self.input;
        match input.get(self.pos..self.pos.wrapping_add(n)) {
            Some(bytes) => {
                self.pos += n;
                Ok(bytes)
            }
            None => Err(self.truncated(n)),
        }
    }

    #[cold]
    fn truncated(&self, needed: usize) -> Error {
        Error::from(ErrorKind::Truncated {
            offset: self.pos,
            needed,
        })
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let input: &'de [u8] = self.input;
        match input
            .get(self.pos..self.pos.wrapping_add(N))
            .and_then(|b| <[u8; N]>::try_from(b).ok())
        {
            Some(out) => {
                self.pos += N;
                Ok(out)
            }
            None => Err(self.truncated(N)),
        }
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    #[inline]
    fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Zero padding after `len` bytes of data.
    #[inline]
    fn padding(&mut self, len: usize) -> Result<(), Error> {
        let offset = self.pos;
        if self.take(pad(len))?.iter().any(|b| *b != 0) {
            return Err(Error::from(ErrorKind::NonZeroPadding { offset }));
        }
        Ok(())
    }

    /// A count of items, each at least one byte: checked against what remains before anything
    /// is allocated for them.
    #[inline]
    fn count(&mut self) -> Result<usize, Error> {
        let offset = self.pos;
        let declared = self.u32()?;
        let available = self.remaining();
        match usize::try_from(declared) {
            Ok(n) if n <= available => Ok(n),
            _ => Err(Error::from(ErrorKind::LengthBeyondInput {
                offset,
                declared,
                available,
            })),
        }
    }

    /// Variable-length opaque data, borrowed.
    #[inline]
    fn opaque(&mut self) -> Result<&'de [u8], Error> {
        let len = self.count()?;
        let bytes = self.take(len)?;
        self.padding(len)?;
        Ok(bytes)
    }

    #[inline]
    fn string(&mut self) -> Result<&'de str, Error> {
        let offset = self.pos;
        std::str::from_utf8(self.opaque()?)
            .map_err(|_| Error::from(ErrorKind::InvalidUtf8 { offset }))
    }

    #[inline]
    fn bool(&mut self) -> Result<bool, Error> {
        let offset = self.pos;
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(Error::from(ErrorKind::InvalidBool { offset, value })),
        }
    }

    fn nest<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, Error>) -> Result<R, Error> {
        if self.depth >= self.max_depth {
            return Err(Error::from(ErrorKind::DepthLimit {
                limit: self.max_depth,
                offset: self.pos,
            }));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn narrow<T: TryFrom<i64>>(&mut self, wide: i64, offset: usize) -> Result<T, Error> {
        T::try_from(wide).map_err(|_| {
            Error::from(ErrorKind::IntegerOutOfRange {
                offset,
                value: wide,
                target: std::any::type_name::<T>(),
            })
        })
    }
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::from(ErrorKind::Unsupported(
            "a self-describing type (untagged or flattened serde attributes, or a dynamic value): \
             XDR carries no type information",
        )))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_any(visitor)
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(self.bool()?)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let at = self.pos;
        let v = i64::from(self.i32()?);
        visitor.visit_i8(self.narrow(v, at)?)
    }

    #[inline]
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let at = self.pos;
        let v = i64::from(self.i32()?);
        visitor.visit_i16(self.narrow(v, at)?)
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i32(self.i32()?)
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(i64::from_be_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let at = self.pos;
        let v = i64::from(self.u32()?);
        visitor.visit_u8(self.narrow(v, at)?)
    }

    #[inline]
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let at = self.pos;
        let v = i64::from(self.u32()?);
        visitor.visit_u16(self.narrow(v, at)?)
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(self.u32()?)
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(u64::from_be_bytes(self.array()?))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::from(ErrorKind::Unsupported(
            "i128: XDR has no 128-bit integers",
        )))
    }

    fn deserialize_u128<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::from(ErrorKind::Unsupported(
            "u128: XDR has no 128-bit integers",
        )))
    }

    #[inline]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f32(f32::from_be_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(f64::from_be_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let offset = self.pos;
        let value = self.u32()?;
        visitor.visit_char(
            char::from_u32(value)
                .ok_or_else(|| Error::from(ErrorKind::InvalidChar { offset, value }))?,
        )
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.string()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.opaque()?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.bool()? {
            self.nest(|de| visitor.visit_some(de))
        } else {
            visitor.visit_none()
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.nest(|de| {
            let left = de.count()?;
            PackedSeq::visit(de, left, visitor)
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.nest(|de| PackedSeq::visit(de, len, visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nest(|de| visitor.visit_seq(Fields { de, left: len }))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.nest(|de| {
            let left = de.count()?;
            visitor.visit_map(Fields { de, left })
        })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nest(|de| {
            visitor.visit_seq(Fields {
                de,
                left: fields.len(),
            })
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nest(|de| {
            let offset = de.pos;
            let value = de.u32()?;
            if value as usize >= variants.len() {
                return Err(Error::from(ErrorKind::InvalidDiscriminant {
                    offset,
                    value,
                    variants: variants.len(),
                }));
            }
            visitor.visit_enum(Union { de, index: value })
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u32(self.u32()?)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Struct fields, tuple-struct fields, tuple-variant fields and map entries: a known number of
/// values in order.
struct Fields<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Fields<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Fields<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Elements of a sequence or tuple, where a run of `u8`s is packed one byte each and padded to
/// four bytes (the mirror of the serializer's `Packed`).
struct PackedSeq<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
    run: usize,
}

impl<'a, 'de> PackedSeq<'a, 'de> {
    #[inline]
    fn visit<V: Visitor<'de>>(
        de: &'a mut Deserializer<'de>,
        left: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let mut seq = PackedSeq { de, left, run: 0 };
        let value = visitor.visit_seq(&mut seq)?;
        if seq.left != 0 {
            return Err(Error::from(ErrorKind::Message(format!(
                "the sequence has {} more elements than the type reads",
                seq.left
            ))));
        }
        seq.end_run()?;
        Ok(value)
    }

    #[inline]
    fn end_run(&mut self) -> Result<(), Error> {
        if self.run == 0 {
            return Ok(());
        }
        let run = std::mem::take(&mut self.run);
        self.de.padding(run)
    }
}

impl<'de> de::SeqAccess<'de> for PackedSeq<'_, 'de> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Element { seq: self }).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// One element of a [`PackedSeq`]: a `u8` is one byte of the run, anything else ends the run.
struct Element<'s, 'a, 'de> {
    seq: &'s mut PackedSeq<'a, 'de>,
}

macro_rules! after_run {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
                self.seq.end_run()?;
                de::Deserializer::$method(&mut *self.seq.de, $($arg,)* visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Element<'_, '_, 'de> {
    type Error = Error;

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let byte = self.seq.de.take(1)?[0];
        self.seq.run += 1;
        visitor.visit_u8(byte)
    }

    after_run! {
        deserialize_any();
        deserialize_ignored_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A discriminated union: the discriminant (already checked) and then the arm.
struct Union<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    index: u32,
}

impl<'a, 'de> de::EnumAccess<'de> for Union<'a, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), Error> {
        let index: de::value::U32Deserializer<Error> = self.index.into_deserializer();
        let variant = seed.deserialize(index)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Union<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Fields {
            de: self.de,
            left: len,
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Fields {
            de: self.de,
            left: fields.len(),
        })
    }
}
