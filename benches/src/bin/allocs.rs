//! Heap allocations per null call over the in-process transport, counted by a global allocator
//! that counts (the whole process: caller, engine and server together).
//!
//! ```sh
//! cargo run --release -p courier-benches --bin allocs
//! ```
//!
//! It also prints the time per call (on stderr), and with `ALLOCS_CONCURRENT=1` the time per
//! call with 64 callers at once: a quick A/B of two builds of the engine, beside the matrix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use courier::transport::mem;
use courier::{Client, Server};
use courier_xdr::Xdr;

/// The system allocator, counting the allocations it makes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the count is a side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with `layout`, as the caller promises.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A service with one method that does nothing.
#[courier::service]
pub trait Null {
    /// Does nothing.
    async fn null(&self);
}

struct Nothing;

impl Null for Nothing {
    async fn null(&self) {}
}

const CALLS: u64 = 100_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let listener = mem::Listener::bind("allocs").expect("a fresh name");
        let server = Server::builder(Xdr::default())
            .service(NullServer::new(Nothing))
            .build();
        tokio::spawn(async move { server.serve(listener).await });
        let client = NullClient::new(
            Client::builder(Xdr::default())
                .connect(&mem::Dialer::new("allocs"))
                .await
                .expect("connected"),
        );
        let client64 = client.clone();
        // The caller is a task, as in a server or the matrix, not `block_on`'s thread.
        let (before, after, elapsed) = tokio::spawn(async move {
            // Warm up: the tables and the allocator's caches reach their working size.
            for _ in 0..10_000 {
                client.null().await.expect("a null call");
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let started = std::time::Instant::now();
            for _ in 0..CALLS {
                client.null().await.expect("a null call");
            }
            let elapsed = started.elapsed();
            (before, ALLOCATIONS.load(Ordering::Relaxed), elapsed)
        })
        .await
        .expect("the calling task");
        eprintln!(
            "({:.2} µs per call)",
            elapsed.as_secs_f64() * 1e6 / CALLS as f64
        );
        if std::env::var_os("ALLOCS_CONCURRENT").is_some() {
            // 64 callers at once: what the engine costs in CPU rather than in hand-offs.
            let started = std::time::Instant::now();
            let callers: Vec<_> = (0..64)
                .map(|_| {
                    let client = client64.clone();
                    tokio::spawn(async move {
                        for _ in 0..CALLS / 64 {
                            client.null().await.expect("a null call");
                        }
                    })
                })
                .collect();
            for c in callers {
                c.await.expect("a caller");
            }
            let per = started.elapsed().as_secs_f64() * 1e6 / (CALLS / 64 * 64) as f64;
            eprintln!("({per:.2} µs per call with 64 in flight)");
        }
        println!(
            "in-process null call, XDR, 1 in flight: {:.2} allocations per call ({} calls)",
            (after - before) as f64 / CALLS as f64,
            CALLS
        );
    });
}
