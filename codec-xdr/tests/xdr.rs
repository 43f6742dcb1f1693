//! RFC 4506 worked examples as exact bytes, the mapping table, strict decoding and round trips.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use courier_xdr::{Bounded, ErrorKind, Xdr, DEFAULT_MAX_DEPTH};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// The crate's functions, with the error unboxed so tests can match on what went wrong.
fn from_slice<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ErrorKind> {
    courier_xdr::from_slice(bytes).map_err(courier_xdr::Error::into_kind)
}

fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ErrorKind> {
    courier_xdr::to_vec(value).map_err(courier_xdr::Error::into_kind)
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

// RFC 4506 §7: the file-format example.
const MAXUSERNAME: usize = 32;
const MAXFILELEN: usize = 65535;
const MAXNAMELEN: usize = 255;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum FileType {
    Text,
    Data {
        creator: Bounded<String, MAXNAMELEN>,
    },
    Exec {
        interpretor: Bounded<String, MAXNAMELEN>,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct File {
    filename: Bounded<String, MAXNAMELEN>,
    kind: FileType,
    owner: Bounded<String, MAXUSERNAME>,
    data: Bounded<Vec<u8>, MAXFILELEN>,
}

#[test]
fn rfc4506_section_7_file_example() {
    let file = File {
        filename: Bounded::new("sillyprog".into()).unwrap(),
        kind: FileType::Exec {
            interpretor: Bounded::new("lisp".into()).unwrap(),
        },
        owner: Bounded::new("john".into()).unwrap(),
        data: Bounded::new(b"(quit)".to_vec()).unwrap(),
    };
    // The byte table of RFC 4506 §7, line by line.
    let expected = hex("00000009 73696c6c 7970726f 67000000
         00000002 00000004 6c697370
         00000004 6a6f686e
         00000006 28717569 74290000");
    assert_eq!(to_vec(&file).unwrap(), expected);
    assert_eq!(from_slice::<File>(&expected).unwrap(), file);
}

/// RFC 4506 §4.19: `struct *stringlist { string item<>; stringlist next; };`
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StringEntry {
    item: String,
    next: Option<Box<StringEntry>>,
}

#[test]
fn rfc4506_section_4_19_linked_list() {
    let list = Some(Box::new(StringEntry {
        item: "abc".into(),
        next: Some(Box::new(StringEntry {
            item: "de".into(),
            next: None,
        })),
    }));
    let expected = hex("00000001 00000003 61626300
         00000001 00000002 64650000
         00000000");
    assert_eq!(to_vec(&list).unwrap(), expected);
    assert_eq!(
        from_slice::<Option<Box<StringEntry>>>(&expected).unwrap(),
        list
    );
}

#[test]
fn long_lists_hit_the_depth_limit_without_overflowing_the_stack() {
    // Built by hand: encoding (or dropping) a 100,000-deep Box chain would itself recurse.
    fn list(nodes: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..nodes {
            bytes.extend_from_slice(&hex("00000001 00000001 78000000"));
        }
        bytes.extend_from_slice(&hex("00000000"));
        bytes
    }
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            for nodes in [10_000, 100_000] {
                assert!(matches!(
                    from_slice::<Option<Box<StringEntry>>>(&list(nodes)),
                    Err(ErrorKind::DepthLimit {
                        limit: DEFAULT_MAX_DEPTH,
                        ..
                    })
                ));
            }
            // Two levels a node (the option and the struct): this many fit the default.
            let fits = DEFAULT_MAX_DEPTH / 2;
            let mut node = from_slice::<Option<Box<StringEntry>>>(&list(fits)).unwrap();
            let mut seen = 0;
            while let Some(entry) = node {
                seen += 1;
                node = entry.next;
            }
            assert_eq!(seen, fits);
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(matches!(
        Xdr::default()
            .max_depth(4)
            .from_slice::<Option<Box<StringEntry>>>(&list(3))
            .map_err(courier_xdr::Error::into_kind),
        Err(ErrorKind::DepthLimit { limit: 4, .. })
    ));
}

#[test]
fn the_mapping_table_row_by_row() {
    assert_eq!(to_vec(&true).unwrap(), hex("00000001"));
    assert_eq!(to_vec(&-1i8).unwrap(), hex("ffffffff"));
    assert_eq!(to_vec(&-2i16).unwrap(), hex("fffffffe"));
    assert_eq!(to_vec(&7u8).unwrap(), hex("00000007"));
    assert_eq!(to_vec(&65535u16).unwrap(), hex("0000ffff"));
    assert_eq!(to_vec(&-3i64).unwrap(), hex("ffffffff fffffffd"));
    assert_eq!(to_vec(&u64::MAX).unwrap(), hex("ffffffff ffffffff"));
    assert_eq!(to_vec(&1.5f32).unwrap(), hex("3fc00000"));
    assert_eq!(to_vec(&1.5f64).unwrap(), hex("3ff80000 00000000"));
    assert_eq!(to_vec(&'é').unwrap(), hex("000000e9"));
    assert_eq!(to_vec("hello").unwrap(), hex("00000005 68656c6c 6f000000"));
    assert_eq!(
        to_vec(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap(),
        hex("00000003 01020300")
    );
    assert_eq!(to_vec(&vec![1u8, 2, 3]).unwrap(), hex("00000003 01020300"));
    assert_eq!(
        to_vec(&[1u8, 2, 3, 4, 5]).unwrap(),
        hex("01020304 05000000")
    );
    assert_eq!(
        to_vec(&vec![1u32, 2]).unwrap(),
        hex("00000002 00000001 00000002")
    );
    assert_eq!(to_vec(&[1u32, 2]).unwrap(), hex("00000001 00000002"));
    assert_eq!(to_vec(&(1u8, 2u32)).unwrap(), hex("01000000 00000002"));
    assert_eq!(to_vec(&()).unwrap(), hex(""));
    assert_eq!(to_vec(&None::<u32>).unwrap(), hex("00000000"));
    assert_eq!(to_vec(&Some(9u32)).unwrap(), hex("00000001 00000009"));
    assert_eq!(
        to_vec(&BTreeMap::from([(1u32, true)])).unwrap(),
        hex("00000001 00000001 00000001")
    );

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rgb(u8, u8, u8);
    assert_eq!(
        to_vec(&Rgb(1, 2, 3)).unwrap(),
        hex("00000001 00000002 00000003")
    );
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(u32);
    assert_eq!(to_vec(&Meters(5)).unwrap(), hex("00000005"));
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(u32),
        Rect(u32, u32),
        Named { id: u32 },
    }
    assert_eq!(to_vec(&Shape::Dot).unwrap(), hex("00000000"));
    assert_eq!(to_vec(&Shape::Circle(2)).unwrap(), hex("00000001 00000002"));
    assert_eq!(
        to_vec(&Shape::Rect(3, 4)).unwrap(),
        hex("00000002 00000003 00000004")
    );
    assert_eq!(
        to_vec(&Shape::Named { id: 5 }).unwrap(),
        hex("00000003 00000005")
    );
    for shape in [
        Shape::Dot,
        Shape::Circle(2),
        Shape::Rect(3, 4),
        Shape::Named { id: 5 },
    ] {
        assert_eq!(
            from_slice::<Shape>(&to_vec(&shape).unwrap()).unwrap(),
            shape
        );
    }
}

#[test]
fn types_xdr_cannot_carry_are_clear_errors() {
    assert!(matches!(to_vec(&1i128), Err(ErrorKind::Unsupported(_))));
    assert!(matches!(to_vec(&1u128), Err(ErrorKind::Unsupported(_))));
    assert!(matches!(
        from_slice::<u128>(&hex("00000000 00000000 00000000 00000001")),
        Err(ErrorKind::Unsupported(_))
    ));
    #[derive(Serialize)]
    struct Skips {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u32>,
    }
    assert!(matches!(
        to_vec(&Skips { a: None }),
        Err(ErrorKind::SkippedField("a"))
    ));
    #[derive(Debug, Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Any {
        N(u32),
    }
    assert!(matches!(
        from_slice::<Any>(&hex("00000001")),
        Err(ErrorKind::Unsupported(_))
    ));
}

#[test]
fn decoding_borrows_strings_and_opaque_data() {
    #[derive(Deserialize)]
    struct Borrowed<'a> {
        name: &'a str,
        #[serde(with = "serde_bytes")]
        blob: &'a [u8],
    }
    let blob = vec![7u8; 64 * 1024];
    let bytes = to_vec(&("courier", serde_bytes::Bytes::new(&blob))).unwrap();
    let decoded: Borrowed = from_slice(&bytes).unwrap();
    let range = bytes.as_ptr_range();
    assert!(range.contains(&decoded.name.as_ptr()));
    assert!(range.contains(&decoded.blob.as_ptr()));
    assert_eq!(decoded.name, "courier");
    assert_eq!(decoded.blob, &blob[..]);
}

#[test]
fn strict_decoding() {
    // Padding must be zero.
    assert!(matches!(
        from_slice::<String>(&hex("00000001 61000100")),
        Err(ErrorKind::NonZeroPadding { offset: 5 })
    ));
    assert!(matches!(
        from_slice::<[u8; 3]>(&hex("01020301")),
        Err(ErrorKind::NonZeroPadding { .. })
    ));
    // A boolean is 0 or 1.
    assert!(matches!(
        from_slice::<bool>(&hex("00000002")),
        Err(ErrorKind::InvalidBool { value: 2, .. })
    ));
    assert!(matches!(
        from_slice::<Option<u32>>(&hex("00000005 00000001")),
        Err(ErrorKind::InvalidBool { .. })
    ));
    // A discriminant names a variant.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Two {
        A,
        B(u32),
    }
    assert!(matches!(
        from_slice::<Two>(&hex("00000002")),
        Err(ErrorKind::InvalidDiscriminant {
            value: 2,
            variants: 2,
            ..
        })
    ));
    // A 12-byte message declaring 0xFFFFFFFF elements fails at once.
    assert!(matches!(
        from_slice::<Vec<u64>>(&hex("ffffffff 00000000 00000000")),
        Err(ErrorKind::LengthBeyondInput {
            declared: 0xffff_ffff,
            available: 8,
            ..
        })
    ));
    assert!(matches!(
        from_slice::<String>(&hex("7fffffff")),
        Err(ErrorKind::LengthBeyondInput { .. })
    ));
    // Invalid UTF-8.
    assert!(matches!(
        from_slice::<String>(&hex("00000002 c3280000")),
        Err(ErrorKind::InvalidUtf8 { .. })
    ));
    // Bytes left over.
    assert!(matches!(
        from_slice::<u32>(&hex("00000001 00000002")),
        Err(ErrorKind::TrailingBytes {
            offset: 4,
            count: 4
        })
    ));
    // Narrow integers are range-checked; chars must be scalar values.
    assert!(matches!(
        from_slice::<u8>(&hex("00000100")),
        Err(ErrorKind::IntegerOutOfRange { value: 256, .. })
    ));
    assert!(matches!(
        from_slice::<i8>(&hex("ffffff7f")),
        Err(ErrorKind::IntegerOutOfRange { value: -129, .. })
    ));
    assert!(matches!(
        from_slice::<char>(&hex("0000d800")),
        Err(ErrorKind::InvalidChar { .. })
    ));
    // Truncation at every offset of a valid message.
    let message = to_vec(&(7u64, "abcde", vec![1u16, 2], Some(true))).unwrap();
    for cut in 0..message.len() {
        assert!(
            from_slice::<(u64, String, Vec<u16>, Option<bool>)>(&message[..cut]).is_err(),
            "{cut}"
        );
    }
}

#[test]
fn bounded_forms_enforce_their_maximum() {
    let ok: Bounded<Vec<u32>, 2> = Bounded::new(vec![1, 2]).unwrap();
    let bytes = to_vec(&ok).unwrap();
    assert_eq!(bytes, hex("00000002 00000001 00000002"));
    assert_eq!(from_slice::<Bounded<Vec<u32>, 2>>(&bytes).unwrap(), ok);
    assert!(from_slice::<Bounded<Vec<u32>, 1>>(&bytes).is_err());
    assert!(matches!(
        Bounded::<&str, 2>::new("abc").map_err(courier_xdr::Error::into_kind),
        Err(ErrorKind::BoundExceeded { len: 3, max: 2 })
    ));
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Node {
    Unit,
    Flag(bool),
    Small(i8, u16),
    Int(i64),
    Uint(u64),
    Float(f64),
    Char(char),
    Text(String),
    Bytes(Vec<u8>),
    Fixed([u8; 3]),
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
        any::<bool>().prop_map(Node::Flag),
        any::<(i8, u16)>().prop_map(|(a, b)| Node::Small(a, b)),
        any::<i64>().prop_map(Node::Int),
        any::<u64>().prop_map(Node::Uint),
        any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Node::Float),
        any::<char>().prop_map(Node::Char),
        ".{0,12}".prop_map(Node::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Node::Bytes),
        any::<[u8; 3]>().prop_map(Node::Fixed),
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
                    child: child.map(Box::new)
                }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn nested_values_round_trip(value in node()) {
        let bytes = to_vec(&value).unwrap();
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(from_slice::<Node>(&bytes).unwrap(), value);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = from_slice::<Node>(&bytes);
        let _ = from_slice::<(u8, String, Vec<u64>)>(&bytes);
    }
}
