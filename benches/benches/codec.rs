//! Encode and decode of the shared payloads, per codec, with bincode beside them as a
//! reference measured in the same run.
//!
//! ```text
//! cargo bench -p courier-benches --bench codec
//! ```

use std::hint::black_box;

use courier::Codec;
use courier_benches::payloads::{self, Small};
use courier_cbor::Cbor;
use courier_xdr::Xdr;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{de::DeserializeOwned, Serialize};

/// Encode and decode of one payload with one codec: `encode` and `decode` take the same two
/// functions whatever the codec, so bincode runs through the very same loop.
fn pair<T: Serialize + DeserializeOwned>(
    c: &mut Criterion,
    group: &str,
    value: &T,
    encode: impl Fn(&T, &mut Vec<u8>),
    decode: impl Fn(&[u8]) -> T,
) {
    let mut encoded = Vec::new();
    encode(value, &mut encoded);
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    let mut buf = Vec::with_capacity(encoded.len());
    g.bench_function("encode", |b| {
        b.iter(|| {
            buf.clear();
            encode(black_box(value), &mut buf);
            black_box(&buf);
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| black_box(decode(black_box(&encoded))))
    });
    g.finish();
}

fn with_codec<C: Codec, T: Serialize + DeserializeOwned>(
    c: &mut Criterion,
    codec: &C,
    name: &str,
    value: &T,
) {
    pair(
        c,
        &format!("{}/{name}", C::NAME),
        value,
        |v, out| codec.encode(v, out).expect("encodes"),
        |bytes| codec.decode(bytes).expect("decodes"),
    );
}

fn with_bincode<T: Serialize + DeserializeOwned>(c: &mut Criterion, name: &str, value: &T) {
    pair(
        c,
        &format!("bincode/{name}"),
        value,
        |v, out| bincode::serialize_into(out, v).expect("encodes"),
        |bytes| bincode::deserialize(bytes).expect("decodes"),
    );
}

fn codecs(c: &mut Criterion) {
    let small = payloads::small();
    let blob = payloads::blob();
    let numbers = payloads::numbers();
    for codec in ["cbor", "xdr", "bincode"] {
        match codec {
            "cbor" => {
                let cbor = Cbor::default();
                with_codec::<_, Small>(c, &cbor, "small_struct", &small);
                with_codec(c, &cbor, "bytes_64k", &blob);
                with_codec(c, &cbor, "vec_u32_10k", &numbers);
            }
            "xdr" => {
                let xdr = Xdr::default();
                with_codec::<_, Small>(c, &xdr, "small_struct", &small);
                with_codec(c, &xdr, "bytes_64k", &blob);
                with_codec(c, &xdr, "vec_u32_10k", &numbers);
            }
            _ => {
                with_bincode::<Small>(c, "small_struct", &small);
                with_bincode(c, "bytes_64k", &blob);
                with_bincode(c, "vec_u32_10k", &numbers);
            }
        }
    }
}

/// Decoding opaque data borrowed: the cost must not grow with the size.
fn borrowed(c: &mut Criterion) {
    let mut g = c.benchmark_group("xdr/opaque_borrowed");
    for size in [64 * 1024usize, 1024 * 1024] {
        let bytes =
            courier_xdr::to_vec(&serde_bytes::Bytes::new(&vec![7u8; size])).expect("encodes");
        g.bench_function(format!("decode_{}k", size / 1024), |b| {
            b.iter(|| {
                let view: &serde_bytes::Bytes =
                    courier_xdr::from_slice(black_box(&bytes)).expect("decodes");
                black_box(view.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codecs, borrowed);
criterion_main!(benches);
