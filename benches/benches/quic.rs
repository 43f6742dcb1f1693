//! Courier over QUIC against raw quinn, in the same run, on the same runtime, with the same bytes.
//!
//! ```text
//! cargo bench -p courier-benches --bench quic
//! ```
//!
//! The floor is quinn alone: one bidirectional stream per request, the request written and
//! finished, the reply read to its end. Courier sends the same number of bytes per request (its
//! 32-byte header plus the encoded argument), so the difference is Courier's own work: framing,
//! the call table, dispatch and the codec. Courier runs once per codec.
//!
//! After criterion's figures, the same three measures run again as paired, interleaved
//! comparisons (`courier_benches::paired`), whose ratios one noisy run cannot tilt.

use std::sync::Arc;
use std::time::Duration;

use courier::Codec;
use courier_benches::paired::{self, compare, Ratio};
use courier_benches::quic::{CourierEcho, RawEcho};
use courier_benches::{in_task, quic};
use courier_cbor::Cbor;
use courier_xdr::Xdr;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

const MIB: usize = 1024 * 1024;

fn raw_benches(c: &mut Criterion, rt: &tokio::runtime::Runtime, raw: &Arc<RawEcho>) {
    let null_bytes = quic::courier_request_len(&[]);
    let mib_bytes = quic::courier_request_len(&vec![0x5a; MIB]);
    c.benchmark_group("quic/null_call")
        .bench_function("raw_quinn", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let raw = raw.clone();
                in_task(iters, move || {
                    let raw = raw.clone();
                    async move { raw.round_trip(null_bytes).await }
                })
            })
        });
    c.benchmark_group("quic/in_flight_64")
        .throughput(Throughput::Elements(64))
        .bench_function("raw_quinn", |b| {
            b.to_async(rt).iter_custom(|iters| {
                let raw = raw.clone();
                in_task(iters, move || {
                    let raw = raw.clone();
                    async move { join_all((0..64).map(|_| raw.round_trip(null_bytes))).await }
                })
            })
        });
    c.benchmark_group("quic/echo_1mib")
        .throughput(Throughput::Bytes(2 * MIB as u64))
        .sample_size(30)
        .bench_with_input(
            BenchmarkId::new("raw_quinn", "1MiB"),
            &mib_bytes,
            |b, &n| {
                b.to_async(rt).iter_custom(|iters| {
                    let raw = raw.clone();
                    in_task(iters, move || {
                        let raw = raw.clone();
                        async move { raw.round_trip(n).await }
                    })
                })
            },
        );
}

fn courier_benches<C: Codec>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    courier: &Arc<CourierEcho<C>>,
) {
    let name = format!("courier_{}", C::NAME);
    c.benchmark_group("quic/null_call")
        .bench_function(&name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let courier = courier.clone();
                in_task(iters, move || {
                    let courier = courier.clone();
                    async move { courier.echo(&[]).await.expect("call") }
                })
            })
        });
    c.benchmark_group("quic/in_flight_64")
        .throughput(Throughput::Elements(64))
        .bench_function(&name, |b| {
            b.to_async(rt).iter_custom(|iters| {
                let courier = courier.clone();
                in_task(iters, move || {
                    let courier = courier.clone();
                    async move { join_all((0..64).map(|_| courier.echo(&[]))).await }
                })
            })
        });
    let mib = Arc::new(vec![0x5au8; MIB]);
    c.benchmark_group("quic/echo_1mib")
        .throughput(Throughput::Bytes(2 * MIB as u64))
        .sample_size(30)
        .bench_with_input(BenchmarkId::new(&name, "1MiB"), &mib, |b, mib| {
            b.to_async(rt).iter_custom(|iters| {
                let (courier, mib) = (courier.clone(), mib.clone());
                in_task(iters, move || {
                    let (courier, mib) = (courier.clone(), mib.clone());
                    async move { courier.echo(&mib).await.expect("call") }
                })
            })
        });
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let (raw, cbor, xdr) = rt.block_on(async {
        (
            quic::raw_pair().await.expect("raw quinn"),
            quic::courier_pair(Cbor::default())
                .await
                .expect("courier over QUIC"),
            quic::courier_pair(Xdr::default())
                .await
                .expect("courier over QUIC"),
        )
    });
    raw_benches(c, &rt, &Arc::new(raw));
    courier_benches(c, &rt, &Arc::new(cbor));
    courier_benches(c, &rt, &Arc::new(xdr));
}

/// The three ratios of one codec, paired and interleaved against raw quinn.
async fn paired_for<C: Codec>(raw: Arc<RawEcho>, courier: Arc<CourierEcho<C>>) -> [Ratio; 3] {
    let null_bytes = quic::courier_request_len(&[]);
    let slice = Duration::from_millis(150);
    let null = compare(
        21,
        slice,
        |d| paired::p50(d, || raw.round_trip(null_bytes)),
        |d| paired::p50(d, || courier.echo(&[])),
    )
    .await;
    let in_flight = compare(
        21,
        slice,
        |d| {
            paired::rate(d, || async {
                join_all((0..64).map(|_| raw.round_trip(null_bytes)))
                    .await
                    .len() as u64
            })
        },
        |d| {
            paired::rate(d, || async {
                join_all((0..64).map(|_| courier.echo(&[]))).await.len() as u64
            })
        },
    )
    .await;
    let mib = vec![0x5au8; MIB];
    let mib_bytes = quic::courier_request_len(&mib);
    let echo = compare(
        15,
        Duration::from_millis(300),
        |d| paired::rate(d, || async { raw.round_trip(mib_bytes).await as u64 }),
        |d| {
            paired::rate(d, || async {
                courier.echo(&mib).await.map_or(0, |r| r.len() as u64)
            })
        },
    )
    .await;
    [null, in_flight, echo]
}

/// Prints the paired ratios of both codecs.
fn paired_ratios() {
    let rt = runtime();
    let lines = rt.block_on(async {
        let raw = Arc::new(quic::raw_pair().await.expect("raw quinn"));
        let cbor = Arc::new(quic::courier_pair(Cbor::default()).await.expect("courier"));
        let xdr = Arc::new(quic::courier_pair(Xdr::default()).await.expect("courier"));
        let task = tokio::spawn(async move {
            let mut lines = Vec::new();
            for (name, ratios) in [
                ("cbor", paired_for(raw.clone(), cbor).await),
                ("xdr", paired_for(raw, xdr).await),
            ] {
                let [null, in_flight, echo] = ratios;
                lines.push(format!("courier_{name}: null call p50 / raw quinn: {null}"));
                lines.push(format!(
                    "courier_{name}: calls/s with 64 in flight / raw quinn: {in_flight}"
                ));
                lines.push(format!(
                    "courier_{name}: 1 MiB echo bytes/s / raw quinn: {echo}"
                ));
            }
            lines
        });
        task.await.expect("paired task")
    });
    println!("\nPaired, interleaved ratios (median of per-round ratios):");
    for line in lines {
        println!("  {line}");
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // With a filter (`cargo bench --bench quic -- null_call`), the paired ratios run only if
    // it names them: `-- paired`.
    if filter().is_none_or(|f| "paired".contains(f.as_str())) {
        paired_ratios();
    }
}

/// Criterion's positional filter, if one was given.
fn filter() -> Option<String> {
    const TAKES_VALUE: [&str; 14] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--noise-threshold",
        "--significance-level",
        "--confidence-level",
        "--nresamples",
        "--profile-time",
        "--output-format",
        "--color",
        "--plotting-backend",
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return Some(arg);
        }
    }
    None
}
