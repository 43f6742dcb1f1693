//! Heap allocations per null call, counted by a global allocator that counts.
//!
//! ```sh
//! cargo run --release -p courier-benches --bin allocs          # in process: both sides together
//! cargo run --release -p courier-benches --bin allocs -- shm   # shared memory: each side apart
//! ```
//!
//! In process, the count is the whole process's: caller, engine and server together. Over
//! shared memory the server is a child process, so each side is counted in its own process
//! (the server's count is read with a call before and after the measured calls).
//!
//! It also prints the time per call (on stderr), and with `ALLOCS_CONCURRENT=1` the time per
//! call with 64 callers at once: a quick A/B of two builds of the engine, beside the matrix.
//! `ALLOCS_WAIT=poll|spin|park` sets how both ends of the shared-memory link wait,
//! `ALLOCS_WORKERS=n` each process's worker threads (default 2), and `ALLOCS_TIMEOUT=s` gives
//! every in-process call a timeout of `s` seconds (the matrix's calls carry one of 60 s), so
//! that the deadline's path is counted too.

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
    /// The allocations the serving process has made so far.
    async fn allocations(&self) -> u64;
}

struct Nothing;

impl Null for Nothing {
    async fn null(&self) {}

    async fn allocations(&self) -> u64 {
        ALLOCATIONS.load(Ordering::Relaxed)
    }
}

const CALLS: u64 = 100_000;

/// How both ends of the shared-memory link wait: `ALLOCS_WAIT=poll|spin|park` (default: the
/// transport's default, spin then park). The child server inherits the variable.
fn shm_options() -> courier_shm::ShmOptions {
    let wait = match std::env::var("ALLOCS_WAIT").as_deref() {
        Ok("poll") => courier_shm::Wait::Poll,
        Ok("park") => courier_shm::Wait::Park,
        _ => courier_shm::Wait::default(),
    };
    courier_shm::ShmOptions::default().wait(wait)
}

fn runtime() -> tokio::runtime::Runtime {
    let workers = std::env::var("ALLOCS_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve") => serve_shm(&args[1]),
        Some("shm") => over_shm(),
        _ => in_process(),
    }
}

/// The child process of `shm`: serves `Null` at `path` until its stdin closes (so that a
/// profiler watching it, such as `valgrind --tool=dhat --trace-children=yes`, sees it exit).
fn serve_shm(path: &str) {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    runtime().block_on(async {
        let listener = courier_shm::ShmListener::bind(path, shm_options()).expect("bind");
        println!("ready");
        let server = Server::builder(Xdr::default())
            .service(NullServer::new(Nothing))
            .build();
        let _ = server.serve(listener).await;
    });
}

/// Each side's allocations per null call over shared memory, the server in a child process.
fn over_shm() {
    use std::io::BufRead;
    let path = std::env::temp_dir().join(format!("courier-allocs-{}.sock", std::process::id()));
    let mut child = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .args(["--serve", &path.display().to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the server process");
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut ready)
        .expect("the server says it is ready");
    runtime().block_on(async {
        let connector = courier_shm::ShmConnector::new(&path, shm_options());
        let client = NullClient::new(
            Client::builder(Xdr::default())
                .connect(&connector)
                .await
                .expect("connected"),
        );
        let (client_count, server_count, elapsed) = tokio::spawn(async move {
            for _ in 0..10_000 {
                client.null().await.expect("a null call");
            }
            let server_before = client.allocations().await.expect("the server's count");
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            let started = std::time::Instant::now();
            for _ in 0..CALLS {
                client.null().await.expect("a null call");
            }
            let elapsed = started.elapsed();
            let after = ALLOCATIONS.load(Ordering::Relaxed);
            let server_after = client.allocations().await.expect("the server's count");
            (after - before, server_after - server_before, elapsed)
        })
        .await
        .expect("the calling task");
        eprintln!(
            "({:.2} µs per call)",
            elapsed.as_secs_f64() * 1e6 / CALLS as f64
        );
        println!(
            "shared-memory null call, XDR, 1 in flight: {:.2} allocations per call in the \
             client's process, {:.2} in the server's ({} calls)",
            client_count as f64 / CALLS as f64,
            server_count as f64 / CALLS as f64,
            CALLS
        );
    });
    // Closing its stdin ends the server.
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_file(path);
}

/// Allocations per null call in process: both sides together.
fn in_process() {
    runtime().block_on(async {
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
        let timeout = std::env::var("ALLOCS_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok());
        let client = match timeout {
            Some(secs) => client.with_options(
                courier::CallOptions::new().timeout(std::time::Duration::from_secs(secs)),
            ),
            None => client,
        };
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
