//! Hostile and malformed input: every rule of the crate docs, each with a test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};

use courier_cbor::{from_slice, to_vec, Cbor, Error, DEFAULT_MAX_DEPTH};
use serde::{Deserialize, Serialize};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_error(e: Result<impl std::fmt::Debug, Error>) -> String {
    match e {
        Err(Error::Decode(m)) => m,
        other => panic!("expected a Decode error, got {other:?}"),
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    assert_eq!(from_slice::<u8>(&hex("01")).unwrap(), 1);
    assert_eq!(
        from_slice::<u8>(&hex("0102")),
        Err(Error::TrailingBytes {
            offset: 1,
            count: 1
        })
    );
    assert!(matches!(
        from_slice::<Vec<u8>>(&hex("820102 00")),
        Err(Error::TrailingBytes { .. })
    ));
}

#[test]
fn tuples_and_arrays_of_the_wrong_length_are_errors() {
    // Exactly right, definite and indefinite.
    assert_eq!(from_slice::<(u8, u8)>(&hex("820102")).unwrap(), (1, 2));
    assert_eq!(from_slice::<(u8, u8)>(&hex("9f0102ff")).unwrap(), (1, 2));
    assert_eq!(from_slice::<[u8; 3]>(&hex("83010203")).unwrap(), [1, 2, 3]);

    // Too many items.
    for input in ["83010203", "9f010203ff"] {
        let m = decode_error(from_slice::<(u8, u8)>(&hex(input)));
        assert!(m.contains("more items"), "{input}: {m}");
        let m = decode_error(from_slice::<[u8; 2]>(&hex(input)));
        assert!(m.contains("more items"), "{input}: {m}");
    }
    // Too few items.
    for input in ["8101", "9f01ff"] {
        decode_error(from_slice::<(u8, u8)>(&hex(input)));
        decode_error(from_slice::<[u8; 2]>(&hex(input)));
    }
    // Tuple structs and tuple variants too.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Pair(u8, u8);
    decode_error(from_slice::<Pair>(&hex("83010203")));
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum E {
        T(u8, u8),
    }
    let m = decode_error(from_slice::<E>(&hex("a1 6154 83010203")));
    assert!(m.contains("more items"), "{m}");
}

#[test]
fn items_left_unread_inside_a_value_are_an_error() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct S {
        a: (u8, u8),
    }
    // {_ "a": [1, 2, 3, 4], "x": 5}. Read without checks, `a` takes 1 and 2 and leaves 3 and 4,
    // which the map then misreads as an entry 3: 4; "x": 5 is ignored as an unknown field and
    // the break ends the map: the value would "decode" with two items silently dropped.
    let input = hex("bf 6161 8401020304 6178 05 ff");
    let m = decode_error(from_slice::<S>(&input));
    assert!(m.contains("more items"), "{m}");
}

#[test]
fn nesting_beyond_the_limit_fails_without_overflowing_the_stack() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Leaf(u8),
        List(Vec<Tree>),
    }
    // Run on a thread with a 2 MiB stack, the default for spawned threads, to show the
    // limit protects an ordinary thread.
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            for depth in [10_000usize, 100_000] {
                let mut deep = vec![0x81u8; depth];
                deep.push(0x00);
                assert!(matches!(
                    from_slice::<Vec<u8>>(&deep),
                    Err(Error::DepthLimit {
                        limit: DEFAULT_MAX_DEPTH,
                        ..
                    })
                ));
                // Indefinite-length arrays and maps nest the same way.
                let mut deep = vec![0x9fu8; depth];
                deep.extend(std::iter::repeat_n(0xffu8, depth));
                assert!(matches!(
                    from_slice::<Tree>(&deep),
                    Err(Error::DepthLimit { .. })
                ));
                let mut deep = Vec::new();
                for _ in 0..depth {
                    deep.extend_from_slice(&[0xa1, 0x00]);
                }
                deep.push(0x00);
                assert!(matches!(
                    from_slice::<BTreeMap<u8, u8>>(&deep),
                    Err(Error::DepthLimit { .. })
                ));
            }
            // At the limit itself, a nested value decodes on the same small stack:
            // {"List": [ {"List": [ … {"Leaf": 7} … ]} ]}, each level a map and an array.
            let levels = DEFAULT_MAX_DEPTH / 2 - 1;
            let mut input = Vec::new();
            for _ in 0..levels {
                input.extend_from_slice(&hex("a1 644c697374 81"));
            }
            input.extend_from_slice(&hex("a1 644c656166 07"));
            let mut tree = from_slice::<Tree>(&input).unwrap();
            let mut seen = 0;
            while let Tree::List(mut inner) = tree {
                seen += 1;
                tree = inner.pop().unwrap();
            }
            assert_eq!(seen, levels);
            assert!(matches!(tree, Tree::Leaf(7)));
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn the_depth_limit_is_configurable() {
    let input = hex("81 81 81 00");
    let shallow = Cbor::default().max_depth(2);
    assert!(matches!(
        shallow.from_slice::<Vec<Vec<Vec<u8>>>>(&input),
        Err(Error::DepthLimit { limit: 2, .. })
    ));
    assert_eq!(
        Cbor::default()
            .max_depth(3)
            .from_slice::<Vec<Vec<Vec<u8>>>>(&input)
            .unwrap(),
        vec![vec![vec![0]]]
    );
}

