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
    courier_benches::runtime().expect("runtime")
}

const MIB: usize = 1024 * 1024;

/// One side of the comparison. Every measure runs all three in one criterion group, one
/// after the other, so that they see the machine in the same state.
#[derive(Clone)]
enum Subject {
    Raw(Arc<RawEcho>),
    Cbor(Arc<CourierEcho<Cbor>>),
    Xdr(Arc<CourierEcho<Xdr>>),
}

impl Subject {
    fn name(&self) -> &'static str {
        match self {
            Subject::Raw(_) => "raw_quinn",
            Subject::Cbor(_) => "courier_cbor",
            Subject::Xdr(_) => "courier_xdr",
        }
    }

    /// Echoes `data`; raw quinn sends `raw_len` bytes instead, the size of Courier's request
    /// for `data`. Returns the echo's length.
    async fn echo(&self, data: &[u8], raw_len: usize) -> usize {
        match self {
            Subject::Raw(raw) => raw.round_trip(raw_len).await,
            Subject::Cbor(c) => c.echo(data).await.expect("call").len(),
            Subject::Xdr(c) => c.echo(data).await.expect("call").len(),
        }
    }
}

/// Times `op` on a clone of `subject`, in a task on `rt` (see `courier_benches::in_task`).
fn timed_in_task<F, Fut>(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    subject: &Subject,
    op: F,
) where
    F: Fn(Subject) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future + Send,
{
    b.to_async(rt).iter_custom(|iters| {
        let (subject, op) = (subject.clone(), op.clone());
        in_task(iters, move || op(subject.clone()))
    })
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let subjects = rt.block_on(async {
        [
            Subject::Raw(Arc::new(quic::raw_pair().await.expect("raw quinn"))),
            Subject::Cbor(Arc::new(
                quic::courier_pair(Cbor::default()).await.expect("courier"),
            )),
            Subject::Xdr(Arc::new(
                quic::courier_pair(Xdr::default()).await.expect("courier"),
            )),
        ]
    });
    let null_len = quic::courier_request_len(&[]);
    let mut g = c.benchmark_group("quic/null_call");
    for subject in &subjects {
        g.bench_function(subject.name(), |b| {
            timed_in_task(b, &rt, subject, move |s| async move {
                s.echo(&[], null_len).await
            })
        });
    }
    g.finish();

    // 64 calls in flight: time per batch of 64, so elements/s is calls/s.
    let mut g = c.benchmark_group("quic/in_flight_64");
    g.throughput(Throughput::Elements(64));
    for subject in &subjects {
        g.bench_function(subject.name(), |b| {
            timed_in_task(b, &rt, subject, move |s| async move {
                join_all((0..64).map(|_| s.echo(&[], null_len))).await
            })
        });
    }
    g.finish();

    // 1 MiB echo: bytes both ways per iteration.
    let mib = Arc::new(vec![0x5au8; MIB]);
    let mib_len = quic::courier_request_len(&mib);
    let mut g = c.benchmark_group("quic/echo_1mib");
    g.throughput(Throughput::Bytes(2 * MIB as u64));
    g.sample_size(30);
    for subject in &subjects {
        g.bench_with_input(BenchmarkId::new(subject.name(), "1MiB"), &mib, |b, mib| {
            let mib = mib.clone();
            timed_in_task(b, &rt, subject, move |s| {
                let mib = mib.clone();
                async move { s.echo(&mib, mib_len).await }
            })
        });
    }
    g.finish();
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
    // Nor when criterion only lists or smoke-tests the benches.
    let listing = std::env::args().any(|a| matches!(a.as_str(), "--list" | "--test"));
    if !listing && filter().is_none_or(|f| "paired".contains(f.as_str())) {
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
