//! Courier over QUIC against raw quinn, in the same run, on the same runtime, with the same bytes.
//!
//! ```text
//! cargo bench -p courier-benches --bench quic
//! ```
//!
//! The floor is quinn alone: one bidirectional stream per request, the request written and
//! finished, the reply read to its end. Courier sends the same number of bytes per request (its
//! 32-byte header plus the encoded argument), so the difference is Courier's own work: framing,
//! the call table, dispatch and the codec.

use std::sync::Arc;

use std::time::Duration;

use courier_benches::paired::{self, compare};
use courier_benches::{in_task, quic};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use futures::future::join_all;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let (courier, raw) = rt.block_on(async {
        (
            quic::courier_pair().await.expect("courier over QUIC"),
            quic::raw_pair().await.expect("raw quinn"),
        )
    });
    let courier = Arc::new(courier);
    let raw = Arc::new(raw);

    // Null call: one request in flight, round trip.
    let null_bytes = quic::courier_request_len(&[]);
    let mut g = c.benchmark_group("quic/null_call");
    g.bench_function("raw_quinn", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            in_task(iters, move || {
                let raw = raw.clone();
                async move { raw.round_trip(null_bytes).await }
            })
        })
    });
    g.bench_function("courier_cbor", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let courier = courier.clone();
            in_task(iters, move || {
                let courier = courier.clone();
                async move { courier.echo(&[]).await.expect("call") }
            })
        })
    });
    g.finish();

    // 64 calls in flight: time per batch of 64, so elements/s is calls/s.
    let mut g = c.benchmark_group("quic/in_flight_64");
    g.throughput(Throughput::Elements(64));
    g.bench_function("raw_quinn", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            in_task(iters, move || {
                let raw = raw.clone();
                async move { join_all((0..64).map(|_| raw.round_trip(null_bytes))).await }
            })
        })
    });
    g.bench_function("courier_cbor", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let courier = courier.clone();
            in_task(iters, move || {
                let courier = courier.clone();
                async move { join_all((0..64).map(|_| courier.echo(&[]))).await }
            })
        })
    });
    g.finish();

    // 1 MiB echo: bytes both ways per iteration.
    let mib = vec![0x5au8; 1024 * 1024];
    let mib_bytes = quic::courier_request_len(&mib);
    let mut g = c.benchmark_group("quic/echo_1mib");
    g.throughput(Throughput::Bytes(2 * mib.len() as u64));
    g.sample_size(30);
    g.bench_with_input(
        BenchmarkId::new("raw_quinn", "1MiB"),
        &mib_bytes,
        |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let raw = raw.clone();
                in_task(iters, move || {
                    let raw = raw.clone();
                    async move { raw.round_trip(n).await }
                })
            })
        },
    );
    let mib = Arc::new(mib);
    g.bench_with_input(BenchmarkId::new("courier_cbor", "1MiB"), &mib, |b, mib| {
        b.to_async(&rt).iter_custom(|iters| {
            let (courier, mib) = (courier.clone(), mib.clone());
            in_task(iters, move || {
                let (courier, mib) = (courier.clone(), mib.clone());
                async move { courier.echo(&mib).await.expect("call") }
            })
        })
    });
    g.finish();
}

/// The same three measures as paired, interleaved comparisons (see `courier_benches::paired`):
/// ratios that one noisy run cannot tilt, printed after criterion's figures.
fn paired_ratios() {
    let rt = runtime();
    let lines = rt.block_on(async {
        let courier = Arc::new(quic::courier_pair().await.expect("courier over QUIC"));
        let raw = Arc::new(quic::raw_pair().await.expect("raw quinn"));
        let task = tokio::spawn(async move {
            let null_bytes = quic::courier_request_len(&[]);
            let slice = Duration::from_millis(150);
            let null = compare(
                21,
                slice,
                |d| paired::p50(d, || raw.round_trip(null_bytes)),
                |d| paired::p50(d, || courier.echo(&[])),
            )
            .await;
            let batch = |n: usize| n as u64;
            let in_flight = compare(
                21,
                slice,
                |d| {
                    paired::rate(d, || async {
                        batch(join_all((0..64).map(|_| raw.round_trip(null_bytes))).await.len())
                    })
                },
                |d| {
                    paired::rate(d, || async {
                        batch(join_all((0..64).map(|_| courier.echo(&[]))).await.len())
                    })
                },
            )
            .await;
            let mib = vec![0x5au8; 1024 * 1024];
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
            [
                format!("null call p50, Courier / raw quinn: {null}"),
                format!("calls/s with 64 in flight, Courier / raw quinn: {in_flight}"),
                format!("1 MiB echo bytes/s, Courier / raw quinn: {echo}"),
            ]
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
