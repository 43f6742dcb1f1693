//! Encode and decode of the shared payloads, per codec.
//!
//! ```text
//! cargo bench -p courier-benches --bench codec
//! ```

use std::hint::black_box;

use courier::Codec;
use courier_benches::payloads::{self, Small};
use courier_cbor::Cbor;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde::{de::DeserializeOwned, Serialize};

fn bench_codec<C: Codec>(c: &mut Criterion, codec: C) {
    fn one<C: Codec, T: Serialize + DeserializeOwned>(
        c: &mut Criterion,
        codec: &C,
        name: &str,
        value: &T,
    ) {
        let mut encoded = Vec::new();
        codec.encode(value, &mut encoded).expect("encodes");
        let mut group = c.benchmark_group(format!("{}/{name}", C::NAME));
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        let mut buf = Vec::with_capacity(encoded.len());
        group.bench_function("encode", |b| {
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(value), &mut buf).expect("encodes");
                black_box(&buf);
            })
        });
        group.bench_function("decode", |b| {
            b.iter(|| black_box(codec.decode::<T>(black_box(&encoded)).expect("decodes")))
        });
        group.finish();
    }
    one::<C, Small>(c, &codec, "small_struct", &payloads::small());
    one(c, &codec, "bytes_64k", &payloads::blob());
    one(c, &codec, "vec_u32_10k", &payloads::numbers());
}

fn cbor(c: &mut Criterion) {
    bench_codec(c, Cbor::default());
}

criterion_group!(benches, cbor);
criterion_main!(benches);
