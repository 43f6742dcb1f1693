//! Feeds arbitrary bytes to `from_slice` for a nested type: any panic, overflow or abort is a
//! finding. Decoded values must re-encode and decode to themselves.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Node {
    Unit,
    Int(i64),
    Uint(u128),
    Float(f32),
    Text(String),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    List(Vec<Node>),
    Map(BTreeMap<String, Node>),
    Pair(Box<Node>, Box<Node>),
    Record { id: u32, child: Option<Box<Node>>, tags: [u8; 2] },
}

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = courier_cbor::from_slice::<Node>(data) {
        let again = courier_cbor::to_vec(&node).expect("a decoded value encodes");
        let back = courier_cbor::from_slice::<Node>(&again).expect("its encoding decodes");
        // NaN never equals itself; compare encodings instead of values.
        assert_eq!(courier_cbor::to_vec(&back).expect("encodes"), again);
    }
    let _ = courier_cbor::from_slice::<(u8, String, Vec<u64>)>(data);
});