#[test]
fn declared_lengths_beyond_the_input_fail_without_allocating() {
    // A byte string claiming 2^63 bytes, with none behind it.
    let huge = hex("5b 8000000000000000");
    assert!(matches!(
        from_slice::<serde_bytes::ByteBuf>(&huge),
        Err(Error::LengthBeyondInput {
            declared: 0x8000_0000_0000_0000,
            ..
        })
    ));
    // The same for text, arrays and maps (counts beyond what the bytes could hold).
    for input in [
        "7b ffffffffffffffff",
        "9b 00000000ffffffff 00",
        "bb 4000000000000000 00",
        "5a ffffffff 00",
    ] {
        assert!(
            matches!(
                from_slice::<serde_bytes::ByteBuf>(&hex(input)),
                Err(Error::LengthBeyondInput { .. })
            ),
            "{input}"
        );
    }
    // An indefinite byte string whose chunk lies about its length.
    assert!(matches!(
        from_slice::<serde_bytes::ByteBuf>(&hex("5f 5b ffffffffffffffff ff")),
        Err(Error::LengthBeyondInput { .. })
    ));
}

#[test]
fn malformed_indefinite_length_strings_are_errors() {
    let ok = from_slice::<String>(&hex("7f 657374726561 646d696e67 ff")).unwrap();
    assert_eq!(ok, "streaming");
    for input in [
        "7f 4161 ff",     // a byte-string chunk inside a text string
        "5f 6161 ff",     // a text chunk inside a byte string
        "7f 7f6161ff ff", // an indefinite chunk inside an indefinite string
        "5f 01 ff",       // an integer as a chunk
        "7f 6161",        // no break
        "5f",             // nothing at all
    ] {
        let r = from_slice::<serde_bytes::ByteBuf>(&hex(input));
        assert!(
            matches!(
                r,
                Err(Error::Malformed { .. }) | Err(Error::Truncated { .. })
            ),
            "{input}: {r:?}"
        );
    }
}

