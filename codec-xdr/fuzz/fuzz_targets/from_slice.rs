//! Feeds arbitrary bytes to `from_slice` for a nested type, owned and borrowed: any panic,
//! overflow or abort is a finding. A decoded value must re-encode and decode back to the same
//! encoding (maps may arrive unsorted, so the input bytes themselves need not come back).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Node {
    Unit,
    Flag(bool),
    Small(i8, u16),
    Int(i64),
    Float(f32),
    Char(char),
    Text(String),
    Bytes(Vec<u8>),
    Fixed([u8; 3]),
    List(Vec<Node>),
    Map(BTreeMap<String, Node>),
    Pair(Box<Node>, Box<Node>),
    Record { id: u32, child: Option<Box<Node>> },
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
struct Borrowed<'a> {
    name: &'a str,
    #[serde(with = "serde_bytes")]
    blob: &'a [u8],
    next: Option<Box<Borrowed<'a>>>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = courier_xdr::from_slice::<Node>(data) {
        let again = courier_xdr::to_vec(&node).expect("a decoded value encodes");
        let back: Node = courier_xdr::from_slice(&again).expect("its encoding decodes");
        // Compare encodings, not values: NaN never equals itself.
        assert_eq!(courier_xdr::to_vec(&back).expect("encodes"), again);
    }
    let _ = courier_xdr::from_slice::<Borrowed>(data);
});
