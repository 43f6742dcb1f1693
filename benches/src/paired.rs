//! Paired comparisons: a floor and a subject measured in alternating short slices, so that
//! the drift in a noisy machine's speed falls out of their ratio.
//!
//! Two criterion runs of the same code on this project's machine differ by 10–20 %, enough to
//! move a ratio across a target. Measuring the two sides one after the other for a fraction of
//! a second, many times over and in alternating order, and taking the median of the per-round
//! ratios gives a ratio that is stable from run to run.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use courier_benches::paired::{compare, rate};
//! let ratio = compare(5, Duration::from_millis(5), |slice| rate(slice, || async { 1u64 }), |slice| {
//!     rate(slice, || async { 1u64 })
//! })
//! .await;
//! assert!(ratio.median > 0.0);
//! # }
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

/// The spread of the per-round ratios `subject / floor`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The median ratio.
    pub median: f64,
    /// The 25th percentile.
    pub low: f64,
    /// The 75th percentile.
    pub high: f64,
    /// How many rounds.
    pub rounds: usize,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (interquartile {:.3}–{:.3}, {} rounds)",
            self.median, self.low, self.high, self.rounds
        )
    }
}

/// Runs `rounds` rounds; each measures `floor` and `subject` for `slice` apiece (which goes
/// first alternates) and takes the ratio of their scores, `subject / floor`.
pub async fn compare<F, FF, S, SF>(
    rounds: usize,
    slice: Duration,
    mut floor: F,
    mut subject: S,
) -> Ratio
where
    F: FnMut(Duration) -> FF,
    FF: Future<Output = f64>,
    S: FnMut(Duration) -> SF,
    SF: Future<Output = f64>,
{
    let mut ratios = Vec::with_capacity(rounds);
    for round in 0..rounds.max(1) {
        let (f, s) = if round % 2 == 0 {
            let f = floor(slice).await;
            (f, subject(slice).await)
        } else {
            let s = subject(slice).await;
            (floor(slice).await, s)
        };
        ratios.push(s / f);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: usize| ratios[(ratios.len() - 1) * q / 100];
    Ratio {
        median: at(50),
        low: at(25),
        high: at(75),
        rounds: ratios.len(),
    }
}

/// The median latency of `op`, in µs, over calls made one after another for `slice`.
pub async fn p50<O, Fut>(slice: Duration, mut op: O) -> f64
where
    O: FnMut() -> Fut,
    Fut: Future,
{
    let mut samples = Vec::new();
    let end = Instant::now() + slice;
    while samples.is_empty() || Instant::now() < end {
        let start = Instant::now();
        std::hint::black_box(op().await);
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    samples[(samples.len() - 1) / 2].as_secs_f64() * 1e6
}

/// Completions per second of `op`, which returns how many units (calls, bytes) it completed,
/// over `slice`.
pub async fn rate<O, Fut>(slice: Duration, mut op: O) -> f64
where
    O: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let start = Instant::now();
    let mut done = 0u64;
    while done == 0 || start.elapsed() < slice {
        done += op().await;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[tokio::test]
    async fn ratios_alternate_order_and_take_quartiles() {
        // Scores instead of timings: the floor always scores 10, the subject 10, 20, … 90 in
        // turn, so the ratios are 1 to 9 and their quartiles 3, 5 and 7.
        let order = RefCell::new(Vec::new());
        let subject_scores = RefCell::new((1..=9).map(|i| 10.0 * i as f64));
        let ratio = compare(
            9,
            Duration::ZERO,
            |_| {
                order.borrow_mut().push('f');
                async { 10.0 }
            },
            |_| {
                order.borrow_mut().push('s');
                let score = subject_scores.borrow_mut().next().unwrap_or(f64::NAN);
                async move { score }
            },
        )
        .await;
        assert_eq!((ratio.low, ratio.median, ratio.high), (3.0, 5.0, 7.0));
        assert_eq!(ratio.rounds, 9);
        let order: String = order.into_inner().into_iter().collect();
        assert_eq!(order, "fssffssffssffssffs");
    }

    #[tokio::test]
    async fn rate_counts_units_per_second() {
        let units = rate(Duration::ZERO, || async { 1000u64 }).await;
        assert!(units.is_finite() && units > 0.0);
        let latency = p50(Duration::ZERO, || async {}).await;
        assert!(latency.is_finite() && latency >= 0.0);
    }
}
