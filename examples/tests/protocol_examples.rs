//! The ids and payloads that PROTOCOL.md §4 and §5 show for the examples' `Kv` service are the
//! ones this code uses: an implementer in another language copies them from there.
#![allow(clippy::unwrap_used)]

use courier::{Codec, InterfaceId, MethodId};
use courier_cbor::Cbor;
use courier_examples::KvClient;
use courier_xdr::Xdr;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn protocol() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md")).unwrap()
}

#[test]
fn the_kv_ids_are_the_documented_ones() {
    let get = KvClient::<Cbor>::GET;
    let put = KvClient::<Cbor>::PUT;
    assert_eq!(get.interface, InterfaceId::new(0x7179_af03));
    assert_eq!(
        get.interface,
        InterfaceId::new(courier::ids::stable_id("courier_examples::Kv"))
    );
    assert_eq!(get.method, MethodId::new(0x540c_a757));
    assert_eq!(put.method, MethodId::new(0x6972_99ee));
    let doc = protocol();
    for shown in [
        "`courier_examples::Kv`",
        "`0x7179af03`",
        "`0x540ca757`",
        "`0x697299ee`",
    ] {
        assert!(doc.contains(shown), "PROTOCOL.md shows {shown}");
    }
}

#[test]
fn the_kv_payloads_are_the_documented_ones() {
    let args = ("a".to_owned(),);
    let reply = Some("1".to_owned());
    let cbor = Cbor::default();
    let xdr = Xdr::default();
    let mut out = Vec::new();
    cbor.encode(&args, &mut out).unwrap();
    assert_eq!(hex(&out), "816161");
    out.clear();
    cbor.encode(&reply, &mut out).unwrap();
    assert_eq!(hex(&out), "6131");
    out.clear();
    xdr.encode(&args, &mut out).unwrap();
    assert_eq!(hex(&out), "0000000161000000");
    out.clear();
    xdr.encode(&reply, &mut out).unwrap();
    assert_eq!(hex(&out), "000000010000000131000000");
    let doc = protocol();
    for shown in [
        "`81 61 61`",
        "`00000001 61000000`",
        "`61 31`",
        "`00000001 00000001 31000000`",
    ] {
        assert!(doc.contains(shown), "PROTOCOL.md shows {shown}");
    }
}
