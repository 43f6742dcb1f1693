//! Timing one row: round-trip latency percentiles with one call in flight, then calls per
//! second with 64 in flight. The same code times every target.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::Error;

/// How long each row is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Calls made and thrown away before timing.
    pub(crate) warmup: Duration,
    /// Time spent taking latency samples, one call at a time.
    pub(crate) latency: Duration,
    /// At most this many latency samples.
    pub(crate) max_samples: usize,
    /// Time spent with 64 calls in flight.
    pub(crate) flight: Duration,
}

impl Budget {
    pub(crate) fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                warmup: Duration::from_millis(30),
                latency: Duration::from_millis(150),
                max_samples: 20_000,
                flight: Duration::from_millis(150),
            }
        } else {
            Budget {
                warmup: Duration::from_millis(300),
                latency: Duration::from_secs(2),
                max_samples: 200_000,
                flight: Duration::from_millis(1500),
            }
        }
    }
}

/// At least this many latency samples, however slow the target.
const MIN_SAMPLES: usize = 5;

/// Calls in flight for the concurrent measure.
pub(crate) const IN_FLIGHT: usize = 64;

/// What one row measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) calls_per_sec_1: f64,
    pub(crate) calls_per_sec_64: Option<f64>,
}

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

fn percentiles(mut samples: Vec<Duration>, total: Duration) -> Sample {
    samples.sort_unstable();
    // Nearest rank: the smallest sample with at least p % of the samples at or below it.
    let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
    Sample {
        p50_us: rank(50).as_secs_f64() * 1e6,
        p99_us: rank(99).as_secs_f64() * 1e6,
        calls_per_sec_1: samples.len() as f64 / total.as_secs_f64(),
        calls_per_sec_64: None,
    }
}

/// Times `target` echoing `data`: warm-up, latency samples, then 64 calls in flight on as many
/// tasks.
pub(crate) async fn measure_async(
    target: &Target,
    data: Bytes,
    budget: Budget,
) -> Result<Sample, Error> {
    let start = Instant::now();
    while start.elapsed() < budget.warmup {
        target.call(&data).await?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_SAMPLES
        || (start.elapsed() < budget.latency && samples.len() < budget.max_samples)
    {
        let t = Instant::now();
        target.call(&data).await?;
        samples.push(t.elapsed());
    }
    let mut sample = percentiles(samples, start.elapsed());

    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + budget.flight;
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
    let elapsed = start.elapsed();
    sample.calls_per_sec_64 = Some(done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64());
    Ok(sample)
}

/// Times a synchronous floor (one operation at a time; floors have no "in flight").
pub(crate) fn measure_sync(
    mut op: impl FnMut() -> usize,
    expected: usize,
    budget: Budget,
) -> Result<Sample, Error> {
    let check = |len: usize| {
        if len == expected {
            Ok(())
        } else {
            Err(Error::from(format!(
                "the floor moved {len} bytes, {expected} were expected"
            )))
        }
    };
    let start = Instant::now();
    while start.elapsed() < budget.warmup {
        check(op())?;
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_SAMPLES
        || (start.elapsed() < budget.latency && samples.len() < budget.max_samples)
    {
        let t = Instant::now();
        let len = op();
        samples.push(t.elapsed());
        check(len)?;
    }
    Ok(percentiles(samples, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<_> = (1..=200).map(Duration::from_micros).collect();
        let s = percentiles(samples, Duration::from_secs(1));
        assert_eq!(s.p50_us.round(), 100.0);
        assert_eq!(s.p99_us.round(), 198.0);
        assert_eq!(s.calls_per_sec_1.round(), 200.0);
        let one = percentiles(vec![Duration::from_micros(7)], Duration::from_secs(1));
        assert_eq!((one.p50_us.round(), one.p99_us.round()), (7.0, 7.0));
    }
}
