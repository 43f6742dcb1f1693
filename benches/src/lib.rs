//! Shared payloads and helpers for Courier's benchmarks.
//!
//! The criterion benches live in `benches/`; run them with `cargo bench -p courier-benches`.
//! Figures and the commands that produced them are kept in `benches/RESULTS.md`.
//!
//! ```
//! let p = courier_benches::payloads::small();
//! assert_eq!(p.id, 42);
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

pub mod matrix;
pub mod onetask;
pub mod paired;
pub mod quic;
pub mod spin;

/// The runtime every bench runs on, clients and servers alike: multi-threaded with two workers
/// (the project's machine has two cores), timers and I/O enabled. One definition, so that no
/// figure differs from another by its runtime's settings.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Times `iters` runs of `op` inside a task spawned on the current runtime, for criterion's
/// `iter_custom`. Callers in an application are tasks; a caller on `block_on`'s own thread
/// would pay a cross-thread wake-up per reply that no task pays.
///
/// # Panics
///
/// If the task panics (a failed call in a bench).
pub async fn in_task<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future + Send,
{
    let task = tokio::spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(op().await);
        }
        start.elapsed()
    });
    match task.await {
        Ok(elapsed) => elapsed,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The payloads every codec bench uses, so that figures compare like with like.
pub mod payloads {
    use serde::{Deserialize, Serialize};

    /// A small struct typical of an RPC argument.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Small {
        /// An id.
        pub id: u64,
        /// A short name.
        pub name: String,
        /// Some flags.
        pub flags: u32,
        /// A ratio.
        pub ratio: f64,
        /// A few small numbers.
        pub tags: Vec<u16>,
        /// An optional count.
        pub limit: Option<u32>,
    }

    /// The small struct.
    pub fn small() -> Small {
        Small {
            id: 42,
            name: "courier-bench".to_owned(),
            flags: 0b1011,
            ratio: 0.75,
            tags: vec![1, 2, 3, 5, 8],
            limit: Some(100),
        }
    }

    /// 64 KiB of bytes, carried as a byte string (`serde_bytes`).
    pub fn blob() -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from((0..64 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
    }

    /// 10,000 `u32`s.
    pub fn numbers() -> Vec<u32> {
        (0..10_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect()
    }
}
