//! The serde `Serializer` that writes XDR into the buffer the transport provides.

use bytes::BufMut;
use serde::ser::{self, Serialize};

use crate::{Error, ErrorKind};

/// Writes XDR into `out`.
pub(crate) struct Serializer<'a, B: ?Sized> {
    pub(crate) out: &'a mut B,
}

#[inline]
fn len32(len: usize) -> Result<u32, Error> {
    u32::try_from(len).map_err(|_| Error::from(ErrorKind::TooLong { len }))
}

#[inline]
fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl<B: BufMut + ?Sized> Serializer<'_, B> {
    #[inline]
    fn opaque(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.put_u32(len32(bytes.len())?);
        self.out.put_slice(bytes);
        self.out.put_bytes(0, pad(bytes.len()));
        Ok(())
    }
}

impl<'s, 'o, B: BufMut + ?Sized> ser::Serializer for &'s mut Serializer<'o, B> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Packed<'s, 'o, B>;
    type SerializeTuple = Packed<'s, 'o, B>;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.put_u32(u32::from(v));
        Ok(())
    }

    fn serialize_i8(self, v: i8) -> Result<(), Error> {
        self.serialize_i32(i32::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<(), Error> {
        self.serialize_i32(i32::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<(), Error> {
        self.out.put_i32(v);
        Ok(())
    }

    fn serialize_i64(self, v: i64) -> Result<(), Error> {
        self.out.put_i64(v);
        Ok(())
    }

    fn serialize_i128(self, _: i128) -> Result<(), Error> {
        Err(Error::from(ErrorKind::Unsupported(
            "i128: XDR has no 128-bit integers",
        )))
    }

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.serialize_u32(u32::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<(), Error> {
        self.serialize_u32(u32::from(v))
    }

    #[inline]
    fn serialize_u32(self, v: u32) -> Result<(), Error> {
        self.out.put_u32(v);
        Ok(())
    }

    fn serialize_u64(self, v: u64) -> Result<(), Error> {
        self.out.put_u64(v);
        Ok(())
    }

    fn serialize_u128(self, _: u128) -> Result<(), Error> {
        Err(Error::from(ErrorKind::Unsupported(
            "u128: XDR has no 128-bit integers",
        )))
    }

    fn serialize_f32(self, v: f32) -> Result<(), Error> {
        self.out.put_f32(v);
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<(), Error> {
        self.out.put_f64(v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.serialize_u32(u32::from(v))
    }

    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.opaque(v.as_bytes())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.opaque(v)
    }

    fn serialize_none(self) -> Result<(), Error> {
        self.serialize_bool(false)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.serialize_bool(true)?;
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), Error> {
        self.serialize_u32(index)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.serialize_u32(index)?;
        value.serialize(self)
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<Packed<'s, 'o, B>, Error> {
        let len = len.ok_or_else(|| {
            Error::from(ErrorKind::Unsupported(
                "a sequence of unknown length: XDR writes the count first",
            ))
        })?;
        self.out.put_u32(len32(len)?);
        Ok(Packed { ser: self, run: 0 })
    }

    fn serialize_tuple(self, _: usize) -> Result<Packed<'s, 'o, B>, Error> {
        Ok(Packed { ser: self, run: 0 })
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.serialize_u32(index)?;
        Ok(self)
    }

    fn serialize_map(self, len: Option<usize>) -> Result<Self, Error> {
        let len = len.ok_or_else(|| {
            Error::from(ErrorKind::Unsupported(
                "a map of unknown length: XDR writes the count first",
            ))
        })?;
        self.out.put_u32(len32(len)?);
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.serialize_u32(index)?;
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Elements of a sequence or tuple. A run of `u8` elements is packed one byte each and padded
/// with zeros to a 4-byte boundary, so `Vec<u8>` is exactly XDR's variable-length opaque and
/// `[u8; N]` its fixed-length opaque.
pub(crate) struct Packed<'s, 'o, B: ?Sized> {
    ser: &'s mut Serializer<'o, B>,
    run: usize,
}

impl<B: BufMut + ?Sized> Packed<'_, '_, B> {
    #[inline]
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(Element { packed: self })
    }

    #[inline]
    fn end_run(&mut self) {
        if self.run != 0 {
            self.ser.out.put_bytes(0, pad(self.run));
            self.run = 0;
        }
    }
}

impl<B: BufMut + ?Sized> ser::SerializeSeq for Packed<'_, '_, B> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(mut self) -> Result<(), Error> {
        self.end_run();
        Ok(())
    }
}

impl<B: BufMut + ?Sized> ser::SerializeTuple for Packed<'_, '_, B> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.element(value)
    }

    fn end(mut self) -> Result<(), Error> {
        self.end_run();
        Ok(())
    }
}

/// Serializes one element of a [`Packed`] container: `u8` joins the run, anything else ends
/// it first.
struct Element<'p, 's, 'o, B: ?Sized> {
    packed: &'p mut Packed<'s, 'o, B>,
}

macro_rules! after_run {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[inline]
            fn $method(self, $($arg: $ty),*) -> Result<$ret, Error> {
                self.packed.end_run();
                ser::Serializer::$method(&mut *self.packed.ser, $($arg),*)
            }
        )*
    };
}

impl<'p, 'o, B: BufMut + ?Sized> ser::Serializer for Element<'p, '_, 'o, B> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Packed<'p, 'o, B>;
    type SerializeTuple = Packed<'p, 'o, B>;
    type SerializeTupleStruct = &'p mut Serializer<'o, B>;
    type SerializeTupleVariant = &'p mut Serializer<'o, B>;
    type SerializeMap = &'p mut Serializer<'o, B>;
    type SerializeStruct = &'p mut Serializer<'o, B>;
    type SerializeStructVariant = &'p mut Serializer<'o, B>;

    #[inline]
    fn serialize_u8(self, v: u8) -> Result<(), Error> {
        self.packed.ser.out.put_u8(v);
        self.packed.run += 1;
        Ok(())
    }

    after_run! {
        serialize_bool(v: bool) -> ();
        serialize_i8(v: i8) -> ();
        serialize_i16(v: i16) -> ();
        serialize_i32(v: i32) -> ();
        serialize_i64(v: i64) -> ();
        serialize_i128(v: i128) -> ();
        serialize_u16(v: u16) -> ();
        serialize_u32(v: u32) -> ();
        serialize_u64(v: u64) -> ();
        serialize_u128(v: u128) -> ();
        serialize_f32(v: f32) -> ();
        serialize_f64(v: f64) -> ();
        serialize_char(v: char) -> ();
        serialize_str(v: &str) -> ();
        serialize_bytes(v: &[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(name: &'static str) -> ();
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str) -> ();
        serialize_seq(len: Option<usize>) -> Packed<'p, 'o, B>;
        serialize_tuple(len: usize) -> Packed<'p, 'o, B>;
        serialize_tuple_struct(name: &'static str, len: usize) -> &'p mut Serializer<'o, B>;
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> &'p mut Serializer<'o, B>;
        serialize_map(len: Option<usize>) -> &'p mut Serializer<'o, B>;
        serialize_struct(name: &'static str, len: usize) -> &'p mut Serializer<'o, B>;
        serialize_struct_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> &'p mut Serializer<'o, B>;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.packed.end_run();
        ser::Serializer::serialize_some(&mut *self.packed.ser, value)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.packed.end_run();
        ser::Serializer::serialize_newtype_struct(&mut *self.packed.ser, name, value)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.packed.end_run();
        ser::Serializer::serialize_newtype_variant(
            &mut *self.packed.ser,
            name,
            index,
            variant,
            value,
        )
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Structures, tuple structs and the arms of unions: the fields in order, nothing around them.
macro_rules! fields_in_order {
    ($($trait:ident),*) => {
        $(
            impl<B: BufMut + ?Sized> ser::$trait for &mut Serializer<'_, B> {
                type Ok = ();
                type Error = Error;

                #[inline]
                fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
                    value.serialize(&mut **self)
                }

                fn end(self) -> Result<(), Error> {
                    Ok(())
                }
            }
        )*
    };
}
fields_in_order!(SerializeTupleStruct, SerializeTupleVariant);

/// Named fields: the names are not written, so a skipped field would shift every field after
/// it and is refused.
macro_rules! named_fields_in_order {
    ($($trait:ident),*) => {
        $(
            impl<B: BufMut + ?Sized> ser::$trait for &mut Serializer<'_, B> {
                type Ok = ();
                type Error = Error;

                #[inline]
                fn serialize_field<T: Serialize + ?Sized>(
                    &mut self,
                    _: &'static str,
                    value: &T,
                ) -> Result<(), Error> {
                    value.serialize(&mut **self)
                }

                fn skip_field(&mut self, key: &'static str) -> Result<(), Error> {
                    Err(Error::from(ErrorKind::SkippedField(key)))
                }

                fn end(self) -> Result<(), Error> {
                    Ok(())
                }
            }
        )*
    };
}
named_fields_in_order!(SerializeStruct, SerializeStructVariant);

impl<B: BufMut + ?Sized> ser::SerializeMap for &mut Serializer<'_, B> {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(&mut **self)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut **self)
    }

    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}
