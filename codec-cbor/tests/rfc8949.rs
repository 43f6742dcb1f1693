//! Valid CBOR from other encoders decodes: the examples of RFC 8949 Appendix A that map onto
//! serde types, in definite and indefinite form; plus round trips of generated nested values.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use courier_cbor::{from_slice, to_vec, Error};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[track_caller]
fn decodes<T: DeserializeOwned + PartialEq + Debug>(input: &str, expected: T) {
    assert_eq!(from_slice::<T>(&hex(input)).unwrap(), expected, "{input}");
}

#[test]
fn appendix_a_integers() {
    decodes("00", 0u64);
    decodes("01", 1u8);
    decodes("0a", 10u8);
    decodes("17", 23u8);
    decodes("1818", 24u8);
    decodes("1819", 25u8);
    decodes("1864", 100u8);
    decodes("1903e8", 1000u16);
    decodes("1a000f4240", 1_000_000u32);
    decodes("1b000000e8d4a51000", 1_000_000_000_000u64);
    decodes("1bffffffffffffffff", u64::MAX);
    decodes("c249010000000000000000", 18_446_744_073_709_551_616u128);
    decodes("3bffffffffffffffff", -18_446_744_073_709_551_616i128);
    decodes("c349010000000000000000", -18_446_744_073_709_551_617i128);
    decodes("20", -1i8);
    decodes("29", -10i8);
    decodes("3863", -100i8);
    decodes("3903e7", -1000i16);
}

#[test]
fn appendix_a_floats() {
    decodes("f90000", 0.0f64);
    assert!(from_slice::<f64>(&hex("f98000"))
        .unwrap()
        .is_sign_negative());
    decodes("f93c00", 1.0f64);
    decodes("fb3ff199999999999a", 1.1f64);
    decodes("f93e00", 1.5f64);
    decodes("f97bff", 65504.0f64);
    decodes("fa47c35000", 100_000.0f64);
    decodes("fa7f7fffff", 3.402_823_466_385_288_6e38_f64);
    decodes("fb7e37e43c8800759c", 1.0e300f64);
    decodes("f90001", 5.960_464_477_539_063e-8_f64);
    decodes("f90400", 0.000_061_035_156_25f64);
    decodes("f9c400", -4.0f64);
    decodes("fbc010666666666666", -4.1f64);
    for inf in ["f97c00", "fa7f800000", "fb7ff0000000000000"] {
        decodes(inf, f64::INFINITY);
    }
    for ninf in ["f9fc00", "faff800000", "fbfff0000000000000"] {
        decodes(ninf, f64::NEG_INFINITY);
    }
    for nan in ["f97e00", "fa7fc00000", "fb7ff8000000000000"] {
        assert!(from_slice::<f64>(&hex(nan)).unwrap().is_nan());
    }
}

#[test]
fn appendix_a_simple_values_and_strings() {
    decodes("f4", false);
    decodes("f5", true);
    decodes("f6", None::<u8>);
    decodes("f7", None::<u8>);
    decodes("40", ByteBuf::from(vec![]));
    decodes("4401020304", ByteBuf::from(vec![1, 2, 3, 4]));
    decodes("60", String::new());
    decodes("6161", "a".to_owned());
    decodes("6449455446", "IETF".to_owned());
    decodes("62225c", "\"\\".to_owned());
    decodes("62c3bc", "\u{00fc}".to_owned());
    decodes("63e6b0b4", "\u{6c34}".to_owned());
    decodes("64f0908591", "\u{10151}".to_owned());
    decodes("5f42010243030405ff", ByteBuf::from(vec![1, 2, 3, 4, 5]));
    decodes("7f657374726561646d696e67ff", "streaming".to_owned());
}

