//! Identifiers that name services and methods on the wire.
//!
//! Both are derived from names by default, with [`stable_id`], so they survive reordering and
//! recompilation; `#[courier::service(id = …)]` and `#[courier(id = …)]` override them.

use std::fmt;

/// Identifies a service (an interface) on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceId(u32);

/// Identifies a method within its interface.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodId(u32);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            /// Wraps a raw id.
            #[inline]
            pub const fn new(raw: u32) -> Self {
                Self(raw)
            }

            /// The raw id.
            #[inline]
            pub const fn get(self) -> u32 {
                self.0
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#010x})", stringify!($t), self.0)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#010x}", self.0)
            }
        }
    };
}
id_impls!(InterfaceId);
id_impls!(MethodId);

/// The stable 32-bit id of a name: FNV-1a.
///
/// This is what `#[courier::service]` uses for interface ids (the trait's path, as
/// `module_path!()` and `::` and the trait's name: `my_api::calc::Calc`) and method ids
/// (the method's name), so a peer written by hand can compute them too.
///
/// ```
/// assert_eq!(courier_proto::ids::stable_id("foobar"), 0xbf9c_f968);
/// assert_ne!(courier_proto::ids::stable_id("add"), courier_proto::ids::stable_id("sub"));
/// ```
pub const fn stable_id(name: &str) -> u32 {
    let bytes = name.as_bytes();
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

/// Describes one method of a service, as the generated code declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodDesc {
    /// The service's name: its trait's path, such as `my_api::calc::Calc`.
    pub service: &'static str,
    /// The method's name.
    pub name: &'static str,
    /// The service's interface id.
    pub interface: InterfaceId,
    /// The service's version.
    pub version: u16,
    /// The method's id.
    pub method: MethodId,
    /// Whether the method is declared `#[idempotent]`: its calls are *at-least-once* (re-sent
    /// after a lost link or a server restart until they have an outcome). Other two-way calls
    /// are *at-most-once*.
    pub idempotent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        // Reference values of 32-bit FNV-1a.
        assert_eq!(stable_id(""), 0x811c_9dc5);
        assert_eq!(stable_id("a"), 0xe40c_292c);
        assert_eq!(stable_id("foobar"), 0xbf9c_f968);
    }
}