#[test]
fn truncation_at_every_offset_is_an_error() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        id: u64,
        name: String,
        tags: Vec<String>,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        ratio: f64,
        nested: BTreeMap<String, (i32, Option<bool>)>,
    }
    let message = Message {
        id: 1 << 40,
        name: "courier".into(),
        tags: vec!["a".into(), "bc".into()],
        blob: vec![9; 30],
        ratio: 0.1,
        nested: [("k".to_owned(), (-5, Some(true)))].into(),
    };
    let bytes = to_vec(&message).unwrap();
    assert_eq!(from_slice::<Message>(&bytes).unwrap(), message);
    for cut in 0..bytes.len() {
        assert!(
            from_slice::<Message>(&bytes[..cut]).is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn invalid_utf8_in_text_is_an_error() {
    assert!(matches!(
        from_slice::<String>(&hex("62 c328")),
        Err(Error::InvalidUtf8 { .. })
    ));
    // In a chunk of an indefinite string, even if the chunks would join into valid text:
    // RFC 8949 §3.2.3 requires every chunk to be valid on its own.
    assert!(matches!(
        from_slice::<String>(&hex("7f 61c3 61bc ff")),
        Err(Error::InvalidUtf8 { .. })
    ));
    // As a map key.
    assert!(matches!(
        from_slice::<HashMap<String, u8>>(&hex("a1 61ff 00")),
        Err(Error::InvalidUtf8 { .. })
    ));
}

#[test]
fn duplicate_map_keys_are_refused() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct S {
        a: u8,
    }
    assert!(matches!(
        from_slice::<S>(&hex("a2 6161 01 6161 02")),
        Err(Error::DuplicateKey { .. })
    ));
    // A map type would otherwise keep the last value silently.
    assert!(matches!(
        from_slice::<HashMap<u8, u8>>(&hex("a2 01 01 01 02")),
        Err(Error::DuplicateKey { .. })
    ));
    assert!(matches!(
        from_slice::<HashMap<u8, u8>>(&hex("bf 01 01 01 02 ff")),
        Err(Error::DuplicateKey { .. })
    ));
    // Nested maps are checked on their own.
    assert!(from_slice::<Vec<HashMap<u8, u8>>>(&hex("82 a1 0101 a1 0101")).is_ok());
}

#[test]
fn tags_are_refused_except_bignums() {
    // 1(1363896240): an epoch-based date. Ignoring the tag would change the value's meaning.
    assert!(matches!(
        from_slice::<u64>(&hex("c1 1a514b67b0")),
        Err(Error::Tag { tag: 1, .. })
    ));
    assert!(matches!(
        from_slice::<String>(&hex(
            "d8 20 76 687474703a2f2f7777772e6578616d706c652e636f6d"
        )),
        Err(Error::Tag { tag: 32, .. })
    ));
    // Bignums are how u128 and i128 beyond 64 bits travel.
    let big = u128::from(u64::MAX) + 1;
    assert_eq!(from_slice::<u128>(&to_vec(&big).unwrap()).unwrap(), big);
    let small = -(i128::from(u64::MAX)) - 2;
    assert_eq!(from_slice::<i128>(&to_vec(&small).unwrap()).unwrap(), small);
    // A bignum tag on anything but a short byte string is refused.
    assert!(matches!(
        from_slice::<u128>(&hex("c2 01")),
        Err(Error::Tag { .. })
    ));
}

#[test]
fn lossy_float_narrowing_is_refused() {
    // 1.1 as a double cannot become an f32 exactly.
    assert!(decode_error(from_slice::<f32>(&hex("fb 3ff199999999999a"))).contains("f32"));
    // 1.5 can, in any width.
    assert_eq!(from_slice::<f32>(&hex("fb 3ff8000000000000")).unwrap(), 1.5);
    assert_eq!(from_slice::<f32>(&hex("f9 3e00")).unwrap(), 1.5);
    assert!(from_slice::<f32>(&hex("fb 7ff8000000000000"))
        .unwrap()
        .is_nan());
    assert_eq!(
        from_slice::<f32>(&hex("fa 7f800000")).unwrap(),
        f32::INFINITY
    );
}

#[test]
fn unknown_simple_values_and_reserved_heads_are_refused() {
    for input in ["f0", "f8 20", "1c", "3e", "ff", "1f"] {
        let r = from_slice::<Option<u8>>(&hex(input));
        assert!(matches!(r, Err(Error::Malformed { .. })), "{input}: {r:?}");
    }
    // `undefined` reads as null.
    assert_eq!(from_slice::<Option<u8>>(&hex("f7")).unwrap(), None);
}

#[test]
fn option_of_unit_does_not_round_trip_as_documented() {
    let bytes = to_vec(&Some(())).unwrap();
    assert_eq!(bytes, hex("f6"));
    assert_eq!(from_slice::<Option<()>>(&bytes).unwrap(), None);
}

#[test]
fn vec_u8_is_an_array_and_serde_bytes_is_a_byte_string() {
    assert_eq!(to_vec(&vec![1u8, 2]).unwrap(), hex("82 01 02"));
    assert_eq!(
        to_vec(&serde_bytes::ByteBuf::from(vec![1u8, 2])).unwrap(),
        hex("42 0102")
    );
}