#[test]
fn appendix_a_arrays_and_maps() {
    decodes("80", Vec::<u8>::new());
    decodes("83010203", vec![1u8, 2, 3]);
    decodes("8301820203820405", (1u8, vec![2u8, 3], vec![4u8, 5]));
    let one_to_25: Vec<u8> = (1..=25).collect();
    decodes(
        "98190102030405060708090a0b0c0d0e0f101112131415161718181819",
        one_to_25.clone(),
    );
    decodes("a0", BTreeMap::<u8, u8>::new());
    decodes("a201020304", BTreeMap::from([(1u8, 2u8), (3, 4)]));

    #[derive(Debug, PartialEq, Deserialize)]
    struct AB {
        a: u8,
        b: Vec<u8>,
    }
    decodes(
        "a26161016162820203",
        AB {
            a: 1,
            b: vec![2, 3],
        },
    );
    decodes(
        "826161a161626163",
        (
            "a".to_owned(),
            BTreeMap::from([("b".to_owned(), "c".to_owned())]),
        ),
    );
    decodes(
        "a56161614161626142616361436164614461656145",
        BTreeMap::from(
            [("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
        ),
    );

    // Indefinite lengths.
    decodes("9fff", Vec::<u8>::new());
    for input in [
        "9f018202039f0405ffff",
        "9f01820203820405ff",
        "83018202039f0405ff",
        "83019f0203ff820405",
    ] {
        decodes(input, (1u8, vec![2u8, 3], vec![4u8, 5]));
    }
    decodes(
        "9f0102030405060708090a0b0c0d0e0f101112131415161718181819ff",
        one_to_25,
    );
    decodes(
        "bf61610161629f0203ffff",
        AB {
            a: 1,
            b: vec![2, 3],
        },
    );
    decodes(
        "826161bf61626163ff",
        (
            "a".to_owned(),
            BTreeMap::from([("b".to_owned(), "c".to_owned())]),
        ),
    );
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct FunAmt {
        fun: bool,
        amt: i8,
    }
    decodes("bf6346756ef563416d7421ff", FunAmt { fun: true, amt: -2 });
}

#[test]
fn appendix_a_tagged_items_are_refused_by_policy() {
    for input in [
        "c074323031332d30332d32315432303a30343a30305a",
        "c11a514b67b0",
        "c1fb41d452d9ec200000",
        "d74401020304",
        "d818456449455446",
        "d82076687474703a2f2f7777772e6578616d706c652e636f6d",
    ] {
        assert!(
            matches!(from_slice::<String>(&hex(input)), Err(Error::Tag { .. })),
            "{input}"
        );
    }
}

/// A nested value exercising every kind of serde data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Node {
    Unit,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    List(Vec<Node>),
    Map(BTreeMap<String, Node>),
    Pair(Box<Node>, Box<Node>),
    Record {
        id: u32,
        label: Option<String>,
        child: Option<Box<Node>>,
    },
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        Just(Node::Unit),
        any::<bool>().prop_map(Node::Bool),
        any::<i64>().prop_map(Node::Int),
        any::<u64>().prop_map(Node::Uint),
        any::<f64>()
            .prop_filter("NaN never equals itself", |f| !f.is_nan())
            .prop_map(Node::Float),
        ".{0,12}".prop_map(Node::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Node::Bytes),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Node::List),
            prop::collection::btree_map(".{0,6}", inner.clone(), 0..6).prop_map(Node::Map),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Node::Pair(Box::new(a), Box::new(b))),
            (
                any::<u32>(),
                prop::option::of(".{0,8}"),
                prop::option::of(inner)
            )
                .prop_map(|(id, label, child)| Node::Record {
                    id,
                    label,
                    child: child.map(Box::new),
                }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nested_values_round_trip(value in node()) {
        let bytes = to_vec(&value).unwrap();
        prop_assert_eq!(from_slice::<Node>(&bytes).unwrap(), value);
    }

    #[test]
    fn primitives_round_trip(
        a in any::<(u8, i16, u32, i64, u128, i128)>(),
        b in any::<(f32, char, String, Option<u16>, bool)>(),
    ) {
        prop_assume!(!b.0.is_nan());
        prop_assert_eq!(from_slice::<(u8, i16, u32, i64, u128, i128)>(&to_vec(&a).unwrap()).unwrap(), a);
        let back = from_slice::<(f32, char, String, Option<u16>, bool)>(&to_vec(&b).unwrap()).unwrap();
        prop_assert_eq!(back, b);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = from_slice::<Node>(&bytes);
        let _ = from_slice::<(u8, String, Vec<u64>)>(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic(value in node(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = to_vec(&value).unwrap();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = from_slice::<Node>(&bytes);
    }
}
