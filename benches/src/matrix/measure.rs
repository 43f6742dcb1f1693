//! Timing: latency samples with one call in flight and completions with 64 in flight, taken in
//! short slices so that the rows of one transport can be measured in turns. The same code
//! times every target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::Error;

/// How each row is measured: in `rounds` turns of a slice each, so that a row and its floor
/// take turns and the drift in a noisy machine's speed falls on both alike.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Calls made and thrown away before timing, per row and payload.
    pub(crate) warmup: Duration,
    /// Turns per row and payload.
    pub(crate) rounds: u32,
    /// Time per turn taking latency samples, one call at a time.
    pub(crate) latency: Duration,
    /// Time per turn with 64 calls in flight.
    pub(crate) flight: Duration,
}

impl Budget {
    pub(crate) fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                warmup: Duration::from_millis(20),
                rounds: 3,
                latency: Duration::from_millis(50),
                flight: Duration::from_millis(50),
            }
        } else {
            Budget {
                warmup: Duration::from_millis(200),
                rounds: 10,
                latency: Duration::from_millis(200),
                flight: Duration::from_millis(150),
            }
        }
    }
}

/// At most this many latency samples per turn.
const MAX_SAMPLES: usize = 20_000;

/// Calls in flight for the concurrent measure.
pub(crate) const IN_FLIGHT: usize = 64;

/// An echo target: sends the bytes, resolves with the length of the echo.
#[derive(Clone)]
pub(crate) struct Target(
    Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<usize, Error>> + Send + Sync>,
);

impl Target {
    pub(crate) fn new(
        f: impl Fn(Bytes) -> BoxFuture<'static, Result<usize, Error>> + Send + Sync + 'static,
    ) -> Target {
        Target(Arc::new(f))
    }

    async fn call(&self, data: &Bytes) -> Result<(), Error> {
        let len = (self.0)(data.clone()).await?;
        if len != data.len() {
            return Err(format!("the echo has {len} bytes, {} were sent", data.len()).into());
        }
        Ok(())
    }
}

/// A synchronous floor: moves the payload once, returns how many bytes it moved.
pub(crate) type SyncOp = Box<dyn FnMut(&[u8]) -> usize>;

/// What was measured of one row, turn after turn.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    samples: Vec<Duration>,
    latency_time: Duration,
    flight_calls: u64,
    flight_time: Duration,
}

/// What one row measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) calls_per_sec_1: f64,
    pub(crate) calls_per_sec_64: Option<f64>,
}

impl Tally {
    /// Nearest-rank percentiles of the latency samples, and the rates.
    pub(crate) fn sample(mut self) -> Sample {
        self.samples.sort_unstable();
        let n = self.samples.len().max(1);
        let rank = |p: usize| {
            self.samples
                .get((n * p).div_ceil(100).max(1) - 1)
                .copied()
                .unwrap_or_default()
        };
        Sample {
            p50_us: rank(50).as_secs_f64() * 1e6,
            p99_us: rank(99).as_secs_f64() * 1e6,
            calls_per_sec_1: self.samples.len() as f64 / self.latency_time.as_secs_f64(),
            calls_per_sec_64: (self.flight_time > Duration::ZERO)
                .then(|| self.flight_calls as f64 / self.flight_time.as_secs_f64()),
        }
    }
}

/// One latency turn of `target`: calls one at a time for `slice` (at least once), on a task
/// of the runtime as an application's callers are. A warm-up turn records nothing.
pub(crate) async fn async_latency(
    target: &Target,
    data: &Bytes,
    slice: Duration,
    warmup: bool,
    tally: &mut Tally,
) -> Result<(), Error> {
    let (target, data) = (target.clone(), data.clone());
    let (mut samples, elapsed) = tokio::spawn(async move {
        let mut samples = Vec::new();
        let start = Instant::now();
        while samples.is_empty() || (start.elapsed() < slice && samples.len() < MAX_SAMPLES) {
            let t = Instant::now();
            target.call(&data).await?;
            samples.push(t.elapsed());
        }
        Ok::<_, Error>((samples, start.elapsed()))
    })
    .await??;
    if !warmup {
        tally.latency_time += elapsed;
        tally.samples.append(&mut samples);
    }
    Ok(())
}

/// One turn of 64 calls in flight, each on its own task.
pub(crate) async fn async_flight(
    target: &Target,
    data: &Bytes,
    slice: Duration,
    tally: &mut Tally,
) -> Result<(), Error> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + slice;
    let start = Instant::now();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (target, data, done) = (target.clone(), data.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < stop {
                    target.call(&data).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    tally.flight_time += start.elapsed();
    tally.flight_calls += done.load(Ordering::Relaxed);
    Ok(())
}

/// One latency turn of a synchronous floor.
pub(crate) fn sync_latency(
    op: &mut SyncOp,
    data: &[u8],
    slice: Duration,
    warmup: bool,
    tally: &mut Tally,
) -> Result<(), Error> {
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.is_empty() || (start.elapsed() < slice && samples.len() < MAX_SAMPLES) {
        let t = Instant::now();
        let moved = op(data);
        samples.push(t.elapsed());
        if moved != data.len() {
            return Err(format!(
                "the floor moved {moved} bytes, {} were expected",
                data.len()
            )
            .into());
        }
    }
    if !warmup {
        tally.latency_time += start.elapsed();
        tally.samples.append(&mut samples);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let tally = Tally {
            samples: (1..=200).rev().map(Duration::from_micros).collect(),
            latency_time: Duration::from_secs(1),
            flight_calls: 0,
            flight_time: Duration::ZERO,
        };
        let s = tally.sample();
        assert_eq!(s.p50_us.round(), 100.0);
        assert_eq!(s.p99_us.round(), 198.0);
        assert_eq!(s.calls_per_sec_1.round(), 200.0);
        assert_eq!(s.calls_per_sec_64, None);
        let one = Tally {
            samples: vec![Duration::from_micros(7)],
            latency_time: Duration::from_secs(1),
            flight_calls: 640,
            flight_time: Duration::from_secs(2),
        }
        .sample();
        assert_eq!((one.p50_us.round(), one.p99_us.round()), (7.0, 7.0));
        assert_eq!(one.calls_per_sec_64, Some(320.0));
    }
}
